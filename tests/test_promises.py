"""The sweep-level promises of the README ("Reliability"), each run for real: the CLI as a
subprocess, real Ray, real Optuna, real Parquet (digits, resnet_mini, tiny epochs).

- a trial whose worker dies before it can write its row (here: SIGKILLed, for real, while
  it trains the base model) still counts: the driver writes its ``failed`` row from Tune's
  error, the summary counts it, the command exits 3 (incomplete);
- ``--max-accuracy-drop``: the constraint values are in the Optuna journal, infeasible
  configurations are marked in Parquet and left out of the printed front;
- ``--objective accuracy`` and ``--objective fairness`` end to end;
- the driver SIGKILLed during a pareto sweep (during base training, between trials, during
  the summary): ``--resume`` ends with exactly the configured trials, no duplicate row, no
  Optuna trial RUNNING; Ctrl-C twice stops at once and the sweep still resumes.

The kill points are read from what the CLI shows (cache folders, Parquet files, stdout
lines), not from its internals. Sweeps that need no fresh Ray join one instance shared by
the module (``--address``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from sweep_helpers import ENV, NO_HESSIAN, TINY, kill_session, wait_for
from test_search import (
    GRID2,
    artifact_dirs,
    assert_optuna_matches,
    assert_tables,
    run_sweep,
    start_sweep,
)

from tune_linfair import aggregate, lost, results


def lock_holders(lock: Path) -> list[int]:
    """Processes that have ``lock`` open (the worker computing that artifact)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) == str(lock):
                    pids.append(int(entry.name))
                    break
            except OSError:
                continue
    return pids


# -- a trial lost without a row -----------------------------------------------------------
@pytest.mark.ray
@pytest.mark.timeout(300)
def test_trial_killed_before_its_row_counts_as_failed(ray_address: str, tmp_path: Path) -> None:
    """The first grid trial's worker is SIGKILLed while it trains the base model (no fault
    injected: the real process dies, as it would on the OOM killer); the second trial runs.
    Before the fix the summary said "1 trials (1 ok, 0 failed)" and the command exited 0.
    The trial builds its base model itself (``--no-prebuild``) and is not retried
    (``--max-failures 0``; a retried trial continues from its checkpoint, tested in
    tests/test_checkpoint_sweep.py), so the kill loses it for good."""
    storage, run = tmp_path / "runs", tmp_path / "runs" / "lost"
    args = [*GRID2, "--max-concurrent", "1", "--address", ray_address]
    args += ["--no-prebuild", "--max-failures", "0"]
    args += ["--storage-path", str(storage), "--run-dir", str(run), *TINY, *NO_HESSIAN]
    args += ["--set", "base.epochs=4"]
    proc = start_sweep(args, tmp_path / "log.txt")
    killed: list[int] = []
    try:
        deadline = time.monotonic() + 180
        while not killed:
            assert proc.poll() is None and time.monotonic() < deadline, "no base training seen"
            for path in artifact_dirs(storage, "base"):
                if not (path / "meta.json").exists():
                    for pid in lock_holders(path.with_name(path.name + ".lock")):
                        os.kill(pid, signal.SIGKILL)
                        killed.append(pid)
            time.sleep(0.05)
        rc = proc.wait(timeout=240)
    finally:
        kill_session(proc.pid)
        proc.wait()
    out = (tmp_path / "log.txt").read_text()
    assert rc == lost.INCOMPLETE_EXIT, out[-3000:]
    trials = results.load_trials(run).set_index("trial_id")
    assert sorted(trials.index) == ["grid00000", "grid00001"]
    dead, alive = trials.loc["grid00000"], trials.loc["grid00001"]
    assert dead["status"] == "failed" and dead["error"].startswith("lost: "), dead["error"]
    assert "died" in dead["error"] or "Actor" in dead["error"], dead["error"]
    assert dead["mitigation"] == "none" and dead["budget"] == 0.2  # its parameters kept
    assert alive["status"] == "ok"
    assert "2 trials (1 ok, 1 failed)" in out
    assert "incomplete: 1 trial(s) died before writing their results (grid00000)" in out
    configs = aggregate.load_configs(run).set_index("mitigation")
    assert configs.loc["none", "status"] == "failed" and configs.loc["lagrangian", "pareto"]


