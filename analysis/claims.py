"""Test the paper's claims on a grid run, with statistics, from Parquet alone.

Das, Romanelli, Fioretto (ICML 2024), "Disparate Impact on Group Accuracy of Linearization
for Private Inference". For each claim the script prints held / did not hold / mixed with
the numbers, and writes ``claims.md`` and ``claims.json``:

Statistics without pseudo-replication: the trials of one seed share a base model and a data
split, so budgets, methods and trials of a seed are not independent. Every test takes one
value per seed (averaging within the seed first) and tests across seeds: a one-sample
Student t-test with its 95% interval (decisive: with 5 seeds the Wilcoxon signed-rank test
cannot reach p < 0.05, its smallest two-sided p being 0.0625) and the Wilcoxon p beside it.

1. Minority groups lose more accuracy than majority groups, more so as budgets shrink
   (Sec. 3, Figs. 1 and 6). Minority = the groups with fewer training samples than the mean
   group (the groups table's ``n_train``); per (method, budget) and seed the mean relative
   test drop of minority minus majority groups; pooled over budgets <= 10% within each seed; and Spearman's rho
   of the gap against the budget, per seed.
2. Group gradient norms and Hessian top eigenvalues rank with the drop (Sec. 4, Figs. 3
   and 4): Spearman's rho, per trial, between each group's diagnostic and its relative
   drop, averaged over the trials of each seed.
3. Groups nearer the decision boundary lose more (Sec. 4.2, Fig. 8): the same with the
   base model's mean softmax margin (expected rho < 0).
4. Mitigation lowers the worst-group drop at small budgets without hurting global accuracy
   much (Sec. 5, Fig. 9): per (method, budget, mitigation), paired differences against
   ``none`` at equal method, budget and seed; pooled per seed over methods and budgets.

Theorem 4.4 (the excess-loss bound) is checked per trial and group: ``R(a) =
J(theta_lin; S_a) - J(theta; S_a)`` (test cross-entropy of the fine-tuned linearized model
minus the base model's) against ``B(a) = ||g_a|| D + 0.5 lambda_max(H_a) D^2`` with
``g_a``, ``H_a`` at the base weights and ``D = ||theta_lin - theta||`` (the trials'
``weight_distance``). Note that the bound treats linearization as a weight perturbation
alone; the masks change the function too, so the check is empirical.

Usage: ``python analysis/claims.py RUN_DIR [RUN_DIR ...] [--out DIR]``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from common import as_float, load_ok_trials, markdown_table, run_cli
from scipy import stats

from tune_linfair.errors import UserError
from tune_linfair.results import load_groups


def load_runs(run_dirs: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """ok trials and group rows of several run directories (trial ids made unique)."""
    trials, groups = [], []
    for run in run_dirs:
        _, ok = load_ok_trials(run)
        g = load_groups(run)
        ok = ok.assign(trial_id=run.name + "/" + ok["trial_id"].astype(str))
        mask = ok["mask_mitigation"] if "mask_mitigation" in ok else None
        # runs written before mask mitigations existed: every linearization was plain SNL
        ok = ok.assign(plain_masks=True if mask is None else mask.fillna("none").eq("none"))
        g = g.assign(trial_id=run.name + "/" + g["trial_id"].astype(str))
        trials.append(ok)
        groups.append(g)
    return pd.concat(trials, ignore_index=True), pd.concat(groups, ignore_index=True)


def minority_groups(groups: pd.DataFrame) -> set[int]:
    """Groups with fewer training samples than the mean group (``n_train``); runs written
    before that column existed fall back to the validation counts, which were unbalanced
    like training then."""
    base = groups[groups["stage"] == "base"]
    if base.empty:
        raise UserError("no base group rows: cannot tell minority groups apart")
    column = "n_train" if base["n_train"].notna().any() else "n"
    rows = base if column == "n_train" else base[base["split"] == "val"]
    n = rows.groupby("group")[column].median()
    return set(n[n < n.mean()].index.astype(int))


def _wilcoxon(diff: np.ndarray) -> float:
    diff = diff[np.isfinite(diff)]
    if len(diff) < 2 or np.allclose(diff, 0):
        return float("nan")
    return float(stats.wilcoxon(diff).pvalue)


def across_seeds(values: pd.Series) -> dict:
    """One value per seed (``values`` indexed by seed) tested against 0: the number of
    seeds, the mean with its 95% Student-t interval, the t-test p and the Wilcoxon p."""
    x = values.astype(float).to_numpy()
    x = x[np.isfinite(x)]
    out = {"seeds": int(len(x)), "mean": float(x.mean()) if len(x) else float("nan")}
    if len(x) >= 2 and np.std(x) > 0:
        half = float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))
        p = float(stats.ttest_1samp(x, 0.0).pvalue)
    else:
        half, p = float("nan"), float("nan")
    out.update(ci=[out["mean"] - half, out["mean"] + half], p_t=p, p_wilcoxon=_wilcoxon(x))
    return out


def _significant(test: dict, sign: int) -> bool:
    return np.isfinite(test["p_t"]) and test["p_t"] < 0.05 and sign * test["mean"] > 0


def _verdict(share: float) -> str:
    return "held" if share >= 0.75 else ("did not hold" if share <= 0.25 else "mixed")


def _rank_verdict(mean_rho: float, p: float) -> str:
    """held: significant (p < 0.05) in the expected direction; else say what was seen."""
    if not np.isfinite(p) or p >= 0.05:
        return "did not hold (no significant rank relation)"
    return "held" if mean_rho > 0 else "did not hold (significant, opposite direction)"


def claim_minority(
    trials: pd.DataFrame, groups: pd.DataFrame, minority: set[int], stage: str = "finetuned"
) -> dict:
    """Claim 1: per (method, budget), minority vs majority mean relative test drop of the
    models at ``stage`` ("finetuned", or "linearized": before fine-tuning)."""
    ft = groups[(groups["stage"] == stage) & (groups["split"] == "test")]
    cols = ["trial_id", "method", "budget", "seed", "mitigation", "plain_masks"]
    ft = ft.merge(trials[cols], on="trial_id")
    ft = ft[(ft["mitigation"] == "none") & ft["plain_masks"]]
    ft = ft.assign(
        minority=ft["group"].astype(int).isin(minority), drop=as_float(ft["relative_drop"])
    )
    per = ft.groupby(["method", "budget", "seed", "minority"])["drop"].mean().unstack("minority")
    per = per.rename(columns={True: "minority", False: "majority"}).reset_index()
    per["gap"] = per["minority"] - per["majority"]
    rows = []
    for (method, budget), sub in per.groupby(["method", "budget"]):
        test = across_seeds(sub.set_index("seed")["gap"])
        rows.append(
            {
                "method": method,
                "budget": float(budget),
                "seeds": test["seeds"],
                "minority_drop": sub["minority"].mean(),
                "majority_drop": sub["majority"].mean(),
                "gap": test["mean"],
                "gap_ci_low": test["ci"][0],
                "gap_ci_high": test["ci"][1],
                "p_t": test["p_t"],
            }
        )
    table = pd.DataFrame(rows).sort_values(["method", "budget"], ascending=[True, False])
    trend, pooled = {}, {}
    for method, sub in per.groupby("method"):
        rho = {
            seed: stats.spearmanr(s["budget"], s["gap"]).statistic if len(s) > 2 else np.nan
            for seed, s in sub.groupby("seed")
        }
        trend[method] = across_seeds(pd.Series(rho))
        small = sub[sub["budget"] <= 0.1]
        if len(small):
            pooled[method] = across_seeds(small.groupby("seed")["gap"].mean())
    share = float((table["gap"] > 0).mean()) if len(table) else float("nan")
    held = [_significant(t, +1) for t in pooled.values()]
    verdict = (
        _verdict(share)
        if not pooled
        else ("held" if all(held) else ("mixed" if any(held) else "did not hold"))
    )
    return {
        "stage": stage,
        "verdict": verdict,
        "share_minority_worse": share,
        "spearman_gap_vs_budget_per_seed": trend,
        "pooled_budgets_le_10pct_per_seed": pooled,
        "table": table,
    }


def _rank_claim(
    trials: pd.DataFrame, groups: pd.DataFrame, column: str, sign: int, stage: str = "base"
) -> dict:
    """Per trial: Spearman rho between a diagnostic of the model at ``stage`` (test split)
    and the group's relative test drop after fine-tuning."""
    base = groups[(groups["stage"] == stage) & (groups["split"] == "test")][
        ["trial_id", "group", column]
    ]
    ft = groups[(groups["stage"] == "finetuned") & (groups["split"] == "test")][
        ["trial_id", "group", "relative_drop"]
    ]
    both = ft.merge(base, on=["trial_id", "group"]).merge(
        trials[["trial_id", "method", "budget", "mitigation", "seed", "plain_masks"]], on="trial_id"
    )
    both = both[(both["mitigation"] == "none") & both["plain_masks"]]
    rhos = []
    for _, sub in both.groupby("trial_id"):
        x, y = as_float(sub[column]), as_float(sub["relative_drop"])
        ok = np.isfinite(x) & np.isfinite(y)
        if ok.sum() >= 3 and np.ptp(x[ok]) > 0 and np.ptp(y[ok]) > 0:
            rhos.append(
                {"seed": sub["seed"].iloc[0], "rho": stats.spearmanr(x[ok], y[ok]).statistic}
            )
    if not rhos:
        return {"verdict": "not measured", "trials": 0}
    rhos = pd.DataFrame(rhos)
    test = across_seeds(rhos.groupby("seed")["rho"].mean())
    return {
        "verdict": _rank_verdict(sign * test["mean"], test["p_t"]),
        "diagnostic_stage": stage,
        "trials": int(len(rhos)),
        "share_expected_sign": float((sign * rhos["rho"] > 0).mean()),
        "mean_rho_per_seed": test,
    }


