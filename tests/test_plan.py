"""``--plan``: the phases and run counts it prints before a sweep match what a real sweep then
builds, it says 0 base / 0 linearize once the cache holds them, it starts no Ray and
writes nothing, and bad calibration input is one line with exit code 2.

The sweep here is real (digits, resnet_mini, Ray Tune, Optuna, a tiny Pareto search); the
plans are the real command line (its ``main``, or a subprocess).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sweep_helpers import ENV, NO_HESSIAN, TINY, session_pids

from tune_linfair import plan, results, search, workload
from tune_linfair.spaces import load_space

# A Pareto search of 2 configurations on one seed over two SNL budgets, every trial
# diagnosed: 1 base model, 2 linearized models (both built first, whichever budgets Optuna
# picks), 2 fine-tunes, 2 diagnose runs.
SEARCH = [
    "--objective",
    "pareto",
    "--trials",
    "2",
    "--repeats",
    "1",
    "--diagnose",
    "all",
    "--set",
    "search.method=snl",
    "--set",
    "search.budget={choices: [0.5, 0.2]}",
    "--set",
    "search.mitigation=none",
    *TINY,
    *NO_HESSIAN,
]
ROW = re.compile(r"^(base|linearize \w+|linearize|grid|search|diagnose) +(<= )?(\d+) +(\S+)")


def cli(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    """The command line in its own session; whatever it leaves there is killed by id."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tune_linfair.search", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        deadline = time.monotonic() + 10
        while (pids := session_pids(proc.pid)) and time.monotonic() < deadline:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)
        proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def plan_rows(output: str) -> dict[str, tuple[int, str]]:
    """``{phase: (runs, cached)}`` of a printed plan."""
    rows = {}
    for line in output.splitlines():
        m = ROW.match(line)
        if m:
            rows[m.group(1)] = (int(m.group(3)), m.group(4))
    return rows


def meta_files(storage: Path, kind: str) -> list[Path]:
    return sorted((storage / "cache" / kind).glob("*/meta.json"))


@pytest.mark.ray
@pytest.mark.timeout(400)
def test_plan_counts_match_a_real_sweep_and_the_cache(tmp_path: Path, capsys) -> None:
    """The plans run in this process (the command line's ``main``; the test below runs one
    as a subprocess), the sweep as a subprocess."""
    storage = tmp_path / "runs"
    common = ["--plan", *SEARCH, "--storage-path", str(storage), "--images-per-s", "1000"]
    assert search.main(common) == 0
    before = capsys.readouterr().out
    assert plan_rows(before) == {
        "base": (1, "0"),
        "linearize snl": (2, "0"),
        "search": (2, "-"),
        "diagnose": (2, "-"),
    }
    assert "phases: base -> linearize -> search -> diagnose (all)" in before
    assert not storage.exists()  # a plan writes nothing

    run = tmp_path / "runs" / "sweep"
    sweep = cli([*SEARCH, "--storage-path", str(storage), "--run-dir", str(run)])
    assert sweep.returncode == 0, sweep.stdout[-2000:] + sweep.stderr[-2000:]
    assert len(meta_files(storage, "base")) == 1
    linearized = meta_files(storage, "linearized")
    assert len(linearized) == 2
    trials = results.load_trials(run)
    assert len(trials) == 2 and (trials["status"] == "ok").all()
    stages = results.load_stages(run)
    diagnosed = stages[(stages["phase"] == "diagnose") & (stages["status"] == "ok")]
    assert sorted(diagnosed["key"]) == sorted(trials["trial_id"])

    assert search.main(common) == 0
    after = capsys.readouterr().out
    epochs = sorted(json.loads(p.read_text())["log"]["epochs"] for p in linearized)
    took = f"{epochs[0]}-{epochs[1]}" if epochs[0] < epochs[1] else str(epochs[0])
    assert f"2 cached SNL run(s) on these base models took {took} epochs" in after
    assert plan_rows(after) == {
        "base": (0, "1"),
        "linearize snl": (0, "2"),
        "search": (2, "-"),
        "diagnose": (2, "-"),
    }


