"""The sweep orchestrator end to end: ``python -m tune_linfair.search`` in subprocesses.

Every sweep here is real (digits, resnet_mini, Ray Tune, Optuna) with tiny epochs. The
drivers that get SIGKILLed start their own local Ray (the default ``--address local``);
the other runs join one Ray instance shared by the module (``--address``), since
``ray.init`` costs 3-10 s on a 2-core box. Each CLI run gets its own session
(``start_new_session``); whatever it leaves behind there (a killed driver's Ray processes)
is killed by process id when the run ends, so no Ray process outlives its test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from sweep_helpers import ENV, NO_HESSIAN, TINY, kill_session

from tune_linfair import aggregate, preflight, results, search
from tune_linfair.cache import computations

# Two grid points that differ only in the mitigation: they share one linearized model.
GRID2 = [
    "--objective",
    "grid",
    "--set",
    "grid.method=[snl]",
    "--set",
    "grid.budget=[0.2]",
    "--set",
    "grid.mitigation=[none,lagrangian]",
    "--set",
    "grid.mu=[0.1]",
    "--set",
    "grid.seed=[0]",
]
N_GROUPS = 10  # digits: one group per class
STAGES_X_SPLITS = 3 * 2  # (base, linearized, finetuned) x (val, test)


# -- helpers ------------------------------------------------------------------------------
def start_sweep(args: list[str], log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tune_linfair.search", *args]
    with open(log, "w") as out:
        return subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=ENV, start_new_session=True
        )


def run_sweep(args: list[str], log: Path, timeout: float = 240) -> tuple[int, str]:
    """Run the CLI to the end; return (exit code, output)."""
    proc = start_sweep(args, log)
    try:
        rc = proc.wait(timeout=timeout)
    finally:
        kill_session(proc.pid)
        proc.wait()
    return rc, log.read_text()


def kill_when(proc: subprocess.Popen, ready, timeout: float = 180) -> None:
    """SIGKILL the sweep's whole session once ``ready()`` holds (polled every 0.1 s)."""
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert proc.poll() is None, "the sweep ended before the kill point"
            assert time.monotonic() < deadline, "the kill point never came"
            time.sleep(0.1)
    finally:
        kill_session(proc.pid)
        proc.wait()


def interrupt_when(proc: subprocess.Popen, ready, timeout: float = 180) -> int:
    """Ctrl-C (SIGINT to the driver) once ``ready()`` holds; return its exit code."""
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert proc.poll() is None, "the sweep ended before the interrupt"
            assert time.monotonic() < deadline, "the interrupt point never came"
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGINT)
        return proc.wait(timeout=120)
    finally:
        kill_session(proc.pid)
        proc.wait()


def artifact_dirs(storage: Path, kind: str) -> list[Path]:
    folder = storage / "cache" / kind
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def assert_tables(run: Path, n_trials: int) -> pd.DataFrame:
    """One trials row per trial; groups for every group x split x stage; one samples row
    per test sample; nothing duplicated. Returns the trials table."""
    trials = results.load_trials(run)
    assert len(trials) == n_trials and trials["trial_id"].is_unique
    groups, samples = results.load_groups(run), results.load_samples(run)
    assert not groups.duplicated(["trial_id", "stage", "split", "group"]).any()
    assert not samples.duplicated(["trial_id", "stage", "split", "index"]).any()
    for tid in trials.loc[trials["status"] == "ok", "trial_id"]:
        g = groups[groups["trial_id"] == tid]
        assert len(g) == N_GROUPS * STAGES_X_SPLITS
        assert set(g["group"]) == set(range(N_GROUPS)) and (g["n"] > 0).all()
        s = samples[samples["trial_id"] == tid]
        n_test = g[(g["stage"] == "finetuned") & (g["split"] == "test")]["n"].sum()
        assert len(s) == n_test and set(s["split"]) == {"test"}
    return trials


