"""``--plan``: what a sweep will run and roughly how long, printed without running anything.

A sweep runs four phases in order (:mod:`tune_linfair.jobs`): **base** (one all-ReLU model
per seed), **linearize** (one model per method, budget, mask mitigation and seed), the
**search** or **grid** fine-tunes, and **diagnose** (the heavy per-group diagnostics). The
plan counts each phase's runs after the artifact cache (``STORAGE/cache``: a base or
linearized model whose ``meta.json`` is there is not built again), multiplies them by the
image passes of one run (:mod:`tune_linfair.workload`, which states the cost model) and
divides by a throughput, given (``--images-per-s``) or measured here in a few seconds:
``hours = image passes / images_per_s / 3600``. It starts no Ray and trains nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from tune_linfair import rundir
from tune_linfair.cache import read_meta
from tune_linfair.config import ExperimentConfig
from tune_linfair.errors import BudgetUnreachable, UserError
from tune_linfair.jobs import LinearizeJob, base_seeds, linearize_jobs
from tune_linfair.linearize.budget import resolve_budget
from tune_linfair.linearize.deepreduce import select_config
from tune_linfair.models import create_model, total_relus
from tune_linfair.spaces import SearchSpace
from tune_linfair.stages import artifact_key, in_cache
from tune_linfair.workload import (
    DataShape,
    base_passes,
    calibrate,
    data_shape,
    diagnose_passes,
    finetune_passes,
    hessian_bounded,
    linearize_passes,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The plan's options on the sweep's parser."""
    parser.add_argument(
        "--plan",
        action="store_true",
        help="print the phases, their runs after the cache, image passes and a time "
        "estimate; run nothing (exit 0)",
    )
    parser.add_argument(
        "--images-per-s",
        action="append",
        type=_rate,
        metavar="[NAME=]N",
        help="with --plan: throughput to estimate time with, e.g. 900 or gpu=5000 "
        "(repeatable; default: measured here in a few seconds)",
    )
    parser.add_argument(
        "--snl-epochs",
        type=_positive_int,
        help="with --plan: SNL epochs to assume per linearization (default: linearize.max_epochs, "
        "an upper bound)",
    )


def requested(args: argparse.Namespace) -> bool:
    """Whether the command asks for the plan; the plan's own options without ``--plan``
    are refused (they would be ignored)."""
    if not args.plan and (args.images_per_s or args.snl_epochs is not None):
        given = "--images-per-s" if args.images_per_s else "--snl-epochs"
        raise UserError(f"{given} only applies to --plan; add --plan or drop it")
    return args.plan


def _rate(text: str) -> tuple[str, float]:
    name, sep, value = text.rpartition("=")
    try:
        rate = float(value)
    except ValueError:
        rate = math.nan
    if not (math.isfinite(rate) and rate > 0) or (sep and not name.strip()):
        raise argparse.ArgumentTypeError(f"expected N or NAME=N with N images/s > 0, got {text!r}")
    return name.strip() or "given", rate


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


# -- the phases -----------------------------------------------------------------------------
@dataclass(frozen=True)
class PhaseRow:
    """One line of the plan: ``runs`` the sweep makes in ``phase`` (after the cache;
    ``upto``: at most that many), ``cached`` skipped because the cache holds them (None:
    no cache for this phase), image passes per run (``bound``: an upper bound)."""

    phase: str
    runs: int
    cached: int | None
    upto: bool
    per_run: float
    bound: bool
    note: str

    @property
    def passes(self) -> float:
        return self.runs * self.per_run


def _space_values(space: SearchSpace, key: str, objective: str) -> list:
    if objective == "grid" and key in space.grid:
        return list(space.grid[key])
    spec = space.search.get(key)
    if isinstance(spec, dict):
        return list(spec.get("choices", []))
    return [] if spec is None else [spec]