def test_plan_measures_throughput_and_starts_no_ray(tmp_path: Path) -> None:
    code = (
        "import sys; from tune_linfair.search import main; "
        f"rc = main(['--plan', '--storage-path', {str(tmp_path / 's')!r}]); "
        "print('RC', rc, 'ray' in sys.modules)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.rstrip().endswith("RC 0 False")
    assert plan_rows(proc.stdout) == {
        "base": (3, "0"),
        "linearize deepreduce": (15, "0"),
        "linearize snl": (15, "0"),
        "search": (48, "-"),
        "diagnose": (48, "-"),
    }
    rate = re.search(
        r"images/s on cpu: ([\d.,]+) \(1 thread\(s\), batch \d+, measured", proc.stdout
    )
    assert rate and float(rate.group(1).replace(",", "")) > 0, proc.stdout
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    "bad",
    [
        ["--images-per-s", "fast"],
        ["--images-per-s", "H200=-3"],
        ["--images-per-s", "=100"],
        ["--snl-epochs", "0"],
    ],
)
def test_bad_calibration_input_is_one_line(bad: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        search.main(["--plan", *bad])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: argument ") and err.count("\n") == 1


def test_bad_calibration_input_from_the_command_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tune_linfair.search", "--plan", "--images-per-s", "0"],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2 and not proc.stdout and not list(tmp_path.iterdir())
    assert proc.stderr == (
        "error: argument --images-per-s: expected N or NAME=N with N images/s > 0, "
        "got '0' (see --help)\n"
    )


def test_plan_options_without_plan_are_refused(capsys) -> None:
    assert search.main(["--snl-epochs", "40"]) == 2
    err = capsys.readouterr().err
    assert err == "error: --snl-epochs only applies to --plan; add --plan or drop it\n"


def test_a_budget_range_is_built_on_demand(tmp_path: Path) -> None:
    space = load_space("default", ["search.budget={low: 0.05, high: 0.5}", "trials=4"])
    shape = workload.data_shape(space.experiment, 0)
    rows = plan.phase_rows(space, "pareto", 4, tmp_path, shape, diagnose="all", snl_epochs=20)
    by_phase = {r.phase: r for r in rows}
    assert set(by_phase) == {"base", "linearize", "search", "diagnose"}
    lin = by_phase["linearize"]
    assert (lin.runs, lin.upto, lin.cached) == (12, True, None)
    # the costlier method bounds an on-demand run: SNL at 20 epochs over DeepReDuce's 5
    snl = workload.linearize_passes(space.experiment, shape, "snl", 20)
    assert lin.per_run == snl > workload.linearize_passes(space.experiment, shape, "deepreduce", 20)
    assert not lin.bound  # --snl-epochs given: an assumption, not a bound
    assert (by_phase["diagnose"].runs, by_phase["diagnose"].upto) == (12, False)


def test_published_sizes_follow_the_loaders_protocol() -> None:
    """Without the files, CIFAR-10's sizes are the loader's protocol applied to the
    published counts: 500 validation images per class carved before unbalancing, then
    90% / 10% of the remaining 4,500 per class (README, Data)."""
    space = load_space("cifar10_resnet18_snl_fast")
    shape = workload.data_shape(space.experiment, 0)
    assert (shape.n_train, shape.n_val, shape.n_test) == (22_500, 5_000, 10_000)
    assert shape.test_groups == [1000] * 10 and shape.augment
    assert shape.source.startswith("files not loadable here")
    svhn = workload.data_shape(load_space("svhn_resnet18_snl").experiment, 0)
    assert svhn.n_train + svhn.n_val == 73_257 and svhn.n_test == 26_032


def test_unreachable_deepreduce_budgets_build_nothing(tmp_path: Path) -> None:
    overrides = ["grid.method=[deepreduce]", "grid.budget=[0.2,0.002]", "grid.mitigation=[none]"]
    space = load_space("default", [*overrides, "grid.seed=[0]"])
    shape = workload.data_shape(space.experiment, 0)
    rows = {r.phase: r for r in plan.phase_rows(space, "grid", 1, tmp_path, shape)}
    assert rows["linearize deepreduce"].runs == 1  # 0.002 of 3,840 ReLUs: no configuration
    assert "budgets 0.002 unreachable" in rows["linearize deepreduce"].note
    assert rows["grid"].runs == 2


def test_without_prebuild_a_search_asks_for_at_most_one_model_per_fine_tune(
    tmp_path: Path,
) -> None:
    space = load_space("default", ["trials=1"])  # 1 configuration x 3 seeds
    shape = workload.data_shape(space.experiment, 0)
    for prebuild, runs, upto in ((True, 15, False), (False, 3, True)):
        rows = plan.phase_rows(space, "pareto", 1, tmp_path, shape, prebuild=prebuild)
        snl = {r.phase: r for r in rows}["linearize snl"]
        assert (snl.runs, snl.upto) == (runs, upto)
