"""Theorem 4.4 checked along the straight path from the base weights to the linearized ones.

Das, Romanelli, Fioretto (ICML 2024), Theorem 4.4 bounds the excess loss of group ``a``
after linearization by a second-order Taylor expansion around the base weights ``theta``:

    R_a = J(theta_lin; S_a) - J(theta; S_a) <= ||g_a|| D + 0.5 lambda_max(H_a) D^2 + O(D^3),

``g_a``, ``H_a`` the gradient and Hessian of the group's mean cross-entropy ``J(.; S_a)``
at ``theta``, ``D = ||theta_lin - theta||``. The end-point check (analysis/claims.py) drops
the ``O(D^3)`` term at ``D`` of order 1-10, far outside the Taylor regime. Here the same
quantities are followed along ``theta(t) = theta + t (theta_lin - theta)``, ``t in [0, 1]``:

    E_a(t) = J(theta(t); S_a) - J(theta; S_a)   vs   B_a(t) = ||g_a|| t D + 0.5 lambda_max t^2 D^2,

so one sees where the quadratic bound is tight (small ``t``) and the first ``t`` at which
it stops holding. ``J(theta(t))`` is evaluated with two sets of masks:

- ``base_masks``: the base model's masks (all ReLUs): the pure weight perturbation that the
  theorem's Taylor argument describes; ``E_a(0) = 0``;
- ``lin_masks``: the linearized model's binary masks: the function actually deployed; here
  ``E_a(0) != 0`` already, since replacing ReLUs by the identity is not a weight change, so
  the bound (0 at ``t = 0``) cannot hold near ``t = 0`` unless the mask change lowers the loss.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import nn

from tune_linfair.data.base import Split
from tune_linfair.metrics.distance import weight_distance
from tune_linfair.metrics.gradients import group_gradient_norms
from tune_linfair.metrics.hessian import group_hessian_top_eigenvalues
from tune_linfair.models.activation import weight_parameters
from tune_linfair.train import evaluate

MASKS = ("base_masks", "lin_masks")


def interpolate(mask_source: nn.Module, base: nn.Module, lin: nn.Module, t: float) -> nn.Module:
    """A copy of ``mask_source`` (its masks and buffers) with weights
    ``theta + t (theta_lin - theta)`` (``theta`` from ``base``, ``theta_lin`` from ``lin``)."""
    model = copy.deepcopy(mask_source)
    theta = dict(weight_parameters(base))
    theta_lin = dict(weight_parameters(lin))
    with torch.no_grad():
        for name, p in weight_parameters(model):
            p.copy_(theta[name] + t * (theta_lin[name] - theta[name]))
    return model


def group_losses(model: nn.Module, split: Split, num_groups: int) -> list[float]:
    """``J(theta; S_a)``: mean cross-entropy of each group (NaN for an empty group)."""
    result = evaluate(model, split)
    loss = result.loss.double()
    return [
        float(loss[result.g == a].mean()) if (result.g == a).any() else math.nan
        for a in range(num_groups)
    ]


def first_violation(ts: Sequence[float], excess: Sequence[float], bound: Sequence[float]) -> float:
    """The smallest ``t`` with ``excess > bound`` (NaN when the bound holds everywhere)."""
    for t, e, b in zip(ts, excess, bound):
        if e > b:
            return float(t)
    return math.nan


def path_check(
    base: nn.Module,
    lin: nn.Module,
    split: Split,
    num_groups: int,
    ts: Sequence[float] = tuple(i / 20 for i in range(21)),
    *,
    hessian_max_samples: int | None = None,
    seed: int = 0,
) -> dict:
    """Theorem 4.4 along ``theta(t)`` for each group (module docstring).

    Returns ``{"D", "t", "groups": [{"grad_norm", "lambda_max", "bound": [B_a(t)],
    "base_masks": {"excess": [E_a(t)], "first_violation", "used_first", "used_at_1"},
    "lin_masks": {...}}]}``; ``used_first = E_a(t_1) / B_a(t_1)`` at the first ``t > 0`` and
    ``used_at_1 = E_a(1) / B_a(1)``: the share of the bound used (1: tight; > 1: violated).
    """
    d = weight_distance(lin, base)
    grads = group_gradient_norms(base, split, num_groups)
    eigs = group_hessian_top_eigenvalues(
        base, split, num_groups, max_samples=hessian_max_samples, seed=seed
    )
    start = group_losses(base, split, num_groups)
    losses = {
        masks: [group_losses(interpolate(src, base, lin, t), split, num_groups) for t in ts]
        for masks, src in zip(MASKS, (base, lin))
    }
    groups = []
    for a in range(num_groups):
        bound = [grads[a] * t * d + 0.5 * abs(eigs[a]) * (t * d) ** 2 for t in ts]
        row: dict = {"grad_norm": grads[a], "lambda_max": eigs[a], "bound": bound}
        for masks in MASKS:
            excess = [losses[masks][i][a] - start[a] for i in range(len(ts))]
            row[masks] = {
                "excess": excess,
                "first_violation": first_violation(ts, excess, bound),
                "used_first": excess[1] / bound[1] if bound[1] > 0 else math.nan,
                "used_at_1": excess[-1] / bound[-1] if bound[-1] > 0 else math.nan,
            }
        groups.append(row)
    return {"D": d, "t": list(ts), "groups": groups}
