"""The paper's own Figure 2 setting: ``synthetic`` with ``setting="class_minority"``.

Data: the groups are the classes, the minority class (~10%) inside the narrow bump of the
true boundary (the curved side). Experiment: experiments/synthetic_fig2.py on 2 seeds with
tiny settings, its JSON checked against its printed table.
"""

from __future__ import annotations

import json

import pytest
import torch

from tune_linfair.data import get_dataset
from tune_linfair.data.synthetic import (
    CLASS_MARGIN,
    CLASS_MINORITY_DEPTH,
    CLASS_MINORITY_HALF_WIDTH,
    boundary,
)
from tune_linfair.errors import UserError

torch.set_num_threads(1)

SPLITS = ("train", "val", "test")


def _all(ds, name: str) -> torch.Tensor:
    return torch.cat([getattr(ds.split(s), name) for s in SPLITS])


def _original_x(ds) -> torch.Tensor:
    norm = ds.info["normalization"]
    mean = torch.as_tensor(norm["mean"]).view(1, -1)
    std = torch.as_tensor(norm["std"]).view(1, -1)
    return _all(ds, "x") * std + mean


def test_groups_are_classes_with_a_ten_percent_minority():
    ds = get_dataset("synthetic", seed=0, setting="class_minority")
    assert ds.group_names == ("majority", "minority") and ds.class_names == ("0", "1")
    assert torch.equal(_all(ds, "g"), _all(ds, "y"))
    assert int(_all(ds, "g").sum()) == 200 and len(_all(ds, "g")) == 2000
    for s in SPLITS:  # stratified: every split keeps the 10% share
        counts = ds.split(s).group_counts(2)
        assert counts[1] / sum(counts) == pytest.approx(0.1, abs=0.01)
    assert ds.info["setting"] == "class_minority" and ds.info["noise"] == 0.1


def test_clean_minority_is_inside_the_bump_and_majority_above_it():
    ds = get_dataset("synthetic", seed=1, setting="class_minority", noise=0.0)
    x, g = _original_x(ds), _all(ds, "g")
    above = x[:, 1] - boundary(x[:, 0])
    tol = 1e-4  # standardization round trip in float32
    assert float(above[g == 0].min()) >= CLASS_MARGIN - tol
    assert float(above[g == 1].max()) <= tol
    assert float(above[g == 1].min()) >= -CLASS_MINORITY_DEPTH - tol
    assert float(x[g == 1, 0].abs().max()) <= CLASS_MINORITY_HALF_WIDTH + tol
    # about 40% of the minority sits where the bump is curved (|x1| < 0.6)
    assert 0.3 < float((x[g == 1, 0].abs() < 0.6).float().mean()) < 0.5


def test_noise_makes_the_tip_overlap_and_a_linear_rule_fails_the_minority():
    from sklearn.linear_model import LogisticRegression

    ds = get_dataset("synthetic", seed=0, setting="class_minority")
    x, g = _original_x(ds), _all(ds, "g")
    truth = (x[:, 1] < boundary(x[:, 0])).long() == g  # the true boundary as a classifier
    assert float(truth[g == 0].float().mean()) > 0.97
    assert 0.75 < float(truth[g == 1].float().mean()) < 0.97
    model = LogisticRegression().fit(ds.train.x.numpy(), ds.train.y.numpy())
    pred = torch.as_tensor(model.predict(ds.test.x.numpy()))
    acc = [float((pred == ds.test.y)[ds.test.g == a].float().mean()) for a in (0, 1)]
    assert acc[0] > 0.97 and acc[1] < 0.8, acc


def test_seeded_and_setting_checked():
    a = get_dataset("synthetic", seed=5, setting="class_minority", n_samples=300)
    b = get_dataset("synthetic", seed=5, setting="class_minority", n_samples=300)
    c = get_dataset("synthetic", seed=6, setting="class_minority", n_samples=300)
    assert all(torch.equal(a.split(s).x, b.split(s).x) for s in SPLITS)
    assert not torch.equal(a.train.x, c.train.x)
    with pytest.raises(UserError, match="class_minority"):
        get_dataset("synthetic", setting="classes")


def test_script_on_two_seeds_writes_sane_numbers(fig2, tmp_path, capsys):
    argv = ["--seeds", "2", "--epochs", "30", "--n-samples", "1000", "--width", "32"]
    argv += ["--ft-epochs", "2", "--map-widths", "4", "--map-keeps", "0.5", "--map-seeds", "2"]
    argv += ["--map-arms", "scratch", "snl_kd", "--theorem44"]
    out = fig2.main([*argv, "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    saved = json.loads((tmp_path / "synthetic_fig2.json").read_text())
    assert saved["per_seed"] == json.loads(json.dumps(out["per_seed"]))
    assert saved["table"] in printed  # the JSON holds exactly the printed table
    records = saved["per_seed"]
    assert [r["seed"] for r in records] == [0, 1]
    for r in records:
        assert r["all_relu"]["relus"] == 96
        assert all(r[arm]["relus"] == 48 for arm in ("half_linear", "snl_kd", "random_kd"))
        # global accuracy is the test-size-weighted mean of the two groups' accuracies
        test = get_dataset("synthetic", seed=r["seed"], n_samples=1000, setting="class_minority")
        n_maj, n_min = test.test.group_counts(2)
        for arm in fig2.ARMS:
            weighted = (n_maj * r[arm]["majority"] + n_min * r[arm]["minority"]) / (n_maj + n_min)
            assert r[arm]["global"] == pytest.approx(weighted), arm
    # the all-ReLU MLP beats chance (50%) on the minority class and a constant rule (90%)
    minority = [r["all_relu"]["minority"] for r in records]
    assert sum(minority) / 2 > 50.0, minority
    assert all(r["all_relu"]["global"] > 90.0 for r in records)
    # the summary is the mean of the per-seed numbers, and each row of the table shows it
    diff = [r["snl_kd"]["minority"] - r["all_relu"]["minority"] for r in records]
    assert saved["summary"]["diff_snl_kd"]["minority"][0] == pytest.approx(sum(diff) / 2)
    mean = saved["summary"]["all_relu"]["minority"]
    assert "| all ReLUs | " in saved["table"] and fig2._fmt(*mean) in saved["table"]
    assert set(saved["capacity_map"]) == {"scratch", "snl_kd"}
    (cell,) = saved["capacity_map"]["snl_kd"]
    assert (cell["width"], cell["keep"], cell["relus"]) == (4, 0.5, 6)
    assert len(saved["theorem44"]) == 8  # 2 arms x 2 mask sets x 2 groups
    assert all(row["n"] == 2 for row in saved["theorem44"])
    names = (
        "synthetic_fig2.png",
        "synthetic_fig2_capacity.png",
        "synthetic_fig2_capacity_snl_kd.png",
    )
    for name in names:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_excess_minority_loss_by_hand(fig2):
    base = {"majority": 99.0, "minority": 90.0}
    arm = {"majority": 98.5, "minority": 85.0}
    # majority lost 0.5, minority 5.0: the minority lost 4.5 points more
    assert fig2.excess_minority_loss(arm, base) == pytest.approx(4.5)


def test_mean_ci_leaves_out_diverged_runs(fig2):
    mean, half = fig2.mean_ci([1.0, float("nan"), 3.0])
    # n = 2 after the NaN is dropped: sd = sqrt(2), t_{0.975, 1} = 12.7062
    assert mean == pytest.approx(2.0) and half == pytest.approx(12.706205 * 2**0.5 / 2**0.5)
