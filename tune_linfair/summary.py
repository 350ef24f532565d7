"""The end-of-sweep summary: what a user reads when a sweep finishes.

:func:`summarize` writes the configs table (:mod:`tune_linfair.aggregate`), then prints the
trial and configuration counts, the Pareto-optimal configurations (means over seeds with
95% intervals), whether validation ranks the configurations as test does, the seeds'
hypervolumes, and where the tables are; it draws ``RUN/pareto.png`` (:func:`plot_pareto`).
It reads only Parquet (no torch, no Ray); ``analysis/pareto.py`` and ``analysis/report.py``
go further.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from tune_linfair import aggregate, results
from tune_linfair.cache import write_json
from tune_linfair.plotdata import save_figure


def _pm(mean: float, low: float, scale: float = 1.0, digits: int = 1) -> str:
    """``mean±half-width`` of a 95% interval (``mean`` alone with one seed)."""
    if not math.isfinite(mean):
        return "-"
    text = f"{scale * mean:.{digits}f}"
    return text + (f"±{scale * (mean - low):.{digits}f}" if math.isfinite(low) else "")


def front_table(configs: pd.DataFrame) -> pd.DataFrame:
    """The Pareto-optimal configurations as a table for reading at 100 columns (percent,
    rounded, ±95% half-widths; the config id shortened); full precision stays in Parquet."""
    front = configs[configs["pareto"]].sort_values(["relu_count_mean", "val_accuracy_mean"])

    def mitigation(row: pd.Series) -> str:
        name = {"accuracy_gap": "acc_gap", "lagrangian": "lagr", "group_dro": "dro"}
        text = name.get(row["mitigation"], row["mitigation"])
        for knob, short in (("mu", "mu"), ("epsilon", "eps"), ("eta", "eta")):
            if pd.notna(row[knob]):
                text += f" {short}={row[knob]:.2g}"
        mask = row.get("mask_mitigation")
        return text if mask in (None, "none") or pd.isna(mask) else f"{text} +mask"

    table = pd.DataFrame(
        {
            "config": front["config_id"].str[:7],
            "method": front["method"].replace({"deepreduce": "deepred"}),
            "mitigation": front.apply(mitigation, axis=1),
            "budget": front["budget"].map(lambda b: f"{b:g}"),
            "ReLUs": front["relu_count_mean"].map(lambda v: f"{v:.0f}"),
            "lr": front["lr"].map(lambda v: f"{v:.1g}"),
            "n": front["n_seeds"],
        }
    )
    for metric, label, scale in (
        ("val_accuracy", "val acc", 100),
        ("val_worst_group_drop", "val drop", 1),
        ("test_accuracy", "test acc", 100),
        ("test_worst_group_drop", "test drop", 1),
    ):
        pairs = zip(front[f"{metric}_mean"], front[f"{metric}_ci_low"])
        table[label] = [_pm(m, lo, scale) for m, lo in pairs]
    return table


def summarize(run_dir: Path) -> int:
    """Write the configs table, print the summary, draw the Pareto plot. Returns the number
    of failed trials."""
    trials = results.load_trials(run_dir)
    ok = trials[(trials["status"] == "ok").fillna(False).astype(bool)]
    failed = len(trials) - len(ok)
    configs = aggregate.write_configs(run_dir, trials)
    seeds = sorted({int(s) for s in trials["seed"].dropna()})
    print(
        f"\n{len(trials)} trials ({len(ok)} ok, {failed} failed): {len(configs)} configurations"
        f" on seeds {seeds} in {run_dir}"
    )
    print_infeasible(configs)
    if configs["pareto"].any():
        print(
            "Pareto-optimal configurations: means over seeds ±95% interval, accuracy and\n"
            "worst-group relative drop in % (val accuracy max, val drop min, ReLUs min):"
        )
        print(front_table(configs).to_string(index=False))
        agree = aggregate.rank_agreement(configs)
        print(
            f"Validation ranks test (Spearman, {agree['configurations']:.0f} configurations): "
            f"worst-group drop {agree['spearman_worst_group_drop']:.2f}, "
            f"accuracy {agree['spearman_accuracy']:.2f}"
        )
        if len(seeds) >= 2:
            scale = float(ok["relu_total"].astype(float).max())
            att = aggregate.seed_attainment(trials, scale)
            write_json(run_dir / "attainment.json", att)
            low, high = att["hypervolume_ci"]
            print(
                f"Seeds' fronts: hypervolume {att['hypervolume_mean']:.3f} "
                f"(95% interval {low:.3f}-{high:.3f} over {len(seeds)} seeds)\n"
                f"Median attainment surface: {run_dir / 'attainment.json'}"
            )
        print(f"Pareto plot: {plot_pareto(configs, run_dir / 'pareto.png')}")
    warning = snl_budget_warning(trials)
    if warning:
        print(warning)
    for table in ("configs", "trials", "groups", "samples", "stages"):
        if (run_dir / table).is_dir():
            print(f"Parquet {table}: {run_dir / table}")
    print(f"Report: python analysis/report.py {run_dir}")
    return failed


def snl_budget_warning(trials: pd.DataFrame) -> str | None:
    """One line when ok SNL trials ran out of mask-training epochs before their ReLU budget
    (``reached_budget`` false: their masks are the largest ones of an unfinished penalty
    schedule, not SNL's choice), naming how many and what to change; else None."""
    if "reached_budget" not in trials:
        return None
    snl = trials[((trials["status"] == "ok") & (trials["method"] == "snl")).fillna(False)]
    short = int((snl["reached_budget"] == False).fillna(False).sum())  # noqa: E712
    if not short:
        return None
    return (
        f"warning: {short} of {len(snl)} SNL trials hit linearize.max_epochs before their "
        "budget: raise it or linearize.c0"
    )


def print_infeasible(configs: pd.DataFrame) -> None:
    """Say how many configurations a ``--max-accuracy-drop`` sweep left out of the front."""
    infeasible = int((~aggregate.feasible_mask(configs)).sum())
    if infeasible:
        limit = float(configs["max_accuracy_drop"].dropna().iloc[0])
        print(
            f"{infeasible} infeasible configuration(s) (validation accuracy more than "
            f"{limit:g} points below the base model's) left out of the front"
        )


def plot_pareto(configs: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Validation accuracy (%) vs worst-group drop (%) of the ok configurations (means over
    seeds, 95% interval bars); save a PNG.

    Colour = method; Pareto configurations (the ``pareto`` column of the configs table, the
    3-objective front on means) are ringed in black. matplotlib is imported here, with the
    Agg backend, only when a plot is asked for. The plotted numbers go beside it
    (``pareto.data.json``, :mod:`tune_linfair.plotdata`). analysis/pareto.py draws the
    fuller version.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = configs[configs["status"] == "ok"]
    acc = 100 * ok["val_accuracy_mean"].astype(float).to_numpy()
    drop = ok["val_worst_group_drop_mean"].astype(float).to_numpy()
    acc_err = 100 * (ok["val_accuracy_mean"] - ok["val_accuracy_ci_low"]).astype(float).to_numpy()
    drop_err = (ok["val_worst_group_drop_mean"] - ok["val_worst_group_drop_ci_low"]).astype(float)
    front = ok["pareto"].to_numpy(dtype=bool)
    methods = ok["method"].fillna("?").astype(str).to_numpy()
    fig, ax = plt.subplots(figsize=(6, 4.4))
    for method in sorted(set(methods)):
        sel = methods == method
        ax.errorbar(
            drop[sel],
            acc[sel],
            xerr=np.nan_to_num(drop_err.to_numpy()[sel]),
            yerr=np.nan_to_num(acc_err[sel]),
            fmt="o",
            ms=5,
            alpha=0.7,
            capsize=2,
            label=method,
        )
    ax.scatter(drop[front], acc[front], s=110, facecolors="none", edgecolors="k", label="Pareto")
    ax.set_xlabel("validation worst-group relative drop (%)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("Configurations: means over seeds, 95% intervals")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = save_figure(fig, path, dpi=120)
    plt.close(fig)
    return out
