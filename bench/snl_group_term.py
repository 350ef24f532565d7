"""Benchmark: the cost of SNL's mask-training step with a group term (fairness-aware SNL)
against plain SNL, as a ratio in one run.

A ``--width`` ResNet-18 (default 16) with trainable masks on 32x32 inputs (random images,
10 groups = classes, batch ``--batch-size``), one torch thread. The three losses of one SNL
step, each the loss the library builds (``tune_linfair.linearize.snl``):

- plain:        ``KD + c * sum|m|``                           (``mask_mitigation: none``)
- lagrangian:   ``KD + sum_a lambda_a |L(B) - L(B_a)| + c sum|m|``  (multipliers non-zero)
- accuracy_gap: ``KD + sum_a lambda_a (CE(B_a) - CE(B)) + c sum|m|``

are timed over ``--steps`` optimizer steps each, rotating the order, ``--repeats`` times; the
ratio to plain is taken within each repeat. Run from the repository root::

    python bench/snl_group_term.py            # width 16, 20 steps x 3 repeats
    python bench/snl_group_term.py --quick    # width 8, 5 steps x 2 repeats

Prints a table; appends a record to ``bench/results/snl_group_term[-quick].jsonl``.
"""

from __future__ import annotations

import argparse
import sys

import torch
from _common import fmt_summary, machine, record, summary, table, timed, uptime

from tune_linfair.data.base import GroupedDataset, Split
from tune_linfair.kd import KDLoss, TeacherLogits
from tune_linfair.linearize.snl import SNLLoss
from tune_linfair.mitigation import AccuracyGapLoss, LagrangianKD
from tune_linfair.models import create_model
from tune_linfair.models.activation import linearizable_layers, mask_parameters, weight_parameters
from tune_linfair.train import train_one_epoch


def _data(n: int, seed: int) -> GroupedDataset:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    split = Split(x=x, y=y, g=y.clone())
    names = tuple(str(c) for c in range(10))
    return GroupedDataset("bench", split, split, split, names, names, augment=False)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.width, args.steps, args.repeats = 8, 5, 2
    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = _data(args.batch_size * args.steps, 0)
    teacher = create_model("resnet18", 10, (3, 32, 32), args.width).eval()
    student = create_model("resnet18", 10, (3, 32, 32), args.width)
    student.load_state_dict(teacher.state_dict())
    for _, layer in linearizable_layers(student):
        layer.set_trainable()
    logits = TeacherLogits(teacher, data.train, augmented=False)
    lagrangian = LagrangianKD(logits, 10, mu=0.1)
    lagrangian.load_state_dict({"lambdas": torch.linspace(0.1, 1.0, 10, dtype=torch.float64)})
    gap = AccuracyGapLoss(logits, [90.0] * 10, num_groups=10)
    gap.load_state_dict({"lambdas": torch.linspace(0.1, 1.0, 10, dtype=torch.float64)})
    losses = {
        "plain": SNLLoss(KDLoss(logits), 1e-3),
        "lagrangian": SNLLoss(lagrangian, 1e-3),
        "accuracy_gap": SNLLoss(gap, 1e-3),
    }
    optimizer = torch.optim.Adam(
        [
            {"params": [p for _, p in weight_parameters(student)]},
            {"params": mask_parameters(student)},
        ],
        lr=1e-3,
    )
    print(uptime(), flush=True)
    names = list(losses)
    seconds: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(args.repeats):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for name in order:
            _, dt = timed(
                lambda n=name: train_one_epoch(
                    student, data.train, losses[n], optimizer, batch_size=args.batch_size
                )
            )
            seconds[name].append(dt / args.steps)
    print(uptime())
    ratios = {
        n: [a / b for a, b in zip(seconds[n], seconds["plain"])] for n in names if n != "plain"
    }
    rows = [["plain", fmt_summary([1000 * s for s in seconds["plain"]], 1, " ms"), "1"]]
    rows += [
        [n, fmt_summary([1000 * s for s in seconds[n]], 1, " ms"), fmt_summary(ratios[n], 3, "x")]
        for n in ratios
    ]
    print(table(rows, ["SNL loss", "step time", "ratio to plain (per repeat)"]))
    payload = {
        "machine": machine(),
        "args": vars(args),
        "seconds_per_step": seconds,
        "ratios": {n: summary(r) for n, r in ratios.items()},
    }
    print(f"recorded in {record('snl_group_term', payload, args.quick)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
