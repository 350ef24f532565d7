"""``synthetic``: 2-D majority/minority data with a curved boundary (the paper's Figure 2 setting).

Das et al. (ICML 2024, Sec. 4, Fig. 2) illustrate why linearization hurts minority groups:
a model with fewer ReLUs is closer to linear, and the group whose samples sit where the true
boundary bends loses most. This generator builds that situation:

- ground truth: ``y = 1`` iff ``x2 > b(x1)`` with the bump ``b(x1) = 2 exp(-x1^2 / 0.5)``,
  flat (``b ~ 0``) away from ``x1 = 0`` and strongly curved near it;
- majority: ``x1 ~ U(-4, 4)``, ``x2 ~ U(-2.5, 2.5)``: mostly where the boundary is flat, so a
  linear rule ``x2 > 0`` gets about 94% of it right;
- minority (share ``minority_share``): ``x1 ~ N(0, 0.5^2)``, ``x2 ~ U(-1, 3)``: concentrated
  under the bump, where the linear rule fails about a third of the time;
- then Gaussian input noise of std ``noise`` is added (labels are fixed before the noise,
  so samples near the boundary become ambiguous), and ``x`` is standardized with the
  training split's per-feature mean and std.

Groups ``("majority", "minority")``, classes ``("0", "1")``; test and validation splits are
stratified by (group, class).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from tune_linfair.data.base import GroupedDataset
from tune_linfair.data.splits import (
    assemble,
    check_fraction,
    joint_strata,
    make_generator,
    stratified_split,
)
from tune_linfair.errors import UserError

BUMP_HEIGHT = 2.0
BUMP_WIDTH = 0.5


def boundary(x1: torch.Tensor) -> torch.Tensor:
    """The true decision boundary ``b(x1) = 2 exp(-x1^2 / (2 * 0.5^2))``."""
    return BUMP_HEIGHT * torch.exp(-(x1**2) / (2 * BUMP_WIDTH**2))


def load_synthetic(
    root: Path | None,
    seed: int,
    download: bool,
    *,
    n_samples: int = 2000,
    minority_share: float = 0.1,
    noise: float = 0.1,
    test_fraction: float = 0.2,
    val_fraction: float = 0.2,
) -> GroupedDataset:
    """Generate the seeded 2-D majority/minority data set: x (N, 2), y, g in {0, 1}.

    ``root`` and ``download`` are ignored. ``n_samples`` in total (``minority_share`` of them
    in the minority group), ``noise`` is the std of the Gaussian input noise, and the test
    (from all samples) and validation (from the rest) fractions are stratified.
    """
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 20:
        raise UserError(f"option n_samples={n_samples!r} must be an integer >= 20")
    minority_share = check_fraction("minority_share", minority_share)
    test_fraction = check_fraction("test_fraction", test_fraction)
    val_fraction = check_fraction("val_fraction", val_fraction)
    if not (isinstance(noise, int | float) and math.isfinite(noise) and noise >= 0):
        raise UserError(f"option noise={noise!r} must be a number >= 0")

    gen = make_generator(seed)
    n_min = max(1, int(math.floor(minority_share * n_samples + 0.5)))
    n_maj = n_samples - n_min

    maj = torch.stack(
        [
            torch.rand(n_maj, generator=gen) * 8.0 - 4.0,
            torch.rand(n_maj, generator=gen) * 5.0 - 2.5,
        ],
        dim=1,
    )
    mino = torch.stack(
        [
            torch.randn(n_min, generator=gen) * BUMP_WIDTH,
            torch.rand(n_min, generator=gen) * 4.0 - 1.0,
        ],
        dim=1,
    )
    x = torch.cat([maj, mino])
    g = torch.cat([torch.zeros(n_maj, dtype=torch.long), torch.ones(n_min, dtype=torch.long)])
    y = (x[:, 1] > boundary(x[:, 0])).long()
    x = x + float(noise) * torch.randn(x.shape, generator=gen)

    strata = joint_strata(g, y, 2)
    pool, test = stratified_split(strata, test_fraction, gen)
    train_pos, val_pos = stratified_split(strata[pool], val_fraction, gen)
    parts = {"train": pool[train_pos], "val": pool[val_pos], "test": test}
    info = {"n_samples": n_samples, "minority_share": minority_share, "noise": float(noise)}
    return assemble(
        "synthetic",
        x,
        y,
        g,
        parts,
        ("majority", "minority"),
        ("0", "1"),
        augment=False,
        per_channel=True,
        info=info,
    )
