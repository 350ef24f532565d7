"""``digits``: scikit-learn's ``load_digits`` (1,797 real 8x8 handwritten digits), unbalanced.

The default dataset: it ships with scikit-learn, so the default sweep needs no download.
It mirrors the paper's unbalanced CIFAR-10 (Das et al., ICML 2024, Sec. 5: 90% of classes
0-4 kept, 10% of classes 5-9), with group = class.

Protocol (README "Data"), with ``balanced_val=True`` (the default):
1. carve a test split stratified by class from the full data; it keeps the source's
   (balanced) distribution unless ``unbalance_test`` (the paper's code unbalances it);
2. carve a validation split stratified by class from what is left, *before* unbalancing,
   so it is balanced like the test split;
3. unbalance the rest for training: classes 0-4 keep ``majority_share``, 5-9
   ``minority_share``.
With ``balanced_val=False`` (the earlier protocol) steps 2 and 3 swap: the validation split
is carved from the unbalanced pool and is unbalanced like training.

Why a balanced validation split: the search ranks configurations by the worst group's
validation drop, and with ~180 images per class an unbalanced split leaves 11 validation
images per minority class, so one image moves the objective by 9-10 points. Carved before
unbalancing, every class has about 36 validation images (one image: about 3 points) while
training stays clearly unbalanced (about 97 vs 32 images per class, 3:1). The counts do not
depend on the seed (only which images are drawn does); with the defaults, per class 0-9
(also in ``info["group_counts"]``):

    train 95 98 95 98 98 33 33 32 31 32   (645)
    val   36 37 36 37 36 37 36 36 35 36   (362)
    test  36 36 35 37 36 36 36 36 35 36   (359)

and with ``balanced_val=False``:

    train 96 98 96 98 98 33 33 32 31 32   (647)
    val   32 33 32 33 33 11 11 11 11 11   (218)
    test  36 36 35 37 36 36 36 36 35 36   (359)
"""

from __future__ import annotations

from pathlib import Path

import torch

from tune_linfair.data.base import GroupedDataset
from tune_linfair.data.splits import (
    assemble,
    carve_val,
    check_fraction,
    class_shares,
    make_generator,
    stratified_split,
    unbalance,
)

MAJORITY_CLASSES = (0, 1, 2, 3, 4)


def load_digits(
    root: Path | None,
    seed: int,
    download: bool,
    *,
    test_fraction: float = 0.2,
    val_fraction: float = 0.25,
    majority_share: float = 0.9,
    minority_share: float = 0.3,
    unbalance_test: bool = False,
    balanced_val: bool = True,
) -> GroupedDataset:
    """Unbalanced 8x8 digits: x (N, 1, 8, 8) standardized with training statistics, group = class.

    ``root`` and ``download`` are ignored (the data ships with scikit-learn).
    ``test_fraction`` is taken from the full data, ``val_fraction`` from the rest before
    unbalancing (``balanced_val``) or from the unbalanced pool; shares are the fractions of
    each class kept for training (see the module docstring).
    """
    from sklearn.datasets import load_digits as sk_load_digits

    test_fraction = check_fraction("test_fraction", test_fraction)
    val_fraction = check_fraction("val_fraction", val_fraction)
    majority_share = check_fraction("majority_share", majority_share, allow_one=True)
    minority_share = check_fraction("minority_share", minority_share, allow_one=True)

    raw = sk_load_digits()
    x = torch.as_tensor(raw.images, dtype=torch.float32).unsqueeze(1)  # (N, 1, 8, 8), 0..16
    y = torch.as_tensor(raw.target, dtype=torch.long)
    g = y.clone()
    gen = make_generator(seed)
    shares = class_shares(10, MAJORITY_CLASSES, majority_share, minority_share)

    pool, test = stratified_split(g, test_fraction, gen)
    if unbalance_test:
        test = test[unbalance(y[test], shares, gen)]
    parts = {"test": test, **carve_val(pool, y, val_fraction, shares, gen, balanced_val)}

    names = tuple(str(c) for c in range(10))
    info = {
        "source": "sklearn.datasets.load_digits",
        "shares": shares,
        "unbalance_test": bool(unbalance_test),
        "balanced_val": bool(balanced_val),
    }
    return assemble(
        "digits", x, y, g, parts, names, names, augment=False, per_channel=False, info=info
    )