def test_lost_rows_from_tune_trials(tmp_path: Path) -> None:
    """The driver's side, on plain data: a row only for the trials without one, with the
    parameters when the config is a valid trial and the ids alone when it is not."""
    from tune_linfair.spaces import load_space

    space = load_space("default")
    point = {"method": "snl", "budget": 0.5, "mitigation": "none", "lr": 0.01, "seed": 0}
    tune_trials = [
        lost.TuneTrial("a1", {"point": {**point, "point_index": 0}}, "RayActorError: died"),
        lost.TuneTrial("a2", {"method": "bogus"}, None),
        lost.TuneTrial("a3", {"point": {**point, "point_index": 2}}, "RayActorError: x"),
    ]
    kept = dict.fromkeys(results.TRIALS_COLUMNS)
    kept.update(run_id="r", trial_id="grid00002", status="ok")
    results.write_trial(tmp_path, kept, [], [])
    assert lost.write_lost_rows(tmp_path, tune_trials, space.raw, "r") == ["grid00000", "a2"]
    rows = results.load_trials(tmp_path).set_index("trial_id")
    assert rows.loc["grid00000", "error"] == "lost: RayActorError: died"
    assert rows.loc["grid00000", "budget"] == 0.5 and rows.loc["grid00000", "status"] == "failed"
    assert rows.loc["a2", "error"] == "lost: the trial ended without writing its row"
    assert pd.isna(rows.loc["a2", "method"]) and rows.loc["grid00002", "status"] == "ok"
    assert lost.lost_trial_ids(rows.reset_index()) == ["a2", "grid00000"]
    with pytest.raises(lost.SweepIncomplete, match=r"2 trial\(s\) died .*\(a2, grid00000\)"):
        lost.check_complete(tmp_path)


# -- constrained and single-objective searches --------------------------------------------
# Random placement at budget 1.0 keeps every ReLU (the base model; lr 1e-8 leaves it as it
# is): feasible. At 0.01 it keeps 38 of 3,840, far more than 10 points below the base:
# infeasible, yet Pareto-optimal without the constraint (fewest ReLUs). Optuna's seeded TPE
# (random start-up) draws 0.01 then 1.0 for seed 0.
RANDOM_SEARCH = ["--trials", "2", "--repeats", "1", "--max-concurrent", "2", "--seed", "0"]
RANDOM_SEARCH += ["--set", "search.method=random", "--set", "search.mitigation=none"]
RANDOM_SEARCH += ["--set", "search.budget={choices: [1.0, 0.01]}", "--set", "search.lr=1.0e-8"]


@pytest.fixture(scope="module")
def storage(tmp_path_factory) -> Path:
    """Storage shared by the searches below: the base model is trained once."""
    return tmp_path_factory.mktemp("searches") / "runs"


def search(objective: str, extra: list[str], storage: Path, address: str, log: Path):
    run = storage / objective
    args = ["--objective", objective, *RANDOM_SEARCH, *extra, "--address", address]
    args += ["--storage-path", str(storage), "--run-dir", str(run), *TINY, *NO_HESSIAN]
    rc, out = run_sweep(args, log)
    assert rc == 0, out[-3000:]
    return run, out


