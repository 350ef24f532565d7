"""Weight distance between two models (paper Sec. 4, Fig. 8).

Das, Romanelli and Fioretto (ICML 2024) track how far linearization and fine-tuning move the
weights from the base model: ``|| theta_lin - theta_base ||_2``, the Euclidean norm over all
weights the two models share (Fig. 8; the ``|| theta - theta_base ||`` factor of
Theorem 4.4).
"""

from __future__ import annotations

import math

from torch import nn

from tune_linfair.errors import UserError
from tune_linfair.models.activation import weight_parameters


def weight_distance(model_a: nn.Module, model_b: nn.Module) -> float:
    """``sqrt(sum_k || theta_a[k] - theta_b[k] ||^2)`` over parameters ``k`` that both models
    have under the same name and shape. Linearization masks and buffers (BatchNorm running
    statistics) are not weights and are excluded. Computed in float64.

    Raises :class:`UserError` when the models share no weight.
    """
    weights_b = dict(weight_parameters(model_b))
    squared, shared = 0.0, 0
    for name, pa in weight_parameters(model_a):
        pb = weights_b.get(name)
        if pb is None or pb.shape != pa.shape:
            continue
        diff = pa.detach().double() - pb.detach().to(pa.device).double()
        squared += float(diff.pow(2).sum())
        shared += 1
    if shared == 0:
        raise UserError(
            "the two models share no weight (same name and shape); "
            "weight distance compares a model with its own base"
        )
    return math.sqrt(squared)
