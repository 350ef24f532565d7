"""GPU check (prepared for a CUDA machine): images/s and peak memory of ResNet-18 training
and SNL steps with bf16 autocast and channels_last, and fractional-GPU concurrency.

Everything runs through the project's loop, :func:`tune_linfair.train.train_one_epoch`, which
on CUDA casts to bf16 under autocast and puts inputs in channels_last; the data are random
CIFAR-format images (uint8 -> normalized float32) held on the GPU, augmented on the GPU by
:func:`tune_linfair.data.augment.random_crop_flip`. Model: full-width ResNet-18 (width 64,
491,520 ReLUs), batch ``--batch-size`` (256, the paper's base training batch).

Measurements (each after a warm-up, for about ``--seconds`` of steady state):

1. **base** steps (cross-entropy, SGD, masks frozen at 1) in three layouts: inputs
   channels_last with the model as ``stages.py`` builds it (the library's path), model
   also converted to channels_last, and no channels_last at all; plus the library's path
   without its two host syncs per step (loss read and finiteness check), to see what they
   cost;
2. **snl** steps (trainable masks, ``CE + T^2 * KL + c * sum|m|``, Adam, teacher forward on
   every augmented batch, the SNL step hook) and **kd** fine-tuning steps (frozen binary
   masks at 20%);
3. **concurrency**: 1 vs ``--procs`` processes (``torch.multiprocessing``, spawn), each
   training its own base model on the same GPU for ``--seconds``, started together by a
   barrier: aggregate images/s, what ``--gpus-per-trial 1/procs`` would give a sweep.

Peak memory is ``torch.cuda.max_memory_allocated`` per measurement (per process for 3).
Total ~5 minutes on one H100. Without CUDA it exits with code 2 and a one-line message
(``--allow-cpu`` runs a tiny version on the CPU only to check the script itself).

Run (on the GPU machine, from the repository root)::

    python bench/gpu_check.py

Prints a table; appends a record to ``bench/results/gpu_check.jsonl`` (and copies it to
``$OUT`` when that is set).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


def cifar_split(n: int, device: torch.device, seed: int = 0):
    """Random uint8 CIFAR-format images, normalized to float32 NCHW on ``device``."""
    from tune_linfair.data.base import Split

    gen = torch.Generator().manual_seed(seed)
    raw = torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=gen)
    x = raw.permute(0, 3, 1, 2).float().div_(255)
    x = (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    y = torch.randint(0, 10, (n,), generator=gen)
    return Split(x.contiguous(), y, y.clone()).to(device)


def cross_entropy(model: nn.Module, batch) -> torch.Tensor:
    return F.cross_entropy(model(batch.x), batch.y)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_for(step_epoch, images_per_epoch: int, seconds: float, device: torch.device) -> dict:
    """Warm up (one epoch), then run epochs for about ``seconds``: images/s, peak MiB."""
    step_epoch()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    done, start = 0, time.perf_counter()
    while True:
        step_epoch()
        done += images_per_epoch
        _sync(device)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            break
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else math.nan
    return {"img_per_s": done / elapsed, "seconds": elapsed, "images": done, "peak_mib": peak}


def base_way(model: nn.Module, split, batch_size: int):
    from tune_linfair.data.augment import random_crop_flip
    from tune_linfair.train import train_one_epoch

    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(0)
    return lambda: train_one_epoch(
        model, split, cross_entropy, opt, batch_size=batch_size, generator=gen,
        augment=random_crop_flip,
    )  # fmt: skip


def base_nosync_way(model: nn.Module, split, batch_size: int):
    """The library's base step without its two host syncs per step (``torch.isfinite(loss)``
    as a Python bool and ``float(loss)``): the loss is summed on the GPU and checked once per
    epoch. Same batches, augmentation, autocast and layout. Only to measure what the syncs
    cost; ``train.py`` stays the one training loop."""
    from tune_linfair.data.augment import random_crop_flip
    from tune_linfair.train import _autocast, _prepare, iterate_batches

    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(0)
    device = split.x.device

    def epoch():
        model.train()
        total = torch.zeros((), device=device)
        for batch in iterate_batches(split, batch_size, shuffle=True, generator=gen):
            x = _prepare(random_crop_flip(batch.x, None), device)
            with _autocast(device):
                loss = F.cross_entropy(model(x), batch.y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach()
        if not torch.isfinite(total):
            raise FloatingPointError("loss became non-finite")

    return epoch


def snl_way(base: nn.Module, split, batch_size: int):
    from tune_linfair.data.augment import random_crop_flip
    from tune_linfair.kd import KDLoss, TeacherLogits
    from tune_linfair.linearize.snl import SNLLoss, SNLSchedule
    from tune_linfair.models.activation import (
        linearizable_layers,
        mask_parameters,
        weight_parameters,
    )
    from tune_linfair.train import train_one_epoch

    student, teacher = copy.deepcopy(base), copy.deepcopy(base)
    for _, layer in linearizable_layers(student):
        layer.set_trainable()
    loss = SNLLoss(KDLoss(TeacherLogits(teacher, split, augmented=True)), c=1e-5)
    opt = torch.optim.Adam(
        [
            {"params": [p for _, p in weight_parameters(student)]},
            {"params": mask_parameters(student), "lr": 1e-3},
        ],
        lr=1e-3,
    )
    hook = SNLSchedule(
        model=student, loss=loss, budget=0, threshold=1e-2, check_every=10,
        c_every=math.ceil(len(split) / batch_size), warmup_checks=5, c_growth=1.1,
    )  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    state = {"steps": 0}

    def epoch():
        log = train_one_epoch(
            student, split, loss, opt, batch_size=batch_size, generator=gen,
            augment=random_crop_flip, step_hook=hook, step_offset=state["steps"],
        )  # fmt: skip
        state["steps"] += int(log["steps"])

    return epoch


def kd_way(base: nn.Module, split, batch_size: int):
    from tune_linfair.data.augment import random_crop_flip
    from tune_linfair.kd import KDLoss, TeacherLogits
    from tune_linfair.linearize.random_masks import random_linearize
    from tune_linfair.models import total_relus
    from tune_linfair.models.activation import weight_parameters
    from tune_linfair.train import train_one_epoch

    student, teacher = copy.deepcopy(base), copy.deepcopy(base)
    random_linearize(student, round(0.2 * total_relus(student)), seed=0)
    loss = KDLoss(TeacherLogits(teacher, split, augmented=True))
    opt = torch.optim.SGD(
        [p for _, p in weight_parameters(student)], lr=1e-3, momentum=0.9, weight_decay=5e-4
    )
    gen = torch.Generator().manual_seed(0)
    return lambda: train_one_epoch(
        student, split, loss, opt, batch_size=batch_size, generator=gen,
        augment=random_crop_flip,
    )  # fmt: skip


def _proc(rank: int, procs: int, args: argparse.Namespace, barrier, queue) -> None:
    """One concurrent trial: its own model and data, base steps for ``args.seconds``."""
    from tune_linfair.models import create_model

    device = torch.device(args.device)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // procs))  # as --cpus-per-trial would
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(rank)
    split = cifar_split(args.images, device, seed=rank)
    model = create_model("resnet18", 10, (3, 32, 32), width=args.width).to(device)
    epoch = base_way(model, split, args.batch_size)
    epoch()  # warm-up (cuDNN autotuning, allocator)
    _sync(device)
    barrier.wait()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < args.seconds:
        epoch()
        _sync(device)
        done += len(split)
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else math.nan
    queue.put({"rank": rank, "images": done, "seconds": elapsed, "peak_mib": peak})


def concurrency(args: argparse.Namespace, procs: int) -> dict:
    ctx = torch.multiprocessing.get_context("spawn")
    barrier, queue = ctx.Barrier(procs), ctx.Queue()
    workers = [
        ctx.Process(target=_proc, args=(r, procs, args, barrier, queue)) for r in range(procs)
    ]
    for w in workers:
        w.start()
    out = [queue.get(timeout=600) for _ in workers]
    for w in workers:
        w.join(timeout=60)
    # aggregate over the common window: every process ran about args.seconds
    total = sum(o["images"] / o["seconds"] for o in out)
    return {
        "procs": procs,
        "aggregate_img_per_s": total,
        "per_proc": out,
        "peak_mib_max": max(o["peak_mib"] for o in out),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8192, help="images held on the GPU")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--width", type=int, default=64, help="ResNet-18 width (64: full)")
    parser.add_argument("--seconds", type=float, default=20.0, help="steady state per measure")
    parser.add_argument("--procs", type=int, default=4, help="concurrent processes (part 3)")
    parser.add_argument(
        "--allow-cpu", action="store_true", help="tiny CPU run to check the script only"
    )
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        if not args.allow_cpu:
            print(
                "gpu_check: no CUDA device (torch.cuda.is_available() is False); run it on a "
                "GPU machine: python bench/gpu_check.py",
                file=sys.stderr,
            )
            return 2
        args.images, args.width, args.seconds, args.procs = 256, 8, 1.0, 2
        args.batch_size = min(args.batch_size, 64)
    args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)

    from _common import record, table, uptime

    from tune_linfair.models import create_model

    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        name = torch.cuda.get_device_name(device)
        total = torch.cuda.get_device_properties(device).total_memory / 2**30
        print(f"{name}, {total:.0f} GiB, torch {torch.__version__}, cuda {torch.version.cuda}")
    print(uptime(), flush=True)
    t0 = time.perf_counter()
    split = cifar_split(args.images, device)
    torch.manual_seed(0)
    base = create_model("resnet18", 10, (3, 32, 32), width=args.width).to(device)
    results: dict = {"images": args.images, "batch_size": args.batch_size, "width": args.width}
    rows = []

    def measure(name: str, epoch) -> None:
        r = run_for(epoch, args.images, args.seconds, device)
        results[name] = r
        rows.append([name, f"{r['img_per_s']:.0f}", f"{r['peak_mib']:.0f}"])
        print(f"  {name}: {r['img_per_s']:.0f} img/s, peak {r['peak_mib']:.0f} MiB", flush=True)

    # 1. base steps in three layouts
    measure(
        "base: inputs channels_last (library path)",
        base_way(copy.deepcopy(base), split, args.batch_size),
    )
    cl_model = copy.deepcopy(base).to(memory_format=torch.channels_last)
    measure("base: model + inputs channels_last", base_way(cl_model, split, args.batch_size))
    measure(
        "base: library path without per-step host syncs",
        base_nosync_way(copy.deepcopy(base), split, args.batch_size),
    )
    import tune_linfair.train as train_mod

    prepare = train_mod._prepare
    train_mod._prepare = lambda x, dev: x.to(dev, non_blocking=True)  # no channels_last
    try:
        measure("base: no channels_last", base_way(copy.deepcopy(base), split, args.batch_size))
    finally:
        train_mod._prepare = prepare
    # 2. SNL and KD steps
    measure("snl step (library path)", snl_way(base, split, args.batch_size))
    measure("kd fine-tune step (library path)", kd_way(base, split, args.batch_size))
    # 3. concurrency
    del split
    if device.type == "cuda":
        torch.cuda.empty_cache()
    conc = {}
    for procs in (1, args.procs):
        c = concurrency(args, procs)
        conc[procs] = c
        rows.append(
            [
                f"{procs} concurrent process(es), base steps",
                f"{c['aggregate_img_per_s']:.0f} (sum)",
                f"{c['peak_mib_max']:.0f} (max per proc)",
            ]
        )
        print(f"  {procs} procs: {c['aggregate_img_per_s']:.0f} img/s in all", flush=True)
    results["concurrency"] = conc
    results["concurrency_speedup"] = (
        conc[args.procs]["aggregate_img_per_s"] / conc[1]["aggregate_img_per_s"]
    )
    print()
    print(table(rows, ["measurement", "img/s", "peak MiB"]))
    print(
        f"{args.procs} procs / 1 proc aggregate throughput: {results['concurrency_speedup']:.2f}x; "
        f"total {time.perf_counter() - t0:.0f} s"
    )
    if device.type != "cuda":
        print("CPU smoke run: nothing recorded")
        return 0
    path = record("gpu_check", results)
    out = os.environ.get("OUT")
    if out:
        shutil.copy(path, out)
        with open(os.path.join(out, "gpu_check_summary.json"), "w") as f:
            json.dump(results, f, indent=1, default=float)
    print(f"recorded in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
