"""Models, linearizable activations and ReLU accounting."""

from __future__ import annotations

import pytest
import torch

from tune_linfair.errors import UserError
from tune_linfair.models import (
    LinearizableReLU,
    count_relus,
    create_model,
    linearizable_layers,
    list_models,
    load_checkpoint,
    save_checkpoint,
    set_all_masks,
    total_relus,
)
from tune_linfair.models.checkpoint import load_model

SHAPES = {
    "mlp": (2,),
    "resnet_mini": (1, 8, 8),
    "resnet18": (3, 32, 32),
    "resnet34": (3, 32, 32),
    "vgg19": (3, 32, 32),
    "wrn22_8": (3, 32, 32),
}


@pytest.mark.parametrize(
    "name,total",
    [("resnet18", 491_520), ("resnet34", 901_120), ("wrn22_8", 1_359_872), ("vgg19", 303_104)],
)
def test_paper_relu_totals_on_32x32(name: str, total: int) -> None:
    model = create_model(name, 10, (3, 32, 32))
    assert total_relus(model) == total
    assert count_relus(model) == total


def test_resnet18_stage_totals() -> None:
    model = create_model("resnet18", 10, (3, 32, 32))
    per_stage: dict[int, int] = {}
    for _, layer in linearizable_layers(model):
        per_stage[layer.stage] = per_stage.get(layer.stage, 0) + layer.total()
    assert per_stage == {1: 262_144, 2: 131_072, 3: 65_536, 4: 32_768}


def test_small_model_totals() -> None:
    assert total_relus(create_model("resnet_mini", 10, (1, 8, 8))) == 3_840
    assert total_relus(create_model("mlp", 2, (2,))) == 192


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_registry_models_train_and_are_finite(name: str) -> None:
    assert name in list_models()
    width = {"mlp": 8, "resnet_mini": 4, "wrn22_8": 2}.get(name, 4)
    model = create_model(name, 3, SHAPES[name], width=width)
    x = torch.randn(4, *SHAPES[name])
    # half the ReLUs linearized at random: gradients must still reach every weight
    for _, layer in linearizable_layers(model):
        layer.freeze((torch.rand_like(layer.mask) > 0.5).float())
    out = model(x)
    assert out.shape == (4, 3) and torch.isfinite(out).all()
    out.sum().backward()
    grads = [p.grad for n, p in model.named_parameters() if not n.endswith(".mask")]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_activation_modes() -> None:
    act = LinearizableReLU()
    x = torch.randn(5, 3, 4, 4)
    assert torch.equal(act(x), torch.relu(x))  # materialized, all ones: a ReLU
    assert act.mask.shape == (3, 4, 4) and not act.mask.requires_grad
    mask = (torch.rand(3, 4, 4) > 0.5).float()
    act.freeze(mask)
    expected = mask * torch.relu(x) + (1 - mask) * x
    assert torch.allclose(act(x), expected)
    assert act.count() == int(mask.sum())
    act.set_trainable()
    assert act.mask.requires_grad
    with torch.no_grad():
        act.mask.fill_(0.25)
    y = act(x)
    assert torch.allclose(y, 0.25 * torch.relu(x) + 0.75 * x)
    y.sum().backward()
    assert act.mask.grad is not None and act.mask.grad.abs().sum() > 0
    assert act.count(threshold=1e-2) == 48 and act.count() == 0


def test_channel_granularity_counts_h_times_w() -> None:
    model = create_model("resnet_mini", 10, (1, 8, 8), granularity="channel")
    layer = next(layer for _, layer in linearizable_layers(model))
    assert layer.mask.shape == (16, 1, 1)
    keep = torch.zeros_like(layer.mask)
    keep[:3] = 1
    layer.freeze(keep)
    assert layer.count() == 3 * 64
    assert total_relus(model) == 3_840


def test_all_linear_model_is_affine() -> None:
    torch.manual_seed(0)
    model = create_model("resnet_mini", 10, (1, 8, 8)).eval()
    set_all_masks(model, 0.0)
    assert count_relus(model) == 0
    a, b = torch.randn(3, 1, 8, 8), torch.randn(3, 1, 8, 8)
    f = model
    # affine: f(t a + (1 - t) b) = t f(a) + (1 - t) f(b)
    for t in (0.3, 2.0, -1.5):
        lhs = f(t * a + (1 - t) * b)
        rhs = t * f(a) + (1 - t) * f(b)
        assert torch.allclose(lhs, rhs, atol=1e-4)
    set_all_masks(model, 1.0)
    lhs, rhs = f(0.5 * a + 0.5 * b), 0.5 * f(a) + 0.5 * f(b)
    assert not torch.allclose(lhs, rhs, atol=1e-4)  # with ReLUs it is not


def test_checkpoint_round_trip_is_exact(tmp_path) -> None:
    model = create_model("resnet_mini", 10, (1, 8, 8))
    for _, layer in linearizable_layers(model):
        layer.freeze((torch.rand_like(layer.mask) > 0.7).float())
    model.eval()
    x = torch.randn(7, 1, 8, 8)
    spec = {
        "name": "resnet_mini",
        "num_classes": 10,
        "input_shape": [1, 8, 8],
        "width": None,
        "granularity": "pixel",
    }
    path = save_checkpoint(tmp_path / "m.pt", model, {"model": spec})
    again, meta = load_model(path)
    again.eval()
    assert meta["model"] == spec
    assert torch.equal(model(x), again(x))
    assert count_relus(again) == count_relus(model)


def test_corrupt_checkpoint_is_a_user_error(tmp_path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="corrupt or foreign checkpoint"):
        load_checkpoint(bad)
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_bad_model_input() -> None:
    with pytest.raises(UserError, match="unknown model 'resnet99'.*resnet18"):
        create_model("resnet99", 10, (3, 32, 32))
    with pytest.raises(UserError, match="cannot take inputs of shape"):
        create_model("vgg19", 10, (1, 8, 8))
    with pytest.raises(UserError, match="cannot take inputs of shape"):
        create_model("resnet18", 10, (2,))
