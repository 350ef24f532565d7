"""The console entry point ``tune-linfair`` (installed by pip from pyproject's scripts)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from test_results import build_run

SCRIPT = Path(sys.executable).parent / "tune-linfair"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=120)


def test_summary_reads_a_run_and_fits_100_columns(tmp_path: Path) -> None:
    run = build_run(tmp_path / "run")
    proc = _run("summary", str(run))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "19 trials (18 ok, 1 failed): 10 configurations on seeds [0, 1]" in out
    table = out.split("ReLUs min):\n", 1)[1].split("Validation ranks test", 1)[0]
    lines = table.strip().splitlines()
    assert lines[0].split()[:3] == ["config", "method", "mitigation"] and len(lines) > 1
    assert all(len(line) <= 100 for line in out.splitlines() if str(tmp_path) not in line)
    assert (run / "configs" / "configs.parquet").is_file()


def test_search_subcommand_and_bad_input_are_one_line_exit_2(tmp_path: Path) -> None:
    for args, words in (
        (["search", "--objective", "best"], ["--objective", "'best'"]),
        (["bogus"], ["unknown command", "'bogus'"]),
        (["summary", str(tmp_path / "nowhere")], ["does not exist"]),
    ):
        proc = _run(*args)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        err = proc.stderr.strip().splitlines()
        assert len(err) == 1 and all(w in err[0] for w in words), err
    assert _run("--help").returncode == 0 and "tune-linfair search" in _run("--help").stdout
