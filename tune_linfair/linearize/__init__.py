"""ReLU linearization to a budget: SNL, DeepReDuce, and a random-placement baseline.

One entry point, :func:`linearize`, runs any method on a student model in place (masks end
binary and frozen; the teacher is left as it was) and returns a log dict. The methods:

- ``snl``: Selective Network Linearization (Cho et al., ICML 2022), masks trained with an
  L1 penalty under distillation, finished by keeping exactly the ``budget`` largest masks
  (:mod:`tune_linfair.linearize.snl`);
- ``deepreduce``: DeepReDuce (Jha et al., ICML 2021), stage culling and block thinning, the
  configuration that best fills the budget, then its distillation
  (:mod:`tune_linfair.linearize.deepreduce`);
- ``random``: the same budget with ReLUs kept uniformly at random, seeded
  (:mod:`tune_linfair.linearize.random_masks`).

Budgets are fractions in (0, 1] or counts >= 1 (:func:`resolve_budget`). The algorithms,
constants and differences from the original code are in ``docs/readme_linearize.md``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from tune_linfair.data.base import GroupedDataset
from tune_linfair.errors import UserError, unknown
from tune_linfair.linearize.budget import freeze_top, resolve_budget, select_entries
from tune_linfair.linearize.deepreduce import (
    DeepReduceConfig,
    apply_deepreduce,
    deepreduce_configs,
    deepreduce_distill,
    reinitialize,
    select_config,
)
from tune_linfair.linearize.random_masks import random_linearize
from tune_linfair.linearize.snl import SNLResult, snl
from tune_linfair.models.activation import count_relus, linearizable_layers, total_relus
from tune_linfair.train import seed_everything

METHODS = ("snl", "deepreduce", "random")


@dataclass(frozen=True)
class LinearizeSettings:
    """Every knob of the linearization methods, with DESIGN.md's defaults (section 5).

    SNL (Cho et al. 2022): Adam at ``snl_lr`` (masks at ``snl_mask_lr`` when set, else
    ``snl_lr``), loss ``CE + T^2 * KL + c * sum|m|`` with ``T = temperature``; ``c`` starts
    at ``c0`` and is multiplied by ``c_growth`` at every ``c_every`` steps (None: once per
    epoch, as the original) whose count ``m > threshold`` is no new low, after
    ``warmup_checks`` such updates; the count is checked for the stop every ``check_every``
    steps; at most ``max_epochs`` epochs of batches of ``batch_size`` (a safety cap: ``c``
    grows geometrically while the count stalls, so SNL normally stops at the budget first;
    on digits DESIGN's constants need ~2,400 steps, 400 epochs at batch 128, for 5%). Keep
    ``snl_mask_lr`` at or below ``threshold``: Adam moves a mask by about its lr per step,
    so larger values make masks oscillate across the threshold and the count stalls.

    DeepReDuce (Jha et al. 2021): ``deepreduce_epochs`` of SGD (``deepreduce_lr``,
    ``deepreduce_momentum``, ``deepreduce_weight_decay``, cosine) on
    ``lambda * CE + (1 - lambda) * T^2 * KL`` with ``lambda = deepreduce_lambda``, from the
    base weights, or from fresh weights with ``from_scratch``.
    """

    snl_lr: float = 1e-3
    snl_mask_lr: float | None = None
    temperature: float = 4.0
    c0: float = 1e-5
    c_growth: float = 1.1
    threshold: float = 1e-2
    check_every: int = 10
    c_every: int | None = None
    warmup_checks: int = 5
    max_epochs: int = 1000
    batch_size: int = 128
    deepreduce_lambda: float = 0.5
    deepreduce_epochs: int = 10
    deepreduce_lr: float = 1e-2
    deepreduce_momentum: float = 0.9
    deepreduce_weight_decay: float = 5e-4
    from_scratch: bool = False

    def __post_init__(self) -> None:
        positive = ("snl_lr", "temperature", "c0", "deepreduce_lr")
        non_negative = ("deepreduce_weight_decay",)
        at_least_one = ("check_every", "max_epochs", "batch_size")
        counts = ("warmup_checks", "deepreduce_epochs")
        for name in positive + non_negative:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise UserError(f"linearize setting {name}={value!r} must be a number")
            if not math.isfinite(value) or value < 0 or (name in positive and value == 0):
                bound = "> 0" if name in positive else ">= 0"
                raise UserError(f"linearize setting {name}={value!r} must be {bound}")
        for name in at_least_one + counts:
            value = getattr(self, name)
            low = 1 if name in at_least_one else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise UserError(f"linearize setting {name}={value!r} must be an integer >= {low}")
        if self.snl_mask_lr is not None and not (
            isinstance(self.snl_mask_lr, (int, float)) and self.snl_mask_lr > 0
        ):
            raise UserError(
                f"linearize setting snl_mask_lr={self.snl_mask_lr!r} must be > 0 or None"
            )
        if self.c_every is not None and not (
            isinstance(self.c_every, int)
            and not isinstance(self.c_every, bool)
            and self.c_every >= 1
        ):
            raise UserError(
                f"linearize setting c_every={self.c_every!r} must be an integer >= 1 or None"
            )
        if not (isinstance(self.c_growth, (int, float)) and self.c_growth >= 1.0):
            raise UserError(f"linearize setting c_growth={self.c_growth!r} must be >= 1")
        if not (isinstance(self.threshold, (int, float)) and 0.0 <= self.threshold < 1.0):
            raise UserError(f"linearize setting threshold={self.threshold!r} must be in [0, 1)")
        if not (
            isinstance(self.deepreduce_lambda, (int, float)) and 0 <= self.deepreduce_lambda <= 1
        ):
            raise UserError(
                f"linearize setting deepreduce_lambda={self.deepreduce_lambda!r} must be in [0, 1]"
            )
        if not (
            isinstance(self.deepreduce_momentum, (int, float)) and 0 <= self.deepreduce_momentum < 1
        ):
            raise UserError(
                f"linearize setting deepreduce_momentum={self.deepreduce_momentum!r} must be in [0, 1)"
            )
        if not isinstance(self.from_scratch, bool):
            raise UserError(
                f"linearize setting from_scratch={self.from_scratch!r} must be true or false"
            )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> LinearizeSettings:
        """Build from a mapping (e.g. YAML); unknown keys raise :class:`UserError`."""
        names = {f.name for f in dataclasses.fields(cls)}
        for key in values:
            if key not in names:
                raise unknown("linearize setting", key, names)
        return cls(**dict(values))

    def as_dict(self) -> dict[str, Any]:
        """The settings as a plain dict (for saving next to results)."""
        return dataclasses.asdict(self)


def _granularity(model: nn.Module) -> str:
    kinds = {layer.granularity for _, layer in linearizable_layers(model)}
    return kinds.pop() if len(kinds) == 1 else "mixed"


def linearize(
    method: str,
    student: nn.Module,
    teacher: nn.Module,
    data: GroupedDataset,
    budget: float | int,
    *,
    settings: LinearizeSettings = LinearizeSettings(),
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Linearize ``student`` in place to ``budget`` ReLUs with ``method``; return its log.

    ``student`` is normally a deep copy of ``teacher``, the all-ReLU base model; ``teacher``
    is used frozen (no gradients, eval mode) and restored to its previous mode and
    ``requires_grad`` flags afterwards. ``budget`` is a fraction in (0, 1] or a count
    (:func:`resolve_budget`). ``seed`` seeds batch order, random masks and (DeepReDuce
    ``from_scratch``) the fresh weights. Afterwards every mask of ``student`` is 0/1 and
    frozen: ``snl`` and ``random`` keep exactly the budget (pixel masks; channel masks up to
    one channel's worth below), ``deepreduce`` the count of the chosen configuration.

    The log: ``method``, ``seed``, ``granularity``, ``budget_requested``, ``budget_count``,
    ``relu_count``, ``relu_total``, ``relu_fraction``, ``steps`` (optimizer steps), ``epochs``,
    ``checks`` (SNL's ``(step, relu_count, c)`` list; empty otherwise), ``c_final``,
    ``reached_budget`` and ``threshold_count`` (SNL; None otherwise), ``deepreduce`` (the
    configuration dict; None otherwise), ``wall_time_s``.
    """
    if method not in METHODS:
        raise unknown("linearization method", method, METHODS)
    if student is teacher:
        raise ValueError("student and teacher must be different modules: pass a copy of the base")
    start = time.perf_counter()
    total = total_relus(student)
    budget_count = resolve_budget(budget, total)
    generator = seed_everything(seed)
    teacher_mode = teacher.training
    teacher_flags = [p.requires_grad for p in teacher.parameters()]
    log: dict[str, Any] = {
        "method": method,
        "seed": int(seed),
        "granularity": _granularity(student),
        "budget_requested": budget,
        "budget_count": budget_count,
        "relu_total": total,
        "steps": 0,
        "epochs": 0,
        "checks": [],
        "c_final": None,
        "reached_budget": None,
        "threshold_count": None,
        "deepreduce": None,
    }
    try:
        if method == "snl":
            result = snl(
                student,
                teacher,
                data,
                budget_count,
                lr=settings.snl_lr,
                mask_lr=settings.snl_mask_lr,
                temperature=settings.temperature,
                c0=settings.c0,
                c_growth=settings.c_growth,
                threshold=settings.threshold,
                check_every=settings.check_every,
                c_every=settings.c_every,
                warmup_checks=settings.warmup_checks,
                max_epochs=settings.max_epochs,
                batch_size=settings.batch_size,
                generator=generator,
                progress=progress,
            )
            log.update(
                steps=result.steps,
                epochs=result.epochs,
                checks=result.checks,
                c_final=result.c_final,
                reached_budget=result.reached_budget,
                threshold_count=result.threshold_count,
            )
        elif method == "deepreduce":
            config = select_config(student, budget_count)
            apply_deepreduce(student, config)
            log["deepreduce"] = config.as_dict()
            if settings.from_scratch:
                reinitialize(student)
            if settings.deepreduce_epochs > 0:
                fitted = deepreduce_distill(
                    student,
                    teacher,
                    data,
                    epochs=settings.deepreduce_epochs,
                    lr=settings.deepreduce_lr,
                    lam=settings.deepreduce_lambda,
                    temperature=settings.temperature,
                    momentum=settings.deepreduce_momentum,
                    weight_decay=settings.deepreduce_weight_decay,
                    batch_size=settings.batch_size,
                    generator=generator,
                    progress=progress,
                )
                log.update(steps=fitted.steps, epochs=len(fitted.history))
                log["deepreduce"]["best_epoch"] = fitted.best_epoch
                log["deepreduce"]["best_val_accuracy"] = fitted.best_score
        else:
            random_linearize(student, budget_count, seed)
    finally:
        teacher.train(teacher_mode)
        for p, flag in zip(teacher.parameters(), teacher_flags):
            p.requires_grad_(flag)
    relu_count = count_relus(student)
    log.update(
        relu_count=relu_count,
        relu_fraction=relu_count / total,
        wall_time_s=time.perf_counter() - start,
    )
    return log


__all__ = [
    "METHODS",
    "DeepReduceConfig",
    "LinearizeSettings",
    "SNLResult",
    "apply_deepreduce",
    "deepreduce_configs",
    "deepreduce_distill",
    "freeze_top",
    "linearize",
    "random_linearize",
    "reinitialize",
    "resolve_budget",
    "select_config",
    "select_entries",
    "snl",
]
