"""The work of a sweep's runs in image passes, the data set's sizes, and measured throughput.

:mod:`tune_linfair.plan` (``--plan``) counts a sweep's runs per phase; this module says
what one run costs and how fast this machine trains the space's model.

**Cost model** (printed in short with the plan; a run is one job of a phase of
:mod:`tune_linfair.jobs`). One *image pass* is one image through one training step of the
space's model: forward, backward and optimizer step. A forward alone
(evaluation, a frozen teacher) counts :data:`FORWARD` = 1/3 of a pass, since a backward
costs about two forwards. Per run, with ``n_train``, ``n_val``, ``n_test`` the split sizes:

- base: ``base.epochs x (n_train + n_val/3)`` (a validation pass per epoch, for model
  selection), then the base diagnostics: logits on every diagnosed split, the boundary
  distance (one input-gradient pass per image), and on test the group gradients (one pass)
  and the Hessian (below);
- linearize: SNL ``epochs x n_train x (1 + 1/3)`` (student step + teacher forward on the
  augmented batch; without augmentation the teacher's logits are computed once,
  ``n_train/3``). SNL stops when the ReLU count reaches the budget, which nobody knows
  beforehand: the plan counts ``linearize.max_epochs`` (an upper bound, marked ``<=``)
  unless ``--snl-epochs N`` says what to assume. DeepReDuce: ``deepreduce_epochs x
  (n_train x (1 + 1/3) + n_val/3)``. Random masks: no training. Each adds logits and the
  boundary distance on the diagnosed splits;
- fine-tune: ``finetune.epochs x (n_train x (1 + 1/3) + n_val/3)`` (student step, teacher
  forward, validation pass), plus logits on the diagnosed splits;
- diagnose: logits and the boundary distance on the diagnosed splits, the group gradients
  on test, and the Hessian's power iteration: per group at most ``hessian_max_samples``
  test images, one pass to build the gradient graph and up to :data:`HESSIAN_MAX_ITER`
  Hessian-vector products of 2 passes each (3 when a group exceeds one 256-image batch and
  its graph is rebuilt per product). Power iteration usually converges earlier: an upper
  bound.

Time: ``hours = image passes / images_per_s / 3600``, on one device, one run after another
(trials side by side share it). ``images_per_s`` is given (``--images-per-s N`` or
``NAME=N``, repeatable) or measured here in a few seconds: a timed loop of training steps of
the space's model (:func:`tune_linfair.train.train_one_epoch`, as every stage trains) on
random inputs of the data set's shape, at the base batch size (on the CPU first at batch 16,
and at the base batch size only when such a step takes at most half a second, to keep the
measurement short), on every device torch sees (the CPU with ``--cpus-per-trial``
threads, as a trial gets; CUDA when the command line sees a GPU).

Without the data set's files the split sizes come from the published sizes of the files
(:data:`PUBLISHED`) through the loaders' own split functions, so ``--plan`` works before
anything is downloaded.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from tune_linfair.config import DiagnosticsConfig, ExperimentConfig
from tune_linfair.data import dataset_options
from tune_linfair.data.base import Split
from tune_linfair.data.cifar10 import MAJORITY_CLASSES
from tune_linfair.data.splits import (
    carve_val,
    check_fraction,
    class_shares,
    make_generator,
    stratified_split,
    unbalance,
)
from tune_linfair.errors import UserError, unknown
from tune_linfair.models import create_model
from tune_linfair.pretrain import cross_entropy
from tune_linfair.stages import data_options, load_data
from tune_linfair.train import train_one_epoch

FORWARD = 1 / 3
"""Cost of a forward pass alone, in image passes (forward + backward + step = 1)."""
HESSIAN_MAX_ITER = 100
"""Power-iteration cap of :func:`tune_linfair.metrics.hessian.group_hessian_top_eigenvalues`."""
HESSIAN_BATCH = 256
"""The diagnostics' batch size: a Hessian group that fits keeps its gradient graph."""
CPU_CALIBRATION_BATCH = 16
"""The CPU measurement starts at this batch (a full-size ResNet step takes seconds)..."""
CPU_FULL_BATCH_S = 0.5
"""... and remeasures at the base batch size when one such step takes at most this long."""

PUBLISHED: dict[str, dict] = {
    # CIFAR-10 (Krizhevsky 2009): 5 training batches of 10,000, 5,000 images per class;
    # test batch 1,000 per class.
    "cifar10": {"train": [5000] * 10, "test": [1000] * 10, "shape": (3, 32, 32)},
    # SVHN cropped digits (Netzer et al. 2011): train_32x32.mat and test_32x32.mat, images
    # per digit 0..9 (73,257 and 26,032 in all).
    "svhn": {
        "train": [4948, 13861, 10585, 8497, 7458, 6882, 5727, 5595, 5045, 4659],
        "test": [1744, 5099, 4149, 2882, 2523, 2384, 1977, 2019, 1660, 1595],
        "shape": (3, 32, 32),
    },
    # UTKFace Aligned&Cropped: 23,708 images, 3 without a race field; the images aged 0-1,
    # dropped when age is the target or the group, are not known without the files (the
    # sizes are then upper bounds).
    "utkface": {"usable": 23705, "shape": (3, 32, 32)},
}
"""Published sizes of the file-based data sets, used when their files are not here."""
_UTKFACE_CLASSES = {"age": 4, "race": 5, "gender": 2}


