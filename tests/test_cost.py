"""tune_linfair.metrics.cost: the CryptoNite-sourced cost model against hand computation."""

from __future__ import annotations

import math

import pytest

from tune_linfair.errors import UserError
from tune_linfair.metrics.cost import (
    CRYPTONITE,
    CRYPTONITE_RESNET18,
    GC_ENCODE_S_PER_RELU,
    GC_EVAL_S_PER_RELU,
    OFFLINE_STORAGE_BYTES_PER_RELU,
    ONLINE_COMM_BYTES_PER_RELU,
    ONLINE_LATENCY_S_PER_RELU,
    CostModel,
    cost_model_for,
    load_cost_model,
    pi_cost,
)

RESNET18_RELUS = 491_520  # CIFAR ResNet-18 (README, Models)


def test_published_constants():
    assert (GC_EVAL_S_PER_RELU, GC_ENCODE_S_PER_RELU) == (18.3e-6, 3.6e-6)
    assert ONLINE_LATENCY_S_PER_RELU == 21.8e-6
    assert (ONLINE_COMM_BYTES_PER_RELU, OFFLINE_STORAGE_BYTES_PER_RELU) == (1184.0, 17072.0)
    assert (CRYPTONITE_RESNET18.linear_online_s, CRYPTONITE_RESNET18.linear_online_mb) == (
        0.43,
        5.0,
    )
    assert CRYPTONITE.linear_online_s is None and "CryptoNite" in CRYPTONITE.source


def test_pi_cost_default_output_unchanged():
    # 50,000 ReLUs: 50,000 * 21.8 us = 1.09 s; * 1,184 B = 59.2 MB; * 17,072 B = 853.6 MB
    assert pi_cost(50_000) == pytest.approx(
        {"est_online_latency_s": 1.09, "est_online_comm_mb": 59.2, "est_offline_storage_mb": 853.6}
    )
    assert pi_cost(0) == {
        "est_online_latency_s": 0.0,
        "est_online_comm_mb": 0.0,
        "est_offline_storage_mb": 0.0,
    }


def test_resnet18_with_linear_part_by_hand():
    cost = pi_cost(RESNET18_RELUS, CRYPTONITE_RESNET18, include_linear=True)
    latency = RESNET18_RELUS * 21.8e-6  # 10.715 s
    comm = RESNET18_RELUS * 1184 / 1e6  # 581.96 MB
    assert cost["est_online_latency_s"] == pytest.approx(10.715136)
    assert cost["est_online_latency_total_s"] == pytest.approx(latency + 0.43)
    assert cost["est_online_comm_total_mb"] == pytest.approx(comm + 5.0)
    assert cost["est_offline_storage_mb"] == pytest.approx(RESNET18_RELUS * 17072 / 1e6)
    unknown = pi_cost(100, include_linear=True)  # the linear part of other networks
    assert math.isnan(unknown["est_online_latency_total_s"])
    assert math.isnan(unknown["est_online_comm_total_mb"])


def test_overrides_by_keyword_and_yaml(tmp_path):
    faster = CRYPTONITE.replace(online_latency_s_per_relu=10e-6, linear_online_s=0.1)
    assert faster.estimate(1000)["est_online_latency_total_s"] == pytest.approx(0.01 + 0.1)
    assert CRYPTONITE.online_latency_s_per_relu == 21.8e-6  # frozen, not modified
    path = tmp_path / "cost.yaml"
    path.write_text("online_comm_bytes_per_relu: 2000\nlinear_online_mb: 1.5\n")
    model = load_cost_model(path)
    assert pi_cost(1000, model, include_linear=True)["est_online_comm_total_mb"] == 3.5
    assert model.online_latency_s_per_relu == 21.8e-6
    path.write_text("gc_latency: 1\n")
    with pytest.raises(UserError, match="gc_latency"):
        load_cost_model(path)
    path.write_text("- 1\n")
    with pytest.raises(UserError, match="mapping"):
        load_cost_model(path)
    with pytest.raises(UserError, match="online_comm_bytes_per_relu"):
        CostModel(online_comm_bytes_per_relu=-1.0)


def test_model_lookup_and_bad_counts():
    assert cost_model_for("resnet18", (3, 32, 32)) is CRYPTONITE_RESNET18
    assert cost_model_for("resnet18", (3, 64, 64)) is CRYPTONITE
    assert cost_model_for("mlp", (2,)) is CRYPTONITE
    for bad in (-1, 1.5, True):
        with pytest.raises(UserError):
            pi_cost(bad)