def phase_rows(
    space: SearchSpace,
    objective: str,
    trials: int,
    cache_dir: str | Path,
    shape: DataShape,
    *,
    diagnose: str = "pareto",
    snl_epochs: int | None = None,
    prebuild: bool = True,
) -> list[PhaseRow]:
    """The plan's rows: base, linearize (one row per method), the fine-tunes (``search``
    or ``grid``) and diagnose, counted after the cache in ``cache_dir``. Without
    ``prebuild`` (``--no-prebuild``) the trials build their models: a search asks for at
    most one linearized model per fine-tune, maybe not all of the finite set."""
    exp = space.experiment
    grid = objective == "grid"
    finetunes = len(space.grid_points()) if grid else trials * space.repeats
    rows = []

    seeds = base_seeds(space, objective)
    per_base = base_passes(exp, shape)
    hessian = hessian_bounded(exp.diagnostics)
    if seeds is None:
        rows.append(PhaseRow("base", finetunes, None, True, per_base, hessian, "on demand"))
    else:
        keys = [artifact_key(exp, s)[1] for s in seeds]
        have = sum(in_cache(exp, cache_dir, s) for s in seeds)
        note = f"seeds {_span(seeds)}" + ("" if prebuild else ", inside the trials (--no-prebuild)")
        rows.append(PhaseRow("base", len(keys) - have, have, False, per_base, hessian, note))

    model = create_model(
        exp.model.name, shape.num_classes, shape.input_shape, exp.model.width, exp.model.granularity
    )
    total = total_relus(model)
    jobs = linearize_jobs(space, objective)
    if jobs is None:
        methods = _space_values(space, "method", objective)
        per_run = max(linearize_passes(exp, shape, m, snl_epochs) for m in methods)
        note = "on demand inside the trials (a range in budget, seed or mask mitigation)"
        bound = "snl" in methods and snl_epochs is None
        rows.append(PhaseRow("linearize", finetunes, None, True, per_run, bound, note))
    else:
        for job in jobs:
            resolve_budget(job.budget, total)  # a budget above the model's total: one line
        for method in sorted({j.method for j in jobs}):
            mine = [j for j in jobs if j.method == method]
            rows.append(
                _linearize_row(exp, shape, method, mine, model, cache_dir, snl_epochs, prebuild)
            )
            if not grid and not prebuild:
                last = rows[-1]
                runs = min(last.runs, finetunes)
                rows[-1] = dataclasses.replace(last, runs=runs, upto=runs > 0)

    if grid:
        note = f"{finetunes} grid points"
    else:
        note = f"{trials} configurations x {space.repeats} seeds"
    per_ft = finetune_passes(exp, shape)
    rows.append(PhaseRow("grid" if grid else "search", finetunes, None, False, per_ft, False, note))

    per_diag = diagnose_passes(exp, shape)
    runs = 0 if diagnose == "none" else finetunes
    note = {
        "pareto": "the Pareto-optimal configurations' seeds: known after the search",
        "all": "every fine-tuned model",
        "none": "--diagnose none",
    }[diagnose]
    rows.append(PhaseRow("diagnose", runs, None, diagnose == "pareto", per_diag, hessian, note))
    return rows


def _linearize_row(
    exp: ExperimentConfig,
    shape: DataShape,
    method: str,
    jobs: list[LinearizeJob],
    model: torch.nn.Module,
    cache_dir: str | Path,
    snl_epochs: int | None,
    prebuild: bool,
) -> PhaseRow:
    """The row of ``method``'s linearize ``jobs``: those the cache lacks, less DeepReDuce
    budgets no configuration of ``model`` meets (their trials fail at once)."""
    note = ""
    if method == "snl":
        note = _snl_note(snl_epochs, cache_dir, {artifact_key(exp, j.seed)[1] for j in jobs})
    unmet = _unreachable(model, jobs) if method == "deepreduce" else []
    if unmet:
        note = f"budgets {', '.join(map(str, unmet))} unreachable: their trials fail at once"
        jobs = [j for j in jobs if j.budget not in unmet]
    if not prebuild:
        note = "; ".join(n for n in ("inside the trials (--no-prebuild)", note) if n)
    have = sum(in_cache(exp, cache_dir, j.seed, j) for j in jobs)
    per_run = linearize_passes(exp, shape, method, snl_epochs)
    bound = method == "snl" and snl_epochs is None
    return PhaseRow(f"linearize {method}", len(jobs) - have, have, False, per_run, bound, note)


def _unreachable(model: torch.nn.Module, jobs: list[LinearizeJob]) -> list:
    """The DeepReDuce budgets of ``jobs`` that no configuration of ``model`` meets."""
    unmet = []
    for budget in sorted({j.budget for j in jobs}):
        try:
            select_config(model, budget)
        except BudgetUnreachable:
            unmet.append(budget)
    return unmet


def _snl_note(snl_epochs: int | None, cache_dir: str | Path, base_keys: set[str]) -> str:
    """What the SNL row assumes; without ``--snl-epochs``, the epochs that SNL runs from
    the same base models already in the cache took, a better guess than the cap."""
    if snl_epochs is not None:
        return f"SNL at {snl_epochs} epochs (--snl-epochs)"
    epochs = []
    for path in Path(cache_dir).glob("linearized/*/meta.json"):
        meta = read_meta(path.parent) or {}
        if meta.get("method") == "snl" and meta.get("base_key") in base_keys:
            epochs.append(int(meta["log"]["epochs"]))
    if not epochs:
        return "SNL at max_epochs (upper bound)"
    took = f"{min(epochs)}-{max(epochs)}" if min(epochs) < max(epochs) else str(epochs[0])
    return (
        f"SNL at max_epochs (upper bound); {len(epochs)} cached SNL run(s) on these base "
        f"models took {took} epochs (--snl-epochs N to count N)"
    )