def study(run: Path):
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    journal = JournalStorage(JournalFileBackend(str(run / "optuna.journal")))
    return optuna.load_study(study_name=run.name, storage=journal)


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_max_accuracy_drop(ray_address: str, storage: Path, tmp_path: Path) -> None:
    """A constrained pareto sweep: the journal holds each configuration's constraint value
    (validation accuracy lost against the base, minus the bound: feasible when <= 0), the
    Parquet tables mark the infeasible ones, the printed front leaves them out."""
    from optuna.trial import TrialState

    run, out = search(
        "pareto", ["--max-accuracy-drop", "10"], storage, ray_address, tmp_path / "log"
    )
    trials = assert_tables(run, 2).set_index("trial_id")
    assert (trials["status"] == "ok").all() and (trials["max_accuracy_drop"] == 10).all()
    drop = 100 * (trials["base_val_accuracy"] - trials["val_accuracy"]).astype(float)
    assert trials["feasible"].tolist() == (drop <= 10).tolist()
    assert sorted(trials["feasible"].tolist()) == [False, True], drop  # one of each
    assert not trials.loc[~trials["feasible"].astype(bool), "pareto"].any()

    ot = {t.user_attrs["tune_trial_id"]: t for t in study(run).get_trials()}
    assert {t.state for t in ot.values()} == {TrialState.COMPLETE} and set(ot) == set(trials.index)
    for tid, t in ot.items():
        assert t.constraints == {"constraint_accuracy_drop": pytest.approx(drop[tid] - 10)}

    configs = aggregate.load_configs(run).set_index("config_id")
    assert configs["feasible"].tolist() == [
        bool(trials.loc[trials["config_id"] == c, "feasible"].all()) for c in configs.index
    ]
    infeasible = configs.index[~configs["feasible"].astype(bool)]
    assert len(infeasible) == 1 and not configs.loc[infeasible, "pareto"].any()
    front = out.partition("ReLUs min):\n")[2].partition("Validation ranks test")[0]
    assert front.strip() and infeasible[0][:7] not in front
    for cid in configs.index[configs["pareto"]]:
        assert cid[:7] in front
    assert "1 infeasible configuration(s) (validation accuracy more than 10 points" in out


@pytest.mark.ray
@pytest.mark.timeout(300)
@pytest.mark.parametrize("objective", ["accuracy", "fairness"])
def test_single_objective_search(
    objective: str, ray_address: str, storage: Path, tmp_path: Path
) -> None:
    """``--objective accuracy`` / ``fairness``: a one-objective Optuna study (maximize the
    validation accuracy / minimize the worst-group drop) told each configuration's value
    from its row; every trial ok; the summary and the configs table written."""
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    run, out = search(objective, [], storage, ray_address, tmp_path / "log.txt")
    trials = assert_tables(run, 2).set_index("trial_id")
    assert (trials["status"] == "ok").all() and trials["feasible"].isna().all()
    assert sorted(trials["budget"]) == [0.01, 1.0]
    column, direction = {
        "accuracy": ("val_accuracy", StudyDirection.MAXIMIZE),
        "fairness": ("val_worst_group_drop", StudyDirection.MINIMIZE),
    }[objective]
    s = study(run)
    assert s.directions == [direction] and s.metric_names == [column]
    for t in s.get_trials():
        assert t.state == TrialState.COMPLETE
        assert t.values == [pytest.approx(float(trials.loc[t.user_attrs["tune_trial_id"], column]))]
    assert "2 trials (2 ok, 0 failed): 2 configurations" in out and "Pareto plot:" in out
    assert len(aggregate.load_configs(run)) == 2


# -- a pareto sweep killed at every point, and stopped with Ctrl-C twice -------------------
def start(args: list[str], log: Path) -> subprocess.Popen:
    """The CLI in its own session, stdout unbuffered (as on a terminal), so the test sees
    each summary line when it is printed."""
    cmd = [sys.executable, "-m", "tune_linfair.search", *args]
    with open(log, "w") as out:
        return subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**ENV, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )


def sigkill_when(proc: subprocess.Popen, ready) -> int:
    """SIGKILL the driver once ``ready()`` holds; returns its exit status (-9: it was
    still running when killed)."""
    try:
        wait_for(proc, ready)
        os.kill(proc.pid, signal.SIGKILL)
        return proc.wait(timeout=60)
    finally:
        kill_session(proc.pid)
        proc.wait()