def optuna_trials(run: Path) -> list:
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    storage = JournalStorage(JournalFileBackend(str(run / "optuna.journal")))
    (summary,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    return study.get_trials(deepcopy=False)


def assert_optuna_matches(run: Path, trials: pd.DataFrame) -> None:
    """No Optuna trial RUNNING; every configuration (its seeds' Parquet rows) is one Optuna
    trial, COMPLETE with the mean over its seeds of the rows' objectives when every seed is
    ok, FAIL when one failed; the rest are FAIL."""
    from optuna.trial import TrialState

    ot = optuna_trials(run)
    assert {t.state for t in ot} <= {TrialState.COMPLETE, TrialState.FAIL}
    by_tune_id = {t.user_attrs.get("tune_trial_id"): t for t in ot}
    assert len(by_tune_id) == len(ot)
    rows = trials.set_index("trial_id")
    for _, members in trials.groupby("config_id"):
        first = [tid for tid in members["trial_id"] if tid in by_tune_id]
        assert len(first) == 1, members["trial_id"].tolist()
        t = by_tune_id.pop(first[0])
        assert sorted(t.user_attrs["tune_trial_ids"]) == sorted(members["trial_id"])
        seeds = rows.loc[t.user_attrs["tune_trial_ids"]]
        if (seeds["status"] == "ok").all():
            assert t.state == TrialState.COMPLETE
            cols = ["val_accuracy", "val_worst_group_drop", "relu_count"]
            assert t.values == pytest.approx(seeds[cols].astype(float).mean().tolist())
        else:
            assert t.state == TrialState.FAIL
    # Optuna trials that no Tune trial finished (asked just before a kill) are FAIL
    assert all(t.state == TrialState.FAIL for t in by_tune_id.values())


# -- end to end ---------------------------------------------------------------------------
@pytest.mark.ray
@pytest.mark.timeout(600)
def test_pareto_sweep_end_to_end(resumed_grid: dict, ray_address: str, tmp_path: Path) -> None:
    """An Optuna sweep through the CLI, 2 configurations x 2 seeds (``--repeats 2``),
    interrupted once (Ctrl-C) and finished with ``--resume``.

    The driver gets SIGINT when the first trial's row appears, while another trial is in
    flight: it stops with exit code 130 and leaves that trial RUNNING in Optuna; the resume
    reruns it and must tell Optuna its result (SIGKILL is tested on the grid sweep below).
    It is the second sweep on the grid sweep's storage path: it reuses that sweep's base
    model and linearizes only new (method, budget) pairs, once each.
    """
    from optuna.trial import TrialState

    storage = resumed_grid["storage"]
    (base,) = resumed_grid["base_dirs"]
    (lin,) = resumed_grid["lin_dirs"]
    stamps = {p: (p / "meta.json").stat().st_mtime_ns for p in (base, lin)}
    run = storage / "e2e"
    args = ["--objective", "pareto", "--trials", "2", "--repeats", "2", "--max-concurrent", "2"]
    args += ["--address", ray_address, "--storage-path", str(storage), "--run-dir", str(run)]
    args += [*TINY, "--set", "search.method=snl", "--set", "search.budget={choices: [0.5, 0.2]}"]
    args += ["--set", "diagnostics.hessian=true", "--set", "diagnostics.hessian_max_samples=8"]
    rc = interrupt_when(start_sweep(args, tmp_path / "stopped.txt"), _first_trial_done(run))
    stopped = (tmp_path / "stopped.txt").read_text()
    assert rc == 130 and f"continue with --resume --run-dir {run}" in stopped, stopped[-3000:]
    in_flight = {
        t.user_attrs["tune_trial_id"] for t in optuna_trials(run) if t.state == TrialState.RUNNING
    }
    assert in_flight

    resume = ["--objective", "pareto", "--resume", "--run-dir", str(run)]
    resume += ["--storage-path", str(storage), "--no-dashboard", "--address", ray_address]
    rc, out = run_sweep(resume, tmp_path / "resumed.txt")
    assert rc == 0, out[-3000:]

    for table, schema in results.TABLES.items():
        files = sorted((run / table).glob("*.parquet"))
        assert len(files) == 4
        for f in files:
            assert pq.read_schema(f).remove_metadata().equals(schema.remove_metadata())
    trials = assert_tables(run, 4)
    assert (trials["status"] == "ok").all() and trials["error"].isna().all()
    # every configuration ran on seeds 0 and 1; the configs table holds their statistics
    assert trials.groupby("config_id")["seed"].apply(sorted).tolist() == [[0, 1], [0, 1]]
    configs = aggregate.load_configs(run)
    assert len(configs) == 2 and (configs["n_seeds"] == 2).all()
    for row in configs.itertuples():
        seeds = trials[trials["config_id"] == row.config_id]
        assert row.val_accuracy_mean == pytest.approx(seeds["val_accuracy"].astype(float).mean())
    # the pareto flag marks exactly the rows no other row dominates (acc max, drop, ReLUs min)
    pts = trials[["val_accuracy", "val_worst_group_drop", "relu_count"]].astype(float).to_numpy()
    pts[:, 0] *= -1
    dominated = [any((q <= p).all() and (q < p).any() for q in pts) for p in pts]
    assert trials["pareto"].tolist() == [not d for d in dominated]
    assert (trials["relu_count"] <= trials["budget"] * trials["relu_total"]).all()
    assert trials["val_accuracy"].between(0, 1).all()
    assert len(pd.read_parquet(run / "trials")) == 4  # pandas reads the dataset directly
    groups = results.load_groups(run)
    test_ft = groups[(groups["stage"] == "finetuned") & (groups["split"] == "test")]
    # the diagnose phase ran on the front's configurations (every seed), and only there
    # do the fine-tuned models carry gradients, Hessians and boundary distances
    front = set(configs.loc[configs["pareto"], "config_id"])
    diagnosed = set(trials.loc[trials["config_id"].isin(front), "trial_id"])
    stages = results.load_stages(run)
    assert set(stages.loc[stages["phase"] == "diagnose", "key"]) == diagnosed
    heavy = test_ft["trial_id"].isin(diagnosed)
    for col in ("grad_norm", "hessian_top_eig", "mean_geometric_distance"):
        assert test_ft.loc[heavy, col].notna().all() and test_ft.loc[~heavy, col].isna().all()
    assert set(stages.loc[stages["phase"] == "base", "seed"]) == {1}  # seed 0 was cached

    _, _, table = out.partition("Pareto-optimal configurations")
    assert table, out[-3000:]
    for cid in configs.loc[configs["pareto"], "config_id"]:
        assert cid[:7] in table  # the summary shortens ids to read at 100 columns
    assert "Validation ranks test" in table
    for name in ("sweep.json", "command.txt", "space.yaml", "versions.json", "pareto.png"):
        assert (run / name).is_file()
    assert_optuna_matches(run, trials)
    assert in_flight & set(trials["trial_id"])  # rerun after the stop, told COMPLETE

    # the cache: the seed-0 base model reused, not retrained (seed 1 trained once); one
    # linearized model per distinct (method, budget, seed) over both sweeps (the pareto
    # sweep's linearize phase builds all 4 its space can ask for), the grid sweep's reused
    # where they meet
    assert base in artifact_dirs(storage, "base") and len(artifact_dirs(storage, "base")) == 2
    assert set(trials.loc[trials["seed"] == 0, "base_key"]) == {base.name}
    assert {p: (p / "meta.json").stat().st_mtime_ns for p in (base, lin)} == stamps
    both = pd.concat([results.load_trials(resumed_grid["run"]), trials])
    per_combo = both.groupby(["method", "budget", "seed"])["lin_key"]
    assert per_combo.nunique().eq(1).all()
    combos = set(per_combo.groups) | {("snl", b, s) for b in (0.5, 0.2) for s in (0, 1)}
    assert len(artifact_dirs(storage, "linearized")) == len(combos)
    # each computed exactly once over both sweeps, the resume and the concurrent trials
    for kind in ("base", "linearized"):
        assert all(len(computations(p)) == 1 for p in artifact_dirs(storage, kind)), kind


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_grid_with_repeats_aggregates_over_seeds(ray_address: str, tmp_path: Path) -> None:
    """A real grid sweep, 2 configurations x 2 seeds: the configs table holds each
    configuration's mean, std and Student-t interval over its seeds, recomputed here from
    the per-seed rows; the summary shows the configurations and the rank agreement."""
    run = tmp_path / "runs" / "grid"
    args = [*GRID2[:-2], "--repeats", "2", "--max-concurrent", "2", "--address", ray_address]
    args += ["--storage-path", str(tmp_path / "runs"), "--run-dir", str(run), *TINY, *NO_HESSIAN]
    rc, out = run_sweep(args, tmp_path / "log.txt")
    assert rc == 0, out[-3000:]
    trials = assert_tables(run, 4)
    assert sorted(trials["seed"].tolist()) == [0, 0, 1, 1]
    configs = aggregate.load_configs(run).set_index("config_id")
    assert len(configs) == 2 and (configs["n_seeds"] == 2).all()
    for config_id, seeds in trials.groupby("config_id"):
        row = configs.loc[config_id]
        assert set(seeds["mitigation"]) == {row["mitigation"]}
        for metric in aggregate.METRICS:
            x = seeds[metric].astype(float).to_numpy()
            half = 12.706204736174707 * x.std(ddof=1) / np.sqrt(2)  # t_{0.975, 1}
            assert row[f"{metric}_mean"] == pytest.approx(x.mean())
            assert row[f"{metric}_std"] == pytest.approx(x.std(ddof=1), nan_ok=True)
            assert row[f"{metric}_ci_high"] == pytest.approx(x.mean() + half, nan_ok=True)
    assert "4 trials (4 ok, 0 failed): 2 configurations on seeds [0, 1]" in out
    # the saved space spells out the data set's effective options (the split protocol), so
    # a resume keeps the split even if a loader default changes later
    import yaml

    saved = yaml.safe_load((run / "space.yaml").read_text())
    assert saved["data"]["options"]["balanced_val"] is True
    assert saved["data"]["options"]["minority_share"] == 0.3
    assert "Pareto-optimal configurations" in out and "Validation ranks test" in out


# -- resume after the driver is killed ----------------------------------------------------
def _base_training(storage: Path):
    def ready() -> bool:
        dirs = artifact_dirs(storage, "base")
        return bool(dirs) and not (dirs[0] / "meta.json").exists()

    return ready


def _first_trial_done(run: Path):
    return lambda: any((run / "trials").glob("*.parquet"))


@pytest.fixture(scope="module")
def resumed_grid(tmp_path_factory, ray_address: str) -> dict:
    """A 2-point grid sweep (one trial at a time) whose driver is SIGKILLed, with every Ray
    process it started, twice: during base training, then (resumed) right after its first
    trial finished; then resumed to the end with ``--resume --run-dir`` alone (on the shared
    Ray: nothing of the dead instances is needed). Records the state at each kill point;
    the end-to-end sweep runs second on its storage path (warm cache)."""
    root = tmp_path_factory.mktemp("resumed")
    storage, run = root / "runs", root / "runs" / "sweep"
    first = [*GRID2, "--max-concurrent", "1", "--storage-path", str(storage)]
    first += ["--run-dir", str(run), *TINY, *NO_HESSIAN]
    resume = ["--objective", "grid", "--resume", "--run-dir", str(run)]
    resume += ["--storage-path", str(storage), "--no-dashboard"]
    rows = lambda: sorted(p.name for p in (run / "trials").glob("*.parquet"))  # noqa: E731
    state: dict = {"storage": storage, "run": run}

    kill_when(start_sweep(first, root / "killed1.txt"), _base_training(storage))
    state["base_training"] = {
        "rows": rows(),
        "base_dirs": artifact_dirs(storage, "base"),
        "base_done": [(p / "meta.json").exists() for p in artifact_dirs(storage, "base")],
    }
    kill_when(start_sweep(resume, root / "killed2.txt"), _first_trial_done(run))
    state["first_trial_done"] = {
        "rows": rows(),
        "base_dirs": artifact_dirs(storage, "base"),
        "first_bytes": (run / "trials" / "grid00000.parquet").read_bytes(),
    }
    # a writer killed mid-file leaves a hidden temporary file: loaders skip it
    for table in results.TABLES:
        (run / table / f".grid00001.parquet.{table}.tmp").write_bytes(b"PAR1 torn")
    state["loaded_with_torn_files"] = results.load_trials(run)["trial_id"].tolist()

    rc, out = run_sweep([*resume, "--address", ray_address], root / "resumed.txt")
    assert rc == 0, out[-3000:]
    state["base_dirs"] = artifact_dirs(storage, "base")
    state["lin_dirs"] = artifact_dirs(storage, "linearized")
    return state


@pytest.mark.ray
@pytest.mark.timeout(600)
@pytest.mark.parametrize("kill_point", ["base_training", "first_trial_done"])
def test_resume_after_driver_killed(kill_point: str, resumed_grid: dict) -> None:
    at_kill = resumed_grid[kill_point]
    if kill_point == "base_training":  # killed mid-training: nothing finished, no artifact
        assert at_kill["rows"] == [] and at_kill["base_done"] == [False]
    else:
        assert at_kill["rows"] == ["grid00000.parquet"]
        assert at_kill["base_dirs"] == resumed_grid["base_dirs"]  # trained once, after kill 1
        assert resumed_grid["loaded_with_torn_files"] == ["grid00000"]
    run = resumed_grid["run"]
    trials = assert_tables(run, 2)  # exactly one row per grid point: none lost, none doubled
    assert sorted(trials["trial_id"]) == ["grid00000", "grid00001"]
    assert (trials["status"] == "ok").all()
    assert set(trials["mitigation"]) == {"none", "lagrangian"}
    assert (trials["epochs"] == 1).all()  # the saved space, not the default one
    assert not list(run.glob("*/.*.tmp"))
    # the resumes reused what the killed drivers had cached: no model was trained twice
    assert len(resumed_grid["base_dirs"]) == 1 and len(resumed_grid["lin_dirs"]) == 1
    if kill_point == "first_trial_done":  # the finished trial was reported, not recomputed
        grid0 = (run / "trials" / "grid00000.parquet").read_bytes()
        assert grid0 == resumed_grid["first_trial_done"]["first_bytes"]


# -- artifact cache -----------------------------------------------------------------------
@pytest.mark.ray
@pytest.mark.timeout(600)
def test_trials_sharing_a_budget_share_the_linearized_model(resumed_grid: dict) -> None:
    trials = results.load_trials(resumed_grid["run"])
    combos = set(zip(trials["method"], trials["budget"], trials["seed"]))
    assert len(resumed_grid["lin_dirs"]) == len(combos) == 1
    assert len(resumed_grid["base_dirs"]) == 1
    assert trials["lin_key"].nunique() == 1 and trials["base_key"].nunique() == 1
    assert set(trials["lin_key"]) == {p.name for p in resumed_grid["lin_dirs"]}
    # computed once, though the driver was killed during base training and again after
    # the first trial: the killed computation left no record, the resumed one did
    for path in resumed_grid["base_dirs"] + resumed_grid["lin_dirs"]:
        assert len(computations(path)) == 1, path


# -- the README's main command ------------------------------------------------------------
def test_readme_main_command_parses_and_preflights() -> None:
    from tune_linfair.linearize.deepreduce import select_config
    from tune_linfair.models import create_model, total_relus
    from tune_linfair.stages import load_data

    args = search.build_parser().parse_args(["--objective", "pareto"])
    args, space, _ = search.resolve(args)
    search.validate_args(args, space)
    preflight.preflight(space, args.objective)
    assert space.name == "default" and space.experiment.data.name == "digits"
    assert args.address == "local" and args.dashboard_host == "127.0.0.1"
    # no sampled (method, budget) pair of the default can fail: DeepReDuce fits each budget
    exp = space.experiment
    data = load_data(exp, 0)
    model = create_model(
        exp.model.name, data.num_classes, data.input_shape, exp.model.width, exp.model.granularity
    )
    assert set(space.search["method"]["choices"]) == {"snl", "deepreduce"}
    for budget in space.search["budget"]["choices"]:
        assert select_config(model, budget).relu_count <= budget * total_relus(model)
