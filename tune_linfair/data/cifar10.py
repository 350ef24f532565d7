"""``cifar10``: CIFAR-10 in torchvision's on-disk format, unbalanced as in the paper.

Layout under the data root (what ``torchvision.datasets.CIFAR10`` extracts)::

    ROOT/cifar-10-batches-py/data_batch_1 ... data_batch_5, test_batch

Each batch is a pickle of a dict with ``data`` (uint8, n x 3072, channel-major, reshaped to
n x 3 x 32 x 32) and ``labels`` (keys may be ``str`` or ``bytes``). We read the pickles
ourselves: torchvision's class checks MD5 sums, which would reject test fixtures, and is
only used to fetch the files when ``download=True``. The reader is a restricted unpickler
that resolves only NumPy's array-reconstruction globals, so a batch file cannot run code.

Protocol (Das et al., ICML 2024, Sec. 5; README "Data"): a validation split stratified by
class is carved from the training batches before unbalancing (``balanced_val=True``: 500
images per class, balanced like the test batch; ``False``: carved after unbalancing, as
the paper's code does); the rest keeps ``majority_share`` (0.9) of classes 0-4 and
``minority_share`` (0.1) of classes 5-9 for training; the official test batch keeps its
balanced distribution unless ``unbalance_test`` (the paper's code unbalances it too).
Group = class; inputs standardized per channel with training statistics; ``augment=True``.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from tune_linfair.data.base import GroupedDataset
from tune_linfair.data.splits import (
    assemble,
    carve_val,
    check_fraction,
    class_shares,
    make_generator,
    unbalance,
)
from tune_linfair.errors import UserError

FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
CLASS_NAMES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
MAJORITY_CLASSES = (0, 1, 2, 3, 4)
LAYOUT = f"ROOT/{FOLDER}/{{{','.join(TRAIN_FILES)},{TEST_FILE}}}"


def _download(root: Path) -> None:
    """Fetch and extract CIFAR-10 into ``root`` with torchvision (needs network)."""
    from torchvision.datasets import CIFAR10

    try:
        root.mkdir(parents=True, exist_ok=True)
        for train in (True, False):
            CIFAR10(str(root), train=train, download=True)
    except (OSError, RuntimeError) as e:
        raise UserError(f"downloading CIFAR-10 into {root} failed: {e}") from None


def _check_files(root: Path | None, download: bool) -> Path:
    """The batch folder, downloading first if asked; UserError naming the layout if missing."""
    if root is None:
        raise UserError(
            f"dataset 'cifar10' needs --data-root ROOT with layout {LAYOUT} "
            "(pass --download to fetch it)"
        )
    folder = root / FOLDER
    missing = [f for f in (*TRAIN_FILES, TEST_FILE) if not (folder / f).is_file()]
    if missing and download:
        _download(root)
        missing = [f for f in (*TRAIN_FILES, TEST_FILE) if not (folder / f).is_file()]
    if missing:
        raise UserError(
            f"CIFAR-10 files missing under {root}: {', '.join(missing)}; expected layout "
            f"{LAYOUT} (pass --download to fetch it)"
        )
    return folder


_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and NumPy arrays; refuses every other global."""

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")


def read_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One CIFAR batch pickle as (uint8 images (n, 3, 32, 32), int64 labels (n,))."""
    try:
        with open(path, "rb") as f:
            entry = _ArrayUnpickler(f, encoding="latin1").load()
        entry = {(k.decode() if isinstance(k, bytes) else k): v for k, v in entry.items()}
        data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(entry["labels"], dtype=np.int64).reshape(-1)
    except (OSError, pickle.UnpicklingError, EOFError, KeyError, ValueError, AttributeError) as e:
        raise UserError(f"cannot read CIFAR-10 batch {path}: {type(e).__name__}: {e}") from None
    if data.shape[0] != labels.shape[0]:
        raise UserError(
            f"CIFAR-10 batch {path} has {data.shape[0]} images but {labels.shape[0]} labels"
        )
    return torch.from_numpy(data), torch.from_numpy(labels)


def load_cifar10(
    root: Path | None,
    seed: int,
    download: bool,
    *,
    val_fraction: float = 0.1,
    majority_share: float = 0.9,
    minority_share: float = 0.1,
    unbalance_test: bool = False,
    balanced_val: bool = True,
) -> GroupedDataset:
    """Unbalanced CIFAR-10: x (N, 3, 32, 32) standardized per channel, group = class.

    ``val_fraction`` of the training batches is carved (stratified) before unbalancing
    (``balanced_val``) or from the unbalanced pool; classes 0-4 keep ``majority_share`` and
    5-9 ``minority_share`` of their training images.
    """
    val_fraction = check_fraction("val_fraction", val_fraction)
    majority_share = check_fraction("majority_share", majority_share, allow_one=True)
    minority_share = check_fraction("minority_share", minority_share, allow_one=True)
    folder = _check_files(root, download)

    batches = [read_batch(folder / f) for f in TRAIN_FILES]
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    x_test, y_test = read_batch(folder / TEST_FILE)
    for labels, what in ((y, "training"), (y_test, "test")):
        if labels.numel() and (labels.min() < 0 or labels.max() > 9):
            raise UserError(f"CIFAR-10 {what} labels outside 0..9 under {folder}")

    gen = make_generator(seed)
    shares = class_shares(10, MAJORITY_CLASSES, majority_share, minority_share)
    parts = carve_val(torch.arange(len(y)), y, val_fraction, shares, gen, balanced_val)
    if unbalance_test:
        keep = unbalance(y_test, shares, gen)
        x_test, y_test = x_test[keep], y_test[keep]
    info = {
        "source": str(folder),
        "shares": shares,
        "unbalance_test": bool(unbalance_test),
        "balanced_val": bool(balanced_val),
    }
    return assemble(
        "cifar10",
        x,
        y,
        y,
        parts,
        CLASS_NAMES,
        CLASS_NAMES,
        augment=True,
        per_channel=True,
        info=info,
        test=(x_test, y_test, y_test),
    )
