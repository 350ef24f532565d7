"""Benchmark: what Ray Tune adds per trial in a sweep, with warm workers.

``bench/orchestration_overhead.py`` times one trial through a 1-trial ``Tuner``: it pays a
cold worker (process start, ``import torch``, data loading) on every trial, +19.9% on a
~1-minute trial. A sweep runs many trials, and the CLI reuses its workers
(``reuse_actors=True``), loads the data once per worker, and throttles progress reports
(``trainables.REPORT_EVERY_S``). This benchmark measures that steady state:

- **direct**: ``search_trial`` called ``--trials`` times in this process, one after another
  (Tune's ``report`` a no-op; data loaded once);
- **tune**: the same ``--trials`` trials as one grid sweep built like
  ``tune_linfair.phases.search`` (one at a time, ``reuse_actors=True``), ``Tuner.fit`` timed after
  ``ray.init`` (the fixed cost per sweep, ~5 s, is reported apart, as in section 1).

The trials are the default space's SNL at budget 0.2, plain KD fine-tuning for ``--epochs``
epochs (360: about a minute each on this CPU), lr 0.01, 0.0099, ... (the same work), with
base and linearized models pre-cached; one torch thread. The overhead per trial is
``tune / direct - 1``, the cold start of the first worker included (amortized over the
sweep). The two ways alternate over ``--repeats``.

Run::

    python bench/tune_overhead_warm.py                 # 3 trials x 360 epochs, 1 repeat
    python bench/tune_overhead_warm.py --quick         # 2 trials x 20 epochs

Prints a table; appends a record to ``bench/results/tune_overhead_warm[-quick].jsonl``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import types
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")

import torch  # noqa: E402
from _common import fmt_summary, loadavg, machine, record, summary, table, timed, uptime  # noqa: E402

from tune_linfair import trainables  # noqa: E402
from tune_linfair.spaces import load_space  # noqa: E402
from tune_linfair.stages import load_data, run_base, run_linearize  # noqa: E402

PARAMS = {"method": "snl", "budget": 0.2, "mitigation": "none", "seed": 0}


def _context(space, run_dir: Path, cache_dir: Path) -> trainables.SweepContext:
    return trainables.SweepContext(space.raw, str(run_dir), str(cache_dir), run_dir.name, 1.0)


def _points(n: int) -> list[dict]:
    return [{**PARAMS, "lr": 0.01 - 0.0001 * i, "point_index": i} for i in range(n)]


def direct(space, run_dir: Path, cache_dir: Path, n: int) -> float:
    saved = trainables.tune
    trainables.tune = types.SimpleNamespace(report=lambda *a, **k: None)
    try:
        start = time.perf_counter()
        for point in _points(n):
            trainables.search_trial({"point": point}, _context(space, run_dir, cache_dir))
        return time.perf_counter() - start
    finally:
        trainables.tune = saved


def tuned(space, run_dir: Path, cache_dir: Path, n: int) -> float:
    from ray import tune

    trainable = tune.with_resources(
        tune.with_parameters(trainables.search_trial, context=_context(space, run_dir, cache_dir)),
        {"cpu": 1, "gpu": 0},
    )
    tuner = tune.Tuner(
        trainable,
        param_space={"point": tune.grid_search(_points(n))},
        tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=1, reuse_actors=True),
        run_config=tune.RunConfig(
            name="tune", storage_path=str(run_dir), failure_config=tune.FailureConfig(0), verbose=0
        ),
    )
    grid, seconds = timed(tuner.fit)
    if grid.errors:
        raise RuntimeError(f"sweep failed: {grid.errors[0]}")
    return seconds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--epochs", type=int, default=360)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.trials, args.epochs = 2, 20
    torch.set_num_threads(1)
    space = load_space("default", [f"finetune.epochs={args.epochs}", "repeats=1"])
    import ray

    print(uptime(), flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-warm-") as tmp:
        work = Path(tmp)
        exp = space.experiment
        base, _ = run_base(exp, 0, work / "cache")
        run_linearize(exp, base, PARAMS["method"], PARAMS["budget"], 0, work / "cache")
        load_data(exp, 0)
        _, init_s = timed(
            lambda: ray.init(
                address="local", num_cpus=2, include_dashboard=False, log_to_driver=False
            )
        )
        try:
            for rep in range(args.repeats):
                order = ("direct", "tune") if rep % 2 == 0 else ("tune", "direct")
                row = {"load_before": loadavg()}
                for way in order:
                    run_dir = work / f"r{rep}-{way}"
                    run = direct if way == "direct" else tuned
                    row[f"{way}_s"] = run(space, run_dir, work / "cache", args.trials)
                    print(f"repeat {rep}: {way} {row[f'{way}_s']:.1f} s", flush=True)
                row["overhead"] = row["tune_s"] / row["direct_s"] - 1.0
                row["load_after"] = loadavg()
                rows.append(row)
        finally:
            _, shutdown_s = timed(ray.shutdown)
    print(uptime())
    over = [r["overhead"] for r in rows]
    print(
        table(
            [
                [f"{args.trials} trials direct (s)", fmt_summary([r["direct_s"] for r in rows], 1)],
                [
                    f"{args.trials}-trial sweep, Tuner.fit (s)",
                    fmt_summary([r["tune_s"] for r in rows], 1),
                ],
                ["Tune overhead per trial", fmt_summary([100 * o for o in over], 1, "%")],
                ["fixed per sweep: ray.init + shutdown (s)", f"{init_s + shutdown_s:.1f}"],
            ],
            ["measurement", "median (min-max, n)"],
        )
    )
    payload = {"machine": machine(), "args": vars(args), "repeats": rows, "overhead": summary(over)}
    payload.update(ray_init_s=init_s, ray_shutdown_s=shutdown_s)
    print(f"recorded in {record('tune_overhead_warm', payload, args.quick)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
