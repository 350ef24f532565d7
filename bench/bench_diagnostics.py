"""Benchmark: cost of the per-group diagnostics on a CIFAR-sized ResNet-18.

Times :func:`tune_linfair.metrics.group_gradient_norms` (one forward/backward pass over every
group's samples) and :func:`tune_linfair.metrics.group_hessian_top_eigenvalues` (power
iteration on Hessian-vector products, tol 1e-3, at most ``--max-iter`` products per group)
on a width-16 ResNet-18 (``create_model("resnet18", num_classes=10, input_shape=(3, 32, 32),
width=16)``, all ReLUs kept) with random 32x32 inputs and labels, ``--groups`` groups of
``--per-group`` samples, the Hessian capped at ``--hessian-max-samples`` samples per group.

The Hessian is timed twice: with ``batch_size >= cap`` (each group's first-order graph is
built once and reused by every product) and with a smaller ``--stream-batch-size`` (the graph
is rebuilt batch by batch for every product, memory bounded by one batch); the ratio is the
saving of the cached path. Both runs use the same seed, so they do the same iterations.

Run (small enough for a shared 2-core CPU; use ``--device cuda`` on a GPU):

    python bench/bench_diagnostics.py --per-group 100 --hessian-max-samples 32

Prints seconds per measurement; numbers quoted anywhere must name this command, the hardware
and the number of runs.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from tune_linfair.data.base import Split
from tune_linfair.metrics import group_gradient_norms, group_hessian_top_eigenvalues
from tune_linfair.models import create_model
from tune_linfair.train import seed_everything


def _timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=10)
    parser.add_argument("--per-group", type=int, default=100)
    parser.add_argument("--hessian-max-samples", type=int, default=32)
    parser.add_argument("--max-iter", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--stream-batch-size", type=int, default=8)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-stream", action="store_true", help="skip the streamed Hessian")
    args = parser.parse_args(argv)

    seed_everything(args.seed)
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if args.device in (None, "auto") else args.device)
    model = create_model("resnet18", num_classes=10, input_shape=(3, 32, 32), width=args.width)
    model = model.to(device)
    n = args.groups * args.per_group
    split = Split(
        torch.randn(n, 3, 32, 32),
        torch.randint(0, 10, (n,)),
        torch.arange(args.groups).repeat_interleave(args.per_group),
    ).to(device)
    print(
        f"device={device} ({torch.cuda.get_device_name() if device.type == 'cuda' else platform.processor() or platform.machine()}), "
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"resnet18 width {args.width}, {args.groups} groups x {args.per_group} samples"
    )

    norms, t_grad = _timed(
        lambda: group_gradient_norms(model, split, args.groups, batch_size=args.batch_size)
    )
    print(f"group_gradient_norms: {t_grad:.2f} s  (norms {[round(v, 3) for v in norms]})")

    def hessian(batch_size: int) -> list[float]:
        return group_hessian_top_eigenvalues(
            model,
            split,
            args.groups,
            max_samples=args.hessian_max_samples,
            max_iter=args.max_iter,
            seed=args.seed,
            batch_size=batch_size,
        )

    cached_bs = max(args.batch_size, args.hessian_max_samples)
    eigs, t_cached = _timed(lambda: hessian(cached_bs))
    print(
        f"group_hessian_top_eigenvalues (cap {args.hessian_max_samples}, cached graph): "
        f"{t_cached:.2f} s  (eigs {[round(v, 3) for v in eigs]})"
    )
    if not args.skip_stream and args.stream_batch_size < args.hessian_max_samples:
        eigs_s, t_stream = _timed(lambda: hessian(args.stream_batch_size))
        print(
            f"group_hessian_top_eigenvalues (batch {args.stream_batch_size}, streamed): "
            f"{t_stream:.2f} s  (streamed / cached = {t_stream / t_cached:.2f}x; "
            f"max |eig difference| {max(abs(a - b) for a, b in zip(eigs, eigs_s)):.2e})"
        )


if __name__ == "__main__":
    main()
