"""Benchmark: the cost of an SNL step against a plain training step on the same model.

Per model, four ways to run ``--steps`` optimizer steps through the project's loop
(:func:`tune_linfair.train.train_one_epoch`), interleaved, ``--repeats`` times:

- **plain**: all masks frozen at 1 (the ReLU fast path), cross-entropy, SGD: base training;
- **kd**: masks frozen binary at 20% of the ReLUs (the general ``x + m * relu(-x)`` path),
  ``CE + T^2 * KL`` against the frozen teacher, SGD: a fine-tuning step;
- **snl**: what :func:`tune_linfair.linearize.snl.snl` runs per step: real-valued trainable
  masks, ``CE + T^2 * KL + c * sum|m|`` (:class:`~tune_linfair.linearize.snl.SNLLoss`), Adam
  over weights and masks, and its ``step_hook`` (:class:`~tune_linfair.linearize.snl.SNLSchedule`:
  a ReLU count every ``check_every`` steps; budget 0 so it never stops);
- **snl, teacher in graph**: the same, with the teacher's forward pass recorded and
  back-propagated through (teacher parameters requiring gradients), as the original SNL code
  does: what freezing the teacher saves.

The teacher's logits: with augmentation (32x32 RGB) the teacher runs (no grad) on every
augmented batch; without (digits) they are computed once and looked up
(:class:`~tune_linfair.kd.TeacherLogits`).

Models: ``resnet_mini`` on the default ``digits`` data (717 training images, batch 64,
check every 5 steps, as ``search_spaces/default.yaml``); the width-16 ResNet-18 on random
32x32 RGB images with augmentation (batch 128, check every 10 steps, SNL's default).

Run::

    python bench/snl_overhead.py             # 3 repeats
    python bench/snl_overhead.py --quick     # 1 repeat, fewer steps
    python bench/snl_overhead.py --profile   # + torch.profiler table of one ResNet-18 SNL pass

Prints a table; appends a record to ``bench/results/snl_overhead[-quick].jsonl``. The per-group
diagnostics cost is measured by ``bench/bench_diagnostics.py`` (see ``bench/RESULTS.md``).
"""

from __future__ import annotations

import argparse
import copy
import math
import time

import torch
import torch.nn.functional as F
from _common import fmt_summary, loadavg, record, summary, table, uptime
from torch import nn

from tune_linfair.data.augment import random_crop_flip
from tune_linfair.data.base import Split
from tune_linfair.kd import KDLoss, TeacherLogits
from tune_linfair.linearize.random_masks import random_linearize
from tune_linfair.linearize.snl import SNLLoss, SNLSchedule
from tune_linfair.models import create_model, total_relus
from tune_linfair.models.activation import linearizable_layers, mask_parameters, weight_parameters
from tune_linfair.spaces import load_space
from tune_linfair.stages import load_data
from tune_linfair.train import Batch, train_one_epoch


class TeacherInGraph(TeacherLogits):
    """The original SNL code's teacher: forward pass recorded, gradients flow into it."""

    def __init__(self, teacher: nn.Module) -> None:
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(True)
        self.cache = None

    def __call__(self, batch: Batch) -> torch.Tensor:
        return self.teacher(batch.x).float()


def cross_entropy(model: nn.Module, batch: Batch) -> torch.Tensor:
    return F.cross_entropy(model(batch.x), batch.y)


class Way:
    """One kind of training step on its own copy of the model; ``run()`` does ``steps``."""

    def __init__(self, name, model, loss, optimizer, hook, split, batch_size, augment):
        self.name, self.model, self.loss, self.optimizer = name, model, loss, optimizer
        self.hook, self.split, self.batch_size, self.augment = hook, split, batch_size, augment
        self.generator = torch.Generator().manual_seed(0)
        self.done = 0

    def run(self) -> int:
        log = train_one_epoch(
            self.model,
            self.split,
            self.loss,
            self.optimizer,
            batch_size=self.batch_size,
            generator=self.generator,
            augment=self.augment,
            step_hook=self.hook,
            step_offset=self.done,
        )
        self.done += int(log["steps"])
        return len(self.split)


