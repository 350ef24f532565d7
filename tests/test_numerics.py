"""Measurements stay float32 under bf16 autocast (tune_linfair.numerics.float32).

Training runs under bf16 autocast on CUDA (and on CPU with ``cpu_bf16``); diagnostics and the
cached teacher logits must not inherit it. There is no GPU here, so the same autocast
machinery is exercised on the CPU: every measurement is taken once plainly and once inside an
active ``torch.autocast("cpu", dtype=torch.bfloat16)`` context, and the two must agree to
float32 rounding. Each comparison also computes the bf16 value the guard prevents and checks
that it fails the same comparison, so the test fails if the guard is removed.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tune_linfair.data.base import Split
from tune_linfair.kd import TeacherLogits
from tune_linfair.metrics import diagnose, geometric_distance, group_gradient_norms
from tune_linfair.metrics.hessian import group_hessian_top_eigenvalues
from tune_linfair.models import create_model
from tune_linfair.models.activation import weight_parameters
from tune_linfair.train import evaluate

torch.set_num_threads(1)
RTOL = 1e-5  # float32 agreement; bf16 (8 significant bits) is off by ~1e-2 relative


def bf16():
    return torch.autocast("cpu", dtype=torch.bfloat16)


@pytest.fixture(scope="module")
def setup() -> tuple[torch.nn.Module, Split]:
    torch.manual_seed(0)
    model = create_model("resnet_mini", 3, (3, 16, 16), width=8)
    model.eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(48, 3, 16, 16, generator=gen)
    y = torch.randint(0, 3, (48,), generator=gen)
    g = (torch.arange(48) % 4 == 0).long()  # group 1 is a quarter of the samples
    return model, Split(x, y, g)


def _close(a, b, rtol: float = RTOL) -> bool:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return bool(torch.allclose(a, b, rtol=rtol, atol=rtol * float(b.abs().max())))


def test_logits_and_teacher_cache_are_float32_under_autocast(setup) -> None:
    model, split = setup
    ref = evaluate(model, split).logits
    with bf16():
        guarded = evaluate(model, split).logits
        cached = TeacherLogits(model, split, augmented=False).cache
        with torch.no_grad():
            unguarded = model(split.x).float()
    assert guarded.dtype == torch.float32 and _close(guarded, ref) and _close(cached, ref)
    assert not _close(unguarded, ref)  # what bf16 would have given fails the same check


def test_diagnostics_are_float32_under_autocast(setup) -> None:
    model, split = setup
    kwargs = dict(split_name="test", group_names=["a", "b"], stage="finetuned",
                  base_group_accuracy=[50.0, 50.0], hessian_max_samples=16, batch_size=16)  # fmt: skip
    ref = diagnose(model, split, **kwargs)
    with bf16():
        got = diagnose(model, split, **kwargs)
    keys = ("loss", "accuracy", "grad_norm", "hessian_top_eig", "mean_margin",
            "mean_geometric_distance")  # fmt: skip
    for r, s in zip(ref.group_rows, got.group_rows):
        for key in keys:
            assert math.isfinite(r[key]) and r[key] == pytest.approx(s[key], rel=1e-4), key
    margins = [row["margin"] for row in got.sample_rows]
    assert _close(margins, [row["margin"] for row in ref.sample_rows])


def test_gradients_hessian_distance_are_float32_under_autocast(setup) -> None:
    model, split = setup
    ref_grad = group_gradient_norms(model, split, 2, batch_size=16)
    ref_dist = geometric_distance(model, split, batch_size=16)
    ref_eig = group_hessian_top_eigenvalues(model, split, 2, max_samples=16)
    with bf16():
        grad = group_gradient_norms(model, split, 2, batch_size=16)
        dist = geometric_distance(model, split, batch_size=16)
        eig = group_hessian_top_eigenvalues(model, split, 2, max_samples=16)
        # the unguarded bf16 value: group 0's gradient norm with the forward under autocast
        params = [p for _, p in weight_parameters(model)]
        sel = split.g == 0
        loss = F.cross_entropy(model(split.x[sel]), split.y[sel])
        raw = math.sqrt(
            sum(float(t.double().pow(2).sum()) for t in torch.autograd.grad(loss, params))
        )
    assert _close(grad, ref_grad) and _close(dist, ref_dist)
    assert eig == pytest.approx(ref_eig, rel=1e-4)
    assert not _close(raw, ref_grad[0])  # the bf16 value fails the same check


def test_float32_switches_tf32_off_and_restores_it() -> None:
    """CUDA's TF32 (10 significant bits; cuDNN convolutions use it by default) is off inside
    and back as it was after. The flags are process state, so this runs without a GPU."""
    from tune_linfair.numerics import float32

    flags = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = [f.allow_tf32 for f in flags]
    try:
        for f in flags:
            f.allow_tf32 = True
        with float32():
            assert [f.allow_tf32 for f in flags] == [False, False]
            assert not torch.is_autocast_enabled("cpu")
        assert [f.allow_tf32 for f in flags] == [True, True]
    finally:
        for f, value in zip(flags, saved):
            f.allow_tf32 = value
