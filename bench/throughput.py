"""Benchmark: training throughput of tensor-resident data vs a torchvision DataLoader.

Same model, loss, optimizer and batch order semantics; only the input pipeline differs:

- **tensor**: the project's loop, :func:`tune_linfair.train.train_one_epoch`, on a
  :class:`~tune_linfair.data.base.Split` of normalized float tensors held in memory, batches
  by ``randperm``, augmentation by :func:`tune_linfair.data.augment.random_crop_flip` (pad 4,
  random crop, flip; one gather per batch);
- **dataloader**: the usual recipe: a ``Dataset`` over the uint8 HWC array that builds a PIL
  image per sample and applies ``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip()``,
  ``ToTensor()``, ``Normalize(mean, std)``, a ``DataLoader(shuffle=True)`` with
  ``num_workers`` 0 or 2 (``persistent_workers`` for 2, so worker start-up is not charged to
  each epoch), and the plain ``for x, y in loader`` step.

Data: ``--images`` random uint8 images in CIFAR format (N, 32, 32, 3) with random labels.
Model: ``create_model("resnet18", 10, (3, 32, 32), width=16)`` (width-16 ResNet-18), SGD lr
0.1, momentum 0.9, wd 5e-4, cross-entropy, batch ``--batch-size``. ``channels_last`` on and
off (model and inputs converted); on CPU it is a layout choice only, on CUDA it is what lets
convolutions use tensor cores (``train.py`` turns it on there, with bf16 autocast).

Also measured: the **data pipeline alone** (model = identity: the loop only produces the
augmented batches), which is what the tensor path changes.

Every repeat runs one epoch of every variant, in a rotated order; ratios are taken within a
repeat. One warm-up epoch per variant is not timed.

Run::

    python bench/throughput.py              # 2,048 images, 3 repeats (model), 5 (pipeline)
    python bench/throughput.py --quick      # 512 images, 2 repeats

Prints tables; appends a record to ``bench/results/throughput[-quick].jsonl``.
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from _common import fmt_summary, loadavg, record, summary, table, uptime
from torch import nn

from tune_linfair.data.augment import random_crop_flip
from tune_linfair.data.base import Split
from tune_linfair.models import create_model
from tune_linfair.train import iterate_batches, train_one_epoch

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


class CifarLike(torch.utils.data.Dataset):
    """torchvision's ``CIFAR10`` dataset in miniature: uint8 HWC array -> PIL -> transform."""

    def __init__(self, data: np.ndarray, targets: list[int], transform) -> None:
        self.data, self.targets, self.transform = data, targets, transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.data[i])), self.targets[i]


def make_loader(data: np.ndarray, targets: list[int], batch_size: int, workers: int, seed: int):
    from torchvision import transforms as T

    transform = T.Compose(
        [
            T.RandomCrop(32, padding=4),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(MEAN, STD),
        ]
    )
    return torch.utils.data.DataLoader(
        CifarLike(data, targets, transform),
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )


