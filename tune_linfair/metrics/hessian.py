"""Per-group Hessian top eigenvalue (paper Sec. 4, Theorem 4.4, Fig. 4).

Das, Romanelli and Fioretto (ICML 2024) bound a group's excess risk under linearization
with the curvature of the group loss, ``lambda_max(H_a)`` with
``H_a = grad^2_theta J(theta; S_a)`` and ``J`` the mean cross-entropy over the group's
samples (Theorem 4.4), and show in Fig. 4 that minority groups have larger ``lambda_max``.

We estimate it by power iteration on Hessian-vector products computed by double backprop
(Pearlmutter's trick: ``H v = grad_theta <grad_theta J, v>``), over the model's weights
(masks excluded) in eval mode. Power iteration converges to the eigenvalue of largest
*magnitude*. At a trained model the Hessian is near positive semi-definite, so this is the
paper's ``lambda_max``; if a negative eigenvalue dominates in magnitude, that is what comes
back, with its sign (the value returned is the Rayleigh quotient ``v^T H v`` of the final
unit vector ``v``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tune_linfair.data.base import Split
from tune_linfair.errors import UserError
from tune_linfair.metrics.gradients import (
    check_groups,
    diagnostic_mode,
    grads_or_zeros,
    group_indices,
)
from tune_linfair.train import iterate_batches, model_device

Vector = list[torch.Tensor]
"""A vector in weight space, one tensor per weight."""


def _dot(u: Sequence[torch.Tensor], v: Sequence[torch.Tensor]) -> float:
    return float(sum((a.double() * b.double()).sum() for a, b in zip(u, v)))


def power_iteration(
    hvp: Callable[[Vector], Vector],
    like: Sequence[torch.Tensor],
    *,
    tol: float = 1e-3,
    max_iter: int = 100,
    generator: torch.Generator | None = None,
) -> float:
    """Largest-magnitude eigenvalue of the symmetric operator ``hvp``, with its sign.

    ``v_0`` ~ N(0, I) (drawn with ``generator`` on the CPU) normalized; then
    ``lambda_k = v_k^T H v_k`` (Rayleigh quotient) and ``v_{k+1} = H v_k / ||H v_k||``, until
    ``|lambda_k - lambda_{k-1}| <= tol * |lambda_k|`` or ``max_iter`` products. A zero
    product gives 0. Warns (``RuntimeWarning``) when ``max_iter`` is reached first.
    """
    if tol <= 0:
        raise UserError(f"tol must be positive, got {tol}")
    if max_iter < 1:
        raise UserError(f"max_iter must be at least 1, got {max_iter}")
    v = [
        torch.randn(p.shape, generator=generator, dtype=torch.float64).to(p.device, p.dtype)
        for p in like
    ]
    norm = math.sqrt(_dot(v, v))
    v = [t / norm for t in v]
    eig = math.nan
    for _ in range(max_iter):
        hv = hvp(v)
        new = _dot(v, hv)
        hv_norm = math.sqrt(_dot(hv, hv))
        if hv_norm == 0.0:
            return 0.0
        if math.isfinite(eig) and abs(new - eig) <= tol * abs(new):
            return new
        eig = new
        v = [t / hv_norm for t in hv]
    warnings.warn(
        f"power iteration did not reach relative change {tol} in {max_iter} iterations; "
        f"returning the last estimate {eig:.6g}",
        RuntimeWarning,
        stacklevel=2,
    )
    return eig


def _group_hvp(
    model: nn.Module, params: list[nn.Parameter], group: Split, batch_size: int
) -> Callable[[Vector], Vector]:
    """``v -> H_a v`` for ``J`` = mean CE over ``group``. A group that fits in one batch keeps
    its first-order graph between products (one forward pass in all); a larger one recomputes
    it batch by batch (memory bounded by one batch), summing ``H_batch_sum v`` over batches
    and dividing by ``n_a``."""
    device = model_device(model)
    n = len(group)

    def batch_grads(x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        loss = F.cross_entropy(model(x.to(device)), y.to(device), reduction="sum")
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        return grads_or_zeros(grads, params)

    def hvp_of(grads: list[torch.Tensor], v: Vector, retain: bool) -> Vector:
        pairs = [(g, t) for g, t in zip(grads, v) if g.requires_grad]
        if not pairs:
            return [torch.zeros_like(p) for p in params]
        out = torch.autograd.grad(
            [g for g, _ in pairs],
            params,
            grad_outputs=[t for _, t in pairs],
            retain_graph=retain,
            allow_unused=True,
        )
        return [t.detach() for t in grads_or_zeros(out, params)]

    if n <= batch_size:
        cached = batch_grads(group.x, group.y)
        return lambda v: [t / n for t in hvp_of(cached, v, retain=True)]

    def hvp(v: Vector) -> Vector:
        total = [torch.zeros_like(p) for p in params]
        for batch in iterate_batches(group, batch_size):
            for acc, t in zip(total, hvp_of(batch_grads(batch.x, batch.y), v, retain=False)):
                acc.add_(t)
        return [t / n for t in total]

    return hvp


def group_hessian_top_eigenvalues(
    model: nn.Module,
    split: Split,
    num_groups: int,
    *,
    max_samples: int | None = None,
    tol: float = 1e-3,
    max_iter: int = 100,
    seed: int = 0,
    batch_size: int = 256,
) -> list[float]:
    """``lambda_max(grad^2_theta J(theta; S_a))`` for each group id ``a`` (NaN if empty).

    Power iteration (see :func:`power_iteration`) on exact Hessian-vector products of the
    mean CE over the group's samples. ``max_samples`` caps the samples per group for cost:
    a larger group is replaced by a subset drawn without replacement with a generator seeded
    by ``(seed, a)``; the power iteration's start vector is seeded the same way, so results
    are reproducible. Paper Theorem 4.4, Fig. 4.
    """
    check_groups(split, num_groups, batch_size)
    if max_samples is not None and max_samples < 1:
        raise UserError(f"max_samples must be at least 1 (or None for all), got {max_samples}")
    eigs: list[float] = []
    with diagnostic_mode(model) as params:
        for a in range(num_groups):
            index = group_indices(split, a)
            if len(index) == 0:
                eigs.append(math.nan)
                continue
            generator = torch.Generator().manual_seed((seed * 1_000_003 + a) % 2**63)
            if max_samples is not None and len(index) > max_samples:
                pick = torch.randperm(len(index), generator=generator)[:max_samples]
                index = index[pick.sort().values.to(index.device)]
            hvp = _group_hvp(model, params, split.subset(index), batch_size)
            eigs.append(
                power_iteration(hvp, params, tol=tol, max_iter=max_iter, generator=generator)
            )
    return eigs
