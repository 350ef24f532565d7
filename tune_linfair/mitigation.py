"""Fairness mitigations: per-group losses for fine-tuning and for SNL's mask training.

Each mitigation is a ``loss_fn(model, batch)`` callable for the training loop
(:func:`tune_linfair.train.fit`, or SNL's epochs) that keeps per-group statistics;
:func:`group_loss` builds any of them by name. The fine-tuning stage uses them on the
distillation loss (``FinetuneSettings.mitigation``), SNL adds them to its mask-training loss
(``LinearizeSettings.mask_mitigation``, :mod:`tune_linfair.linearize.snl`). The multiplier
mitigations keep statistics over the epoch; ``fit`` calls ``end_epoch(model)`` after each
epoch, which updates the multipliers once and returns ``{"lambda_<a>": ..,
"violation_<a>": ..}`` for every group id ``a`` (merged into the epoch's log). As in cooper,
a *state* (loss, per-group violations) is computed per batch, the *formulation* (a
Lagrangian) combines them, and the multipliers are checkpointed (``state_dict``; a sweep
trial saves the final ones in its fine-tuned checkpoint's record,
:func:`tune_linfair.stages.run_trial`).

Notation: ``l_i`` is the distillation loss of sample ``i``
(:func:`~tune_linfair.kd.kd_per_sample`, ``CE + T^2 * KL``, T = 4), ``B`` a
mini-batch, ``B_a`` its samples of group ``a``, ``S`` / ``S_a`` the epoch's samples (all of
them / group ``a``), ``L(X) = mean_{i in X} l_i``.

``lagrangian`` -- :class:`LagrangianKD`, Das, Romanelli, Fioretto, "Disparate Impact on
Group Accuracy of Linearization for Private Inference", ICML 2024, Algorithm 1::

    per batch:   loss = L(B) + sum_{a : |B_a| > 0} lambda_a * |L(B) - L(B_a)|
    per epoch:   lambda_a <- lambda_a + mu * |L(S) - L(S_a)|     (groups with |S_a| > 0)
    lambda_a = 0 at the start.

``L(S)``, ``L(S_a)`` are the sample-weighted means of the (detached) per-sample losses seen
during the epoch's training steps. The correction against the paper's released code: there
the penalty is rebuilt as ``torch.tensor(...).detach()``, a constant, so the multipliers add
a number to the loss and never change the gradient; here the penalty is part of the
autograd graph. With ``mu = 0`` every multiplier stays 0 and the update is exactly plain KD.

``accuracy_gap`` -- :class:`AccuracyGapLoss`, Hashemizadeh, Ramirez, Sukumaran, Farnadi,
Lacoste-Julien, Gallego-Posada, "Balancing Act: Constraining Disparate Impact in Sparse
Models", ICLR 2024 (Sec. 3, "constrained excess accuracy gaps"): one constraint per group::

    drop_a <= drop + epsilon,   drop_a = acc_base_a - acc_a,   drop = acc_base - acc

(accuracies in percent, base = the model before linearization, on the training split).
The true (non-differentiable) violation ``v_a = drop_a - drop - epsilon`` drives projected
gradient ascent on the multipliers, the differentiable cross-entropy surrogate drives the
model (the proxy-Lagrangian of Cotter et al. 2019, as Balancing Act does)::

    per batch:   loss = L(B) + sum_{a : |B_a| > 0} lambda_a * (CE(B_a) - CE(B))
    per epoch:   lambda_a <- max(0, lambda_a + dual_lr * v_a)     (groups with |S_a| > 0)

See :class:`AccuracyGapLoss` for why this surrogate and why a per-epoch update.

``group_dro`` -- :class:`GroupDRO`, Sagawa, Koh, Hashimoto, Liang, "Distributionally Robust
Neural Networks for Group Shifts", ICLR 2020, Algorithm 1 (online Group DRO) on the
distillation loss::

    per batch:   q_a <- q_a * exp(eta * L(B_a)),  q <- q / sum_b q_b,   loss = sum_a q_a L(B_a)

with ``q`` uniform at the start and ``L(B_a) = 0`` for a group absent from the batch (its
weight only shrinks relative to the others, as in the authors' code).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tune_linfair.data.base import GroupedDataset
from tune_linfair.errors import UserError
from tune_linfair.kd import TEMPERATURE, TeacherLogits, kd_per_sample
from tune_linfair.train import Batch, EvalResult, evaluate


def group_sums(
    values: torch.Tensor, groups: torch.Tensor, num_groups: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum_{i : g_i = a} values_i, |{i : g_i = a}|)`` for ``a = 0..num_groups-1``.

    Differentiable in ``values``; no host synchronization. Group ids must lie in
    ``0..num_groups-1``.
    """
    sums = torch.zeros(num_groups, dtype=values.dtype, device=values.device)
    sums = sums.index_add(0, groups, values)
    counts = torch.bincount(groups, minlength=num_groups)
    return sums, counts