def tensor_split(data: np.ndarray, targets: list[int]) -> Split:
    """Normalized NCHW float32 tensors, as the project's CIFAR loader holds them."""
    x = torch.from_numpy(data).permute(0, 3, 1, 2).float().div_(255)
    x = (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    y = torch.tensor(targets)
    return Split(x.contiguous(), y, y.clone())


def augment_fn(channels_last: bool):
    if not channels_last:
        return random_crop_flip

    def augment(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return random_crop_flip(x, generator).contiguous(memory_format=torch.channels_last)

    return augment


def cross_entropy(model: nn.Module, batch) -> torch.Tensor:
    return F.cross_entropy(model(batch.x), batch.y)


class Variant:
    """One way to run an epoch; ``run()`` returns images processed."""

    def __init__(self, name: str, run: Callable[[], int]) -> None:
        self.name, self.run = name, run


def model_variants(data, targets, args, base_model: nn.Module) -> list[Variant]:
    split = tensor_split(data, targets)
    out = []
    for cl in (False, True):
        fmt = torch.channels_last if cl else torch.contiguous_format

        def fresh(fmt=fmt) -> tuple[nn.Module, torch.optim.Optimizer]:
            model = copy.deepcopy(base_model).to(memory_format=fmt)
            opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
            return model, opt

        model, opt = fresh()
        gen = torch.Generator().manual_seed(args.seed)

        def tensor_epoch(model=model, opt=opt, gen=gen, cl=cl) -> int:
            train_one_epoch(
                model,
                split,
                cross_entropy,
                opt,
                batch_size=args.batch_size,
                generator=gen,
                augment=augment_fn(cl),
            )
            return len(split)

        out.append(Variant(f"tensor, cl={'on' if cl else 'off'}", tensor_epoch))
        for workers in (0, 2):
            model, opt = fresh()
            loader = make_loader(data, targets, args.batch_size, workers, args.seed)

            def loader_epoch(model=model, opt=opt, loader=loader, fmt=fmt) -> int:
                model.train()
                n = 0
                for x, y in loader:
                    x = x.contiguous(memory_format=fmt)
                    loss = F.cross_entropy(model(x), y)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    float(loss.detach())  # the project's loop reads the loss every step too
                    n += len(y)
                return n

            out.append(Variant(f"dataloader w={workers}, cl={'on' if cl else 'off'}", loader_epoch))
    return out


def pipeline_variants(data, targets, args) -> list[Variant]:
    split = tensor_split(data, targets)
    gen = torch.Generator().manual_seed(args.seed)

    def tensor_only() -> int:
        n = 0
        for batch in iterate_batches(split, args.batch_size, shuffle=True, generator=gen):
            x = random_crop_flip(batch.x, gen)
            n += len(x)
        return n

    out = [Variant("tensor (randperm + random_crop_flip)", tensor_only)]
    for workers in (0, 2):
        loader = make_loader(data, targets, args.batch_size, workers, args.seed)

        def loader_only(loader=loader) -> int:
            return sum(len(y) for _, y in loader)

        out.append(Variant(f"dataloader w={workers} (PIL transforms)", loader_only))
    return out


def measure(variants: list[Variant], repeats: int) -> dict[str, list[float]]:
    """Images/s per variant per repeat: one warm-up epoch each, then rotated rounds."""
    for v in variants:
        v.run()
    rates: dict[str, list[float]] = {v.name: [] for v in variants}
    for r in range(repeats):
        k = r % len(variants)
        for v in variants[k:] + variants[:k]:
            start = time.perf_counter()
            n = v.run()
            rates[v.name].append(n / (time.perf_counter() - start))
        print(
            f"  repeat {r}: "
            + ", ".join(f"{name} {vals[-1]:.0f}" for name, vals in rates.items())
            + f" img/s; load {loadavg()}",
            flush=True,
        )
    return rates


def report(
    title: str, rates: dict[str, list[float]], reference: Callable[[str], str]
) -> tuple[str, dict]:
    """Images/s per variant and, per repeat, the ratio ``reference(variant) / variant``."""
    names = list(rates)
    rows, ratios = [], {}
    for name in names:
        s = summary(rates[name])
        ratio = [a / b for a, b in zip(rates[reference(name)], rates[name])]
        ratios[name] = summary(ratio)
        rows.append(
            [
                name,
                f"{s['median']:.0f}",
                f"{s['min']:.0f}",
                f"{s['max']:.0f}",
                fmt_summary(ratio, 2, "x") if name != reference(name) else "-",
            ]
        )
    text = f"{title}\n" + table(
        rows, ["variant", "img/s median", "min", "max", "tensor path / variant (per repeat)"]
    )
    return text, ratios


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="512 images, 2 repeats")
    parser.add_argument("--images", type=int, help="default 2048, quick 512")
    parser.add_argument("--repeats", type=int, help="model repeats (default 3, quick 2)")
    parser.add_argument("--pipeline-repeats", type=int, help="default 5, quick 2")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a 1-CPU trial)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    n = args.images or (512 if args.quick else 2048)
    repeats = args.repeats or (2 if args.quick else 3)
    pipe_repeats = args.pipeline_repeats or (2 if args.quick else 5)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    data = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    targets = rng.integers(0, 10, size=n).tolist()
    print(uptime())
    print(
        f"{n} random CIFAR-format images, batch {args.batch_size}, {args.threads} torch "
        f"thread(s), width-16 ResNet-18",
        flush=True,
    )

    print("data pipeline only (model = identity):", flush=True)
    pipe = measure(pipeline_variants(data, targets, args), pipe_repeats)
    pipe_text, pipe_ratios = report(
        "data pipeline only", pipe, lambda name: "tensor (randperm + random_crop_flip)"
    )
    print("training (width-16 ResNet-18):", flush=True)
    base_model = create_model("resnet18", 10, (3, 32, 32), width=16)
    train = measure(model_variants(data, targets, args, base_model), repeats)
    train_text, train_ratios = report(
        "training (ratio against the tensor path in the same layout)",
        train,
        lambda name: f"tensor, cl={name.rsplit('=', 1)[1]}",
    )
    print()
    print(pipe_text)
    print()
    print(train_text)
    cl_ratio = [a / b for a, b in zip(train["tensor, cl=on"], train["tensor, cl=off"])]
    print(f"channels_last on / off, tensor path: {fmt_summary(cl_ratio, 2, 'x')}")
    print("target: tensor path >= 1.5x the DataLoader (training)")
    print(uptime())
    path = record(
        "throughput",
        {
            "images": n,
            "batch_size": args.batch_size,
            "threads": args.threads,
            "pipeline_img_per_s": pipe,
            "pipeline_ratio_vs_tensor": pipe_ratios,
            "training_img_per_s": train,
            "training_ratio_tensor_same_layout_over_variant": train_ratios,
            "channels_last_on_over_off_tensor": summary(cl_ratio),
        },
        quick=args.quick,
    )
    print(f"recorded in {path}")


if __name__ == "__main__":
    main()
