"""Bad input: one ``error: ...`` line naming the bad value, exit code 2, no traceback, and
nothing written (README "Reliability").

One table of refused ``python -m tune_linfair.search`` commands. Most run in-process through
:func:`tune_linfair.search.main` (cheap); those marked ``subprocess`` run the real command, so
what reaches a terminal is checked for real (no traceback, no Ray warning, no usage block).
Every case runs in a fresh folder and checks that no file or folder in it was created,
changed or removed: in-process cases point ``--storage-path`` at a storage that already holds
an older sweep, subprocess cases at one that does not exist yet (it must not be created).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

from tune_linfair import search
from tune_linfair.data import get_dataset
from tune_linfair.errors import UserError
from tune_linfair.models import create_model
from tune_linfair.models.checkpoint import load_model

GPUS_ABSENT = str(torch.cuda.device_count() + 1)  # more GPUs than this machine has
SUBPROCESS_TIMEOUT_S = 60  # an unreachable --address must be refused well within this
NO_CLUSTER = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}


class Case(NamedTuple):
    id: str
    argv: list[str]  # "{tmp}" stands for the test's folder
    names: list[str]  # what the error line must contain (the bad value, the choices)
    subprocess: bool = False


CASES = [
    Case("unknown-dataset", ["--set", "data.name=mnist"], ["'mnist'", "digits"], True),
    Case("unknown-model", ["--set", "model.name=lenet"], ["'lenet'", "resnet_mini"]),
    Case("unknown-method", ["--set", "search.method=magic"], ["'magic'", "snl"]),
    Case(
        "unknown-grid-method",
        ["--objective", "grid", "--set", "grid.method=[magic]"],
        ["'magic'", "deepreduce"],
    ),
    Case("unknown-mitigation", ["--set", "search.mitigation=fair"], ["'fair'", "lagrangian"]),
    Case("unknown-space", ["--space", "nope"], ["'nope'", "default"]),
    Case("malformed-yaml", ["--space", "{tmp}/bad.yaml"], ["malformed YAML", "bad.yaml"], True),
    Case("unknown-set-key", ["--set", "base.epoch=3"], ["base.epoch", "epochs"]),
    Case("unknown-set-section", ["--set", "bogus.x=1"], ["'bogus'"]),
    Case("set-without-equals", ["--set", "base.epochs"], ["key=value", "'base.epochs'"]),
    Case("wrong-type", ["--set", "base.epochs=three"], ["base.epochs", "'three'"]),
    Case("budget-above-one", ["--set", "search.budget=1.5"], ["search.budget", "1.5"]),
    Case("budget-zero", ["--set", "search.budget=0"], ["search.budget", "got 0"]),
    Case("budget-negative", ["--set", "search.budget=-0.1"], ["search.budget", "-0.1"]),
    Case("budget-above-total", ["--set", "search.budget=100000"], ["budget 100000", "ReLUs"]),
    Case("negative-mu", ["--set", "search.mu=-1"], ["search.mu", "-1"]),
    Case("negative-lr", ["--set", "search.lr=-0.01"], ["search.lr", "-0.01"]),
    Case("negative-base-lr", ["--set", "base.lr=-0.1"], ["base.lr", "-0.1"]),
    Case("gpus-absent", ["--gpus-per-trial", GPUS_ABSENT], ["--gpus-per-trial", "GPUs"], True),
    Case("gpus-negative", ["--gpus-per-trial", "-1"], ["--gpus-per-trial", "-1"]),
    Case("cpus-zero", ["--cpus-per-trial", "0"], ["--cpus-per-trial", "0"]),
    Case("cpus-above-machine", ["--cpus-per-trial", "10000"], ["--cpus-per-trial", "10000"]),
    Case("trials-zero", ["--trials", "0"], ["--trials", "0"]),
    Case("max-concurrent-zero", ["--max-concurrent", "0"], ["--max-concurrent", "0"]),
    Case("checkpoint-every-negative", ["--checkpoint-every", "-1"], ["--checkpoint-every", "-1"]),
    Case("max-failures-negative", ["--max-failures", "-2"], ["--max-failures", "-2"]),
    Case("trials-not-int", ["--trials", "three"], ["--trials", "'three'"], True),
    Case("objective-unknown", ["--objective", "best"], ["--objective", "'best'", "pareto"]),
    Case(
        "cifar10-root-missing",
        ["--set", "data.name=cifar10", "--data-root", "{tmp}/nonexistent"],
        ["{tmp}/nonexistent", "cifar-10-batches-py"],
    ),
    Case(
        "cifar10-root-empty",
        ["--set", "data.name=cifar10", "--data-root", "{tmp}/empty"],
        ["{tmp}/empty", "cifar-10-batches-py"],
    ),
    Case(
        "cifar10-wrong-layout",
        ["--set", "data.name=cifar10", "--data-root", "{tmp}/wrong"],
        ["{tmp}/wrong", "cifar-10-batches-py"],
    ),
    Case(
        "cifar10-garbage-files",
        ["--set", "data.name=cifar10", "--data-root", "{tmp}/garbage"],
        ["cannot read CIFAR-10 batch", "{tmp}/garbage/cifar-10-batches-py/data_batch_1"],
    ),
    Case(
        "unreachable-address",
        ["--address", "127.0.0.1:1"],
        ["cannot reach a Ray cluster", "'127.0.0.1:1'"],
        True,
    ),
    Case(
        "auto-address-no-cluster",  # RAY_TMPDIR: this test's folder, where no `ray start` ran
        ["--address", "auto"],
        ["--address auto", "ray start", "RAY_ADDRESS"],
        True,
    ),
    Case(
        "deepreduce-unstaged-model",
        ["--set", "model.name=mlp", "--set", "data.name=synthetic"]
        + ["--set", "search.method=deepreduce"],
        ["deepreduce", "MLP", "snl"],
        True,
    ),
    Case("resume-without-run-dir", ["--resume"], ["--resume", "--run-dir"]),
    Case(
        "resume-not-a-sweep",
        ["--resume", "--run-dir", "{tmp}/notes"],
        ["nothing to resume", "{tmp}/notes"],
    ),
    Case(
        "run-dir-holds-other-files",
        ["--run-dir", "{tmp}/notes"],
        ["{tmp}/notes", "already holds other files"],
    ),
]


def make_workspace(tmp: Path, fresh_storage: bool) -> Path:
    """The inputs of the cases and a storage path; returns the storage path."""
    (tmp / "bad.yaml").write_text("search:\n  method: [snl\n  budget: }\n")
    (tmp / "empty").mkdir()
    (tmp / "wrong").mkdir()
    (tmp / "wrong" / "data_batch_1").write_text("batches belong in cifar-10-batches-py/\n")
    batches = tmp / "garbage" / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (batches / name).write_bytes(b"not a pickle")
    (tmp / "notes").mkdir()
    (tmp / "notes" / "notes.txt").write_text("not a sweep\n")
    if fresh_storage:
        return tmp / "fresh-storage"
    storage = tmp / "storage"
    older = storage / "default-pareto-20250101-000000"
    (older / "trials").mkdir(parents=True)
    (older / "sweep.json").write_text('{"objective": "pareto"}')
    (older / "trials" / "trial-0.parquet").write_bytes(b"PAR1 stand-in")
    (storage / "cache").mkdir()
    return storage


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root``: file contents, None for a folder."""
    return {
        str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes())
        for p in sorted(root.rglob("*"))
    }


