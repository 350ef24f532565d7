"""The paper's figures (Figs. 1, 3, 4, 6, 8, 9) from a tune_linfair run's Parquet tables.

Usage::

    python analysis/figures.py RUN_DIR [--out DIR] [--pdf] [--stage finetuned] [--split test]

Figures follow Das, Romanelli & Fioretto, "Disparate Impact on Group Accuracy of
Linearization for Private Inference" (ICML 2024); numbers are theirs:

* ``fig1_group_accuracy``  Fig. 1: per-group accuracy for each ReLU budget (grouped bars;
  the all-ReLU base model as the first bar; group sizes above the bars).
* ``fig3_grad_norm``       Fig. 3: group gradient norm ``||grad J(theta; S_a)||`` per budget.
* ``fig4_hessian``         Fig. 4: group Hessian top eigenvalue per budget.
* ``fig6_relative_drop``   Fig. 6: relative accuracy drop per group vs percent linearized,
  ``100 * (1 - relu_fraction)``.
* ``fig8_distance``        Fig. 8: (a) weight distance ``||theta - theta_base||`` vs budget,
  (b) group accuracy vs group gradient norm, (c) group accuracy vs mean softmax margin
  (distance to the decision boundary).
* ``fig9_mitigation``      Fig. 9: relative change of group accuracy from the mitigation,
  ``100 * (acc_mitigated - acc_none) / acc_none`` at equal method, budget and seed.

Figures 1-8 use the unmitigated trials (``mitigation == "none"``), one panel per method.
Values are means over seeds (after averaging trials within a seed), error bars one sample
standard deviation across seeds when there are at least two. A figure whose data is absent
(no groups table, no gradient norms, no mitigation, ...) is skipped with a printed note.
Outputs go to ``--out`` (default ``RUN/analysis/figures``) with a ``figures.json`` manifest
(files written, notes, seeds) that report.py reads. Beside each ``NAME.png``,
``NAME.data.json`` holds the numbers it draws (:mod:`tune_linfair.plotdata`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from common import (  # noqa: E402
    aggregate_seeds,
    as_float,
    default_out,
    group_frame,
    load_groups_or_none,
    load_ok_trials,
    parser,
    run_cli,
    run_dir_arg,
)
from matplotlib.figure import Figure  # noqa: E402

from tune_linfair.plotdata import data_path, save_figure  # noqa: E402

CAPTIONS = {
    "fig1_group_accuracy": "Fig. 1: per-group accuracy per ReLU budget (base = all-ReLU model).",
    "fig3_grad_norm": "Fig. 3: group gradient norms per ReLU budget.",
    "fig4_hessian": "Fig. 4: group Hessian top eigenvalue per ReLU budget.",
    "fig6_relative_drop": "Fig. 6: relative accuracy drop per group vs percent of ReLUs linearized.",
    "fig8_distance": "Fig. 8: weight distance vs budget; group accuracy vs gradient norm; "
    "group accuracy vs mean distance to the decision boundary (softmax margin).",
    "fig9_mitigation": "Fig. 9: relative change of group accuracy from the mitigation "
    "(vs `none` at equal method, budget, seed).",
}


class Skip(Exception):
    """A figure's data is absent from the run: skip it with this message."""


def _budget_label(budget: float) -> str:
    return f"{100 * budget:.3g}%"


def _groups_order(gf: pd.DataFrame) -> list[tuple[int, str]]:
    """(group id, name) pairs in id order."""
    pairs = gf[["group", "group_name"]].drop_duplicates("group").sort_values("group")
    return [(int(g), str(n) if pd.notna(n) else str(g)) for g, n in pairs.itertuples(index=False)]


def _need(df: pd.DataFrame, column: str, what: str) -> None:
    if df.empty or column not in df or df[column].isna().all():
        raise Skip(f"no {what} in the run")


def _panels(n: int, width: float = 5.2, height: float = 3.8) -> tuple[Figure, list]:
    fig, axes = plt.subplots(1, n, figsize=(width * n, height), squeeze=False)
    return fig, list(axes[0])


