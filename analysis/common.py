"""Helpers shared by the analysis scripts (pareto.py, figures.py, report.py).

Everything here reads only the Parquet tables of :mod:`tune_linfair.results` with pandas
and pyarrow: no torch, no Ray (docs/ARCHITECTURE.md). The scripts import this module as a
sibling (``python analysis/pareto.py RUN`` puts ``analysis/`` on ``sys.path``).

Seed aggregation (used by every figure and table): trials that share a configuration key
and a seed but differ in other hyper-parameters (say, a grid over ``lr``) are first averaged
within the seed; then mean, sample standard deviation (ddof=1, NaN with one seed) and the
number of seeds are taken across seeds.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from tune_linfair.errors import UserError
from tune_linfair.results import load_groups, load_trials

CONFIG_COLUMNS = (
    "config_id",
    "method",
    "mitigation",
    "budget",
    "seed",
    "relu_fraction",
    "mu",
    "lr",
)
"""Trial columns joined onto group rows for figures and tables."""


def run_cli(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)``; a UserError or OSError becomes one line ``error: ...`` and code 2."""
    try:
        return main(argv)
    except (UserError, OSError) as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2


def run_dir_arg(value: str) -> Path:
    """argparse type for RUN_DIR: an existing directory (UserError otherwise)."""
    path = Path(value)
    if not path.is_dir():
        raise UserError(f"run directory {value} does not exist or is not a directory")
    return path


def parser(description: str) -> argparse.ArgumentParser:
    """An ArgumentParser (``description`` shown verbatim) with the positional RUN_DIR."""
    p = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory holding trials/, groups/")
    return p


def default_out(run_dir: Path, name: str) -> Path:
    """Default output location ``RUN/analysis/<name>``."""
    return run_dir / "analysis" / name


def load_ok_trials(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """All trials (with the ``pareto`` flag) and the subset with ``status == "ok"``.

    ``mitigation`` nulls read as ``"none"``; ``budget`` nulls fall back to ``relu_fraction``
    (a budget given as an absolute count). UserError when no trial succeeded.
    """
    trials = load_trials(run_dir)
    trials["mitigation"] = trials["mitigation"].fillna("none")
    trials["budget"] = trials["budget"].fillna(trials["relu_fraction"])
    ok = trials[(trials["status"] == "ok").fillna(False).astype(bool)].reset_index(drop=True)
    if ok.empty:
        raise UserError(
            f"no successful trials in {run_dir} ({len(trials)} failed): nothing to analyse"
        )
    return trials, ok


def group_frame(ok: pd.DataFrame, groups: pd.DataFrame, stage: str, split: str) -> pd.DataFrame:
    """Group rows of one stage and split for the ok trials, joined with their configuration."""
    sel = groups[(groups["stage"] == stage) & (groups["split"] == split)]
    cols = ["trial_id", *CONFIG_COLUMNS]
    return sel.merge(ok[cols], on="trial_id", how="inner")


def load_groups_or_none(run_dir: Path) -> pd.DataFrame | None:
    """The groups table, or None when the run has none (figures then skip with a note)."""
    try:
        return load_groups(run_dir)
    except UserError:
        return None


def aggregate_seeds(df: pd.DataFrame, by: Sequence[str], values: Sequence[str]) -> pd.DataFrame:
    """Mean over trials within (by, seed), then mean/std/count over seeds.

    Returns one row per ``by`` key with columns ``<v>_mean``, ``<v>_std`` (ddof=1; NaN with
    one seed) and ``n_seeds``. Null keys form their own group (``dropna=False``).
    """
    by = list(by)
    values = list(values)
    if df.empty:
        cols = by + [f"{v}_{s}" for v in values for s in ("mean", "std")] + ["n_seeds"]
        return pd.DataFrame(columns=cols)
    data = df[by + ["seed"] + values].copy()
    for v in values:
        data[v] = pd.to_numeric(data[v], errors="coerce").astype("float64")
    per_seed = data.groupby(by + ["seed"], dropna=False, sort=True)[values].mean().reset_index()
    grouped = per_seed.groupby(by, dropna=False, sort=True)
    out = grouped[values].agg(["mean", "std"])
    out.columns = [f"{v}_{s}" for v, s in out.columns]
    out["n_seeds"] = grouped.size()
    return out.reset_index()


def as_float(series: pd.Series) -> np.ndarray:
    """A float numpy array with NaN for missing values (works for nullable dtypes)."""
    return pd.to_numeric(series, errors="coerce").astype("float64").to_numpy(na_value=np.nan)


def fmt(value: object, digits: int = 3) -> str:
    """Format a cell for Markdown: floats with ``digits`` significant decimals, '' for null."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float | np.floating):
        return f"{value:.{digits}f}"
    return " ".join(str(value).split()).replace("|", "\\|")


def mean_std(mean: float, std: float, digits: int = 2) -> str:
    """``mean ± std`` (just ``mean`` when std is undefined)."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return ""
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(df: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub Markdown table of ``df`` (no index), without the tabulate dependency."""
    header = "| " + " | ".join(str(c) for c in df.columns) + " |"
    rule = "| " + " | ".join("---" for _ in df.columns) + " |"
    rows = [
        "| " + " | ".join(fmt(v, digits) for v in row) + " |" for row in df.itertuples(index=False)
    ]
    return "\n".join([header, rule, *rows])


def environment_versions() -> dict[str, str]:
    """Versions of the analysis environment: python, numpy, pandas, pyarrow, matplotlib."""
    import matplotlib
    import pyarrow

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "pyarrow": pyarrow.__version__,
        "matplotlib": matplotlib.__version__,
    }
