"""Containers for datasets with group labels.

Every dataset yields three :class:`Split` objects (train, val, test) of tensors held in
memory: inputs ``x`` (float32, normalized), targets ``y`` (int64) and group ids ``g``
(int64), plus the group and class names. Holding the data as tensors lets training shuffle
with ``randperm`` and augment on tensors, on whatever device trains (airbench's approach).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Split:
    """One split: ``x`` (N, ...) float32, ``y`` (N,) int64 targets, ``g`` (N,) int64 groups."""

    x: torch.Tensor
    y: torch.Tensor
    g: torch.Tensor

    def __post_init__(self) -> None:
        n = self.x.shape[0]
        if self.y.shape != (n,) or self.g.shape != (n,):
            raise ValueError(
                f"split shapes disagree: x {tuple(self.x.shape)}, y {tuple(self.y.shape)}, "
                f"g {tuple(self.g.shape)}"
            )

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def to(self, device: torch.device | str) -> Split:
        """The same split on ``device`` (no copy when it is already there)."""
        return Split(self.x.to(device), self.y.to(device), self.g.to(device))

    def subset(self, index: torch.Tensor) -> Split:
        """The samples at ``index`` (a LongTensor or bool mask)."""
        return Split(self.x[index], self.y[index], self.g[index])

    def group_counts(self, num_groups: int) -> list[int]:
        """Number of samples in each group id 0..num_groups-1."""
        return torch.bincount(self.g.cpu(), minlength=num_groups).tolist()


@dataclass(frozen=True)
class GroupedDataset:
    """A dataset with group labels, split into train / val / test.

    ``augment`` is True for 32x32 RGB images, whose training batches get a random crop
    (padding 4) and a horizontal flip on tensors (see :mod:`tune_linfair.data.augment`).
    ``info`` records what a loader did (e.g. malformed files skipped, unbalancing shares).
    """

    name: str
    train: Split
    val: Split
    test: Split
    group_names: tuple[str, ...]
    class_names: tuple[str, ...]
    augment: bool = False
    info: dict = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_groups(self) -> int:
        return len(self.group_names)

    def to(self, device: torch.device | str) -> GroupedDataset:
        """All splits moved to ``device``."""
        return GroupedDataset(
            self.name,
            self.train.to(device),
            self.val.to(device),
            self.test.to(device),
            self.group_names,
            self.class_names,
            self.augment,
            self.info,
        )

    def split(self, name: str) -> Split:
        """The split called ``name`` ('train', 'val' or 'test')."""
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}; choose one of: test, train, val")
        return getattr(self, name)
