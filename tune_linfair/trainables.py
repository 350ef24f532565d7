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

:class:`TuneCheckpointer` is the Ray side of :mod:`tune_linfair.checkpointing`: base
training and fine-tuning report their state as a Tune checkpoint every N epochs, and a trial
retried after its worker died (``FailureConfig(max_failures)``) or rerun by ``--resume``
continues from ``tune.get_checkpoint()``.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from tune_linfair import results
from tune_linfair.cache import Artifact
from tune_linfair.checkpointing import STATE_FILE, checkpoint_due, load_state, save_state
from tune_linfair.config import ExperimentConfig
from tune_linfair.lost import row_trial_id, trial_values
from tune_linfair.retries import CHECKPOINT_EVERY, CHECKPOINTS_KEPT
from tune_linfair.spaces import parse_space
from tune_linfair.stages import run_base, run_diagnose, run_linearize, run_trial
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
    checkpoint_every: int = CHECKPOINT_EVERY

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


PROGRESS_FILL: dict[str, Any] = {**{o.name: math.nan for o in OBJECTIVES}, "final": False}
"""What every report before the final one carries: Tune refuses a result without the
searched metrics (a base-training checkpoint has none yet)."""


RECORDED_FAILURE = "failed_row_written"
"""Key of the last report of a trial that failed for a reason of its own (its ``failed`` row
is written): :class:`NoRetryOfRecordedFailures` then tells Tune not to retry it."""


class NoRetryOfRecordedFailures(tune.Callback):
    """Tune retries a failed trial up to ``FailureConfig.max_failures`` times, which is meant
    for a worker that died (a retry continues from the trial's checkpoint). A trial that
    failed for a reason of its own (a NaN loss, an unreachable budget) would fail again: it
    reports :data:`RECORDED_FAILURE` just before it raises, and this callback lowers that
    trial's retry budget to the failures it has had, so Tune gives up at once and the
    searcher is told FAIL (``Trial.should_recover``: ``num_failures <= max_failures``)."""

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info):
        if result.get(RECORDED_FAILURE):
            trial.max_failures = min(trial.max_failures, trial.run_metadata.num_failures)


def fault_tolerance(max_failures: int) -> dict[str, Any]:
    """The ``tune.RunConfig`` arguments of a sweep's retries: ``max_failures`` retries of a
    trial whose worker died, none of a recorded failure, the latest
    :data:`~tune_linfair.retries.CHECKPOINTS_KEPT` checkpoints of each trial kept."""
    return {
        "failure_config": tune.FailureConfig(max_failures=max_failures),
        "checkpoint_config": tune.CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT),
        "callbacks": [NoRetryOfRecordedFailures()],
    }


def _fail_recorded(reason: str) -> TrialFailed:
    """Report that the trial's failure is recorded (no retry, :class:`NoRetryOfRecordedFailures`)
    and return the exception to raise."""
    tune.report({**PROGRESS_FILL, RECORDED_FAILURE: True})
    return TrialFailed(reason)


REPORT_EVERY_S = 2.0
"""Progress reports go to Tune at most this often (each costs the driver ~5.6 ms of CPU and
the table a line; the final report with the objectives is always sent)."""


