"""Per-group diagnostics of linearized models (README "Metrics").

Das, Romanelli, Fioretto, ICML 2024, "Disparate Impact on Group Accuracy of Linearization
for Private Inference": per-group accuracy and relative drops (Figs. 1/6), group gradient
norms (Fig. 3) and Hessian top eigenvalues (Fig. 4) of Theorem 4.4, distance to the decision
boundary and weight distance (Fig. 8), plus a ReLU-bound private-inference cost estimate.

Exports resolve lazily (PEP 562), so ``import tune_linfair.metrics.groups`` (numpy/pandas
only) does not import torch and ``analysis/`` may use it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    "GroupMetrics": "groups",
    "group_gradient_norms": "gradients",
    "group_hessian_top_eigenvalues": "hessian",
    "power_iteration": "hessian",
    "softmax_margin": "boundary",
    "geometric_distance": "boundary",
    "weight_distance": "distance",
    "pi_cost": "cost",
    "CostModel": "cost",
    "CRYPTONITE": "cost",
    "CRYPTONITE_RESNET18": "cost",
    "cost_model_for": "cost",
    "load_cost_model": "cost",
    "path_check": "theorem44",
    "ONLINE_LATENCY_S_PER_RELU": "cost",
    "ONLINE_COMM_BYTES_PER_RELU": "cost",
    "OFFLINE_STORAGE_BYTES_PER_RELU": "cost",
    "diagnose": "evaluate",
    "Diagnosis": "evaluate",
    "GROUP_ROW_KEYS": "evaluate",
    "SAMPLE_ROW_KEYS": "evaluate",
}

__all__ = [
    "CRYPTONITE",
    "CRYPTONITE_RESNET18",
    "CostModel",
    "GROUP_ROW_KEYS",
    "OFFLINE_STORAGE_BYTES_PER_RELU",
    "ONLINE_COMM_BYTES_PER_RELU",
    "ONLINE_LATENCY_S_PER_RELU",
    "SAMPLE_ROW_KEYS",
    "Diagnosis",
    "GroupMetrics",
    "diagnose",
    "geometric_distance",
    "group_gradient_norms",
    "group_hessian_top_eigenvalues",
    "cost_model_for",
    "load_cost_model",
    "path_check",
    "pi_cost",
    "power_iteration",
    "softmax_margin",
    "weight_distance",
]

if TYPE_CHECKING:
    from tune_linfair.metrics.boundary import geometric_distance, softmax_margin
    from tune_linfair.metrics.cost import (
        CRYPTONITE,
        CRYPTONITE_RESNET18,
        OFFLINE_STORAGE_BYTES_PER_RELU,
        ONLINE_COMM_BYTES_PER_RELU,
        ONLINE_LATENCY_S_PER_RELU,
        CostModel,
        cost_model_for,
        load_cost_model,
        pi_cost,
    )
    from tune_linfair.metrics.distance import weight_distance
    from tune_linfair.metrics.evaluate import (
        GROUP_ROW_KEYS,
        SAMPLE_ROW_KEYS,
        Diagnosis,
        diagnose,
    )
    from tune_linfair.metrics.gradients import group_gradient_norms
    from tune_linfair.metrics.groups import GroupMetrics
    from tune_linfair.metrics.hessian import group_hessian_top_eigenvalues, power_iteration
    from tune_linfair.metrics.theorem44 import path_check


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
