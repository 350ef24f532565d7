"""Multi-layer perceptron for 2-D synthetic data (the paper's Figure 2 setting).

Das et al., ICML 2024, Sec. 4 / Fig. 2 train an MLP on 2-D data with all ReLUs and with
half of them linearized. Each hidden layer is ``Linear -> LinearizableReLU``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tune_linfair.models.activation import LinearizableReLU
from tune_linfair.models.registry import register_model


class MLP(nn.Module):
    """``depth`` hidden layers of ``width`` units, each followed by a linearizable ReLU."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        width: int = 64,
        depth: int = 3,
        granularity: str = "pixel",
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [
                nn.Linear(in_features if i == 0 else width, width),
                LinearizableReLU(granularity, stage=i + 1),
            ]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.flatten(1)))


@register_model
def mlp(
    num_classes: int, input_shape: tuple[int, ...], width: int = 64, granularity: str = "pixel"
) -> MLP:
    """3 hidden layers of ``width`` units (3 x 64 = 192 ReLUs by default)."""
    return MLP(math.prod(input_shape), num_classes, width=width, depth=3, granularity=granularity)
