"""Base training: the all-ReLU model every linearization starts from (and distils from).

One function, :func:`pretrain`, with its settings :class:`~tune_linfair.config.PretrainSettings`,
like :func:`tune_linfair.linearize.linearize` and :func:`tune_linfair.finetune.finetune`.

Recipe (the paper's base models, Das et al., ICML 2024, Sec. 5, after He et al.'s CIFAR
ResNet recipe): cross entropy, SGD (lr 0.1, momentum 0.9, weight decay 5e-4) over the
weights (masks stay at 1), MultiStepLR multiplying the rate by 0.1 at 50% and 75% of the
epochs; the model keeps the weights of the epoch with the best validation accuracy (the
test split is never used). Paper scale: 160 epochs, batch 256.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from tune_linfair.checkpointing import Checkpointer
from tune_linfair.config import PretrainSettings
from tune_linfair.data import GroupedDataset, random_crop_flip
from tune_linfair.models.activation import weight_parameters
from tune_linfair.train import Batch, FitResult, fit, model_device, seed_everything


def cross_entropy(model: nn.Module, batch: Batch) -> torch.Tensor:
    """The base-training loss: mean cross entropy of the batch."""
    return F.cross_entropy(model(batch.x), batch.y)


def pretrain(
    model: nn.Module,
    data: GroupedDataset,
    settings: PretrainSettings,
    *,
    seed: int = 0,
    on_epoch_end: Callable[[int, dict[str, float], nn.Module], None] | None = None,
    progress: bool = False,
    checkpoint: Checkpointer | None = None,
) -> FitResult:
    """Train the all-ReLU ``model`` in place on ``data.train`` with ``settings``; the model
    ends with the weights of its best validation epoch. Batch order and augmentation (crop
    and flip for 32x32 RGB data) are seeded by ``seed``; the model's device is used.
    ``checkpoint``: saves every ``checkpoint.every`` epochs and resumes from its last state
    (:mod:`tune_linfair.checkpointing`)."""
    data = data.to(model_device(model))
    generator = seed_everything(seed)
    params = [p for _, p in weight_parameters(model)]
    optimizer = torch.optim.SGD(
        params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
    )
    milestones = sorted({max(1, round(f * settings.epochs)) for f in settings.milestones})
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, settings.gamma)
    return fit(
        model,
        data.train,
        data.val,
        cross_entropy,
        optimizer,
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        generator=generator,
        scheduler=scheduler,
        augment=random_crop_flip if data.augment else None,
        on_epoch_end=on_epoch_end,
        progress=progress,
        desc="base",
        checkpoint=checkpoint,
    )
