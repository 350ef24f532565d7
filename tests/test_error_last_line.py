"""The one-line error contract survives library warnings: ``error: ...`` is stderr's last line.

CUDA, Ray and other libraries write warnings to stderr at any time: when imported, from
background threads, from atexit handlers at interpreter exit (after the command printed its
error). This CPU box produces none of them on its own, so the test installs a stand-in
library through ``sitecustomize`` (imported by every Python process on ``PYTHONPATH``, no
code of ours replaced): it warns at start-up like a CUDA initialization warning, and at exit
writes a Python warning and a native write to file descriptor 2, as a C++ logger does. The
real commands then run as subprocesses, failing on bad input: exit code 2, the start-up
warning before the error (stderr is live), the error as the last line, nothing after it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).parent / "tune-linfair"
SITE = """
import atexit, os, warnings
warnings.warn("CUDA initialization: stand-in driver warning at start-up", UserWarning)
def _at_exit():
    warnings.warn("stand-in library warning at interpreter exit", RuntimeWarning)
    os.write(2, b"[native logger] stand-in message at exit\\n")
atexit.register(_at_exit)
"""

CASES = {
    "argparse": ([sys.executable, "-m", "tune_linfair.search", "--objective", "best"],
                 "'best'"),
    "user-error": ([sys.executable, "-m", "tune_linfair.search", "--set", "data.name=mnist"],
                   "'mnist'"),
    "console-summary": ([str(SCRIPT), "summary", "{tmp}/nowhere"], "does not exist"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_error_is_the_last_line_despite_warnings(case: str, tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITE)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(ROOT)])
    argv, word = CASES[case]
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    proc = subprocess.run(argv + ["--storage-path", str(tmp_path / "s")] * (case != "console-summary"),
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert "stand-in driver warning" in proc.stderr  # warnings do reach this stderr
    assert lines[-1].startswith("error: ") and word in lines[-1], proc.stderr
    assert sum(line.startswith("error: ") for line in lines) == 1
    assert "at exit" not in proc.stderr and not (tmp_path / "s").exists()