def claim_mitigation(trials: pd.DataFrame) -> dict:
    """Claim 4: paired (method, budget, seed) differences mitigated - none (plain SNL masks:
    the fine-tuning mitigations as the paper has them)."""
    trials = trials[trials["plain_masks"]]
    cols = ["method", "budget", "seed"]
    pooled: dict[str, dict] = {}
    none = (
        trials[trials["mitigation"] == "none"]
        .groupby(cols)[["test_worst_group_drop", "test_accuracy"]]
        .mean()
    )
    rows = []
    for mitigation in sorted(set(trials["mitigation"]) - {"none"}):
        mit = (
            trials[trials["mitigation"] == mitigation]
            .groupby(cols)[["test_worst_group_drop", "test_accuracy"]]
            .mean()
        )
        paired = mit.merge(
            none, left_index=True, right_index=True, suffixes=("", "_none")
        ).reset_index()
        if paired.empty:
            continue
        paired["d_drop"] = paired["test_worst_group_drop"] - paired["test_worst_group_drop_none"]
        paired["d_acc"] = 100 * (paired["test_accuracy"] - paired["test_accuracy_none"])
        per_seed = paired.groupby("seed")[["d_drop", "d_acc"]].mean()
        pooled[mitigation] = {
            "pairs": int(len(paired)),
            "d_worst_drop": across_seeds(per_seed["d_drop"]),
            "d_accuracy_points": across_seeds(per_seed["d_acc"]),
        }
        for (method, budget), sub in paired.groupby(["method", "budget"]):
            rows.append(
                {
                    "mitigation": mitigation,
                    "method": method,
                    "budget": float(budget),
                    "seeds": len(sub),
                    "worst_drop_none": sub["test_worst_group_drop_none"].mean(),
                    "worst_drop_mitigated": sub["test_worst_group_drop"].mean(),
                    "d_worst_drop": sub["d_drop"].mean(),
                    "p_t_drop": across_seeds(sub.set_index("seed")["d_drop"])["p_t"],
                    "d_accuracy_points": sub["d_acc"].mean(),
                }
            )
    table = pd.DataFrame(rows)
    if table.empty:
        return {"verdict": "not measured", "table": table}
    share = float((table["d_worst_drop"] < 0).mean())
    verdicts = {}
    for mitigation, stat in pooled.items():
        lower = _significant(stat["d_worst_drop"], -1)
        cheap = abs(stat["d_accuracy_points"]["mean"]) < 1.0
        verdicts[mitigation] = (
            "held"
            if lower and cheap
            else (
                "mixed (lower drop, accuracy cost)" if lower else "did not hold (not significant)"
            )
        )
    return {
        "verdict": verdicts,
        "share_cells_lower_drop": share,
        "pooled_per_seed": pooled,
        "table": table,
    }


