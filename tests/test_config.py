"""Search-space parsing: validated, unknown keys refused, --set overrides."""

from __future__ import annotations

import pytest

from tune_linfair.cache import stable_hash
from tune_linfair.errors import UserError
from tune_linfair.spaces import apply_overrides, list_spaces, load_space, parse_space


def test_bundled_spaces_parse() -> None:
    names = list_spaces()
    assert "default" in names
    for name in names:
        space = load_space(name)
        assert space.trials >= 1
        if space.grid:
            assert space.grid_points()


def test_default_space_is_digits() -> None:
    space = load_space("default")
    assert space.experiment.data.name == "digits"
    assert space.experiment.model.name == "resnet_mini"
    assert {"method", "budget", "mitigation", "mu", "lr"} <= set(space.search)


def test_grid_points_are_the_cartesian_product() -> None:
    space = load_space("default", ["grid.budget=[0.5, 0.1]", "grid.seed=[0, 1, 2]"])
    points = space.grid_points()
    n = 1
    for values in space.grid.values():
        n *= len(values)
    assert len(points) == n == 2 * 3 * len(space.grid["mitigation"]) * len(space.grid["method"])
    assert {(p["budget"], p["seed"]) for p in points} == {
        (b, s) for b in (0.5, 0.1) for s in (0, 1, 2)
    }


def test_overrides_apply_and_are_validated() -> None:
    space = load_space("default", ["base.epochs=3", "finetune.epochs=2"])
    assert space.experiment.base.epochs == 3 and space.experiment.finetune.epochs == 2
    with pytest.raises(UserError, match="unknown key base.epoch"):
        load_space("default", ["base.epoch=3"])
    with pytest.raises(UserError, match="needs key=value"):
        apply_overrides({}, ["base.epochs"])
    with pytest.raises(UserError, match="base.epochs must be an integer"):
        load_space("default", ["base.epochs=three"])


@pytest.mark.parametrize(
    "raw,message",
    [
        ({"bogus": 1}, "unknown section 'bogus'"),
        ({"data": {"nam": "digits"}}, "unknown key data.nam"),
        ({"search": {"budget": {"low": 0.0, "high": 0.5}}}, "budget must be a fraction"),
        ({"search": {"budget": {"low": 0.1, "high": 1.5}}}, "budget must be a fraction"),
        ({"search": {"mu": {"low": -1.0, "high": 0.5}}}, "mu must be non-negative"),
        ({"search": {"lr": -0.1}}, "lr must be positive"),
        ({"search": {"method": {"choices": ["snl", "magic"]}}}, "unknown method 'magic'"),
        ({"search": {"mitigation": "fair"}}, "unknown mitigation 'fair'"),
        ({"search": {"depth": 3}}, "unknown search parameter 'depth'"),
        ({"grid": {"budget": 0.5}}, "grid.budget must be a non-empty list"),
        ({"trials": 0}, "trials must be a positive integer"),
        ({"base": {"lr": -1.0}}, "lr must be positive"),
        ([1, 2], "must be a YAML mapping"),
    ],
)
def test_bad_spaces_are_one_line_user_errors(raw, message: str) -> None:
    with pytest.raises(UserError, match=message) as info:
        parse_space(raw)
    assert "\n" not in str(info.value)


def test_unknown_space_and_malformed_yaml(tmp_path) -> None:
    with pytest.raises(UserError, match="unknown search space 'nope'.*default"):
        load_space("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {name: digits\nmodel: [")
    with pytest.raises(UserError, match="malformed YAML"):
        load_space(str(bad))


def test_stable_hash_is_order_independent() -> None:
    assert stable_hash({"a": 1, "b": 2}) == stable_hash({"b": 2, "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})
