"""Benchmark: what Ray Tune adds to one trial, and the fixed cost of a sweep.

The same trial, :func:`tune_linfair.trainables.search_trial` on the default space
(``digits``, ``resnet_mini``; SNL at budget 0.2, plain KD fine-tuning (mitigation none), lr 0.01,
fine-tuning ``--epochs`` epochs, the space's per-group diagnostics, its Parquet rows written),
runs two ways in each repeat, in alternating order:

- **direct**: ``search_trial(config, context)`` called in this process (``ray.tune``'s
  ``report`` replaced by a no-op; data already loaded in the process);
- **tune**: a 1-trial grid ``Tuner`` built as ``tune_linfair.phases.search`` builds it, around
  ``with_resources(with_parameters(search_trial, context), {"cpu": 1})``, exactly what the
  CLI runs (``reuse_actors`` is Ray's default, False: the trial gets a fresh worker process,
  which imports torch and loads the data).

Base and linearized artifacts are **pre-cached** before any timing, so in both ways the trial
is: two cache hits -> fine-tune -> evaluate -> diagnostics -> Parquet. Both use one torch
thread (``--cpus-per-trial 1``). The overhead is ``tune / direct - 1`` per repeat.

Each repeat also times the fixed cost of a sweep, paid once whatever the number of trials:
``ray.init(address="local", include_dashboard=False)``, creating the ``OptunaSearch`` (journal
storage, TPE sampler; ``tune_linfair.phases.make_searcher``), building the ``Tuner``, and
``ray.shutdown()``; and two floors of the per-trial cost: ``Tuner.fit`` of a 1-trial no-op
trainable (scheduling, actor start, result handling) and of one that only imports
``tune_linfair`` and loads the data (the cold-worker cost).

Run::

    python bench/orchestration_overhead.py            # 120 epochs (a 20-40 s trial), 3 repeats, ~10 min
    python bench/orchestration_overhead.py --epochs 360 --reuse-trials 0   # a ~1-minute trial
    python bench/orchestration_overhead.py --quick    # 20 epochs, 1 repeat

Prints a table; appends a record to ``bench/results/orchestration_overhead[-quick].jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import types
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")  # as tune_linfair.search.run_sweep
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1")

import torch  # noqa: E402
from _common import fmt_summary, loadavg, record, summary, table, timed, uptime  # noqa: E402

from tune_linfair import phases, results, trainables  # noqa: E402
from tune_linfair.spaces import load_space  # noqa: E402
from tune_linfair.stages import load_data, run_base, run_linearize  # noqa: E402

PARAMS = {"method": "snl", "budget": 0.2, "mitigation": "none", "mu": 0.0, "lr": 0.01}
TRIAL_ID = "grid00000"


def _noop(config: dict) -> None:
    from ray import tune

    tune.report({"done": 1})


def _measured_search_trial(config: dict, context: trainables.SweepContext) -> None:
    """``search_trial``, recording the worker process's CPU seconds before and during it."""
    import json
    import time

    before = time.process_time()
    trainables.search_trial(config, context)
    cpu = {"worker_cpu_before_s": before, "worker_cpu_trial_s": time.process_time() - before}
    (Path(context.run_dir) / "worker_cpu.json").write_text(json.dumps(cpu))


def _reports(config: dict) -> None:
    from ray import tune

    for i in range(int(config["n"])):
        tune.report({"i": i})


def _cold(config: dict, context: trainables.SweepContext) -> None:
    from ray import tune

    from tune_linfair.stages import load_data

    load_data(context.experiment(), 0)
    tune.report({"done": 1})


class _NoReport:
    """Stands in for ``ray.tune`` inside :mod:`tune_linfair.trainables` for direct calls."""

    def __init__(self) -> None:
        self.reports = 0

    def __enter__(self) -> _NoReport:
        self.saved = trainables.tune
        trainables.tune = types.SimpleNamespace(report=self.report)
        return self

    def report(self, metrics: dict, **_: object) -> None:
        self.reports += 1

    def __exit__(self, *exc: object) -> None:
        trainables.tune = self.saved


