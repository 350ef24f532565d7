"""Ray Tune function trainables: thin wrappers over :mod:`tune_linfair.stages`.

A trainable is a plain function of its config that reports with ``ray.tune.report``
(DESIGN.md section 7; never ``ray.train.*`` inside Tune functions). The stage functions do
the work and the artifact cache makes repeated work free:

- :func:`base_trainable`, :func:`linearize_trainable`: one stage each, reporting its
  artifact (useful to pre-build a cache on a cluster);
- :func:`search_trial`: linearize (cached) -> fine-tune -> evaluate, reporting progress
  every fine-tuning epoch and the objectives at the end, and writing the trial's Parquet
  rows. A failure (an exception, a NaN or infinite loss or objective) writes a ``failed``
  row with the reason, then raises, so Tune marks the trial errored and Optuna records
  FAIL (a NaN objective reported instead would leave the Optuna trial RUNNING).
"""

from __future__ import annotations

import datetime
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from ray import tune

from tune_linfair import results
from tune_linfair.config import parse_space
from tune_linfair.stages import run_base, run_linearize, run_trial


@dataclass(frozen=True)
class SweepContext:
    """What every trial of a sweep shares (passed with ``tune.with_parameters``)."""

    space_raw: dict
    run_dir: str
    cache_dir: str
    run_id: str
    cpus_per_trial: float
    max_accuracy_drop: float | None = None

    def experiment(self):
        return parse_space(self.space_raw).experiment


OBJECTIVE_KEYS = ("val_accuracy", "val_worst_group_drop", "relu_count")


def trial_params(config: dict) -> dict:
    """The trial parameters from a Tune config (grid points arrive under ``point``)."""
    return dict(config.get("point", config))


def _threads(cpus: float) -> None:
    torch.set_num_threads(max(1, int(cpus)))


def base_trainable(config: dict, context: SweepContext) -> None:
    """Train (or reuse) the base model for ``config["seed"]`` and report its accuracy."""
    _threads(context.cpus_per_trial)
    base, computed = run_base(context.experiment(), int(config.get("seed", 0)), context.cache_dir)
    tune.report({**base.meta["accuracy"], "base_key": base.key, "computed": computed})


def linearize_trainable(config: dict, context: SweepContext) -> None:
    """Linearize (or reuse) for ``config`` (method, budget, seed) and report the result."""
    _threads(context.cpus_per_trial)
    exp, params = context.experiment(), trial_params(config)
    seed = int(params.get("seed", 0))
    base, _ = run_base(exp, seed, context.cache_dir)
    lin, computed = run_linearize(
        exp, base, params["method"], params["budget"], seed, context.cache_dir
    )
    tune.report({"relu_count": lin.meta["relu_count"], "lin_key": lin.key, "computed": computed})


def _trial_id(config: dict) -> str:
    """Stable id for Parquet rows: the grid point's index for grid runs (so a rerun after a
    crash replaces its row), else Tune's trial id."""
    if "point_index" in config.get("point", {}):
        return f"grid{int(config['point']['point_index']):05d}"
    return tune.get_context().get_trial_id()


def trial_dir(run_dir: str | Path, trial_id: str) -> Path:
    """``RUN/models/<trial_id>``, where the fine-tuned checkpoint goes. The id must be a
    plain file name (the rule of :func:`tune_linfair.results.trial_file`: no path
    characters, no leading dot), so no trial can write outside its run directory."""
    results.trial_file(run_dir, "trials", trial_id)  # ValueError on an unsafe id
    return Path(run_dir) / "models" / trial_id


def _failed_row(
    context: SweepContext, trial_id: str, params: dict, err: BaseException, start: float
) -> dict:
    exp = context.experiment()
    row: dict[str, Any] = {c: None for c in results.TRIALS_COLUMNS}
    row.update(
        run_id=context.run_id,
        trial_id=trial_id,
        stage="finetuned",
        dataset=exp.data.name,
        model=exp.model.name,
        width=exp.model.width,
        method=params.get("method"),
        granularity=exp.model.granularity,
        mitigation=params.get("mitigation", exp.finetune.mitigation),
        budget=params.get("budget"),
        mu=params.get("mu", exp.finetune.mu),
        epsilon=params.get("epsilon", exp.finetune.epsilon),
        lr=params.get("lr", exp.finetune.lr),
        epochs=exp.finetune.epochs,
        seed=params.get("seed", 0),
        wall_time_s=time.time() - start,
        status="failed",
        finished_at=datetime.datetime.now(datetime.UTC),
        error=f"{type(err).__name__}: {err}"[:2000],
    )
    return row


class TrialFailed(RuntimeError):
    """A trial failed; its ``failed`` row is already written."""


def search_trial(config: dict, context: SweepContext) -> None:
    """One search trial: base (cached) -> linearize (cached) -> fine-tune -> evaluate."""
    _threads(context.cpus_per_trial)
    start = time.time()
    params = {k: v for k, v in trial_params(config).items() if k != "point_index"}
    trial_id = _trial_id(config)
    run_dir = Path(context.run_dir)
    done = results.read_trial_row(run_dir, trial_id)
    if done is not None and done.get("status") == "ok":
        # Finished before the driver was killed: report it again, compute nothing.
        tune.report(_objectives(done, context))
        return
    exp = context.experiment()
    try:
        base_acc: list[float] = []

        def on_epoch_end(epoch: int, log: dict, model: torch.nn.Module) -> None:
            if not base_acc:
                seed = int(params.get("seed", 0))
                base, _ = run_base(exp, seed, context.cache_dir)
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
                    "val_accuracy": log["val_accuracy"] / 100.0,
                    "val_worst_group_drop": max(drops) if drops else math.nan,
                    "relu_count": float("nan"),
                    "final": False,
                }
            )

        outcome = run_trial(
            exp,
            params,
            context.cache_dir,
            trial_dir(run_dir, trial_id),
            run_id=context.run_id,
            trial_id=trial_id,
            on_epoch_end=on_epoch_end,
        )
        row = outcome.trial_row
        bad = [k for k in OBJECTIVE_KEYS if not math.isfinite(float(row[k]))]
        if bad:
            raise FloatingPointError(f"objective {bad[0]} is {row[bad[0]]}")
        results.write_trial(run_dir, row, outcome.group_rows, outcome.sample_rows)
    except Exception as err:
        reason = f"trial {trial_id} failed: {type(err).__name__}: {err}"
        try:
            results.write_trial(run_dir, _failed_row(context, trial_id, params, err, start), [], [])
        except OSError as write_err:  # disk full, run directory gone or read-only
            raise TrialFailed(
                f"{reason}; its failed row could not be written to {run_dir} either: "
                f"{write_err.strerror or write_err}"
            ) from err
        raise TrialFailed(reason) from err
    tune.report(_objectives(row, context))


def _objectives(row: dict, context: SweepContext) -> dict:
    out = {k: float(row[k]) for k in OBJECTIVE_KEYS}
    out.update(
        test_accuracy=float(row["test_accuracy"]),
        test_worst_group_drop=float(row["test_worst_group_drop"]),
        final=True,
    )
    if context.max_accuracy_drop is not None:
        # Feasible when <= 0 (Optuna's convention): global accuracy within the allowed drop.
        out["constraint_accuracy_drop"] = (
            100.0 * (float(row["base_val_accuracy"]) - float(row["val_accuracy"]))
            - context.max_accuracy_drop
        )
    return out
