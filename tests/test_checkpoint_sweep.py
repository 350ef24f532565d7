"""In-trial checkpoints in a real sweep: a killed worker and a killed driver.

One sweep of one trial (``python -m tune_linfair.search`` in a subprocess, its own local
Ray, real Tune and Optuna) fine-tunes for 12 epochs with a Tune checkpoint every epoch. It
is hit twice, by SIGKILL, nothing monkeypatched:

1. the Ray worker running the trial (the ``ray::ImplicitFunc`` process of the sweep's
   session) right after a fine-tuning checkpoint was registered: Tune retries the trial
   (``--max-failures 1``), which continues from that checkpoint;
2. then the driver with every process of its session (Ray included): ``--resume`` reruns
   the trial, which continues from its last checkpoint again.

Each continuation is read from the trial's Tune results (``result.json``: the first epoch
reported after a kill) and from its Parquet row (``resumed_from_epoch``); the final row is
compared with the same trial run straight through (the stage in-process, on the sweep's
cache): the same values to the last bit, and one row per trial as an uninterrupted sweep
writes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sweep_helpers import ENV, NO_HESSIAN, kill_session, session_pids, wait_for

from tune_linfair import results, rundir
from tune_linfair.spaces import parse_space
from tune_linfair.stages import run_trial
from tune_linfair.trial import TrialParams

EPOCHS = 12
SWEEP = [
    "--objective",
    "pareto",
    "--trials",
    "1",
    "--repeats",
    "1",
    "--set",
    "search.method=random",
    "--set",
    "search.budget={choices: [0.2]}",
    "--set",
    "search.mitigation=lagrangian",
    "--set",
    "search.mu={choices: [0.1]}",
    "--set",
    "search.lr={choices: [0.01]}",
    "--set",
    "base.epochs=2",
    "--set",
    f"finetune.epochs={EPOCHS}",
    "--checkpoint-every",
    "1",
    "--max-failures",
    "1",
    "--no-dashboard",
    *NO_HESSIAN,
    "--set",
    "diagnostics.gradients=false",
    "--set",
    "diagnostics.boundary=false",
]


# -- helpers ------------------------------------------------------------------------------
def start_sweep(args: list[str], log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tune_linfair.search", *args]
    with open(log, "w") as out:
        return subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=ENV, start_new_session=True
        )


def finetune_checkpoints(run: Path) -> list[dict]:
    """The trial's Tune results that carry a fine-tuning checkpoint, in order."""
    rows = []
    for path in sorted((run / "tune").rglob("result.json")):  # any experiment under tune/
        for line in path.read_text().splitlines():
            try:
                result = json.loads(line)
            except json.JSONDecodeError:  # the line being written
                continue
            if result.get("checkpoint_stage") == "finetune":
                rows.append(result)
    return rows