# -- the data set's sizes -------------------------------------------------------------------
@dataclass(frozen=True)
class DataShape:
    """What the cost model needs of a data set: split sizes, the test split's group sizes
    (None: unknown), input shape, classes, groups, augmentation, and where it came from."""

    n_train: int
    n_val: int
    n_test: int
    test_groups: list[int] | None
    input_shape: tuple[int, ...]
    num_classes: int
    num_groups: int
    augment: bool
    source: str


def data_shape(exp: ExperimentConfig, seed: int) -> DataShape:
    """The data set's sizes: loaded when its files are here (or it needs none), else from
    :data:`PUBLISHED` through the loaders' split functions."""
    try:
        data = load_data(exp, seed)
    except UserError:
        if exp.data.name not in PUBLISHED:
            raise
        return _published_shape(exp, "files not loadable here: published sizes")
    return DataShape(
        len(data.train),
        len(data.val),
        len(data.test),
        data.test.group_counts(data.num_groups),
        data.input_shape,
        data.num_classes,
        data.num_groups,
        data.augment,
        "loaded",
    )


def _labels(counts: list[int]) -> torch.Tensor:
    return torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))


def _published_shape(exp: ExperimentConfig, source: str) -> DataShape:
    name, options = exp.data.name, data_options(exp)
    valid = dataset_options(name)
    for key in exp.data.options:
        if key not in valid:
            raise unknown(f"{name} option", key, sorted(valid))
    known = PUBLISHED[name]
    gen = make_generator(0)
    if name == "utkface":
        test_fraction = check_fraction("test_fraction", options["test_fraction"])
        val_fraction = check_fraction("val_fraction", options["val_fraction"])
        n_test = round(known["usable"] * test_fraction)
        n_val = round((known["usable"] - n_test) * val_fraction)
        n_train = known["usable"] - n_test - n_val
        for key in ("target", "group"):
            if options[key] not in _UTKFACE_CLASSES:
                raise unknown(f"UTKFace {key}", options[key], _UTKFACE_CLASSES)
        classes = _UTKFACE_CLASSES[options["target"]]
        groups = _UTKFACE_CLASSES[options["group"]]
        if "age" in (options["target"], options["group"]):
            source += " (ages 0-1 not subtracted: upper bounds)"
        return DataShape(
            n_train, n_val, n_test, None, known["shape"], classes, groups, True, source
        )
    y, y_test = _labels(known["train"]), _labels(known["test"])
    val_fraction = check_fraction("val_fraction", options["val_fraction"])
    test = y_test
    if name == "cifar10":
        shares = class_shares(
            10,
            MAJORITY_CLASSES,
            check_fraction("majority_share", options["majority_share"], allow_one=True),
            check_fraction("minority_share", options["minority_share"], allow_one=True),
        )
        parts = carve_val(
            torch.arange(len(y)), y, val_fraction, shares, gen, options["balanced_val"]
        )
        n_train, n_val = len(parts["train"]), len(parts["val"])
        if options["unbalance_test"]:
            test = y_test[unbalance(y_test, shares, gen)]
    else:
        train_pos, val_pos = stratified_split(y, val_fraction, gen)
        n_train, n_val = len(train_pos), len(val_pos)
    counts = torch.bincount(test, minlength=10).tolist()
    return DataShape(n_train, n_val, len(test), counts, known["shape"], 10, 10, True, source)


# -- image passes per run -------------------------------------------------------------------
def _split_sizes(shape: DataShape, d: DiagnosticsConfig) -> list[int]:
    return [shape.n_val if s == "val" else shape.n_test for s in d.splits]


def _logits(shape: DataShape, d: DiagnosticsConfig) -> float:
    return FORWARD * sum(_split_sizes(shape, d))


def _boundary(shape: DataShape, d: DiagnosticsConfig) -> float:
    return float(sum(_split_sizes(shape, d))) if d.boundary else 0.0


def hessian_bounded(d: DiagnosticsConfig) -> bool:
    """Whether the diagnostics run the Hessian's power iteration, whose cost is a bound."""
    return d.hessian and "test" in d.splits


