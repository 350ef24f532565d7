"""Benchmark: time trials spend blocked on artifact locks, without and with the phases.

A simulated 4-GPU machine: one Ray node started with ``--num-gpus 4`` (torch sees no CUDA,
so trials run on the CPU, but Ray schedules them by GPU: at most 4 at a time, one GPU
each). The default space (16 configurations x 3 seeds) runs twice on a cold cache through
the CLI with ``--address``:

- **before**: ``--no-prebuild``: each trial builds the base and linearized models it needs
  on demand; trials that need a model another trial is building wait on its lock;
- **after**: the base and linearize phases build every model first, in parallel, then the
  search trials find them built.

The share is ``sum(lock_wait_s) / sum(wall_time_s)`` over every run that held a trial slot
(search trials from ``RUN/trials``, phase runs from ``RUN/stages``): the fraction of slot
time spent waiting. Also recorded: the sweep's wall time and the runs' slot time.

Run::

    python bench/lock_wait.py                  # the default space: 16 configurations x 3 seeds
    python bench/lock_wait.py --trials 4       # quicker

Prints a table; appends a record to ``bench/results/lock_wait.jsonl``.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import record, table, uptime  # noqa: E402

from tune_linfair import results  # noqa: E402

ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def start_node(gpus: int, cpus: int, temp_dir: Path) -> tuple[subprocess.Popen, str]:
    """A Ray head node with ``gpus`` simulated GPUs, in its own session."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray = str(Path(sys.executable).with_name("ray"))
    cmd = [ray, "start", "--block", "--head", "--port", str(port), "--temp-dir", str(temp_dir)]
    cmd += ["--num-cpus", str(cpus), "--num-gpus", str(gpus), "--include-dashboard", "false"]
    cmd += ["--disable-usage-stats"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, start_new_session=True
    )
    address = f"127.0.0.1:{port}"
    probe = "import ray, sys; ray.init(address=sys.argv[1]); print('up')"
    for _ in range(60):
        out = subprocess.run(
            [sys.executable, "-c", probe, address], capture_output=True, text=True, env=ENV
        )
        if "up" in out.stdout:
            return proc, address
        time.sleep(2)
    raise RuntimeError("the Ray node did not start")


def stop_node(proc: subprocess.Popen, temp_dir: Path) -> None:
    """Kill the node's session and every process still running from its temp dir."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(temp_dir) in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    os.kill(int(entry.name), signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass


def sweep(address: str, storage: Path, trials: int | None, prebuild: bool) -> dict:
    """One cold-cache sweep of the default space; its lock-wait share and times."""
    run = storage / "run"
    cmd = [sys.executable, "-m", "tune_linfair.search", "--objective", "pareto"]
    cmd += ["--address", address, "--gpus-per-trial", "1", "--cpus-per-trial", "0.5"]
    cmd += ["--max-concurrent", "4", "--storage-path", str(storage), "--run-dir", str(run)]
    cmd += ["--no-dashboard"] + ([] if prebuild else ["--no-prebuild"])
    cmd += [] if trials is None else ["--trials", str(trials)]
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=ENV)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"sweep failed ({out.returncode}): {out.stderr[-2000:]}")
    rows = results.load_trials(run)[["wall_time_s", "lock_wait_s"]]
    runs = [rows]
    if (run / "stages").is_dir():
        runs.append(results.load_stages(run)[["wall_time_s", "lock_wait_s"]])
    slots = sum(float(r["wall_time_s"].astype(float).sum()) for r in runs)
    waited = sum(float(r["lock_wait_s"].astype(float).fillna(0).sum()) for r in runs)
    return {
        "sweep_wall_s": wall,
        "trials": len(rows),
        "phase_runs": sum(len(r) for r in runs) - len(rows),
        "slot_s": slots,
        "lock_wait_s": waited,
        "lock_wait_share": waited / slots,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, help="configurations (default: the space's 16)")
    parser.add_argument("--gpus", type=int, default=4, help="simulated GPUs (default 4)")
    args = parser.parse_args(argv)
    cpus = os.cpu_count() or 2
    out: dict = {"gpus": args.gpus, "cpus": cpus, "trials": args.trials, "load": uptime()}
    temp_dir = Path(tempfile.mkdtemp(prefix="rl", dir="/tmp"))
    proc, address = start_node(args.gpus, cpus, temp_dir)
    try:
        with tempfile.TemporaryDirectory() as work:
            out["before"] = sweep(address, Path(work) / "before", args.trials, prebuild=False)
            out["after"] = sweep(address, Path(work) / "after", args.trials, prebuild=True)
    finally:
        stop_node(proc, temp_dir)
    rows = [
        [
            name,
            out[name]["trials"],
            out[name]["phase_runs"],
            f"{out[name]['sweep_wall_s']:.0f}",
            f"{out[name]['slot_s']:.0f}",
            f"{out[name]['lock_wait_s']:.1f}",
            f"{100 * out[name]['lock_wait_share']:.1f}%",
        ]
        for name in ("before", "after")
    ]
    headers = ["", "trials", "phase runs", "sweep s", "slot s", "lock wait s", "share"]
    print(table(rows, headers))
    print(f"recorded in {record('lock_wait', out)}")


if __name__ == "__main__":
    main()