def arms_vs_plain(trials: pd.DataFrame) -> dict:
    """Beyond the paper: every (mask mitigation, fine-tune mitigation) arm against plain SNL +
    plain KD at equal method, budget and seed. Per arm and budget: test accuracy and
    worst-group drop (mean over seeds with 95% intervals) and the paired differences; pooled
    per seed over the budgets, the differences tested across seeds (t, with intervals)."""
    if "mask_mitigation" not in trials or trials["mask_mitigation"].fillna("none").eq("none").all():
        return {"verdict": "not measured"}
    df = trials.assign(
        arm=trials["mask_mitigation"].fillna("none") + " / " + trials["mitigation"].astype(str),
        acc=100 * as_float(trials["test_accuracy"]),
        drop=as_float(trials["test_worst_group_drop"]),
    )
    keys = ["method", "budget", "seed"]
    plain = df[df["arm"] == "none / none"].groupby(keys)[["acc", "drop"]].mean()
    rows, pooled = [], {}
    for arm, sub in df.groupby("arm", sort=True):
        means = sub.groupby(keys)[["acc", "drop"]].mean()
        paired = means.merge(
            plain, left_index=True, right_index=True, suffixes=("", "_plain")
        ).dropna()
        paired = paired.assign(
            d_acc=paired["acc"] - paired["acc_plain"], d_drop=paired["drop"] - paired["drop_plain"]
        ).reset_index()
        for (method, budget), cell in paired.groupby(["method", "budget"]):
            acc, drop = (
                across_seeds(cell.set_index("seed")["acc"]),
                across_seeds(cell.set_index("seed")["drop"]),
            )
            d_drop = across_seeds(cell.set_index("seed")["d_drop"])
            rows.append(
                {
                    "arm": arm,
                    "method": method,
                    "budget": float(budget),
                    "seeds": d_drop["seeds"],
                    "test_acc": acc["mean"],
                    "test_acc_ci": acc["ci"],
                    "worst_drop": drop["mean"],
                    "worst_drop_ci": drop["ci"],
                    "d_worst_drop": d_drop["mean"],
                    "d_worst_drop_ci": d_drop["ci"],
                    "p_t": d_drop["p_t"],
                    "d_acc": float(cell["d_acc"].mean()),
                }
            )
        if arm != "none / none":
            per_seed = paired.groupby("seed")[["d_acc", "d_drop"]].mean()
            pooled[arm] = {
                "d_worst_drop": across_seeds(per_seed["d_drop"]),
                "d_accuracy_points": across_seeds(per_seed["d_acc"]),
            }
    verdicts = {
        arm: (
            "lower worst-group drop (significant)"
            if _significant(stat["d_worst_drop"], -1)
            else (
                "higher worst-group drop (significant)"
                if _significant(stat["d_worst_drop"], +1)
                else "no significant difference"
            )
        )
        for arm, stat in pooled.items()
    }
    return {"verdict": verdicts, "pooled_per_seed": pooled, "table": pd.DataFrame(rows)}


