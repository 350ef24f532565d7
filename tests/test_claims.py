"""analysis/claims.py on a Parquet fixture whose minorities lose accuracy faster."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "analysis"))

import claims  # noqa: E402
from test_results import build_run  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_run(tmp_path_factory.mktemp("run"))


def test_claims_on_fixture(run: Path, tmp_path: Path) -> None:
    result = claims.analyse([run], tmp_path)
    c1 = result["claim1_minority_loses_more"]
    # the fixture's minority groups are built to lose more at every budget
    assert c1["verdict"] == "held" and c1["share_minority_worse"] == 1.0
    table = c1["table"]
    assert (table["gap"] > 0).all() and set(table["method"]) == {"snl", "deepreduce"}
    thm = result["theorem_4_4"]
    assert thm["pairs"] > 0 and 0.0 <= thm["share_bound_holds"] <= 1.0
    assert (tmp_path / "claims.md").read_text().startswith("# The paper's claims")
    assert result["claim4_mitigation"]["table"]["mitigation"].eq("lagrangian").all()


def test_theorem_bound_by_hand(run: Path) -> None:
    trials, groups = claims.load_runs([run])
    out = claims.theorem_44(trials, groups)
    # recompute one (trial, group) pair by hand
    tid = trials["trial_id"].iloc[0]
    base = groups[(groups.trial_id == tid) & (groups.stage == "base") & (groups.split == "test")]
    ft = groups[(groups.trial_id == tid) & (groups.stage == "finetuned") & (groups.split == "test")]
    row_b, row_f = base.iloc[0], ft[ft.group == base.iloc[0].group].iloc[0]
    d = float(trials[trials.trial_id == tid]["weight_distance"].iloc[0])
    bound = float(row_b.grad_norm) * d + 0.5 * abs(float(row_b.hessian_top_eig)) * d**2
    excess = float(row_f.loss) - float(row_b.loss)
    assert np.isfinite(bound) and np.isfinite(excess)
    assert out["pairs"] == len(
        groups[(groups.stage == "finetuned") & (groups.split == "test")].merge(
            groups[(groups.stage == "base") & (groups.split == "test")][["trial_id", "group"]],
            on=["trial_id", "group"],
        )
    )


def test_cli_fails_clearly_on_empty_dir(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "analysis" / "claims.py"), str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error:")
