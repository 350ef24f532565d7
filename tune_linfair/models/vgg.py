"""VGG-19 with batch norm, CIFAR form, with linearizable ReLUs.

Simonyan & Zisserman, "Very Deep Convolutional Networks" (ICLR 2015), configuration E,
with batch norm and a single linear classifier as in the CIFAR versions used by SNL
(Cho et al., ICML 2022). Every conv-bn is followed by a linearizable ReLU; the five
max-pools define the stages. On 32x32 inputs at width 64: 131,072 + 65,536 + 65,536 +
32,768 + 8,192 = 303,104 ReLUs. Inputs must be at least 32x32 (five 2x2 pools).
"""

from __future__ import annotations

import torch
from torch import nn

from tune_linfair.models.activation import LinearizableReLU
from tune_linfair.models.registry import register_model

_VGG19 = (1, 1, "M", 2, 2, "M", 4, 4, 4, 4, "M", 8, 8, 8, 8, "M", 8, 8, 8, 8, "M")


class VGG(nn.Module):
    """``features`` (conv-bn-relu blocks and max-pools) -> flatten -> linear head."""

    def __init__(
        self, config: tuple, num_classes: int, in_channels: int, width: int, granularity: str
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels, stage = in_channels, 1
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                stage += 1
                continue
            out = width * item
            layers += [
                nn.Conv2d(channels, out, 3, padding=1, bias=False),
                nn.BatchNorm2d(out),
                LinearizableReLU(granularity, stage=stage),
            ]
            channels = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        if x.shape[-1] != 1 or x.shape[-2] != 1:
            x = nn.functional.adaptive_avg_pool2d(x, 1)
        return self.head(x.flatten(1))


@register_model
def vgg19(
    num_classes: int, input_shape: tuple[int, ...], width: int = 64, granularity: str = "pixel"
) -> VGG:
    """VGG-19-BN; 303,104 ReLUs on 32x32 at width 64."""
    if len(input_shape) != 3 or min(input_shape[1:]) < 32:
        raise ValueError(f"vgg19 needs (C, H, W) inputs of at least 32x32, got {input_shape}")
    return VGG(_VGG19, num_classes, input_shape[0], width, granularity)
