"""Per-group diagnostics against independent computations (closed forms, numpy, masking).

Models with closed forms:
- logistic regression written as a 2-class softmax with logits ``(0, w.x + b)``, so that the
  cross-entropy is exactly the logistic loss: gradient ``X~^T (sigmoid(z) - y) / n`` and
  Hessian ``X~^T diag(p (1 - p)) X~ / n`` with ``X~ = [X, 1]``;
- softmax regression ``nn.Linear(d, K)``: gradient ``(P - Y)^T X~ / n`` and Hessian
  ``(1/n) sum_i (diag(p_i) - p_i p_i^T) kron x~_i x~_i^T``.
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tune_linfair.data.base import Split
from tune_linfair.errors import UserError
from tune_linfair.metrics import (
    GROUP_ROW_KEYS,
    SAMPLE_ROW_KEYS,
    GroupMetrics,
    diagnose,
    geometric_distance,
    group_gradient_norms,
    group_hessian_top_eigenvalues,
    pi_cost,
    power_iteration,
    softmax_margin,
    weight_distance,
)
from tune_linfair.models.activation import LinearizableReLU, weight_parameters


class LogisticRegression(nn.Module):
    """Binary logistic regression as 2-class logits ``(0, w.x + b)``."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.linear = nn.Linear(d, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.linear(x)
        return torch.cat([torch.zeros_like(z), z], dim=1)


def _split(n: int, d: int, classes: int, groups: int, seed: int, dtype=torch.float64) -> Split:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=dtype)
    y = torch.randint(0, classes, (n,), generator=gen)
    g = torch.randint(0, groups, (n,), generator=gen)
    return Split(x, y, g)


def _augmented(x: np.ndarray) -> np.ndarray:
    return np.concatenate([x, np.ones((len(x), 1))], axis=1)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _softmax_regression_np(model: nn.Linear) -> np.ndarray:
    """``[W | b]`` as a (K, d+1) numpy array."""
    w = model.weight.detach().numpy()
    b = model.bias.detach().numpy()[:, None]
    return np.concatenate([w, b], axis=1)


# --------------------------------------------------------------------------- gradients
def test_group_gradient_logistic_regression_closed_form():
    torch.manual_seed(0)
    split = _split(60, 4, 2, 3, seed=1)
    model = LogisticRegression(4).double()
    norms = group_gradient_norms(model, split, 3, batch_size=16)
    w = np.concatenate(
        [model.linear.weight.detach().numpy()[0], model.linear.bias.detach().numpy()]
    )
    for a in range(3):
        sel = split.g.numpy() == a
        xt = _augmented(split.x.numpy()[sel])
        y = split.y.numpy()[sel]
        p = 1.0 / (1.0 + np.exp(-(xt @ w)))
        grad = xt.T @ (p - y) / sel.sum()
        assert norms[a] == pytest.approx(np.linalg.norm(grad), rel=1e-9)


def test_group_gradient_softmax_regression_closed_form():
    torch.manual_seed(0)
    split = _split(80, 5, 4, 3, seed=2)
    model = nn.Linear(5, 4).double()
    norms = group_gradient_norms(model, split, 3, batch_size=7)
    theta = _softmax_regression_np(model)
    for a in range(3):
        sel = split.g.numpy() == a
        xt = _augmented(split.x.numpy()[sel])
        p = _softmax(xt @ theta.T)
        onehot = np.eye(4)[split.y.numpy()[sel]]
        grad = (p - onehot).T @ xt / sel.sum()
        assert norms[a] == pytest.approx(np.linalg.norm(grad), rel=1e-9)


def _mlp_with_mask() -> nn.Module:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), LinearizableReLU(), nn.Linear(6, 3))
    with torch.no_grad():
        model(torch.randn(8, 4))  # materialize the mask, move BN running stats off 0/1
    act = model[2]
    act.set_trainable()
    with torch.no_grad():
        act.mask.copy_(torch.tensor([1.0, 0.0, 0.5, 1.0, 0.2, 0.0]))
    return model.train()


