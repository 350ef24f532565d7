"""One Markdown report of a tune_linfair run: tables, Pareto set, figures, command, versions.

Usage::

    python analysis/report.py RUN_DIR [--out FILE] [--refresh]

Writes ``--out`` (default ``RUN/analysis/report.md``) with: the command that produced the
run (``RUN/command.txt``, written by the sweep driver), a trial summary per (method,
mitigation, budget) averaged over seeds, the per-group relative test drops, the Pareto set
and hypervolumes (from pareto.py), every figure (from figures.py), and the software
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
import pandas as pd
import pareto as pareto_script
from common import (
    aggregate_seeds,
    default_out,
    environment_versions,
    group_frame,
    load_groups_or_none,
    load_ok_trials,
    markdown_table,
    mean_std,
    parser,
    run_cli,
    run_dir_arg,
)

MAX_FAILED_LISTED = 20


def trial_summary(ok: pd.DataFrame) -> pd.DataFrame:
    """Per (method, mitigation, budget): trials, seeds, ReLU fraction, accuracies, drops (mean ± std)."""
    values = [
        "relu_fraction",
        "val_accuracy",
        "test_accuracy",
        "test_worst_group_drop",
        "test_parity_gap",
    ]
    by = ["method", "mitigation", "budget"]
    agg = aggregate_seeds(ok, by, values)
    counts = ok.groupby(by, dropna=False).size().rename("trials").reset_index()
    agg = agg.merge(counts, on=by, how="left")
    out = pd.DataFrame(
        {
            "method": agg["method"],
            "mitigation": agg["mitigation"],
            "budget": agg["budget"].map(lambda b: f"{b:.4g}"),
            "trials": agg["trials"],
            "seeds": agg["n_seeds"],
            "relu fraction": agg["relu_fraction_mean"].map(lambda v: f"{v:.4f}"),
        }
    )
    for col, label, scale in (
        ("val_accuracy", "val acc (%)", 100),
        ("test_accuracy", "test acc (%)", 100),
        ("test_worst_group_drop", "test worst-group drop (%)", 1),
        ("test_parity_gap", "test parity gap (pp)", 100),
    ):
        out[label] = [
            mean_std(m * scale, s * scale) for m, s in zip(agg[f"{col}_mean"], agg[f"{col}_std"])
        ]
    return out


def group_drops(ok: pd.DataFrame, groups: pd.DataFrame | None) -> pd.DataFrame | None:
    """Relative test drop (%) per group (columns) per (method, mitigation, budget)."""
    if groups is None:
        return None
    gf = group_frame(ok, groups, "finetuned", "test")
    if gf.empty or gf["relative_drop"].isna().all():
        return None
    agg = aggregate_seeds(gf, ["method", "mitigation", "budget", "group"], ["relative_drop"])
    agg["cell"] = [
        mean_std(m, s, 1) for m, s in zip(agg["relative_drop_mean"], agg["relative_drop_std"])
    ]
    names = gf.drop_duplicates("group").set_index("group")["group_name"].to_dict()
    wide = agg.pivot(index=["method", "mitigation", "budget"], columns="group", values="cell")
    wide.columns = [f"{names.get(g, g)} ({g})" for g in wide.columns]
    wide = wide.reset_index()
    wide["budget"] = wide["budget"].map(lambda b: f"{b:.4g}")
    return wide


def _rel(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path, start)).as_posix()


def build_report(run_dir: Path, out_file: Path, *, refresh: bool = False) -> Path:
    """Write the Markdown report to ``out_file`` (running figures/pareto when needed)."""
    trials, ok = load_ok_trials(run_dir)
    groups = load_groups_or_none(run_dir)
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
        f"{len(trials)} trials: {len(ok)} ok, {len(failed)} failed. Accuracies on "
        "validation select models; test numbers are final. Means over seeds ± 1 std.",
        "",
        "## Command",
        "",
    ]
    command = run_dir / "command.txt"
    if command.is_file():
        lines += ["```", command.read_text().strip(), "```"]
    else:
        lines.append("Not recorded (no `command.txt` in the run directory).")
    lines += ["", "## Trials", "", markdown_table(trial_summary(ok)), ""]
    if len(failed):
        lines += ["Failed trials:", ""]
        shown = failed[["trial_id", "error"]].head(MAX_FAILED_LISTED)
        lines += [markdown_table(shown), ""]
        if len(failed) > MAX_FAILED_LISTED:
            lines += [f"... and {len(failed) - MAX_FAILED_LISTED} more.", ""]
    lines += ["## Per-group relative drop (test, %)", ""]
    drops = group_drops(ok, groups)
    lines += [
        "`100 * (acc_base - acc) / acc_base` per group after fine-tuning."
        if drops is not None
        else "No per-group rows in the run.",
        "",
    ]
    if drops is not None:
        lines += [markdown_table(drops), ""]
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
