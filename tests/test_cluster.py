"""A real two-node Ray cluster on this machine, each node with simulated GPUs.

``ray start --head`` and ``ray start --address HEAD`` start two raylets (two Ray nodes) with
one CPU and two GPUs each; torch sees no CUDA, so trials run on the CPU while Ray still
schedules them by GPU. A grid sweep joins with ``--address HOST:PORT --gpus-per-trial 1``:
two trials at a time can only fit one per node, so both nodes run trials, and the artifact
cache under ``--storage-path`` is shared: a model built on one node is read on the other.
Both nodes are stopped afterwards (their process groups, never ``ray stop``, which would
stop every Ray instance on the machine).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from sweep_helpers import ENV, NO_HESSIAN, TINY

from tune_linfair import results

RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node(args: list[str], log: Path) -> subprocess.Popen:
    """``ray start ... --block`` in its own session: killing the session stops the node."""
    with log.open("w") as out:
        return subprocess.Popen(
            [RAY, "start", "--block", "--num-cpus", "1", "--num-gpus", "2", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=ENV,
            start_new_session=True,
        )


def _wait_for_nodes(address: str, n: int, timeout_s: float = 120.0) -> None:
    probe = (
        "import ray, sys; ray.init(address=sys.argv[1], log_to_driver=False); "
        "print(sum(1 for x in ray.nodes() if x['Alive']))"
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        out = subprocess.run(
            [sys.executable, "-c", probe, address], capture_output=True, text=True, env=ENV
        )
        if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(n)]:
            return
        time.sleep(2)
    raise AssertionError(f"the cluster at {address} did not reach {n} nodes")


def _stop(nodes: list[subprocess.Popen], temp_dir: Path) -> None:
    """Kill each node's session, then whatever still runs from the cluster's temp dir."""
    for proc in nodes:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if str(temp_dir) in cmdline:
                try:
                    os.kill(int(entry.name), signal.SIGKILL)
                except ProcessLookupError:
                    pass


def _sweep(address: str, storage: Path, run: Path, gpus: str, *extra: str) -> None:
    cmd = [sys.executable, "-m", "tune_linfair.search", "--objective", "grid"]
    cmd += ["--address", address, "--gpus-per-trial", gpus, "--max-concurrent", "2"]
    cmd += ["--storage-path", str(storage), "--run-dir", str(run), *TINY, *NO_HESSIAN]
    cmd += ["--set", "grid.budget=[0.5, 0.2]", "--set", "grid.mitigation=[none]"]
    cmd += ["--set", "repeats=2", *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=400)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_sweep_runs_on_two_nodes_and_shares_the_cache(tmp_path: Path) -> None:
    """The first sweep runs while the cluster has only its head node: every base and
    linearized model is built there. A second node joins; a second sweep of the same space
    on the same ``--storage-path`` finds all of them in the shared cache and runs its trials
    on both nodes (two at a time, one CPU each: one per node), so the second node's trials
    read models the head built. The second sweep asks for half a GPU per trial."""
    port = _free_port()
    address = f"127.0.0.1:{port}"
    # a short temp dir: Ray's socket paths must stay under the 107-character limit
    temp_dir = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    light = ["--object-store-memory", str(100 * 1024**2), "--disable-usage-stats"]
    head = ["--head", "--port", str(port), "--temp-dir", str(temp_dir), "--include-dashboard"]
    storage = tmp_path / "shared"
    first, second = storage / "head-only", storage / "two-nodes"
    nodes = [_node([*head, "false", *light], tmp_path / "head.log")]
    try:
        _wait_for_nodes(address, 1)
        _sweep(address, storage, first, "1")
        nodes.append(_node(["--address", address, *light], tmp_path / "worker.log"))
        _wait_for_nodes(address, 2)
        # fine-tuning long enough that both trials of a pair run at once
        _sweep(address, storage, second, "0.5", "--set", "finetune.epochs=8")
    finally:
        _stop(nodes, temp_dir)

    built = results.load_stages(first)
    assert sorted(built.loc[built["phase"] == "base", "seed"]) == [0, 1]
    assert len(built[built["phase"] == "linearize"]) == 4 and built["computed"].all()
    (head_node,) = set(built["node_id"])
    # every run was given a (simulated) GPU by Ray, and ran on the CPU torch sees
    assert set(built["device"]) == {"cpu"}

    trials = results.load_trials(second)
    assert len(trials) == 4 and (trials["status"] == "ok").all()
    assert set(trials["device"]) == {"cpu"}
    assert len(set(trials["node_id"])) == 2 and head_node in set(trials["node_id"])
    # the second sweep built nothing: its phases found the cache full; its trials on the
    # new node read the head's models through --storage-path, without waiting on a lock
    stages = results.load_stages(second)
    assert stages[stages["phase"].isin(["base", "linearize"])].empty
    assert set(trials["lin_key"]) == set(built.loc[built["phase"] == "linearize", "key"])
    assert (trials["lock_wait_s"] < 1.0).all()
    cache = storage / "cache"
    assert len(list((cache / "base").glob("*/meta.json"))) == 2
    assert len(list((cache / "linearized").glob("*/meta.json"))) == 4


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_trials_use_the_device_ray_gave_them() -> None:
    """``trial_device`` follows Ray: a task given half of a (simulated) GPU sees that GPU's id
    and CUDA_VISIBLE_DEVICES set to it, and, since torch sees no CUDA here, runs on the CPU;
    two half-GPU tasks share one GPU; a task given no GPU has CUDA hidden from it."""
    import ray

    from tune_linfair.trainables import trial_device

    def probe() -> tuple[list, str | None, str]:
        return ray.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES"), str(trial_device())

    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    try:
        half = ray.remote(num_gpus=0.5, num_cpus=0.5)(probe)
        a, b = ray.get([half.remote(), half.remote()])
        none = ray.get(ray.remote(num_gpus=0, num_cpus=0.5)(probe).remote())
    finally:
        ray.shutdown()
    assert a[0] == b[0] and len(a[0]) == 1 and a[1] == str(a[0][0])
    assert a[2] == b[2] == "cpu"
    assert none[0] == [] and none[2] == "cpu"