def plot_arms(arms: dict, path: Path) -> Path:
    """The arms' paired differences against plain SNL (pooled per seed over the budgets,
    95% intervals): worst-group drop and accuracy, one row per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pooled = arms["pooled_per_seed"]
    names = sorted(pooled)
    fig, axes = plt.subplots(1, 2, figsize=(9, 0.6 * len(names) + 1.6), sharey=True)
    for ax, key, label in (
        (axes[0], "d_worst_drop", "change of test worst-group drop (points)"),
        (axes[1], "d_accuracy_points", "change of test accuracy (points)"),
    ):
        mean = [pooled[n][key]["mean"] for n in names]
        low = [pooled[n][key]["mean"] - pooled[n][key]["ci"][0] for n in names]
        ax.errorbar(mean, range(len(names)), xerr=low, fmt="o", capsize=3)
        ax.axvline(0.0, color="k", lw=0.8)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_yticks(
        range(len(names)), [f"mask {n.replace(' / ', ', fine-tune ')}" for n in names]
    )
    fig.suptitle("vs plain SNL + KD at equal budget and seed (mean over seeds, 95% CI)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def theorem_44(trials: pd.DataFrame, groups: pd.DataFrame) -> dict:
    """Theorem 4.4's bound per (trial, group) on the test split."""
    base = groups[(groups["stage"] == "base") & (groups["split"] == "test")][
        ["trial_id", "group", "loss", "grad_norm", "hessian_top_eig"]
    ].rename(columns={"loss": "loss_base"})
    ft = groups[(groups["stage"] == "finetuned") & (groups["split"] == "test")][
        ["trial_id", "group", "loss", "relative_drop"]
    ]
    df = ft.merge(base, on=["trial_id", "group"]).merge(
        trials[["trial_id", "weight_distance", "method", "budget", "mitigation"]], on="trial_id"
    )
    d = as_float(df["weight_distance"])
    excess = as_float(df["loss"]) - as_float(df["loss_base"])
    g_term = as_float(df["grad_norm"]) * d
    h_term = 0.5 * np.abs(as_float(df["hessian_top_eig"])) * d**2
    bound = g_term + h_term
    df = df.assign(excess=excess, bound=bound, holds=excess <= bound)
    valid = np.isfinite(excess) & np.isfinite(bound)
    df = df[valid]
    if df.empty:
        return {"verdict": "not measured"}
    rank = []
    for _, sub in df.groupby("trial_id"):
        if (
            len(sub) >= 3
            and np.ptp(sub["bound"]) > 0
            and np.ptp(as_float(sub["relative_drop"])) > 0
        ):
            rank.append(stats.spearmanr(sub["bound"], as_float(sub["relative_drop"])).statistic)
    by_budget = (
        df.groupby(["method", "budget"])
        .agg(
            pairs=("holds", "size"),
            holds=("holds", "mean"),
            excess=("excess", "mean"),
            bound=("bound", "mean"),
        )
        .reset_index()
    )
    return {
        "pairs": int(len(df)),
        "share_bound_holds": float(df["holds"].mean()),
        "median_ratio_bound_over_abs_excess": float(
            np.nanmedian(df["bound"] / np.abs(df["excess"]))
        ),
        "mean_rho_bound_vs_drop": float(np.mean(rank)) if rank else float("nan"),
        "share_rho_positive": float(np.mean(np.asarray(rank) > 0)) if rank else float("nan"),
        "table": by_budget,
    }


