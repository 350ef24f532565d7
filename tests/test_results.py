"""Parquet results layer and Pareto/hypervolume math (tune_linfair.results, tune_linfair.pareto).

``build_run`` writes a small synthetic sweep with the real writer; tests/test_analysis.py
reuses it.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tune_linfair.aggregate import configs_table
from tune_linfair.errors import UserError
from tune_linfair.pareto import hypervolume, normalize, pareto_mask
from tune_linfair.plotdata import load_figure_data
from tune_linfair.results import (
    GROUPS_SCHEMA,
    SAMPLES_SCHEMA,
    TABLES,
    TRIALS_COLUMNS,
    TRIALS_SCHEMA,
    describe,
    load_groups,
    load_samples,
    load_trials,
    read_trial_row,
    trial_file,
    write_trial,
)
from tune_linfair.summary import plot_pareto

GROUP_NAMES = ("majority", "minority_a", "minority_b")
BASE_ACC = (0.95, 0.85, 0.80)  # all-ReLU group accuracies
SENSITIVITY = (0.05, 0.35, 0.50)  # how fast each group loses accuracy when ReLUs go
RELU_TOTAL = 10_000
T0 = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


def make_trial(
    run_id: str,
    trial_id: str,
    *,
    method: str,
    budget: float,
    mitigation: str,
    seed: int,
    minute: int,
    n_samples: int = 12,
) -> tuple[dict, list[dict], list[dict]]:
    """One synthetic trial: accuracy falls faster for minorities as the budget shrinks."""
    rng = np.random.default_rng(zlib.crc32(repr((method, budget, mitigation, seed)).encode()))
    lost = 1.0 - budget
    help_ = 0.4 if mitigation != "none" else 0.0
    groups, samples = [], []
    accs = {}
    for split, stage in itertools.product(("val", "test"), ("base", "linearized", "finetuned")):
        for g, (name, base, sens) in enumerate(zip(GROUP_NAMES, BASE_ACC, SENSITIVITY)):
            factor = {"base": 0.0, "linearized": 1.5, "finetuned": 1.0}[stage]
            if stage == "finetuned" and g > 0:
                factor *= 1.0 - help_
            acc = float(np.clip(base * (1 - factor * sens * lost) + rng.normal(0, 0.01), 0, 1))
            accs[(split, stage, g)] = acc
            groups.append(
                {
                    "run_id": run_id,
                    "trial_id": trial_id,
                    "stage": stage,
                    "split": split,
                    "group": g,
                    "group_name": name,
                    "n": 100 if g == 0 else 20,
                    "n_train": 300 if g == 0 else 60,
                    "accuracy": acc,
                    "base_accuracy": base,
                    "relative_drop": 100 * (base - acc) / base,
                    "accuracy_ci_low": acc - 0.05,
                    "accuracy_ci_high": min(1.0, acc + 0.05),
                    "relative_drop_ci_low": 100 * (base - min(1.0, acc + 0.05)) / base,
                    "relative_drop_ci_high": 100 * (base - acc + 0.05) / base,
                    "loss": 1.0 - acc,
                    "grad_norm": 0.1 + sens * lost * (2 + g),
                    "hessian_top_eig": 1.0 + 10 * sens * lost,
                    "mean_margin": acc - 0.2,
                    "mean_geometric_distance": (acc - 0.2) / 3,
                }
            )
    for i in range(n_samples):
        g = i % 3
        correct = bool(rng.random() < accs[("test", "finetuned", g)])
        samples.append(
            {
                "run_id": run_id,
                "trial_id": trial_id,
                "stage": "finetuned",
                "split": "test",
                "index": i,
                "group": g,
                "label": i % 5,
                "prediction": i % 5 if correct else (i + 1) % 5,
                "correct": correct,
                "margin": float(rng.random()),
                "geometric_distance": float(rng.random()),
            }
        )
    drops = {
        s: max(100 * (b - accs[(s, "finetuned", g)]) / b for g, b in enumerate(BASE_ACC))
        for s in ("val", "test")
    }
    overall = {s: float(np.mean([accs[(s, "finetuned", g)] for g in range(3)])) for s in drops}
    relu = round(budget * RELU_TOTAL)
    trial = {
        "run_id": run_id,
        "trial_id": trial_id,
        "config_id": f"{method}-{budget}-{mitigation}",
        "stage": "finetuned",
        "dataset": "synthetic",
        "model": "mlp",
        "width": 1,
        "method": method,
        "granularity": "pixel",
        "mitigation": mitigation,
        "mask_mitigation": "none",
        "budget": budget,
        "relu_count": relu,
        "relu_total": RELU_TOTAL,
        "relu_fraction": relu / RELU_TOTAL,
        "reached_budget": True if method == "snl" else None,
        "threshold_count": relu if method == "snl" else None,
        "lin_steps": 40,
        "lin_epochs": 2,
        "mu": 0.1 if mitigation == "lagrangian" else None,
        "epsilon": 0.02 if mitigation == "accuracy_gap" else None,
        "eta": None,
        "lr": 1e-3,
        "epochs": 3,
        "seed": seed,
        "val_accuracy": overall["val"],
        "test_accuracy": overall["test"],
        "val_worst_group_drop": drops["val"],
        "test_worst_group_drop": drops["test"],
        "val_parity_gap": 0.1,
        "test_parity_gap": 0.1,
        "base_val_accuracy": 0.9,
        "base_test_accuracy": 0.9,
        "max_accuracy_drop": None,
        "feasible": None,
        "weight_distance": 2.0 * lost + 0.1 * seed,
        "est_online_latency_s": relu * 21.8e-6,
        "est_online_comm_mb": relu * 1184 / 1e6,
        "est_offline_storage_mb": relu * 17072 / 1e6,
        "est_online_latency_total_s": None,
        "est_online_comm_total_mb": None,
        "resumed_from_epoch": 2 if seed == 1 else None,
        "wall_time_s": 1.5,
        "lock_wait_s": 0.0,
        "node_id": "n0",
        "device": "cpu",
        "status": "ok",
        "error": None,
        "checkpoint_path": f"/ckpt/{trial_id}.pt",
        "base_key": f"base{seed}",
        "lin_key": f"lin-{method}-{budget}-{seed}",
        "config_json": {"method": method, "budget": budget, "seed": seed},
        "finished_at": T0 + dt.timedelta(minutes=minute),
    }
    return trial, groups, samples


def build_run(run_dir: Path, *, mitigation: bool = True) -> Path:
    """A synthetic sweep: 2 methods x 3 budgets x (none, lagrangian for snl) x 2 seeds + 1 failed."""
    minute = 0
    for method, budget, mit, seed in itertools.product(
        ("snl", "deepreduce"), (0.1, 0.3, 0.6), ("none", "lagrangian"), (0, 1)
    ):
        if mit != "none" and (method != "snl" or not mitigation):
            continue
        tid = f"{method}_{int(budget * 100):02d}_{mit}_s{seed}"
        write_trial(run_dir, *make_trial("run1", tid, method=method, budget=budget,
                                         mitigation=mit, seed=seed, minute=minute))  # fmt: skip
        minute += 1
    trial, _, _ = make_trial("run1", "failed_1", method="snl", budget=0.05,
                             mitigation="none", seed=0, minute=minute)  # fmt: skip
    for key in ("val_accuracy", "test_accuracy", "val_worst_group_drop", "test_worst_group_drop"):
        trial[key] = None
    trial.update(status="failed", error="budget unreachable", checkpoint_path=None)
    write_trial(run_dir, trial, [], [])
    return run_dir


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_run(tmp_path_factory.mktemp("run"))


# --------------------------------------------------------------------------- schemas, IO


def test_files_have_exact_schema(run_dir: Path) -> None:
    for name, schema in TABLES.items():
        path = trial_file(run_dir, name, "snl_10_none_s0")
        assert path.is_file()
        assert pq.read_schema(path).remove_metadata().equals(schema.remove_metadata())
    assert TRIALS_SCHEMA.field("finished_at").type == pa.timestamp("us", tz="UTC")
    assert not TRIALS_SCHEMA.field("trial_id").nullable and TRIALS_SCHEMA.field("mu").nullable
    assert GROUPS_SCHEMA.field("n").type == pa.int64()
    assert SAMPLES_SCHEMA.field("correct").type == pa.bool_()


def test_round_trip_values_and_dtypes(run_dir: Path) -> None:
    trials = load_trials(run_dir)
    assert len(trials) == 19 and trials["trial_id"].is_unique
    assert list(trials.columns) == [*TRIALS_SCHEMA.names, "pareto"]
    row = trials.set_index("trial_id").loc["snl_30_lagrangian_s1"]
    expect, _, _ = make_trial("run1", "snl_30_lagrangian_s1", method="snl", budget=0.3,
                              mitigation="lagrangian", seed=1, minute=0)  # fmt: skip
    assert row["val_accuracy"] == pytest.approx(expect["val_accuracy"], abs=0)
    assert row["relu_count"] == 3000 and str(trials["relu_count"].dtype) == "Int64"
    assert json.loads(row["config_json"]) == {"budget": 0.3, "method": "snl", "seed": 1}
    assert row["finished_at"].tzinfo is not None and str(row["finished_at"].tz) == "UTC"
    assert pd.isna(row["epsilon"]) and row["mu"] == 0.1
    assert trials["finished_at"].is_monotonic_increasing
    failed = trials[trials["status"] == "failed"].iloc[0]
    assert failed["error"] == "budget unreachable" and not failed["pareto"]
    groups, samples = load_groups(run_dir), load_samples(run_dir)
    assert len(groups) == 18 * 18 and len(samples) == 18 * 12
    assert str(samples["correct"].dtype) == "boolean" and str(groups["group"].dtype) == "Int64"
    # pandas reads the datasets directly, with the same row counts
    assert len(pd.read_parquet(run_dir / "groups")) == len(groups)
    assert len(pd.read_parquet(run_dir / "trials")) == 19


def test_pareto_column_matches_brute_force(run_dir: Path) -> None:
    trials = load_trials(run_dir)
    ok = trials[trials["status"] == "ok"]
    pts = ok[["val_accuracy", "val_worst_group_drop", "relu_count"]].to_numpy(float)
    expect = [
        not any(
            q[0] >= p[0] and q[1] <= p[1] and q[2] <= p[2] and tuple(q) != tuple(p) for q in pts
        )
        for p in pts
    ]
    assert ok["pareto"].tolist() == expect and any(expect)


def test_read_trial_row_and_plot(run_dir: Path, tmp_path: Path) -> None:
    row = read_trial_row(run_dir, "snl_10_none_s0")
    assert set(row) == set(TRIALS_COLUMNS) and row["status"] == "ok" and row["relu_count"] == 1000
    assert read_trial_row(run_dir, "failed_1")["val_accuracy"] is None
    assert read_trial_row(tmp_path, "snl_10_none_s0") is None
    configs = configs_table(load_trials(run_dir))
    out = plot_pareto(configs, tmp_path / "sub" / "pareto.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # what it draws: each method's configuration means, and the Pareto ones ringed
    (ax,) = load_figure_data(out)["axes"]
    series = {s["label"]: s for s in ax["series"]}
    ok = configs[configs["status"] == "ok"]
    assert set(series) == {"snl", "deepreduce", "Pareto"}

    def points(x, y) -> np.ndarray:
        return np.array(sorted(zip(x, y)))

    def means(rows: pd.DataFrame) -> np.ndarray:
        return points(rows["val_worst_group_drop_mean"], 100 * rows["val_accuracy_mean"])

    for method, rows in ok.groupby("method"):
        assert points(series[method]["x"], series[method]["y"]) == pytest.approx(means(rows))
    front = points(series["Pareto"]["x"], series["Pareto"]["y"])
    assert front == pytest.approx(means(ok[ok["pareto"]])) and 0 < len(front) < len(ok)


def test_infeasible_rows_are_marked_and_never_pareto(tmp_path: Path) -> None:
    """--max-accuracy-drop: a trial is feasible when its validation accuracy is within the
    bound of its base model's; a configuration when its mean over seeds is (what Optuna is
    told). Infeasible ones are never pareto, in the trials and the configs table."""
    from tune_linfair.aggregate import load_configs, write_configs
    from tune_linfair.trial import accuracy_drop_points, constraint_columns

    rows = [
        make_trial(
            "r",
            f"t{budget}-{seed}",
            method="snl",
            budget=budget,
            mitigation="none",
            seed=seed,
            minute=seed,
        )[0]  # fmt: skip
        for budget in (0.9, 0.1)
        for seed in (0, 1)
    ]
    drops = [accuracy_drop_points(r["base_val_accuracy"], r["val_accuracy"]) for r in rows]
    bound = (max(drops[:2]) + min(drops[2:])) / 2  # the 0.9 budget within, 0.1 outside
    for row in rows:
        row.update(constraint_columns(row, bound))
        write_trial(tmp_path, row, [], [])
    trials = load_trials(tmp_path).set_index("trial_id")
    assert trials["max_accuracy_drop"].tolist() == [bound] * 4
    feasible = trials.loc[[r["trial_id"] for r in rows], "feasible"].tolist()
    assert feasible == [d <= bound for d in drops] == [True, True, False, False]
    assert not trials.loc[~trials["feasible"], "pareto"].any() and trials["pareto"].any()
    configs = write_configs(tmp_path, load_trials(tmp_path)).set_index("budget")
    assert configs.loc[0.9, "feasible"] and not configs.loc[0.1, "feasible"]
    assert configs.loc[[0.9, 0.1], "pareto"].tolist() == [True, False]  # 0.1: fewer ReLUs
    assert load_configs(tmp_path).set_index("budget").loc[[0.9, 0.1], "pareto"].tolist() == [
        True,
        False,
    ]
    unconstrained = constraint_columns(rows[0], None)
    assert unconstrained == {"max_accuracy_drop": None, "feasible": None}
    assert constraint_columns({**rows[0], "status": "failed"}, bound)["feasible"] is None


def test_rewrite_replaces_without_duplicates(tmp_path: Path) -> None:
    trial, groups, samples = make_trial("r", "t1", method="snl", budget=0.5,
                                        mitigation="none", seed=0, minute=0)  # fmt: skip
    write_trial(tmp_path, trial, groups, samples)
    trial["val_accuracy"] = 0.123
    write_trial(tmp_path, trial, groups[:2], samples[:3])
    assert load_trials(tmp_path)["val_accuracy"].tolist() == [0.123]
    assert len(load_groups(tmp_path)) == 2 and len(load_samples(tmp_path)) == 3
    assert sorted(p.name for p in (tmp_path / "trials").iterdir()) == ["t1.parquet"]


def test_failed_write_leaves_old_file_and_no_temp(tmp_path: Path, monkeypatch) -> None:
    trial, groups, samples = make_trial("r", "t1", method="snl", budget=0.5,
                                        mitigation="none", seed=0, minute=0)  # fmt: skip
    write_trial(tmp_path, trial, groups, samples)
    before = (tmp_path / "trials" / "t1.parquet").read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", crash)
    trial["val_accuracy"] = 0.5
    with pytest.raises(OSError, match="disk full"):
        write_trial(tmp_path, trial, groups, samples)
    for table in TABLES:
        assert [p.name for p in (tmp_path / table).iterdir()] == ["t1.parquet"]
    assert (tmp_path / "trials" / "t1.parquet").read_bytes() == before


def test_bad_rows_raise_value_error(tmp_path: Path) -> None:
    trial, groups, samples = make_trial("r", "t1", method="snl", budget=0.5,
                                        mitigation="none", seed=0, minute=0)  # fmt: skip
    with pytest.raises(ValueError, match=r"missing columns \['seed'\]"):
        write_trial(tmp_path, {k: v for k, v in trial.items() if k != "seed"}, groups, samples)
    with pytest.raises(ValueError, match=r"unknown keys \['bogus'\]"):
        write_trial(tmp_path, trial, [{**groups[0], "bogus": 1}], samples)
    with pytest.raises(ValueError, match="expected an integer"):
        write_trial(tmp_path, {**trial, "seed": 1.5}, groups, samples)
    with pytest.raises(ValueError, match=r"trials row 0: column 'lr': expected a number"):
        write_trial(tmp_path, {**trial, "lr": "fast"}, groups, samples)
    with pytest.raises(ValueError, match="trial_id"):
        write_trial(tmp_path, trial, [{**groups[0], "trial_id": "other"}], samples)
    with pytest.raises(ValueError, match="cannot name a file"):
        write_trial(tmp_path, {**trial, "trial_id": "../x"}, [], [])
    with pytest.raises(ValueError, match="time zone"):
        write_trial(tmp_path, {**trial, "finished_at": dt.datetime(2025, 1, 1)}, [], [])
    assert not (tmp_path / "trials").exists()  # nothing written by failed validation


def test_coercion_to_schema_types(tmp_path: Path) -> None:
    trial, groups, _ = make_trial("r", "t1", method="snl", budget=0.5,
                                  mitigation="none", seed=0, minute=0)  # fmt: skip
    trial.update(seed=np.int32(3), width=2.0, val_accuracy=np.float32(0.5), lr=1,
                 test_accuracy=float("nan"), checkpoint_path=Path("/a/b.pt"),
                 finished_at="2025-02-03T04:05:06+01:00")  # fmt: skip
    write_trial(tmp_path, trial, groups[:1], [])
    row = load_trials(tmp_path).iloc[0]
    assert row["seed"] == 3 and row["width"] == 2 and row["lr"] == 1.0
    assert row["val_accuracy"] == 0.5 and pd.isna(row["test_accuracy"])
    assert row["checkpoint_path"] == "/a/b.pt"
    assert row["finished_at"] == pd.Timestamp("2025-02-03T03:05:06", tz="UTC")
    table = pq.read_table(tmp_path / "trials" / "t1.parquet")
    assert table.column("test_accuracy").null_count == 1  # NaN stored as null


def test_loaders_reject_empty_and_foreign_dirs(tmp_path: Path) -> None:
    for loader in (load_trials, load_groups, load_samples):
        with pytest.raises(UserError, match="is this a tune_linfair run directory"):
            loader(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        load_trials(tmp_path / "nope")
    (tmp_path / "trials").mkdir()
    pq.write_table(pa.table({"foo": [1, 2]}), tmp_path / "trials" / "x.parquet")
    with pytest.raises(UserError, match="not a tune_linfair"):
        load_trials(tmp_path)
    pq.write_table(pa.table({"trial_id": [1.5]}), tmp_path / "trials" / "x.parquet")
    with pytest.raises(UserError, match="not a tune_linfair"):
        load_trials(tmp_path)


def test_describe_lists_every_column() -> None:
    text = describe()
    for name, schema in TABLES.items():
        assert f"### `{name}`" in text
        for col in schema.names:
            assert f"| `{col}` |" in text
    with pytest.raises(ValueError):
        describe("nope")


def test_readme_column_tables_are_current() -> None:
    """The README embeds describe() verbatim under its Parquet heading."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    heading = "## Results (Parquet tables)"
    assert heading in text, f"README documents no tables under {heading!r}"
    assert describe().rstrip() in text.split(heading, 1)[1]


