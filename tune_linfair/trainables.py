"""Ray Tune function trainables: thin wrappers over :mod:`tune_linfair.stages`.

A trainable is a plain function of its config that reports with ``ray.tune.report`` (never
``ray.train.*`` inside Tune functions: it raises in Ray 2.60). :func:`search_trial` runs
linearize (cached) -> fine-tune -> evaluate, reports progress every fine-tuning epoch and
the objectives at the end, and writes the trial's Parquet rows. A failure (an exception, a
NaN or infinite loss or objective) writes a ``failed`` row with the reason, then raises, so
Tune marks the trial errored and Optuna records FAIL (a NaN objective reported instead
would leave the Optuna trial RUNNING).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from ray import tune

from tune_linfair import results
from tune_linfair.config import ExperimentConfig
from tune_linfair.lost import row_trial_id, trial_values
from tune_linfair.spaces import parse_space
from tune_linfair.stages import run_base, run_trial
from tune_linfair.trial import (
    OBJECTIVES,
    TrialParams,
    accuracy_drop_points,
    constraint_columns,
    fraction,
    trial_row,
)


@dataclass(frozen=True)
class SweepContext:
    """What every trial of a sweep shares (passed with ``tune.with_parameters``)."""

    space_raw: dict
    run_dir: str
    cache_dir: str
    run_id: str
    cpus_per_trial: float
    max_accuracy_drop: float | None = None

    def experiment(self) -> ExperimentConfig:
        return parse_space(self.space_raw).experiment


def _trial_id(config: dict) -> str:
    """Stable id for Parquet rows (:func:`tune_linfair.lost.row_trial_id`)."""
    if "point_index" in config.get("point", {}):
        return row_trial_id(config, "")
    return tune.get_context().get_trial_id()


def trial_dir(run_dir: str | Path, trial_id: str) -> Path:
    """``RUN/models/<trial_id>``, where the fine-tuned checkpoint goes. The id must be a
    plain file name (the rule of :func:`tune_linfair.results.trial_file`: no path
    characters, no leading dot), so no trial can write outside its run directory."""
    results.trial_file(run_dir, "trials", trial_id)  # ValueError on an unsafe id
    return Path(run_dir) / "models" / trial_id


class TrialFailed(RuntimeError):
    """A trial failed; its ``failed`` row is already written."""


REPORT_EVERY_S = 2.0
"""Progress reports go to Tune at most this often (each costs the driver ~5.6 ms of CPU and
the table a line; the final report with the objectives is always sent)."""


def _epoch_reporter(exp: ExperimentConfig, params: TrialParams, context: SweepContext):
    """``on_epoch_end`` that reports the epoch's validation objectives to Tune (table units:
    accuracy as a fraction, worst-group relative drop in percent), at most once every
    :data:`REPORT_EVERY_S` seconds."""
    base_acc: list[float] = []
    last = [-math.inf]

    def on_epoch_end(epoch: int, log: dict, model: torch.nn.Module) -> None:
        if time.monotonic() - last[0] < REPORT_EVERY_S:
            return
        last[0] = time.monotonic()
        if not base_acc:
            base, _ = run_base(exp, params.seed, context.cache_dir)
            base_acc.extend(base.meta["group_accuracy"]["val"])
        drops = [
            100.0 * (b - log[f"val_acc_g{a}"]) / b
            for a, b in enumerate(base_acc)
            if f"val_acc_g{a}" in log and b > 0
        ]
        tune.report(
            {
                "epoch": epoch,
                "loss": log["loss"],
                "val_accuracy": fraction(log["val_accuracy"]),
                "val_worst_group_drop": max(drops) if drops else math.nan,
                "relu_count": math.nan,
                "final": False,
            }
        )

    return on_epoch_end


def search_trial(config: dict, context: SweepContext) -> None:
    """One search trial: base (cached) -> linearize (cached) -> fine-tune -> evaluate."""
    torch.set_num_threads(max(1, int(context.cpus_per_trial)))
    start = time.time()
    trial_id = _trial_id(config)
    run_dir = Path(context.run_dir)
    done = results.read_trial_row(run_dir, trial_id)
    if done is not None and done.get("status") == "ok":
        # Finished before the driver was killed: report it again, compute nothing.
        tune.report(_objectives(done, context))
        return
    if done is not None:
        # Failed before (its failed row and Optuna's FAIL are recorded): a resumed sweep's
        # rerun fails the same way, so Parquet, the configs table and Optuna agree.
        raise TrialFailed(f"trial {trial_id} failed before the resume: {done.get('error')}")
    exp = context.experiment()
    params = TrialParams.from_config(trial_values(config), exp)
    try:
        outcome = run_trial(
            exp,
            params,
            context.cache_dir,
            trial_dir(run_dir, trial_id),
            run_id=context.run_id,
            trial_id=trial_id,
            on_epoch_end=_epoch_reporter(exp, params, context),
        )
        row = {**outcome.trial_row}
        row.update(constraint_columns(row, context.max_accuracy_drop))
        bad = [o.name for o in OBJECTIVES if not math.isfinite(float(row[o.name]))]
        if bad:
            raise FloatingPointError(f"objective {bad[0]} is {row[bad[0]]}")
        results.write_trial(run_dir, row, outcome.group_rows, outcome.sample_rows)
    except Exception as err:
        reason = f"trial {trial_id} failed: {type(err).__name__}: {err}"
        failed = trial_row(
            run_id=context.run_id,
            trial_id=trial_id,
            exp=exp,
            params=params,
            wall_time_s=time.time() - start,
            error=f"{type(err).__name__}: {err}",
        )
        failed.update(max_accuracy_drop=context.max_accuracy_drop)
        try:
            results.write_trial(run_dir, failed, [], [])
        except OSError as write_err:  # disk full, run directory gone or read-only
            raise TrialFailed(
                f"{reason}; its failed row could not be written to {run_dir} either: "
                f"{write_err.strerror or write_err}"
            ) from err
        raise TrialFailed(reason) from err
    tune.report(_objectives(row, context))


def _objectives(row: dict, context: SweepContext) -> dict[str, Any]:
    """The final report: every objective, the test numbers, and the constraint value of a
    ``--max-accuracy-drop`` sweep (feasible when <= 0, Optuna's convention)."""
    out: dict[str, Any] = {o.name: float(row[o.name]) for o in OBJECTIVES}
    out.update(
        test_accuracy=float(row["test_accuracy"]),
        test_worst_group_drop=float(row["test_worst_group_drop"]),
        final=True,
    )
    if context.max_accuracy_drop is not None:
        drop = accuracy_drop_points(row["base_val_accuracy"], row["val_accuracy"])
        out["constraint_accuracy_drop"] = drop - context.max_accuracy_drop
    return out