def _grouped_bars(
    ax,
    agg: pd.DataFrame,
    x_key: str,
    x_values: Sequence,
    x_labels: Sequence[str],
    bar_key: str,
    bar_values: Sequence,
    bar_labels: Sequence[str],
    value: str,
) -> list[float]:
    """Grouped bars of ``<value>_mean`` with ``<value>_std`` error bars; returns cluster tops."""
    width = 0.8 / max(len(bar_values), 1)
    tops = [0.0] * len(x_values)
    for j, (bv, bl) in enumerate(zip(bar_values, bar_labels)):
        heights, errors = [], []
        for xv in x_values:
            row = agg[(agg[x_key] == xv) & (agg[bar_key] == bv)]
            heights.append(float(row[f"{value}_mean"].iloc[0]) if len(row) else np.nan)
            errors.append(float(row[f"{value}_std"].iloc[0]) if len(row) else np.nan)
        pos = np.arange(len(x_values)) - 0.4 + width * (j + 0.5)
        err = np.nan_to_num(np.asarray(errors), nan=0.0)
        ax.bar(pos, heights, width, yerr=err if err.any() else None, capsize=2, label=bl)
        for i, (h, e) in enumerate(zip(heights, err)):
            if np.isfinite(h):
                tops[i] = max(tops[i], h + e)
    ax.set_xticks(np.arange(len(x_values)), list(x_labels))
    return tops


def _methods(df: pd.DataFrame) -> list[str]:
    return sorted(df["method"].fillna("?").unique().tolist())


def fig1(ok: pd.DataFrame, groups: pd.DataFrame, split: str, stage: str) -> Figure:
    """Per-group accuracy (%), x = group, one bar per budget plus the base model."""
    gf = group_frame(ok, groups, stage, split)
    gf = gf[gf["mitigation"] == "none"]
    _need(gf, "accuracy", f"unmitigated {stage} group accuracies on {split}")
    gf = gf.assign(method=gf["method"].fillna("?"), acc=100 * as_float(gf["accuracy"]))
    base = group_frame(ok, groups, "base", split)
    base = base[base["mitigation"] == "none"].assign(
        method=lambda d: d["method"].fillna("?"), budget=np.inf
    )
    base = base.assign(acc=100 * as_float(base["accuracy"]))
    # the base model repeats in every trial of a seed: one row per (seed, group)
    base = base.drop_duplicates(["method", "seed", "group"])
    both = pd.concat([gf, base], ignore_index=True)
    agg = aggregate_seeds(both, ["method", "budget", "group"], ["acc"])
    sizes = groups[groups["split"] == ("val" if (groups["split"] == "val").any() else split)]
    size_label = "n_val" if (groups["split"] == "val").any() else f"n_{split}"
    sizes = sizes.groupby("group")["n"].max()
    order = _groups_order(gf)
    methods = _methods(gf)
    fig, axes = _panels(len(methods), width=max(5.2, 0.9 * len(order) + 2))
    for ax, method in zip(axes, methods):
        sub = agg[agg["method"] == method]
        budgets = sorted(sub["budget"].unique(), reverse=True)
        labels = ["base" if np.isinf(b) else _budget_label(b) for b in budgets]
        tops = _grouped_bars(ax, sub, "group", [g for g, _ in order], [n for _, n in order],
                             "budget", budgets, labels, "acc")  # fmt: skip
        for i, (g, _) in enumerate(order):
            if g in sizes.index and pd.notna(sizes[g]):
                ax.text(i, tops[i] + 1, f"{size_label}={int(sizes[g])}", ha="center", fontsize=7)
        ax.set_ylim(0, 112)
        ax.set_title(f"{method}: {split} accuracy per group")
        ax.set_ylabel("accuracy (%)")
        ax.legend(title="ReLUs kept", fontsize=7, ncol=2)
    return fig


def _per_budget_bars(
    ok: pd.DataFrame, groups: pd.DataFrame, split: str, stage: str, column: str, ylabel: str
) -> Figure:
    gf = group_frame(ok, groups, stage, split)
    gf = gf[gf["mitigation"] == "none"]
    _need(gf, column, f"{column} values for unmitigated {stage} trials on {split}")
    gf = gf.assign(method=gf["method"].fillna("?"))
    agg = aggregate_seeds(gf, ["method", "budget", "group"], [column])
    order = _groups_order(gf)
    methods = _methods(gf)
    fig, axes = _panels(len(methods))
    for ax, method in zip(axes, methods):
        sub = agg[agg["method"] == method]
        budgets = sorted(sub["budget"].unique(), reverse=True)
        _grouped_bars(ax, sub, "budget", budgets, [_budget_label(b) for b in budgets],
                      "group", [g for g, _ in order], [n for _, n in order], column)  # fmt: skip
        ax.set_xlabel("ReLU budget (fraction kept)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{method} ({stage}, {split})")
        ax.legend(title="group", fontsize=7)
    return fig


def fig3(ok: pd.DataFrame, groups: pd.DataFrame, split: str, stage: str) -> Figure:
    """Group gradient norms per budget."""
    return _per_budget_bars(ok, groups, split, stage, "grad_norm", "group gradient norm")