def told(run: Path) -> int:
    """Optuna trials told COMPLETE so far: ``RUN/optuna.journal`` holds one JSON operation a
    line (op code 6 sets a trial's state; state 1 is COMPLETE)."""
    path = run / "optuna.journal"
    count = 0
    for line in path.read_text().splitlines() if path.exists() else []:
        with contextlib.suppress(ValueError):  # a line being written
            op = json.loads(line)
            count += op.get("op_code") == 6 and op.get("state") == 1
    return count


def ctrl_c_twice_when(proc: subprocess.Popen, ready) -> tuple[int, float]:
    """Two SIGINTs 0.2 s apart once ``ready()`` holds; returns (exit code, seconds from the
    second SIGINT to the exit)."""
    try:
        wait_for(proc, ready)
        os.kill(proc.pid, signal.SIGINT)
        time.sleep(0.2)
        os.kill(proc.pid, signal.SIGINT)
        second = time.monotonic()
        rc = proc.wait(timeout=120)
        return rc, time.monotonic() - second
    finally:
        kill_session(proc.pid)
        proc.wait()


PARETO3 = ["--objective", "pareto", "--trials", "3", "--repeats", "1", "--max-concurrent", "1"]
PARETO3 += ["--seed", "0", "--set", "search.method=random", "--set", "search.mitigation=none"]
PARETO3 += ["--set", "search.budget={choices: [0.5, 0.2, 0.1]}", "--set", "search.seed=3"]


@pytest.fixture(scope="module")
def stopped_pareto(tmp_path_factory, ray_address: str) -> dict:
    """A 3-trial pareto sweep (one trial at a time) stopped four times, then resumed to its
    end: SIGKILL during base training; SIGKILL between trials (first row written); Ctrl-C
    twice between trials (second row written); SIGKILL during the summary (its first line
    printed). Every start but the first is ``--resume --run-dir`` alone. The drivers join
    the module's Ray (``--address``, as on a cluster): Ray ends a dead driver's trials."""
    root = tmp_path_factory.mktemp("stopped")
    storage, run = root / "runs", root / "runs" / "sweep"
    where = ["--address", ray_address, "--storage-path", str(storage), "--run-dir", str(run)]
    first = [*PARETO3, *where, *TINY, *NO_HESSIAN, "--set", "base.epochs=4"]
    resume = ["--resume", *where, "--no-dashboard"]
    rows = lambda: len(list((run / "trials").glob("*.parquet")))  # noqa: E731
    base_training = lambda: any(  # noqa: E731
        not (p / "meta.json").exists() for p in artifact_dirs(storage, "base")
    )
    state: dict = {"run": run}
    state["base_training"] = sigkill_when(start(first, root / "1.txt"), base_training), rows()
    # right after Optuna was told the first result, before Tune's next state save (at most
    # 1 s later): the restored searcher does not know it was told
    state["between_trials"] = sigkill_when(start(resume, root / "2.txt"), lambda: told(run) >= 1)
    state["between_trials"] = state["between_trials"], rows()
    state["ctrl_c_twice"] = ctrl_c_twice_when(start(resume, root / "3.txt"), lambda: rows() >= 2)
    state["ctrl_c_out"] = (root / "3.txt").read_text()
    summary = root / "4.txt"
    state["summary"] = sigkill_when(
        start(resume, summary), lambda: "3 trials (" in summary.read_text()
    )
    state["summary_out"] = summary.read_text()
    rc, out = run_sweep(resume, root / "5.txt")
    assert rc == 0, out[-3000:]
    state["out"] = out
    state["logs"] = {p.name: p.read_text() for p in sorted(root.glob("*.txt"))}
    return state


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_pareto_sweep_killed_anywhere_resumes_exactly(stopped_pareto: dict) -> None:
    run = stopped_pareto["run"]
    assert stopped_pareto["base_training"] == (-signal.SIGKILL, 0)
    rc, rows = stopped_pareto["between_trials"]
    assert rc == -signal.SIGKILL and rows == 1
    assert stopped_pareto["summary"] == -signal.SIGKILL  # still running when killed
    assert "Pareto plot:" not in stopped_pareto["summary_out"]
    trials = assert_tables(run, 3)  # exactly the configured trials, none doubled
    assert (trials["status"] == "ok").all()
    assert_optuna_matches(run, trials)  # nothing RUNNING; every row told COMPLETE
    assert "3 trials (3 ok, 0 failed)" in stopped_pareto["out"]
    for name, log in stopped_pareto["logs"].items():  # no trial errored on a resume
        assert "Traceback" not in log and " errored " not in log, (name, log[-3000:])
    assert "Pareto plot:" in stopped_pareto["out"]


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_ctrl_c_twice_stops_at_once_and_resumes(stopped_pareto: dict) -> None:
    rc, seconds = stopped_pareto["ctrl_c_twice"]
    out = stopped_pareto["ctrl_c_out"]
    assert rc == 130, out[-3000:]
    assert f"continue with --resume --run-dir {stopped_pareto['run']}" in out
    assert "Traceback" not in out
    print(f"second Ctrl-C to exit: {seconds:.1f} s")
    assert seconds < 20, seconds
    # the resumes after it finished the sweep (test above): still resumable
    assert len(results.load_trials(stopped_pareto["run"])) == 3


