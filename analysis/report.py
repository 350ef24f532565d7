"""One Markdown report of a tune_linfair run: tables, Pareto set, figures, command, versions.

Usage::

    python analysis/report.py RUN_DIR [--out FILE] [--refresh]

Writes ``--out`` (default ``RUN/analysis/report.md``) with: the command that produced the
run (``RUN/command.txt``, written by the sweep driver), one row per configuration (means
over seeds with 95% Student-t intervals, from the configs table), how well validation ranks
the configurations as test does (Spearman), the per-group relative test drops with 95%
intervals (over seeds; with one seed, the Wilson interval over the group's samples), the
Pareto set and hypervolumes (from pareto.py), every figure (from figures.py), and the software
versions (``RUN/versions.json`` if present, plus this analysis environment's). Figures and
Pareto outputs are read from ``figures/`` and ``pareto/`` next to the report and produced
first when missing (or always with ``--refresh``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import figures as figures_script
import numpy as np
import pandas as pd
import pareto as pareto_script
from common import (
    default_out,
    environment_versions,
    group_frame,
    load_groups_or_none,
    load_ok_trials,
    markdown_table,
    parser,
    run_cli,
    run_dir_arg,
)

from tune_linfair import aggregate
from tune_linfair.aggregate import t_interval

MAX_FAILED_LISTED = 20


def _pm(mean: float, low: float, scale: float = 1.0, digits: int = 2) -> str:
    """``mean ±half`` of a 95% interval; the mean alone when there is no interval."""
    if not np.isfinite(mean):
        return "-"
    half = f" ±{scale * (mean - low):.{digits}f}" if np.isfinite(low) else ""
    return f"{scale * mean:.{digits}f}{half}"


def config_summary(configs: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration: parameters, seeds, and each metric's mean ±95% half-width."""
    c = configs.sort_values(
        ["method", "mitigation", "budget", "lr"], ascending=[True, True, False, True]
    )
    out = pd.DataFrame(
        {
            "config": c["config_id"],
            "method": c["method"],
            "mitigation": c["mitigation"],
            "mu / epsilon": [
                f"{m:.3g}" if pd.notna(m) else (f"{e:.3g}" if pd.notna(e) else "")
                for m, e in zip(c["mu"], c["epsilon"])
            ],
            "budget": c["budget"].map(lambda b: f"{b:.4g}"),
            "lr": c["lr"].map(lambda v: f"{v:.3g}"),
            "seeds ok/failed": [f"{n}/{f}" for n, f in zip(c["n_seeds"], c["n_failed"])],
            "ReLUs": c["relu_count_mean"].map(lambda v: f"{v:.0f}" if np.isfinite(v) else "-"),
        }
    )
    for col, label, scale in (
        ("val_accuracy", "val acc (%)", 100),
        ("test_accuracy", "test acc (%)", 100),
        ("val_worst_group_drop", "val worst-group drop (%)", 1),
        ("test_worst_group_drop", "test worst-group drop (%)", 1),
    ):
        out[label] = [_pm(m, lo, scale) for m, lo in zip(c[f"{col}_mean"], c[f"{col}_ci_low"])]
    return out


def group_drops(
    ok: pd.DataFrame, groups: pd.DataFrame | None, column: str = "relative_drop", scale: float = 1
) -> pd.DataFrame | None:
    """``column`` on the test split (the relative drop in %, or accuracy with ``scale`` 100)
    per group (columns) per configuration: mean over seeds ±95% Student-t half-width; with one
    seed, that seed's Wilson interval over the group's samples."""
    if groups is None:
        return None
    gf = group_frame(ok, groups, "finetuned", "test")
    if gf.empty or gf[column].isna().all():
        return None
    cols = (column, f"{column}_ci_low", f"{column}_ci_high")
    gf = gf.assign(**{c: scale * gf[c].astype(float) for c in cols})
    by = ["method", "mitigation", "budget", "config_id"]
    cells = []
    for key, sub in gf.groupby([*by, "group"], dropna=False, sort=True):
        mean, _, low, _ = t_interval(sub[column].astype(float))
        if len(sub) == 1:
            lo, hi = float(sub[cols[1]].iloc[0]), float(sub[cols[2]].iloc[0])
            cell = f"{mean:.1f} [{lo:.1f}, {hi:.1f}]" if np.isfinite(lo) else f"{mean:.1f}"
        else:
            cell = _pm(mean, low, digits=1)
        cells.append({**dict(zip([*by, "group"], key)), "cell": cell})
    agg = pd.DataFrame(cells)
    names = gf.drop_duplicates("group").set_index("group")["group_name"].to_dict()
    wide = agg.pivot(index=by, columns="group", values="cell")
    wide.columns = [f"{names.get(g, g)} ({g})" for g in wide.columns]
    wide = wide.reset_index().drop(columns="config_id")
    wide["budget"] = wide["budget"].map(lambda b: f"{b:.4g}")
    return wide


def _rel(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path, start)).as_posix()