def test_group_gradient_accumulates_batches_and_excludes_masks():
    model = _mlp_with_mask()
    split = _split(50, 4, 3, 2, seed=4, dtype=torch.float32)
    running_mean = model[1].running_mean.clone()
    small = group_gradient_norms(model, split, 2, batch_size=3)
    full = group_gradient_norms(model, split, 2, batch_size=1000)
    assert small == pytest.approx(full, rel=1e-5)
    # Independent: mean CE over the whole group in one pass, weights only (no mask), eval mode.
    model.eval()
    weights = [p for _, p in weight_parameters(model)]
    assert all(p is not model[2].mask for p in weights)
    for a in range(2):
        sel = split.g == a
        loss = F.cross_entropy(model(split.x[sel]), split.y[sel])
        grads = torch.autograd.grad(loss, weights)
        expected = math.sqrt(sum(float(g.pow(2).sum()) for g in grads))
        assert full[a] == pytest.approx(expected, rel=1e-5)
    with_mask = torch.autograd.grad(
        F.cross_entropy(model(split.x[split.g == 0]), split.y[split.g == 0]), model[2].mask
    )[0]
    assert float(with_mask.abs().sum()) > 0  # the mask would have changed the norm
    model.train()
    # State restored, nothing left behind.
    group_gradient_norms(model, split, 2, batch_size=5)
    assert model.training
    assert torch.equal(model[1].running_mean, running_mean)
    assert all(p.grad is None for p in model.parameters())


def test_group_gradient_empty_group_and_bad_ids():
    model = nn.Linear(3, 2)
    split = Split(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]), torch.tensor([0, 0, 2, 2]))
    norms = group_gradient_norms(model, split, 3)
    assert math.isnan(norms[1]) and norms[0] > 0 and norms[2] > 0
    with pytest.raises(UserError, match="group ids"):
        group_gradient_norms(model, split, 2)


# --------------------------------------------------------------------------- Hessian
def test_hessian_top_eigenvalue_logistic_regression_closed_form():
    torch.manual_seed(0)
    split = _split(70, 3, 2, 2, seed=5)
    model = LogisticRegression(3).double()
    eigs = group_hessian_top_eigenvalues(model, split, 2, tol=1e-10, max_iter=2000)
    w = np.concatenate(
        [model.linear.weight.detach().numpy()[0], model.linear.bias.detach().numpy()]
    )
    for a in range(2):
        xt = _augmented(split.x.numpy()[split.g.numpy() == a])
        p = 1.0 / (1.0 + np.exp(-(xt @ w)))
        hess = xt.T @ (xt * (p * (1 - p))[:, None]) / len(xt)
        assert eigs[a] == pytest.approx(np.linalg.eigvalsh(hess)[-1], rel=1e-3)


@pytest.mark.parametrize("batch_size", [256, 6])  # cached single-batch and streamed paths
def test_hessian_top_eigenvalue_softmax_regression_closed_form(batch_size):
    torch.manual_seed(0)
    k, d = 3, 4
    split = _split(40, d, k, 2, seed=6)
    model = nn.Linear(d, k).double()
    eigs = group_hessian_top_eigenvalues(
        model, split, 2, tol=1e-10, max_iter=2000, batch_size=batch_size
    )
    theta = _softmax_regression_np(model)
    for a in range(2):
        xt = _augmented(split.x.numpy()[split.g.numpy() == a])
        p = _softmax(xt @ theta.T)
        hess = sum(
            np.kron(np.diag(pi) - np.outer(pi, pi), np.outer(xi, xi)) for pi, xi in zip(p, xt)
        ) / len(xt)
        assert eigs[a] == pytest.approx(np.linalg.eigvalsh(hess)[-1], rel=1e-3)


