"""An SNL run that reaches ``linearize.max_epochs`` before its budget is reported, not hidden.

A real grid sweep (the CLI in a subprocess, Ray Tune, digits, resnet_mini) with two SNL
points: budget 1.0, met before any step, and budget 0.05 with one epoch of mask training
at a tiny L1 weight, which cannot get there. The trials table must carry
``reached_budget``, ``threshold_count``, ``lin_steps`` and ``lin_epochs`` for both, and the
summary must warn, in one line, about the one that fell short.
"""

from __future__ import annotations

import math
from pathlib import Path

from sweep_helpers import NO_HESSIAN, TINY
from test_search import run_sweep

from tune_linfair import results

GRID = ["--objective", "grid", "--max-concurrent", "1",
        "--set", "grid.method=[snl]", "--set", "grid.budget=[1.0,0.05]",
        "--set", "grid.mitigation=[none]", "--set", "grid.seed=[0]",
        "--set", "linearize.max_epochs=1", "--set", "linearize.c0=1.0e-7"]  # fmt: skip
CHEAP = ["--set", "base.epochs=1", "--set", "diagnostics.gradients=false",
         "--set", "diagnostics.boundary=false"]  # fmt: skip
BATCH = 64  # linearize.batch_size of the default space


def test_snl_short_of_budget_is_in_parquet_and_warned(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = [
        *GRID,
        *TINY,
        *NO_HESSIAN,
        *CHEAP,
        "--run-dir",
        str(run),
        "--storage-path",
        str(tmp_path),
    ]
    rc, out = run_sweep(args, tmp_path / "log.txt")
    assert rc == 0, out
    trials = results.load_trials(run).set_index("budget")
    assert list(trials["status"]) == ["ok", "ok"]
    short, met = trials.loc[0.05], trials.loc[1.0]
    groups = results.load_groups(run)
    mine = groups[(groups["trial_id"] == short["trial_id"]) & (groups["stage"] == "base")]
    n_train = int(mine[mine["split"] == "test"]["n_train"].sum())  # one row per group
    assert short["reached_budget"] == False  # noqa: E712 (pandas' nullable boolean)
    assert short["lin_epochs"] == 1 and short["lin_steps"] == math.ceil(n_train / BATCH)
    # one epoch at c = 1e-7 leaves almost every mask above the threshold
    assert short["threshold_count"] > 0.5 * short["relu_total"]
    assert short["relu_count"] <= round(0.05 * short["relu_total"])  # budget kept anyway
    assert met["reached_budget"] == True  # noqa: E712
    assert met["lin_steps"] == 0 and met["lin_epochs"] == 0
    assert met["threshold_count"] == met["relu_total"] == met["relu_count"]
    warnings = [line for line in out.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: 1 of 2 SNL trials hit linearize.max_epochs before their budget: "
        "raise it or linearize.c0"
    ]
