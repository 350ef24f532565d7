"""Wide ResNet 22-8 (pre-activation) with linearizable ReLUs.

Zagoruyko & Komodakis, "Wide Residual Networks" (BMVC 2016): a 3x3 stem to 16 channels,
then three stages of (22 - 4) / 6 = 3 pre-activation blocks ``bn-relu-conv-bn-relu-conv``
of width 16k, 32k, 64k (k = 8) at strides 1, 2, 2, then bn-relu, pooling and a linear head.
Each block's first ReLU acts on the block's input (so the first block of stages 2 and 3
acts at the previous resolution). ReLU accounting follows SNL (Cho et al., ICML 2022):
the block ReLUs are linearizable, 1,359,872 on 32x32; the final bn-relu before pooling is a
fixed ReLU outside the budget (another 32,768 on 32x32), as in SNL's count.
"""

from __future__ import annotations

import torch
from torch import nn

from tune_linfair.models.activation import LinearizableReLU
from tune_linfair.models.registry import register_model


class WideBasic(nn.Module):
    """Pre-activation block; the shortcut takes the activated input when shapes change."""

    def __init__(self, in_planes: int, planes: int, stride: int, stage: int, granularity: str):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = LinearizableReLU(granularity, stage=stage, role="inner")
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = LinearizableReLU(granularity, stage=stage, role="inner")
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.equal = in_planes == planes and stride == 1
        self.shortcut = (
            nn.Identity() if self.equal else nn.Conv2d(in_planes, planes, 1, stride, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(act))))
        return out + (x if self.equal else self.shortcut(act))


class WideResNet(nn.Module):
    """WRN-depth-k for CIFAR-size inputs."""

    def __init__(
        self, depth: int, k: int, num_classes: int, in_channels: int, width: int, granularity: str
    ) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"wide resnet depth must be 6n + 4, got {depth}")
        n = (depth - 4) // 6
        self.stem = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        stages, in_planes = [], width
        for i in range(3):
            planes, blocks = width * k * 2**i, []
            for j in range(n):
                stride = 1 if i == 0 or j > 0 else 2
                blocks.append(WideBasic(in_planes, planes, stride, i + 1, granularity))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(in_planes)
        self.head = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stages(self.stem(x))))
        return self.head(nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))


@register_model
def wrn22_8(
    num_classes: int, input_shape: tuple[int, ...], width: int = 16, granularity: str = "pixel"
) -> WideResNet:
    """WRN-22-8; 1,359,872 linearizable ReLUs on 32x32 at base width 16."""
    if len(input_shape) != 3:
        raise ValueError(f"expected image inputs (C, H, W), got shape {input_shape}")
    return WideResNet(22, 8, num_classes, input_shape[0], width, granularity)