def test_hessian_sample_cap_uses_mean_over_the_subset():
    # All samples of a group identical: any subset has the full group's Hessian, so a capped
    # estimate must equal the uncapped one (a sum/n_a scaling error would not).
    model = nn.Linear(3, 3).double()
    x = torch.randn(1, 3, dtype=torch.float64).repeat(30, 1)
    split = Split(x, torch.full((30,), 1), torch.zeros(30, dtype=torch.long))
    full = group_hessian_top_eigenvalues(model, split, 1, tol=1e-10, max_iter=2000)
    capped = group_hessian_top_eigenvalues(
        model, split, 1, max_samples=7, tol=1e-10, max_iter=2000, seed=3
    )
    assert capped[0] == pytest.approx(full[0], rel=1e-6)
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(UserError, match="max_samples"):
        group_hessian_top_eigenvalues(model, split, 1, max_samples=0)


def test_power_iteration_returns_signed_largest_magnitude():
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(4, 4)))
    a = torch.tensor(q @ np.diag([-5.0, 2.0, 1.0, 0.5]) @ q.T)

    def hvp(v):
        return [a @ v[0]]

    eig = power_iteration(hvp, [torch.zeros(4, dtype=torch.float64)], tol=1e-12, max_iter=500)
    assert eig == pytest.approx(-5.0, rel=1e-6)


# --------------------------------------------------------------------------- boundary
def test_geometric_distance_of_linear_binary_classifier():
    torch.manual_seed(0)
    model = nn.Linear(5, 2).double()
    split = _split(20, 5, 2, 1, seed=7)
    dist = geometric_distance(model, split, batch_size=6).numpy()
    weight = model.weight.detach().numpy()
    bias = model.bias.detach().numpy()
    w, b = weight[1] - weight[0], bias[1] - bias[0]
    expected = np.abs(split.x.numpy() @ w + b) / np.linalg.norm(w)
    np.testing.assert_allclose(dist, expected, rtol=1e-10)


def test_softmax_margin_matches_numpy():
    logits = torch.tensor([[2.0, 0.0, 1.0], [0.0, 0.0, -1.0], [5.0, -5.0, 0.0]])
    p = _softmax(logits.numpy().astype(np.float64))
    top2 = np.sort(p, axis=1)[:, -2:]
    np.testing.assert_allclose(softmax_margin(logits).numpy(), top2[:, 1] - top2[:, 0], atol=1e-6)
    assert softmax_margin(logits)[1] == 0.0
    with pytest.raises(UserError):
        softmax_margin(torch.zeros(3, 1))


# --------------------------------------------------------------------------- group metrics
def test_group_metrics_hand_made_with_empty_group():
    #            group 0 (4 samples, 3 right) | group 1 (2, 1 right) | group 3 (2, 2 right)
    y_true = np.array([0, 1, 2, 3, 4, 5, 6, 7])
    y_pred = np.array([0, 1, 2, 9, 4, 9, 6, 7])
    groups = np.array([0, 0, 0, 0, 1, 1, 3, 3])
    loss = np.array([1.0, 1.0, 1.0, 5.0, 2.0, 4.0, 0.5, 1.5])
    m = GroupMetrics.from_predictions(y_true, y_pred, groups, ["a", "b", "c", "d"], loss=loss)
    assert m.overall["accuracy"] == 75.0 and m.overall["n"] == 8
    assert m.overall["loss"] == pytest.approx(2.0)
    assert m.by_group["n"].tolist() == [4, 2, 0, 2]
    assert m.by_group["group_name"].tolist() == ["a", "b", "c", "d"]
    np.testing.assert_array_equal(m.by_group["accuracy"], [75.0, 50.0, np.nan, 100.0])
    np.testing.assert_array_equal(m.by_group["loss"], [2.0, 3.0, np.nan, 1.0])
    assert m.parity_gap == 50.0
    # base 0 -> NaN (undefined ratio), empty group -> NaN, improvement -> negative drop
    drop = m.relative_drop([100.0, 0.0, 90.0, 80.0])
    np.testing.assert_array_equal(drop, [25.0, np.nan, np.nan, -25.0])
    assert m.worst_group_drop([100.0, 0.0, 90.0, 80.0]) == 25.0
    assert math.isnan(m.worst_group_drop([0.0, 0.0, 0.0, 0.0]))
    base = GroupMetrics.from_predictions(y_true, y_true, groups, ["a", "b", "c", "d"])
    np.testing.assert_array_equal(m.relative_drop(base), [25.0, 50.0, np.nan, 0.0])
    assert m.worst_group_drop(base) == 50.0
    assert math.isnan(base.overall["loss"]) and base.by_group["loss"].isna().all()