def _grid_tuner(space, trainable, tune_dir: Path):
    """The grid ``Tuner`` as ``tune_linfair.phases.search`` builds it, one trial at a time."""
    from ray import tune

    points = [{**p, "point_index": i} for i, p in enumerate(space.grid_points())]
    return tune.Tuner(
        trainable,
        param_space={"point": tune.grid_search(points)},
        tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=1, reuse_actors=True),
        run_config=tune.RunConfig(
            name="grid",
            storage_path=str(tune_dir),
            failure_config=tune.FailureConfig(max_failures=0),
            verbose=1,
        ),
    )


def _context(space, run_dir: Path, cache_dir: Path) -> trainables.SweepContext:
    return trainables.SweepContext(
        space_raw=space.raw,
        run_dir=str(run_dir),
        cache_dir=str(cache_dir),
        run_id=run_dir.name,
        cpus_per_trial=1.0,
    )


def _row_wall(run_dir: Path) -> float:
    row = results.read_trial_row(run_dir, TRIAL_ID)
    if row is None or row.get("status") != "ok":
        raise RuntimeError(f"trial in {run_dir} did not finish ok: {row and row.get('error')}")
    return float(row["wall_time_s"])


def one_repeat(space, work: Path, rep: int, order: tuple[str, str], reuse_trials: int) -> dict:
    import ray
    from ray import tune

    out: dict = {
        "repeat": rep,
        "order": list(order),
        "epochs": space.experiment.finetune.epochs,
        "load_before": loadavg(),
    }
    cache_dir = work / "cache"
    _, out["ray_init_s"] = timed(
        lambda: ray.init(
            address="local",
            include_dashboard=False,
            num_cpus=os.cpu_count(),
            log_to_driver=False,
            configure_logging=False,
        )
    )
    try:
        pareto_dir = work / f"r{rep}-pareto"
        pareto_dir.mkdir()
        _, out["optuna_search_s"] = timed(
            lambda: phases.make_searcher(space, "pareto", pareto_dir, 0, constrained=False)
        )
        tune_dir = work / f"r{rep}-tune"
        tune_dir.mkdir()
        trainable = tune.with_resources(
            tune.with_parameters(
                _measured_search_trial, context=_context(space, tune_dir, cache_dir)
            ),
            {"cpu": 1, "gpu": 0},
        )
        tuner, out["tuner_build_s"] = timed(lambda: _grid_tuner(space, trainable, tune_dir))
        quiet = tune.RunConfig(storage_path=str(work), name=f"r{rep}-noop", verbose=0)
        _, out["noop_fit_s"] = timed(lambda: tune.Tuner(_noop, run_config=quiet).fit())
        quiet = tune.RunConfig(storage_path=str(work), name=f"r{rep}-reports", verbose=0)
        n_reports = out["epochs"] + 1  # search_trial reports every epoch, then the objectives
        _, out["reports_fit_s"] = timed(
            lambda: tune.Tuner(_reports, param_space={"n": n_reports}, run_config=quiet).fit()
        )
        cold = tune.with_resources(
            tune.with_parameters(_cold, context=_context(space, tune_dir, cache_dir)),
            {"cpu": 1},
        )
        quiet = tune.RunConfig(storage_path=str(work), name=f"r{rep}-cold", verbose=0)
        _, out["cold_fit_s"] = timed(lambda: tune.Tuner(cold, run_config=quiet).fit())
        for way in order:
            if way == "direct":
                direct_dir = work / f"r{rep}-direct"
                direct_dir.mkdir()
                config = {"point": {**PARAMS, "seed": 0, "point_index": 0}}
                cpu0 = time.process_time()
                with _NoReport() as stub:
                    _, out["direct_s"] = timed(
                        lambda config=config, d=direct_dir: trainables.search_trial(
                            config, _context(space, d, cache_dir)
                        )
                    )
                out["direct_cpu_s"] = time.process_time() - cpu0
                out["direct_reports"] = stub.reports
                out["direct_trial_wall_s"] = _row_wall(direct_dir)
            else:
                cpu0 = time.process_time()
                grid, out["tune_fit_s"] = timed(tuner.fit)
                out["tune_driver_cpu_s"] = time.process_time() - cpu0
                if grid.errors:
                    raise RuntimeError(f"Tune trial failed: {grid.errors[0]}")
                out["tune_trial_wall_s"] = _row_wall(tune_dir)
                out.update(json.loads((tune_dir / "worker_cpu.json").read_text()))
                out["tune_cpu_s"] = (
                    out["tune_driver_cpu_s"]
                    + out["worker_cpu_before_s"]
                    + out["worker_cpu_trial_s"]
                )
        if reuse_trials:
            flags = (False, True) if rep % 2 == 0 else (True, False)
            for flag in flags:
                _, out[f"sweep_reuse_{flag}_s"] = timed(
                    lambda flag=flag: _short_sweep(work / f"r{rep}-reuse{flag}", flag, reuse_trials)
                )
    finally:
        _, out["ray_shutdown_s"] = timed(ray.shutdown)
    out["load_after"] = loadavg()
    out["overhead"] = out["tune_fit_s"] / out["direct_s"] - 1.0
    out["cpu_overhead"] = out["tune_cpu_s"] / out["direct_cpu_s"] - 1.0
    out["fixed_sweep_s"] = (
        out["ray_init_s"] + out["optuna_search_s"] + out["tuner_build_s"] + out["ray_shutdown_s"]
    )
    return out


