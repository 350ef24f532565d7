"""Fine-tuning a linearized student by distillation, with or without a fairness mitigation.

One entry point, :func:`finetune`, runs the fine-tuning stage of both SNL and DeepReDuce
(settings: :class:`~tune_linfair.config.FinetuneSettings`): knowledge distillation from the frozen base model (the teacher),
``L_KD = CE + T^2 * KL`` with T = 4 (Das, Romanelli, Fioretto, ICML 2024, Sec. 5), SGD
(lr 1e-3, momentum 0.9, weight decay 5e-4) over the weights only (the binary masks stay
frozen), a cosine learning-rate schedule over the epochs, and model selection on the
validation split (never the test split) through :func:`tune_linfair.train.fit`.

Mitigations (:data:`MITIGATIONS`, formulas in :mod:`tune_linfair.mitigation`):

- ``none``: plain KD (the paper's baseline). It runs :class:`LagrangianKD` with
  ``mu = 0``, whose update is exactly plain KD's, so that every mitigation logs the same
  per-group columns (``lambda_<a>`` = 0, ``violation_<a>`` = ``|L(S) - L(S_a)|``);
- ``lagrangian``: the paper's Algorithm 1 with the penalty back-propagated
  (:class:`LagrangianKD`, step ``mu``);
- ``accuracy_gap``: Balancing Act's accuracy-gap constraints (Hashemizadeh et al., ICLR
  2024; :class:`AccuracyGapLoss`, tolerance ``epsilon``, multiplier step ``dual_lr``);
- ``group_dro``: online Group DRO (Sagawa et al., ICLR 2020; :class:`GroupDRO`, step
  ``eta``), the standard worst-group baseline.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from tune_linfair.checkpointing import Checkpointer
from tune_linfair.config import MITIGATIONS, SELECTORS, FinetuneSettings
from tune_linfair.data.augment import random_crop_flip
from tune_linfair.data.base import GroupedDataset
from tune_linfair.errors import UserError
from tune_linfair.kd import KDLoss, TeacherLogits, kd_per_sample
from tune_linfair.mitigation import (
    AccuracyGapLoss,
    GroupDRO,
    LagrangianKD,
    group_loss,
    group_sums,
    train_group_accuracy,
)
from tune_linfair.models.activation import linearizable_layers, weight_parameters
from tune_linfair.train import (
    EvalResult,
    Selector,
    fit,
    model_device,
    seed_everything,
    val_accuracy,
)


@dataclass
class FinetuneResult:
    """What :func:`finetune` returns.

    ``history``: one dict per epoch (train loss, ``val_accuracy``, per-group validation
    accuracies, ``score``, and every ``lambda_<a>`` / ``violation_<a>``);
    ``best_epoch`` / ``best_score``: the epoch selected on validation and its score;
    ``multipliers``: the final multipliers (state dict of the mitigation);
    ``resumed_from_epoch``: the epochs done by the checkpoint it resumed from (None: from 0).
    """

    history: list[dict[str, float]]
    best_epoch: int
    best_score: float
    multipliers: dict[str, torch.Tensor]
    steps: int
    resumed_from_epoch: int | None = None


def worst_group_accuracy(result: EvalResult) -> float:
    """Selector: the minimum over non-empty groups of the per-group accuracy (percent)."""
    groups = torch.unique(result.g)
    if len(groups) == 0:
        return math.nan
    correct = result.correct.float()
    return min(100.0 * float(correct[result.g == a].mean()) for a in groups.tolist())


def _selector(name: str) -> Selector:
    return val_accuracy if name == "accuracy" else worst_group_accuracy


def _check_groups(data: GroupedDataset) -> None:
    for name in ("train", "val", "test"):
        g = data.split(name).g
        if len(g) and (int(g.min()) < 0 or int(g.max()) >= data.num_groups):
            raise UserError(
                f"{data.name} {name} split has group ids {int(g.min())}..{int(g.max())} "
                f"but {data.num_groups} group names; ids must lie in 0..{data.num_groups - 1}"
            )


def build_loss(
    settings: FinetuneSettings,
    teacher: TeacherLogits,
    data: GroupedDataset,
    base_accuracy: Sequence[float] | None = None,
) -> LagrangianKD | AccuracyGapLoss | GroupDRO:
    """The ``loss_fn`` of ``settings.mitigation`` (:func:`tune_linfair.mitigation.group_loss`)."""
    return group_loss(
        settings.mitigation,
        teacher,
        data,
        mu=settings.mu,
        epsilon=settings.epsilon,
        dual_lr=settings.dual_lr,
        eta=settings.eta,
        temperature=settings.temperature,
        base_accuracy=base_accuracy,
    )


def finetune(
    student: nn.Module,
    teacher: nn.Module,
    data: GroupedDataset,
    settings: FinetuneSettings,
    *,
    seed: int = 0,
    on_epoch_end: Callable[[int, dict[str, float], nn.Module], None] | None = None,
    progress: bool = False,
    base_accuracy: Sequence[float] | None = None,
    checkpoint: Checkpointer | None = None,
) -> FinetuneResult:
    """Fine-tune ``student`` in place by distillation from ``teacher`` under ``settings``.

    Loss: ``settings.mitigation``'s (see :mod:`tune_linfair.mitigation`); SGD over
    the weights (masks excluded, they stay frozen) with ``lr``, ``momentum``,
    ``weight_decay`` and a cosine schedule to 0 over ``epochs``; batch order and
    augmentation seeded by ``seed``. The student ends with the weights of the epoch that
    scored best on the validation split (``settings.select``); the test split is not used.
    ``base_accuracy`` (``accuracy_gap`` only): the base model's per-group training
    accuracy in percent, measured from ``teacher`` when None. The student's device is used;
    teacher and data are moved there. ``checkpoint``: saves every ``checkpoint.every`` epochs
    (weights, optimizer, schedule, multipliers, RNG states) and resumes from its last state
    (:mod:`tune_linfair.checkpointing`).
    """
    if not isinstance(settings, FinetuneSettings):
        raise UserError(f"settings must be a FinetuneSettings, got {type(settings).__name__}")
    _check_groups(data)
    if base_accuracy is not None and len(base_accuracy) != data.num_groups:
        raise UserError(
            f"base_accuracy has {len(base_accuracy)} entries but {data.name} has "
            f"{data.num_groups} groups"
        )
    trainable = [name for name, layer in linearizable_layers(student) if layer.mode != "frozen"]
    if trainable:
        raise UserError(
            f"student mask {trainable[0]!r} is still trainable; binarize and freeze the "
            "masks (linearize) before fine-tuning"
        )
    device = model_device(student)
    teacher = teacher.to(device)
    data = data.to(device)
    generator = seed_everything(seed)

    teacher_logits = TeacherLogits(teacher, data.train, augmented=data.augment)
    loss_fn = build_loss(settings, teacher_logits, data, base_accuracy)
    params = [p for _, p in weight_parameters(student) if p.requires_grad]
    optimizer = torch.optim.SGD(
        params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=settings.epochs)

    result = fit(
        student,
        data.train,
        data.val,
        loss_fn,
        optimizer,
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        generator=generator,
        scheduler=scheduler,
        augment=random_crop_flip if data.augment else None,
        select=_selector(settings.select),
        on_epoch_end=on_epoch_end,
        progress=progress,
        desc=f"finetune[{settings.mitigation}]",
        checkpoint=checkpoint,
    )
    return FinetuneResult(
        history=result.history,
        best_epoch=result.best_epoch,
        best_score=result.best_score,
        multipliers=loss_fn.state_dict(),
        steps=result.steps,
        resumed_from_epoch=result.resumed_from_epoch,
    )


__all__ = [
    "MITIGATIONS",
    "SELECTORS",
    "AccuracyGapLoss",
    "FinetuneResult",
    "FinetuneSettings",
    "GroupDRO",
    "KDLoss",
    "LagrangianKD",
    "TeacherLogits",
    "finetune",
    "group_loss",
    "group_sums",
    "train_group_accuracy",
    "kd_per_sample",
    "worst_group_accuracy",
]