def fig4(ok: pd.DataFrame, groups: pd.DataFrame, split: str, stage: str) -> Figure:
    """Group Hessian top eigenvalues per budget."""
    return _per_budget_bars(
        ok, groups, split, stage, "hessian_top_eig", "group Hessian top eigenvalue"
    )


def fig6(ok: pd.DataFrame, groups: pd.DataFrame, split: str, stage: str) -> Figure:
    """Relative drop per group (%) vs percent linearized, one line per group."""
    gf = group_frame(ok, groups, stage, split)
    gf = gf[gf["mitigation"] == "none"]
    _need(gf, "relative_drop", f"relative drops for unmitigated {stage} trials on {split}")
    gf = gf.assign(method=gf["method"].fillna("?"), lin=100 * (1 - as_float(gf["relu_fraction"])))
    agg = aggregate_seeds(gf, ["method", "budget", "group"], ["relative_drop", "lin"])
    order = _groups_order(gf)
    methods = _methods(gf)
    fig, axes = _panels(len(methods))
    for ax, method in zip(axes, methods):
        sub = agg[agg["method"] == method].sort_values("lin_mean")
        for g, name in order:
            line = sub[sub["group"] == g]
            err = np.nan_to_num(line["relative_drop_std"].to_numpy(float), nan=0.0)
            ax.errorbar(line["lin_mean"], line["relative_drop_mean"],
                        yerr=err if err.any() else None, marker="o", capsize=2, label=name)  # fmt: skip
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_xlabel("ReLUs linearized (%)")
        ax.set_ylabel("relative accuracy drop (%)")
        ax.set_title(f"{method} ({split})")
        ax.legend(title="group", fontsize=7)
    return fig


def fig8(ok: pd.DataFrame, groups: pd.DataFrame, split: str, stage: str) -> Figure:
    """Three panels: weight distance vs budget; accuracy vs grad norm; accuracy vs margin."""
    base = ok[ok["mitigation"] == "none"].assign(method=lambda d: d["method"].fillna("?"))
    gf = group_frame(base, groups, stage, split) if groups is not None else pd.DataFrame()
    have = {
        "weight": not base.empty and base["weight_distance"].notna().any(),
        "grad": not gf.empty and gf["grad_norm"].notna().any() and gf["accuracy"].notna().any(),
        "margin": not gf.empty and gf["mean_margin"].notna().any(),
    }
    if not any(have.values()):
        raise Skip("no weight distances, gradient norms or margins for unmitigated trials")
    fig, (a, b, c) = _panels(3, width=4.6)
    if have["weight"]:
        agg = aggregate_seeds(base, ["method", "budget"], ["weight_distance"])
        for method in _methods(base):
            sub = agg[agg["method"] == method].sort_values("budget")
            err = np.nan_to_num(sub["weight_distance_std"].to_numpy(float), nan=0.0)
            a.errorbar(100 * sub["budget"], sub["weight_distance_mean"],
                       yerr=err if err.any() else None, marker="o", capsize=2, label=method)  # fmt: skip
        a.set_xlabel("ReLU budget (% kept)")
        a.set_ylabel("||theta - theta_base||_2")
        a.legend(fontsize=7)
    else:
        a.text(0.5, 0.5, "no weight distances", ha="center", transform=a.transAxes)
    a.set_title("(a) weight distance")
    for ax, column, have_it, xlabel, title in (
        (b, "grad_norm", have["grad"], "group gradient norm", "(b) accuracy vs gradient norm"),
        (
            c,
            "mean_margin",
            have["margin"],
            "mean softmax margin",
            "(c) accuracy vs boundary distance",
        ),
    ):
        if have_it:
            agg = aggregate_seeds(gf, ["method", "budget", "group"], ["accuracy", column])
            for g, name in _groups_order(gf):
                sub = agg[agg["group"] == g]
                ax.scatter(sub[f"{column}_mean"], 100 * sub["accuracy_mean"], label=name, s=18)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"group accuracy (%), {split}")
            ax.legend(title="group", fontsize=7)
        else:
            ax.text(0.5, 0.5, f"no {column}", ha="center", transform=ax.transAxes)
        ax.set_title(title)
    return fig


