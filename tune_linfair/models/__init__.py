"""Model registry and linearizable activations.

``create_model(name, num_classes, input_shape, width=None, granularity="pixel")`` builds
any registered model: ``mlp``, ``resnet_mini``, ``resnet18``, ``resnet34``, ``vgg19``,
``wrn22_8``.
"""

from tune_linfair.models import mlp, resnet, vgg, wide_resnet  # noqa: F401  (registration)
from tune_linfair.models.activation import (
    LinearizableReLU,
    count_relus,
    linearizable_layers,
    mask_parameters,
    relu_fraction,
    set_all_masks,
    total_relus,
    weight_parameters,
)
from tune_linfair.models.checkpoint import load_checkpoint, load_model, save_checkpoint
from tune_linfair.models.registry import create_model, list_models, register_model

__all__ = [
    "LinearizableReLU",
    "count_relus",
    "create_model",
    "linearizable_layers",
    "list_models",
    "load_checkpoint",
    "load_model",
    "mask_parameters",
    "register_model",
    "relu_fraction",
    "save_checkpoint",
    "set_all_masks",
    "total_relus",
    "weight_parameters",
]
