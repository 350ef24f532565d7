"""One way to name and build every model (timm's ``create_model`` pattern).

Each architecture module registers small builder functions with :func:`register_model`;
:func:`create_model` builds any of them by name, sizes every linearizable mask with one
dummy forward pass and fails fast (:class:`~tune_linfair.errors.UserError`) on an unknown
name or an input shape the model cannot take.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from tune_linfair.errors import UserError, unknown
from tune_linfair.models.activation import materialize_masks

ModelBuilder = Callable[..., nn.Module]
_REGISTRY: dict[str, ModelBuilder] = {}


def register_model(fn: ModelBuilder) -> ModelBuilder:
    """Decorator: register ``fn(num_classes, input_shape, width, granularity)`` by its name."""
    _REGISTRY[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def create_model(
    name: str,
    num_classes: int,
    input_shape: tuple[int, ...],
    width: int | None = None,
    granularity: str = "pixel",
) -> nn.Module:
    """Build model ``name`` for inputs of ``input_shape`` (no batch dimension).

    ``width`` is the architecture's base width (its paper value when None): 64 for the
    ResNets and VGG, 16 for WRN-22-8's base before the x8 widening, 16 for ``resnet_mini``,
    64 hidden units for ``mlp``. ``granularity`` is the mask granularity of every
    linearizable ReLU ("pixel" or "channel").
    """
    if name not in _REGISTRY:
        raise unknown("model", name, _REGISTRY)
    if width is not None and width < 1:
        raise UserError(f"model width must be a positive integer, got {width}")
    if granularity not in ("pixel", "channel"):
        raise unknown("mask granularity", granularity, ("pixel", "channel"))
    kwargs = {} if width is None else {"width": width}
    try:
        model = _REGISTRY[name](
            num_classes=num_classes,
            input_shape=tuple(input_shape),
            granularity=granularity,
            **kwargs,
        )
        materialize_masks(model, tuple(input_shape))
    except (RuntimeError, ValueError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(
            f"model {name!r} cannot take inputs of shape {tuple(input_shape)}: {first}"
        ) from None
    return model
