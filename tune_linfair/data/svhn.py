"""``svhn``: Street View House Numbers (cropped digits) in torchvision's on-disk format.

Layout under the data root (what ``torchvision.datasets.SVHN`` downloads)::

    ROOT/train_32x32.mat, ROOT/test_32x32.mat

Each ``.mat`` file holds ``X`` (32, 32, 3, N) uint8 and ``y`` (N, 1) with labels 1..10,
where 10 stands for the digit 0 (mapped to 0 here). SVHN is naturally unbalanced (digit 1
is about 3 times as frequent as digits 0 or 9), so no unbalancing is applied (Das et al.,
ICML 2024, Sec. 5). Group = class; a validation split stratified by class is carved from
the training file; inputs standardized per channel with training statistics;
``augment=True``. The ``extra`` split is not used.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tune_linfair.data.base import GroupedDataset
from tune_linfair.data.splits import assemble, check_fraction, make_generator, stratified_split
from tune_linfair.errors import UserError

FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}
LAYOUT = "ROOT/train_32x32.mat and ROOT/test_32x32.mat"
CLASS_NAMES = tuple(str(d) for d in range(10))


def _download(root: Path) -> None:
    """Fetch the train and test ``.mat`` files into ``root`` with torchvision (needs network)."""
    from torchvision.datasets import SVHN

    try:
        root.mkdir(parents=True, exist_ok=True)
        for split in FILES:
            SVHN(str(root), split=split, download=True)
    except (OSError, RuntimeError) as e:
        raise UserError(f"downloading SVHN into {root} failed: {e}") from None


def _check_files(root: Path | None, download: bool) -> Path:
    """The data root, downloading first if asked; UserError naming the layout if incomplete."""
    if root is None:
        raise UserError(
            f"dataset 'svhn' needs --data-root ROOT with {LAYOUT} (pass --download to fetch them)"
        )
    missing = [f for f in FILES.values() if not (root / f).is_file()]
    if missing and download:
        _download(root)
        missing = [f for f in FILES.values() if not (root / f).is_file()]
    if missing:
        raise UserError(
            f"SVHN files missing under {root}: {', '.join(missing)}; expected {LAYOUT} "
            "(pass --download to fetch them)"
        )
    return root


def read_mat(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One SVHN ``.mat`` file as (uint8 images (N, 3, 32, 32), int64 labels 0..9 (N,))."""
    from scipy.io import loadmat

    try:
        mat = loadmat(str(path), variable_names=("X", "y"))
        x = np.asarray(mat["X"], dtype=np.uint8)
        y = np.asarray(mat["y"], dtype=np.int64).reshape(-1)
    except (OSError, ValueError, KeyError, NotImplementedError) as e:
        raise UserError(f"cannot read SVHN file {path}: {type(e).__name__}: {e}") from None
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != y.shape[0]:
        raise UserError(
            f"SVHN file {path}: expected X (32, 32, 3, N) and y (N, 1), got X {x.shape}, "
            f"y {mat['y'].shape}"
        )
    if y.size and (y.min() < 1 or y.max() > 10):
        raise UserError(f"SVHN file {path}: labels must be 1..10 (10 = digit 0)")
    y = np.where(y == 10, 0, y)
    images = np.ascontiguousarray(x.transpose(3, 2, 0, 1))  # (H, W, C, N) -> (N, C, H, W)
    return torch.from_numpy(images), torch.from_numpy(y)


def load_svhn(
    root: Path | None,
    seed: int,
    download: bool,
    *,
    val_fraction: float = 0.1,
) -> GroupedDataset:
    """SVHN: x (N, 3, 32, 32) standardized per channel, y = g = digit, natural imbalance.

    ``val_fraction`` of the training file is carved (stratified by class) for validation.
    """
    val_fraction = check_fraction("val_fraction", val_fraction)
    root = _check_files(root, download)
    x, y = read_mat(root / FILES["train"])
    x_test, y_test = read_mat(root / FILES["test"])
    train_pos, val_pos = stratified_split(y, val_fraction, make_generator(seed))
    return assemble(
        "svhn",
        x,
        y,
        y,
        {"train": train_pos, "val": val_pos},
        CLASS_NAMES,
        CLASS_NAMES,
        augment=True,
        per_channel=True,
        info={"source": str(root)},
        test=(x_test, y_test, y_test),
    )
