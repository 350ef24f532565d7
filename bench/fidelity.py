"""Benchmark: does the search rank what is real? The main job's fidelity and wall time.

Runs the README's main job through the real command line,

    python -m tune_linfair.search --objective pareto --no-dashboard --run-dir R [EXTRA]

once as shipped (16 configurations x 3 seeds, balanced validation split) and once as the
project ran before the trustworthy-objectives work (``--repeats 1 --set
data.options.balanced_val=false``: one seed, validation carved from the unbalanced pool),
then reads each run's configs table and reports:

- Spearman's rank correlation across configurations between the validation and the test
  mean, for the worst-group drop (the objective) and for accuracy;
- the median 95% interval half-width of a configuration's worst-group drop (validation and
  test) against the spread (max - min) of the configuration means;
- the wall time of the whole command (Ray start and shutdown included) and the load
  averages around it.

Run from the repository root on an otherwise idle machine::

    python bench/fidelity.py            # both variants
    python bench/fidelity.py --quick    # 4 configurations, as shipped only

Prints a table; appends a record to ``bench/results/fidelity[-quick].jsonl``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import loadavg, machine, record, table, uptime

from tune_linfair.aggregate import load_configs, rank_agreement

VARIANTS = {
    "shipped": [],
    "before": ["--repeats", "1", "--set", "data.options.balanced_val=false"],
}


def run_variant(name: str, extra: list[str], work: Path, quick: bool) -> dict:
    run = work / name
    cmd = [sys.executable, "-m", "tune_linfair.search", "--objective", "pareto"]
    cmd += [
        "--no-dashboard",
        "--storage-path",
        str(work / f"{name}-storage"),
        "--run-dir",
        str(run),
    ]
    cmd += extra + (["--trials", "4"] if quick else [])
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    load_before = loadavg()
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{name}: the sweep failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    configs = load_configs(run)
    out = {"variant": name, "command": " ".join(cmd[1:]), "wall_s": wall}
    out.update(load_before=load_before, load_after=loadavg(), configurations=len(configs))
    out.update(rank_agreement(configs))
    for split in ("val", "test"):
        mean = configs[f"{split}_worst_group_drop_mean"].astype(float)
        half = mean - configs[f"{split}_worst_group_drop_ci_low"].astype(float)
        spread = float(mean.max() - mean.min())
        out[f"{split}_median_half_width"] = (
            float(np.nanmedian(half)) if half.notna().any() else None
        )
        out[f"{split}_spread"] = spread
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="4 configurations, as shipped only")
    args = p.parse_args()
    variants = {"shipped": VARIANTS["shipped"]} if args.quick else VARIANTS
    print(uptime(), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-fidelity-") as tmp:
        rows = [run_variant(n, e, Path(tmp), args.quick) for n, e in variants.items()]
    print(uptime())

    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    print(
        table(
            [
                [
                    r["variant"],
                    r["configurations"],
                    f"{r['wall_s']:.0f}",
                    fmt(r["spearman_worst_group_drop"]),
                    fmt(r["spearman_accuracy"]),
                    f"{fmt(r['val_median_half_width'])} / {fmt(r['val_spread'])}",
                    f"{fmt(r['test_median_half_width'])} / {fmt(r['test_spread'])}",
                ]
                for r in rows
            ],
            [
                "variant",
                "configs",
                "wall (s)",
                "Spearman drop",
                "Spearman acc",
                "val half-width / spread",
                "test half-width / spread",
            ],
        )
    )
    print(f"recorded in {record('fidelity', {'machine': machine(), 'runs': rows}, args.quick)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