def analyse(run_dirs: list[Path], out_dir: Path) -> dict:
    trials, groups = load_runs(run_dirs)
    minority = minority_groups(groups)
    result = {
        "runs": [str(r) for r in run_dirs],
        "minority_groups": sorted(minority),
        "claim1_minority_loses_more": claim_minority(trials, groups, minority),
        "claim1_before_finetuning": claim_minority(trials, groups, minority, "linearized"),
        "claim2_gradient_norm_base": _rank_claim(trials, groups, "grad_norm", +1),
        "claim2_gradient_norm_finetuned": _rank_claim(trials, groups, "grad_norm", +1, "finetuned"),
        "claim2_hessian_base": _rank_claim(trials, groups, "hessian_top_eig", +1),
        "claim2_hessian_finetuned": _rank_claim(trials, groups, "hessian_top_eig", +1, "finetuned"),
        "claim3_boundary_margin_base": _rank_claim(trials, groups, "mean_margin", -1),
        "claim4_mitigation": claim_mitigation(trials),
        "beyond_arms_vs_plain": arms_vs_plain(trials),
        "theorem_4_4": theorem_44(trials, groups),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        "# The paper's claims, tested",
        "",
        f"Runs: {', '.join(result['runs'])}.",
        f"Minority groups (fewer training samples than the mean): {sorted(minority)}.",
        "",
    ]
    plain = {}
    for key, value in result.items():
        if not isinstance(value, dict):
            plain[key] = value
            continue
        lines.append(f"## {key}")
        lines.append("")
        flat = {k: v for k, v in value.items() if not isinstance(v, pd.DataFrame)}
        plain[key] = flat
        lines.append("```")
        lines.append(json.dumps(flat, indent=1, default=float))
        lines.append("```")
        if isinstance(value.get("table"), pd.DataFrame) and not value["table"].empty:
            lines.append("")
            lines.append(markdown_table(value["table"], digits=3))
            plain[key]["table"] = value["table"].to_dict(orient="records")
        lines.append("")
    arms = result["beyond_arms_vs_plain"]
    if "pooled_per_seed" in arms:
        lines += [f"![arms]({plot_arms(arms, out_dir / 'arms.png').name})", ""]
    (out_dir / "claims.md").write_text("\n".join(lines))
    (out_dir / "claims.json").write_text(json.dumps(plain, indent=1, default=float))
    print("\n".join(lines))
    return result


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    p.add_argument("--out", type=Path, help="output folder (default: FIRST_RUN/analysis/claims)")
    args = p.parse_args(argv)
    for run in args.run_dirs:
        if not run.is_dir():
            raise UserError(f"run directory {run} does not exist or is not a directory")
    analyse(args.run_dirs, args.out or args.run_dirs[0] / "analysis" / "claims")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
