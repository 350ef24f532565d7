"""experiments/synthetic_fig2.py (paper Figure 2) on a few seeds, ``cluster`` setting.

Only what holds on every seed tried is asserted: the all-ReLU MLP is far above chance and
the minority (near the bump's tip) is harder than the majority. The size of the extra drop
from linearization is the experiment's question, not a property to test.
"""

from __future__ import annotations

import json

import pytest
import torch

from tune_linfair.data import get_dataset
from tune_linfair.models import count_relus, create_model, total_relus
from tune_linfair.plotdata import load_figure_data

torch.set_num_threads(1)


def test_all_relu_far_above_chance_and_minority_harder(fig2):
    majority, minority = [], []
    for seed in (0, 1, 2):
        data = get_dataset("synthetic", seed=seed)
        model, _ = fig2.train_mlp(data, seed, 1.0, epochs=40, lr=1e-2, batch_size=64, width=64)
        m = fig2.test_metrics(model, data)
        assert m["global"] > 95.0, m  # chance is ~52% (the larger class)
        majority.append(m["majority"])
        minority.append(m["minority"])
    assert sum(minority) / 3 < sum(majority) / 3 - 2.0, (majority, minority)


def test_half_linear_arm_keeps_exactly_half_and_main_writes_outputs(fig2, tmp_path):
    data = get_dataset("synthetic", seed=0, n_samples=400)
    model, _ = fig2.train_mlp(data, 0, 0.5, epochs=1, lr=1e-2, batch_size=64, width=64)
    assert total_relus(model) == 192 and count_relus(model) == 96
    fresh = create_model("mlp", 2, (2,), width=64)
    assert count_relus(fresh) == 192  # the all-ReLU arm's starting point

    argv = ["--seeds", "2", "--epochs", "2", "--ft-epochs", "1", "--n-samples", "400"]
    argv += ["--setting", "cluster", "--map-seeds", "0", "--out", str(tmp_path)]
    out = fig2.main(argv)
    saved = json.loads((tmp_path / "synthetic_fig2.json").read_text())
    assert saved["per_seed"] == json.loads(json.dumps(out["per_seed"]))
    assert [r["seed"] for r in saved["per_seed"]] == [0, 1]
    for r in saved["per_seed"]:
        assert r["all_relu"]["relus"] == 192 and r["half_linear"]["relus"] == 96
        assert r["snl_kd"]["relus"] == 96 and r["random_kd"]["relus"] == 96
    png = tmp_path / "synthetic_fig2.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size < 150_000
    # what the regions plot draws: per arm its ReLUs and test accuracies (seed 0), the
    # training points of both groups and the true boundary
    drawn = load_figure_data(png)
    record = saved["per_seed"][0]
    n_train = len(get_dataset("synthetic", seed=0, n_samples=400).train)
    for ax, arm in zip(drawn["axes"], fig2.ARMS):
        r = record[arm]
        assert ax["title"].startswith(f"{arm} ({r['relus']}/{r['relus_total']} ReLUs)")
        assert f"global {r['global']:.1f}%, majority {r['majority']:.1f}%" in ax["title"]
        points = [s for s in ax["series"] if s["kind"] == "scatter"]
        assert len(points) == 2 and sum(len(s["x"]) for s in points) == n_train
        (line,) = [s for s in ax["series"] if s["kind"] == "line"]
        x = torch.tensor(line["x"])
        assert line["y"] == pytest.approx(fig2.boundary(x).tolist(), abs=1e-6)
    assert "| all ReLUs |" in saved["table"] and "scratch, 50% linear" in saved["table"]
    assert saved["capacity_map"] == {} and saved["config"]["setting"] == "cluster"


def test_mean_ci_matches_t_interval(fig2):
    mean, half = fig2.mean_ci([1.0, 2.0, 3.0])
    # sd = 1, n = 3, t_{0.975, 2} = 4.302653
    assert mean == pytest.approx(2.0) and half == pytest.approx(4.302653 / 3**0.5, rel=1e-6)
