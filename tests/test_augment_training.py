"""Training with augmentation, the path of every 32x32 data set (CIFAR-10, SVHN, UTKFace).

The data are tiny CIFAR-10 files in the real on-disk format (random pixels, so a crop or a
flip changes an image), loaded by the real loader (``augment=True``). Forward pre-hooks
record what the student and the frozen teacher are given (observation only, nothing is
replaced), through the training loop (distillation), SNL, DeepReDuce's distillation,
fine-tuning with a mitigation, and base training. Checked: every training batch is the
documented crop-and-flip of the shuffled samples, drawn from the seeded generator; the
teacher sees exactly the student's augmented batch, never a cached logit of the plain
image; SNL still ends at exactly its budget.
"""

from __future__ import annotations

import copy
import math
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from tune_linfair.config import FinetuneSettings, LinearizeSettings, PretrainSettings
from tune_linfair.data import get_dataset, random_crop_flip
from tune_linfair.data.base import GroupedDataset
from tune_linfair.finetune import finetune
from tune_linfair.kd import KDLoss, TeacherLogits
from tune_linfair.linearize import linearize
from tune_linfair.models import count_relus, create_model
from tune_linfair.pretrain import pretrain
from tune_linfair.train import train_one_epoch

torch.set_num_threads(1)
BATCH = 16


@pytest.fixture(scope="module")
def cifar(tmp_path_factory: pytest.TempPathFactory) -> GroupedDataset:
    """CIFAR-10 batch files with 3 random images per class and batch."""
    folder = tmp_path_factory.mktemp("data") / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, per_class in [(f"data_batch_{i}", 3) for i in range(1, 6)] + [("test_batch", 2)]:
        labels = np.repeat(np.arange(10), per_class)
        data = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels.tolist()}, f)
    data = get_dataset("cifar10", root=folder.parent, seed=0)
    assert data.augment and data.input_shape == (3, 32, 32)
    return data


def _model(data: GroupedDataset, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("resnet_mini", data.num_classes, data.input_shape, width=4)


class Inputs:
    """Forward pre-hook: keeps a copy of every input the module gets in train mode (the
    student) or in any mode (``always``: the frozen teacher, which stays in eval mode)."""

    def __init__(self, module: nn.Module, always: bool = False) -> None:
        self.seen: list[torch.Tensor] = []
        self.always = always
        self.handle = module.register_forward_pre_hook(self)

    def __call__(self, module: nn.Module, args: tuple) -> None:
        if self.always or module.training:
            self.seen.append(args[0].detach().clone())


def _expected_batches(data: GroupedDataset, seed: int, epochs: int) -> list[torch.Tensor]:
    """The augmented batches of ``train_one_epoch``: per epoch a ``randperm`` of the training
    split, then per batch ``random_crop_flip`` from the same generator."""
    gen = torch.Generator().manual_seed(seed)
    x, out = data.train.x, []
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), BATCH):
            out.append(random_crop_flip(x[order[start : start + BATCH]], gen))
    return out


def _same(seen: list[torch.Tensor], expected: list[torch.Tensor]) -> bool:
    return len(seen) == len(expected) and all(torch.equal(a, b) for a, b in zip(seen, expected))


def test_loop_augments_and_teacher_sees_the_augmented_batch(cifar) -> None:
    student, teacher = _model(cifar), _model(cifar, seed=1).eval()
    logits = TeacherLogits(teacher, cifar.train, augmented=cifar.augment)
    assert logits.cache is None  # no cached logits of un-augmented images
    s_in, t_in = Inputs(student), Inputs(teacher, always=True)
    opt = torch.optim.SGD(student.parameters(), lr=0.01)
    train_one_epoch(student, cifar.train, KDLoss(logits), opt, batch_size=BATCH,
                    generator=torch.Generator().manual_seed(7), augment=random_crop_flip)  # fmt: skip
    expected = _expected_batches(cifar, 7, epochs=1)
    assert _same(s_in.seen, expected) and _same(t_in.seen, expected)
    # the augmentation does change the images: crops and flips, not the plain samples
    plain = {tuple(x.flatten()[:64].tolist()) for x in cifar.train.x}
    changed = sum(tuple(x.flatten()[:64].tolist()) not in plain for b in expected for x in b)
    assert changed > 0.8 * len(cifar.train)


def test_snl_with_augmentation_meets_the_budget_and_shares_batches(cifar) -> None:
    teacher = _model(cifar)
    student = copy.deepcopy(teacher)
    s_in, t_in = Inputs(student), Inputs(teacher, always=True)
    settings = LinearizeSettings(batch_size=BATCH, c0=0.05, snl_mask_lr=0.01, check_every=2,
                                 max_epochs=40)  # fmt: skip
    budget = 200
    log = linearize("snl", student, teacher, cifar, budget, settings=settings, seed=3)
    assert log["reached_budget"] and log["relu_count"] == count_relus(student) == budget
    steps_per_epoch = math.ceil(len(cifar.train) / BATCH)
    assert log["steps"] == len(s_in.seen) > steps_per_epoch  # more than one epoch of masks
    expected = _expected_batches(cifar, 3, epochs=log["epochs"])[: log["steps"]]
    assert _same(s_in.seen, expected) and _same(t_in.seen, expected)


def test_deepreduce_finetune_and_base_training_augment(cifar) -> None:
    teacher = _model(cifar)
    student = copy.deepcopy(teacher)
    s_in, t_in = Inputs(student), Inputs(teacher, always=True)
    settings = LinearizeSettings(batch_size=BATCH, deepreduce_epochs=1)
    log = linearize("deepreduce", student, teacher, cifar, 0.5, settings=settings, seed=4)
    assert log["steps"] == len(s_in.seen)
    expected = _expected_batches(cifar, 4, epochs=1)
    assert _same(s_in.seen, expected) and _same(t_in.seen, expected)

    s_in.seen.clear(), t_in.seen.clear()
    ft = FinetuneSettings(mitigation="lagrangian", mu=0.1, epochs=2, batch_size=BATCH)
    finetune(student, teacher, cifar, ft, seed=5)
    expected = _expected_batches(cifar, 5, epochs=2)
    assert _same(s_in.seen, expected)
    # and the teacher exactly those batches (the lagrangian loss needs no pass of its own)
    assert _same(t_in.seen, expected)

    base = _model(cifar, seed=2)
    b_in = Inputs(base)
    pretrain(base, cifar, PretrainSettings(epochs=1, batch_size=BATCH), seed=6)
    assert _same(b_in.seen, _expected_batches(cifar, 6, epochs=1))
