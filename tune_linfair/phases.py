"""The phases of a sweep around the search, each its own Ray Tune experiment.

``RUN/tune/base``, ``RUN/tune/linearize``, ``RUN/tune/search`` (or ``grid``) and
``RUN/tune/diagnose``; the Ray dashboard lists them by these names. Before the search,
**base** trains one all-ReLU model per seed and **linearize** builds one linearized model per
job of :func:`tune_linfair.jobs.linearize_jobs`, in parallel, each on the CPU and GPU share
of one trial, so the search trials find their artifacts built instead of waiting on a lock
while one of them builds (README "Running sweeps"). After it, **diagnose** computes the full
diagnostics of the trials :func:`tune_linfair.jobs.diagnose_targets` picks. A phase whose
work the cache (or, for diagnose, the ``stages`` table) already holds is skipped; a phase
interrupted with its driver is restored on ``--resume``, its unfinished runs continuing
from their last checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune import ResultGrid

from tune_linfair import results
from tune_linfair.errors import UserError
from tune_linfair.jobs import base_seeds, diagnose_targets, linearize_jobs
from tune_linfair.rundir import RunDir
from tune_linfair.spaces import SearchSpace
from tune_linfair.stages import in_cache
from tune_linfair.trainables import (
    SweepContext,
    base_trial,
    diagnose_trial,
    fault_tolerance,
    linearize_trial,
    search_trial,
)
from tune_linfair.trial import SEARCHES, suggest


@dataclasses.dataclass(frozen=True)
class PhaseRunner:
    """What every phase's Tune experiment shares: the sweep's context, the run directory,
    one trial's resources, how many trials run at once, how many times a trial whose
    worker died is retried (from its last checkpoint), and whether the sweep is resumed."""

    context: SweepContext
    run: RunDir
    resources: dict[str, float]
    max_concurrent: int
    max_failures: int
    resume: bool
    interrupted: Callable[[], bool]

    def run_phase(self, name: str, trainable: Callable, jobs: list[dict[str, Any]]) -> int:
        """Run ``trainable`` once per job as the Tune experiment ``RUN/tune/<name>``.
        Returns the number of runs that failed.

        On ``--resume``, an experiment of that name left by a killed driver is restored: its
        unfinished runs continue from their last checkpoint (base training), the finished
        ones stay done. Otherwise a stale one is discarded (what it built is in the cache)."""
        if not jobs:
            return 0
        path = self.run.tune / name
        trainable = tune.with_resources(
            tune.with_parameters(trainable, context=self.context), self.resources
        )
        if self.resume and tune.Tuner.can_restore(str(path)):
            grid = tune.Tuner.restore(str(path), trainable=trainable, resume_errored=False).fit()
            return sum(1 for r in grid if r.error is not None)
        shutil.rmtree(path, ignore_errors=True)
        tuner = tune.Tuner(
            trainable,
            param_space={"job": tune.grid_search(jobs)},
            tune_config=tune.TuneConfig(
                num_samples=1, max_concurrent_trials=self.max_concurrent, reuse_actors=True
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=str(self.run.tune),
                verbose=1,
                **fault_tolerance(self.max_failures),
            ),
        )
        grid = tuner.fit()
        return sum(1 for r in grid if r.error is not None)


def search(
    runner: PhaseRunner,
    space: SearchSpace,
    objective: str,
    *,
    trials: int,
    sampler_seed: int,
    constrained: bool,
) -> ResultGrid:
    """The search phase (``grid`` for ``--objective grid``): the fine-tune-and-evaluate trials
    (:func:`tune_linfair.trainables.search_trial`), ``trials`` configurations times the
    space's repeats suggested by Optuna, or the grid's points. Workers are reused across
    trials (``reuse_actors``): a fresh worker per trial costs ~5 CPU-s of boot, imports and
    data loading, and reuse made a 4-trial sweep 2.15x faster (bench/RESULTS.md, section 1).
    """
    name = "grid" if objective == "grid" else "search"
    trainable = tune.with_resources(
        tune.with_parameters(search_trial, context=runner.context), runner.resources
    )
    path = runner.run.tune / name
    if runner.resume and tune.Tuner.can_restore(str(path)):
        # Optuna trials left RUNNING by the killed driver stay RUNNING here: the restored
        # searcher tells those whose Tune trials it reruns; the rest are told FAIL after the
        # fit (failing them first would refuse the reruns' results). Errored trials rerun
        # too: one with a failed row fails again at once (trainables.search_trial), one that
        # died before writing a row runs.
        return tune.Tuner.restore(str(path), trainable=trainable, resume_errored=True).fit()
    run_config = tune.RunConfig(
        name=name,
        storage_path=str(runner.run.tune),
        verbose=1,
        **fault_tolerance(runner.max_failures),
    )
    config = {
        "num_samples": 1,
        "max_concurrent_trials": runner.max_concurrent,
        "reuse_actors": True,
    }
    if objective == "grid":
        points = [{**p, "point_index": i} for i, p in enumerate(space.grid_points())]
        param_space = {"point": tune.grid_search(points)}
    else:
        searcher = make_searcher(space, objective, runner.run.path, sampler_seed, constrained)
        config.update(search_alg=searcher, num_samples=trials * space.repeats)
        param_space = {}
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(**config),
        run_config=run_config,
    ).fit()


def make_searcher(space: SearchSpace, objective: str, run_dir: Path, seed: int, constrained: bool):
    """OptunaSearch with the objectives as lists, a seeded TPE sampler, constraints through
    ``trial.set_constraint`` and a journal file ``RUN/optuna.journal`` (optuna-dashboard can
    open it)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage
    from ray.tune.search.optuna import OptunaSearch

    from tune_linfair.aggregate import SeedGroups

    class SweepOptunaSearch(OptunaSearch):
        """Runs every configuration Optuna suggests on the space's seeds, one Tune trial per
        seed (:class:`tune_linfair.aggregate.SeedGroups`), and tells Optuna the mean over
        the seeds once all have finished (FAIL if one failed). The Optuna trial carries the
        Tune trial ids of its seeds (``tune_trial_ids``; ``tune_trial_id`` = the first),
        and, for a constrained sweep, the mean ``constraint_*`` values."""

        def suggest(self, trial_id):
            config = self.seed_groups.assign(trial_id)
            if config is not None:
                return config
            config = super().suggest(trial_id)
            ot_trial = self._ot_trials.get(trial_id)
            if not isinstance(config, dict) or ot_trial is None:
                return config
            ot_trial.set_user_attr("tune_trial_id", trial_id)
            return self.seed_groups.open(trial_id, config)

        def on_trial_result(self, trial_id, result):
            """No intermediate values: a configuration's seeds share one Optuna trial."""

        def on_trial_complete(self, trial_id, result=None, error=False):
            done = self.seed_groups.complete(trial_id, None if error or not result else result)
            if done is None:
                return
            group, mean, members = done
            ot_trial = self._ot_trials.get(group)
            if (
                ot_trial is not None
                and ot_trial.storage.get_trial(ot_trial._trial_id).state.is_finished()
            ):
                # told just before the driver was killed, after Tune's last state save: the
                # restored searcher reran the trial (which reported its row again)
                self._ot_trials.pop(group)
                return
            if ot_trial is not None:
                ot_trial.set_user_attr("tune_trial_ids", members)
                for key, value in (mean or {}).items():
                    if constrained and key.startswith("constraint_"):
                        ot_trial.set_constraint(key, float(value))
            super().on_trial_complete(group, mean, error=mean is None)

    metric = [o.name for o in SEARCHES[objective]]
    mode = [o.mode for o in SEARCHES[objective]]
    storage = JournalStorage(JournalFileBackend(str(run_dir / "optuna.journal")))
    searcher = SweepOptunaSearch(
        # Define-by-run: no computation, and a partial pickles for Tune's checkpoints.
        space=functools.partial(
            suggest,
            search=dict(space.search),
            default_mitigation=space.experiment.finetune.mitigation,
        ),
        metric=metric if len(metric) > 1 else metric[0],
        mode=mode if len(mode) > 1 else mode[0],
        sampler=optuna.samplers.TPESampler(seed=seed),
        storage=storage,
        study_name=run_dir.name,
    )
    searcher.seed_groups = SeedGroups(space.seeds or [None])
    # optuna-dashboard then shows val_accuracy, val_worst_group_drop, relu_count, not 0, 1, 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        searcher._ot_study.set_metric_names(metric)
    return searcher


