"""Shared pieces of the sweep tests (tests/test_search.py, tests/test_faults.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

ENV = {
    **os.environ,
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TUNE_STATE_REFRESH_PERIOD": "0.1",
    "PYTHONWARNINGS": "ignore",
}
TINY = [
    "--no-dashboard",
    "--set",
    "base.epochs=2",
    "--set",
    "finetune.epochs=1",
    "--set",
    "linearize.deepreduce_epochs=1",
]
NO_HESSIAN = ["--set", "diagnostics.hessian=false"]


def session_pids(sid: int) -> list[int]:
    """Processes of session ``sid`` (the sweep's driver and what it started)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[3]) == sid and fields[0] != "Z":  # state, ppid, pgrp, session
            pids.append(int(entry.name))
    return pids


def kill_session(sid: int, wait_s: float = 10.0) -> None:
    """SIGKILL every live process of the session this test started (by id, nothing else)
    and wait until none is left."""
    deadline = time.monotonic() + wait_s
    while pids := session_pids(sid):
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            raise AssertionError(f"processes {pids} of session {sid} survive SIGKILL")
        time.sleep(0.05)


def wait_for(proc: subprocess.Popen, ready, timeout: float = 180) -> None:
    """Poll ``ready()`` every 0.05 s while the sweep runs; fail if it ends first."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, "the sweep ended before the kill point"
        assert time.monotonic() < deadline, "the kill point never came"
        time.sleep(0.05)
