"""Per-sample distance to the decision boundary (paper Sec. 4, Theorem 4.4, Fig. 8).

Das, Romanelli and Fioretto (ICML 2024) relate a group's sensitivity to linearization to how
close its samples lie to the decision boundary, measured by the softmax margin
``p_top1 - p_top2`` (their proxy). We also report a first-order geometric estimate: with
``z_1``, ``z_2`` the largest and second-largest logits of a sample,

    ``d(x) = (z_1(x) - z_2(x)) / || grad_x (z_1(x) - z_2(x)) ||_2``,

the distance from ``x`` to the hyperplane where the linearized logit gap vanishes (exact for
a linear classifier: ``|w.x + b| / ||w||``).
"""

from __future__ import annotations

import torch
from torch import nn

from tune_linfair.data.base import Split
from tune_linfair.errors import UserError
from tune_linfair.numerics import float32
from tune_linfair.train import iterate_batches, model_device


def softmax_margin(logits: torch.Tensor) -> torch.Tensor:
    """``p_top1 - p_top2`` per sample, ``p = softmax(logits)``; in [0, 1], 0 on the boundary.

    ``logits``: (N, K) with K >= 2. Returns (N,) in float32 or float64 (the logits' type,
    at least float32).
    """
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise UserError(f"softmax margin needs (N, K>=2) logits, got shape {tuple(logits.shape)}")
    dtype = torch.promote_types(logits.dtype, torch.float32)
    top = torch.softmax(logits.to(dtype), dim=1).topk(2, dim=1).values
    return top[:, 0] - top[:, 1]


def geometric_distance(model: nn.Module, split: Split, *, batch_size: int = 256) -> torch.Tensor:
    """First-order distance ``(z_1 - z_2) / ||grad_x (z_1 - z_2)||_2`` of each sample, (N,)
    on the CPU, in order.

    The model runs in eval mode (restored after), so samples are independent and the input
    gradient of the batch *sum* of logit gaps is each sample's own gradient: one backward
    pass per batch. A sample exactly on the boundary (``z_1 = z_2``) gets 0; a positive gap
    with a zero input gradient gets ``inf``. Weights get no ``.grad``. Computed in float32
    (:func:`~tune_linfair.numerics.float32`), even inside a caller's autocast.
    """
    if batch_size < 1:
        raise UserError(f"batch_size must be at least 1, got {batch_size}")
    device = model_device(model)
    was_training = model.training
    model.eval()
    out: list[torch.Tensor] = []
    try:
        with torch.enable_grad(), float32():
            for batch in iterate_batches(split, batch_size):
                x = batch.x.to(device).detach().requires_grad_(True)
                z = model(x)
                if z.dim() != 2 or z.shape[1] < 2:
                    raise UserError(
                        f"geometric distance needs (N, K>=2) logits, got {tuple(z.shape)}"
                    )
                top = z.detach().topk(2, dim=1).indices
                gap = z.gather(1, top[:, :1]).squeeze(1) - z.gather(1, top[:, 1:2]).squeeze(1)
                (grad,) = torch.autograd.grad(gap.sum(), x)
                norm = grad.flatten(1).norm(dim=1)
                gap = gap.detach()
                dist = torch.where(gap == 0, torch.zeros_like(gap), gap / norm)
                out.append(dist.cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)
