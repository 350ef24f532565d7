"""tune_linfair.metrics.theorem44: the Theorem 4.4 check along the path theta -> theta_lin."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from tune_linfair.data import get_dataset
from tune_linfair.linearize.random_masks import random_linearize
from tune_linfair.metrics.theorem44 import first_violation, group_losses, interpolate, path_check
from tune_linfair.models import create_model
from tune_linfair.models.activation import weight_parameters

torch.set_num_threads(1)


def _pair():
    data = get_dataset("synthetic", seed=0, setting="class_minority", n_samples=300)
    torch.manual_seed(0)
    base = create_model("mlp", 2, (2,), width=8)
    base(data.train.x[:2])  # materialize the masks
    lin = copy.deepcopy(base)
    random_linearize(lin, 12, seed=0)
    with torch.no_grad():
        for _, p in weight_parameters(lin):
            p.add_(0.1 * torch.randn_like(p))
    return data, base, lin


def test_interpolation_end_points_and_midpoint():
    data, base, lin = _pair()
    x = data.test.x
    with torch.no_grad():
        assert torch.allclose(interpolate(base, base, lin, 0.0)(x), base(x))
        assert torch.allclose(interpolate(lin, base, lin, 1.0)(x), lin(x))
        mid = dict(weight_parameters(interpolate(base, base, lin, 0.5)))
    for name, p in weight_parameters(base):
        assert torch.allclose(mid[name], 0.5 * (p + dict(weight_parameters(lin))[name]))


def test_path_check_bound_formula_and_start():
    data, base, lin = _pair()
    out = path_check(base, lin, data.test, 2, ts=(0.0, 0.5, 1.0))
    d = out["D"]
    for row in out["groups"]:
        g, lam = row["grad_norm"], abs(row["lambda_max"])
        assert row["bound"] == pytest.approx(
            [0.0, g * 0.5 * d + 0.125 * lam * d**2, g * d + 0.5 * lam * d**2]
        )
        assert row["base_masks"]["excess"][0] == pytest.approx(0.0, abs=1e-9)
    ends = group_losses(lin, data.test, 2)
    start = group_losses(base, data.test, 2)
    for a, row in enumerate(out["groups"]):
        assert row["lin_masks"]["excess"][-1] == pytest.approx(ends[a] - start[a], rel=1e-5)


def test_first_violation():
    assert first_violation([0, 0.5, 1], [0.0, 0.1, 0.9], [0.0, 0.2, 0.5]) == 1.0
    assert math.isnan(first_violation([0, 1], [0.0, 0.1], [0.0, 0.2]))
    assert first_violation([0, 1], [0.3, 0.1], [0.0, 0.2]) == 0.0
