"""Fine-tuning with distillation and the fairness mitigations (tune_linfair.finetune)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tune_linfair.data import get_dataset
from tune_linfair.data.base import GroupedDataset, Split
from tune_linfair.errors import UserError
from tune_linfair.finetune import (
    MITIGATIONS,
    AccuracyGapLoss,
    FinetuneSettings,
    KDLoss,
    LagrangianKD,
    TeacherLogits,
    finetune,
    worst_group_accuracy,
)
from tune_linfair.models import create_model, linearizable_layers
from tune_linfair.train import Batch, evaluate, fit, seed_everything

torch.set_num_threads(1)
T = 4.0


# -- helpers ------------------------------------------------------------------------------
def hand_kd(student: nn.Module, teacher: nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Per-sample ``CE + T^2 * KL(teacher_T || student_T)`` in float64 NumPy, from scratch."""
    with torch.no_grad():
        zs = student(x).double().numpy()
        zt = teacher(x).double().numpy()

    def log_softmax(z: np.ndarray) -> np.ndarray:
        m = z.max(axis=1, keepdims=True)
        return z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))

    ce = -log_softmax(zs)[np.arange(len(y)), y.numpy()]
    log_ps, log_pt = log_softmax(zs / T), log_softmax(zt / T)
    kl = (np.exp(log_pt) * (log_pt - log_ps)).sum(axis=1)
    return ce + T**2 * kl


def flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def sgd_step(model: nn.Module, loss_fn, batch: Batch) -> torch.Tensor:
    """Weights of a copy of ``model`` after one SGD step on ``loss_fn(model, batch)``."""
    model = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn(model, batch).backward()
    opt.step()
    return flat(model)


def tiny_problem(groups: list[int], seed: int = 0, dim: int = 4, classes: int = 3):
    """A linear student/teacher pair and a split with the given group ids."""
    gen = torch.Generator().manual_seed(seed)
    n = len(groups)
    x = torch.randn(n, dim, generator=gen)
    y = torch.randint(0, classes, (n,), generator=gen)
    g = torch.tensor(groups)
    torch.manual_seed(seed)
    student, teacher = nn.Linear(dim, classes), nn.Linear(dim, classes)
    split = Split(x, y, g)
    return student, teacher, split


def whole(split: Split, index: list[int] | None = None) -> Batch:
    idx = torch.arange(len(split)) if index is None else torch.tensor(index)
    return Batch(split.x[idx], split.y[idx], split.g[idx], idx)


@pytest.fixture(scope="module")
def digits() -> GroupedDataset:
    return get_dataset("digits", seed=0)


