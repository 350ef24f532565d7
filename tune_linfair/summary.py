"""The end-of-sweep summary: what a user reads when a sweep finishes.

:func:`summarize` prints the trial counts, the Pareto-optimal trials and where the Parquet
tables are, and draws ``RUN/pareto.png`` (:func:`plot_pareto`). It reads only Parquet (no
torch, no Ray); ``analysis/pareto.py`` and ``analysis/report.py`` go further.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from tune_linfair import results


def summarize(run_dir: Path) -> None:
    """Print the Pareto-optimal trials and where the results are; draw the Pareto plot."""
    trials = results.load_trials(run_dir)
    ok = trials[trials["status"] == "ok"]
    failed = len(trials) - len(ok)
    print(f"\n{len(trials)} trials ({len(ok)} ok, {failed} failed) in {run_dir}")
    if len(ok):
        cols = list(results.SUMMARY_COLUMNS)
        front = ok[ok["pareto"]].sort_values("relu_count")[cols]
        print("Pareto-optimal trials (val accuracy max, val worst-group drop min, ReLUs min):")
        print(front.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        plot = plot_pareto(trials, run_dir / "pareto.png")
        print(f"Pareto plot: {plot}")
    for table in ("trials", "groups", "samples"):
        print(f"Parquet {table}: {run_dir / table}")
    print(f"Report: python analysis/report.py {run_dir}")


def plot_pareto(trials: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Scatter validation accuracy (%) vs worst-group drop (%) of the ok trials; save a PNG.

    Colour = method; Pareto trials (the ``pareto`` column of :func:`load_trials`, i.e. the
    3-objective front) are ringed in black. matplotlib is imported here, with the Agg
    backend, only when a plot is asked for. analysis/pareto.py draws the fuller version.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = trials[(trials["status"] == "ok").fillna(False).astype(bool)]
    acc = 100 * ok["val_accuracy"].astype("float64").to_numpy(na_value=np.nan)
    drop = ok["val_worst_group_drop"].astype("float64").to_numpy(na_value=np.nan)
    front = ok["pareto"].to_numpy(dtype=bool) if "pareto" in ok else np.zeros(len(ok), bool)
    methods = ok["method"].fillna("?").astype(str).to_numpy()
    fig, ax = plt.subplots(figsize=(6, 4.4))
    for method in sorted(set(methods)):
        sel = methods == method
        ax.scatter(drop[sel], acc[sel], s=30, alpha=0.7, label=method)
    ax.scatter(drop[front], acc[front], s=90, facecolors="none", edgecolors="k", label="Pareto")
    ax.set_xlabel("validation worst-group relative drop (%)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("Trials (Pareto: accuracy, worst-group drop, ReLU count)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