def _heavy(shape: DataShape, d: DiagnosticsConfig) -> float:
    """Boundary distances, test-group gradients and Hessian power iteration (upper bound)."""
    passes = _boundary(shape, d)
    if "test" not in d.splits:
        return passes
    if d.gradients:
        passes += shape.n_test
    if d.hessian:
        # unknown group sizes: an even split, which maximizes sum_a min(n_a, cap)
        groups = shape.test_groups or [shape.n_test // shape.num_groups + 1] * shape.num_groups
        for n in groups:
            used = min(n, d.hessian_max_samples)
            if used <= HESSIAN_BATCH:
                passes += used * (1 + 2 * HESSIAN_MAX_ITER)
            else:
                passes += used * 3 * HESSIAN_MAX_ITER
    return passes


def _distill_epoch(shape: DataShape, with_val: bool = True) -> float:
    """One epoch of distillation: student steps, teacher forwards on augmented batches, and
    the validation pass of model selection."""
    teacher = FORWARD * shape.n_train if shape.augment else 0.0
    return shape.n_train + teacher + (FORWARD * shape.n_val if with_val else 0.0)


def _teacher_cache(shape: DataShape) -> float:
    return 0.0 if shape.augment else FORWARD * shape.n_train


def base_passes(exp: ExperimentConfig, shape: DataShape) -> float:
    """Image passes of one base run: training, validation per epoch, base diagnostics."""
    d = exp.diagnostics
    train = exp.base.epochs * (shape.n_train + FORWARD * shape.n_val)
    return train + _logits(shape, d) + _heavy(shape, d)


def linearize_passes(
    exp: ExperimentConfig, shape: DataShape, method: str, snl_epochs: int | None
) -> float:
    """Image passes of one linearization with ``method``; SNL at ``snl_epochs`` (None: the
    ``max_epochs`` cap)."""
    s, d = exp.linearize, exp.diagnostics
    after = _logits(shape, d) + _boundary(shape, d)
    if method == "snl":
        epochs = s.max_epochs if snl_epochs is None else snl_epochs
        return epochs * _distill_epoch(shape, with_val=False) + _teacher_cache(shape) + after
    if method == "deepreduce" and s.deepreduce_epochs > 0:
        return s.deepreduce_epochs * _distill_epoch(shape) + _teacher_cache(shape) + after
    return after


def finetune_passes(exp: ExperimentConfig, shape: DataShape) -> float:
    """Image passes of one fine-tune: distillation epochs, then logits on the splits."""
    epochs = exp.finetune.epochs * _distill_epoch(shape)
    return epochs + _teacher_cache(shape) + _logits(shape, exp.diagnostics)


def diagnose_passes(exp: ExperimentConfig, shape: DataShape) -> float:
    """Image passes of the full diagnostics of one fine-tuned model: logits again, then the
    heavy ones (an upper bound with Hessians)."""
    return _logits(shape, exp.diagnostics) + _heavy(shape, exp.diagnostics)


# -- throughput -----------------------------------------------------------------------------
def measure_images_per_s(
    exp: ExperimentConfig, shape: DataShape, device: torch.device, batch_size: int, seconds: float
) -> float:
    """Images/s of base-training steps of the space's model on ``device``: random inputs of
    the data set's shape, one warm-up step, then steps for about ``seconds`` (at least 1)."""
    model = create_model(
        exp.model.name, shape.num_classes, shape.input_shape, exp.model.width, exp.model.granularity
    ).to(device)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, *shape.input_shape, generator=gen)
    y = torch.randint(0, shape.num_classes, (batch_size,), generator=gen)
    batch = Split(x, y, y.clone()).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:  # train_one_epoch reads the loss back: each step is synchronized
        train_one_epoch(model, batch, cross_entropy, optimizer, batch_size=batch_size)

    step()
    steps, start = 0, time.perf_counter()
    while steps < 1 or time.perf_counter() - start < seconds:
        step()
        steps += 1
    return steps * batch_size / (time.perf_counter() - start)


def calibrate(
    exp: ExperimentConfig, shape: DataShape, cpu_threads: int, cuda: bool, seconds: float = 2.0
) -> list[tuple[str, float, str]]:
    """Measured ``(device, images/s, how)`` on the CPU (``cpu_threads`` threads) and, with
    ``cuda`` (the command line looks: devices are its to pick), on the current CUDA GPU."""
    batch = exp.base.batch_size
    rates = []
    threads = torch.get_num_threads()
    torch.set_num_threads(cpu_threads)
    try:
        cpu_batch = min(batch, CPU_CALIBRATION_BATCH)
        start = time.perf_counter()
        rate = measure_images_per_s(exp, shape, torch.device("cpu"), cpu_batch, seconds)
        if cpu_batch < batch and batch / rate <= CPU_FULL_BATCH_S:
            # A small model: per-step overhead dominates at a small batch; a full batch
            # step is cheap enough to measure what the stages run.
            cpu_batch = batch
            rate = measure_images_per_s(exp, shape, torch.device("cpu"), cpu_batch, seconds)
        how = f"{cpu_threads} thread(s), batch {cpu_batch}"
        rates.append(("cpu", rate, f"{how}, measured here in {time.perf_counter() - start:.1f} s"))
    finally:
        torch.set_num_threads(threads)
    if cuda:
        device = torch.device("cuda")
        start = time.perf_counter()
        rate = measure_images_per_s(exp, shape, device, batch, seconds)
        how = f"{torch.cuda.get_device_name(device)}, batch {batch}, bf16 autocast"
        rates.append(("cuda", rate, f"{how}, measured here in {time.perf_counter() - start:.1f} s"))
    return rates
