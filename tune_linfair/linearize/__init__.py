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

Budgets are fractions in (0, 1] or counts >= 1 (:func:`resolve_budget`); the knobs are
:class:`~tune_linfair.config.LinearizeSettings`. The algorithms, constants and differences
from the original code are in README "Linearization methods".
"""

from __future__ import annotations

import time
from typing import Any

from torch import nn

from tune_linfair.config import METHODS, LinearizeSettings
from tune_linfair.data.base import GroupedDataset
from tune_linfair.errors import unknown
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
    settings: LinearizeSettings | None = None,
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
    ``reached_budget`` and ``threshold_count`` (SNL; None otherwise), ``mask_multipliers``
    (SNL with a mask mitigation: the final multipliers; None otherwise), ``deepreduce`` (the
    configuration dict; None otherwise), ``wall_time_s``.
    """
    if method not in METHODS:
        raise unknown("linearization method", method, METHODS)
    settings = LinearizeSettings() if settings is None else settings
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
        "mask_multipliers": None,
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
                mask_mitigation=settings.mask_mitigation,
                mask_mu=settings.mask_mu,
                mask_epsilon=settings.mask_epsilon,
                mask_dual_lr=settings.mask_dual_lr,
                cpu_bf16=settings.snl_cpu_bf16,
                generator=generator,
                progress=progress,
            )
            log.update(
                steps=result.steps,
                mask_multipliers=result.multipliers,
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
