"""Configurations over seeds: the ``configs`` table, the Pareto front on means, and how well
validation ranks what test measures. No torch, no Ray.

A *configuration* is a trial's parameters without its seed (:attr:`TrialParams.config_id
<tune_linfair.trial.TrialParams.config_id>`); a sweep runs each one on ``repeats`` seeds (a
seed = data split, base model, linearization and fine-tuning order). One trials row per
seed; :func:`configs_table` aggregates them into one row per configuration:

- ``n_seeds`` (ok seeds), ``n_failed``, ``status``: ``ok`` when every seed ran and none
  failed, ``failed`` when one did (Optuna was told FAIL, never a partial mean),
  ``incomplete`` when it has fewer seeds than the run's other configurations (a sweep
  stopped early);
- for each of :data:`METRICS`: mean, standard deviation (ddof 1) and a 95% interval,
  ``mean -/+ t_{0.975, n-1} * std / sqrt(n)`` (Student t over seeds; NaN with one seed);
- ``pareto``: non-dominated among the ok configurations on the *means* of the search
  objectives (:data:`tune_linfair.trial.OBJECTIVES`); with ``--max-accuracy-drop``, among
  the ``feasible`` ones only.

Statistics over seeds treat seeds as the independent replicates: trials of one seed share a
base model and a split, so they are never pooled as if independent.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from scipy import stats

from tune_linfair.cache import atomic_write
from tune_linfair.errors import UserError
from tune_linfair.pareto import hypervolume, median_attainment, pareto_mask
from tune_linfair.trial import OBJECTIVES

METRICS: tuple[str, ...] = (
    "val_accuracy",
    "val_worst_group_drop",
    "relu_count",
    "test_accuracy",
    "test_worst_group_drop",
)
"""What the configs table summarizes over seeds (units as in the trials table)."""
PARAMS: tuple[str, ...] = (
    "method",
    "budget",
    "mitigation",
    "mask_mitigation",
    "mu",
    "epsilon",
    "eta",
    "lr",
)
STATS = (("mean", "mean over ok seeds"), ("std", "standard deviation over seeds (ddof 1)"))
STATS += (("ci_low", "95% interval, low (Student t over seeds)"), ("ci_high", "95% interval, high"))


def _configs_schema() -> pa.Schema:
    f, s, i = pa.float64(), pa.string(), pa.int64()
    fields = [
        ("run_id", s, "sweep identifier"),
        ("config_id", s, "configuration identifier (joins trials.config_id)"),
        ("method", s, "linearization method"),
        ("budget", f, "requested ReLU budget"),
        ("mitigation", s, "fine-tuning mitigation"),
        ("mask_mitigation", s, "group term of SNL's mask training"),
        ("mu", f, "lagrangian multiplier step (null for other mitigations)"),
        ("epsilon", f, "accuracy_gap slack, percentage points (null for other mitigations)"),
        ("eta", f, "group_dro weight step (null for other mitigations)"),
        ("lr", f, "fine-tuning learning rate"),
        ("n_seeds", i, "seeds that ran ok"),
        ("n_failed", i, "seeds that failed"),
        (
            "status",
            s,
            "ok (every seed ran ok), failed (a seed failed) or incomplete (seeds missing)",
        ),
        ("seeds", s, "the ok seeds, JSON list"),
        ("trial_ids", s, "the per-seed trials rows, JSON list"),
        ("max_accuracy_drop", f, "--max-accuracy-drop of the sweep, points (null: none)"),
        (
            "feasible",
            pa.bool_(),
            "mean validation accuracy over the ok seeds within max_accuracy_drop points of "
            "the base model's (Optuna's constraint; null: unconstrained); infeasible "
            "configurations are never pareto",
        ),
    ]
    for metric in METRICS:
        for stat, doc in STATS:
            fields.append((f"{metric}_{stat}", f, f"{metric}: {doc}"))
    return pa.schema(
        [
            pa.field(n, t, nullable=n not in ("run_id", "config_id"), metadata={"description": d})
            for n, t, d in fields
        ]
    )


CONFIGS_SCHEMA: pa.Schema = _configs_schema()


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float, float]:
    """``(mean, std, low, high)`` of the finite ``values``: sample std (ddof 1) and the
    Student-t interval ``mean -/+ t_{(1+level)/2, n-1} * std / sqrt(n)``; std and interval
    are NaN with fewer than two values."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return (math.nan,) * 4
    mean = float(x.mean())
    if len(x) < 2:
        return mean, math.nan, math.nan, math.nan
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1)) * std / math.sqrt(len(x))
    return mean, std, mean - half, mean + half


