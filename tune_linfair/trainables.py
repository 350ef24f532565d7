"""Ray Tune function trainables: thin wrappers over :mod:`tune_linfair.stages`, one per phase.

A trainable is a plain function of its config that reports with ``ray.tune.report`` (never
``ray.train.*`` inside Tune functions: it raises in Ray 2.60). :func:`base_trial` and
:func:`linearize_trial` build one cached artifact each, :func:`diagnose_trial` adds the full
diagnostics to one fine-tuned trial, each leaving a ``stages`` row. :func:`search_trial`
runs linearize (cached) -> fine-tune -> evaluate, reports progress during fine-tuning and
the objectives at the end, and writes the trial's Parquet rows. Every trainable runs on the
device Ray gave it (:func:`trial_device`), never one it picks itself. A failure (an exception, a
NaN or infinite loss or objective) writes a ``failed`` row with the reason, then raises, so
Tune marks the trial errored and Optuna records FAIL (a NaN objective reported instead
would leave the Optuna trial RUNNING).
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from tune_linfair import results
from tune_linfair.cache import Artifact
from tune_linfair.config import ExperimentConfig
from tune_linfair.spaces import parse_space
from tune_linfair.stages import run_base, run_diagnose, run_linearize, run_trial
from tune_linfair.trial import OBJECTIVES, TrialParams, accuracy_drop_points, fraction, trial_row


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


def trial_device() -> torch.device:
    """The device Ray gave this trial: its GPU when it was given one (Ray sets
    ``CUDA_VISIBLE_DEVICES`` to it, so it is ``cuda:0`` here; trials given fractions of one
    GPU share it) and torch sees CUDA, else the CPU. A trial with ``--gpus-per-trial 0`` on
    a GPU node gets ``CUDA_VISIBLE_DEVICES=""`` from Ray, hence the CPU. Called outside Ray
    (a trainable run as a plain function), the CPU."""
    if ray.is_initialized() and ray.get_gpu_ids() and torch.cuda.is_available():
        return torch.device("cuda", 0)
    return torch.device("cpu")


def node_id() -> str | None:
    """The Ray node this trial runs on (None outside Ray)."""
    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


def trial_values(config: dict) -> dict:
    """The trial parameters from a Tune config (grid points arrive under ``point``, with
    their ``point_index``, which is not a parameter)."""
    return {k: v for k, v in config.get("point", config).items() if k != "point_index"}


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
            # built before the fine-tuning started: this reads its meta, computes nothing
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
    device = trial_device()
    try:
        outcome = run_trial(
            exp,
            params,
            context.cache_dir,
            trial_dir(run_dir, trial_id),
            run_id=context.run_id,
            trial_id=trial_id,
            device=device,
            on_epoch_end=_epoch_reporter(exp, params, context),
        )
        row = {**outcome.trial_row, "node_id": node_id()}
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
            node_id=node_id(),
            device=str(device),
        )
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


# -- the phases before and after the search -----------------------------------------------
def _phase_run(
    context: SweepContext,
    phase: str,
    run_id: str,
    fields: dict[str, Any],
    build: Callable[[torch.device], tuple[str, bool, float]],
) -> None:
    """Run ``build(device)`` -> ``(key, computed, lock_wait_s)`` on the trial's device and
    write its ``stages`` row (``fields``: stage, seed, method, ...); a failure writes a
    failed row and raises, so Tune marks the run errored."""
    torch.set_num_threads(max(1, int(context.cpus_per_trial)))
    start, device = time.time(), trial_device()
    row = {
        "run_id": context.run_id,
        "trial_id": run_id,
        "phase": phase,
        "seed": None,
        "method": None,
        "budget": None,
        "mask_mitigation": None,
        **fields,
        "node_id": node_id(),
        "device": str(device),
    }
    try:
        key, computed, waited = build(device)
    except Exception as err:
        error = f"{type(err).__name__}: {err}"
        results.write_stage(
            context.run_dir,
            {
                **row,
                "key": None,
                "computed": None,
                "wall_time_s": time.time() - start,
                "lock_wait_s": None,
                "status": "failed",
                "error": error[:2000],
                "finished_at": datetime.datetime.now(datetime.UTC),
            },
        )
        raise TrialFailed(f"{phase} run {run_id} failed: {error}") from err
    wall = time.time() - start
    results.write_stage(
        context.run_dir,
        {
            **row,
            "key": key,
            "computed": computed,
            "wall_time_s": wall,
            "lock_wait_s": waited,
            "status": "ok",
            "error": None,
            "finished_at": datetime.datetime.now(datetime.UTC),
        },
    )
    tune.report({"computed": computed, "wall_time_s": wall})


def _built(artifact: Artifact, computed: bool) -> tuple[str, bool, float]:
    return artifact.key, computed, artifact.lock_wait_s


def base_trial(config: dict, context: SweepContext) -> None:
    """The base phase: train (or find cached) the all-ReLU model of ``config["seed"]``."""
    seed = int(config["job"]["seed"])
    exp = context.experiment()
    _phase_run(
        context,
        "base",
        f"base-s{seed}",
        {"stage": "base", "seed": seed},
        lambda device: _built(*run_base(exp, seed, context.cache_dir, device=device)),
    )


def linearize_trial(config: dict, context: SweepContext) -> None:
    """The linearize phase: build (or find cached) one linearized model, ``config["job"]``
    holding a :class:`tune_linfair.jobs.LinearizeJob`'s fields."""
    job = config["job"]
    exp = context.experiment()
    settings = dataclasses.replace(exp.linearize, mask_mitigation=job["mask_mitigation"])

    def build(device: torch.device) -> tuple[str, bool, float]:
        base, _ = run_base(exp, job["seed"], context.cache_dir, device=device)
        lin, computed = run_linearize(
            exp,
            base,
            job["method"],
            job["budget"],
            job["seed"],
            context.cache_dir,
            settings=settings,
            device=device,
        )
        return lin.key, computed, base.lock_wait_s + lin.lock_wait_s

    fields = {k: job[k] for k in ("seed", "method", "budget", "mask_mitigation")}
    _phase_run(context, "linearize", f"lin-{job['name']}", {"stage": "linearized", **fields}, build)


def diagnose_trial(config: dict, context: SweepContext) -> None:
    """The diagnose phase: the full per-group diagnostics of one fine-tuned trial (from its
    checkpoint), which replace the cheap groups and samples rows its search trial wrote."""
    trial_id = config["job"]["trial_id"]
    row = results.read_trial_row(context.run_dir, trial_id)
    if row is None or row.get("status") != "ok":
        raise TrialFailed(f"diagnose: trial {trial_id} has no ok row in {context.run_dir}")
    exp = context.experiment()

    def build(device: torch.device) -> tuple[str, bool, float]:
        ids = {"run_id": row["run_id"], "trial_id": trial_id}
        groups, samples = run_diagnose(
            exp, row["checkpoint_path"], context.cache_dir, ids, device=device
        )
        results.write_trial(context.run_dir, row, groups, samples)
        return trial_id, True, 0.0

    fields = {"stage": "diagnosed", **{k: row[k] for k in ("seed", "method", "budget")}}
    fields["mask_mitigation"] = row["mask_mitigation"]
    _phase_run(context, "diagnose", f"diag-{trial_id}", fields, build)
