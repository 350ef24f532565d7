"""Benchmark: trials per hour at 1 and 2 concurrent trials, through the CLI.

Runs the same grid sweep with the real command line,

    python -m tune_linfair.search --objective grid --space default --max-concurrent C
        --cpus-per-trial 1 --no-dashboard --storage-path S --run-dir R --set ...

for C = 1 and C = 2, alternating, ``--repeats`` times. The grid is SNL at budgets
0.5 / 0.2 / 0.1 / 0.05 x mitigation none / lagrangian (mu 0.1) x lr 0.01 / 0.003 (16 trials;
``--quick``: 2 budgets x 2 mitigations, 4 trials) with ``--epochs`` fine-tuning epochs.
The base model and the four linearized models are **pre-cached** in ``S/cache`` before any
timing (the bench calls ``run_base`` / ``run_linearize`` with the same space, so the keys
match), so every trial is fine-tuning + evaluation + diagnostics + Parquet; the script checks
that no artifact was added by the sweeps.

Reported per sweep: wall time of the whole command (Ray start and shutdown included),
end-to-end trials/hour = trials / wall, and steady-state trials/hour = (trials - 1) / (time
between the first and the last trial's ``finished_at``), which leaves out the fixed start-up
cost. The speed-up of C=2 over C=1 is taken within each repeat.

Run::

    python bench/scaling.py             # 16 trials x 2 concurrency levels x 2 repeats
    python bench/scaling.py --quick     # 4 trials, 1 repeat

Prints a table; appends a record to ``bench/results/scaling[-quick].jsonl``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import fmt_summary, loadavg, record, summary, table, uptime

from tune_linfair import results
from tune_linfair.spaces import load_space
from tune_linfair.stages import run_base, run_linearize


def grid_overrides(quick: bool, epochs: int) -> list[str]:
    budgets = "[0.5, 0.2]" if quick else "[0.5, 0.2, 0.1, 0.05]"
    lrs = "[0.01]" if quick else "[0.01, 0.003]"
    return [
        f"finetune.epochs={epochs}",
        "grid.method=[snl]",
        f"grid.budget={budgets}",
        "grid.mitigation=[none, lagrangian]",
        "grid.mu=[0.1]",
        f"grid.lr={lrs}",
        "grid.seed=[0]",
    ]


def precache(overrides: list[str], storage: Path) -> list[str]:
    space = load_space("default", overrides)
    exp = space.experiment
    cache = storage / "cache"
    keys = []
    base, _ = run_base(exp, 0, cache)
    keys.append(base.key)
    for budget in space.grid["budget"]:
        lin, _ = run_linearize(exp, base, "snl", budget, 0, cache)
        keys.append(lin.key)
    return keys


def artifacts(storage: Path) -> set[str]:
    cache = storage / "cache"
    return {
        str(p.relative_to(cache))
        for kind in ("base", "linearized")
        for p in (cache / kind).glob("*")
        if p.is_dir()
    }


def sweep(overrides: list[str], storage: Path, concurrent: int, rep: int, expected: int) -> dict:
    run_dir = storage / f"c{concurrent}-r{rep}"
    cmd = [
        sys.executable,
        "-m",
        "tune_linfair.search",
        "--objective",
        "grid",
        "--space",
        "default",
        "--max-concurrent",
        str(concurrent),
        "--cpus-per-trial",
        "1",
        "--no-dashboard",
        "--storage-path",
        str(storage),
        "--run-dir",
        str(run_dir),
    ]
    for item in overrides:
        cmd += ["--set", item]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    log = storage / f"c{concurrent}-r{rep}.log"
    load = loadavg()
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"sweep failed (exit {proc.returncode}):\n{tail}")
    trials = results.load_trials(run_dir)
    ok = trials[trials["status"] == "ok"]
    finished = ok["finished_at"].sort_values()
    span = (finished.iloc[-1] - finished.iloc[0]).total_seconds()
    n = len(ok)
    out = {
        "concurrent": concurrent,
        "repeat": rep,
        "command": " ".join(cmd[1:]),
        "trials_ok": n,
        "trials_total": len(trials),
        "trials_expected": expected,
        "wall_s": wall,
        "trials_per_hour": 3600 * n / wall,
        "steady_trials_per_hour": 3600 * (n - 1) / span if span > 0 else float("nan"),
        "trial_wall_s": summary(ok["wall_time_s"].tolist()),
        "load_before": load,
        "load_after": loadavg(),
    }
    print(
        f"C={concurrent} repeat {rep}: {n} ok of {expected} grid points "
        f"({len(trials) - n} failed rows, {expected - len(trials)} without a row) in {wall:.1f} s, "
        f"{out['trials_per_hour']:.0f} trials/h end-to-end, {out['steady_trials_per_hour']:.0f} "
        f"steady; trial wall median {out['trial_wall_s']['median']:.1f} s; load {load} -> "
        f"{out['load_after']}",
        flush=True,
    )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 trials, 1 repeat")
    parser.add_argument("--repeats", type=int, help="default 2, quick 1")
    parser.add_argument("--epochs", type=int, help="fine-tuning epochs (default 8, quick 2)")
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 2)
    epochs = args.epochs or (2 if args.quick else 8)
    torch.set_num_threads(1)
    overrides = grid_overrides(args.quick, epochs)
    print(uptime(), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
        storage = Path(tmp)
        start = time.perf_counter()
        precache(overrides, storage)
        expected = len(load_space("default", overrides).grid_points())
        before = artifacts(storage)
        print(f"pre-cached {len(before)} artifacts in {time.perf_counter() - start:.1f} s")
        runs = []
        for rep in range(repeats):
            for c in (1, 2) if rep % 2 == 0 else (2, 1):
                runs.append(sweep(overrides, storage, c, rep, expected))
        added = artifacts(storage) - before
        if added:
            raise RuntimeError(
                f"the sweeps computed artifacts that should have been cached: {added}"
            )

    by = {c: [r for r in runs if r["concurrent"] == c] for c in (1, 2)}
    rows = []
    for c, rs in by.items():
        for key, label in (
            ("wall_s", "sweep wall s"),
            ("trials_per_hour", "trials/h end-to-end"),
            ("steady_trials_per_hour", "trials/h steady"),
        ):
            s = summary([r[key] for r in rs])
            rows.append([c, label, f"{s['median']:.1f}", f"{s['min']:.1f}", f"{s['max']:.1f}"])
        s = summary([r["trial_wall_s"]["median"] for r in rs])
        rows.append(
            [c, "trial wall s (median)", f"{s['median']:.1f}", f"{s['min']:.1f}", f"{s['max']:.1f}"]
        )
    speedup = [b["trials_per_hour"] / a["trials_per_hour"] for a, b in zip(by[1], by[2])]
    steady = [
        b["steady_trials_per_hour"] / a["steady_trials_per_hour"] for a, b in zip(by[1], by[2])
    ]
    print()
    print(table(rows, ["concurrent", "measure", "median", "min", "max"]))
    print(
        f"speed-up C=2 / C=1: end-to-end {fmt_summary(speedup, 2, 'x')}, steady {fmt_summary(steady, 2, 'x')}"
    )
    print(uptime())
    path = record(
        "scaling",
        {
            "epochs": epochs,
            "overrides": overrides,
            "artifacts": "pre-cached",
            "runs": runs,
            "speedup_end_to_end": summary(speedup),
            "speedup_steady": summary(steady),
        },
        quick=args.quick,
    )
    print(f"recorded in {path}")


if __name__ == "__main__":
    main()
