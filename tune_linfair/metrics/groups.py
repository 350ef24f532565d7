"""Disaggregated (per-group) accuracy metrics, with numpy and pandas only.

A small counterpart of fairlearn's ``MetricFrame``: computed once from per-sample
predictions, then read. No torch import, so ``analysis/`` can reuse it on Parquet rows.

Definitions (Das, Romanelli, Fioretto, ICML 2024, "Disparate Impact on Group Accuracy of
Linearization for Private Inference", Sec. 4 and Figs. 1/6; README "Metrics"), with
accuracies in percent:

- accuracy of group ``a``: ``acc_a = 100 * |{i in S_a : yhat_i = y_i}| / |S_a|``
  (NaN when ``S_a`` is empty);
- relative drop of group ``a`` against a base model:
  ``drop_a = 100 * (acc_base_a - acc_a) / acc_base_a`` (NaN when ``acc_base_a`` is 0, since
  the ratio is undefined, or when either accuracy is NaN);
- worst-group drop: ``max_a drop_a`` over groups with a defined drop;
- accuracy parity gap: ``max_a acc_a - min_a acc_a`` over non-empty groups;
- 95% intervals of ``acc_a`` and ``drop_a`` (:meth:`GroupMetrics.intervals`): Wilson's
  score interval over the group's samples, the base accuracy held fixed as the reference,
  so the drop's interval is the accuracy's, mapped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd

from tune_linfair.errors import UserError


def _as_1d(name: str, values: Any) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise UserError(f"{name} must be one-dimensional, got shape {arr.shape}")
    return arr


@dataclass(frozen=True)
class GroupMetrics:
    """Overall and per-group accuracy and loss of one model on one split.

    ``overall``: ``{"n": int, "accuracy": % , "loss": mean per-sample loss or NaN}``.
    ``by_group``: DataFrame indexed by group id 0..G-1 (index name ``group``) with columns
    ``group_name``, ``n`` (int64), ``accuracy`` (%, NaN for an empty group) and ``loss``
    (mean per-sample loss over the group; NaN when no loss was given or the group is empty).
    """

    overall: dict[str, float]
    by_group: pd.DataFrame

    @classmethod
    def from_predictions(
        cls,
        y_true: Any,
        y_pred: Any,
        groups: Any,
        group_names: Sequence[str],
        loss: Any | None = None,
    ) -> GroupMetrics:
        """Metrics from per-sample targets, predictions, group ids in ``0..len(group_names)-1``
        and optional per-sample losses (array-likes of equal length)."""
        names = [str(name) for name in group_names]
        if not names:
            raise UserError("group_names is empty; give one name per group id")
        y = _as_1d("y_true", y_true)
        yhat = _as_1d("y_pred", y_pred)
        g = _as_1d("groups", groups)
        if not (len(y) == len(yhat) == len(g)):
            raise UserError(
                f"y_true, y_pred and groups differ in length: {len(y)}, {len(yhat)}, {len(g)}"
            )
        if len(g) and not np.issubdtype(g.dtype, np.integer):
            raise UserError(f"groups must be integer ids, got dtype {g.dtype}")
        num_groups = len(names)
        if len(g) and (g.min() < 0 or g.max() >= num_groups):
            raise UserError(
                f"group ids must lie in 0..{num_groups - 1} ({num_groups} group names), "
                f"got ids from {g.min()} to {g.max()}"
            )
        g = g.astype(np.int64)
        correct = (y == yhat).astype(np.float64)
        n = np.bincount(g, minlength=num_groups)
        hits = np.bincount(g, weights=correct, minlength=num_groups)
        nonempty = n > 0
        accuracy = np.full(num_groups, math.nan)
        accuracy[nonempty] = 100.0 * hits[nonempty] / n[nonempty]
        group_loss = np.full(num_groups, math.nan)
        overall_loss = math.nan
        if loss is not None:
            per_sample = _as_1d("loss", loss).astype(np.float64)
            if len(per_sample) != len(g):
                raise UserError(
                    f"loss has {len(per_sample)} values for {len(g)} samples; give one per sample"
                )
            sums = np.bincount(g, weights=per_sample, minlength=num_groups)
            group_loss[nonempty] = sums[nonempty] / n[nonempty]
            overall_loss = float(per_sample.mean()) if len(g) else math.nan
        by_group = pd.DataFrame(
            {
                "group_name": names,
                "n": n.astype(np.int64),
                "accuracy": accuracy,
                "loss": group_loss,
            },
            index=pd.RangeIndex(num_groups, name="group"),
        )
        overall = {
            "n": int(len(g)),
            "accuracy": 100.0 * float(correct.mean()) if len(g) else math.nan,
            "loss": overall_loss,
        }
        return cls(overall=overall, by_group=by_group)

    @property
    def num_groups(self) -> int:
        return len(self.by_group)

    @property
    def group_accuracy(self) -> list[float]:
        """Accuracy (%) of each group id, NaN for an empty group."""
        return [float(v) for v in self.by_group["accuracy"]]

    @property
    def parity_gap(self) -> float:
        """``max_a acc_a - min_a acc_a`` over groups with ``n > 0`` (NaN if none)."""
        acc = self.by_group.loc[self.by_group["n"] > 0, "accuracy"]
        return float(acc.max() - acc.min()) if len(acc) else math.nan

    def _base_accuracy(self, base: GroupMetrics | Sequence[float] | np.ndarray) -> np.ndarray:
        if isinstance(base, GroupMetrics):
            values = base.by_group["accuracy"].to_numpy(dtype=np.float64)
        else:
            values = np.asarray(base, dtype=np.float64).reshape(-1)
        if len(values) != self.num_groups:
            raise UserError(
                f"base accuracy has {len(values)} groups, these metrics have {self.num_groups}"
            )
        finite = values[np.isfinite(values)]
        if len(finite) and (finite.min() < 0 or finite.max() > 100):
            raise UserError(
                f"base accuracies must be percentages in [0, 100], got {values.tolist()}"
            )
        return values

    def relative_drop(self, base: GroupMetrics | Sequence[float] | np.ndarray) -> pd.Series:
        """Per-group ``100 * (acc_base_a - acc_a) / acc_base_a`` (paper Figs. 1/6).

        ``base`` is the base model's :class:`GroupMetrics` or its per-group accuracies (%).
        NaN where the base accuracy is 0 (undefined ratio) or either accuracy is NaN
        (an empty group). Negative values mean the group improved.
        """
        b = self._base_accuracy(base)
        acc = self.by_group["accuracy"].to_numpy(dtype=np.float64)
        drop = np.full(self.num_groups, math.nan)
        ok = np.isfinite(b) & np.isfinite(acc) & (b > 0)
        drop[ok] = 100.0 * (b[ok] - acc[ok]) / b[ok]
        return pd.Series(drop, index=self.by_group.index, name="relative_drop")

    def intervals(
        self,
        base: GroupMetrics | Sequence[float] | np.ndarray | None = None,
        *,
        level: float = 0.95,
    ) -> pd.DataFrame:
        """Per group: ``accuracy_ci_low/high`` (%) and, given ``base``, ``relative_drop_ci_low
        /high`` (%), the ``level`` interval of the group's accuracy over its samples.

        Wilson's score interval (Wilson 1927; Brown, Cai & DasGupta, Stat. Sci. 2001) for
        ``k`` correct of ``n``, ``p = k / n``, ``z`` the normal quantile::

            (p + z^2 / 2n  -/+  z sqrt(p (1 - p) / n + z^2 / 4n^2)) / (1 + z^2 / n)

        The percentile bootstrap over the samples (binomial resampling) collapses to a point
        when a group is 0% or 100% correct, common for 36-image groups; Wilson's does not.
        The drop's interval maps the accuracy's with the base accuracy as the fixed
        reference. NaN for an empty group, and for the drop where it is undefined.
        """
        z = NormalDist().inv_cdf(0.5 + level / 2)
        n = self.by_group["n"].to_numpy(dtype=np.float64)
        p = self.by_group["accuracy"].to_numpy(dtype=np.float64) / 100.0
        with np.errstate(divide="ignore", invalid="ignore"):
            denom = 1.0 + z**2 / n
            center = (p + z**2 / (2 * n)) / denom
            half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
        low = np.where(n > 0, 100.0 * (center - half), math.nan)
        high = np.where(n > 0, 100.0 * (center + half), math.nan)
        out = pd.DataFrame(
            {"accuracy_ci_low": low, "accuracy_ci_high": high}, index=self.by_group.index
        )
        b = np.full(len(n), math.nan) if base is None else self._base_accuracy(base)
        ok = np.isfinite(b) & (b > 0)
        out["relative_drop_ci_low"] = np.where(
            ok, 100.0 * (b - high) / np.where(ok, b, 1), math.nan
        )
        out["relative_drop_ci_high"] = np.where(
            ok, 100.0 * (b - low) / np.where(ok, b, 1), math.nan
        )
        return out

    def worst_group_drop(self, base: GroupMetrics | Sequence[float] | np.ndarray) -> float:
        """``max_a drop_a`` over groups whose drop is defined (NaN if none is)."""
        drop = self.relative_drop(base).dropna()
        return float(drop.max()) if len(drop) else math.nan