def trial_worker(sid: int) -> int:
    """The pid of the Ray worker running the trial: ``ray::ImplicitFunc...`` in the sweep's
    session (one trial at a time, so exactly one)."""
    workers = []
    for pid in session_pids(sid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if cmdline.startswith("ray::ImplicitFunc"):
            workers.append(pid)
    assert len(workers) == 1, workers
    return workers[0]


# -- the scenario -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def killed_sweep(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("ckpt")
    storage, run = root / "runs", root / "runs" / "sweep"
    state: dict = {"storage": storage, "run": run}
    proc = start_sweep(
        [*SWEEP, "--storage-path", str(storage), "--run-dir", str(run)], root / "first.txt"
    )
    try:
        # 1. a fine-tuning checkpoint is registered (the next one exists: Tune took the
        # first one before it let training go on), then the worker dies
        wait_for(proc, lambda: len(finetune_checkpoints(run)) >= 2, timeout=240)
        os.kill(trial_worker(proc.pid), signal.SIGKILL)
        seen = finetune_checkpoints(run)
        state["worker_kill"] = {"epochs_done": [r["checkpoint_epoch"] + 1 for r in seen]}
        # 2. the retried trial continues and checkpoints three times, then the driver dies
        wait_for(proc, lambda: len(finetune_checkpoints(run)) >= len(seen) + 3, timeout=240)
    finally:
        kill_session(proc.pid)
        proc.wait()
    after_retry = finetune_checkpoints(run)[len(seen) :]
    state["worker_kill"]["first_epoch_after"] = after_retry[0]["epoch"]
    state["driver_kill"] = {"epochs_done": [r["checkpoint_epoch"] + 1 for r in after_retry]}
    state["error_file"] = "".join(p.read_text() for p in (run / "tune").rglob("error.txt"))
    n_before_resume = len(finetune_checkpoints(run))

    resume = ["--resume", "--run-dir", str(run), "--storage-path", str(storage)]
    proc = start_sweep([*resume, "--no-dashboard"], root / "resumed.txt")
    try:
        state["rc"] = proc.wait(timeout=240)
    finally:
        kill_session(proc.pid)
        proc.wait()
    state["out"] = (root / "resumed.txt").read_text()
    state["checkpoint_results"] = finetune_checkpoints(run)
    after_resume = state["checkpoint_results"][n_before_resume:]
    state["first_epoch_after_resume"] = after_resume[0]["epoch"] if after_resume else None
    return state


@pytest.mark.ray
@pytest.mark.timeout(420)
def test_killed_worker_is_retried_from_its_checkpoint(killed_sweep: dict) -> None:
    kill = killed_sweep["worker_kill"]
    assert "Failure # 1" in killed_sweep["error_file"]  # Tune saw the death and retried
    # the retry continued where a registered checkpoint left off, not at epoch 0
    assert kill["first_epoch_after"] > 0
    assert kill["first_epoch_after"] in kill["epochs_done"]


@pytest.mark.ray
@pytest.mark.timeout(420)
def test_every_checkpoint_carries_its_epochs_metrics(killed_sweep: dict) -> None:
    """A checkpoint epoch's progress report rides with its checkpoint: none is lost to the
    2 s report throttle (12 epochs take a few seconds), each has the epoch's objectives."""
    epochs = [r["checkpoint_epoch"] for r in killed_sweep["checkpoint_results"]]
    assert sorted(set(epochs)) == list(range(EPOCHS))
    assert all(r["epoch"] == r["checkpoint_epoch"] for r in killed_sweep["checkpoint_results"])
    assert all(0 < r["val_accuracy"] <= 1 for r in killed_sweep["checkpoint_results"])


@pytest.mark.ray
@pytest.mark.timeout(420)
def test_resume_after_driver_kill_continues_from_the_checkpoint(killed_sweep: dict) -> None:
    assert killed_sweep["rc"] == 0, killed_sweep["out"][-3000:]
    (row,) = results.load_trials(killed_sweep["run"]).to_dict("records")
    assert row["status"] == "ok"
    resumed = row["resumed_from_epoch"]
    assert resumed == killed_sweep["first_epoch_after_resume"]
    # after the checkpoints the retried trial made, before the driver died
    assert resumed in killed_sweep["driver_kill"]["epochs_done"]
    assert resumed > killed_sweep["worker_kill"]["first_epoch_after"]


@pytest.mark.ray
@pytest.mark.timeout(420)
def test_killed_twice_rows_equal_an_uninterrupted_run(killed_sweep: dict, tmp_path) -> None:
    """One row per trial, Optuna told once with its values, and the values of the same
    trial run straight through, to the last bit (CPU training is deterministic and a
    checkpoint holds every input of the remaining epochs)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    run = killed_sweep["run"]
    trials = results.load_trials(run)
    (row,) = trials.to_dict("records")
    assert len(results.load_groups(run)) == 10 * 3 * 2  # groups x stages x splits, once
    storage = JournalStorage(JournalFileBackend(str(run / "optuna.journal")))
    (summary,) = optuna.get_all_study_summaries(storage)
    (ot,) = optuna.load_study(study_name=summary.study_name, storage=storage).get_trials()
    assert ot.state == optuna.trial.TrialState.COMPLETE
    assert ot.user_attrs["tune_trial_ids"] == [row["trial_id"]]
    assert ot.values == [row["val_accuracy"], row["val_worst_group_drop"], row["relu_count"]]

    record, raw = rundir.read_record(run)
    exp = parse_space(raw, record.space).experiment  # what the sweep's trials ran
    params = TrialParams.from_config(json.loads(row["config_json"])["params"], exp)
    straight = run_trial(
        exp, params, killed_sweep["storage"] / "cache", tmp_path, trial_id=row["trial_id"]
    ).trial_row
    assert straight["resumed_from_epoch"] is None
    for key in ("val_accuracy", "test_accuracy", "val_worst_group_drop", "weight_distance"):
        assert row[key] == straight[key], key
    assert row["relu_count"] == straight["relu_count"]


def test_restore_falls_back_to_the_newest_kept_checkpoint(tmp_path, monkeypatch) -> None:
    """Tune keeps the latest checkpoints of a trial and deletes older ones; a driver killed
    between a deletion and its next experiment-state save leaves a state that points at a
    deleted checkpoint. That race (milliseconds wide) cannot be produced on demand, so
    ``tune.get_checkpoint`` is monkeypatched to return such a pointer; everything else is
    real (states written by the real writer)."""
    from ray import tune

    from tune_linfair import checkpointing, trainables

    for epoch in (3, 4):
        checkpointing.save_state(tmp_path / f"checkpoint_00000{epoch}", {"epoch": epoch}, epoch)
    gone = tune.Checkpoint.from_directory(str(tmp_path / "checkpoint_000002"))
    monkeypatch.setattr(trainables.tune, "get_checkpoint", lambda: gone)
    assert trainables.TuneCheckpointer(1).restore() == {"epoch": 4}
    monkeypatch.setattr(trainables.tune, "get_checkpoint", lambda: None)
    assert trainables.TuneCheckpointer(1).restore() is None
