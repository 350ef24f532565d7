"""Datasets with group labels: one module per source and a registry to build any by name.

Each loader is ``load(root, seed, download, *, <options>) -> GroupedDataset``; its
keyword-only parameters are its options, so :func:`get_dataset` validates user options
against the signature and names the valid ones on a mistake. See README "Data" for
the datasets, file layouts and protocols.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tune_linfair.data.augment import random_crop_flip
from tune_linfair.data.base import GroupedDataset, Split
from tune_linfair.data.cifar10 import load_cifar10
from tune_linfair.data.digits import load_digits
from tune_linfair.data.svhn import load_svhn
from tune_linfair.data.synthetic import load_synthetic
from tune_linfair.data.utkface import load_utkface
from tune_linfair.errors import UserError, unknown

Loader = Callable[..., GroupedDataset]

_LOADERS: dict[str, Loader] = {
    "digits": load_digits,
    "synthetic": load_synthetic,
    "cifar10": load_cifar10,
    "svhn": load_svhn,
    "utkface": load_utkface,
}

#: Names of the registered datasets; ``digits`` is the default (ships with scikit-learn).
DATASETS: tuple[str, ...] = tuple(_LOADERS)


def dataset_options(name: str) -> dict[str, Any]:
    """The options of dataset ``name`` with their defaults (its keyword-only parameters)."""
    if name not in _LOADERS:
        raise unknown("dataset", name, DATASETS)
    params = inspect.signature(_LOADERS[name]).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def get_dataset(
    name: str,
    root: str | Path | None = None,
    seed: int = 0,
    download: bool = False,
    **options: Any,
) -> GroupedDataset:
    """Load dataset ``name`` with its train/val/test splits, seeded by ``seed``.

    ``root`` is the data root (``--data-root``) for file-based datasets; ``download`` lets
    CIFAR-10 and SVHN fetch missing files with torchvision. ``options`` are the dataset's
    own keyword options (see :func:`dataset_options`). An unknown name or option raises
    :class:`~tune_linfair.errors.UserError` naming the valid choices.
    """
    valid = dataset_options(name)
    for key in options:
        if key not in valid:
            raise UserError(
                f"unknown option {key!r} for dataset {name!r}; choose one of: "
                f"{', '.join(sorted(valid)) or '(none)'}"
            )
    path = Path(root).expanduser() if root is not None else None
    return _LOADERS[name](path, int(seed), bool(download), **options)


__all__ = [
    "DATASETS",
    "GroupedDataset",
    "Split",
    "dataset_options",
    "get_dataset",
    "random_crop_flip",
]