# -- the dashboard ------------------------------------------------------------------------
def listeners(port: int) -> set[str]:
    """IPv4 addresses with a socket listening on ``port`` (/proc/net/tcp, state 0A)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr, _, hex_port = local.partition(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.add(socket.inet_ntoa(bytes.fromhex(addr)[::-1]))
    return found


def get(url: str, token: str | None = None) -> int:
    """HTTP status of a GET (no exception for 4xx)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30):
            return 200
    except urllib.error.HTTPError as err:
        return err.code


@pytest.mark.ray
@pytest.mark.timeout(300)
@pytest.mark.parametrize("host", [None, "127.0.0.2"], ids=["default", "dashboard-host"])
def test_dashboard_loopback_token_and_url(host: str | None, tmp_path: Path) -> None:
    """A sweep with the dashboard on, Ray's token auth on (this test's own HOME holds the
    token Ray generates): the printed URL is where the dashboard listens, bound to
    127.0.0.1 (or ``--dashboard-host``) only, never all interfaces; it answers 401 without
    the token and 200 with the one ``ray get-auth-token`` prints. The default port 8265 is
    held by this test (or someone else): the printed URL is the port Ray took instead."""
    env = {**ENV, "RAY_AUTH_MODE": "token", "HOME": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    args = ["--objective", "grid", "--set", "grid.method=[random]", "--set", "grid.budget=[0.5]"]
    args += ["--set", "grid.mitigation=[none]", "--set", "grid.seed=[0]", *NO_HESSIAN]
    args += ["--set", "finetune.epochs=500", "--storage-path", str(tmp_path / "runs")]
    args += ["--dashboard-host", host] if host else []
    held = socket.socket()
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Ray's check: TIME_WAIT is free
    log = tmp_path / "log.txt"
    try:
        try:
            held.bind(("127.0.0.1", 8265))
            held.listen()
        except OSError:  # someone listens there already: as good for this test
            assert {"127.0.0.1", "0.0.0.0"} & listeners(8265), "8265 neither free nor in use"
        with open(log, "w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tune_linfair.search", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                cwd=tmp_path,
            )
        try:
            pattern = re.compile(r"Ray dashboard: http://([\d.]+):(\d+)")
            wait_for(proc, lambda: pattern.search(log.read_text()))
            ip, port = pattern.search(log.read_text()).groups()
            port = int(port)
            assert ip == (host or "127.0.0.1")
            if not host:
                assert port != 8265  # held: Ray moved, the printed URL with it
            bound = listeners(port)
            assert ip in bound and "0.0.0.0" not in bound, bound
            assert get(f"http://{ip}:{port}/api/version") == 401
            token = subprocess.run(
                [str(Path(sys.executable).parent / "ray"), "get-auth-token"],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            ).stdout.strip()
            assert token and get(f"http://{ip}:{port}/api/version", token) == 200
            assert proc.poll() is None  # probed while the sweep ran
        finally:
            kill_session(proc.pid)
            proc.wait()
    finally:
        held.close()