# --------------------------------------------------------------------------- Pareto math


def _brute_mask(pts: np.ndarray, maximize: list[bool]) -> np.ndarray:
    s = np.where(maximize, -1.0, 1.0)
    out = []
    for i, p in enumerate(pts):
        if np.isnan(p).any():
            out.append(False)
            continue
        dominated = any(
            j != i and not np.isnan(q).any() and np.all(s * q <= s * p) and np.any(s * q < s * p)
            for j, q in enumerate(pts)
        )
        out.append(not dominated)
    return np.array(out)


@pytest.mark.parametrize("d", [2, 3, 4])
def test_pareto_mask_matches_brute_force(d: int) -> None:
    rng = np.random.default_rng(d)
    for _ in range(5):
        pts = rng.integers(0, 6, size=(40, d)).astype(float)  # ties and duplicates
        pts[rng.random(40) < 0.1, 0] = np.nan
        maximize = [bool(b) for b in rng.integers(0, 2, d)]
        np.testing.assert_array_equal(pareto_mask(pts, maximize), _brute_mask(pts, maximize))
    assert pareto_mask(np.empty((0, 3)), [True, False, False]).shape == (0,)


def test_hypervolume_hand_computed_2d() -> None:
    # minimize both, ref (4, 4): strips x in [1,2]: 1, [2,3]: 2, [3,4]: 3 -> 6
    pts = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0], [3.5, 3.5], [5.0, 0.0]])
    assert hypervolume(pts, [False, False], [4, 4]) == pytest.approx(6.0)
    # the same set with the first objective maximized (negated), ref mirrored
    mirrored = pts * [-1.0, 1.0]
    assert hypervolume(mirrored, [True, False], [-4, 4]) == pytest.approx(6.0)
    # accuracy (max) vs drop (min) in percent, worst corner reference (0, 100)
    acc_drop = np.array([[90.0, 10.0], [80.0, 5.0]])
    # union of [0,90]x[10,100] and [0,80]x[5,100]: 90*90 + 80*5 = 8500
    assert hypervolume(acc_drop, [True, False], [0, 100]) == pytest.approx(8500.0)
    assert hypervolume(np.empty((0, 2)), [True, False], [0, 100]) == 0.0
    assert hypervolume(np.array([[np.nan, 1.0]]), [False, False], [4, 4]) == 0.0


