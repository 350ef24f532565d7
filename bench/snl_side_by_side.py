"""Benchmark: one SNL step, ours against the reference code, side by side in one run.

The reference is the SNL authors' code (Cho et al., ICML 2022;
NYU-DICE-Lab/selective_network_linearization): its ``utils.mask_train_kd_unstructured``
with its ``resnet18_in``. Nothing is fetched at run time: pass the path of a local copy.
Ours is the step :func:`tune_linfair.linearize.snl.snl` takes: ``SNLLoss`` (KD + c sum|m|)
through the shared ``train_one_epoch``, augmentation on tensors, the teacher under
``no_grad``; once in float32 (the default) and once with ``linearize.snl_cpu_bf16`` (bf16
autocast of student and teacher; masks, L1 term and count stay float32).

Setting (the issue's): a full CIFAR ResNet-18 (491,520 linearizable ReLUs), batch 128 of
in-memory 32x32 images, Adam at 1e-3, ``--threads`` torch threads (default 2). Each round
times ``--steps`` optimizer steps of each variant after one warm-up step, rotating the
order; the ratio reference / ours is taken within each round.

``--accuracy-seeds N`` also checks that bf16 leaves the result unchanged beyond noise: on
the default digits space, SNL to a 5% budget then the space's KD fine-tune, in float32 and
in bf16, for seeds 0..N-1; it reports the paired difference of test accuracy (95% Student-t
interval) and checks that both hit the budget exactly.

Run from the repository root::

    git -C MIRROR archive HEAD | tar -x -C /tmp/snl_ref       # a local copy, once
    python bench/snl_side_by_side.py --reference /tmp/snl_ref --accuracy-seeds 5

Prints tables; appends a record to ``bench/results/snl_side_by_side[-quick].jsonl``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
import time
import types
from pathlib import Path

import torch
from _common import fmt_summary, machine, record, summary, table, uptime

from tune_linfair.aggregate import t_interval
from tune_linfair.data import get_dataset, random_crop_flip
from tune_linfair.data.base import Split
from tune_linfair.finetune import finetune
from tune_linfair.kd import KDLoss, TeacherLogits
from tune_linfair.linearize import linearize
from tune_linfair.linearize.snl import SNLLoss
from tune_linfair.models import count_relus, create_model, total_relus
from tune_linfair.models.activation import linearizable_layers, mask_parameters, weight_parameters
from tune_linfair.spaces import load_space
from tune_linfair.train import evaluate, seed_everything, train_one_epoch


def _reference(path: Path, batches: list, steps: int):
    """A closure timing ``steps`` reference SNL steps (plus one warm-up)."""
    sys.path.insert(0, str(path))
    from archs_unstructured.cifar_resnet import resnet18_in  # the reference's own model
    from utils import mask_train_kd_unstructured

    args = types.SimpleNamespace(stride=1, dataset="cifar10")
    teacher = resnet18_in(10, args).eval()
    student = copy.deepcopy(teacher)
    for name, p in student.named_parameters():
        p.requires_grad_(True) if "alpha" in name else None
    criterion = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-3)

    def run() -> float:
        mask_train_kd_unstructured(
            batches[:1], student, teacher, criterion, optimizer, 0, "cpu", 1e-5
        )
        start = time.perf_counter()
        mask_train_kd_unstructured(
            batches[1 : 1 + steps], student, teacher, criterion, optimizer, 0, "cpu", 1e-5
        )
        return (time.perf_counter() - start) / steps

    return run


def _ours(split: Split, steps: int, batch_size: int, bf16: bool):
    """A closure timing ``steps`` of our SNL step (plus one warm-up)."""
    teacher = create_model("resnet18", 10, (3, 32, 32)).eval()
    student = copy.deepcopy(teacher)
    for _, layer in linearizable_layers(student):
        layer.set_trainable()
    loss = SNLLoss(KDLoss(TeacherLogits(teacher, split, augmented=True)), 1e-5)
    weights = [p.requires_grad_(True) for _, p in weight_parameters(student)]
    optimizer = torch.optim.Adam(
        [{"params": weights}, {"params": mask_parameters(student)}], lr=1e-3, weight_decay=0.0
    )
    generator = torch.Generator().manual_seed(0)
    warm = Split(split.x[:batch_size], split.y[:batch_size], split.g[:batch_size])
    timed_split = Split(
        split.x[: steps * batch_size], split.y[: steps * batch_size], split.g[: steps * batch_size]
    )

    def epoch(part: Split) -> None:
        train_one_epoch(
            student, part, loss, optimizer, batch_size=batch_size, generator=generator,
            augment=random_crop_flip, cpu_bf16=bf16,
        )  # fmt: skip

    def run() -> float:
        epoch(warm)
        start = time.perf_counter()
        epoch(timed_split)
        return (time.perf_counter() - start) / steps

    return run


def speed(args: argparse.Namespace) -> dict:
    n = args.batch_size * (args.steps + 1)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    split = Split(x, y, y.clone())
    batches = [
        (x[i : i + args.batch_size], y[i : i + args.batch_size])
        for i in range(0, n, args.batch_size)
    ]
    variants = {
        "reference (fp32)": _reference(args.reference, batches, args.steps),
        "ours fp32": _ours(split, args.steps, args.batch_size, bf16=False),
        "ours bf16": _ours(split, args.steps, args.batch_size, bf16=True),
    }
    names = list(variants)
    seconds: dict[str, list[float]] = {k: [] for k in names}
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            seconds[name].append(variants[name]())
            print(f"round {r}: {name} {seconds[name][-1]:.2f} s/step", flush=True)
    ratios = {
        k: [a / b for a, b in zip(seconds["reference (fp32)"], seconds[k])] for k in names[1:]
    }
    print(
        table(
            [
                [
                    k,
                    fmt_summary(seconds[k], 2, " s"),
                    fmt_summary(ratios[k], 2, "x") if k in ratios else "1",
                ]
                for k in names
            ],
            ["SNL step", "seconds per step", "reference / ours"],
        )
    )
    return {"seconds_per_step": seconds, "speedup": {k: summary(v) for k, v in ratios.items()}}


def accuracy(seeds: int) -> dict:
    """float32 vs bf16 SNL on digits (5% budget), then the space's KD fine-tune."""
    exp = load_space("default").experiment
    rows = []
    for seed in range(seeds):
        data = get_dataset("digits", seed=seed)
        seed_everything(seed)
        base = create_model("resnet_mini", data.num_classes, data.input_shape)
        from tune_linfair.pretrain import pretrain

        pretrain(base, data, exp.base, seed=seed)
        row = {"seed": seed}
        for bf16 in (False, True):
            settings = dataclasses.replace(exp.linearize, snl_cpu_bf16=bf16)
            student = copy.deepcopy(base)
            log = linearize("snl", student, base, data, 0.05, settings=settings, seed=seed)
            assert count_relus(student) == round(0.05 * total_relus(student)) == log["relu_count"]
            finetune(student, base, data, exp.finetune, seed=seed)
            key = "bf16" if bf16 else "fp32"
            row[f"{key}_test_acc"] = evaluate(student, data.test).accuracy()
            row[f"{key}_steps"] = log["steps"]
        rows.append(row)
        print(row, flush=True)
    diff = [r["bf16_test_acc"] - r["fp32_test_acc"] for r in rows]
    mean, std, low, high = t_interval(diff)
    print(
        f"test accuracy, bf16 - fp32 SNL: {mean:+.2f} points (95% CI {low:+.2f} to {high:+.2f}, {seeds} seeds)"
    )
    return {"per_seed": rows, "diff_mean": mean, "diff_std": std, "diff_ci": [low, high]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference", type=Path, required=True, help="local copy of the SNL code")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--accuracy-seeds", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="1 step, 1 round")
    args = p.parse_args()
    if args.quick:
        args.steps, args.rounds = 1, 1
    if not (args.reference / "utils.py").is_file():
        raise SystemExit(f"error: {args.reference} holds no SNL reference code (utils.py missing)")
    torch.set_num_threads(args.threads)
    print(uptime(), flush=True)
    out = {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()}}
    out["speed"] = speed(args)
    if args.accuracy_seeds:
        out["accuracy"] = accuracy(args.accuracy_seeds)
    print(uptime())
    print(f"recorded in {record('snl_side_by_side', out, args.quick)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