def assert_refused(rc: int, out: str, err: str, names: list[str]) -> None:
    assert rc == 2, f"exit code {rc}; stderr: {err!r}"
    assert "Traceback" not in out + err
    assert err.endswith("\n") and err.count("\n") == 1, f"not one line on stderr: {err!r}"
    line = err.rstrip("\n")
    assert line.startswith("error: ") and line[len("error: ") :].strip(), line
    for name in names:
        assert name in line, f"{name!r} not named in {line!r}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_with_one_line(case: Case, tmp_path: Path, monkeypatch, capsys):
    tmp = tmp_path.resolve()
    storage = make_workspace(tmp, fresh_storage=case.subprocess)
    before = snapshot(tmp)
    argv = [a.replace("{tmp}", str(tmp)) for a in case.argv]
    argv += ["--no-dashboard", "--storage-path", str(storage)]
    names = [n.replace("{tmp}", str(tmp)) for n in case.names]
    if case.subprocess:
        start = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "tune_linfair.search", *argv],
            cwd=tmp,  # a default relative path (runs/) would show in the snapshot
            env={**NO_CLUSTER, "RAY_TMPDIR": str(tmp), "PYTHONWARNINGS": "default"},
            capture_output=True,
            text=True,
            timeout=SUBPROCESS_TIMEOUT_S,
        )
        rc, out, err = proc.returncode, proc.stdout, proc.stderr
        assert time.monotonic() - start < SUBPROCESS_TIMEOUT_S
    else:
        monkeypatch.chdir(tmp)
        try:
            rc = search.main(argv)
        except SystemExit as exc:  # argparse refuses before main's handler
            rc = exc.code
        out, err = capsys.readouterr()
    assert_refused(rc, out, err, names)
    assert snapshot(tmp) == before, "a refused command wrote or removed files"
    if case.subprocess:
        assert not storage.exists()


