"""Seeded, group-stratified splitting, unbalancing and normalization shared by the loaders.

Every helper works on index tensors so that loaders can split uint8 images before the
(four times larger) float conversion. Randomness comes from one ``torch.Generator`` seeded
by the loader, consumed in a fixed order (strata visited in ascending id), so the same seed
gives the same split on the same torch version.

Protocol (README "Data"): the test split keeps the source distribution unless asked
otherwise; unbalancing applies to the training pool; validation is carved from the training
pool, stratified by group, so model selection never looks at test data (unlike the paper's
code, which picks its checkpoint on the test set).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from tune_linfair.data.base import GroupedDataset, Split
from tune_linfair.errors import UserError


def make_generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed``: the single source of randomness of a loader."""
    return torch.Generator().manual_seed(int(seed))


def check_fraction(
    name: str, value: float, *, allow_zero: bool = False, allow_one: bool = False
) -> float:
    """Return ``value`` as a float if it lies in (0, 1) (ends per flags), else raise UserError."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UserError(f"option {name}={value!r} must be a number between 0 and 1") from None
    low_ok = v >= 0.0 if allow_zero else v > 0.0
    high_ok = v <= 1.0 if allow_one else v < 1.0
    if not (low_ok and high_ok and math.isfinite(v)):
        lo = "[0" if allow_zero else "(0"
        hi = "1]" if allow_one else "1)"
        raise UserError(f"option {name}={value!r} must lie in {lo}, {hi}")
    return v


def _round(x: float) -> int:
    """Round half up (Python's ``round`` rounds half to even, which is harder to predict)."""
    return int(math.floor(x + 0.5))


def joint_strata(g: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """One stratum id per (group, class) pair: ``g * num_classes + y``.

    Stratifying by the pair keeps both the group shares and the class shares of every
    group when the group is not the class (UTKFace, synthetic); when it is, it is the group.
    """
    return g.long() * int(num_classes) + y.long()


def stratified_split(
    strata: torch.Tensor, fraction: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split positions ``0..len(strata)-1`` into (rest, carved), stratified by ``strata``.

    In each stratum of ``n`` samples, ``round(fraction * n)`` randomly chosen samples are
    carved, clamped to ``[1, n - 1]`` when ``n >= 2`` so every stratum appears on both sides
    (per-group accuracy and the worst-group objective need every group); a stratum of one
    sample stays in ``rest``. Both index tensors are sorted ascending.
    """
    strata = strata.cpu()
    rest: list[torch.Tensor] = []
    carved: list[torch.Tensor] = []
    for s in torch.unique(strata, sorted=True).tolist():
        idx = torch.nonzero(strata == s, as_tuple=False).flatten()
        n = idx.numel()
        k = _round(fraction * n)
        k = min(max(k, 1), n - 1) if n >= 2 else 0
        perm = idx[torch.randperm(n, generator=generator)]
        carved.append(perm[:k])
        rest.append(perm[k:])
    return torch.cat(rest).sort().values, torch.cat(carved).sort().values


def unbalance(
    labels: torch.Tensor, shares: Mapping[int, float], generator: torch.Generator
) -> torch.Tensor:
    """Sorted positions kept when each label ``c`` keeps a random ``shares[c]`` of its samples.

    A label keeps ``round(share * n)`` samples, at least one when its share is positive and
    it has any; labels missing from ``shares`` keep everything. This is how the paper builds
    its unbalanced CIFAR-10 (90% of classes 0-4, 10% of classes 5-9).
    """
    labels = labels.cpu()
    kept: list[torch.Tensor] = []
    for c in torch.unique(labels, sorted=True).tolist():
        idx = torch.nonzero(labels == c, as_tuple=False).flatten()
        n = idx.numel()
        share = float(shares.get(int(c), 1.0))
        k = min(n, max(_round(share * n), 1 if share > 0 else 0))
        kept.append(idx[torch.randperm(n, generator=generator)[:k]])
    if not kept:
        return torch.zeros(0, dtype=torch.long)
    return torch.cat(kept).sort().values


def carve_val(
    pool: torch.Tensor,
    labels: torch.Tensor,
    val_fraction: float,
    shares: Mapping[int, float],
    generator: torch.Generator,
    balanced_val: bool,
) -> dict[str, torch.Tensor]:
    """Split the positions ``pool`` into ``train`` (unbalanced by ``shares``) and ``val``,
    both stratified by ``labels[pool]``.

    ``balanced_val``: ``val`` is carved before unbalancing and keeps the pool's (balanced)
    distribution, so the smallest group has as many validation samples as any; otherwise it
    is carved after unbalancing and is as unbalanced as training.
    """
    if balanced_val:
        rest_pos, val_pos = stratified_split(labels[pool], val_fraction, generator)
        rest = pool[rest_pos]
        return {"train": rest[unbalance(labels[rest], shares, generator)], "val": pool[val_pos]}
    kept = pool[unbalance(labels[pool], shares, generator)]
    train_pos, val_pos = stratified_split(labels[kept], val_fraction, generator)
    return {"train": kept[train_pos], "val": kept[val_pos]}


def class_shares(
    num_classes: int, majority_classes: Sequence[int], majority_share: float, minority_share: float
) -> dict[int, float]:
    """``{class: share}``: ``majority_share`` for ``majority_classes``, ``minority_share`` else."""
    majority = set(majority_classes)
    return {c: (majority_share if c in majority else minority_share) for c in range(num_classes)}


def standardize(
    train: torch.Tensor, *others: torch.Tensor, per_channel: bool
) -> tuple[list[torch.Tensor], list[float], list[float]]:
    """Standardize float tensors with the mean/std of ``train`` only (no val/test leakage).

    ``per_channel`` computes one statistic per channel (dim 1, images N,C,H,W) or feature
    (N,F); otherwise one scalar over all entries. A zero std is replaced by 1. Returns the
    standardized ``[train, *others]`` and the mean and std as lists.
    """
    if per_channel:
        dims = tuple(d for d in range(train.dim()) if d != 1)
        std, mean = torch.std_mean(train, dim=dims, keepdim=True)
    else:
        std, mean = torch.std_mean(train)
        mean, std = mean.reshape(1), std.reshape(1)
    std = torch.where(std > 0, std, torch.ones_like(std))
    view = mean.shape if per_channel else (1,) * train.dim()
    mean_v, std_v = mean.reshape(view), std.reshape(view)
    out = [((t - mean_v) / std_v).contiguous() for t in (train, *others)]
    return out, mean.flatten().tolist(), std.flatten().tolist()


def assemble(
    name: str,
    x: torch.Tensor,
    y: torch.Tensor,
    g: torch.Tensor,
    parts: Mapping[str, torch.Tensor],
    group_names: Sequence[str],
    class_names: Sequence[str],
    *,
    augment: bool,
    per_channel: bool,
    info: dict | None = None,
    test: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> GroupedDataset:
    """Build a :class:`GroupedDataset` from raw tensors and split positions.

    ``parts`` maps ``"train"``, ``"val"`` and (unless ``test`` is given as its own
    ``(x, y, g)``, e.g. a source's official test set) ``"test"`` to positions in ``x``.
    Inputs are converted to float32 and standardized with training statistics; ``info``
    gains the per-split group counts and the normalization constants.
    """
    splits: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {
        k: (x[parts[k]], y[parts[k]], g[parts[k]]) for k in ("train", "val")
    }
    splits["test"] = (
        test if test is not None else (x[parts["test"]], y[parts["test"]], g[parts["test"]])
    )
    order = ("train", "val", "test")
    xs, mean, std = standardize(*(splits[k][0].float() for k in order), per_channel=per_channel)
    built = {
        k: Split(xk, splits[k][1].long().contiguous(), splits[k][2].long().contiguous())
        for k, xk in zip(order, xs)
    }
    info = dict(info or {})
    info["group_counts"] = {k: built[k].group_counts(len(group_names)) for k in order}
    info["normalization"] = {"mean": mean, "std": std}
    return GroupedDataset(
        name,
        built["train"],
        built["val"],
        built["test"],
        tuple(group_names),
        tuple(class_names),
        augment,
        info,
    )
