"""DeepReDuce (Jha et al., "DeepReDuce: ReLU Reduction for Fast Private Inference",
ICML 2021, Sec. 3): remove whole groups of ReLUs, then distill.

The configuration space, for a residual network whose linearizable ReLUs carry a stage
(1..S) and a block role (``inner``: after a block's first conv-bn; ``post_add``: after the
residual addition):

- **culling**: every ReLU of the culled stages becomes the identity; any subset of the
  stages except all of them;
- **thinning**: the ``post_add`` ReLU of every remaining block becomes the identity.

A configuration's ReLU count follows from the layer sizes: ``sum`` of the ReLUs of the kept
layers. For ResNet-18 on 32x32 (stages 262,144 / 131,072 / 65,536 / 32,768 ReLUs): culling
stage 1 leaves 229,376; stages 1+2 98,304; 1+4 196,608; 1+2+3 32,768; 1+2+4 65,536, and
thinning halves each (inner and post-add ReLUs of a block have the same size). A budget maps
to the configuration with the largest count not above it (ties: fewer culled stages, then
no thinning).

Then the student is trained by knowledge distillation from the all-ReLU teacher,
``lambda * CE + (1 - lambda) * T^2 * KL`` (T = 4), with SGD (momentum 0.9, wd 5e-4, cosine
schedule), keeping the epoch with the best validation accuracy.

Differences from the original: the student starts from the base model's weights by default
(``from_scratch=True`` reinitializes them, as the original trains the culled network from
scratch); the teacher is frozen (no gradients); the original's criticality-guided search for
which stages to cull is replaced by enumerating every configuration and taking the one that
best fills the budget; ReLU reshaping (channel scaling) is not implemented.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import nn

from tune_linfair.data.augment import random_crop_flip
from tune_linfair.data.base import GroupedDataset
from tune_linfair.errors import BudgetUnreachable, UserError
from tune_linfair.kd import KDLoss, TeacherLogits
from tune_linfair.linearize.budget import resolve_budget
from tune_linfair.models.activation import (
    LinearizableReLU,
    linearizable_layers,
    total_relus,
    weight_parameters,
)
from tune_linfair.train import FitResult, fit, model_device

BLOCK_ROLES = ("inner", "post_add")


@dataclass(frozen=True)
class DeepReduceConfig:
    """One DeepReDuce configuration: the culled stages (sorted), whether the remaining blocks
    are thinned (``post_add`` ReLUs dropped), and the ReLU count per image it leaves."""

    culled: tuple[int, ...]
    thinned: bool
    relu_count: int

    @property
    def name(self) -> str:
        """A short label, e.g. ``cull1+2,thin`` or ``full``."""
        parts = []
        if self.culled:
            parts.append("cull" + "+".join(str(s) for s in self.culled))
        if self.thinned:
            parts.append("thin")
        return ",".join(parts) or "full"

    def as_dict(self) -> dict:
        """Plain-Python form for logs and result rows."""
        return {
            "name": self.name,
            "culled": list(self.culled),
            "thinned": self.thinned,
            "relu_count": self.relu_count,
        }

    def keeps(self, layer: LinearizableReLU) -> bool:
        """Whether ``layer`` stays a ReLU under this configuration."""
        if layer.stage in self.culled:
            return False
        return not (self.thinned and layer.role == "post_add")


def _staged_layers(model: nn.Module) -> list[LinearizableReLU]:
    """The model's linearizable ReLUs, checked to be residual-block ReLUs with stages."""
    layers = [layer for _, layer in linearizable_layers(model)]
    name = type(model).__name__
    if not layers:
        raise UserError(f"deepreduce needs a staged model; {name} has no linearizable ReLUs")
    unstaged = [layer for layer in layers if layer.stage is None or layer.role not in BLOCK_ROLES]
    if unstaged:
        raise UserError(
            f"deepreduce needs a staged model (residual blocks with stages, e.g. resnet_mini, "
            f"resnet18, resnet34, wrn22_8); {name} has ReLUs with stage "
            f"{unstaged[0].stage} and role {unstaged[0].role!r}; use snl or random instead"
        )
    if len({layer.stage for layer in layers}) < 2:
        raise UserError(
            f"deepreduce needs a staged model with at least 2 stages; {name} has "
            f"{len({layer.stage for layer in layers})}; use snl or random instead"
        )
    return layers