@pytest.fixture(scope="module")
def base_and_linearized(digits):
    """A small trained base resnet_mini and a copy with ~5% of its ReLUs kept at random."""
    gen = seed_everything(0)
    base = create_model("resnet_mini", digits.num_classes, digits.input_shape, width=8)
    opt = torch.optim.SGD(base.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    fit(
        base,
        digits.train,
        digits.val,
        lambda m, b: F.cross_entropy(m(b.x), b.y),
        opt,
        epochs=12,
        batch_size=64,
        generator=gen,
    )
    lin = copy.deepcopy(base)
    mask_gen = torch.Generator().manual_seed(1)
    for _, layer in linearizable_layers(lin):
        layer.freeze((torch.rand(layer.mask.shape, generator=mask_gen) < 0.05).float())
    return base, lin


# -- lagrangian: the penalty is in the graph ------------------------------------------------
def test_lagrangian_penalty_carries_gradient_and_detached_one_does_not():
    student, teacher, split = tiny_problem([0, 0, 0, 1, 1, 0, 1, 0])
    tl = TeacherLogits(teacher, split, augmented=False)
    lag = LagrangianKD(tl, num_groups=2, mu=0.5)
    lag.load_state_dict({"lambdas": torch.tensor([0.7, 1.3], dtype=torch.float64)})
    batch = whole(split)
    w_none = sgd_step(student, KDLoss(tl), batch)
    w_lag = sgd_step(student, lag, batch)
    per = lag.per_sample(student, batch)
    assert float(lag.penalty(per, batch.g).detach()) > 1e-3
    assert not torch.allclose(w_none, w_lag, atol=1e-6)

    def paper_loss(model: nn.Module, b: Batch) -> torch.Tensor:
        """The released code's version: the penalty rebuilt as a constant."""
        per = lag.per_sample(model, b)
        return per.mean() + torch.tensor(lag.penalty(per, b.g).item()).detach()

    assert torch.equal(sgd_step(student, paper_loss, batch), w_none)

    # The gradient is exactly grad L(B) + sum_a lambda_a * sign(L(B) - L(B_a)) grad(L(B) - L(B_a)).
    model = copy.deepcopy(student)
    lag(model, batch).backward()
    got = torch.cat([p.grad.flatten() for p in model.parameters()])
    model.zero_grad()
    per = lag.per_sample(model, batch)
    ref = per.mean()
    for a, lam in enumerate([0.7, 1.3]):
        gap = per.mean() - per[batch.g == a].mean()
        ref = ref + lam * torch.sign(gap.detach()) * gap
    ref.backward()
    want = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert torch.allclose(got, want, atol=1e-6)


def test_mu_zero_is_exactly_plain_kd_and_mu_positive_is_not(digits):
    pick = torch.randperm(len(digits.train), generator=torch.Generator().manual_seed(0))
    data = GroupedDataset(
        "digits-small",
        digits.train.subset(pick[:256]),
        digits.val,
        digits.test,
        digits.group_names,
        digits.class_names,
    )
    torch.manual_seed(0)
    start = create_model("resnet_mini", 10, data.input_shape, width=4)
    teacher = create_model("resnet_mini", 10, data.input_shape, width=4)
    tl = TeacherLogits(teacher, data.train, augmented=False)

    def run(loss_fn) -> tuple[nn.Module, list[dict]]:
        model = copy.deepcopy(start)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        res = fit(
            model,
            data.train,
            data.val,
            loss_fn,
            opt,
            epochs=2,
            batch_size=32,
            generator=torch.Generator().manual_seed(3),
            select=None,
        )
        return model, res.history

    plain, _ = run(KDLoss(tl))
    zero, hist = run(LagrangianKD(tl, 10, mu=0.0))
    for (k, a), b in zip(plain.state_dict().items(), zero.state_dict().values()):
        assert torch.equal(a, b), k
    assert all(h[f"lambda_{a}"] == 0.0 for h in hist for a in range(10))
    assert all(h[f"violation_{a}"] > 0.0 for h in hist for a in range(10))
    pos, hist = run(LagrangianKD(tl, 10, mu=1.0))
    assert hist[0]["lambda_3"] == pytest.approx(hist[0]["violation_3"])
    assert not torch.equal(flat(plain), flat(pos))


def test_lambda_update_matches_hand_computation():
    groups = [0, 1, 1, 0, 2, 0, 2, 2, 0]
    student, teacher, split = tiny_problem(groups, seed=5)
    mu = 0.3
    lag = LagrangianKD(TeacherLogits(teacher, split, augmented=False), 3, mu=mu)
    opt = torch.optim.SGD(student.parameters(), lr=0.5)
    batches = [[0, 1, 2, 3], [4, 5, 6, 7, 8]]  # groups {0, 1} then {0, 2}: unequal counts
    lam = np.zeros(3)
    for _epoch in range(2):
        per_all, g_all = [], []
        for index in batches:
            b = whole(split, index)
            per = hand_kd(student, teacher, b.x, b.y)
            g = b.g.numpy()
            want = per.mean() + sum(
                lam[a] * abs(per.mean() - per[g == a].mean()) for a in set(g.tolist())
            )
            loss = lag(student, b)
            assert float(loss.detach()) == pytest.approx(want, rel=1e-5)
            opt.zero_grad()
            loss.backward()
            opt.step()
            per_all.append(per)
            g_all.append(g)
        per_all, g_all = np.concatenate(per_all), np.concatenate(g_all)
        viol = np.array([abs(per_all.mean() - per_all[g_all == a].mean()) for a in range(3)])
        lam = lam + mu * viol
        log = lag.end_epoch(student)
        assert np.allclose(lag.lambdas.numpy(), lam, rtol=1e-5)
        assert [log[f"violation_{a}"] for a in range(3)] == pytest.approx(viol, rel=1e-5)
        assert [log[f"lambda_{a}"] for a in range(3)] == pytest.approx(lam, rel=1e-5)
    assert (lam > 0).all()
    state = lag.state_dict()
    other = LagrangianKD(lag.teacher, 3, mu=mu)
    other.load_state_dict(state)
    assert torch.equal(other.lambdas, lag.lambdas)


@pytest.mark.parametrize("mitigation", ["lagrangian", "accuracy_gap"])
def test_group_absent_from_epoch_keeps_its_multiplier(mitigation):
    student, teacher, split = tiny_problem([0, 1, 0, 1, 0, 0, 1, 0], seed=2)
    val = Split(split.x, split.y, split.g)
    tl = TeacherLogits(teacher, split, augmented=False)
    if mitigation == "lagrangian":
        loss = LagrangianKD(tl, 3, mu=1.0)
    else:
        loss = AccuracyGapLoss(tl, [100.0, 100.0, 100.0], dual_lr=0.5, num_groups=3)
    loss.load_state_dict({"lambdas": torch.tensor([0.0, 0.0, 0.5], dtype=torch.float64)})
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    res = fit(
        student,
        split,
        val,
        loss,
        opt,
        epochs=2,
        batch_size=3,
        generator=torch.Generator().manual_seed(0),
    )
    for log in res.history:
        assert log["lambda_2"] == 0.5
        assert math.isnan(log["violation_2"])
        assert math.isfinite(log["loss"])
    assert any(log["lambda_0"] != 0.0 or log["lambda_1"] != 0.0 for log in res.history)


# -- accuracy gap ---------------------------------------------------------------------------
def _gap_problem():
    """Identity classifier on 2 classes: group 0 (3 samples) all right, group 1 (1) all wrong."""
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
        model.bias.zero_()
    x = torch.tensor([[1.0, 0.0], [1.0, 0.2], [0.9, 0.0], [1.0, 0.1]])
    y = torch.tensor([0, 0, 0, 1])
    g = torch.tensor([0, 0, 0, 1])
    split = Split(x, y, g)
    teacher = copy.deepcopy(model)
    return model, TeacherLogits(teacher, split, augmented=False), whole(split)


def test_accuracy_gap_multipliers_projected_and_grow_on_violation():
    model, tl, batch = _gap_problem()
    loss = AccuracyGapLoss(tl, [100.0, 80.0], epsilon=5.0, dual_lr=0.01)
    loss(model, batch)
    log = loss.end_epoch(model)
    # acc_0 = 100, acc_1 = 0, acc = 75; base overall = (3 * 100 + 80) / 4 = 95:
    # drop_0 = 0, drop_1 = 80, drop = 20.
    assert log["violation_0"] == pytest.approx(0.0 - 20.0 - 5.0)
    assert log["violation_1"] == pytest.approx(80.0 - 20.0 - 5.0)
    assert log["lambda_0"] == 0.0  # projected: max(0, 0 - 0.25)
    assert log["lambda_1"] == pytest.approx(0.55)
    loss(model, batch)
    log = loss.end_epoch(model)
    assert log["lambda_0"] == 0.0 and log["lambda_1"] == pytest.approx(1.1)
    # A satisfied constraint shrinks its multiplier, never below zero.
    loss.load_state_dict({"lambdas": torch.tensor([0.1, 0.5], dtype=torch.float64)})
    loss(model, batch)
    loss.end_epoch(model)
    assert loss.lambdas[0] == 0.0 and (loss.lambdas >= 0).all()


def test_accuracy_gap_surrogate_gradient():
    model, tl, batch = _gap_problem()
    loss = AccuracyGapLoss(tl, [100.0, 100.0], dual_lr=0.01)

    def grads(fn) -> torch.Tensor:
        m = copy.deepcopy(model)
        fn(m, batch).backward()
        return torch.cat([p.grad.flatten() for p in m.parameters()])

    kd_only = grads(KDLoss(tl))
    assert torch.equal(grads(loss), kd_only)  # lambda = 0: plain KD
    loss.load_state_dict({"lambdas": torch.tensor([0.0, 0.7], dtype=torch.float64)})
    extra = grads(loss) - kd_only
    assert extra.abs().max() > 1e-3

    def surrogate(m: nn.Module, b: Batch) -> torch.Tensor:
        ce = F.cross_entropy(m(b.x), b.y, reduction="none")
        return 0.7 * (ce[b.g == 1].mean() - ce.mean())

    assert torch.allclose(extra, grads(surrogate), atol=1e-6)


# -- end to end -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kw",
    [
        {"mitigation": "none"},
        {"mitigation": "lagrangian", "mu": 0.1},
        {"mitigation": "accuracy_gap", "dual_lr": 0.05, "select": "worst_group"},
    ],
)
def test_finetune_end_to_end_digits(digits, base_and_linearized, kw):
    base, lin = base_and_linearized
    student = copy.deepcopy(lin)
    start = evaluate(student, digits.val)
    settings = FinetuneSettings(epochs=5, lr=3e-3, batch_size=64, **kw)
    flags = [p.requires_grad for p in base.parameters()]
    res = finetune(student, base, digits, settings, seed=0)
    assert len(res.history) == 5
    # the teacher's flags are left as they were: the base can seed another student
    assert [p.requires_grad for p in base.parameters()] == flags
    for (name, before), after in zip(lin.named_parameters(), student.parameters()):
        # masks stay frozen; every weight is trained
        assert torch.equal(before, after) == name.endswith(".mask"), name
    scores = [h["score"] for h in res.history]
    assert res.best_epoch == int(np.argmax(scores))
    assert res.best_score == max(scores)
    end = evaluate(student, digits.val)  # the student holds the selected weights
    if settings.select == "accuracy":
        assert scores == [h["val_accuracy"] for h in res.history]
        assert end.accuracy() == pytest.approx(res.best_score)
        assert res.best_score > start.accuracy() + 5.0
    else:
        assert worst_group_accuracy(end) == pytest.approx(res.best_score)
        assert res.best_score > worst_group_accuracy(start)
    for h in res.history:
        lambdas = [h[f"lambda_{a}"] for a in range(digits.num_groups)]
        assert all(v >= 0 for v in lambdas)
        assert all(f"violation_{a}" in h for a in range(digits.num_groups))
    if kw["mitigation"] == "none":
        assert all(h["lambda_0"] == 0.0 for h in res.history)
    else:
        assert max(res.history[-1][f"lambda_{a}"] for a in range(10)) > 0
    assert torch.equal(res.multipliers["lambdas"], torch.tensor(lambdas, dtype=torch.float64))


