"""``utkface``: UTKFace face images with age, gender and race labels in the file names.

Layout: a folder of ``[age]_[gender]_[race]_[datetime].jpg`` files (the "Aligned&Cropped"
release), or ``*.jpg.chip.jpg`` (the "in-the-wild" crops), directly in the data root or in
``ROOT/UTKFace/``. UTKFace has no automatic download (it is distributed by its authors
under a non-commercial licence); put the files there by hand.

Attributes (usable as ``target`` and as ``group``):
- ``age``: buckets 2-12, 13-17, 18-64, 65+ (Das et al., ICML 2024, Sec. 5); ages 0-1 fall in
  no bucket and are dropped (counted) whenever age is the target or the group;
- ``race``: 0-4 = White, Black, Asian, Indian, Others;
- ``gender``: 0 = male, 1 = female.

The paper predicts the age bucket and groups by it (``target="age", group="age"``); any
pair is allowed, e.g. predict gender and group by race, which the paper's code cannot do.
Malformed names (a few real files lack the race field, e.g.
``39_1_20170116174525125.jpg.chip.jpg``) and unreadable images are skipped and counted in
``info``. Images are converted to RGB and resized to 32x32 (bilinear, antialiased) with
PIL. There is no official test split: test and validation are carved seeded and stratified
by (group, target). Inputs standardized per channel with training statistics;
``augment=True``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tune_linfair.data.base import GroupedDataset
from tune_linfair.data.splits import (
    assemble,
    check_fraction,
    joint_strata,
    make_generator,
    stratified_split,
)
from tune_linfair.errors import UserError, unknown

AGE_BUCKETS = ("2-12", "13-17", "18-64", "65+")
RACES = ("White", "Black", "Asian", "Indian", "Others")
GENDERS = ("male", "female")
ATTRIBUTES: dict[str, tuple[str, ...]] = {"age": AGE_BUCKETS, "race": RACES, "gender": GENDERS}
SUBFOLDER = "UTKFace"
SIZE = 32
LAYOUT = "ROOT/[age]_[gender]_[race]_[datetime].jpg (or .jpg.chip.jpg), or under ROOT/UTKFace/"


def age_bucket(age: int) -> int | None:
    """Bucket index of ``age`` (2-12 -> 0, 13-17 -> 1, 18-64 -> 2, 65+ -> 3); None for 0-1."""
    if age < 2:
        return None
    if age <= 12:
        return 0
    if age <= 17:
        return 1
    if age <= 64:
        return 2
    return 3


def parse_name(name: str) -> tuple[int, int, int] | None:
    """``(age, gender, race)`` from a UTKFace file name, or None if the name is malformed."""
    stem = name
    for suffix in (".chip.jpg", ".jpg"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    fields = stem.split("_")
    if len(fields) != 4 or not all(f.isdigit() for f in fields[:3]):
        return None
    age, gender, race = (int(f) for f in fields[:3])
    if gender not in (0, 1) or race not in range(len(RACES)):
        return None
    return age, gender, race


def _folder(root: Path | None) -> Path:
    if root is None:
        raise UserError(f"dataset 'utkface' needs --data-root ROOT with {LAYOUT}")
    if not root.is_dir():
        raise UserError(f"UTKFace data root {root} is not a folder; expected {LAYOUT}")
    sub = root / SUBFOLDER
    return sub if sub.is_dir() else root


def _read_image(path: Path) -> np.ndarray | None:
    """The image as (32, 32, 3) uint8, or None if PIL cannot read it."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB").resize((SIZE, SIZE), Image.BILINEAR))
    except (OSError, ValueError, SyntaxError):
        return None


def load_utkface(
    root: Path | None,
    seed: int,
    download: bool,
    *,
    target: str = "age",
    group: str = "age",
    test_fraction: float = 0.2,
    val_fraction: float = 0.1,
) -> GroupedDataset:
    """UTKFace: x (N, 3, 32, 32) standardized per channel; y = ``target``, g = ``group``.

    ``target`` and ``group`` are each one of ``age``, ``race``, ``gender``. ``test_fraction``
    of the usable images form the test split and ``val_fraction`` of the rest the
    validation split, both stratified by (group, target). ``download`` is ignored (no
    automatic download exists).
    """
    if target not in ATTRIBUTES:
        raise unknown("UTKFace target", target, ATTRIBUTES)
    if group not in ATTRIBUTES:
        raise unknown("UTKFace group", group, ATTRIBUTES)
    test_fraction = check_fraction("test_fraction", test_fraction)
    val_fraction = check_fraction("val_fraction", val_fraction)
    folder = _folder(root)
    files = sorted(p for p in folder.glob("*.jpg") if p.is_file())
    if not files:
        raise UserError(f"no .jpg files in {folder}; expected {LAYOUT}")

    uses_age = "age" in (target, group)
    malformed: list[str] = []
    unreadable: list[str] = []
    dropped_age = 0
    images: list[np.ndarray] = []
    labels: list[tuple[int, int, int]] = []
    for path in files:
        parsed = parse_name(path.name)
        if parsed is None:
            malformed.append(path.name)
            continue
        age, gender, race = parsed
        bucket = age_bucket(age)
        if uses_age and bucket is None:
            dropped_age += 1
            continue
        image = _read_image(path)
        if image is None:
            unreadable.append(path.name)
            continue
        images.append(image)
        labels.append((-1 if bucket is None else bucket, gender, race))

    info = {
        "source": str(folder),
        "target": target,
        "group": group,
        "files": len(files),
        "used": len(images),
        "malformed": len(malformed),
        "malformed_examples": malformed[:5],
        "unreadable": len(unreadable),
        "unreadable_examples": unreadable[:5],
        "dropped_age_0_1": dropped_age,
    }
    if not images:
        raise UserError(
            f"no usable UTKFace images in {folder}: {len(files)} .jpg files, {len(malformed)} "
            f"malformed names, {len(unreadable)} unreadable, {dropped_age} aged 0-1; "
            f"expected {LAYOUT}"
        )
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    table = torch.tensor(labels, dtype=torch.long)
    column = {"age": 0, "gender": 1, "race": 2}
    y = table[:, column[target]]
    g = table[:, column[group]]

    gen = make_generator(seed)
    strata = joint_strata(g, y, len(ATTRIBUTES[target]))
    pool, test = stratified_split(strata, test_fraction, gen)
    train_pos, val_pos = stratified_split(strata[pool], val_fraction, gen)
    parts = {"train": pool[train_pos], "val": pool[val_pos], "test": test}
    return assemble(
        "utkface",
        x,
        y,
        g,
        parts,
        ATTRIBUTES[group],
        ATTRIBUTES[target],
        augment=True,
        per_channel=True,
        info=info,
    )