def _grid_hypervolume(pts: np.ndarray, ref: np.ndarray) -> float:
    """Exact brute force (minimization): sum the grid cells whose lower corner is dominated."""
    axes = [np.unique(np.append(pts[:, k], ref[k])) for k in range(pts.shape[1])]
    total = 0.0
    for cell in itertools.product(*[range(len(a) - 1) for a in axes]):
        lo = np.array([a[i] for a, i in zip(axes, cell)])
        if np.any(np.all(pts <= lo, axis=1)):
            total += float(np.prod([a[i + 1] - a[i] for a, i in zip(axes, cell)]))
    return total


@pytest.mark.parametrize("d", [3, 4])
def test_hypervolume_matches_grid_brute_force(d: int) -> None:
    rng = np.random.default_rng(10 + d)
    for _ in range(4):
        pts = rng.random((7, d))
        ref = np.full(d, 1.0)
        assert hypervolume(pts, [False] * d, ref) == pytest.approx(_grid_hypervolume(pts, ref))


def test_hypervolume_3d_monte_carlo_mixed_directions() -> None:
    rng = np.random.default_rng(0)
    pts = rng.random((6, 3))
    maximize = [True, False, False]
    ref = [0.0, 1.0, 1.0]
    exact = hypervolume(pts, maximize, ref)
    u = rng.random((200_000, 3))
    s = np.array([-1.0, 1.0, 1.0])
    covered = np.any(np.all((s * pts)[None] <= (s * u)[:, None], axis=2), axis=1)
    assert exact == pytest.approx(covered.mean(), abs=0.006)
    # dominated points and points beyond the reference change nothing
    extra = np.vstack([pts, pts[:1] * [0.5, 1, 1], [[0.9, 1.5, 0.1]]])
    assert hypervolume(extra, maximize, ref) == pytest.approx(exact)


def test_normalize() -> None:
    out = normalize(np.array([[50.0, 0.5], [100.0, 0.0]]), [0, 0], [100, 1])
    np.testing.assert_allclose(out, [[0.5, 0.5], [1.0, 0.0]])
    with pytest.raises(ValueError):
        normalize(np.ones((2, 2)), [0, 1], [1, 1])