def build_ways(
    base: nn.Module, train: Split, augmented: bool, batch_size: int, check_every: int, steps: int
) -> list[Way]:
    """The four ways on ``steps * batch_size`` training images (one pass = ``steps`` steps)."""
    split = train.subset(torch.arange(min(len(train), steps * batch_size)))
    augment = random_crop_flip if augmented else None
    ways = []

    plain = copy.deepcopy(base)
    opt = torch.optim.SGD(plain.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    ways.append(Way("plain", plain, cross_entropy, opt, None, split, batch_size, augment))

    teacher = copy.deepcopy(base).eval()
    kd_student = copy.deepcopy(base)
    random_linearize(kd_student, round(0.2 * total_relus(kd_student)), seed=0)
    kd = KDLoss(TeacherLogits(teacher, split, augmented))
    params = [p for _, p in weight_parameters(kd_student)]
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=5e-4)
    ways.append(Way("kd (fine-tune)", kd_student, kd, opt, None, split, batch_size, augment))

    for name, teacher_logits in (
        ("snl", lambda t: TeacherLogits(t, split, augmented)),
        ("snl, teacher in graph", TeacherInGraph),
    ):
        student, teacher = copy.deepcopy(base), copy.deepcopy(base)
        for _, layer in linearizable_layers(student):
            layer.set_trainable()
        loss = SNLLoss(KDLoss(teacher_logits(teacher)), c=1e-5)
        weights = [p for _, p in weight_parameters(student)]
        opt = torch.optim.Adam(
            [{"params": weights}, {"params": mask_parameters(student), "lr": 1e-2}], lr=1e-3
        )
        hook = SNLSchedule(
            model=student,
            loss=loss,
            budget=0,
            threshold=1e-2,
            check_every=check_every,
            c_every=math.ceil(len(split) / batch_size),
            warmup_checks=5,
            c_growth=1.1,
        )
        ways.append(Way(name, student, loss, opt, hook, split, batch_size, augment))
    return ways


def measure(ways: list[Way], repeats: int) -> dict[str, list[float]]:
    """Seconds per step for each way and repeat (one untimed warm-up pass each; rotated)."""
    for w in ways:
        w.run()
    out: dict[str, list[float]] = {w.name: [] for w in ways}
    for r in range(repeats):
        k = r % len(ways)
        for w in ways[k:] + ways[:k]:
            before = w.done
            start = time.perf_counter()
            w.run()
            out[w.name].append((time.perf_counter() - start) / (w.done - before))
        print(
            f"  repeat {r}: "
            + ", ".join(f"{n} {1e3 * v[-1]:.1f} ms" for n, v in out.items())
            + f"; load {loadavg()}",
            flush=True,
        )
    return out


def profile(way: Way) -> str:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        way.run()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 repeat, fewer steps")
    parser.add_argument("--repeats", type=int, help="default 3, quick 1")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a 1-CPU trial)")
    parser.add_argument("--profile", action="store_true", help="profile one ResNet-18 SNL pass")
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(uptime(), flush=True)

    exp = load_space("default").experiment
    digits = load_data(exp, 0)
    mini = create_model("resnet_mini", digits.num_classes, digits.input_shape, 16)
    n32 = 1024
    y32 = torch.randint(0, 10, (n32,))
    cifar = Split(torch.randn(n32, 3, 32, 32), y32, y32.clone())
    r18 = create_model("resnet18", 10, (3, 32, 32), width=16)
    setups = [
        ("resnet_mini, digits 8x8", mini, digits.train, False, 64, 5, 6 if args.quick else 11),
        ("resnet18 w16, 32x32 + aug", r18, cifar, True, 128, 10, 2 if args.quick else 4),
    ]
    results: dict = {}
    rows = []
    for name, model, train, augmented, bs, check, steps in setups:
        print(f"{name}: batch {bs}, {steps} steps per pass, {repeats} repeats", flush=True)
        ways = build_ways(model, train, augmented, bs, check, steps)
        per_step = measure(ways, repeats)
        results[name] = {"batch_size": bs, "steps": steps, "seconds_per_step": per_step}
        for way, times in per_step.items():
            ratio = [a / b for a, b in zip(times, per_step["plain"])]
            results[name].setdefault("ratio_vs_plain", {})[way] = summary(ratio)
            s = summary([1e3 * t for t in times])
            rows.append(
                [
                    name,
                    way,
                    f"{s['median']:.1f}",
                    f"{s['min']:.1f}",
                    f"{s['max']:.1f}",
                    f"{bs / s['median'] * 1e3:.0f}",
                    "-" if way == "plain" else fmt_summary(ratio, 2, "x"),
                ]
            )
        if args.profile and augmented:
            results[name]["profile"] = profile(ways[2])
            print(results[name]["profile"])
    print()
    print(
        table(
            rows,
            ["model", "step", "ms median", "min", "max", "img/s", "time / plain (per repeat)"],
        )
    )
    print(uptime())
    path = record(
        "snl_overhead",
        {"threads": args.threads, "repeats": repeats, "results": results},
        args.quick,
    )
    print(f"recorded in {path}")


if __name__ == "__main__":
    main()