def _short_sweep(run_dir: Path, reuse_actors: bool, n: int):
    """A ``n``-trial grid of 2-epoch fine-tunings, one at a time, as ``phases.search``
    builds it except for ``reuse_actors``."""
    from ray import tune

    run_dir.mkdir()
    cache_dir = run_dir.parent / "cache"
    short = load_space("default", ["finetune.epochs=2"])
    points = [{**PARAMS, "seed": 0, "lr": 0.01 / (i + 1), "point_index": i} for i in range(n)]
    trainable = tune.with_resources(
        tune.with_parameters(trainables.search_trial, context=_context(short, run_dir, cache_dir)),
        {"cpu": 1, "gpu": 0},
    )
    grid = tune.Tuner(
        trainable,
        param_space={"point": tune.grid_search(points)},
        tune_config=tune.TuneConfig(
            num_samples=1, max_concurrent_trials=1, reuse_actors=reuse_actors
        ),
        run_config=tune.RunConfig(
            name="tune",
            storage_path=str(run_dir),
            failure_config=tune.FailureConfig(max_failures=0),
            verbose=0,
        ),
    ).fit()
    if grid.errors:
        raise RuntimeError(f"short sweep failed: {grid.errors[0]}")
    return grid


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 epochs, 1 repeat")
    parser.add_argument("--epochs", type=int, help="fine-tuning epochs (default 120, quick 20)")
    parser.add_argument("--repeats", type=int, help="default 3, quick 1")
    parser.add_argument(
        "--reuse-trials",
        type=int,
        default=4,
        help="trials of the short sweep timed with reuse_actors False and True (0: skip)",
    )
    args = parser.parse_args(argv)
    epochs = args.epochs or (20 if args.quick else 120)
    repeats = args.repeats or (1 if args.quick else 3)
    torch.set_num_threads(1)

    overrides = [
        f"finetune.epochs={epochs}",
        f"grid.method=[{PARAMS['method']}]",
        f"grid.budget=[{PARAMS['budget']}]",
        f"grid.mitigation=[{PARAMS['mitigation']}]",
        f"grid.mu=[{PARAMS['mu']}]",
        f"grid.lr=[{PARAMS['lr']}]",
        "grid.seed=[0]",
    ]
    space = load_space("default", overrides)
    assert len(space.grid_points()) == 1
    print(uptime(), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-orch-") as tmp:
        work = Path(tmp)
        exp = space.experiment
        start = time.perf_counter()
        base, _ = run_base(exp, 0, work / "cache")
        run_linearize(exp, base, PARAMS["method"], PARAMS["budget"], 0, work / "cache")
        load_data(exp, 0)
        print(f"pre-cached base + linearized artifacts in {time.perf_counter() - start:.1f} s")
        reps = []
        for rep in range(repeats):
            order = ("direct", "tune") if rep % 2 == 0 else ("tune", "direct")
            r = one_repeat(space, work, rep, order, args.reuse_trials)
            reps.append(r)
            print(
                f"repeat {rep}: direct {r['direct_s']:.1f} s, tune {r['tune_fit_s']:.1f} s, "
                f"overhead {100 * r['overhead']:+.1f}%, load {r['load_before']} -> "
                f"{r['load_after']}",
                flush=True,
            )

    keys = [
        ("direct_s", "search_trial called directly"),
        ("tune_fit_s", "1-trial Tuner.fit (same trial)"),
        ("direct_trial_wall_s", "  run_trial wall inside, direct"),
        ("tune_trial_wall_s", "  run_trial wall inside, Tune worker"),
        ("direct_cpu_s", "CPU s, direct (driver process)"),
        ("tune_cpu_s", "CPU s, Tune (driver + worker process)"),
        ("tune_driver_cpu_s", "  driver during fit"),
        ("worker_cpu_before_s", "  worker before the trial (boot, imports)"),
        ("worker_cpu_trial_s", "  worker during search_trial"),
        ("noop_fit_s", "1-trial Tuner.fit, no-op trainable"),
        ("reports_fit_s", "1-trial Tuner.fit, epochs+1 empty reports"),
        ("cold_fit_s", "1-trial Tuner.fit, import + load data only"),
        ("ray_init_s", "ray.init (local, no dashboard)"),
        ("optuna_search_s", "OptunaSearch creation"),
        ("tuner_build_s", "Tuner build"),
        ("ray_shutdown_s", "ray.shutdown"),
        ("fixed_sweep_s", "fixed cost per sweep (init+optuna+tuner+shutdown)"),
    ]
    if args.reuse_trials:
        keys += [
            (
                "sweep_reuse_False_s",
                f"{args.reuse_trials}-trial sweep (2 epochs), reuse_actors=False",
            ),
            (
                "sweep_reuse_True_s",
                f"{args.reuse_trials}-trial sweep (2 epochs), reuse_actors=True",
            ),
        ]
    rows = []
    for key, label in keys:
        s = summary([r[key] for r in reps])
        rows.append([label, f"{s['median']:.2f}", f"{s['min']:.2f}", f"{s['max']:.2f}"])
    ov = [100 * r["overhead"] for r in reps]
    s = summary(ov)
    rows.append(
        [
            "Tune overhead, % of direct",
            f"{s['median']:+.1f}",
            f"{s['min']:+.1f}",
            f"{s['max']:+.1f}",
        ]
    )
    cov = [100 * r["cpu_overhead"] for r in reps]
    s = summary(cov)
    rows.append(
        ["Tune overhead in CPU s, %", f"{s['median']:+.1f}", f"{s['min']:+.1f}", f"{s['max']:+.1f}"]
    )
    print(f"\nfine-tuning epochs {epochs}, repeats {repeats}, 1 torch thread, artifacts pre-cached")
    print(table(rows, ["measurement (seconds)", "median", "min", "max"]))
    print(f"Tune overhead: {fmt_summary(ov, 1, '%')}; target <= 5%")
    print(uptime())
    path = record(
        "orchestration_overhead",
        {
            "epochs": epochs,
            "repeats": repeats,
            "params": PARAMS,
            "artifacts": "pre-cached",
            "runs": reps,
            "overhead_pct": summary(ov),
            "cpu_overhead_pct": summary(cov),
            "fixed_sweep_s": summary([r["fixed_sweep_s"] for r in reps]),
        },
        quick=args.quick,
    )
    print(f"recorded in {path}")


if __name__ == "__main__":
    main()
