"""Linearization: exact budgets (SNL, random), DeepReDuce configurations, accuracy checks.

Real training on scikit-learn digits with ``resnet_mini`` (3,840 ReLUs), kept to a few
seconds per run: SNL uses faster-than-default mask settings (``FAST``; the published defaults
need a few thousand steps on digits), which changes the speed, not the algorithm.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from tune_linfair.data import get_dataset
from tune_linfair.errors import UserError
from tune_linfair.kd import KDLoss, TeacherLogits
from tune_linfair.linearize import (
    METHODS,
    LinearizeSettings,
    apply_deepreduce,
    deepreduce_configs,
    linearize,
    random_linearize,
    resolve_budget,
    select_config,
    select_entries,
)
from tune_linfair.linearize.snl import SNLLoss, SNLSchedule
from tune_linfair.models import (
    LinearizableReLU,
    count_relus,
    create_model,
    linearizable_layers,
    total_relus,
    weight_parameters,
)
from tune_linfair.train import Batch, evaluate, fit, seed_everything

torch.set_num_threads(1)

FAST = LinearizeSettings(snl_mask_lr=1e-2, c0=1e-2, batch_size=64, max_epochs=60)
"""SNL settings for the tests: masks at lr 1e-2 (Adam moves a mask by about its lr per step,
so 1 -> 0.01 takes ~100 steps instead of ~1,000) and c0 = 1e-2 (reached by growth after a
few hundred steps otherwise). A mask lr above the threshold (1e-2) makes masks oscillate
around 0 across the threshold, so it stays at 1e-2."""
MAX_STEPS = 500  # observed 100-250 steps for budgets 50%..5% on digits


# -- fixtures ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits():
    return get_dataset("digits", seed=0)


@pytest.fixture(scope="module")
def base(digits):
    """resnet_mini trained with the shared loop: SGD 0.1, momentum 0.9, wd 5e-4, 12 epochs."""
    gen = seed_everything(0)
    model = create_model("resnet_mini", digits.num_classes, digits.input_shape)
    params = [p for _, p in weight_parameters(model)]
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)
    epochs = 12
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [epochs // 2, 3 * epochs // 4], 0.1)
    fit(
        model,
        digits.train,
        digits.val,
        lambda m, b: F.cross_entropy(m(b.x), b.y),
        opt,
        epochs=epochs,
        batch_size=64,
        generator=gen,
        scheduler=sched,
    )
    model.eval()
    return model


@pytest.fixture(scope="module")
def base_accuracy(base, digits):
    return evaluate(base, digits.test).accuracy()


@pytest.fixture(scope="module")
def base_state(base):
    return {k: v.clone() for k, v in base.state_dict().items()}


@pytest.fixture(scope="module")
def run_cache():
    return {}


def run(cache, method, base, digits, budget, seed=0, settings=FAST):
    """Linearize a copy of ``base`` (cached per method, budget and seed)."""
    key = (method, budget, seed, settings)
    if key not in cache:
        student = copy.deepcopy(base)
        log = linearize(method, student, base, digits, budget, settings=settings, seed=seed)
        cache[key] = (student, log)
    return cache[key]


def kd_finetune(student, teacher, digits, seed=0, epochs=5, lr=1e-2):
    """A short KD fine-tune (CE + T^2 KL, SGD, cosine) with the shared loop; test accuracy."""
    model = copy.deepcopy(student)
    gen = seed_everything(seed)
    params = [p.requires_grad_(True) for _, p in weight_parameters(model)]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    loss = KDLoss(TeacherLogits(teacher, digits.train, augmented=False))
    fit(
        model,
        digits.train,
        digits.val,
        loss,
        opt,
        epochs=epochs,
        batch_size=64,
        generator=gen,
        scheduler=sched,
    )
    return evaluate(model, digits.test).accuracy()


def assert_binary_frozen(model):
    for name, layer in linearizable_layers(model):
        assert layer.mode == "frozen", name
        assert not layer.mask.requires_grad, name
        assert bool(((layer.mask == 0) | (layer.mask == 1)).all()), name


# -- budgets ----------------------------------------------------------------------------
def test_resolve_budget_fractions_and_counts():
    assert resolve_budget(0.5, 3840) == 1920
    assert resolve_budget(0.05, 3840) == 192
    assert resolve_budget(1.0, 3840) == 3840
    assert resolve_budget(0.5, 5) == 3  # 2.5 rounds half up
    assert resolve_budget(1e-6, 3840) == 1  # at least one ReLU
    assert resolve_budget(1, 3840) == 1  # an int is a count, not 100%
    assert resolve_budget(3840, 3840) == 3840


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, -3, 1.5, 3841, float("nan"), True, "0.5"])
def test_resolve_budget_rejects_bad_values(bad):
    with pytest.raises(UserError) as err:
        resolve_budget(bad, 3840)
    message = str(err.value)
    assert "3840" in message and str(bad) in message and "\n" not in message


def test_select_entries_ties_and_channel_weights():
    # ties: earlier entries first, deterministic
    keep = select_entries(torch.ones(6), torch.ones(6, dtype=torch.long), 4)
    assert keep.tolist() == [True, True, True, True, False, False]
    # ranking by score
    keep = select_entries(torch.tensor([0.1, 0.9, 0.5, 0.7]), torch.ones(4, dtype=torch.long), 2)
    assert keep.tolist() == [False, True, False, True]
    # channel weights: never above the budget, short of it by less than any left-out weight
    gen = torch.Generator().manual_seed(0)
    weights = torch.tensor([64] * 20 + [16] * 20 + [4] * 20 + [1] * 10)
    for budget in (1, 63, 100, 555, 1000, 1700):
        scores = torch.rand(len(weights), generator=gen)
        keep = select_entries(scores, weights, budget)
        count = int(weights[keep].sum())
        assert count <= budget
        if (~keep).any():
            assert budget - count < int(weights[~keep].min())


# -- SNL ----------------------------------------------------------------------------------
def test_base_model_accuracy(base_accuracy):
    print(f"\nbase resnet_mini digits test accuracy: {base_accuracy:.2f}%")
    assert base_accuracy > 90.0


@pytest.mark.parametrize("fraction", [0.5, 0.2, 0.1, 0.05])
def test_snl_reaches_exact_budget(run_cache, base, base_state, digits, fraction):
    student, log = run(run_cache, "snl", base, digits, fraction)
    budget = resolve_budget(fraction, total_relus(base))
    print(
        f"\nsnl {fraction:.0%}: budget {budget}, steps {log['steps']}, checks "
        f"{len(log['checks'])}, count>thr at stop {log['threshold_count']}, "
        f"c_final {log['c_final']:.3g}, {log['wall_time_s']:.1f}s"
    )
    assert log["budget_count"] == budget
    assert count_relus(student) == budget == log["relu_count"]
    assert log["reached_budget"] is True  # the penalty got there, not max_epochs
    assert log["threshold_count"] <= budget
    assert 0 < log["steps"] <= MAX_STEPS
    assert_binary_frozen(student)
    # the log: (step, count, c) at each check; steps increase, c never decreases
    steps = [s for s, _, _ in log["checks"]]
    cs = [c for _, _, c in log["checks"]]
    assert steps == sorted(steps) and steps[0] == 0 and steps[-1] == log["steps"]
    assert all(b >= a for a, b in zip(cs, cs[1:])) and cs[0] == FAST.c0
    assert log["checks"][-1][1] <= budget < log["checks"][-2][1]
    # the teacher is untouched: same weights, eval mode, gradients enabled as before
    for key, value in base.state_dict().items():
        assert torch.equal(value, base_state[key]), key
    assert all(p.requires_grad for _, p in weight_parameters(base))


def test_snl_schedule_grows_c_only_without_new_low():
    layer = LinearizableReLU()
    model = torch.nn.Sequential(layer)
    model(torch.zeros(1, 10))
    layer.set_trainable()
    loss = SNLLoss(kd=None, c=1.0)  # the schedule only reads and writes ``c``
    sched = SNLSchedule(
        model,
        loss,
        budget=3,
        threshold=0.01,
        check_every=2,
        c_every=4,
        warmup_checks=1,
        c_growth=2.0,
        lowest=10,
    )

    def set_count(n):
        layer.mask.data = torch.tensor([1.0] * n + [0.0] * (10 - n))

    set_count(10)
    assert sched(1) is False and sched.checks == []  # neither a check nor an update
    assert sched(2) is False and loss.c == 1.0  # a check only
    assert sched(4) is False and loss.c == 1.0  # update 1: no new low, still warm-up
    assert sched(8) is False and loss.c == 2.0  # update 2: no new low -> c *= 2
    set_count(6)
    assert sched(12) is False and loss.c == 2.0 and sched.lowest == 6  # new low
    assert sched(16) is False and loss.c == 4.0
    set_count(3)
    assert sched(18) is True  # check (not an update) at the budget stops training
    assert [(s, n) for s, n, _ in sched.checks] == [
        (2, 10),
        (4, 10),
        (8, 10),
        (12, 6),
        (16, 6),
        (18, 3),
    ]


def test_snl_channel_granularity(base, digits):
    student = create_model(
        "resnet_mini", digits.num_classes, digits.input_shape, granularity="channel"
    )
    weights = {k: v for k, v in base.state_dict().items() if not k.endswith(".mask")}
    student.load_state_dict(weights, strict=False)
    # one mask per channel collects the distillation gradient of H*W positions, so the
    # penalty must be larger to move it: c0 = 0.1 (about 150 steps instead of 650 at 1e-2)
    settings = dataclasses.replace(FAST, c0=0.1)
    log = linearize("snl", student, base, digits, 0.1, settings=settings, seed=0)
    budget = resolve_budget(0.1, total_relus(student))
    per_channel = max(layer.relus_per_entry() for _, layer in linearizable_layers(student))
    print(f"\nsnl channel 10%: budget {budget}, count {log['relu_count']}, steps {log['steps']}")
    assert log["granularity"] == "channel"
    assert count_relus(student) == log["relu_count"]
    assert budget - per_channel < log["relu_count"] <= budget
    assert log["steps"] <= MAX_STEPS
    assert_binary_frozen(student)
    for _, layer in linearizable_layers(student):
        assert layer.mask.shape[1:] == (1, 1)


# -- random -----------------------------------------------------------------------------
def test_random_exact_and_seeded(base):
    masks = {}
    for seed in (0, 0, 1):
        model = copy.deepcopy(base)
        assert random_linearize(model, 500, seed=seed) == 500
        assert count_relus(model) == 500
        assert_binary_frozen(model)
        masks.setdefault(seed, []).append(
            torch.cat([m.mask.flatten() for _, m in linearizable_layers(model)])
        )
    assert torch.equal(masks[0][0], masks[0][1])
    assert not torch.equal(masks[0][0], masks[1][0])
    # uniform placement: every layer keeps roughly its share (500/3840 = 13%)
    model = copy.deepcopy(base)
    random_linearize(model, 1920, seed=3)
    for name, layer in linearizable_layers(model):
        share = layer.count() / layer.total()
        assert 0.3 < share < 0.7, (name, share)


def test_random_channel_granularity(digits):
    model = create_model(
        "resnet_mini", digits.num_classes, digits.input_shape, granularity="channel"
    )
    budget = resolve_budget(0.2, total_relus(model))
    count = random_linearize(model, budget, seed=0)
    per_channel = max(layer.relus_per_entry() for _, layer in linearizable_layers(model))
    assert count == count_relus(model)
    assert budget - per_channel < count <= budget


# -- DeepReDuce -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def resnet18():
    return create_model("resnet18", 10, (3, 32, 32))


def test_deepreduce_resnet18_counts(resnet18):
    configs = {(c.culled, c.thinned): c.relu_count for c in deepreduce_configs(resnet18)}
    assert len(configs) == 15 * 2  # culled subsets (all but the full set) x thinning
    assert configs[((), False)] == 491_520
    expected = {
        (1,): 229_376,
        (1, 2): 98_304,
        (1, 4): 196_608,
        (1, 2, 3): 32_768,
        (1, 2, 4): 65_536,
    }
    for culled, count in expected.items():
        assert configs[(culled, False)] == count
    for (culled, thinned), count in configs.items():
        if thinned:
            assert count * 2 == configs[(culled, False)]
    assert ((1, 2, 3, 4), False) not in configs


def test_deepreduce_select_config(resnet18):
    # ties: cull 1+2 (98,304) and cull 1+4 thinned (98,304): no thinning wins
    chosen = select_config(resnet18, 100_000)
    assert (chosen.culled, chosen.thinned, chosen.relu_count) == ((1, 2), False, 98_304)
    assert select_config(resnet18, 229_376).culled == (1,)
    half = select_config(resnet18, 0.5)  # 245,760: thinning alone fits exactly
    assert (half.culled, half.thinned, half.relu_count) == ((), True, 245_760)
    assert select_config(resnet18, 1.0).name == "full"
    counts = [c.relu_count for c in deepreduce_configs(resnet18)]
    for budget in (20_000, 70_000, 150_000, 300_000, 480_000):
        assert select_config(resnet18, budget).relu_count == max(c for c in counts if c <= budget)
    with pytest.raises(UserError, match="16384"):
        select_config(resnet18, 16_383)  # below the smallest: cull 1+2+3, thinned = 16,384


def test_deepreduce_rejects_unstaged_models():
    with pytest.raises(UserError, match="deepreduce needs a staged model"):
        deepreduce_configs(create_model("mlp", 2, (2,)))


def test_apply_deepreduce_masks(digits):
    model = create_model("resnet_mini", digits.num_classes, digits.input_shape)
    config = next(c for c in deepreduce_configs(model) if c.culled == (1, 3) and c.thinned)
    assert apply_deepreduce(model, config) == config.relu_count == count_relus(model)
    assert config.relu_count == (1024 + 256) // 2
    assert_binary_frozen(model)
    for _, layer in linearizable_layers(model):
        kept = layer.stage not in (1, 3) and layer.role == "inner"
        assert bool((layer.mask == (1.0 if kept else 0.0)).all())


def test_deepreduce_linearize_digits(base, digits, base_state):
    settings = LinearizeSettings(deepreduce_epochs=0, batch_size=64)
    student = copy.deepcopy(base)
    log = linearize("deepreduce", student, base, digits, 0.4, settings=settings)
    # 0.4 * 3840 = 1536 = culling stages 1 and 4 (1024 + 512 left), the largest that fits
    assert log["deepreduce"]["culled"] == [1, 4] and not log["deepreduce"]["thinned"]
    assert log["deepreduce"]["relu_count"] == log["relu_count"] == count_relus(student) == 1536
    assert log["relu_count"] == max(
        c.relu_count for c in deepreduce_configs(base) if c.relu_count <= 1536
    )
    assert_binary_frozen(student)
    # by default the student keeps the base weights; from_scratch draws new ones
    for key, value in student.state_dict().items():
        if not key.endswith(".mask"):
            assert torch.equal(value, base_state[key]), key
    scratch = copy.deepcopy(base)
    linearize(
        "deepreduce",
        scratch,
        base,
        digits,
        0.4,
        settings=dataclasses.replace(settings, from_scratch=True),
    )
    assert not torch.equal(scratch.stem[0].weight, base_state["stem.0.weight"])
    # with distillation epochs: trained, still frozen masks, sensible accuracy
    trained = copy.deepcopy(base)
    settings2 = LinearizeSettings(deepreduce_epochs=3, batch_size=64, deepreduce_lr=1e-2)
    log2 = linearize("deepreduce", trained, base, digits, 0.4, settings=settings2)
    acc = evaluate(trained, digits.test).accuracy()
    print(
        f"\ndeepreduce {log2['deepreduce']['name']} ({log2['relu_count']}) 3 KD epochs: {acc:.1f}%"
    )
    assert log2["steps"] == 3 * math.ceil(len(digits.train) / 64)
    assert count_relus(trained) == log2["relu_count"]
    assert acc > 80.0


# -- entry point and settings -------------------------------------------------------------------
def test_linearize_rejects_bad_input(base, digits):
    with pytest.raises(UserError, match="choose one of: deepreduce, random, snl"):
        linearize("magic", copy.deepcopy(base), base, digits, 0.5)
    with pytest.raises(UserError, match="3841"):
        linearize("random", copy.deepcopy(base), base, digits, 3841)
    with pytest.raises(ValueError):
        linearize("random", base, base, digits, 0.5)
    assert METHODS == ("snl", "deepreduce", "random")


@pytest.mark.parametrize(
    "changes",
    [
        {"snl_lr": -1e-3},
        {"snl_lr": 0.0},
        {"c0": -1e-5},
        {"c_growth": 0.9},
        {"threshold": -0.1},
        {"check_every": 0},
        {"warmup_checks": -1},
        {"max_epochs": -5},
        {"batch_size": 0},
        {"deepreduce_lambda": 1.5},
        {"deepreduce_epochs": -1},
        {"deepreduce_weight_decay": -1e-4},
        {"snl_mask_lr": -1.0},
        {"c_every": 0},
    ],
)
def test_settings_validation(changes):
    key, value = next(iter(changes.items()))
    with pytest.raises(UserError, match=key):
        LinearizeSettings(**changes)


def test_settings_from_a_mapping():
    from tune_linfair.config import build

    assert build(LinearizeSettings, {"c0": 1e-4}, "linearize").c0 == 1e-4
    with pytest.raises(UserError, match="unknown key linearize.c_zero; valid keys: .*c0"):
        build(LinearizeSettings, {"c_zero": 1e-4}, "linearize")
    defaults = LinearizeSettings()
    assert (defaults.snl_lr, defaults.temperature, defaults.c0, defaults.c_growth) == (
        1e-3,
        4.0,
        1e-5,
        1.1,
    )
    assert defaults.threshold == 1e-2


# -- accuracy -------------------------------------------------------------------------------
def test_snl_20pct_keeps_accuracy_after_finetune(run_cache, base, base_accuracy, digits):
    student, log = run(run_cache, "snl", base, digits, 0.2)
    before = evaluate(student, digits.test).accuracy()
    after = kd_finetune(student, base, digits)
    print(f"\nsnl 20%: base {base_accuracy:.1f}, linearized {before:.1f}, fine-tuned {after:.1f}")
    assert after >= base_accuracy - 5.0


def test_snl_beats_random_at_small_budget(run_cache, base, digits):
    seeds = (0, 1)
    rows = []
    for seed in seeds:
        snl_student, _ = run(run_cache, "snl", base, digits, 0.05, seed=seed)
        rnd_student, _ = run(run_cache, "random", base, digits, 0.05, seed=seed)
        rows.append(
            (
                evaluate(snl_student, digits.test).accuracy(),
                kd_finetune(snl_student, base, digits, seed=seed),
                evaluate(rnd_student, digits.test).accuracy(),
                kd_finetune(rnd_student, base, digits, seed=seed),
            )
        )
    mean = [sum(r[i] for r in rows) / len(rows) for i in range(4)]
    print(
        f"\n5% budget (192 ReLUs), mean over seeds {seeds}: SNL {mean[0]:.1f} -> "
        f"{mean[1]:.1f} fine-tuned; random {mean[2]:.1f} -> {mean[3]:.1f}; per seed {rows}"
    )
    assert mean[0] > mean[2] + 5.0  # placement alone, before any fine-tuning
    assert all(r[1] > r[3] for r in rows)  # and still after the same fine-tuning, per seed


# -- fairness-aware SNL: a group term in the mask-training loss ------------------------------
def test_mask_training_loss_and_gradient_with_fixed_multipliers_by_hand():
    """SNL's loss with the lagrangian group term, multipliers fixed, against the formula
    written out here: L = L(B) + sum_a lambda_a |L(B) - L(B_a)| + c sum|m|, L the mean of
    CE + T^2 KL. Its gradient reaches the masks and the weights, and the group term changes
    both (compared with lambda = 0)."""
    from tune_linfair.mitigation import LagrangianKD

    torch.manual_seed(0)
    act = LinearizableReLU()
    student = torch.nn.Sequential(torch.nn.Linear(3, 4), act, torch.nn.Linear(4, 3)).double()
    teacher = torch.nn.Sequential(torch.nn.Linear(3, 3)).double()
    x = torch.randn(6, 3, dtype=torch.float64)
    student(x)  # materializes the (4,) mask
    act.set_trainable()
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    g = torch.tensor([0, 0, 0, 0, 1, 1])
    batch = Batch(x=x, y=y, g=g, index=torch.arange(6))
    with torch.no_grad():
        act.mask.copy_(torch.tensor([1.0, 0.5, 0.2, 0.9]))
    lambdas, c, T = torch.tensor([0.7, 1.9], dtype=torch.float64), 0.03, 4.0

    class Teacher:
        def __call__(self, b):
            return teacher(b.x)

    def library(lam):
        kd = LagrangianKD(Teacher(), num_groups=2, mu=0.0, temperature=T)
        kd.load_state_dict({"lambdas": lam})
        return SNLLoss(kd, c)(student, batch)

    def by_hand(lam):
        z_s, z_t = student(x), teacher(x).detach()
        p_t = torch.softmax(z_t / T, 1)
        kl = (p_t * (p_t.log() - torch.log_softmax(z_s / T, 1))).sum(1) * T**2
        per = -torch.log_softmax(z_s, 1)[torch.arange(6), y] + kl
        overall = per.mean()
        penalty = sum(lam[a] * (overall - per[g == a].mean()).abs() for a in (0, 1))
        return overall + penalty + c * act.mask.abs().sum()

    params = [act.mask, student[0].weight, student[2].weight]
    got, expect = library(lambdas), by_hand(lambdas)
    # the library computes the distillation loss in float32 (kd_per_sample), the hand
    # formula in float64
    assert got.item() == pytest.approx(expect.item(), rel=1e-5)
    grads = torch.autograd.grad(got, params)
    for a, b in zip(grads, torch.autograd.grad(by_hand(lambdas), params)):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
    plain = torch.autograd.grad(library(torch.zeros(2, dtype=torch.float64)), params)
    for with_term, without in zip(grads, plain):
        assert not torch.allclose(with_term, without)  # the group term reaches masks and weights


@pytest.mark.parametrize("mitigation", ["lagrangian", "accuracy_gap"])
def test_exact_budget_holds_with_the_mask_mitigation(run_cache, base, digits, mitigation):
    settings = dataclasses.replace(FAST, mask_mitigation=mitigation, mask_mu=0.5, mask_dual_lr=0.05)
    student, log = run(run_cache, "snl", base, digits, 0.1, settings=settings)
    assert_binary_frozen(student)
    assert count_relus(student) == log["relu_count"] == 384
    lambdas = log["mask_multipliers"]["lambdas"]
    assert len(lambdas) == 10 and max(lambdas) > 0  # the multipliers moved during mask training
    plain, _ = run(run_cache, "snl", base, digits, 0.1)
    masks = lambda m: torch.cat([layer.mask.flatten() for _, layer in linearizable_layers(m)])  # noqa: E731
    assert not torch.equal(masks(student), masks(plain))  # a different choice of ReLUs


def test_cache_keys_differ_by_mask_mitigation():
    from tune_linfair.cache import linearized_key

    keys = {
        linearized_key("base0", dataclasses.replace(FAST, mask_mitigation=m), "snl", 0.1, 0)
        for m in ("none", "lagrangian", "accuracy_gap")
    }
    assert len(keys) == 3
    assert linearized_key("base0", FAST, "snl", 0.1, 0) == linearized_key(
        "base0", dataclasses.replace(FAST), "snl", 0.1, 0
    )


def test_snl_in_cpu_bf16_keeps_exact_budgets_and_float32_masks(run_cache, base, digits):
    settings = dataclasses.replace(FAST, snl_cpu_bf16=True)
    student, log = run(run_cache, "snl", base, digits, 0.1, settings=settings)
    assert_binary_frozen(student)
    assert count_relus(student) == log["relu_count"] == 384
    assert all(layer.mask.dtype == torch.float32 for _, layer in linearizable_layers(student))
    assert all(p.dtype == torch.float32 for p in student.parameters())  # autocast, not a cast
    assert evaluate(student, digits.test).accuracy() > 50.0
