"""Benchmark: a sweep's cost with and without the artifact cache, and how it grows.

A sweep of N trials over K distinct ReLU budgets is run as N direct calls of
:func:`tune_linfair.stages.run_trial` in this process (no Ray: the cache lives in
``stages.py``, and Ray's per-trial cost is measured by ``orchestration_overhead.py``), on the
default space (``digits``, ``resnet_mini``, SNL, seed 0), one torch thread (as a trial with
``--cpus-per-trial 1``):

- **cached**: every trial shares one cache directory, so the sweep trains the base once and
  linearizes once per budget: cost ~ ``B + K * L + N * F``;
- **uncached**: every trial gets a fresh cache directory (same code path, nothing to reuse),
  so every trial trains the base and linearizes: cost ~ ``N * (B + L + F)``.

``B`` = base training, ``L`` = SNL to one budget, ``F`` = fine-tuning + evaluation + the
space's per-group diagnostics (gradient norms, Hessian eigenvalues, margins) + the trial's
checkpoint (Parquet rows are written by ``search_trial``, not timed here).
Trial ``i`` takes budget ``BUDGETS[i % K]`` and fine-tuning variant ``i // K`` (mitigation
none / lagrangian mu 0.1 / lagrangian mu 0.3 / accuracy_gap, each at lr 0.01 and 0.003), the
way a search revisits budgets with new mu and lr.

Two parts:

1. **headline** (skipped with ``--quick``): N=16, K=4 with the default space's own settings
   (base 15 epochs, fine-tuning 8 epochs), cached and uncached interleaved, ``--repeats``
   times; the ratio uncached / cached has a target of at least 3x;
2. **growth**: N in {8, 16} x K in {2, 4} with small epochs (base 5, fine-tuning 2), cached and
   uncached each (quick: N in {4, 8} x K in {1, 2}, base 3, fine-tuning 1); a least-squares
   fit ``cached = a + b * K + c * N`` gives the cost of one more budget (b) and of one more
   trial (c), to compare with an uncached trial's cost.

Run::

    python bench/cache_growth.py            # ~15-25 min on a loaded 2-core CPU
    python bench/cache_growth.py --quick    # ~4 min
    python bench/cache_growth.py --skip-growth --repeats 0 --profile   # cProfile one cached trial
    python bench/cache_growth.py --skip-growth --set diagnostics.hessian=false

Prints tables; appends a record to ``bench/results/cache_growth[-quick].jsonl``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import fmt_summary, loadavg, record, summary, table, uptime

from tune_linfair.spaces import load_space
from tune_linfair.stages import load_data, run_trial

BUDGETS = (0.5, 0.2, 0.1, 0.05)
VARIANTS = [
    {"mitigation": m, **extra, "lr": lr}
    for lr in (0.01, 0.003)
    for m, extra in (
        ("none", {}),
        ("lagrangian", {"mu": 0.1}),
        ("lagrangian", {"mu": 0.3}),
        ("accuracy_gap", {"epsilon": 0.0}),
    )
]


def trial_params(n: int, k: int) -> list[dict]:
    """N trials over the first K budgets: trial i at budget i % K, variant i // K."""
    if k > len(BUDGETS) or n < k or n > k * len(VARIANTS):
        raise ValueError(f"need K <= {len(BUDGETS)} and K <= N <= {len(VARIANTS)} * K")
    return [
        {"method": "snl", "budget": BUDGETS[i % k], "seed": 0, **VARIANTS[i // k]} for i in range(n)
    ]


def sweep(exp, n: int, k: int, cached: bool, work: Path) -> dict:
    """Run the N-trial sweep; return its wall time, per-trial times, artifacts computed."""
    root = Path(tempfile.mkdtemp(prefix=f"{'c' if cached else 'u'}-n{n}-k{k}-", dir=work))
    times, bases, lins = [], 0, 0
    load = loadavg()
    start = time.perf_counter()
    for i, params in enumerate(trial_params(n, k)):
        cache = root / ("cache" if cached else f"cache{i}")
        t0 = time.perf_counter()
        outcome = run_trial(exp, params, cache, root / f"trial{i}")
        times.append(time.perf_counter() - t0)
        bases += outcome.base_computed
        lins += outcome.linearized_computed
    total = time.perf_counter() - start
    shutil.rmtree(root, ignore_errors=True)
    return {
        "n": n,
        "k": k,
        "cached": cached,
        "seconds": total,
        "trial_seconds": times,
        "bases_computed": bases,
        "linearized_computed": lins,
        "load_before": load,
        "load_after": loadavg(),
    }


PROFILED = {
    "finetune": ("finetune/__init__.py", "finetune"),
    "  per-group diagnostics (val + test)": ("stages.py", "_diagnostics"),
    "    Hessian top eigenvalues (test)": ("metrics/hessian.py", "group_hessian_top_eigenvalues"),
    "    gradient norms (test)": ("metrics/gradients.py", "group_gradient_norms"),
    "    geometric boundary distance": ("metrics/boundary.py", "geometric_distance"),
    "load base + linearized checkpoints": ("stages.py", "load"),
    "save checkpoint": ("models/checkpoint.py", "save_checkpoint"),
}


def profile_trial(exp, work: Path) -> dict[str, float]:
    """cProfile of one cached trial (base and linearized model already in the cache):
    cumulative seconds of its parts, and the whole trial under ``run_trial``."""
    import cProfile
    import pstats

    cache = work / "profile-cache"
    params = trial_params(1, 1)[0]
    run_trial(exp, params, cache, work / "profile-0")  # fills the cache
    prof = cProfile.Profile()
    prof.enable()
    run_trial(exp, params, cache, work / "profile-1")
    prof.disable()
    stats = pstats.Stats(prof).stats
    out = {}
    for label, (file, name) in {
        "trial (run_trial)": ("stages.py", "run_trial"),
        **PROFILED,
    }.items():
        out[label] = sum(v[3] for (f, _, n), v in stats.items() if n == name and f.endswith(file))
    return out


def pair(exp, n: int, k: int, work: Path, cached_first: bool) -> tuple[dict, dict]:
    order = (True, False) if cached_first else (False, True)
    runs = {c: sweep(exp, n, k, c, work) for c in order}
    c, u = runs[True], runs[False]
    print(
        f"N={n:2d} K={k}: cached {c['seconds']:6.1f} s ({c['bases_computed']} base, "
        f"{c['linearized_computed']} linearized), uncached {u['seconds']:6.1f} s "
        f"({u['bases_computed']} base, {u['linearized_computed']} linearized), "
        f"ratio {u['seconds'] / c['seconds']:.2f}x, load {c['load_before']} -> {u['load_after']}",
        flush=True,
    )
    return c, u


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small grid, no headline")
    parser.add_argument("--repeats", type=int, default=2, help="headline repeats (default 2)")
    parser.add_argument("--skip-headline", action="store_true")
    parser.add_argument("--skip-growth", action="store_true")
    parser.add_argument(
        "--profile", action="store_true", help="cProfile one cached trial of the headline space"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override the default space for the headline, as the CLI's --set "
        "(e.g. diagnostics.hessian=false)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(uptime(), flush=True)
    payload: dict = {}

    with tempfile.TemporaryDirectory(prefix="bench-cache-") as tmp:
        work = Path(tmp)
        if not (args.quick or args.skip_headline):
            exp = load_space("default", args.set).experiment
            load_data(exp, 0)  # warm the per-process data cache outside the timings
            print(
                f"headline: N=16, K=4, default space (base {exp.base.epochs} epochs, "
                f"fine-tuning {exp.finetune.epochs} epochs){' with ' if args.set else ''}"
                f"{' '.join(args.set)}",
                flush=True,
            )
            if args.profile:
                parts = profile_trial(exp, work)
                whole = parts["trial (run_trial)"]
                print(
                    table(
                        [[k, f"{v:.2f}", f"{100 * v / whole:.0f}%"] for k, v in parts.items()],
                        ["one cached trial, cProfile", "cumulative s", "share"],
                    ),
                    flush=True,
                )
                payload["profile_cached_trial_s"] = parts
            if args.repeats > 0:
                runs = [
                    pair(exp, 16, 4, work, cached_first=r % 2 == 0) for r in range(args.repeats)
                ]
                ratios = [u["seconds"] / c["seconds"] for c, u in runs]
                rows = [
                    [r, f"{c['seconds']:.1f}", f"{u['seconds']:.1f}", f"{rt:.2f}x"]
                    for r, ((c, u), rt) in enumerate(zip(runs, ratios))
                ]
                print(table(rows, ["repeat", "cached s", "uncached s", "uncached / cached"]))
                print(f"headline ratio: {fmt_summary(ratios, 2, 'x')}; target >= 3x")
                payload["headline"] = {
                    "n": 16,
                    "k": 4,
                    "settings": {
                        "base_epochs": exp.base.epochs,
                        "finetune_epochs": exp.finetune.epochs,
                        "overrides": args.set,
                    },
                    "runs": [{"cached": c, "uncached": u} for c, u in runs],
                    "ratio": summary(ratios),
                }

        if not args.skip_growth:
            base_epochs, ft_epochs = (3, 1) if args.quick else (5, 2)
            ns, ks = ((4, 8), (1, 2)) if args.quick else ((8, 16), (2, 4))
            exp = load_space(
                "default", [f"base.epochs={base_epochs}", f"finetune.epochs={ft_epochs}"]
            ).experiment
            load_data(exp, 0)
            print(
                f"\ngrowth: N in {ns} x K in {ks}, base {base_epochs} epochs, fine-tuning "
                f"{ft_epochs} epochs",
                flush=True,
            )
            grid = [(n, k) for k in ks for n in ns]
            runs = [pair(exp, n, k, work, cached_first=i % 2 == 0) for i, (n, k) in enumerate(grid)]
            rows = []
            for c, u in runs:
                rows.append(
                    [
                        c["n"],
                        c["k"],
                        f"{c['seconds']:.1f}",
                        f"{c['bases_computed']}+{c['linearized_computed']}",
                        f"{u['seconds']:.1f}",
                        f"{u['bases_computed']}+{u['linearized_computed']}",
                        f"{u['seconds'] / c['seconds']:.2f}x",
                    ]
                )
            print(
                table(
                    rows,
                    [
                        "N",
                        "K",
                        "cached s",
                        "computed (base+lin)",
                        "uncached s",
                        "computed (base+lin)",
                        "ratio",
                    ],
                )
            )
            design = np.array([[1.0, c["k"], c["n"]] for c, _ in runs])
            cost = np.array([c["seconds"] for c, _ in runs])
            (a, b, cn), *_ = np.linalg.lstsq(design, cost, rcond=None)
            unc_trial = [t for _, u in runs for t in u["trial_seconds"]]
            print(
                f"cached fit: {a:.1f} s + {b:.1f} s per budget + {cn:.1f} s per trial; "
                f"an uncached trial costs {fmt_summary(unc_trial, 1, ' s')}"
            )
            payload["growth"] = {
                "settings": {"base_epochs": base_epochs, "finetune_epochs": ft_epochs},
                "runs": [{"cached": c, "uncached": u} for c, u in runs],
                "fit": {"intercept_s": a, "per_budget_s": b, "per_trial_s": cn},
                "uncached_trial_s": summary(unc_trial),
            }
    print(uptime())
    path = record("cache_growth", payload, quick=args.quick)
    print(f"recorded in {path}")


if __name__ == "__main__":
    main()