def build_report(run_dir: Path, out_file: Path, *, refresh: bool = False) -> Path:
    """Write the Markdown report to ``out_file`` (running figures/pareto when needed)."""
    trials, ok = load_ok_trials(run_dir)
    groups = load_groups_or_none(run_dir)
    configs = pareto_script.load_configs(run_dir, trials)
    agree = aggregate.rank_agreement(configs)
    here = out_file.parent
    here.mkdir(parents=True, exist_ok=True)
    fig_dir, par_dir = here / "figures", here / "pareto"
    if refresh or not (fig_dir / "figures.json").is_file():
        figures_script.make_figures(run_dir, fig_dir)
    if refresh or not (par_dir / "pareto.json").is_file():
        pareto_script.analyse(run_dir, par_dir)
    manifest = json.loads((fig_dir / "figures.json").read_text())
    pareto_md = (par_dir / "pareto.md").read_text()

    failed = trials[trials["status"] != "ok"]
    lines = [
        f"# tune_linfair report: `{run_dir.resolve().name}`",
        "",
        f"Run directory `{run_dir}`; run id(s) {', '.join(sorted(map(str, trials['run_id'].unique())))}; "
        f"report written {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}.",
        f"{len(trials)} trials: {len(ok)} ok, {len(failed)} failed; {len(configs)} "
        "configurations. Accuracies on validation select models; test numbers are final. "
        "Means over seeds ± the half-width of a 95% Student-t interval.",
        "",
        f"Validation ranks the configurations as test does: Spearman "
        f"{agree['spearman_worst_group_drop']:.2f} for the worst-group drop, "
        f"{agree['spearman_accuracy']:.2f} for accuracy ({agree['configurations']:.0f} "
        "ok configurations).",
        "",
        "## Command",
        "",
    ]
    command = run_dir / "command.txt"
    if command.is_file():
        lines += ["```", command.read_text().strip(), "```"]
    else:
        lines.append("Not recorded (no `command.txt` in the run directory).")
    lines += ["", "## Configurations", "", markdown_table(config_summary(configs)), ""]
    if len(failed):
        lines += ["Failed trials:", ""]
        shown = failed[["trial_id", "error"]].head(MAX_FAILED_LISTED)
        lines += [markdown_table(shown), ""]
        if len(failed) > MAX_FAILED_LISTED:
            lines += [f"... and {len(failed) - MAX_FAILED_LISTED} more.", ""]
    lines += ["## Per-group relative drop (test, %)", ""]
    drops = group_drops(ok, groups)
    lines += [
        "`100 * (acc_base - acc) / acc_base` per group after fine-tuning; mean over seeds "
        "±95% half-width (one seed: [Wilson interval])."
        if drops is not None
        else "No per-group rows in the run.",
        "",
    ]
    if drops is not None:
        lines += [markdown_table(drops), ""]
    accuracy = group_drops(ok, groups, "accuracy", 100)
    if accuracy is not None:
        lines += ["## Per-group accuracy (test, %)", "", "Same layout.", ""]
        lines += [markdown_table(accuracy), ""]
    lines += [
        "## Pareto set",
        "",
        f"From `{_rel(par_dir / 'pareto.json', here)}` (table: "
        f"`{_rel(par_dir / 'pareto_set.csv', here)}`).",
        "",
        pareto_md,
        f"![Pareto front]({_rel(par_dir / 'pareto_2d.png', here)})",
        "",
        f"![Hypervolume over trials]({_rel(par_dir / 'hv_over_trials.png', here)})",
        "",
        "## Figures",
        "",
        f"Group metrics from the `{manifest['stage']}` models on `{manifest['split']}`, "
        f"mean over {manifest['n_seeds']} seed(s).",
        "",
    ]
    for name, caption in manifest["captions"].items():
        if name in manifest["files"]:
            lines += [
                f"{caption}",
                "",
                f"![{name}]({_rel(fig_dir / manifest['files'][name], here)})",
                "",
            ]
        else:
            lines += [f"{caption} Skipped: {manifest['notes'].get(name, 'not drawn')}.", ""]
    lines += ["## Software versions", ""]
    versions = run_dir / "versions.json"
    if versions.is_file():
        try:
            recorded = json.loads(versions.read_text())
        except json.JSONDecodeError:
            recorded = None
        if isinstance(recorded, dict):
            lines += ["Run (`versions.json`):", ""]
            lines += [f"- {k}: {v}" for k, v in sorted(recorded.items())]
        else:
            lines.append("`versions.json` is not a JSON object; ignored.")
    else:
        lines.append("Run: not recorded (no `versions.json` in the run directory).")
    lines += ["", "Analysis environment:", ""]
    lines += [f"- {k}: {v}" for k, v in environment_versions().items()]
    out_file.write_text("\n".join(lines) + "\n")
    return out_file


def main(argv: Sequence[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--out", type=Path, help="report file (default RUN_DIR/analysis/report.md)")
    p.add_argument(
        "--refresh", action="store_true", help="redraw figures and Pareto outputs even if present"
    )
    args = p.parse_args(argv)
    run_dir = run_dir_arg(args.run_dir)
    out = build_report(run_dir, args.out or default_out(run_dir, "report.md"), refresh=args.refresh)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
