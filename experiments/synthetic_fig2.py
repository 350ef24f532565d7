"""Paper Figure 2: an MLP with all ReLUs vs the same MLP with half its ReLUs linearized.

Das, Romanelli, Fioretto (ICML 2024), Sec. 4, Fig. 2: on 2-D data with a majority class and
a minority class separated by a non-linear boundary, an MLP trained from scratch with all
ReLUs gets 99.3% overall (majority 100.0%, minority 93.0%); the same MLP with 50% of its
ReLUs linearized gets 99.0% overall and 88.0% on the minority.

Protocol (ours), for each seed ``s``:

1. data: ``get_dataset("synthetic", seed=s, setting=SETTING)`` (see
   :mod:`tune_linfair.data.synthetic`; ``class_minority``, the paper's setting, by default);
2. from scratch, two models of the same architecture, ``create_model("mlp", 2, (2,),
   width)`` (3 hidden layers, ``3 * width`` linearizable ReLUs), built right after
   ``seed_everything(s)`` so both start from the same weights and see the same batch order:
   ``all_relu`` keeps every mask at 1; ``half_linear`` freezes, before training, a uniformly
   random subset of ``round(keep * total)`` masks at 1 and the rest at 0 (identity)
   with :func:`~tune_linfair.linearize.random_masks.random_linearize` seeded by ``s``;
   both trained by the project's one loop (:func:`tune_linfair.train.fit`): Adam, cosine
   schedule, cross entropy, keeping the epoch of best validation accuracy (never the test
   split);
3. the variant the rest of the paper studies: the trained ``all_relu`` MLP is linearized to
   ``keep`` of its ReLUs with SNL (Cho et al., ICML 2022; ``snl_kd``) or with a uniformly
   random mask (``random_kd``) by :func:`tune_linfair.linearize.linearize`, then fine-tuned
   by distillation from it (:func:`tune_linfair.finetune.finetune`, ``L = CE + T^2 KL``,
   T = 4, SGD with cosine schedule, selection on validation); the accuracy right after
   linearization (before fine-tuning) is kept too (``before_ft``);
4. test accuracy overall and per group.

Summary: mean over seeds and the 95% confidence interval of the mean,
``mean +- t_{0.975, n-1} * sd / sqrt(n)`` (Student t, ``scipy.stats.t``), for each model,
and the same for the paired per-seed difference ``arm - all_relu`` and for the excess loss
of the minority ``(maj_arm - maj_all) - (min_arm - min_all)`` (positive: the minority loses
more than the majority).

Capacity maps (``--map-widths`` x ``--map-keeps``, ``--map-seeds`` seeds, one per
``--map-arms``): for each width the all-ReLU MLP and, for each kept fraction, the masked MLP
trained from scratch as in step 2 (``scratch``) or the all-ReLU MLP linearized and distilled
as in step 3 (``snl_kd``, ``random_kd``); each cell is the mean excess minority loss with
its 95% interval. ``--theorem44`` adds the check of
:mod:`tune_linfair.metrics.theorem44` for the SNL and random arms.

Usage (the recorded run, docs/REPRODUCTION.md section 1; ~10 min on one CPU thread, ~4.5 min
with the default ``--map-arms scratch``)::

    python experiments/synthetic_fig2.py --seeds 20 --theorem44 \
        --map-arms scratch snl_kd random_kd --out docs/figures
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

from tune_linfair.data import GroupedDataset, get_dataset
from tune_linfair.data.synthetic import SETTINGS, boundary
from tune_linfair.finetune import FinetuneSettings, finetune
from tune_linfair.linearize import LinearizeSettings, linearize
from tune_linfair.linearize.budget import resolve_budget
from tune_linfair.linearize.random_masks import random_linearize
from tune_linfair.metrics.theorem44 import MASKS, path_check
from tune_linfair.models import count_relus, create_model, total_relus
from tune_linfair.models.activation import weight_parameters
from tune_linfair.plotdata import save_figure
from tune_linfair.train import Batch, NonFiniteLossError, evaluate, fit, seed_everything

ARMS = ("all_relu", "half_linear", "snl_kd", "random_kd")
LINEARIZED = ARMS[1:]
METRICS = ("global", "majority", "minority")
#: The paper's Figure 2 numbers (percent); the majority of the linearized MLP is not given.
PAPER = {
    "all_relu": {"global": 99.3, "majority": 100.0, "minority": 93.0},
    "half_linear": {"global": 99.0, "majority": None, "minority": 88.0},
}
MAP_ARMS = ("scratch", "snl_kd", "random_kd")
MAP_TITLES = {
    "scratch": "Trained from scratch",
    "snl_kd": "SNL + KD from the all-ReLU MLP",
    "random_kd": "Random masks + KD from the all-ReLU MLP",
}
NAMES = {
    "all_relu": "all ReLUs",
    "half_linear": "scratch, {lin}% linear",
    "snl_kd": "SNL {lin}% + KD",
    "random_kd": "random {lin}% + KD",
}


def get_args_parser() -> argparse.ArgumentParser:
    """Command-line options (defaults are the recorded run's, which added ``--theorem44``
    and ``--map-arms scratch snl_kd random_kd``)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=20, help="number of seeds 0..n-1")
    p.add_argument("--out", type=Path, default=Path("docs/figures"), help="output folder")
    p.add_argument("--setting", choices=SETTINGS, default="class_minority", help="data geometry")
    p.add_argument("--epochs", type=int, default=40, help="from-scratch training epochs")
    p.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate (from scratch)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--width", type=int, default=64, help="hidden units per MLP layer")
    p.add_argument("--keep", type=float, default=0.5, help="fraction of ReLUs kept")
    p.add_argument("--n-samples", type=int, default=2000, help="synthetic data set size")
    p.add_argument("--ft-epochs", type=int, default=20, help="KD fine-tuning epochs")
    p.add_argument("--ft-lr", type=float, default=1e-2, help="KD fine-tuning SGD lr")
    p.add_argument("--map-widths", type=int, nargs="*", default=[2, 4, 8, 16, 64])
    p.add_argument("--map-keeps", type=float, nargs="*", default=[0.5, 0.25, 0.1])
    p.add_argument("--map-seeds", type=int, default=20, help="seeds of the capacity map")
    p.add_argument(
        "--map-arms",
        nargs="*",
        choices=MAP_ARMS,
        default=["scratch"],
        help="capacity maps to draw: from scratch, or SNL / random masks + KD",
    )
    p.add_argument(
        "--theorem44",
        action="store_true",
        help="check Theorem 4.4 along the path base -> linearized (SNL and random arms)",
    )
    p.add_argument("--plot-seed", type=int, default=0, help="seed drawn in the figure")
    p.add_argument("--dpi", type=int, default=80)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    return p