# -- bad input ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kw",
    [
        {"mu": -0.1},
        {"epsilon": -1.0},
        {"lr": -1e-3},
        {"lr": 0.0},
        {"dual_lr": -0.5},
        {"mitigation": "fair"},
        {"select": "test"},
        {"epochs": 0},
        {"mu": float("nan")},
    ],
)
def test_bad_settings(kw):
    with pytest.raises(UserError) as err:
        FinetuneSettings(**kw)
    assert "\n" not in str(err.value)


def test_mitigations_listed():
    assert MITIGATIONS == ("none", "lagrangian", "accuracy_gap", "group_dro")


def test_group_dro_weights_after_one_step_by_hand():
    """Sagawa et al. (2020), Algorithm 1 on a batch of 5 samples in groups 0, 0, 1, 2, 2
    (of 4 groups: group 3 absent): q_a <- q_a exp(eta L(B_a)) / Z from uniform q, then the
    loss is sum_a q_a L(B_a), with the new weights."""
    from tune_linfair.mitigation import GroupDRO

    torch.manual_seed(0)
    z_s = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    z_t = torch.randn(5, 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1])
    g = torch.tensor([0, 0, 1, 2, 2])
    eta, T = 0.5, 4.0

    class Teacher:
        def __call__(self, batch):
            return z_t

    dro = GroupDRO(Teacher(), num_groups=4, eta=eta, temperature=T)
    batch = Batch(x=z_s, y=y, g=g, index=torch.arange(5))
    loss = dro(lambda x: x, batch)
    # by hand: per-sample CE + T^2 KL(teacher || student), group means, softmax update
    p_t = torch.softmax(z_t / T, 1)
    log_p_s = torch.log_softmax(z_s / T, 1)
    kl = (p_t * (p_t.log() - log_p_s)).sum(1) * T**2
    ce = -torch.log_softmax(z_s, 1)[torch.arange(5), y]
    per = ce + kl
    groups = [
        per[g == a].mean() if (g == a).any() else torch.tensor(0.0, dtype=torch.float64)
        for a in range(4)
    ]
    losses = torch.stack(groups)
    q = torch.full((4,), 0.25, dtype=torch.float64) * torch.exp(eta * losses.detach())
    q = q / q.sum()
    assert torch.allclose(dro.q, q)
    assert loss.item() == pytest.approx(float((q * losses).sum().detach()))
    # the weights are constants for the gradient
    expect = torch.autograd.grad((q * losses).sum(), z_s)[0]
    assert torch.allclose(torch.autograd.grad(loss, z_s)[0], expect)
    assert dro.q[3] < 0.25 and dro.end_epoch()["q_1"] == pytest.approx(float(q[1]))