def prebuild(
    runner: PhaseRunner,
    space: SearchSpace,
    objective: str,
    unreachable: set[tuple[str, float]],
) -> None:
    """The base and linearize phases: build every base and linearized model the sweep can
    use that the cache lacks (linearized models only when their set is finite; budgets in
    ``unreachable`` are left to fail in their trials). Prints one line per phase."""
    cache = runner.run.cache
    seeds = base_seeds(space, objective) or []
    todo = [s for s in seeds if not in_cache(space.experiment, cache, s)]
    _announce("base", len(seeds), len(todo))
    failed = runner.run_phase("base", base_trial, [{"seed": s} for s in todo])
    if runner.interrupted():
        return
    jobs = linearize_jobs(space, objective)
    if jobs is None:
        print(
            "phase linearize: a method, budget, mask mitigation or seed is searched over a "
            "range; the trials build their models",
            flush=True,
        )
        return
    jobs = [j for j in jobs if (j.method, j.budget) not in unreachable]
    todo_lin = [j for j in jobs if not in_cache(space.experiment, cache, j.seed, j)]
    _announce("linearize", len(jobs), len(todo_lin))
    payload = [{**dataclasses.asdict(j), "name": j.name} for j in todo_lin]
    failed += runner.run_phase("linearize", linearize_trial, payload)
    if failed:
        print(f"note: {failed} base/linearize run(s) failed; see RUN/stages", flush=True)


def diagnose(runner: PhaseRunner, mode: str) -> None:
    """The diagnose phase: full diagnostics for the trials ``mode`` picks
    (:data:`tune_linfair.jobs.DIAGNOSE_MODES`) that have none yet."""
    if mode == "none":
        return
    run_dir = runner.run.path
    try:
        trials = results.load_trials(run_dir)
    except UserError:
        return  # no trial finished: nothing to diagnose
    done: set[str] = set()
    if (run_dir / "stages").is_dir():
        stages = results.load_stages(run_dir)
        ok = stages[(stages["phase"] == "diagnose") & (stages["status"] == "ok").fillna(False)]
        done = {str(k) for k in ok["key"]}
    todo = diagnose_targets(trials, mode, done)
    _announce("diagnose", len(todo) + len(done & set(trials["trial_id"])), len(todo))
    failed = runner.run_phase("diagnose", diagnose_trial, [{"trial_id": t} for t in todo])
    if failed:
        print(f"note: {failed} diagnose run(s) failed; see RUN/stages", flush=True)


def _announce(phase: str, needed: int, todo: int) -> None:
    if todo:
        print(f"phase {phase}: {todo} of {needed} to run", flush=True)
    else:
        print(f"phase {phase}: all {needed} in the cache, skipped", flush=True)