def test_group_metrics_against_masking():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    yhat = np.where(rng.random(200) < 0.7, y, rng.integers(0, 3, 200))
    g = rng.integers(0, 5, 200)
    loss = rng.random(200)
    m = GroupMetrics.from_predictions(y, yhat, g, [f"g{i}" for i in range(5)], loss=loss)
    accs = []
    for a in range(5):
        sel = g == a
        accs.append(100.0 * np.mean(y[sel] == yhat[sel]))
        assert m.by_group.loc[a, "n"] == sel.sum()
        assert m.by_group.loc[a, "accuracy"] == pytest.approx(accs[-1])
        assert m.by_group.loc[a, "loss"] == pytest.approx(loss[sel].mean())
    assert m.parity_gap == pytest.approx(max(accs) - min(accs))


def test_group_metrics_rejects_bad_input():
    with pytest.raises(UserError, match="length"):
        GroupMetrics.from_predictions([0, 1], [0], [0, 0], ["a"])
    with pytest.raises(UserError, match="group ids"):
        GroupMetrics.from_predictions([0, 1], [0, 1], [0, 2], ["a", "b"])
    m = GroupMetrics.from_predictions([0, 1], [0, 1], [0, 1], ["a", "b"])
    with pytest.raises(UserError, match="groups"):
        m.relative_drop([90.0])
    with pytest.raises(UserError, match="percentages"):
        m.relative_drop([0.9, 150.0])