def test_group_dro_fine_tunes_and_weights_the_worst_group(digits, base_and_linearized):
    base, lin = base_and_linearized
    student = copy.deepcopy(lin)
    settings = FinetuneSettings(mitigation="group_dro", eta=0.05, epochs=2, lr=3e-3)
    res = finetune(student, base, digits, settings, seed=0)
    q = res.multipliers["q"]
    assert q.shape == (digits.num_groups,) and torch.isclose(
        q.sum(), torch.tensor(1.0, dtype=q.dtype)
    )
    assert float(q.max()) > 1.0 / digits.num_groups  # moved away from uniform
    assert res.best_score > 80.0


def test_wrong_group_count(digits, base_and_linearized):
    base, lin = base_and_linearized
    settings = FinetuneSettings(mitigation="accuracy_gap", epochs=1)
    with pytest.raises(UserError, match="3 entries"):
        finetune(copy.deepcopy(lin), base, digits, settings, base_accuracy=[90.0] * 3)
    tl = TeacherLogits(base, digits.train, augmented=False)
    with pytest.raises(UserError, match="10 groups"):
        AccuracyGapLoss(tl, [90.0] * 3, num_groups=10)
    fewer = GroupedDataset(
        "digits",
        digits.train,
        digits.val,
        digits.test,
        digits.group_names[:4],
        digits.class_names,
    )
    with pytest.raises(UserError, match="group ids"):
        finetune(copy.deepcopy(lin), base, fewer, FinetuneSettings(epochs=1))
    with pytest.raises(UserError, match="shape"):
        LagrangianKD(tl, 10, mu=1.0).load_state_dict({"lambdas": torch.zeros(3)})
