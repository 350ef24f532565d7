"""One call that measures everything the paper reports per group, as tidy records.

:func:`diagnose` evaluates a model on one named split and returns the rows of the ``groups``
and ``samples`` Parquet tables (:mod:`tune_linfair.results`) plus the trial-level summary. Metrics and
their sources (Das, Romanelli, Fioretto, ICML 2024):

- accuracy, relative drop, worst-group drop, parity gap (Figs. 1/6): :mod:`.groups`;
- group gradient norm (Theorem 4.4, Fig. 3): :mod:`.gradients`;
- group Hessian top eigenvalue (Theorem 4.4, Fig. 4): :mod:`.hessian`;
- softmax margin and geometric boundary distance (Fig. 8): :mod:`.boundary`.

The caller adds ``run_id`` / ``trial_id``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from tune_linfair.data.base import Split
from tune_linfair.errors import UserError
from tune_linfair.metrics.boundary import geometric_distance, softmax_margin
from tune_linfair.metrics.gradients import group_gradient_norms
from tune_linfair.metrics.groups import GroupMetrics
from tune_linfair.metrics.hessian import group_hessian_top_eigenvalues
from tune_linfair.numerics import float32
from tune_linfair.train import evaluate

GROUP_ROW_KEYS: tuple[str, ...] = (
    "stage",
    "split",
    "group",
    "group_name",
    "n",
    "accuracy",
    "base_accuracy",
    "relative_drop",
    "accuracy_ci_low",
    "accuracy_ci_high",
    "relative_drop_ci_low",
    "relative_drop_ci_high",
    "loss",
    "grad_norm",
    "hessian_top_eig",
    "mean_margin",
    "mean_geometric_distance",
)
"""Keys of every group row, in table order."""

SAMPLE_ROW_KEYS: tuple[str, ...] = (
    "stage",
    "split",
    "index",
    "group",
    "label",
    "prediction",
    "correct",
    "margin",
    "geometric_distance",
)
"""Keys of every sample row, in table order."""


@dataclass(frozen=True)
class Diagnosis:
    """What :func:`diagnose` measured on one split.

    ``group_rows``: one dict per group id with :data:`GROUP_ROW_KEYS`; ``sample_rows``: one
    dict per sample (in split order) with :data:`SAMPLE_ROW_KEYS`. Summary: overall
    ``accuracy`` (%), ``worst_group_drop`` (NaN without a base), ``parity_gap`` and
    ``group_accuracy`` (one value per group id). ``metrics`` keeps the :class:`GroupMetrics`.
    """

    group_rows: list[dict[str, object]]
    sample_rows: list[dict[str, object]]
    accuracy: float
    worst_group_drop: float
    parity_gap: float
    group_accuracy: list[float]
    metrics: GroupMetrics = field(repr=False)


def _group_means(values: np.ndarray, groups: np.ndarray, num_groups: int) -> list[float]:
    n = np.bincount(groups, minlength=num_groups)
    sums = np.bincount(groups, weights=values, minlength=num_groups)
    return [float(s / k) if k else math.nan for s, k in zip(sums, n)]


@float32()
def diagnose(
    model: nn.Module,
    split: Split,
    *,
    split_name: str,
    group_names: Sequence[str],
    stage: str,
    base_group_accuracy: Sequence[float] | None = None,
    gradients: bool = True,
    hessian: bool = True,
    hessian_max_samples: int | None = 256,
    boundary: bool = True,
    batch_size: int = 256,
) -> Diagnosis:
    """Per-group and per-sample diagnostics of ``model`` on ``split`` (called ``split_name``).

    Group ids are ``0..len(group_names)-1``. ``base_group_accuracy`` (the base model's
    per-group accuracy in %, same split) gives ``base_accuracy``, ``relative_drop`` and
    ``worst_group_drop``; without it they are NaN. The flags switch off the costlier parts:
    ``gradients`` (one forward/backward pass over the split), ``hessian`` (power iteration,
    at most ``hessian_max_samples`` samples per group, None for all) and ``boundary`` (the
    geometric distance, one input-gradient pass). The softmax margin comes free with the
    logits and is always reported. What is not computed is NaN. Everything is computed in
    float32 (:func:`~tune_linfair.numerics.float32`), even inside a caller's autocast.
    """
    names = [str(name) for name in group_names]
    num_groups = len(names)
    if num_groups == 0:
        raise UserError("group_names is empty; give one name per group id")
    if len(split) == 0:
        raise UserError(f"split {split_name!r} is empty; nothing to diagnose")
    if batch_size < 1:
        raise UserError(f"batch_size must be at least 1, got {batch_size}")

    result = evaluate(model, split, batch_size=batch_size)
    y = result.y.numpy().astype(np.int64)
    g = result.g.numpy().astype(np.int64)
    pred = result.pred.numpy().astype(np.int64)
    metrics = GroupMetrics.from_predictions(y, pred, g, names, loss=result.loss.numpy())
    margin = softmax_margin(result.logits).double().numpy()

    nan_groups = [math.nan] * num_groups
    if boundary:
        geo = geometric_distance(model, split, batch_size=batch_size).double().numpy()
    else:
        geo = np.full(len(split), math.nan)
    grad_norm = (
        group_gradient_norms(model, split, num_groups, batch_size=batch_size)
        if gradients
        else nan_groups
    )
    top_eig = (
        group_hessian_top_eigenvalues(
            model, split, num_groups, max_samples=hessian_max_samples, batch_size=batch_size
        )
        if hessian
        else nan_groups
    )
    if base_group_accuracy is not None:
        base = [float(v) for v in base_group_accuracy]
        drop = [float(v) for v in metrics.relative_drop(base)]
        worst = metrics.worst_group_drop(base)
    else:
        base, drop, worst = nan_groups, nan_groups, math.nan

    ci = metrics.intervals(base if base_group_accuracy is not None else None)
    mean_margin = _group_means(margin, g, num_groups)
    mean_geo = _group_means(geo, g, num_groups)
    by_group = metrics.by_group
    group_rows: list[dict[str, object]] = []
    for a in range(num_groups):
        group_rows.append(
            {
                "stage": stage,
                "split": split_name,
                "group": a,
                "group_name": names[a],
                "n": int(by_group["n"].iloc[a]),
                "accuracy": float(by_group["accuracy"].iloc[a]),
                "base_accuracy": float(base[a]),
                "relative_drop": float(drop[a]),
                **{k: float(ci[k].iloc[a]) for k in ci.columns},
                "loss": float(by_group["loss"].iloc[a]),
                "grad_norm": float(grad_norm[a]),
                "hessian_top_eig": float(top_eig[a]),
                "mean_margin": mean_margin[a],
                "mean_geometric_distance": mean_geo[a],
            }
        )
    correct = pred == y
    sample_rows: list[dict[str, object]] = [
        {
            "stage": stage,
            "split": split_name,
            "index": i,
            "group": int(g[i]),
            "label": int(y[i]),
            "prediction": int(pred[i]),
            "correct": bool(correct[i]),
            "margin": float(margin[i]),
            "geometric_distance": float(geo[i]),
        }
        for i in range(len(y))
    ]
    return Diagnosis(
        group_rows=group_rows,
        sample_rows=sample_rows,
        accuracy=float(metrics.overall["accuracy"]),
        worst_group_drop=float(worst),
        parity_gap=metrics.parity_gap,
        group_accuracy=metrics.group_accuracy,
        metrics=metrics,
    )


__all__ = ["GROUP_ROW_KEYS", "SAMPLE_ROW_KEYS", "Diagnosis", "diagnose"]
