"""Linearizable ReLU and ReLU accounting.

A :class:`LinearizableReLU` computes ``m * relu(x) + (1 - m) * x`` with a mask ``m`` of one
sample's activation shape (C, H, W) or (F,), shared across the batch (SNL, Cho et al. 2022,
Sec. 3). With ``m = 1`` it is a ReLU, with ``m = 0`` the identity. Written as
``x + m * relu(-x)``, which is the same function with one fewer multiply.

Mask modes:
- ``frozen`` (default): ``m`` is a fixed 0/1 tensor, no gradient; all-ones and all-zeros
  masks take a fast path (plain ReLU, identity).
- ``trainable``: ``m`` is a real-valued parameter trained by SNL.

Granularity ``pixel`` keeps one mask value per activation entry; ``channel`` keeps one per
channel, shape (C, 1, 1), each standing for H*W ReLUs.

The mask's shape is only known once an input has passed, so the module starts with an empty
mask and :func:`materialize_masks` runs one dummy forward pass to size every mask
(:func:`tune_linfair.models.create_model` does it). Masks are parameters, so they live in
the state dict; they are excluded from weight decay and from "trainable weights" by name
(``.mask``).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

GRANULARITIES = ("pixel", "channel")


class LinearizableReLU(nn.Module):
    """``m * relu(x) + (1 - m) * x`` with a per-sample mask ``m`` shared across the batch.

    ``stage`` (1-based, or None) and ``role`` (``"inner"``: the first ReLU of a residual
    block; ``"post_add"``: the ReLU after the residual addition; ``"other"``) let DeepReDuce
    select whole groups of ReLUs.
    """

    def __init__(
        self, granularity: str = "pixel", stage: int | None = None, role: str = "other"
    ) -> None:
        super().__init__()
        if granularity not in GRANULARITIES:
            raise ValueError(f"unknown granularity {granularity!r}; choose one of: channel, pixel")
        self.granularity = granularity
        self.stage = stage
        self.role = role
        self.mask = nn.Parameter(torch.empty(0), requires_grad=False)
        self.activation_shape: tuple[int, ...] | None = None
        self._mode = "frozen"
        self._constant: float | None = 1.0  # fast path: 1.0 relu, 0.0 identity, None general

    # -- shape ------------------------------------------------------------------------
    def _materialize(self, x: torch.Tensor) -> None:
        shape = tuple(x.shape[1:])
        self.activation_shape = shape
        mask_shape = (
            shape
            if self.granularity == "pixel" or len(shape) == 1
            else (
                shape[0],
                *([1] * (len(shape) - 1)),
            )
        )
        self.mask = nn.Parameter(
            torch.ones(mask_shape, dtype=torch.float32, device=x.device), requires_grad=False
        )
        self._constant = 1.0

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: D401
        key = prefix + "mask"
        if key in state_dict and state_dict[key].shape != self.mask.shape:
            # Loading into an unmaterialized module: adopt the saved shape.
            self.mask = nn.Parameter(
                torch.empty_like(state_dict[key], device=self.mask.device),
                requires_grad=self.mask.requires_grad,
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.refresh()

    # -- modes ------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return self._mode

    def set_trainable(self) -> None:
        """SNL mode: the mask becomes a real-valued trainable parameter."""
        self._mode = "trainable"
        self.mask.requires_grad_(True)
        self._constant = None

    def freeze(self, binary: torch.Tensor | None = None) -> None:
        """Frozen mode with the given 0/1 mask (default: the current mask, binarized > 0.5)."""
        with torch.no_grad():
            new = self.mask.detach() if binary is None else binary.to(self.mask)
            if new.shape != self.mask.shape:
                raise ValueError(
                    f"mask shape {tuple(new.shape)} does not match {tuple(self.mask.shape)}"
                )
            self.mask.data = (new > 0.5).to(self.mask.dtype)
        self.mask.requires_grad_(False)
        self._mode = "frozen"
        self.refresh()

    def refresh(self) -> None:
        """Recompute the fast-path flag after the mask was changed in place."""
        if self._mode == "trainable" or self.mask.numel() == 0:
            self._constant = None if self._mode == "trainable" else 1.0
            return
        m = self.mask.detach()
        if bool((m == 1).all()):
            self._constant = 1.0
        elif bool((m == 0).all()):
            self._constant = 0.0
        else:
            self._constant = None

    # -- accounting -------------------------------------------------------------------
    def relus_per_entry(self) -> int:
        """How many ReLUs (per image) one mask entry stands for."""
        if self.activation_shape is None:
            raise RuntimeError("mask not materialized: pass an input through the model first")
        return int(torch.tensor(self.activation_shape).prod()) // max(self.mask.numel(), 1)

    def total(self) -> int:
        """Number of ReLUs of this activation per image (all of them, mask ignored)."""
        if self.activation_shape is None:
            raise RuntimeError("mask not materialized: pass an input through the model first")
        return int(torch.tensor(self.activation_shape).prod())

    def count(self, threshold: float | None = None) -> int:
        """ReLUs kept per image: mask entries equal to 1 (or ``> threshold`` when given)."""
        m = self.mask.detach()
        kept = (m > threshold) if threshold is not None else (m == 1)
        return int(kept.sum()) * self.relus_per_entry()

    # -- forward ----------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mask.numel() == 0:
            self._materialize(x)
        if self._constant == 1.0:
            return torch.relu(x)
        if self._constant == 0.0:
            return x
        return x + self.mask.to(x.dtype) * torch.relu(-x)

    def extra_repr(self) -> str:
        return f"granularity={self.granularity}, stage={self.stage}, role={self.role}, mode={self._mode}"


def linearizable_layers(model: nn.Module) -> Iterator[tuple[str, LinearizableReLU]]:
    """Every :class:`LinearizableReLU` of ``model`` with its qualified name, in order."""
    for name, module in model.named_modules():
        if isinstance(module, LinearizableReLU):
            yield name, module


@torch.no_grad()
def materialize_masks(model: nn.Module, input_shape: tuple[int, ...]) -> None:
    """Size every mask by one forward pass of a zero batch of ``input_shape`` (no batch dim)."""
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters() if p.numel()), torch.device("cpu"))
    model(torch.zeros((2, *input_shape), device=device))
    model.train(was_training)


def total_relus(model: nn.Module) -> int:
    """Linearizable ReLUs per image (what a budget fraction refers to)."""
    return sum(layer.total() for _, layer in linearizable_layers(model))


def count_relus(model: nn.Module, threshold: float | None = None) -> int:
    """ReLUs kept per image: mask entries equal to 1, each weighted by the ReLUs it stands
    for (channel masks stand for H*W). With ``threshold`` count entries ``> threshold``
    (SNL's running count of real-valued masks)."""
    return sum(layer.count(threshold) for _, layer in linearizable_layers(model))


def relu_fraction(model: nn.Module) -> float:
    """``count_relus / total_relus``."""
    total = total_relus(model)
    return count_relus(model) / total if total else 0.0


def set_all_masks(model: nn.Module, value: float) -> None:
    """Freeze every mask to the constant 0 (all linear) or 1 (all ReLU)."""
    for _, layer in linearizable_layers(model):
        layer.freeze(torch.full_like(layer.mask, float(value)))


def mask_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The mask parameters (for SNL's optimizer)."""
    return [layer.mask for _, layer in linearizable_layers(model)]


def weight_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Named trainable weights, masks excluded (for gradient norms, Hessians, weight distance)."""
    masks = {id(p) for p in mask_parameters(model)}
    return [(n, p) for n, p in model.named_parameters() if id(p) not in masks]