class TuneCheckpointer:
    """A :class:`~tune_linfair.checkpointing.Checkpointer` for Tune function trainables.

    ``save`` writes the state to a temporary folder and reports it with
    ``tune.report(metrics, checkpoint=...)`` (Tune copies it into the trial's folder under
    ``RUN/tune/``, keeping the latest ones); ``restore`` reads ``tune.get_checkpoint()``.
    The metrics of a checkpoint report are ``fill`` (what every report of the trainable must
    carry, e.g. the searched metrics), the epoch, and what :meth:`attach` handed over: the
    epoch's progress report rides with its checkpoint instead of being sent (or throttled
    away) on its own. Generic: any trainable that runs a stage with ``checkpoint=`` uses it.
    """

    def __init__(self, every: int, fill: Mapping[str, Any] | None = None) -> None:
        self.every = every
        self.fill = dict(fill or {})
        self._attached: dict[str, Any] = {}

    def attach(self, metrics: Mapping[str, Any]) -> None:
        """Send ``metrics`` with the next checkpoint."""
        self._attached = dict(metrics)

    def due(self, epoch: int) -> bool:
        """Whether the loop saves a checkpoint after ``epoch`` (0-based)."""
        return checkpoint_due(self, epoch)

    def restore(self) -> dict[str, Any] | None:
        """The state of the trial's latest checkpoint, None for a fresh trial. If that folder
        is gone (Tune prunes old checkpoints; a driver killed between pruning and saving its
        experiment state points at a pruned one), the trial's newest kept checkpoint."""
        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            return None
        folder = Path(checkpoint.path)
        if not (folder / STATE_FILE).is_file():
            kept = sorted(
                p for p in folder.parent.glob("checkpoint_*") if (p / STATE_FILE).is_file()
            )
            if not kept:
                return None
            folder = kept[-1]
        return load_state(folder)

    def save(self, state: dict[str, Any], epoch: int) -> None:
        metrics = {**self.fill, "epoch": epoch, **self._attached}
        metrics.update(checkpoint_epoch=epoch, checkpoint_stage=state.get("stage"))
        self._attached = {}
        with tempfile.TemporaryDirectory(prefix="tune_linfair_state_") as folder:
            save_state(folder, state, epoch)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def _epoch_reporter(
    exp: ExperimentConfig,
    params: TrialParams,
    context: SweepContext,
    checkpointer: TuneCheckpointer | None = None,
):
    """``on_epoch_end`` that reports the epoch's validation objectives to Tune (table units:
    accuracy as a fraction, worst-group relative drop in percent), at most once every
    :data:`REPORT_EVERY_S` seconds; on a checkpoint epoch always, with the checkpoint."""
    base_acc: list[float] = []
    last = [-math.inf]

    def on_epoch_end(epoch: int, log: dict, model: torch.nn.Module) -> None:
        due = checkpointer is not None and checkpointer.due(epoch)
        if not due and time.monotonic() - last[0] < REPORT_EVERY_S:
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
        metrics = {
            "epoch": epoch,
            "loss": log["loss"],
            "val_accuracy": fraction(log["val_accuracy"]),
            "val_worst_group_drop": max(drops) if drops else math.nan,
            "relu_count": math.nan,
            "final": False,
        }
        if due:
            checkpointer.attach(metrics)  # fit saves (and reports) the checkpoint next
        else:
            tune.report(metrics)

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
        # Failed before (its failed row is written; Optuna is told FAIL once Tune gives up):
        # a retry (--max-failures) or a resumed sweep's rerun fails the same way at once,
        # computing nothing, so Parquet, the configs table and Optuna agree.
        raise _fail_recorded(
            f"trial {trial_id} failed before this retry or resume: {done.get('error')}"
        )
    exp = context.experiment()
    params = TrialParams.from_config(trial_values(config), exp)
    device = trial_device()
    checkpointer = TuneCheckpointer(context.checkpoint_every, PROGRESS_FILL)
    try:
        outcome = run_trial(
            exp,
            params,
            context.cache_dir,
            trial_dir(run_dir, trial_id),
            run_id=context.run_id,
            trial_id=trial_id,
            device=device,
            on_epoch_end=_epoch_reporter(exp, params, context, checkpointer),
            checkpoint=checkpointer,
        )
        row = {**outcome.trial_row, "node_id": node_id()}
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
            node_id=node_id(),
            device=str(device),
        )
        failed.update(max_accuracy_drop=context.max_accuracy_drop)
        try:
            results.write_trial(run_dir, failed, [], [])
        except OSError as write_err:  # disk full, run directory gone or read-only
            raise TrialFailed(  # not recorded: a retry (--max-failures) may write it
                f"{reason}; its failed row could not be written to {run_dir} either: "
                f"{write_err.strerror or write_err}"
            ) from err
        raise _fail_recorded(reason) from err
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
        raise _fail_recorded(f"{phase} run {run_id} failed: {error}") from err
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
    """The base phase: train (or find cached) the all-ReLU model of ``config["seed"]``,
    with a Tune checkpoint every ``--checkpoint-every`` epochs: a retried or resumed run
    continues from it."""
    seed = int(config["job"]["seed"])
    exp = context.experiment()
    checkpointer = TuneCheckpointer(context.checkpoint_every, {})

    def build(device: torch.device) -> tuple[str, bool, float]:
        return _built(
            *run_base(exp, seed, context.cache_dir, device=device, checkpoint=checkpointer)
        )

    _phase_run(context, "base", f"base-s{seed}", {"stage": "base", "seed": seed}, build)


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