def fig9(ok: pd.DataFrame, groups: pd.DataFrame, split: str, stage: str) -> Figure:
    """Relative change of group accuracy from each mitigation vs `none` (equal method/budget/seed)."""
    gf = group_frame(ok, groups, stage, split)
    _need(gf, "accuracy", f"{stage} group accuracies on {split}")
    gf = gf.assign(method=gf["method"].fillna("?"), acc=as_float(gf["accuracy"]))
    keys = ["method", "budget", "seed", "group"]
    none = (
        gf[gf["mitigation"] == "none"].groupby(keys, dropna=False)["acc"].mean().rename("acc_none")
    )
    mit = gf[gf["mitigation"] != "none"]
    if mit.empty:
        raise Skip("no mitigated trials in the run")
    mit = mit.groupby(["mitigation", *keys], dropna=False)["acc"].mean().reset_index()
    paired = mit.merge(none.reset_index(), on=keys, how="inner")
    if paired.empty:
        raise Skip("no mitigated trial has an unmitigated twin (same method, budget, seed)")
    paired["change"] = 100 * (paired["acc"] - paired["acc_none"]) / paired["acc_none"]
    agg = aggregate_seeds(paired, ["mitigation", "method", "budget", "group"], ["change"])
    order = _groups_order(gf)
    panels = agg[["mitigation", "method"]].drop_duplicates().sort_values(["mitigation", "method"])
    fig, axes = _panels(len(panels), width=max(5.2, 0.9 * len(order) + 2))
    for ax, (mitigation, method) in zip(axes, panels.itertuples(index=False)):
        sub = agg[(agg["mitigation"] == mitigation) & (agg["method"] == method)]
        budgets = sorted(sub["budget"].unique(), reverse=True)
        _grouped_bars(ax, sub, "group", [g for g, _ in order], [n for _, n in order],
                      "budget", budgets, [_budget_label(b) for b in budgets], "change")  # fmt: skip
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_ylabel("relative change in accuracy (%)")
        ax.set_title(f"{mitigation} vs none ({method}, {split})")
        ax.legend(title="ReLUs kept", fontsize=7)
    return fig


FIGURES: dict[str, Callable[[pd.DataFrame, pd.DataFrame, str, str], Figure]] = {
    "fig1_group_accuracy": fig1,
    "fig3_grad_norm": fig3,
    "fig4_hessian": fig4,
    "fig6_relative_drop": fig6,
    "fig8_distance": fig8,
    "fig9_mitigation": fig9,
}


def make_figures(
    run_dir: Path,
    out_dir: Path,
    *,
    pdf: bool = False,
    split: str = "test",
    stage: str = "finetuned",
) -> dict:
    """Draw every figure whose data exists; write them and ``figures.json`` into ``out_dir``.

    Returns the manifest: ``{"files": {name: png}, "data": {name: NAME.data.json}, "pdf":
    {...}, "notes": {name: why skipped},
    "captions": {...}, "n_seeds": int, "split": ..., "stage": ...}``.
    """
    _, ok = load_ok_trials(run_dir)
    groups = load_groups_or_none(run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest: dict = {
        "split": split,
        "stage": stage,
        "n_seeds": int(ok["seed"].nunique(dropna=False)),
        "files": {},
        "data": {},
        "pdf": {},
        "notes": {},
        "captions": CAPTIONS,
    }
    for name, draw in FIGURES.items():
        try:
            if groups is None and name != "fig8_distance":
                raise Skip(f"no groups table under {run_dir / 'groups'}")
            fig = draw(ok, groups, split, stage)
        except Skip as why:
            manifest["notes"][name] = str(why)
            print(f"skip {name}: {why}")
            continue
        n = manifest["n_seeds"]
        fig.suptitle(
            f"{CAPTIONS[name].split(':')[0]} - mean over {n} seed{'s' if n != 1 else ''}"
            + (", error bars = 1 std" if n > 1 else ""),
            fontsize=9,
        )
        fig.tight_layout()
        png = save_figure(fig, out_dir / f"{name}.png", dpi=120)
        manifest["files"][name] = png.name
        manifest["data"][name] = data_path(png).name
        if pdf:
            fig.savefig(out_dir / f"{name}.pdf")
            manifest["pdf"][name] = f"{name}.pdf"
        plt.close(fig)
        print(f"wrote {png}")
    (out_dir / "figures.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--out", type=Path, help="output directory (default RUN_DIR/analysis/figures)")
    p.add_argument("--pdf", action="store_true", help="also write each figure as PDF")
    p.add_argument("--split", default="test", choices=["test", "val"], help="split (default test)")
    p.add_argument(
        "--stage",
        default="finetuned",
        choices=["finetuned", "linearized"],
        help="model stage the group metrics come from (default finetuned)",
    )
    args = p.parse_args(argv)
    run_dir = run_dir_arg(args.run_dir)
    make_figures(run_dir, args.out or default_out(run_dir, "figures"), pdf=args.pdf,
                 split=args.split, stage=args.stage)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