def cross_entropy(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Mean cross entropy of the batch."""
    return F.cross_entropy(model(batch.x), batch.y)


def train_mlp(
    data: GroupedDataset,
    seed: int,
    keep: float,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    width: int,
) -> tuple[nn.Module, int]:
    """Train the MLP from scratch with a fraction ``keep`` of its ReLUs (1.0: all ReLUs).

    With ``keep < 1`` the masks are frozen before training: ``round(keep * total)`` entries
    chosen uniformly at random (seeded by ``seed``) stay ReLUs, the others are the identity.
    Returns the model (at its best validation epoch) and that epoch.
    """
    generator = seed_everything(seed)
    model = create_model("mlp", data.num_classes, data.input_shape, width=width)
    if keep < 1.0:
        random_linearize(model, resolve_budget(keep, total_relus(model)), seed=seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    result = fit(
        model,
        data.train,
        data.val,
        cross_entropy,
        optimizer,
        epochs=epochs,
        batch_size=batch_size,
        generator=generator,
        scheduler=scheduler,
    )
    return model, result.best_epoch


def linearize_and_distill(
    base: nn.Module,
    data: GroupedDataset,
    method: str,
    seed: int,
    keep: float,
    args: argparse.Namespace,
) -> tuple[nn.Module, dict[str, float]]:
    """Linearize a copy of ``base`` to ``keep`` with ``method`` (``snl`` or ``random``),
    then KD-fine-tune it from ``base``; return the student and its test metrics right after
    linearization. SNL constants: those of the ``synthetic`` search space (mask lr 0.01,
    c0 0.01, count checked every 5 steps, batch 64)."""
    student = copy.deepcopy(base)
    for _, weight in weight_parameters(student):  # finetune() leaves its teacher frozen
        weight.requires_grad_(True)
    settings = LinearizeSettings(snl_mask_lr=0.01, c0=0.01, check_every=5, batch_size=64)
    linearize(method, student, base, data, keep, settings=settings, seed=seed)
    before = test_metrics(student, data)
    ft = FinetuneSettings(epochs=args.ft_epochs, lr=args.ft_lr, batch_size=args.batch_size)
    finetune(student, base, data, ft, seed=seed)
    return student, before


def test_metrics(model: nn.Module, data: GroupedDataset) -> dict[str, float]:
    """Test accuracy (percent) overall and of each group."""
    result = evaluate(model, data.test)
    majority, minority = result.group_accuracy(data.num_groups)
    return {"global": result.accuracy(), "majority": majority, "minority": minority}


def _arm_record(model: nn.Module, data: GroupedDataset, start: float) -> dict:
    return {
        **test_metrics(model, data),
        "relus": count_relus(model),
        "relus_total": total_relus(model),
        "time_s": time.time() - start,
    }


def run_seed(
    seed: int, args: argparse.Namespace
) -> tuple[dict, GroupedDataset, dict[str, nn.Module]]:
    """Every arm on seed ``seed``: the per-seed record, the data and the models."""
    data = get_dataset("synthetic", seed=seed, n_samples=args.n_samples, setting=args.setting)
    record: dict = {"seed": seed}
    models: dict[str, nn.Module] = {}
    hyper = dict(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, width=args.width)
    for arm, keep in (("all_relu", 1.0), ("half_linear", args.keep)):
        start = time.time()
        models[arm], best_epoch = train_mlp(data, seed, keep, **hyper)
        record[arm] = {**_arm_record(models[arm], data, start), "best_epoch": best_epoch}
    for arm, method in (("snl_kd", "snl"), ("random_kd", "random")):
        start = time.time()
        try:
            models[arm], before = linearize_and_distill(
                models["all_relu"], data, method, seed, args.keep, args
            )
        except NonFiniteLossError:  # a diverged fine-tune is an outcome: NaN, counted
            models.pop(arm, None)
            nan = {m: math.nan for m in METRICS}
            record[arm] = {**nan, "diverged": True, "before_ft": nan}
            continue
        record[arm] = {**_arm_record(models[arm], data, start), "before_ft": before}
        if args.theorem44:
            record[arm]["theorem44"] = path_check(
                models["all_relu"], models[arm], data.test, data.num_groups, seed=seed
            )
    return record, data, models


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of its ``level`` confidence interval,
    ``t_{(1+level)/2, n-1} * sd / sqrt(n)`` (sample sd, ddof 1); NaN half-width for n < 2.
    NaN values (runs whose fine-tune diverged) are left out."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if len(x) < 2:
        return float(x.mean()) if len(x) else math.nan, math.nan
    half = stats.t.ppf((1 + level) / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean()), float(half)


def excess_minority_loss(arm: dict, base: dict) -> float:
    """``(maj_arm - maj_base) - (min_arm - min_base)``: how many points more the minority
    loses than the majority (positive: the minority loses more)."""
    return (arm["majority"] - base["majority"]) - (arm["minority"] - base["minority"])


def summarize(records: Sequence[dict]) -> dict[str, dict[str, tuple[float, float]]]:
    """Mean and 95% CI half-width of every metric of every arm (keys ``ARMS``), of the paired
    difference ``arm - all_relu`` (keys ``diff_<arm>``, with ``excess``: the excess minority
    loss) and of the linearized arms before fine-tuning (keys ``<arm>_before_ft``)."""
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for arm in ARMS:
        out[arm] = {m: mean_ci([r[arm][m] for r in records]) for m in METRICS}
    for arm in LINEARIZED:
        diff = {m: mean_ci([r[arm][m] - r["all_relu"][m] for r in records]) for m in METRICS}
        diff["excess"] = mean_ci([excess_minority_loss(r[arm], r["all_relu"]) for r in records])
        out[f"diff_{arm}"] = diff
    for arm in ("snl_kd", "random_kd"):
        before = [r[arm]["before_ft"] for r in records]
        out[f"{arm}_before_ft"] = {m: mean_ci([b[m] for b in before]) for m in METRICS}
        out[f"{arm}_before_ft"]["excess"] = mean_ci(
            [excess_minority_loss(b, r["all_relu"]) for b, r in zip(before, records)]
        )
    return out


def summarize_theorem44(records: Sequence[dict]) -> list[dict]:
    """Per (arm, masks, group) over seeds: the share of seeds where the bound holds on the
    whole path, the median first ``t`` where it fails (over the seeds where it does), the
    median share of the bound used ``E(t) / B(t)`` at the first ``t > 0`` and at ``t = 1``,
    and the median ``D``."""
    rows = []
    for arm in ("snl_kd", "random_kd"):
        checks = [r[arm]["theorem44"] for r in records if "theorem44" in r[arm]]
        if not checks:
            continue
        for masks in MASKS:
            for a, group in enumerate(("majority", "minority")):
                cells = [c["groups"][a][masks] for c in checks]
                first = np.array([c["first_violation"] for c in cells], dtype=float)
                rows.append(
                    {
                        "arm": arm,
                        "masks": masks,
                        "group": group,
                        "n": len(cells),
                        "share_holds": float(np.mean(np.isnan(first))),
                        "median_first_violation": float(np.median(first[~np.isnan(first)]))
                        if (~np.isnan(first)).any()
                        else math.nan,
                        "median_used_first": float(np.median([c["used_first"] for c in cells])),
                        "median_used_at_1": float(np.median([c["used_at_1"] for c in cells])),
                        "median_D": float(np.median([c["D"] for c in checks])),
                    }
                )
    return rows


def format_theorem44(rows: list[dict]) -> str:
    """Markdown table of :func:`summarize_theorem44`."""
    lines = [
        "| arm | masks along the path | group | seeds where the bound holds for all t "
        "| median first t where it fails | median E/B at t = 0.05 | median E/B at t = 1 "
        "| median D |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['arm']} | {r['masks']} | {r['group']} | {r['share_holds'] * r['n']:.0f}/{r['n']} "
            f"| {r['median_first_violation']:.2f} | {r['median_used_first']:.3g} "
            f"| {r['median_used_at_1']:.3g} "
            f"| {r['median_D']:.2f} |"
        )
    return "\n".join(lines)


def _fmt(mean: float, half: float) -> str:
    return f"{mean:.1f}" if math.isnan(half) else f"{mean:.1f} ± {half:.1f}"


def _paper_cells(key: str, keep: float) -> list[str]:
    """The paper's numbers for a row (only for the from-scratch arms at ``keep == 0.5``)."""
    if keep != 0.5 or key not in ("all_relu", "half_linear", "diff_half_linear"):
        return ["–"] * len(METRICS)
    if key in PAPER:
        return ["–" if PAPER[key][m] is None else f"{PAPER[key][m]:.1f}" for m in METRICS]
    half, full = PAPER["half_linear"], PAPER["all_relu"]
    return ["–" if half[m] is None else f"{half[m] - full[m]:+.1f}" for m in METRICS]


def format_table(summary: dict, n_seeds: int, keep: float) -> str:
    """Markdown table: ours (mean ± 95% CI over seeds) next to the paper's numbers (shown
    only for the from-scratch arms at ``keep == 0.5``, the paper's setting); the last
    column is the excess minority loss of the paired differences."""
    lin = f"{100 * (1 - keep):.0f}"
    lines = [
        f"| model | global (n={n_seeds}) | majority | minority | excess minority loss "
        "| global (paper) | majority (paper) | minority (paper) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    rows = [(arm, NAMES[arm].format(lin=lin)) for arm in ARMS]
    rows += [
        (f"{arm}_before_ft", NAMES[arm].format(lin=lin).replace(" + KD", ", before KD"))
        for arm in ("snl_kd", "random_kd")
    ]
    rows += [(f"diff_{arm}", f"Δ {NAMES[arm].format(lin=lin)} − all") for arm in LINEARIZED]
    for key, name in rows:
        ours = [_fmt(*summary[key][m]) for m in METRICS]
        excess = _fmt(*summary[key]["excess"]) if "excess" in summary[key] else "–"
        lines.append(f"| {name} | " + " | ".join([*ours, excess, *_paper_cells(key, keep)]) + " |")
    return "\n".join(lines)


def _map_model(
    arm: str,
    data: GroupedDataset,
    seed: int,
    keep: float,
    base: nn.Module,
    args: argparse.Namespace,
) -> nn.Module:
    """The linearized MLP of one capacity-map cell: trained from scratch with ``keep`` of its
    ReLUs (``scratch``, same init as ``base``), or ``base`` linearized by SNL / random masks
    and KD-fine-tuned (``snl_kd``, ``random_kd``)."""
    if arm == "scratch":
        width = base.head.in_features
        hyper = dict(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, width=width)
        return train_mlp(data, seed, keep, **hyper)[0]
    method = "snl" if arm == "snl_kd" else "random"
    return linearize_and_distill(base, data, method, seed, keep, args)[0]


def capacity_map(args: argparse.Namespace) -> dict[str, list[dict]]:
    """Excess minority loss per (width, kept fraction), for each arm in ``args.map_arms``.

    For each seed in ``range(args.map_seeds)`` and width: the all-ReLU MLP, then one
    linearized MLP per kept fraction and arm (:func:`_map_model`); each cell holds the
    per-seed values and the mean ± 95% CI of the excess minority loss and of both groups'
    differences.
    """
    per_cell: dict[tuple[str, int, float], list[dict]] = {}
    hyper = dict(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size)
    for seed in range(args.map_seeds):
        data = get_dataset("synthetic", seed=seed, n_samples=args.n_samples, setting=args.setting)
        for width in args.map_widths:
            base_model, _ = train_mlp(data, seed, 1.0, width=width, **hyper)
            base = test_metrics(base_model, data)
            for arm in args.map_arms:
                for keep in args.map_keeps:
                    row = {"seed": seed, "all_relu": base, "diverged": False}
                    try:
                        model = _map_model(arm, data, seed, keep, base_model, args)
                        row.update(masked=test_metrics(model, data), relus=count_relus(model))
                    except NonFiniteLossError:  # a diverged fine-tune is an outcome, kept
                        row.update(masked=None, diverged=True)
                    per_cell.setdefault((arm, width, keep), []).append(row)
    maps: dict[str, list[dict]] = {arm: [] for arm in args.map_arms}
    for (arm, width, keep), rows in per_cell.items():
        maps[arm].append(_cell(width, keep, rows))
    return maps


def _cell(width: int, keep: float, rows: list[dict]) -> dict:
    """One capacity-map cell from its per-seed rows; seeds whose fine-tune diverged (NaN
    loss) are counted in ``n_diverged`` and left out of the means."""
    all_rows, rows = rows, [r for r in rows if not r["diverged"]]
    return {
        "width": width,
        "keep": keep,
        "n": len(rows),
        "n_diverged": len(all_rows) - len(rows),
        "relus": rows[0]["relus"] if rows else math.nan,
        "relus_total": 3 * width,
        "excess": mean_ci([excess_minority_loss(r["masked"], r["all_relu"]) for r in rows]),
        "minority_diff": mean_ci(
            [r["masked"]["minority"] - r["all_relu"]["minority"] for r in rows]
        ),
        "majority_diff": mean_ci(
            [r["masked"]["majority"] - r["all_relu"]["majority"] for r in rows]
        ),
        "all_relu_minority": mean_ci([r["all_relu"]["minority"] for r in all_rows]),
        "per_seed": all_rows,
    }


def plot_capacity_map(cells: list[dict], arm: str, n_seeds: int, path: Path, dpi: int) -> None:
    """Heat map of the mean excess minority loss (points) over width x kept fraction; each
    cell is annotated with mean ± 95% CI, and starred where the interval excludes 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    widths = sorted({c["width"] for c in cells})
    keeps = sorted({c["keep"] for c in cells}, reverse=True)
    grid = np.full((len(widths), len(keeps)), np.nan)
    fig, ax = plt.subplots(figsize=(1.6 * len(keeps) + 2.2, 0.75 * len(widths) + 1.6))
    for c in cells:
        i, j = widths.index(c["width"]), keeps.index(c["keep"])
        mean, half = c["excess"]
        grid[i, j] = mean
        star = "*" if not math.isnan(half) and abs(mean) > half else ""
        diverged = f", {c['n_diverged']} div." if c["n_diverged"] else ""
        label = f"{mean:+.1f}{star}\n±{half:.1f}\n({c['relus']} ReLUs{diverged})"
        ax.text(j, i, label, ha="center", va="center", fontsize=7)
    lim = max(1.0, float(np.nanmax(np.abs(grid))))
    im = ax.imshow(grid, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xticks(range(len(keeps)), [f"{k:g}" for k in keeps])
    ax.set_yticks(range(len(widths)), [f"{w} ({3 * w})" for w in widths])
    ax.set_xlabel("fraction of ReLUs kept")
    ax.set_ylabel("MLP width (total ReLUs)")
    ax.set_title(
        f"{MAP_TITLES[arm]}: excess minority loss, points\n"
        f"(n={n_seeds} seeds; red: the minority loses more; * 95% interval excludes 0)",
        fontsize=9,
    )
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def _to_original(data: GroupedDataset, x: torch.Tensor) -> torch.Tensor:
    """Standardized inputs back to the generator's coordinates."""
    norm = data.info["normalization"]
    mean = torch.as_tensor(norm["mean"], dtype=x.dtype).view(1, -1)
    std = torch.as_tensor(norm["std"], dtype=x.dtype).view(1, -1)
    return x * std + mean


def plot_regions(
    data: GroupedDataset, models: dict[str, nn.Module], record: dict, path: Path, dpi: int
) -> None:
    """One panel per arm: predicted class regions in the generator's coordinates, the true
    boundary (dashed), and the training points coloured by class, majority as small dots and
    minority as larger outlined triangles (as the paper's Fig. 2)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    norm = data.info["normalization"]
    mean = torch.as_tensor(norm["mean"]).view(1, -1)
    std = torch.as_tensor(norm["std"]).view(1, -1)
    g1, g2 = torch.meshgrid(
        torch.linspace(-4.2, 4.2, 300), torch.linspace(-3.3, 3.8, 260), indexing="xy"
    )
    grid = torch.stack([g1.flatten(), g2.flatten()], dim=1)
    xs = _to_original(data, data.train.x)
    colors = ("#3b6fb6", "#d1495b")
    fig, axes = plt.subplots(2, 2, figsize=(10, 8), sharex=True, sharey=True)
    for ax, arm in zip(axes.flat, ARMS):
        if arm not in models:  # its fine-tune diverged
            ax.set_title(f"{arm}: fine-tune diverged", fontsize=9)
            continue
        model = models[arm].eval()
        with torch.no_grad():
            pred = model((grid - mean) / std).argmax(1).reshape(g1.shape)
        ax.contourf(g1, g2, pred, levels=[-0.5, 0.5, 1.5], cmap=ListedColormap(colors), alpha=0.18)
        t = torch.linspace(-4.2, 4.2, 800)
        ax.plot(t, boundary(t), "k--", lw=0.8)
        for grp, style in ((0, dict(marker=".", s=6)), (1, dict(marker="^", s=22))):
            sel = data.train.g == grp
            c = [colors[int(v)] for v in data.train.y[sel]]
            edge = dict(edgecolors="k", linewidths=0.4) if grp else dict(linewidths=0)
            ax.scatter(xs[sel, 0], xs[sel, 1], c=c, alpha=0.9, **style, **edge)
        r = record[arm]
        ax.set_title(
            f"{arm} ({r['relus']}/{r['relus_total']} ReLUs)\n"
            f"test: global {r['global']:.1f}%, majority {r['majority']:.1f}%, "
            f"minority {r['minority']:.1f}%",
            fontsize=9,
        )
        ax.set_xlim(-4.2, 4.2)
        ax.set_ylim(-3.3, 3.8)
    for ax in axes[1]:
        ax.set_xlabel("x1")
    for ax in axes[:, 0]:
        ax.set_ylabel("x2")
    handles = [
        plt.Line2D([], [], ls="", marker=".", color="gray", label="majority"),
        plt.Line2D([], [], ls="", marker="^", color="gray", mec="k", label="minority"),
        plt.Line2D([], [], ls="--", color="k", label="true boundary"),
    ]
    axes[0, 1].legend(handles=handles, loc="lower right", fontsize=8)
    fig.suptitle(
        f"Synthetic data ({data.info['setting']}), seed {record['seed']} (colour = class)",
        fontsize=10,
    )
    fig.tight_layout()
    save_figure(fig, path, dpi=dpi)  # and the plotted numbers beside it (NAME.data.json)
    plt.close(fig)


def _json_summary(summary: dict) -> dict:
    return {k: {m: list(v) for m, v in d.items()} for k, d in summary.items()}


def main(argv: Sequence[str] | None = None) -> dict:
    """Run every seed and the capacity map, print the tables, write the figures and JSON."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = get_args_parser().parse_args(argv)
    if args.seeds < 1 or args.map_seeds < 0:
        raise SystemExit(
            f"--seeds must be >= 1 and --map-seeds >= 0, got {args.seeds}, {args.map_seeds}"
        )
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    records = []
    start = time.time()
    for seed in range(args.seeds):
        record, data, models = run_seed(seed, args)
        records.append(record)
        line = "  ".join(
            f"{arm} {record[arm]['majority']:.1f}/{record[arm]['minority']:.1f}" for arm in ARMS
        )
        print(f"seed {seed}: {line}  (majority/minority, test %)", flush=True)
        if seed == args.plot_seed:
            plot_regions(data, models, record, args.out / "synthetic_fig2.png", args.dpi)
    summary = summarize(records)
    table = format_table(summary, len(records), args.keep)
    print(table, flush=True)
    for arm in ("snl_kd", "random_kd"):
        diverged = sum(bool(r[arm].get("diverged")) for r in records)
        if diverged:
            print(f"{arm}: KD fine-tune diverged (NaN loss) on {diverged} of {len(records)} seeds")
    maps = capacity_map(args) if args.map_seeds and args.map_widths and args.map_keeps else {}
    for arm, cells in maps.items():
        name = (
            "synthetic_fig2_capacity.png"
            if arm == "scratch"
            else f"synthetic_fig2_capacity_{arm}.png"
        )
        plot_capacity_map(cells, arm, args.map_seeds, args.out / name, args.dpi)
        for c in cells:
            print(
                f"capacity {arm} width {c['width']} keep {c['keep']:g} ({c['relus']} ReLUs): "
                f"excess minority loss {_fmt(*c['excess'])}, "
                f"minority {_fmt(*c['minority_diff'])}, majority {_fmt(*c['majority_diff'])}, "
                f"n {c['n']} ({c['n_diverged']} diverged)",
                flush=True,
            )
    theorem44 = summarize_theorem44(records)
    if theorem44:
        print(format_theorem44(theorem44), flush=True)
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    payload = {
        "command": " ".join(["python experiments/synthetic_fig2.py", *argv]),
        "config": config,
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "wall_time_s": time.time() - start,
        "paper": PAPER,
        "per_seed": records,
        "summary": _json_summary(summary),
        "table": table,
        "capacity_map": maps,
        "theorem44": theorem44,
    }
    (args.out / "synthetic_fig2.json").write_text(json.dumps(payload, indent=2))
    return payload


if __name__ == "__main__":
    main()
