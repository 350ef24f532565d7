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
    thm, hand = result["theorem_4_4"], _bound_by_hand(*claims.load_runs([run]))
    assert thm["pairs"] == len(hand) == 54  # 18 ok trials x 3 groups
    assert thm["share_bound_holds"] == hand["holds"].mean() == 1.0
    assert (tmp_path / "claims.md").read_text().startswith("# The paper's claims")
    assert result["claim4_mitigation"]["table"]["mitigation"].eq("lagrangian").all()


def _bound_by_hand(trials: pd.DataFrame, groups: pd.DataFrame) -> pd.DataFrame:
    """Theorem 4.4 per (trial, group) on test, row by row in plain Python: excess loss
    ``L_ft - L_base`` and bound ``||g_a|| d + 0.5 |lambda_a| d^2`` with ``d`` the weight
    distance and ``g_a``, ``lambda_a`` the base model's group gradient and Hessian."""
    test = groups[groups["split"] == "test"]
    base = {(r.trial_id, r.group): r for r in test[test["stage"] == "base"].itertuples()}
    dist = dict(zip(trials["trial_id"], trials["weight_distance"]))
    rows = []
    for r in test[test["stage"] == "finetuned"].itertuples():
        b, d = base[(r.trial_id, r.group)], float(dist[r.trial_id])
        bound = float(b.grad_norm) * d + 0.5 * abs(float(b.hessian_top_eig)) * d * d
        excess = float(r.loss) - float(b.loss)
        rows.append({"trial_id": r.trial_id, "group": r.group, "bound": bound,
                     "excess": excess, "holds": excess <= bound})  # fmt: skip
    return pd.DataFrame(rows)


def test_theorem_bound_by_hand(run: Path) -> None:
    """The library's Theorem 4.4 numbers equal the bound computed by hand for every pair."""
    trials, groups = claims.load_runs([run])
    out = claims.theorem_44(trials, groups)
    hand = _bound_by_hand(trials, groups).merge(
        trials[["trial_id", "method", "budget"]], on="trial_id"
    )
    assert out["pairs"] == len(hand) and out["share_bound_holds"] == hand["holds"].mean()
    assert hand["holds"].all()  # the fixture's excess losses all lie under their bounds
    ratio = np.median(hand["bound"] / hand["excess"].abs())
    assert out["median_ratio_bound_over_abs_excess"] == pytest.approx(ratio)
    table = out["table"].set_index(["method", "budget"])
    for key, rows in hand.groupby(["method", "budget"]):
        assert table.loc[key, "pairs"] == len(rows)
        assert table.loc[key, "bound"] == pytest.approx(rows["bound"].mean())
        assert table.loc[key, "excess"] == pytest.approx(rows["excess"].mean())
        assert table.loc[key, "holds"] == pytest.approx(rows["holds"].mean())


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
