"""The base stage as a plain function: accuracy on real data, checkpoint, reuse by key."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tune_linfair.cache import base_key, computations
from tune_linfair.models import count_relus, total_relus
from tune_linfair.spaces import load_space
from tune_linfair.stages import (
    data_options,
    load_artifact_model,
    load_data,
    run_base,
    run_linearize,
)
from tune_linfair.train import evaluate


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def test_digits_base_reaches_90_percent_and_is_reused(cache: Path) -> None:
    exp = load_space("default", ["diagnostics.hessian_max_samples=16"]).experiment
    base, computed = run_base(exp, 0, cache)
    assert computed
    assert base.meta["accuracy"]["test"] >= 90.0  # percent, all-ReLU resnet_mini on digits
    assert len(base.meta["group_accuracy"]["test"]) == 10
    # the checkpoint reproduces the recorded test accuracy exactly
    model = load_artifact_model(base)
    data = load_data(exp, 0)
    assert evaluate(model, data.test).accuracy() == pytest.approx(base.meta["accuracy"]["test"])
    assert count_relus(model) == total_relus(model) == 3_840
    # same key: reused, not retrained
    stamp = (base.path / "model.pt").stat().st_mtime_ns
    again, computed_again = run_base(exp, 0, cache)
    assert not computed_again and again.key == base.key == base_key(exp, 0, data_options(exp))
    assert (again.path / "model.pt").stat().st_mtime_ns == stamp
    assert len(computations(base.path)) == 1  # its creation record: computed once
    # a different seed or recipe is a different key
    assert base_key(exp, 1, data_options(exp)) != base.key
    # the split protocol is part of the data's identity, default or not
    earlier = load_space("default", ["data.options.balanced_val=false"]).experiment
    assert base_key(earlier, 0, data_options(earlier)) != base.key
    explicit = load_space("default", ["data.options.balanced_val=true"]).experiment
    assert base_key(explicit, 0, data_options(explicit)) == base.key
    other = load_space(
        "default", ["base.epochs=3", "diagnostics.hessian_max_samples=16"]
    ).experiment
    assert base_key(other, 0, data_options(other)) != base.key
    # base diagnostics are stored with it (gradients and Hessians at the base weights)
    rows = [r for r in base.meta["groups"] if r["split"] == "test"]
    assert len(rows) == 10 and all(r["grad_norm"] > 0 for r in rows)
    json.dumps(base.meta)  # the record is plain JSON


def test_synthetic_mlp_base_reaches_97_percent(cache: Path) -> None:
    exp = load_space("synthetic", ["diagnostics.hessian=false"]).experiment
    base, _ = run_base(exp, 0, cache)
    assert base.meta["accuracy"]["test"] >= 97.0


def test_linearized_artifact_is_shared_by_key(cache: Path) -> None:
    exp = load_space("default", ["diagnostics.hessian_max_samples=16"]).experiment
    base, _ = run_base(exp, 0, cache)
    lin, computed = run_linearize(exp, base, "random", 0.1, 0, cache)
    assert computed and lin.meta["relu_count"] == 384
    model = load_artifact_model(lin)
    assert count_relus(model) == 384
    masks = [p for n, p in model.named_parameters() if n.endswith(".mask")]
    assert all(torch.isin(m, torch.tensor([0.0, 1.0])).all() for m in masks)
    again, computed_again = run_linearize(exp, base, "random", 0.1, 0, cache)
    assert not computed_again and again.key == lin.key
    assert len(computations(lin.path)) == 1


RACER = """
import json, sys, time
from tune_linfair.spaces import load_space
from tune_linfair.stages import run_base
exp = load_space("synthetic", ["base.epochs=1", "diagnostics.hessian=false",
                              "diagnostics.gradients=false", "diagnostics.boundary=false"]).experiment
print("ready", flush=True)
sys.stdin.readline()
called = time.time()
artifact, computed = run_base(exp, 0, sys.argv[1], device="cpu")
print(json.dumps({"called": called, "computed": computed, "path": str(artifact.path)}))
"""


def test_two_processes_racing_for_one_artifact_compute_it_once(tmp_path: Path) -> None:
    """Two real processes ask for the same base model at the same moment (both past their
    imports, released together): exactly one trains it, the other waits on the artifact's
    lock and reuses it; its creation record holds one computation, by the one that said so,
    and both asked before that computation finished (they did race)."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(tmp_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(2)
    ]
    try:
        assert [p.stdout.readline().strip() for p in procs] == ["ready", "ready"]
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        outs = [json.loads(p.communicate(timeout=120)[0].strip().splitlines()[-1]) for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert sorted(o["computed"] for o in outs) == [False, True]
    assert outs[0]["path"] == outs[1]["path"]
    (record,) = computations(Path(outs[0]["path"]))
    winner = procs[[o["computed"] for o in outs].index(True)]
    assert record["pid"] == winner.pid
    assert all(o["called"] < record["finished"] for o in outs)
