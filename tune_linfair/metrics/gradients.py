"""Per-group gradient norms (paper Sec. 4, Theorem 4.4, Fig. 3).

Das, Romanelli and Fioretto (ICML 2024) bound the excess risk a group suffers under
linearization by, among others, the norm of the group's loss gradient at the base weights
(Theorem 4.4), and show in Fig. 3 that minority groups have larger group gradient norms.
This module measures

    ``|| grad_theta J(theta; S_a) ||_2``,  ``J(theta; S_a) = (1 / n_a) sum_{i in S_a} CE(f_theta(x_i), y_i)``

over the model's weights ``theta`` (``weight_parameters``: every parameter except the
linearization masks), with the model in eval mode (BatchNorm uses its running statistics, so
samples are independent and the group loss does not depend on how it is batched).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from tune_linfair.data.base import Split
from tune_linfair.errors import UserError
from tune_linfair.models.activation import weight_parameters
from tune_linfair.numerics import float32
from tune_linfair.train import iterate_batches, model_device


def check_groups(split: Split, num_groups: int, batch_size: int | None = None) -> None:
    """Raise :class:`UserError` unless every group id of ``split`` lies in ``0..num_groups-1``
    (and ``batch_size``, when given, is positive)."""
    if num_groups < 1:
        raise UserError(f"num_groups must be at least 1, got {num_groups}")
    if batch_size is not None and batch_size < 1:
        raise UserError(f"batch_size must be at least 1, got {batch_size}")
    if len(split):
        lo, hi = int(split.g.min()), int(split.g.max())
        if lo < 0 or hi >= num_groups:
            raise UserError(
                f"group ids must lie in 0..{num_groups - 1}, the split has ids {lo}..{hi}"
            )


@contextmanager
def diagnostic_mode(model: nn.Module) -> Iterator[list[nn.Parameter]]:
    """Eval mode, autograd on, full float32 (:func:`~tune_linfair.numerics.float32`: no
    autocast, even inside a caller's, no TF32), and every weight (masks excluded) requiring
    grad; yields the weights. Restores the training flag, the precision settings and each
    weight's ``requires_grad`` on exit.

    Weights frozen by the caller (a teacher, say) are differentiated too: the diagnostic is a
    property of ``theta``, not of what an optimizer currently updates. Nothing is written to
    ``.grad``: callers use :func:`torch.autograd.grad`.
    """
    params = [p for _, p in weight_parameters(model)]
    if not params:
        raise UserError("the model has no weights to differentiate")
    flags = [p.requires_grad for p in params]
    was_training = model.training
    model.eval()
    try:
        for p in params:
            p.requires_grad_(True)
        with torch.enable_grad(), float32():
            yield params
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
        model.train(was_training)


def grads_or_zeros(
    grads: tuple[torch.Tensor | None, ...], params: list[nn.Parameter]
) -> list[torch.Tensor]:
    """``torch.autograd.grad(..., allow_unused=True)`` output with ``None`` -> zeros."""
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]


def group_indices(split: Split, group: int) -> torch.Tensor:
    """Positions (LongTensor, on the split's device) of the samples of ``group``."""
    return torch.nonzero(split.g == group).flatten()


def group_gradient_norms(
    model: nn.Module, split: Split, num_groups: int, *, batch_size: int = 256
) -> list[float]:
    """``|| grad_theta J(theta; S_a) ||_2`` for each group id ``a`` (NaN for an empty group).

    The gradient of the *sum* of per-sample cross-entropies is accumulated over the group's
    batches and divided by ``n_a``, so the result is the true full-group gradient (paper
    Theorem 4.4, Fig. 3), not an average of batch-gradient norms and independent of
    ``batch_size``. Computed in float32 (:func:`diagnostic_mode`).
    """
    check_groups(split, num_groups, batch_size)
    device = model_device(model)
    norms: list[float] = []
    with diagnostic_mode(model) as params:
        for a in range(num_groups):
            sub = split.subset(group_indices(split, a))
            n_a = len(sub)
            if n_a == 0:
                norms.append(math.nan)
                continue
            total = [torch.zeros_like(p) for p in params]
            for batch in iterate_batches(sub, batch_size):
                logits = model(batch.x.to(device))
                loss = F.cross_entropy(logits, batch.y.to(device), reduction="sum")
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                for acc, g in zip(total, grads):
                    if g is not None:
                        acc.add_(g)
            squared = sum(float(t.double().pow(2).sum()) for t in total)
            norms.append(math.sqrt(squared) / n_a)
    return norms