def _check_num_groups(num_groups: int) -> int:
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
        raise UserError(f"num_groups must be a positive integer, got {num_groups!r}")
    return num_groups


class _GroupMultipliers:
    """One Lagrange multiplier per group (float64, CPU), checkpointable."""

    def __init__(self, num_groups: int) -> None:
        self.num_groups = _check_num_groups(num_groups)
        self.lambdas = torch.zeros(self.num_groups, dtype=torch.float64)
        self._device_lambdas: torch.Tensor | None = None
        self._reset_epoch()

    def _reset_epoch(self) -> None:
        self._counts: torch.Tensor | None = None

    def _lambdas_on(self, like: torch.Tensor) -> torch.Tensor:
        """The multipliers as constants on ``like``'s device and dtype (cached)."""
        cached = self._device_lambdas
        if cached is None or cached.device != like.device or cached.dtype != like.dtype:
            cached = self.lambdas.to(like.device, like.dtype)
            self._device_lambdas = cached
        return cached

    def _set_lambdas(self, lambdas: torch.Tensor) -> None:
        self.lambdas = lambdas.detach().to("cpu", torch.float64).clone()
        self._device_lambdas = None

    def state_dict(self) -> dict[str, torch.Tensor]:
        """``{"lambdas": (G,) float64}`` -- what a checkpoint must hold to resume."""
        return {"lambdas": self.lambdas.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore multipliers saved by :meth:`state_dict` (same group count)."""
        lambdas = torch.as_tensor(state["lambdas"], dtype=torch.float64)
        if lambdas.shape != (self.num_groups,):
            raise UserError(
                f"multiplier state has shape {tuple(lambdas.shape)}, "
                f"expected ({self.num_groups},) for {self.num_groups} groups"
            )
        if not bool(torch.isfinite(lambdas).all()) or bool((lambdas < 0).any()):
            raise UserError(f"multipliers must be finite and >= 0, got {lambdas.tolist()}")
        self._set_lambdas(lambdas)

    def _log(self, violations: torch.Tensor) -> dict[str, float]:
        log: dict[str, float] = {}
        for a in range(self.num_groups):
            log[f"lambda_{a}"] = float(self.lambdas[a])
        for a in range(self.num_groups):
            log[f"violation_{a}"] = float(violations[a])
        return log


class LagrangianKD(_GroupMultipliers):
    """KD loss with the paper's per-group Lagrangian penalty, back-propagated.

    Das, Romanelli, Fioretto (ICML 2024), Algorithm 1, with the penalty in the graph::

        loss(B) = L(B) + sum_{a : |B_a| > 0} lambda_a * |L(B) - L(B_a)|
        end of epoch: lambda_a <- lambda_a + mu * |L(S) - L(S_a)|   if |S_a| > 0

    ``L`` is the mean of :func:`~tune_linfair.kd.kd_per_sample`
    (``CE + T^2 * KL``) over the batch / its group-``a`` samples; ``L(S)`` and ``L(S_a)``
    are sample-weighted means of the detached per-sample losses of the epoch's training
    steps. Groups absent from a batch add nothing to that batch; groups absent from the
    whole epoch keep their multiplier (their violation is logged as NaN). ``mu = 0``
    leaves every multiplier at 0, and then each update equals plain KD exactly.

    ``end_epoch`` returns ``lambda_<a>`` (after the update) and ``violation_<a>`` =
    ``|L(S) - L(S_a)|`` for each group id ``a``.
    """

    def __init__(
        self,
        teacher: TeacherLogits,
        num_groups: int,
        mu: float,
        temperature: float = TEMPERATURE,
    ) -> None:
        if not math.isfinite(mu) or mu < 0:
            raise UserError(f"mu must be a finite number >= 0, got {mu!r}")
        self.teacher = teacher
        self.mu = float(mu)
        self.temperature = float(temperature)
        super().__init__(num_groups)

    def _reset_epoch(self) -> None:
        super()._reset_epoch()
        self._sums: torch.Tensor | None = None

    def per_sample(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Per-sample distillation loss ``CE + T^2 * KL`` of the batch (float32)."""
        return kd_per_sample(model(batch.x), self.teacher(batch), batch.y, self.temperature)

    def penalty(self, per_sample: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        """``sum_{a : |B_a| > 0} lambda_a * |L(B) - L(B_a)|``, differentiable in the losses."""
        sums, counts = group_sums(per_sample, groups, self.num_groups)
        group_mean = sums / counts.clamp_min(1).to(sums.dtype)
        gap = (per_sample.mean() - group_mean).abs()
        terms = torch.where(counts > 0, self._lambdas_on(gap) * gap, torch.zeros_like(gap))
        return terms.sum()

    def __call__(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        per = self.per_sample(model, batch)
        with torch.no_grad():
            sums, counts = group_sums(per.detach().double(), batch.g, self.num_groups)
            self._sums = sums if self._sums is None else self._sums + sums
            self._counts = counts if self._counts is None else self._counts + counts
        return per.mean() + self.penalty(per, batch.g)

    def epoch_violations(self) -> torch.Tensor:
        """``|L(S) - L(S_a)|`` over the epoch so far (NaN for groups not seen), float64 CPU."""
        if self._sums is None or self._counts is None:
            return torch.full((self.num_groups,), math.nan, dtype=torch.float64)
        sums, counts = self._sums.cpu(), self._counts.cpu().double()
        overall = sums.sum() / counts.sum()
        group_mean = sums / counts.clamp_min(1)
        return torch.where(counts > 0, (overall - group_mean).abs(), math.nan)

    def end_epoch(self, model: nn.Module | None = None) -> dict[str, float]:
        """``lambda_a += mu * |L(S) - L(S_a)|`` for groups seen this epoch; reset the sums.

        Returns the epoch log entries ``lambda_<a>`` and ``violation_<a>``.
        """
        violations = self.epoch_violations()
        seen = ~torch.isnan(violations)
        self._set_lambdas(
            torch.where(seen, self.lambdas + self.mu * violations.nan_to_num(0.0), self.lambdas)
        )
        self._reset_epoch()
        return self._log(violations)


class AccuracyGapLoss(_GroupMultipliers):
    """KD loss plus Balancing Act's accuracy-gap constraints (Hashemizadeh et al., ICLR 2024).

    Constraint per group ``a`` (accuracies in percent)::

        drop_a <= drop + epsilon,  drop_a = acc_base_a - acc_a,  drop = acc_base - acc

    Model update, per batch (differentiable cross-entropy surrogate)::

        loss(B) = L(B) + sum_{a : |B_a| > 0} lambda_a * (CE(B_a) - CE(B))

    ``L`` is the distillation loss ``CE + T^2 * KL`` and ``CE`` the cross-entropy with the
    labels. This is the gradient of Balancing Act's surrogate constraint
    ``(CE(B_a) - CE_base_a) - (CE(B) - CE_base)`` (its ``compute_surrogate``; the base
    model's losses and ``epsilon`` are constants, so they are left out): it raises the
    weight of a group whose loss exceeds the average, and, because
    ``CE(B) = sum_a |B_a|/|B| CE(B_a)``, amounts to weighting group ``a``'s cross-entropy by
    ``|B_a|/|B| * (1 - sum_b lambda_b) + lambda_a``. Cross-entropy is used, not the KD loss,
    because the constraint is on accuracy with respect to the labels.

    Multiplier update, once per epoch (projected gradient ascent on the true violation)::

        v_a = drop_a - drop - epsilon
        lambda_a <- max(0, lambda_a + dual_lr * v_a)       for groups seen this epoch

    ``acc_a`` and ``acc`` are measured on the predictions the training steps of the epoch
    made anyway (train mode, weights moving within the epoch: no extra forward pass), and
    ``acc_base = sum_a n_a acc_base_a / sum_a n_a`` over the epoch's group counts ``n_a``,
    which is the base model's overall training accuracy since an epoch covers the split.
    Why per epoch, not per batch as Balancing Act: a minority group has only a few samples
    in a batch (about 3 of 64 on the default digits data), so a batch accuracy is 0, 50 or
    100% and a per-batch ascent mostly follows noise; an epoch's predictions are a stable
    estimate (Balancing Act smooths with a replay buffer for the same reason), the update
    is deterministic given the epoch, and it matches :class:`LagrangianKD`'s schedule.

    ``base_accuracy[a]`` is the base model's accuracy (percent) on group ``a`` of the
    training split, one entry per group. ``end_epoch`` returns ``lambda_<a>`` (after the
    update) and ``violation_<a>`` = ``v_a`` (NaN for a group absent from the epoch).
    """

    def __init__(
        self,
        teacher: TeacherLogits,
        base_accuracy: Sequence[float],
        epsilon: float = 0.0,
        dual_lr: float = 0.01,
        temperature: float = TEMPERATURE,
        num_groups: int | None = None,
    ) -> None:
        base = [float(v) for v in base_accuracy]
        if num_groups is not None and len(base) != num_groups:
            raise UserError(
                f"base_accuracy has {len(base)} entries but the data have {num_groups} groups"
            )
        if not base or any(not math.isfinite(v) or not 0.0 <= v <= 100.0 for v in base):
            raise UserError(
                f"base_accuracy must be one accuracy in percent (0..100) per group, got {base}"
            )
        if not math.isfinite(epsilon) or epsilon < 0:
            raise UserError(f"epsilon must be a finite number >= 0, got {epsilon!r}")
        if not math.isfinite(dual_lr) or dual_lr < 0:
            raise UserError(f"dual_lr must be a finite number >= 0, got {dual_lr!r}")
        self.teacher = teacher
        self.base_accuracy = torch.tensor(base, dtype=torch.float64)
        self.epsilon = float(epsilon)
        self.dual_lr = float(dual_lr)
        self.temperature = float(temperature)
        super().__init__(len(base))

    def _reset_epoch(self) -> None:
        super()._reset_epoch()
        self._correct: torch.Tensor | None = None

    def surrogate(self, ce: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        """``sum_{a : |B_a| > 0} lambda_a * (CE(B_a) - CE(B))`` from per-sample CE."""
        sums, counts = group_sums(ce, groups, self.num_groups)
        group_mean = sums / counts.clamp_min(1).to(sums.dtype)
        gap = group_mean - ce.mean()
        terms = torch.where(counts > 0, self._lambdas_on(gap) * gap, torch.zeros_like(gap))
        return terms.sum()

    def __call__(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        logits = model(batch.x).float()
        kd = kd_per_sample(logits, self.teacher(batch), batch.y, self.temperature)
        ce = F.cross_entropy(logits, batch.y, reduction="none")
        with torch.no_grad():
            hits = (logits.argmax(dim=1) == batch.y).double()
            correct, counts = group_sums(hits, batch.g, self.num_groups)
            self._correct = correct if self._correct is None else self._correct + correct
            self._counts = counts if self._counts is None else self._counts + counts
        return kd.mean() + self.surrogate(ce, batch.g)

    def epoch_violations(self) -> torch.Tensor:
        """``v_a = drop_a - drop - epsilon`` over the epoch so far (NaN for unseen groups)."""
        if self._correct is None or self._counts is None:
            return torch.full((self.num_groups,), math.nan, dtype=torch.float64)
        correct, counts = self._correct.cpu(), self._counts.cpu().double()
        seen = counts > 0
        acc_a = 100.0 * correct / counts.clamp_min(1)
        acc = 100.0 * correct.sum() / counts.sum()
        base = (counts * self.base_accuracy).sum() / counts.sum()
        v = (self.base_accuracy - acc_a) - (base - acc) - self.epsilon
        return torch.where(seen, v, math.nan)

    def end_epoch(self, model: nn.Module | None = None) -> dict[str, float]:
        """``lambda_a <- max(0, lambda_a + dual_lr * v_a)`` for groups seen this epoch.

        Returns the epoch log entries ``lambda_<a>`` and ``violation_<a>``.
        """
        violations = self.epoch_violations()
        seen = ~torch.isnan(violations)
        stepped = (self.lambdas + self.dual_lr * violations.nan_to_num(0.0)).clamp_min(0.0)
        self._set_lambdas(torch.where(seen, stepped, self.lambdas))
        self._reset_epoch()
        return self._log(violations)


class GroupDRO:
    """Online Group DRO (Sagawa et al., ICLR 2020, Algorithm 1) on the distillation loss.

    Per batch, with ``L(B_a)`` the mean of :func:`~tune_linfair.kd.kd_per_sample` over the
    batch's group-``a`` samples (0 when there are none)::

        q_a <- q_a * exp(eta * L(B_a));  q <- q / sum_b q_b;  loss = sum_a q_a * L(B_a)

    The weights are updated before the loss is formed (the algorithm's order) and are
    constants for the gradient. ``q`` starts uniform; ``eta = 0`` keeps it uniform (a
    group-balanced loss). ``end_epoch`` returns ``q_<a>`` for each group.
    """

    def __init__(
        self, teacher: TeacherLogits, num_groups: int, eta: float, temperature: float = TEMPERATURE
    ) -> None:
        if not math.isfinite(eta) or eta < 0:
            raise UserError(f"eta must be a finite number >= 0, got {eta!r}")
        self.teacher = teacher
        self.num_groups = _check_num_groups(num_groups)
        self.eta = float(eta)
        self.temperature = float(temperature)
        self.q = torch.full((self.num_groups,), 1.0 / self.num_groups, dtype=torch.float64)

    def step_weights(self, group_losses: torch.Tensor) -> torch.Tensor:
        """``q <- normalize(q * exp(eta * L(B_a)))`` from the (detached) group losses;
        returns the new ``q``. Computed in log space, so large losses cannot overflow."""
        logits = self.q.log() + self.eta * group_losses.detach().to("cpu", torch.float64)
        self.q = torch.softmax(logits, dim=0)
        return self.q

    def __call__(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        per = kd_per_sample(model(batch.x), self.teacher(batch), batch.y, self.temperature)
        sums, counts = group_sums(per, batch.g, self.num_groups)
        group_mean = sums / counts.clamp_min(1).to(sums.dtype)
        q = self.step_weights(group_mean).to(group_mean.device, group_mean.dtype)
        return (q * group_mean).sum()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """``{"q": (G,) float64}``: the group weights."""
        return {"q": self.q.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore weights saved by :meth:`state_dict` (same group count, a distribution)."""
        q = torch.as_tensor(state["q"], dtype=torch.float64)
        if (
            q.shape != (self.num_groups,)
            or not bool(torch.isfinite(q).all())
            or bool((q < 0).any())
        ):
            raise UserError(f"group weights must be {self.num_groups} finite values >= 0, got {q}")
        self.q = q.clone()

    def end_epoch(self, model: nn.Module | None = None) -> dict[str, float]:
        return {f"q_{a}": float(self.q[a]) for a in range(self.num_groups)}


def train_group_accuracy(teacher: TeacherLogits, data: GroupedDataset) -> list[float]:
    """The base model's per-group accuracy (percent) on the training split, from the cached
    teacher logits when there are any, else one evaluation pass; 0 for a group with no
    training sample (it never has a violation)."""
    logits = (
        teacher.cache if teacher.cache is not None else evaluate(teacher.teacher, data.train).logits
    )
    result = EvalResult(logits, data.train.y.cpu(), data.train.g.cpu())
    return [0.0 if math.isnan(v) else v for v in result.group_accuracy(data.num_groups)]


def group_loss(
    mitigation: str,
    teacher: TeacherLogits,
    data: GroupedDataset,
    *,
    mu: float = 0.0,
    epsilon: float = 0.0,
    dual_lr: float = 0.01,
    eta: float = 0.01,
    temperature: float = TEMPERATURE,
    base_accuracy: Sequence[float] | None = None,
) -> LagrangianKD | AccuracyGapLoss | GroupDRO:
    """The loss of ``mitigation`` (``none``, ``lagrangian``, ``accuracy_gap``, ``group_dro``)
    on the distillation loss. ``none`` is :class:`LagrangianKD` with ``mu = 0`` (exactly
    plain distillation, logging the same per-group columns); ``accuracy_gap`` measures the
    base model's training accuracy per group from ``teacher`` unless ``base_accuracy`` is
    given."""
    if mitigation == "accuracy_gap":
        if base_accuracy is None:
            base_accuracy = train_group_accuracy(teacher, data)
        return AccuracyGapLoss(
            teacher,
            base_accuracy,
            epsilon=epsilon,
            dual_lr=dual_lr,
            temperature=temperature,
            num_groups=data.num_groups,
        )
    if mitigation == "group_dro":
        return GroupDRO(teacher, data.num_groups, eta, temperature)
    return LagrangianKD(
        teacher, data.num_groups, mu if mitigation == "lagrangian" else 0.0, temperature
    )
