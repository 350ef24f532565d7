"""Repeats: every configuration on several seeds, aggregated with intervals.

The bookkeeping (SeedGroups), the searcher that tells Optuna the mean over seeds (a real
OptunaSearch driven through the calls Tune makes, no Ray cluster needed), the grid's seed
axis, and the configs table checked against statistics computed here by hand.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from scipy import stats

from tune_linfair import aggregate, phases
from tune_linfair.aggregate import SeedGroups, configs_table, t_interval
from tune_linfair.errors import UserError
from tune_linfair.spaces import load_space


def test_seed_groups_hand_out_seeds_and_tell_only_complete_means() -> None:
    groups = SeedGroups([3, 4])
    assert groups.assign("t1") is None  # nothing waiting: ask Optuna
    assert groups.open("t1", {"lr": 0.1, "seed": 0}) == {"lr": 0.1, "seed": 3}
    assert groups.assign("t2") == {"lr": 0.1, "seed": 4}
    assert groups.assign("t3") is None
    assert groups.open("t3", {"lr": 0.2}) == {"lr": 0.2, "seed": 3}
    assert groups.complete("t1", {"acc": 0.9, "drop": 4.0, "final": True}) is None
    group, mean, members = groups.complete("t2", {"acc": 0.7, "drop": 8.0, "final": True})
    assert group == "t1" and members == ["t1", "t2"]
    assert mean == pytest.approx({"acc": 0.8, "drop": 6.0})  # bools are not averaged
    assert groups.complete("t2", {"acc": 0.0}) is None  # a repeated report is ignored
    # one failed seed fails the configuration: no partial mean
    assert groups.assign("t4") == {"lr": 0.2, "seed": 4}
    assert groups.complete("t4", {"acc": 0.5}) is None
    assert groups.complete("t3", None) == ("t3", None, ["t3", "t4"])
    # [None]: keep the suggested seed (a search over seeds)
    single = SeedGroups([None])
    assert single.open("a", {"seed": 7}) == {"seed": 7}
    assert single.complete("a", {"x": 1.0}) == ("a", {"x": 1.0}, ["a"])


def _searcher(tmp_path: Path, repeats: int):
    space = load_space(
        "default",
        [f"repeats={repeats}", "search.method=snl", "search.mitigation=none"],
    )
    return phases.make_searcher(space, "pareto", tmp_path, seed=0, constrained=False)


def _study(tmp_path: Path) -> optuna.Study:
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    storage = JournalStorage(JournalFileBackend(str(tmp_path / "optuna.journal")))
    return optuna.load_study(study_name=tmp_path.name, storage=storage)


def test_optuna_is_told_the_mean_over_seeds_or_fail(tmp_path: Path) -> None:
    searcher = _searcher(tmp_path, repeats=2)
    configs = [searcher.suggest(f"t{i}") for i in range(4)]
    assert [c["seed"] for c in configs] == [0, 1, 0, 1]
    assert {k: v for k, v in configs[0].items() if k != "seed"} == {
        k: v for k, v in configs[1].items() if k != "seed"
    }
    results = [
        {"val_accuracy": 0.90, "val_worst_group_drop": 4.0, "relu_count": 384.0},
        {"val_accuracy": 0.80, "val_worst_group_drop": 10.0, "relu_count": 384.0},
    ]
    searcher.on_trial_result("t0", {"val_accuracy": 0.5, "training_iteration": 1})
    searcher.on_trial_complete("t0", results[0])
    assert all(t.state == optuna.trial.TrialState.RUNNING for t in _study(tmp_path).trials)
    searcher.on_trial_complete("t1", results[1])
    searcher.on_trial_complete("t2", results[0])
    searcher.on_trial_complete("t3", error=True)  # one seed of the second configuration fails
    assert _study(tmp_path).metric_names == ["val_accuracy", "val_worst_group_drop", "relu_count"]
    first, second = _study(tmp_path).trials
    assert first.state == optuna.trial.TrialState.COMPLETE
    assert first.values == pytest.approx([0.85, 7.0, 384.0])
    assert first.user_attrs["tune_trial_ids"] == ["t0", "t1"]
    assert second.state == optuna.trial.TrialState.FAIL
    assert second.user_attrs["tune_trial_id"] == "t2"


def test_grid_points_run_every_configuration_on_every_seed() -> None:
    space = load_space("default", ["repeats=3", "grid.budget=[0.5, 0.1]", "grid.mitigation=[none]"])
    points = space.grid_points()
    assert len(points) == 2 * 3 and [p["seed"] for p in points] == [0, 1, 2, 0, 1, 2]
    assert {p["budget"] for p in points[:3]} == {0.5}  # a configuration's seeds are adjacent
    listed = load_space("default", ["repeats=3", "grid.seed=[5, 6]", "grid.mitigation=[none]"])
    assert sorted({p["seed"] for p in listed.grid_points()}) == [5, 6]  # the grid's seeds win
    assert load_space("default", ["search.seed=4", "repeats=2"]).seeds == [4, 5]
    with pytest.raises(UserError, match="search.seed must be a constant"):
        load_space("default", ["repeats=2", "search.seed={choices: [0, 1]}"])
    with pytest.raises(UserError, match="repeats must be a positive integer"):
        load_space("default", ["repeats=0"])


def _trial(config: str, seed: int, acc: float, drop: float, status: str = "ok", minute: int = 0):
    return {
        "run_id": "run",
        "trial_id": f"{config}-s{seed}-{minute}",
        "config_id": config,
        "method": "snl",
        "budget": 0.1,
        "mitigation": "none",
        "mu": None,
        "epsilon": None,
        "lr": 0.01,
        "seed": seed,
        "status": status,
        "val_accuracy": acc if status == "ok" else None,
        "val_worst_group_drop": drop if status == "ok" else None,
        "relu_count": 384 if status == "ok" else None,
        "test_accuracy": acc - 0.01 if status == "ok" else None,
        "test_worst_group_drop": drop + 1 if status == "ok" else None,
        "finished_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=minute),
    }


def test_configs_table_by_hand() -> None:
    trials = pd.DataFrame(
        [
            _trial("a", 0, 0.90, 3.0),
            _trial("a", 1, 0.80, 9.0),
            _trial("a", 2, 0.70, 0.0, minute=1),
            _trial("a", 2, 0.85, 6.0, minute=2),  # seed 2 rerun after a resume: the latest counts
            _trial("b", 0, 0.95, 2.0),
            _trial("b", 1, 0.0, 0.0, status="failed"),
        ]
    )
    table = configs_table(trials).set_index("config_id")
    a = table.loc["a"]
    acc = np.array([0.90, 0.80, 0.85])
    half = stats.t.ppf(0.975, 2) * acc.std(ddof=1) / math.sqrt(3)
    assert (a["n_seeds"], a["n_failed"], a["status"]) == (3, 0, "ok")
    assert a["val_accuracy_mean"] == pytest.approx(acc.mean())
    assert a["val_accuracy_std"] == pytest.approx(acc.std(ddof=1))
    assert [a["val_accuracy_ci_low"], a["val_accuracy_ci_high"]] == pytest.approx(
        [acc.mean() - half, acc.mean() + half]
    )
    assert a["val_worst_group_drop_mean"] == pytest.approx(6.0)
    assert json.loads(a["seeds"]) == [0, 1, 2] and len(json.loads(a["trial_ids"])) == 3
    b = table.loc["b"]
    assert (b["n_seeds"], b["n_failed"], b["status"]) == (1, 1, "failed")
    assert math.isnan(b["val_accuracy_std"]) and not b["pareto"]  # failed: off the front
    assert a["pareto"]
    assert t_interval([1.0])[0] == 1.0 and math.isnan(t_interval([1.0])[2])


def test_rank_agreement_is_spearman_over_ok_configurations() -> None:
    rows = []
    for i, (val, test) in enumerate([(1.0, 2.0), (2.0, 1.0), (3.0, 4.0), (4.0, 3.0), (5.0, 6.0)]):
        rows += [_trial(f"c{i}", s, 0.9 - 0.01 * i, val) for s in (0, 1)]
        for r in rows[-2:]:
            r["test_worst_group_drop"] = test
    table = configs_table(pd.DataFrame(rows))
    agree = aggregate.rank_agreement(table)
    expect = stats.spearmanr([1, 2, 3, 4, 5], [2, 1, 4, 3, 6]).statistic
    assert agree["spearman_worst_group_drop"] == pytest.approx(expect)
    assert agree["configurations"] == 5


def test_configs_file_has_the_schema_and_round_trips(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    trials = pd.DataFrame([_trial("a", s, 0.9 - 0.01 * s, 3.0 + s) for s in range(3)])
    written = aggregate.write_configs(tmp_path, trials)
    path = aggregate.configs_file(tmp_path)
    assert pq.read_schema(path).remove_metadata().equals(aggregate.CONFIGS_SCHEMA.remove_metadata())
    assert not list(path.parent.glob(".*"))  # written atomically: no temporary file left
    loaded = aggregate.load_configs(tmp_path)
    assert loaded["val_accuracy_mean"].tolist() == pytest.approx(
        written["val_accuracy_mean"].tolist()
    )
    assert loaded["pareto"].tolist() == [True] and str(loaded["n_seeds"].dtype) == "int64"
    for field in aggregate.CONFIGS_SCHEMA:
        assert field.metadata[b"description"], field.name
    with pytest.raises(UserError, match="no configs table"):
        aggregate.load_configs(tmp_path / "elsewhere")
