"""Pareto front and hypervolume of a tune_linfair run, from its Parquet tables.

Usage::

    python analysis/pareto.py RUN_DIR [--out DIR] [--reference ACC DROP RELU]

Objectives (:data:`tune_linfair.trial.OBJECTIVES`, the search's ``--objective pareto``), on
validation: global accuracy (max), worst-group relative drop (min) and ReLU count (min).
Fronts are computed over **configurations**, on their means over seeds (the configs table,
:mod:`tune_linfair.aggregate`; computed from the trials when a run has none), among those
whose every seed ran ok: in 2-D (accuracy, drop) and 3-D (with ReLU count), over the whole
run and within each method. The table and the plot carry each mean's 95% interval.

Hypervolume (exact, :func:`tune_linfair.pareto.hypervolume`, moocore) is taken in
normalized, minimized units so that the three objectives weigh alike:

* error   = 1 - val_accuracy                      (accuracy in percent / 100, flipped)
* drop    = val_worst_group_drop / 100            (percent / 100)
* relu    = relu_count / R, R = the largest relu_total of the run's ok trials

The reference point is given in natural units as ``ACC DROP RELU`` = (accuracy %, drop %,
ReLU fraction of R), by default the worst corner ``0 100 1``, i.e. ``(1, 1, 1)`` normalized;
the 2-D volume uses its first two coordinates. With drops >= 0 both volumes lie in [0, 1].

Several seeds: each seed's ok trials form one point set; ``pareto.json`` gives the
hypervolume of each seed's set with its mean and 95% interval, and the median (50%)
attainment surface of the seeds' sets (``attainment.csv``), and Spearman's rank correlation
between validation and test means across configurations (does the search signal carry to
test data?).

Outputs in ``--out`` (default ``RUN/analysis/pareto``): ``pareto.json``, ``pareto.md``,
``pareto_set.csv`` (every configuration on some front, flags saying which, with intervals and
the per-seed trial ids), ``attainment.csv``, ``pareto_2d.png`` (accuracy vs worst-group
drop, interval bars) and ``hv_over_trials.png`` (hypervolume of the first k trials in order
of ``finished_at``; failed trials count as trials), each with the numbers it draws beside it
(``NAME.data.json``, :mod:`tune_linfair.plotdata`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from common import (
    as_float,
    default_out,
    load_ok_trials,
    markdown_table,
    parser,
    run_cli,
    run_dir_arg,
)

from tune_linfair import aggregate
from tune_linfair.aggregate import normalized_objectives
from tune_linfair.errors import UserError
from tune_linfair.pareto import hypervolume, pareto_mask
from tune_linfair.plotdata import save_figure

DEFAULT_REFERENCE = (0.0, 100.0, 1.0)
SHOWN = [f"{m}_{s}" for m in aggregate.METRICS for s in ("mean", "ci_low", "ci_high")]
TABLE_COLUMNS = [
    "config_id",
    *aggregate.PARAMS,
    "n_seeds",
    *SHOWN,
    "pareto_2d",
    "pareto_3d",
    "method_pareto_2d",
    "method_pareto_3d",
    "trial_ids",
]
MIN3 = [False, False, False]


def load_configs(run_dir: Path, trials: pd.DataFrame) -> pd.DataFrame:
    """The run's configs table, or the same aggregation of its trials when it has none."""
    try:
        return aggregate.load_configs(run_dir)
    except UserError:
        return aggregate.configs_table(trials)


def normalized_reference(reference: Sequence[float]) -> np.ndarray:
    """Reference (accuracy %, drop %, ReLU fraction) in the normalized minimization units."""
    acc, drop, relu = reference
    return np.array([1.0 - acc / 100.0, drop / 100.0, relu])


def relu_scale_of(ok: pd.DataFrame) -> float:
    """R: the largest relu_total of the ok trials (else the largest relu_count, else 1)."""
    for col in ("relu_total", "relu_count"):
        values = as_float(ok[col])
        if np.isfinite(values).any() and np.nanmax(values) > 0:
            return float(np.nanmax(values))
    return 1.0