def test_groups_module_imports_without_torch():
    code = (
        "import sys; import tune_linfair.metrics.groups; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- distance, cost
def _net(out: int, value: float, mask: float) -> nn.Module:
    model = nn.Sequential(nn.Linear(3, 2), LinearizableReLU(), nn.Linear(2, out))
    model(torch.zeros(1, 3))
    with torch.no_grad():
        for _, p in weight_parameters(model):
            p.fill_(value)
    model[1].freeze(torch.full_like(model[1].mask, mask))
    return model


def test_weight_distance_by_hand():
    a, b = _net(2, 0.0, 1.0), _net(2, 1.0, 0.0)  # masks differ, must not count
    # 14 shared weights (3*2 + 2 + 2*2 + 2), each differing by 1
    assert weight_distance(a, b) == pytest.approx(math.sqrt(14))
    c = _net(3, 2.0, 1.0)  # last layer has another shape: only the first layer is shared
    assert weight_distance(a, c) == pytest.approx(math.sqrt(8 * 4))
    assert weight_distance(a, a) == 0.0
    with pytest.raises(UserError, match="share no weight"):
        weight_distance(a, nn.Conv2d(1, 1, 1))


def test_pi_cost_known_count():
    cost = pi_cost(1000)
    assert cost["est_online_latency_s"] == pytest.approx(0.0218)
    assert cost["est_online_comm_mb"] == pytest.approx(1.184)
    assert cost["est_offline_storage_mb"] == pytest.approx(17.072)
    assert pi_cost(491_520)["est_online_latency_s"] == pytest.approx(10.715136)
    for bad in (-1, 2.5, True):
        with pytest.raises(UserError):
            pi_cost(bad)


# --------------------------------------------------------------------------- diagnose
def test_diagnose_records():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    split = _split(30, 4, 3, 2, seed=8, dtype=torch.float32)  # group 2 stays empty
    names = ["maj", "min", "none"]
    base = [80.0, 60.0, 50.0]
    out = diagnose(
        model, split, split_name="val", group_names=names, stage="finetune",
        base_group_accuracy=base, hessian_max_samples=8, batch_size=7,
    )  # fmt: skip
    assert len(out.group_rows) == 3 and len(out.sample_rows) == 30
    assert all(tuple(row) == GROUP_ROW_KEYS for row in out.group_rows)
    assert all(tuple(row) == SAMPLE_ROW_KEYS for row in out.sample_rows)
    assert [row["n"] for row in out.group_rows] == split.group_counts(3)
    assert [row["group_name"] for row in out.group_rows] == names
    assert [row["index"] for row in out.sample_rows] == list(range(30))
    assert {row["stage"] for row in out.group_rows + out.sample_rows} == {"finetune"}
    norms = group_gradient_norms(model, split, 3)
    eigs = group_hessian_top_eigenvalues(model, split, 3, max_samples=8, batch_size=7)
    with torch.no_grad():
        top = torch.softmax(model(split.x), dim=1).topk(2, dim=1).values
    margin = (top[:, 0] - top[:, 1]).double()
    geo = geometric_distance(model, split).double()
    for a, row in enumerate(out.group_rows[:2]):
        assert isinstance(row["accuracy"], float) and isinstance(row["n"], int)
        assert row["grad_norm"] == pytest.approx(norms[a], rel=1e-5)
        assert row["hessian_top_eig"] == pytest.approx(eigs[a], rel=1e-5)
        assert row["mean_margin"] == pytest.approx(float(margin[split.g == a].mean()), rel=1e-5)
        expect = float(geo[split.g == a].mean())
        assert row["mean_geometric_distance"] == pytest.approx(expect, rel=1e-5)
        expected = 100 * (base[a] - row["accuracy"]) / base[a]
        assert row["relative_drop"] == pytest.approx(expected)
    empty = out.group_rows[2]
    assert math.isnan(empty["accuracy"]) and math.isnan(empty["grad_norm"])
    assert math.isnan(empty["relative_drop"]) and empty["base_accuracy"] == 50.0
    correct = [row["correct"] for row in out.sample_rows]
    assert out.accuracy == pytest.approx(100 * sum(correct) / 30)
    assert out.worst_group_drop == max(r["relative_drop"] for r in out.group_rows[:2])
    acc = [r["accuracy"] for r in out.group_rows[:2]]
    assert out.parity_gap == pytest.approx(max(acc) - min(acc))
    assert out.group_accuracy[:2] == acc

    bare = diagnose(
        model, split, split_name="test", group_names=names, stage="base",
        gradients=False, hessian=False, boundary=False,
    )  # fmt: skip
    assert math.isnan(bare.worst_group_drop)
    for row in bare.group_rows:
        for key in ("base_accuracy", "relative_drop", "grad_norm", "hessian_top_eig"):
            assert math.isnan(row[key])
    assert all(math.isnan(row["geometric_distance"]) for row in bare.sample_rows)
    assert [row["margin"] for row in bare.sample_rows] == pytest.approx(margin.tolist(), rel=1e-5)


def test_group_intervals_are_wilson_and_map_to_the_drop() -> None:
    from scipy import stats

    # group 0: 36 of 36 right (a bootstrap would collapse here), group 1: 30 of 36
    y = [0] * 72
    pred = [0] * 36 + [0] * 30 + [1] * 6
    g = [0] * 36 + [1] * 36
    m = GroupMetrics.from_predictions(y, pred, g, ["a", "b"])
    ci = m.intervals([100.0, 90.0])
    for a, k in ((0, 36), (1, 30)):
        expect = stats.binomtest(k, 36).proportion_ci(confidence_level=0.95, method="wilson")
        assert ci["accuracy_ci_low"].iloc[a] == pytest.approx(100 * expect.low)
        assert ci["accuracy_ci_high"].iloc[a] == pytest.approx(100 * expect.high)
    assert ci["accuracy_ci_low"].iloc[0] < 100.0  # not a point at 100% correct
    low, high = ci["accuracy_ci_low"].iloc[1], ci["accuracy_ci_high"].iloc[1]
    assert ci["relative_drop_ci_low"].iloc[1] == pytest.approx(100 * (90 - high) / 90)
    assert ci["relative_drop_ci_high"].iloc[1] == pytest.approx(100 * (90 - low) / 90)
    assert m.intervals()["relative_drop_ci_low"].isna().all()  # no base, no drop
