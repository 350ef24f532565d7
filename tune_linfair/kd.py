"""Knowledge distillation: the loss that SNL, DeepReDuce and fine-tuning share.

Hinton et al., "Distilling the Knowledge in a Neural Network" (2015), in the form used by
SNL (Cho et al., ICML 2022) and by the paper (Das et al., ICML 2024, Sec. 5):

    L_KD = CE(z_s, y) + T^2 * KL(softmax(z_t / T) || softmax(z_s / T)),   T = 4,

i.e. ``F.kl_div(log_softmax(z_s / T), softmax(z_t / T), reduction="batchmean") * T**2``.
DeepReDuce weights the two terms: ``lambda * CE + (1 - lambda) * T^2 * KL``.

The teacher is frozen: its logits are computed under ``no_grad`` (never back-propagated, as
the SNL code wastefully does), and cached once per training sample, in float32, when the
training data are not augmented.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tune_linfair.data.base import Split
from tune_linfair.train import Batch, evaluate

TEMPERATURE = 4.0


def kd_per_sample(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    y: torch.Tensor,
    temperature: float = TEMPERATURE,
    ce_weight: float = 1.0,
    kd_weight: float = 1.0,
) -> torch.Tensor:
    """Per-sample ``ce_weight * CE + kd_weight * T^2 * KL(teacher_T || student_T)``.

    The KL term is summed over classes per sample, so its batch mean equals
    ``F.kl_div(..., reduction="batchmean")``.
    """
    z_s = student_logits.float()
    ce = F.cross_entropy(z_s, y, reduction="none")
    log_p_s = F.log_softmax(z_s / temperature, dim=1)
    p_t = F.softmax(teacher_logits.float() / temperature, dim=1)
    kl = F.kl_div(log_p_s, p_t, reduction="none").sum(dim=1) * temperature**2
    return ce_weight * ce + kd_weight * kl


class TeacherLogits:
    """The frozen teacher's logits for a training batch.

    Without augmentation the logits of every training sample are computed once, in float32
    (:func:`~tune_linfair.train.evaluate`: autocast off, no TF32), and looked up by the
    batch's sample indices. With augmentation the teacher runs (no grad) on the augmented
    batch itself, so teacher and student see the same input; that forward runs at the
    training step's precision (bf16 autocast on CUDA, like the student's), because a float32
    teacher pass at every step would cost more than the bf16 student step it serves.
    """

    def __init__(self, teacher: nn.Module, train: Split, augmented: bool) -> None:
        # Frozen by construction: its forward runs under no_grad (below) and nothing steps
        # its parameters; their requires_grad flags are left as they were, so the same
        # base model can later be copied into another student.
        self.teacher = teacher.eval()
        self.cache = None if augmented else evaluate(teacher, train).logits

    @torch.no_grad()
    def __call__(self, batch: Batch) -> torch.Tensor:
        if self.cache is not None:
            return self.cache[batch.index.cpu()].to(batch.x.device)
        return self.teacher(batch.x).float()


class KDLoss:
    """``loss_fn(model, batch)`` for :func:`tune_linfair.train.train_one_epoch`:
    mean over the batch of :func:`kd_per_sample`."""

    def __init__(
        self,
        teacher: TeacherLogits,
        temperature: float = TEMPERATURE,
        ce_weight: float = 1.0,
        kd_weight: float = 1.0,
    ) -> None:
        self.teacher = teacher
        self.temperature = temperature
        self.ce_weight = ce_weight
        self.kd_weight = kd_weight

    def per_sample(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return kd_per_sample(
            model(batch.x),
            self.teacher(batch),
            batch.y,
            self.temperature,
            self.ce_weight,
            self.kd_weight,
        )

    def __call__(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return self.per_sample(model, batch).mean()