def hv_over_trials(
    trials: pd.DataFrame, relu_scale: float, ref: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """2-D and 3-D hypervolume of the ok trials among the first k, for k = 1..len(trials).

    ``trials`` must be in ``finished_at`` order. The volume is recomputed only when the new
    trial enters the current front (otherwise it cannot change).
    """
    pts = normalized_objectives(trials, relu_scale)
    ok = (trials["status"] == "ok").fillna(False).to_numpy(dtype=bool)
    hv2 = np.zeros(len(trials))
    hv3 = np.zeros(len(trials))
    front2 = np.empty((0, 2))
    front3 = np.empty((0, 3))
    cur2 = cur3 = 0.0
    for k in range(len(trials)):
        p = pts[k]
        if ok[k] and not np.isnan(p).any():
            for dim in (2, 3):
                front = front2 if dim == 2 else front3
                cand = np.vstack([front, p[:dim]])
                mask = pareto_mask(cand, [False] * dim)
                if mask[-1]:
                    value = hypervolume(cand[mask], [False] * dim, ref[:dim])
                    if dim == 2:
                        front2, cur2 = cand[mask], value
                    else:
                        front3, cur3 = cand[mask], value
        hv2[k], hv3[k] = cur2, cur3
    return hv2, hv3


def analyse(run_dir: Path, out_dir: Path, reference: Sequence[float] = DEFAULT_REFERENCE) -> dict:
    """Compute fronts and hypervolumes, write every output into ``out_dir``; return the summary."""
    if len(reference) != 3:
        raise UserError(f"--reference needs 3 numbers (ACC DROP RELU), got {list(reference)}")
    trials, ok_trials = load_ok_trials(run_dir)
    scale = relu_scale_of(ok_trials)
    ref = normalized_reference(reference)
    configs = load_configs(run_dir, trials)
    ok = configs[configs["status"] == "ok"].reset_index(drop=True)
    pts = normalized_objectives(ok, scale, suffix="_mean")

    flags = pd.DataFrame(index=ok.index)
    flags["pareto_2d"] = pareto_mask(pts[:, :2], [False, False])
    flags["pareto_3d"] = pareto_mask(pts, MIN3)
    flags["method_pareto_2d"] = False
    flags["method_pareto_3d"] = False
    summary_methods: dict[str, dict] = {}
    for method, idx in ok.groupby(ok["method"].fillna("?"), sort=True).groups.items():
        sub = pts[ok.index.get_indexer(idx)]
        flags.loc[idx, "method_pareto_2d"] = pareto_mask(sub[:, :2], [False, False])
        flags.loc[idx, "method_pareto_3d"] = pareto_mask(sub, MIN3)
        summary_methods[str(method)] = {
            "n_ok": len(idx),
            "hypervolume_2d": hypervolume(sub[:, :2], [False, False], ref[:2]),
            "hypervolume_3d": hypervolume(sub, MIN3, ref),
            "pareto_3d": ok.loc[idx][flags.loc[idx, "method_pareto_3d"]]["config_id"].tolist(),
        }
    table = pd.concat([ok, flags], axis=1)
    table = table[flags.any(axis=1)][TABLE_COLUMNS]
    table = table.sort_values(["val_accuracy_mean", "config_id"], ascending=[False, True])

    out_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_dir / "pareto_set.csv", index=False)
    hv2, hv3 = hv_over_trials(trials, scale, ref)
    seeds = aggregate.seed_attainment(trials, scale)
    pd.DataFrame(seeds["median_attainment_surface"], columns=["error", "drop", "relu"]).to_csv(
        out_dir / "attainment.csv", index=False
    )
    summary = {
        "run_dir": str(run_dir),
        "objectives": {
            "val_accuracy": "max",
            "val_worst_group_drop": "min",
            "relu_count": "min",
        },
        "normalization": {
            "error": "1 - val_accuracy",
            "drop": "val_worst_group_drop / 100",
            "relu": f"relu_count / {scale:g} (largest relu_total of the ok trials)",
            "relu_scale": scale,
        },
        "reference": {
            "natural": {
                "val_accuracy_percent": reference[0],
                "val_worst_group_drop_percent": reference[1],
                "relu_fraction": reference[2],
            },
            "normalized": ref.tolist(),
        },
        "n_trials": len(trials),
        "n_configurations": len(configs),
        "n_ok": len(ok),
        "hypervolume_2d": hypervolume(pts[:, :2], [False, False], ref[:2]),
        "hypervolume_3d": hypervolume(pts, MIN3, ref),
        "pareto_2d": ok["config_id"][flags["pareto_2d"]].tolist(),
        "pareto_3d": ok["config_id"][flags["pareto_3d"]].tolist(),
        "per_method": summary_methods,
        "seeds": seeds,
        "validation_vs_test": aggregate.rank_agreement(configs),
        "hypervolume_over_trials": {"hv_2d": hv2.tolist(), "hv_3d": hv3.tolist()},
        "files": [
            "pareto.md",
            "pareto_set.csv",
            "attainment.csv",
            "pareto_2d.png",
            "hv_over_trials.png",
        ],
    }
    (out_dir / "pareto.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out_dir / "pareto.md").write_text(summary_markdown(summary, table))
    _plot_scatter(ok, flags, out_dir / "pareto_2d.png")
    _plot_hv(hv2, hv3, ref, out_dir / "hv_over_trials.png")
    return summary


def summary_markdown(summary: dict, table: pd.DataFrame) -> str:
    """Markdown: reference, normalization, hypervolumes overall and per method, front table."""
    nat = summary["reference"]["natural"]
    norm = summary["normalization"]
    seeds, agree = summary["seeds"], summary["validation_vs_test"]
    low, high = seeds["hypervolume_ci"]
    lines = [
        f"Objectives (validation): accuracy max, worst-group drop min, ReLU count min; on the "
        f"means of {summary['n_ok']} ok configurations of {summary['n_configurations']} "
        f"({summary['n_trials']} trials).",
        "",
        f"Validation ranks test (Spearman over configurations): worst-group drop "
        f"{agree['spearman_worst_group_drop']:.2f}, accuracy {agree['spearman_accuracy']:.2f}.",
        "",
        f"Seeds: hypervolume 3-D of each seed's trials {seeds['hypervolume_per_seed']}, mean "
        f"{seeds['hypervolume_mean']:.4f} (95% interval {low:.4f}-{high:.4f}); median "
        f"attainment surface: {len(seeds['median_attainment_surface'])} points "
        "(attainment.csv).",
        "",
        f"Hypervolume units: error = {norm['error']}, drop = {norm['drop']}, "
        f"relu = {norm['relu']}. Reference: accuracy {nat['val_accuracy_percent']:g} %, "
        f"drop {nat['val_worst_group_drop_percent']:g} %, ReLU fraction "
        f"{nat['relu_fraction']:g} = normalized {summary['reference']['normalized']}.",
        "",
        "| scope | ok configurations | HV 2-D (acc, drop) | HV 3-D (acc, drop, relu) | 3-D front size |",
        "| --- | --- | --- | --- | --- |",
        f"| all | {summary['n_ok']} | {summary['hypervolume_2d']:.4f} | "
        f"{summary['hypervolume_3d']:.4f} | {len(summary['pareto_3d'])} |",
    ]
    for method, m in summary["per_method"].items():
        lines.append(
            f"| {method} | {m['n_ok']} | {m['hypervolume_2d']:.4f} | "
            f"{m['hypervolume_3d']:.4f} | {len(m['pareto_3d'])} |"
        )
    front = table[table["pareto_3d"] | table["pareto_2d"]].drop(
        columns=["method_pareto_2d", "method_pareto_3d"]
    )
    lines += ["", "Pareto set (whole run; 2-D and/or 3-D front):", "", markdown_table(front), ""]
    return "\n".join(lines)


def _plot_scatter(ok: pd.DataFrame, flags: pd.DataFrame, path: Path) -> None:
    """Configurations' mean val accuracy (%) vs mean val worst-group drop (%) with 95%
    interval bars, one colour per method, the 2-D front traced."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    acc = 100 * as_float(ok["val_accuracy_mean"])
    drop = as_float(ok["val_worst_group_drop_mean"])
    acc_err = np.nan_to_num(acc - 100 * as_float(ok["val_accuracy_ci_low"]))
    drop_err = np.nan_to_num(drop - as_float(ok["val_worst_group_drop_ci_low"]))
    methods = ok["method"].fillna("?").to_numpy()
    for method in sorted(set(methods)):
        sel = methods == method
        ax.errorbar(drop[sel], acc[sel], xerr=drop_err[sel], yerr=acc_err[sel], fmt="o",
                    alpha=0.6, capsize=2, label=str(method))  # fmt: skip
    front = flags["pareto_2d"].to_numpy()
    order = np.argsort(drop[front])
    ax.plot(drop[front][order], acc[front][order], drawstyle="steps-post", color="k", lw=1,
            marker="s", mfc="none", ms=10, label="2-D front")  # fmt: skip
    ax.scatter(drop[flags["pareto_3d"].to_numpy()], acc[flags["pareto_3d"].to_numpy()],
               s=12, marker="x", color="k", label="3-D front")  # fmt: skip
    ax.set_xlabel("validation worst-group relative drop (%)  [lower is better]")
    ax.set_ylabel("validation accuracy (%)  [higher is better]")
    ax.set_title("Pareto front of configuration means (95% intervals over seeds)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)


def _plot_hv(hv2: np.ndarray, hv3: np.ndarray, ref: np.ndarray, path: Path) -> None:
    """Hypervolume of the first k trials (finished_at order) against k."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    k = np.arange(1, len(hv2) + 1)
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.plot(k, hv2, marker=".", label="2-D (accuracy, worst-group drop)")
    ax.plot(k, hv3, marker=".", label="3-D (+ ReLU count)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trials finished (in order of finished_at)")
    ax.set_ylabel("hypervolume (normalized units)")
    ax.set_title(f"Hypervolume over trials, reference {np.round(ref, 3).tolist()}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--out", type=Path, help="output directory (default RUN_DIR/analysis/pareto)")
    p.add_argument(
        "--reference",
        type=float,
        nargs=3,
        metavar=("ACC", "DROP", "RELU"),
        default=DEFAULT_REFERENCE,
        help="hypervolume reference in natural units: accuracy %%, worst-group drop %%, ReLU "
        "fraction of the largest model (default: the worst corner 0 100 1)",
    )
    args = p.parse_args(argv)
    run_dir = run_dir_arg(args.run_dir)
    out = args.out or default_out(run_dir, "pareto")
    summary = analyse(run_dir, out, args.reference)
    table = pd.read_csv(out / "pareto_set.csv")
    front = table[table["pareto_3d"] | table["pareto_2d"]]
    print(f"hypervolume 2-D {summary['hypervolume_2d']:.4f}, 3-D {summary['hypervolume_3d']:.4f} "
          f"(reference {list(args.reference)} -> {summary['reference']['normalized']})")  # fmt: skip
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(
            front[[c for c in TABLE_COLUMNS if not c.startswith("method_")]].to_string(index=False)
        )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