def _span(seeds: list[int]) -> str:
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}"
    return ", ".join(str(s) for s in seeds)


# -- output ---------------------------------------------------------------------------------
def _count(value: float) -> str:
    for factor, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= factor:
            return f"{value / factor:.3g} {unit}"
    return f"{value:.0f}"


def _rate_text(rate: float) -> str:
    return f"{rate:,.0f}" if rate >= 100 else f"{rate:.3g}"


def _hours(passes: float, rate: float) -> str:
    hours = passes / rate / 3600
    if hours == 0:
        return "0"
    return f"{hours:.2g}" if hours < 0.01 else f"{hours:.3g}" if hours < 1000 else f"{hours:,.0f}"


def format_plan(
    header: list[str], rows: list[PhaseRow], rates: list[tuple[str, float, str]]
) -> str:
    """The printed plan: ``header`` lines, the phase table with hours per device in
    ``rates`` (name, images/s, how obtained), the total, the formula."""

    def mark(flag: bool, text: str) -> str:
        return f"<= {text}" if flag else text

    names = [f"h {name}" for name, _, _ in rates]
    widths = [max(12, len(n) + 2) for n in names]
    head = f"{'phase':<22}{'runs':>9}{'cached':>8}{'passes/run':>14}{'image passes':>16}"
    lines = [*header, "", head + "".join(f"{n:>{w}}" for n, w in zip(names, widths))]
    total, total_bound = 0.0, False
    for r in rows:
        bound = r.bound or r.upto
        total += r.passes
        total_bound |= bound and r.passes > 0
        cached = "-" if r.cached is None else str(r.cached)
        line = (
            f"{r.phase:<22}{mark(r.upto, str(r.runs)):>9}{cached:>8}"
            f"{mark(r.bound, _count(r.per_run)):>14}{mark(bound and r.passes > 0, _count(r.passes)):>16}"
        )
        hours = [mark(bound and r.passes > 0, _hours(r.passes, rate)) for _, rate, _ in rates]
        lines.append(line + "".join(f"{h:>{w}}" for h, w in zip(hours, widths)))
        if r.note:
            lines.append(f"{'':<4}{r.note}")
    hours = [mark(total_bound, _hours(total, rate)) for _, rate, _ in rates]
    lines.append(
        f"{'total':<22}{'':>9}{'':>8}{'':>14}{mark(total_bound, _count(total)):>16}"
        + "".join(f"{h:>{w}}" for h, w in zip(hours, widths))
    )
    lines += [
        "",
        "hours = image passes / images_per_s / 3600, one device, runs one after another.",
        "1 image pass = one image's training step (forward + backward); a forward alone "
        "counts 1/3.",
        "<= : an upper bound (SNL stops at the budget, power iteration when it converges, "
        "diagnose runs on the Pareto set).",
    ]
    lines += [f"images/s on {name}: {_rate_text(rate)} ({how})" for name, rate, how in rates]
    return "\n".join(lines)


def print_plan(args: argparse.Namespace, space: SearchSpace, cuda: bool) -> None:
    """``--plan``: print what the sweep of ``args`` (resolved and validated by the sweep's
    command line) would run and an estimate of its time, measuring throughput on the CPU
    and, with ``cuda``, on the GPU; run nothing."""
    if args.resume:
        raise UserError("--plan plans a new sweep; drop --resume")
    exp = space.experiment
    exp = dataclasses.replace(exp, data=dataclasses.replace(exp.data, download=False))
    seeds = base_seeds(space, args.objective) or space.seeds or [0]
    shape = data_shape(exp, seeds[0])
    cache = rundir.locate(args.storage_path, args.run_dir, space.name, args.objective).cache
    trials = args.trials or space.trials
    diagnose = args.diagnose
    rows = phase_rows(
        space,
        args.objective,
        trials,
        cache,
        shape,
        diagnose=diagnose,
        snl_epochs=args.snl_epochs,
        prebuild=not args.no_prebuild,
    )
    if args.images_per_s:
        rates = [(name, rate, "given") for name, rate in args.images_per_s]
    else:
        rates = calibrate(exp, shape, max(1, int(args.cpus_per_trial)), cuda)
    header = [
        f"plan of space {space.name!r}, objective {args.objective}: nothing runs (no Ray, "
        "no training)",
        f"phases: base -> linearize -> {'grid' if args.objective == 'grid' else 'search'} "
        f"-> diagnose ({diagnose})",
        f"data {exp.data.name} ({shape.source}): train {shape.n_train:,}, val "
        f"{shape.n_val:,}, test {shape.n_test:,}; input {'x'.join(map(str, shape.input_shape))}, "
        f"{shape.num_classes} classes, {shape.num_groups} groups, augmentation {'on' if shape.augment else 'off'}",
        f"model {exp.model.name}; cache {cache}",
    ]
    print(format_plan(header, rows, rates), flush=True)
