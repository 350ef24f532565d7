"""Hardening: what a sweep does when things go wrong.

- trials that fail (a NaN loss, an impossible budget) are recorded ``failed`` with the
  reason, FAIL in Optuna (never RUNNING), and the sweep goes on;
- a writer killed mid-file leaves only a hidden temporary file: loaders skip it, a resume
  removes it (the driver killed mid-sweep is in tests/test_search.py);
- a worker killed while holding an artifact lock does not block the cache;
- an unwritable run directory or a full disk: one clear error, nothing already written lost;
- a finished sweep is never overwritten without ``--resume``;
- no name from a config leads a path outside the storage path.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from filelock import Timeout
from sweep_helpers import ENV, NO_HESSIAN, TINY, session_pids

from tune_linfair import cache, results, rundir, search

SPACES_DIR = Path(__file__).resolve().parents[1] / "search_spaces"


def run_cli(args: list[str], log: Path, timeout: float = 300) -> tuple[int, str]:
    """``python -m tune_linfair.search ARGS`` in its own session; whatever it leaves
    running in that session is killed by id when it ends."""
    cmd = [sys.executable, "-m", "tune_linfair.search", *args]
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=ENV, start_new_session=True
        )
    try:
        rc = proc.wait(timeout=timeout)
    finally:
        for pid in session_pids(proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
    return rc, log.read_text()


def no_ray(*args, **kwargs):
    raise AssertionError("Ray must not start for a sweep refused up front")


# -- failing trials -----------------------------------------------------------------------
# DeepReDuce cannot go below 128 of resnet_mini's 3,840 ReLUs, so budget 0.01 fails in the
# trial; lr 1e6 makes the fine-tuning loss NaN within a few steps. Optuna's seeded TPE
# (random start-up) draws (0.5, 0.01), (0.5, 1e6), (0.01, 0.01) for seed 0.
FAILING = [
    "--objective",
    "pareto",
    "--trials",
    "3",
    "--repeats",
    "1",
    "--max-concurrent",
    "2",
    "--seed",
    "0",
    "--set",
    "search.method=deepreduce",
    "--set",
    "search.mitigation=none",
    "--set",
    "search.budget={choices: [0.01, 0.5]}",
    "--set",
    "search.lr={choices: [0.01, 1000000.0]}",
]


@pytest.fixture(scope="module")
def failing_sweep(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("faults")
    storage, run = root / "runs", root / "runs" / "failing"
    args = [*FAILING, "--storage-path", str(storage), "--run-dir", str(run), *TINY, *NO_HESSIAN]
    rc, out = run_cli(args, root / "log.txt")
    return {"rc": rc, "out": out, "storage": storage, "run": run}


@pytest.mark.ray
@pytest.mark.timeout(420)
def test_failed_trials_are_recorded_and_the_sweep_goes_on(failing_sweep: dict) -> None:
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage
    from optuna.trial import TrialState

    assert failing_sweep["rc"] == 0, failing_sweep["out"][-3000:]
    run = failing_sweep["run"]
    trials = results.load_trials(run).set_index("trial_id")
    assert len(trials) == 3
    impossible = trials[trials["budget"] == 0.01]
    diverged = trials[(trials["budget"] == 0.5) & (trials["lr"] == 1e6)]
    fine = trials[(trials["budget"] == 0.5) & (trials["lr"] == 0.01)]
    assert len(impossible) and len(diverged) and len(fine), trials[["budget", "lr"]]
    assert (impossible["status"] == "failed").all() and (diverged["status"] == "failed").all()
    assert impossible["error"].str.contains("BudgetUnreachable: ReLU budget .* DeepReDuce").all()
    assert diverged["error"].str.contains("NonFiniteLossError: loss became (?:nan|inf)").all()
    assert (fine["status"] == "ok").all() and fine["error"].isna().all()
    assert not trials.loc[trials["status"] == "failed", "pareto"].any()
    # a failed trial has no group or sample rows; the ok one has all of its own
    assert set(results.load_groups(run)["trial_id"]) == set(fine.index)
    assert f"3 trials ({len(fine)} ok, {3 - len(fine)} failed)" in failing_sweep["out"]
    # a failure of the trial's own is not retried (--max-failures is for dead workers)
    errors = [p.read_text() for p in (run / "tune").rglob("error.txt")]
    assert len(errors) == 3 - len(fine)
    assert all("Failure # 1" in e and "Failure # 2" not in e for e in errors), errors

    storage = JournalStorage(JournalFileBackend(str(run / "optuna.journal")))
    (summary,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    state = {t.user_attrs["tune_trial_id"]: t.state for t in study.get_trials()}
    assert set(state) == set(trials.index)
    for tid, row in trials.iterrows():
        assert state[tid] == (TrialState.COMPLETE if row["status"] == "ok" else TrialState.FAIL)


@pytest.mark.timeout(420)
def test_rerun_of_finished_sweep_without_resume_is_refused(
    failing_sweep: dict, monkeypatch, capsys
) -> None:
    monkeypatch.setattr(search, "start_ray", no_ray)
    run, storage = failing_sweep["run"], failing_sweep["storage"]
    assert (run / "sweep.json").is_file()
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in run.rglob("*") if p.is_file()}
    base = ["--storage-path", str(storage), "--run-dir", str(run), *TINY, *NO_HESSIAN]
    attempts = [
        ([*FAILING, *base], "already holds a sweep"),  # the same command again
        (["--objective", "grid", *base], "already holds a sweep"),
        (["--objective", "grid", "--resume", *base[:4]], "holds a 'pareto' sweep"),
        (["--objective", "pareto", "--resume", *base], "drop --set base.epochs=2"),
    ]
    for argv, message in attempts:
        assert search.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in run.rglob("*") if p.is_file()}
    assert after == before


# -- torn Parquet writes ------------------------------------------------------------------
def _row(run_id: str, trial_id: str) -> dict:
    row = dict.fromkeys(results.TRIALS_COLUMNS)
    row.update(run_id=run_id, trial_id=trial_id, status="ok", budget=0.5, relu_count=1)
    return row


def test_hidden_temp_files_are_skipped_and_removed_on_resume(tmp_path: Path) -> None:
    run, storage = tmp_path / "runs" / "r", tmp_path / "runs"
    results.write_trial(run, _row("r", "t1"), [], [])
    good = {t: results.trial_file(run, t, "t1").read_bytes() for t in results.TABLES}
    torn = [run / t / f".t2.parquet.{i}.tmp" for i, t in enumerate(results.TABLES)]
    for path in torn:
        path.write_bytes(b"PAR1\x00torn")  # what a writer killed mid-file leaves
    assert results.load_trials(run)["trial_id"].tolist() == ["t1"]
    assert len(results.load_groups(run)) == 0 and len(results.load_samples(run)) == 0

    rundir.create_run_dir(rundir.RunDir(run, storage), resume=True)
    assert not any(p.exists() for p in torn)
    assert {t: results.trial_file(run, t, "t1").read_bytes() for t in results.TABLES} == good


# -- a worker killed while holding an artifact lock ---------------------------------------
HOLDER = """
import sys, time
from pathlib import Path
from filelock import FileLock
lock = FileLock(sys.argv[1])
lock.acquire()
(Path(sys.argv[2]) / "model.pt").write_bytes(b"half a checkpoint")
print("locked", flush=True)
time.sleep(600)
"""


@pytest.mark.timeout(120)
def test_worker_killed_holding_artifact_lock(tmp_path: Path, monkeypatch) -> None:
    cache_dir, key = tmp_path / "cache", "0123456789abcdef"
    path = cache.artifact_dir(cache_dir, "base", key)
    path.mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(cache.artifact_lock(path)), str(path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    calls: list[Path] = []

    def compute(p: Path) -> dict:
        calls.append(p)
        time.sleep(0.3)  # long enough for a second caller to arrive
        (p / "model.pt").write_bytes(b"weights")
        return {"key": key}

    try:
        assert holder.stdout.readline().strip() == "locked"
        monkeypatch.setattr(cache, "LOCK_TIMEOUT_S", 1.0)
        with pytest.raises(Timeout):  # the live holder's lock is respected
            cache.cached(cache_dir, "base", key, compute)
        assert not calls
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    monkeypatch.setattr(cache, "LOCK_TIMEOUT_S", 30.0)
    outcome: list[tuple] = []
    start = time.monotonic()
    workers = [
        threading.Thread(
            target=lambda: outcome.append(cache.cached(cache_dir, "base", key, compute))
        )
        for _ in range(2)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert time.monotonic() - start < 10  # the dead holder's lock went with it
    assert calls == [path]  # computed exactly once, the half-written file not trusted
    assert sorted(computed for _, computed in outcome) == [False, True]
    assert (path / "model.pt").read_bytes() == b"weights"
    assert cache.cached(cache_dir, "base", key, compute)[1] is False and len(calls) == 1


# -- unwritable run directory, full disk --------------------------------------------------
@pytest.mark.timeout(120)
def test_unwritable_run_dir_is_one_line_and_exit_2(tmp_path: Path, monkeypatch, capsys) -> None:
    # Permission bits do not stop root (CI), so the blocked paths run through a regular file.
    monkeypatch.setattr(search, "start_ray", no_ray)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    storage = tmp_path / "runs"
    cases = [
        (["--run-dir", str(blocker / "run"), "--storage-path", str(storage)], "cannot create"),
        (["--run-dir", str(blocker), "--storage-path", str(storage)], "is a file"),
        (["--storage-path", str(blocker / "runs")], "cannot create"),
    ]
    for extra, message in cases:
        assert search.main(["--objective", "grid", *TINY, *NO_HESSIAN, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0] and str(blocker) in err[0], err
    assert blocker.read_text() == "not a directory" and not storage.exists()


@pytest.fixture
def torch_threads():
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.timeout(300)
@pytest.mark.filterwarnings("ignore")
def test_disk_full_while_writing_results(tmp_path: Path, monkeypatch, torch_threads) -> None:
    """A trial whose Parquet write hits ENOSPC fails with that reason; no partial file is
    left and the rows already written still load, unchanged."""
    import pyarrow.parquet as pq

    from tune_linfair.spaces import load_space
    from tune_linfair.trainables import SweepContext, TrialFailed, search_trial

    space = load_space(
        "default", ["base.epochs=2", "finetune.epochs=1", "diagnostics.hessian=false"]
    )
    run = tmp_path / "run"
    context = SweepContext(space.raw, str(run), str(tmp_path / "cache"), "run", 1.0)
    point = {"method": "snl", "budget": 0.5, "mitigation": "none", "lr": 0.01, "seed": 0}
    search_trial({"point": {**point, "point_index": 0}}, context)
    kept = {t: results.trial_file(run, t, "grid00000").read_bytes() for t in results.TABLES}

    real_write = pq.write_table

    def disk_full(table, where, **kwargs):
        where.write(b"PAR1")  # some bytes got out before the disk filled
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pq, "write_table", disk_full)
    with pytest.raises(TrialFailed, match="No space left on device") as info:
        search_trial({"point": {**point, "lr": 0.02, "point_index": 1}}, context)
    assert "could not be written" in str(info.value)
    monkeypatch.setattr(pq, "write_table", real_write)

    assert not list(run.glob("*/.*"))  # no temporary file left behind
    assert not any(results.trial_file(run, t, "grid00001").exists() for t in results.TABLES)
    assert results.load_trials(run)["trial_id"].tolist() == ["grid00000"]
    assert {t: results.trial_file(run, t, "grid00000").read_bytes() for t in results.TABLES} == kept


# -- names from a config never leave the storage path -------------------------------------
@pytest.mark.parametrize("evil", ["../../evil", "/etc/evil", "..", "a/../../b", ".hidden"])
def test_space_name_cannot_escape_storage(evil: str, tmp_path: Path) -> None:
    storage = tmp_path / "deep" / "runs"
    args = search.build_parser().parse_args(
        ["--objective", "grid", "--storage-path", str(storage), "--set", f"name={evil}"]
    )
    args, space, record = search.resolve(args)
    assert space.name == evil
    run = rundir.locate(args.storage_path, args.run_dir, space.name, args.objective, record)
    run_dir, got_storage = run.path, run.storage
    assert got_storage == storage.resolve() and run_dir.parent == storage.resolve()
    assert not run_dir.name.startswith(".") and "/" not in run_dir.name
    assert ".." not in run_dir.relative_to(storage.resolve()).parts
    assert not (tmp_path / "evil").exists() and not list(tmp_path.rglob("*evil*"))


def test_space_file_name_cannot_escape_storage(tmp_path: Path) -> None:
    spec = tmp_path / "evil.yaml"
    default = (SPACES_DIR / "default.yaml").read_text()
    spec.write_text(default.replace("name: default", "name: ../../../evil"))
    storage = tmp_path / "runs"
    args = search.build_parser().parse_args(["--space", str(spec), "--storage-path", str(storage)])
    args, space, _ = search.resolve(args)
    run_dir = rundir.locate(args.storage_path, args.run_dir, space.name, args.objective).path
    assert run_dir.parent == storage.resolve() and run_dir.name.startswith("evil-pareto-")


def test_trial_and_artifact_names_cannot_escape(tmp_path: Path) -> None:
    from tune_linfair.trainables import trial_dir

    assert trial_dir(tmp_path, "grid00003") == tmp_path / "models" / "grid00003"
    for bad in ("../x", "..", "a/b", "/abs", ".hidden", ""):
        with pytest.raises(ValueError):
            trial_dir(tmp_path, bad)
        with pytest.raises(ValueError):
            results.trial_file(tmp_path, "trials", bad)
        with pytest.raises(ValueError):
            cache.artifact_dir(tmp_path, "base", bad)
        with pytest.raises(ValueError):
            cache.artifact_dir(tmp_path, bad, "0123abcd")
    assert cache.artifact_dir(tmp_path, "linearized", "ab12") == tmp_path / "linearized" / "ab12"
    with pytest.raises(ValueError):
        cache.cached(tmp_path, "base", "../../x", lambda p: {})
    assert not list(tmp_path.iterdir())


def test_safe_name() -> None:
    assert rundir.safe_name("default") == "default"
    assert rundir.safe_name("../../evil") == "evil"
    assert rundir.safe_name("my space/v2") == "my_space_v2"
    assert rundir.safe_name("..") == "sweep" and rundir.safe_name("") == "sweep"