class FakeRay:
    """A started Ray whose cluster lacks what the trial asks for (no Ray process)."""

    def __init__(self, resources: dict[str, float]) -> None:
        self.resources = resources
        self.shut_down = False

    def cluster_resources(self) -> dict[str, float]:
        return self.resources

    def shutdown(self) -> None:
        self.shut_down = True


@pytest.mark.parametrize(
    "resources,argv,names",
    [
        ({"CPU": 8.0}, ["--gpus-per-trial", "1"], ["--gpus-per-trial 1", "0 GPUs"]),
        ({"CPU": 0.5}, ["--cpus-per-trial", "1"], ["--cpus-per-trial 1", "0.5 CPUs"]),
    ],
    ids=["cluster-without-gpus", "cluster-without-cpus"],
)
def test_refused_by_the_cluster_leaves_no_run_dir(
    resources, argv, names, tmp_path: Path, monkeypatch, capsys
):
    """What only the cluster can tell (its resources) is checked before the run directory
    and ``STORAGE/cache`` are created, and Ray is shut down."""
    fake = FakeRay(resources)
    monkeypatch.setattr(search, "start_ray", lambda args: fake)
    for name in ("TUNE_GLOBAL_CHECKPOINT_S", "RAY_AIR_NEW_OUTPUT"):  # run_sweep sets these
        monkeypatch.setenv(name, os.environ.get(name, "1"))
    storage = tmp_path / "storage"
    rc = search.main(
        [*argv, "--address", "10.0.0.1:6379", "--no-dashboard", "--storage-path", str(storage)]
    )
    out, err = capsys.readouterr()
    assert_refused(rc, out, err, names)
    assert fake.shut_down
    assert not storage.exists()


@pytest.mark.parametrize(
    "content",
    [b"this is not a checkpoint", b"", "foreign"],
    ids=["garbage", "empty", "foreign-torch-file"],
)
def test_corrupt_checkpoint_is_one_line(content, tmp_path: Path):
    path = tmp_path / "model.pt"
    if content == "foreign":
        torch.save({"weights": torch.zeros(3)}, path)  # loads, but is not our format
    else:
        path.write_bytes(content)
    with pytest.raises(UserError) as info:
        load_model(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "checkpoint" in message


def test_missing_checkpoint_is_one_line(tmp_path: Path):
    with pytest.raises(UserError, match="checkpoint not found") as info:
        load_model(tmp_path / "absent.pt")
    assert "\n" not in str(info.value)


def test_unknown_dataset_and_model_name_the_choices():
    with pytest.raises(UserError, match=r"unknown dataset 'nope'.*cifar10.*digits"):
        get_dataset("nope")
    with pytest.raises(UserError, match=r"unknown model 'nope'.*mlp.*resnet_mini"):
        create_model("nope", 10, (3, 32, 32))
