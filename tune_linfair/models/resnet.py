"""CIFAR-style ResNets with linearizable ReLUs.

He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016), in the CIFAR form
used by SNL (Cho et al., ICML 2022) and DeepReDuce (Jha et al., ICML 2021): a 3x3 stem
convolution with batch norm and *no* ReLU and no max-pool, then four stages of basic
blocks at strides 1, 2, 2, 2. Every block has two linearizable ReLUs: ``inner`` after the
first conv-bn, ``post_add`` after the residual addition (DeepReDuce's "thinning" drops the
latter). On 32x32 inputs ResNet-18 has 2 x 2 x 64 x 32 x 32 = 262,144 ReLUs in stage 1,
then 131,072 / 65,536 / 32,768: 491,520 in all; ResNet-34 has 901,120.

``resnet_mini`` is the same design with one block per stage and base width 16, sized for
scikit-learn's 8x8 digits (stages at 8x8, 4x4, 2x2, 1x1: 2,048 / 1,024 / 512 / 256 ReLUs,
3,840 in all) so that every linearization method, DeepReDuce included, applies to the
default data set.
"""

from __future__ import annotations

import torch
from torch import nn

from tune_linfair.models.activation import LinearizableReLU
from tune_linfair.models.registry import register_model


class BasicBlock(nn.Module):
    """``relu_post(bn(conv(relu_inner(bn(conv(x))))) + shortcut(x))``."""

    def __init__(
        self, in_planes: int, planes: int, stride: int, stage: int, granularity: str
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = LinearizableReLU(granularity, stage=stage, role="inner")
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = LinearizableReLU(granularity, stage=stage, role="post_add")
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet(nn.Module):
    """Stem (conv3x3-bn, no ReLU) -> 4 stages of :class:`BasicBlock` -> avg-pool -> linear."""

    def __init__(
        self,
        blocks: tuple[int, int, int, int],
        num_classes: int,
        in_channels: int = 3,
        width: int = 64,
        granularity: str = "pixel",
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width)
        )
        stages, in_planes = [], width
        for i, n in enumerate(blocks):
            planes, stride = width * 2**i, 1 if i == 0 else 2
            layers = []
            for j in range(n):
                layers.append(
                    BasicBlock(in_planes, planes, stride if j == 0 else 1, i + 1, granularity)
                )
                in_planes = planes
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(in_planes, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.stages(self.stem(x))).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _channels(input_shape: tuple[int, ...]) -> int:
    if len(input_shape) != 3:
        raise ValueError(f"expected image inputs (C, H, W), got shape {input_shape}")
    return input_shape[0]


@register_model
def resnet18(
    num_classes: int, input_shape: tuple[int, ...], width: int = 64, granularity: str = "pixel"
) -> ResNet:
    """ResNet-18, blocks (2, 2, 2, 2); 491,520 ReLUs on 32x32 at width 64."""
    return ResNet((2, 2, 2, 2), num_classes, _channels(input_shape), width, granularity)


@register_model
def resnet34(
    num_classes: int, input_shape: tuple[int, ...], width: int = 64, granularity: str = "pixel"
) -> ResNet:
    """ResNet-34, blocks (3, 4, 6, 3); 901,120 ReLUs on 32x32 at width 64."""
    return ResNet((3, 4, 6, 3), num_classes, _channels(input_shape), width, granularity)


@register_model
def resnet_mini(
    num_classes: int, input_shape: tuple[int, ...], width: int = 16, granularity: str = "pixel"
) -> ResNet:
    """One block per stage, width 16: 3,840 ReLUs on 8x8 digits."""
    return ResNet((1, 1, 1, 1), num_classes, _channels(input_shape), width, granularity)
