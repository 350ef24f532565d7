"""analysis/claims.py on a Parquet fixture whose minorities lose accuracy faster."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

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


def test_claims_take_one_value_per_seed() -> None:
    """4 seeds x 2 small budgets: the minority-minus-majority gap of seed s is s + 1 at both
    budgets (plus +-0.5 that cancels within the seed). The pooled test must see 4 values
    (1, 2, 3, 4), not 8 pseudo-replicates, and give their Student-t interval."""
    trials, groups = [], []
    for seed in range(4):
        for budget, wiggle in ((0.05, 0.5), (0.1, -0.5)):
            tid = f"t{seed}_{budget}"
            trials.append(
                {
                    "trial_id": tid,
                    "method": "snl",
                    "budget": budget,
                    "seed": seed,
                    "mitigation": "none",
                    "plain_masks": True,
                }  # fmt: skip
            )
            for group, drop in (
                (0, 1.0),
                (1, 1.0),
                (2, 2.0 + seed + wiggle),
                (3, 2.0 + seed + wiggle),
            ):
                groups.append(
                    {
                        "trial_id": tid,
                        "stage": "finetuned",
                        "split": "test",
                        "group": group,
                        "relative_drop": drop,
                    }  # fmt: skip
                )
    out = claims.claim_minority(pd.DataFrame(trials), pd.DataFrame(groups), {2, 3})
    pooled = out["pooled_budgets_le_10pct_per_seed"]["snl"]
    gaps = np.array([1.0, 2.0, 3.0, 4.0])
    half = stats.t.ppf(0.975, 3) * gaps.std(ddof=1) / 2.0
    assert pooled["seeds"] == 4 and pooled["mean"] == pytest.approx(2.5)
    assert pooled["ci"] == pytest.approx([2.5 - half, 2.5 + half])
    assert pooled["p_t"] == pytest.approx(stats.ttest_1samp(gaps, 0.0).pvalue)
    assert out["verdict"] == "held"
    per_budget = out["table"].set_index("budget")
    assert per_budget.loc[0.05, "gap"] == pytest.approx(3.0)  # (1.5 + 2.5 + 3.5 + 4.5) / 4
    assert per_budget.loc[0.05, "seeds"] == 4


def test_across_seeds_matches_scipy() -> None:
    values = pd.Series([0.3, -0.1, 0.5, 0.2, 0.4], index=[0, 1, 2, 3, 4])
    test = claims.across_seeds(values)
    assert test["seeds"] == 5 and test["mean"] == pytest.approx(0.26)
    assert test["p_t"] == pytest.approx(stats.ttest_1samp(values, 0.0).pvalue)
    assert test["p_wilcoxon"] == pytest.approx(stats.wilcoxon(values).pvalue)
    assert np.isnan(claims.across_seeds(pd.Series([1.0]))["p_t"])


def test_arms_are_paired_with_plain_snl_per_seed() -> None:
    """Two arms on 3 seeds x 2 budgets: the mask mitigation lowers the worst-group drop by
    2 + seed / 2 points at both budgets; its pooled test sees 3 values (2, 2.5, 3)."""
    rows = []
    for seed in range(3):
        for budget in (0.05, 0.1):
            for mask, drop in (("none", 10.0), ("accuracy_gap", 10.0 - (2 + seed / 2))):
                rows.append(
                    {
                        "trial_id": f"{mask}{seed}{budget}",
                        "method": "snl",
                        "budget": budget,
                        "seed": seed,
                        "mitigation": "none",
                        "mask_mitigation": mask,
                        "test_accuracy": 0.9,
                        "test_worst_group_drop": drop,
                    }  # fmt: skip
                )
    out = claims.arms_vs_plain(pd.DataFrame(rows))
    pooled = out["pooled_per_seed"]["accuracy_gap / none"]["d_worst_drop"]
    half = stats.t.ppf(0.975, 2) * np.std([2.0, 2.5, 3.0], ddof=1) / np.sqrt(3)
    assert pooled["seeds"] == 3 and pooled["mean"] == pytest.approx(-2.5)
    assert pooled["ci"] == pytest.approx([-2.5 - half, -2.5 + half])
    assert pooled["p_t"] == pytest.approx(stats.ttest_1samp([-2.0, -2.5, -3.0], 0.0).pvalue)
    assert out["verdict"]["accuracy_gap / none"] == "lower worst-group drop (significant)"
    table = out["table"].set_index(["arm", "budget"])
    assert table.loc[("accuracy_gap / none", 0.05), "d_worst_drop"] == pytest.approx(-2.5)
    assert table.loc[("none / none", 0.1), "d_worst_drop"] == 0.0
    assert claims.arms_vs_plain(pd.DataFrame(rows).query("mask_mitigation == 'none'")) == {
        "verdict": "not measured"
    }
