"""The trial contract (tune_linfair/trial.py) and the one settings validator (config.py)."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from tune_linfair import results
from tune_linfair.config import ExperimentConfig, FinetuneSettings, LinearizeSettings, build
from tune_linfair.errors import UserError
from tune_linfair.models.checkpoint import load_checkpoint, load_model
from tune_linfair.spaces import load_space
from tune_linfair.stages import load_data, run_trial
from tune_linfair.train import evaluate
from tune_linfair.trial import (
    APPLIES_TO,
    MEASURED,
    OBJECTIVES,
    SEARCHES,
    TrialParams,
    accuracy_drop_points,
    applies,
    fraction,
    suggest,
    trial_row,
)

DEFAULTS = FinetuneSettings(mitigation="none", mu=0.3, epsilon=2.0, lr=1e-3)
EXP = ExperimentConfig(finetune=DEFAULTS)


@pytest.mark.parametrize(
    "mitigation,mu,epsilon",
    [("none", None, None), ("lagrangian", 0.1, None), ("accuracy_gap", None, 1.5)],
)
def test_parameters_apply_only_to_their_mitigation(mitigation, mu, epsilon) -> None:
    values = {"method": "snl", "budget": 0.1, "mitigation": mitigation, "mu": 0.1, "epsilon": 1.5}
    params = TrialParams.from_config(values, EXP)
    assert (params.mu, params.epsilon) == (mu, epsilon)
    settings = params.finetune_settings(DEFAULTS)
    assert settings.mitigation == mitigation
    # what does not apply keeps the space's default, unused by that mitigation
    assert settings.mu == (0.1 if mitigation == "lagrangian" else DEFAULTS.mu)
    assert settings.epsilon == (1.5 if mitigation == "accuracy_gap" else DEFAULTS.epsilon)
    assert set(params.as_dict()) == {
        "method",
        "budget",
        "mitigation",
        "lr",
        "seed",
        "mask_mitigation",
    } | ({"mu"} if mu is not None else set()) | ({"epsilon"} if epsilon is not None else set())


def test_defaults_come_from_the_space_and_bad_values_are_refused() -> None:
    params = TrialParams.from_config({"method": "random", "budget": 8}, EXP)
    assert (params.mitigation, params.lr, params.seed, params.mu) == ("none", 1e-3, 0, None)
    lagrangian = FinetuneSettings(mitigation="lagrangian", mu=0.3)
    lagrangian_exp = ExperimentConfig(finetune=lagrangian)
    assert TrialParams.from_config({"method": "snl", "budget": 0.5}, lagrangian_exp).mu == 0.3
    for values, message in [
        ({"budget": 0.5}, "no method"),
        ({"method": "snl", "budget": 0.5, "depth": 3}, "unknown trial parameter 'depth'"),
        ({"method": "magic", "budget": 0.5}, "unknown method 'magic'"),
        ({"method": "snl", "budget": 1.5}, "budget must be a fraction"),
        ({"method": "snl", "budget": 0.5, "lr": -1.0}, "lr must be positive"),
    ]:
        with pytest.raises(UserError, match=message):
            TrialParams.from_config(values, EXP)
    assert applies("lr", "none") and not applies("mu", "none")
    assert set(APPLIES_TO) == {"mu", "epsilon", "eta"} and applies("eta", "group_dro")
    with pytest.raises(UserError, match="unknown mask mitigation 'magic'"):
        TrialParams.from_config({"method": "snl", "budget": 0.5, "mask_mitigation": "magic"}, EXP)


def test_optuna_samples_only_what_applies() -> None:
    search = {
        "method": "snl",
        "budget": {"choices": [0.1, 0.2]},
        "mitigation": {"choices": ["none", "lagrangian", "accuracy_gap"]},
        "mu": {"low": 0.01, "high": 0.3, "log": True},
        "epsilon": {"choices": [0.0, 2.0]},
        "lr": {"low": 1e-3, "high": 1e-2, "log": True},
    }
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        constants = suggest(trial, search, "none")
        assert constants == {"method": "snl"}
        mitigation = trial.params["mitigation"]
        seen.add(mitigation)
        assert ("mu" in trial.params) == (mitigation == "lagrangian")
        assert ("epsilon" in trial.params) == (mitigation == "accuracy_gap")
        assert {"budget", "lr"} <= set(trial.params)
        study.tell(trial, 0.0)
    assert seen == {"none", "lagrangian", "accuracy_gap"}


def test_objectives_and_units_are_defined_once() -> None:
    assert [(o.name, o.mode, o.unit) for o in OBJECTIVES] == [
        ("val_accuracy", "max", "fraction"),
        ("val_worst_group_drop", "min", "percent"),
        ("relu_count", "min", "count"),
    ]
    assert SEARCHES["pareto"] == OBJECTIVES and SEARCHES["grid"] == ()
    assert [o.name for o in SEARCHES["fairness"]] == ["val_worst_group_drop"]
    assert fraction(97.5) == pytest.approx(0.975) and fraction(None) is None
    assert accuracy_drop_points(0.96, 0.93) == pytest.approx(3.0)
    # the schema states each objective's unit
    docs = {
        f.name: (f.metadata or {}).get(b"description", b"").decode() for f in results.TRIALS_SCHEMA
    }
    assert "fraction" in docs["val_accuracy"] and "%" in docs["val_worst_group_drop"]


def _measured() -> dict:
    return {
        k: (0.5 if k not in ("checkpoint_path", "base_key", "lin_key") else "x") for k in MEASURED
    }


@pytest.mark.parametrize("mitigation", ["none", "lagrangian", "accuracy_gap"])
def test_ok_and_failed_rows_have_the_schema_and_the_same_parameters(
    tmp_path: Path, mitigation: str
) -> None:
    exp = ExperimentConfig()
    params = TrialParams.from_config(
        {"method": "snl", "budget": 0.1, "mitigation": mitigation, "mu": 0.2, "epsilon": 1.0},
        exp,
    )
    ids = {"run_id": "run", "trial_id": "t1"}
    ok = trial_row(**ids, exp=exp, params=params, wall_time_s=1.0, measured=_measured())
    failed = trial_row(**ids, exp=exp, params=params, wall_time_s=1.0, error="boom")
    for row in (ok, failed):
        assert set(row) == set(results.TRIALS_COLUMNS)
        assert row["mu"] == (0.2 if mitigation == "lagrangian" else None)
        assert row["epsilon"] == (1.0 if mitigation == "accuracy_gap" else None)
        assert json.loads(row["config_json"])["params"] == params.as_dict()
    assert (ok["status"], failed["status"], failed["error"]) == ("ok", "failed", "boom")
    assert all(failed[k] is None for k in MEASURED)
    results.write_trial(tmp_path, failed, [], [])  # the failed row is a valid trials row
    with pytest.raises(ValueError, match="measured values"):
        trial_row(**ids, exp=exp, params=params, wall_time_s=1.0, measured={"relu_count": 1})
    with pytest.raises(ValueError):
        trial_row(**ids, exp=exp, params=params, wall_time_s=1.0)


@pytest.mark.parametrize(
    "section,values,message",
    [
        (LinearizeSettings, {"c0": 0}, "linearize.c0 must be positive, got 0"),
        (LinearizeSettings, {"threshold": 1.0}, "linearize.threshold must be < 1, got 1.0"),
        (LinearizeSettings, {"snl_mask_lr": "fast"}, "linearize.snl_mask_lr must be a number"),
        (LinearizeSettings, {"from_scratch": 1}, "linearize.from_scratch must be true or false"),
        (FinetuneSettings, {"mitigation": "fair"}, "unknown finetune.mitigation 'fair'"),
        (FinetuneSettings, {"mu": float("nan")}, "finetune.mu must be a finite number"),
        (FinetuneSettings, {"epochs": 2.5}, "finetune.epochs must be an integer"),
        (FinetuneSettings, {"lr": -1}, "finetune.lr must be positive, got -1"),
    ],
)
def test_every_section_is_validated_one_way(section, values, message) -> None:
    with pytest.raises(UserError, match=message) as info:
        section(**values)
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match=message):
        build(section, values, section.SECTION)


def test_settings_coerce_yaml_numbers() -> None:
    settings = build(FinetuneSettings, {"lr": 1, "mu": 0}, "finetune")
    assert isinstance(settings.lr, float) and settings.lr == 1.0
    space = load_space("default", ["diagnostics.splits=[val]", "base.milestones=[0.5]"])
    assert space.experiment.diagnostics.splits == ("val",)
    with pytest.raises(UserError, match="diagnostics.splits must include val"):
        load_space("default", ["diagnostics.splits=[test]"])
    assert space.experiment.base.milestones == (0.5,)
    with pytest.raises(UserError, match="unknown diagnostics.splits 'train'"):
        load_space("default", ["diagnostics.splits=[train]"])


@pytest.mark.slow
def test_fine_tuned_checkpoint_records_params_and_multipliers(tmp_path: Path) -> None:
    exp = load_space(
        "default",
        ["base.epochs=2", "finetune.epochs=2", "diagnostics.hessian=false"],
    ).experiment
    params = TrialParams.from_config(
        {"method": "random", "budget": 0.1, "mitigation": "lagrangian", "mu": 0.5}, exp
    )
    outcome = run_trial(
        exp, params, tmp_path / "cache", tmp_path / "trial", run_id="r", trial_id="t"
    )
    _, meta = load_checkpoint(tmp_path / "trial" / "model.pt")
    assert meta["params"] == params.as_dict()
    lambdas = meta["multipliers"]["lambdas"]
    assert len(lambdas) == 10 and all(v > 0 for v in lambdas)  # mu > 0: every group moved
    row = outcome.trial_row
    assert row["mu"] == 0.5 and row["epsilon"] is None and row["status"] == "ok"
    # the row's validation accuracy is the saved fine-tuned model's, as a fraction
    model, _ = load_model(tmp_path / "trial" / "model.pt")
    val = evaluate(model, load_data(exp, params.seed).val).accuracy() / 100
    assert row["val_accuracy"] == pytest.approx(val) and row["relu_count"] == 384
    # random masks: no SNL report, no training steps
    assert row["reached_budget"] is None and row["threshold_count"] is None
    assert row["lin_steps"] == 0 and row["lin_epochs"] == 0


def test_a_constant_mitigation_still_gets_its_knob_sampled() -> None:
    search = {
        "method": "snl",
        "budget": 0.1,
        "mitigation": "lagrangian",
        "mu": {"low": 0.01, "high": 0.3},
    }
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    constants = suggest(trial, search, default_mitigation="none")
    assert constants["mitigation"] == "lagrangian" and 0.01 <= trial.params["mu"] <= 0.3


def test_progress_reports_are_throttled(monkeypatch) -> None:
    """At most one progress report per REPORT_EVERY_S (the final objectives are separate)."""
    import types

    from tune_linfair import trainables

    sent: list[dict] = []
    monkeypatch.setattr(trainables, "tune", types.SimpleNamespace(report=sent.append))
    clock = [100.0]
    monkeypatch.setattr(trainables.time, "monotonic", lambda: clock[0])

    class Base:
        meta = {"group_accuracy": {"val": [90.0, 80.0]}}

    monkeypatch.setattr(trainables, "run_base", lambda *a, **k: (Base(), False))
    exp = ExperimentConfig()
    params = TrialParams.from_config({"method": "snl", "budget": 0.1}, exp)
    context = trainables.SweepContext({}, "run", "cache", "run", 1.0)
    report = trainables._epoch_reporter(exp, params, context)
    log = {"loss": 1.0, "val_accuracy": 85.0, "val_acc_g0": 81.0, "val_acc_g1": 72.0}
    for epoch in range(5):  # five epochs within one second: one report
        clock[0] += 0.2
        report(epoch, log, None)
    clock[0] += trainables.REPORT_EVERY_S
    report(5, log, None)
    assert [r["epoch"] for r in sent] == [0, 5]
    assert sent[0]["val_accuracy"] == pytest.approx(0.85)
    assert sent[0]["val_worst_group_drop"] == pytest.approx(10.0)  # (80 - 72) / 80