def configs_table(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration of a trials table (see the module docstring). A seed that
    ran twice (a resumed sweep) counts once: its latest row."""
    df = trials.copy()
    if "config_id" not in df:
        df["config_id"] = None
    df["config_id"] = df["config_id"].astype(object).where(df["config_id"].notna(), df["trial_id"])
    df = df.sort_values("finished_at", kind="stable", na_position="first")
    df = df.drop_duplicates(["config_id", "seed"], keep="last")
    expected = int(df.groupby("config_id")["seed"].nunique().max()) if len(df) else 0
    rows = []
    for config_id, sub in df.groupby("config_id", sort=False):
        ok = sub[(sub["status"] == "ok").fillna(False).astype(bool)]
        first = sub.iloc[0]
        row = {"run_id": first["run_id"], "config_id": str(config_id)}
        row.update({p: first.get(p) for p in PARAMS})
        n_failed = int(len(sub) - len(ok))
        row.update(
            n_seeds=int(len(ok)),
            n_failed=n_failed,
            status="failed" if n_failed else ("ok" if len(ok) == expected else "incomplete"),
            seeds=json.dumps(sorted(int(s) for s in ok["seed"])),
            trial_ids=json.dumps(sorted(str(t) for t in sub["trial_id"])),
        )
        row.update(feasibility(sub, ok))
        for metric in METRICS:
            values = pd.to_numeric(ok[metric], errors="coerce").astype(float).to_numpy()
            for (stat, _), value in zip(STATS, t_interval(values)):
                row[f"{metric}_{stat}"] = value
        rows.append(row)
    columns = CONFIGS_SCHEMA.names
    out = pd.DataFrame(rows, columns=columns)
    return with_pareto(out)


def feasibility(seeds: pd.DataFrame, ok: pd.DataFrame) -> dict:
    """A configuration's ``max_accuracy_drop`` and ``feasible`` from its seeds' rows: the
    constraint Optuna was told, on the mean over the ok seeds of the validation accuracy
    lost against the base model (null when unconstrained or no seed is ok; a table written
    before the column existed is unconstrained)."""
    if "max_accuracy_drop" not in seeds:
        return {"max_accuracy_drop": None, "feasible": None}
    bound = pd.to_numeric(seeds["max_accuracy_drop"], errors="coerce").dropna()
    if bound.empty:
        return {"max_accuracy_drop": None, "feasible": None}
    limit = float(bound.iloc[-1])
    base = pd.to_numeric(ok["base_val_accuracy"], errors="coerce").astype(float)
    val = pd.to_numeric(ok["val_accuracy"], errors="coerce").astype(float)
    drop = 100.0 * float((base - val).mean()) if len(ok) else math.nan
    return {"max_accuracy_drop": limit, "feasible": drop <= limit if math.isfinite(drop) else None}


def feasible_mask(frame: pd.DataFrame) -> np.ndarray:
    """False for the rows marked infeasible (``feasible`` False), True otherwise."""
    if "feasible" not in frame:
        return np.ones(len(frame), dtype=bool)
    return frame["feasible"].astype("boolean").fillna(True).to_numpy(dtype=bool)


def with_pareto(configs: pd.DataFrame) -> pd.DataFrame:
    """``configs`` with a bool ``pareto`` column: non-dominated among the ok, feasible rows
    on the means of the search objectives."""
    out = configs.copy()
    ok = (out["status"] == "ok").to_numpy(dtype=bool) & feasible_mask(out)
    cols = [f"{o.name}_mean" for o in OBJECTIVES]
    pts = out.loc[ok, cols].astype(float).to_numpy()
    flag = np.zeros(len(out), dtype=bool)
    flag[np.flatnonzero(ok)] = pareto_mask(pts, [o.mode == "max" for o in OBJECTIVES])
    out["pareto"] = flag
    return out


def configs_file(run_dir: str | os.PathLike[str]) -> Path:
    return Path(run_dir) / "configs" / "configs.parquet"


def write_configs(run_dir: str | os.PathLike[str], trials: pd.DataFrame) -> pd.DataFrame:
    """Aggregate ``trials`` and write ``RUN/configs/configs.parquet`` atomically."""
    table = configs_table(trials)
    arrow = pa.Table.from_pandas(
        table[list(CONFIGS_SCHEMA.names)], schema=CONFIGS_SCHEMA, preserve_index=False
    )
    with atomic_write(configs_file(run_dir)) as fh:
        pq.write_table(arrow, fh, compression="zstd")
    return table


def load_configs(run_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """The configs table of a run, with its ``pareto`` column; UserError when absent."""
    path = configs_file(run_dir)
    if not path.is_file():
        raise UserError(f"no configs table at {path}: is this a finished tune_linfair sweep?")
    return with_pareto(pq.read_table(path, schema=CONFIGS_SCHEMA).to_pandas())


def rank_agreement(configs: pd.DataFrame) -> dict[str, float]:
    """Spearman's rank correlation, across the ok configurations, between the validation
    mean (what the search optimizes) and the test mean (what it is for), for the
    worst-group drop and for accuracy. NaN with fewer than three configurations."""
    ok = configs[configs["status"] == "ok"]
    out: dict[str, float] = {"configurations": float(len(ok))}
    for name in ("worst_group_drop", "accuracy"):
        val = ok[f"val_{name}_mean"].astype(float).to_numpy()
        test = ok[f"test_{name}_mean"].astype(float).to_numpy()
        keep = np.isfinite(val) & np.isfinite(test)
        enough = keep.sum() >= 3 and np.ptp(val[keep]) > 0 and np.ptp(test[keep]) > 0
        rho = stats.spearmanr(val[keep], test[keep]).statistic if enough else math.nan
        out[f"spearman_{name}"] = float(rho)
    return out


def normalized_objectives(frame: pd.DataFrame, relu_scale: float, suffix: str = "") -> np.ndarray:
    """(n, 3) minimization array in [0, 1] units: ``1 - val_accuracy``,
    ``val_worst_group_drop / 100`` and ``relu_count / R`` (``suffix`` ``"_mean"`` reads a
    configs table)."""
    return np.column_stack(
        [
            1.0 - frame[f"val_accuracy{suffix}"].astype(float).to_numpy(),
            frame[f"val_worst_group_drop{suffix}"].astype(float).to_numpy() / 100.0,
            frame[f"relu_count{suffix}"].astype(float).to_numpy() / relu_scale,
        ]
    )


def seed_attainment(trials: pd.DataFrame, relu_scale: float) -> dict:
    """The fronts of several seeds, summarized: each seed's ok trials form one point set
    (normalized minimization units, :func:`normalized_objectives`); reported are the
    hypervolume of each seed's set against the worst corner (1, 1, 1), its mean, std and 95%
    interval over seeds, and the median (50%) attainment surface of the seeds' sets."""
    ok = trials[(trials["status"] == "ok").fillna(False).astype(bool)]
    fronts, volumes = [], {}
    for seed, sub in ok.groupby("seed", sort=True):
        pts = normalized_objectives(sub, relu_scale)
        fronts.append(pts)
        volumes[int(seed)] = hypervolume(pts, [False] * 3, [1.0, 1.0, 1.0])
    mean, std, low, high = t_interval(list(volumes.values()))
    surface = median_attainment(fronts, [False] * 3) if len(fronts) >= 2 else np.zeros((0, 3))
    return {
        "hypervolume_per_seed": volumes,
        "hypervolume_mean": mean,
        "hypervolume_std": std,
        "hypervolume_ci": [low, high],
        "median_attainment_surface": surface.tolist(),
    }


class SeedGroups:
    """Bookkeeping for a search whose every configuration runs on several seeds, one trial
    per seed: the searcher opens a group with a new configuration, hands out its other
    seeds to the next trials, and learns a configuration's result only when all its seeds
    have finished: the mean over seeds, or None when one failed (never a partial mean).

    Plain data (no Ray), so it pickles with the searcher's state on Tune checkpoints.
    """

    def __init__(self, seeds: Sequence[int | None]) -> None:
        """``seeds``: each configuration's seeds; ``[None]`` keeps the suggested seed (a
        search over seeds, one trial per configuration)."""
        if not seeds:
            raise ValueError("a configuration needs at least one seed")
        self.seeds = list(seeds)
        self.pending: list[tuple[str, int]] = []
        self.configs: dict[str, dict] = {}
        self.members: dict[str, dict[str, int | None]] = {}
        self.results: dict[str, dict[str, dict | None]] = {}
        self.group_of: dict[str, str] = {}

    def assign(self, trial_id: str) -> dict | None:
        """The next waiting seed of an open configuration for ``trial_id``, or None."""
        if not self.pending:
            return None
        group, seed = self.pending.pop(0)
        return self._add(group, trial_id, seed)

    def open(self, trial_id: str, config: dict) -> dict:
        """Start a configuration (its group is named after ``trial_id``, its first trial);
        returns the first trial's config, with the first seed."""
        self.configs[trial_id] = dict(config)
        self.members[trial_id], self.results[trial_id] = {}, {}
        self.pending.extend((trial_id, seed) for seed in self.seeds[1:])
        return self._add(trial_id, trial_id, self.seeds[0])

    def _add(self, group: str, trial_id: str, seed: int | None) -> dict:
        self.members[group][trial_id] = seed
        self.group_of[trial_id] = group
        config = dict(self.configs[group])
        if seed is not None:
            config["seed"] = seed
        return config

    def complete(self, trial_id: str, result: dict | None) -> tuple[str, dict | None, list] | None:
        """Record a finished trial (``result`` None: it failed). When it was the last seed of
        its configuration, return ``(group, mean result or None, member trial ids)``; the
        mean covers the numeric keys every seed reported. Later reports of a group already
        told are ignored (None)."""
        group = self.group_of.get(trial_id)
        if group is None or trial_id in self.results[group]:
            return None
        done = self.results[group]
        done[trial_id] = result
        if len(done) < len(self.seeds):
            return None
        members = list(self.members[group])
        results = list(done.values())
        if any(r is None for r in results):
            return group, None, members
        keys = [
            k
            for k, v in results[0].items()
            if all(
                isinstance(r.get(k), int | float) and not isinstance(r.get(k), bool)
                for r in results
            )
            and not isinstance(v, bool)
        ]
        return group, {k: float(np.mean([r[k] for r in results])) for k in keys}, members