def deepreduce_configs(model: nn.Module) -> list[DeepReduceConfig]:
    """Every DeepReDuce configuration of ``model`` with its ReLU count.

    Culled sets are all subsets of the stages but the full set (the empty set included),
    each unthinned and, when the model has ``post_add`` ReLUs, thinned; ordered by number of
    culled stages, then stages, then thinning. Raises :class:`UserError` for a model that is
    not a staged residual network.
    """
    layers = _staged_layers(model)
    stages = sorted({int(layer.stage) for layer in layers})
    can_thin = any(layer.role == "post_add" for layer in layers)
    configs = []
    for k in range(len(stages)):
        for culled in itertools.combinations(stages, k):
            for thinned in (False, True) if can_thin else (False,):
                probe = DeepReduceConfig(culled, thinned, 0)
                count = sum(layer.total() for layer in layers if probe.keeps(layer))
                configs.append(DeepReduceConfig(culled, thinned, count))
    return configs


def select_config(model: nn.Module, budget: float | int) -> DeepReduceConfig:
    """The configuration with the largest ReLU count not above ``budget``.

    ``budget`` is a fraction or a count (:func:`resolve_budget`). Ties go to fewer culled
    stages, then to no thinning. Raises :class:`UserError` when no configuration fits.
    """
    configs = deepreduce_configs(model)
    count = resolve_budget(budget, total_relus(model))
    fits = [c for c in configs if c.relu_count <= count]
    if not fits:
        smallest = min(configs, key=lambda c: c.relu_count)
        raise BudgetUnreachable(
            f"ReLU budget {count} is below every DeepReDuce configuration of this model "
            f"(smallest: {smallest.relu_count} ReLUs, {smallest.name}); raise the budget or "
            "use snl or random"
        )
    return min(fits, key=lambda c: (-c.relu_count, len(c.culled), c.thinned, c.culled))


def apply_deepreduce(model: nn.Module, config: DeepReduceConfig) -> int:
    """Freeze ``model``'s masks to ``config``: culled stages all 0, thinned ``post_add`` 0,
    the others 1. Returns the resulting ReLU count."""
    layers = _staged_layers(model)
    count = 0
    for layer in layers:
        keep = config.keeps(layer)
        layer.freeze(torch.full_like(layer.mask, 1.0 if keep else 0.0))
        count += layer.total() if keep else 0
    return count


def reinitialize(model: nn.Module) -> None:
    """Reset every weight of ``model`` (each submodule's ``reset_parameters``; batch-norm
    running statistics too), leaving the masks as they are. Uses torch's global RNG."""
    for module in model.modules():
        if isinstance(module, LinearizableReLU):
            continue
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()


def deepreduce_distill(
    student: nn.Module,
    teacher: nn.Module,
    data: GroupedDataset,
    *,
    epochs: int,
    lr: float = 1e-2,
    lam: float = 0.5,
    temperature: float = 4.0,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    batch_size: int = 128,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> FitResult:
    """DeepReDuce's distillation: ``lam * CE + (1 - lam) * T^2 * KL`` with SGD (``lr``,
    ``momentum``, ``weight_decay``, cosine schedule over ``epochs``) through the shared
    :func:`~tune_linfair.train.fit`, keeping the best validation epoch. Masks stay frozen."""
    device = model_device(student)
    data = data.to(device)
    kd = KDLoss(
        TeacherLogits(teacher, data.train, data.augment),
        temperature=temperature,
        ce_weight=lam,
        kd_weight=1.0 - lam,
    )
    params = [p.requires_grad_(True) for _, p in weight_parameters(student)]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(epochs, 1))
    return fit(
        student,
        data.train,
        data.val,
        kd,
        optimizer,
        epochs=epochs,
        batch_size=batch_size,
        generator=generator,
        scheduler=scheduler,
        augment=random_crop_flip if data.augment else None,
        progress=progress,
        desc="deepreduce",
    )
