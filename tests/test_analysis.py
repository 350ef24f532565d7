"""analysis/ scripts (pareto.py, figures.py, report.py, common.py) on a synthetic Parquet run.

The run is written by ``build_run`` from tests/test_results.py, with the real writer.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest

from tune_linfair.errors import UserError
from tune_linfair.pareto import hypervolume, pareto_mask
from tune_linfair.plotdata import load_figure_data
from tune_linfair.results import load_groups, load_trials, write_trial

ROOT = Path(__file__).resolve().parents[1]
ANALYSIS = ROOT / "analysis"
FIGURES = (
    "fig1_group_accuracy",
    "fig3_grad_norm",
    "fig4_hessian",
    "fig6_relative_drop",
    "fig8_distance",
    "fig9_mitigation",
)


def _fixture_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "_results_fixture", Path(__file__).with_name("test_results.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build_run = _fixture_module().build_run


def script(name: str) -> ModuleType:
    """Import analysis/<name>.py the way ``python analysis/<name>.py`` sees its siblings."""
    if str(ANALYSIS) not in sys.path:
        sys.path.insert(0, str(ANALYSIS))
    module = importlib.import_module(name)
    assert Path(module.__file__).parent == ANALYSIS
    return module


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = build_run(tmp_path_factory.mktemp("run"))
    (run / "command.txt").write_text("python -m tune_linfair.search --objective grid --seeds 2\n")
    (run / "versions.json").write_text(json.dumps({"torch": "2.14.1", "ray": "2.60.0"}))
    return run


def _norm_points(ok: pd.DataFrame, suffix: str = "") -> np.ndarray:
    return np.column_stack(
        [
            1 - ok[f"val_accuracy{suffix}"].to_numpy(float),
            ok[f"val_worst_group_drop{suffix}"].to_numpy(float) / 100,
            ok[f"relu_count{suffix}"].to_numpy(float) / 10_000,
        ]
    )


def _config_means(trials: pd.DataFrame) -> pd.DataFrame:
    """Configuration means recomputed here with plain pandas (the check on aggregate.py):
    configurations whose every seed is ok, averaged over seeds."""
    ok = trials[trials["status"] == "ok"]
    cols = ["val_accuracy", "val_worst_group_drop", "relu_count"]
    means = ok.groupby("config_id")[cols].mean().add_suffix("_mean")
    means["method"] = ok.groupby("config_id")["method"].first()
    return means.reset_index()


def test_pareto_outputs(run_dir: Path, tmp_path: Path, capsys) -> None:
    pareto = script("pareto")
    assert pareto.main([str(run_dir), "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((tmp_path / "pareto.json").read_text())
    assert summary["reference"]["normalized"] == [1.0, 1.0, 1.0]
    assert summary["normalization"]["relu_scale"] == 10_000
    trials = load_trials(run_dir)
    means = _config_means(trials)
    assert summary["n_ok"] == len(means) == 9 and summary["n_trials"] == 19
    pts = _norm_points(means, "_mean")
    assert summary["hypervolume_3d"] == pytest.approx(hypervolume(pts, [False] * 3, [1, 1, 1]))
    assert summary["hypervolume_2d"] == pytest.approx(hypervolume(pts[:, :2], [False] * 2, [1, 1]))
    assert 0 < summary["hypervolume_3d"] < summary["hypervolume_2d"] < 1
    assert sorted(summary["pareto_3d"]) == sorted(means["config_id"][pareto_mask(pts, [False] * 3)])
    mask2 = pareto_mask(pts[:, :2], [False, False])
    assert sorted(summary["pareto_2d"]) == sorted(means["config_id"][mask2])
    # per method: each method's front is its own
    dr = means[means["method"] == "deepreduce"]
    expect = dr["config_id"][pareto_mask(_norm_points(dr, "_mean"), [False] * 3)]
    assert sorted(summary["per_method"]["deepreduce"]["pareto_3d"]) == sorted(expect)
    # seeds: each seed's ok trials, their hypervolume, and the t interval over the 2 seeds
    ok = trials[trials["status"] == "ok"]
    per_seed = {
        str(s): hypervolume(_norm_points(ok[ok["seed"] == s]), [False] * 3, [1, 1, 1])
        for s in (0, 1)
    }
    assert summary["seeds"]["hypervolume_per_seed"] == pytest.approx(per_seed)
    low, high = summary["seeds"]["hypervolume_ci"]
    assert low < np.mean(list(per_seed.values())) < high
    surface = pd.read_csv(tmp_path / "attainment.csv")
    assert len(surface) > 0 and list(surface.columns) == ["error", "drop", "relu"]
    # hypervolume over trials: 19 entries (the failed trial included), non-decreasing
    hv3 = summary["hypervolume_over_trials"]["hv_3d"]
    assert len(hv3) == 19 and np.all(np.diff(hv3) >= -1e-12)
    table = pd.read_csv(tmp_path / "pareto_set.csv")
    front = table[table["pareto_3d"]]
    assert sorted(front["config_id"]) == sorted(summary["pareto_3d"])
    assert (front["n_seeds"] == 2).all() and (
        front["val_accuracy_ci_low"] < front["val_accuracy_mean"]
    ).all()
    for cid in summary["pareto_3d"]:
        assert cid in printed
    assert "Reference: accuracy 0 %, drop 100 %" in (tmp_path / "pareto.md").read_text()
    # the plots draw these numbers: every configuration's means (one series per method),
    # the 2-D front traced through its members, the 3-D front marked; hypervolume curves
    (ax,) = load_figure_data(tmp_path / "pareto_2d.png")["axes"]
    series = {s["label"]: s for s in ax["series"]}
    for method, rows in means.groupby("method"):
        drawn = sorted(zip(series[method]["x"], series[method]["y"]))
        expect = sorted(zip(rows["val_worst_group_drop_mean"], 100 * rows["val_accuracy_mean"]))
        assert np.array(drawn) == pytest.approx(np.array(expect))
    for label, ids in (("2-D front", summary["pareto_2d"]), ("3-D front", summary["pareto_3d"])):
        rows = means[means["config_id"].isin(ids)]
        expect = sorted(zip(rows["val_worst_group_drop_mean"], 100 * rows["val_accuracy_mean"]))
        drawn = sorted(zip(series[label]["x"], series[label]["y"]))
        assert np.array(drawn) == pytest.approx(np.array(expect))
    hv = load_figure_data(tmp_path / "hv_over_trials.png")["axes"][0]["series"]
    assert np.array([s["y"] for s in hv]) == pytest.approx(
        np.array([summary["hypervolume_over_trials"]["hv_2d"], hv3])
    )


def test_pareto_custom_reference(run_dir: Path, tmp_path: Path) -> None:
    pareto = script("pareto")
    summary = pareto.analyse(run_dir, tmp_path, reference=(50.0, 60.0, 0.5))
    assert summary["reference"]["normalized"] == pytest.approx([0.5, 0.6, 0.5])
    means = _config_means(load_trials(run_dir))
    expect = hypervolume(_norm_points(means, "_mean"), [False] * 3, [0.5, 0.6, 0.5])
    assert summary["hypervolume_3d"] == pytest.approx(expect)
    with pytest.raises(UserError, match="3 numbers"):
        pareto.analyse(run_dir, tmp_path, reference=(1.0, 2.0))


@pytest.fixture(scope="module")
def report_dir(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Figures drawn by figures.py (with --pdf), then report.py run as a script.

    report.py finds the figures already there and must produce the missing Pareto outputs.
    """
    out = tmp_path_factory.mktemp("rep")
    assert script("figures").main([str(run_dir), "--out", str(out / "figures"), "--pdf"]) == 0
    proc = subprocess.run(
        [sys.executable, "analysis/report.py", str(run_dir), "--out", str(out / "report.md")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return out


def test_figures_all_drawn(report_dir: Path) -> None:
    manifest = json.loads((report_dir / "figures" / "figures.json").read_text())
    assert manifest["notes"] == {} and manifest["n_seeds"] == 2
    for name in FIGURES:
        assert manifest["files"][name] == f"{name}.png"
        assert manifest["data"][name] == f"{name}.data.json"
        assert (report_dir / "figures" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (report_dir / "figures" / f"{name}.pdf").read_bytes()[:5] == b"%PDF-"
        assert load_figure_data(report_dir / "figures" / f"{name}.png")["axes"]


def _by_seed(rows: pd.DataFrame, value: str) -> tuple[float, float]:
    """Mean and sample std over seeds (each seed one trial in the fixture)."""
    per_seed = rows.groupby("seed")[value].mean()
    return float(per_seed.mean()), float(per_seed.std(ddof=1))


def _label(budget: float) -> str:
    return f"{100 * budget:.3g}%"


def test_figures_draw_the_numbers_of_the_tables(report_dir: Path, run_dir: Path) -> None:
    """Each figure's saved data (what its artists draw) against the Parquet tables, by hand."""
    figs = report_dir / "figures"
    ok = load_trials(run_dir).query("status == 'ok'")
    cols = ["trial_id", "method", "budget", "mitigation", "seed", "relu_fraction"]
    gf = load_groups(run_dir).merge(ok[cols], on="trial_id")
    names = dict(zip(gf["group"], gf["group_name"]))
    test = gf[(gf["split"] == "test") & (gf["stage"] == "finetuned")]
    none = test[test["mitigation"] == "none"]
    budgets = sorted(none["budget"].unique(), reverse=True)
    # fig1: per method, one bar series per budget, one bar per group: mean accuracy (%)
    fig1 = load_figure_data(figs / "fig1_group_accuracy.png")["axes"]
    assert sorted(ax["title"].split(":")[0] for ax in fig1) == ["deepreduce", "snl"]
    for ax in fig1:
        sub = none[none["method"] == ax["title"].split(":")[0]]
        bars = {s["label"]: s for s in ax["series"] if s["kind"] == "bar"}
        assert ax["xticklabels"] == [names[g] for g in sorted(names)]
        for b in budgets:
            stats = [_by_seed(sub[(sub["budget"] == b) & (sub["group"] == g)], "accuracy")
                     for g in sorted(names)]  # fmt: skip
            assert bars[_label(b)]["y"] == pytest.approx([100 * m for m, _ in stats])
            assert bars[_label(b)]["yerr"] == pytest.approx([100 * sd for _, sd in stats])
    # fig3 / fig4: per method, one bar series per group, one bar per budget
    for name, column in (("fig3_grad_norm", "grad_norm"), ("fig4_hessian", "hessian_top_eig")):
        for ax in load_figure_data(figs / f"{name}.png")["axes"]:
            sub = none[none["method"] == ax["title"].split(" ")[0]]
            assert ax["xticklabels"] == [_label(b) for b in budgets]
            assert [s["label"] for s in ax["series"]] == [names[g] for g in sorted(names)]
            for series in ax["series"]:
                g = next(k for k, v in names.items() if v == series["label"])
                expect = [_by_seed(sub[(sub["budget"] == b) & (sub["group"] == g)], column)[0]
                          for b in budgets]  # fmt: skip
                assert series["y"] == pytest.approx(expect), (name, series["label"])
    # fig6: per group, relative drop (%) against percent linearized, in increasing order
    for ax in load_figure_data(figs / "fig6_relative_drop.png")["axes"]:
        sub = none[none["method"] == ax["title"].split(" ")[0]]
        lines = [s for s in ax["series"] if s["kind"] == "errorbar"]
        assert [s["label"] for s in lines] == [names[g] for g in sorted(names)]
        for series in lines:
            rows = sub[sub["group"] == next(k for k, v in names.items() if v == series["label"])]
            lin = sorted(100 * (1 - rows.groupby("budget")["relu_fraction"].mean()))
            drop = [_by_seed(rows[rows["budget"] == b], "relative_drop")[0] for b in budgets]
            assert series["x"] == pytest.approx(lin) and series["y"] == pytest.approx(drop)
    # fig8 (a): weight distance per method against the budget (% kept)
    panel_a = load_figure_data(figs / "fig8_distance.png")["axes"][0]
    assert sorted(s["label"] for s in panel_a["series"]) == ["deepreduce", "snl"]
    for series in panel_a["series"]:
        rows = ok[(ok["method"] == series["label"]) & (ok["mitigation"] == "none")]
        assert series["x"] == pytest.approx([100 * b for b in sorted(budgets)])
        expect = [
            _by_seed(rows[rows["budget"] == b], "weight_distance")[0] for b in sorted(budgets)
        ]
        assert series["y"] == pytest.approx(expect)
    # fig9: lagrangian vs none (snl): relative change of group accuracy (%), per budget
    (ax,) = load_figure_data(figs / "fig9_mitigation.png")["axes"]
    assert ax["title"] == "lagrangian vs none (snl, test)"
    pair = test[test["method"] == "snl"].pivot_table(
        index=["budget", "seed", "group"], columns="mitigation", values="accuracy"
    )
    change = (100 * (pair["lagrangian"] - pair["none"]) / pair["none"]).rename("c").reset_index()
    bars = {s["label"]: s["y"] for s in ax["series"] if s["kind"] == "bar"}
    for b in budgets:
        rows = change[change["budget"] == b]
        assert bars[_label(b)] == pytest.approx([_by_seed(rows[rows["group"] == g], "c")[0]
                                                 for g in sorted(names)])  # fmt: skip


def test_report_references_everything(report_dir: Path) -> None:
    out = report_dir / "report.md"
    text = out.read_text()
    for name in FIGURES:
        ref = f"figures/{name}.png"
        assert f"]({ref})" in text and (out.parent / ref).stat().st_size > 0
    for ref in ("pareto/pareto_2d.png", "pareto/hv_over_trials.png"):
        assert f"]({ref})" in text and (out.parent / ref).stat().st_size > 0
    assert "python -m tune_linfair.search --objective grid --seeds 2" in text
    assert "- torch: 2.14.1" in text and f"- pandas: {pd.__version__}" in text
    assert "| failed_1 | budget unreachable |" in text
    assert "minority_b (2)" in text  # per-group drop table
    assert "snl_60_lagrangian_s0" in text  # a Pareto trial
    assert "HV 3-D" in text


def test_figures_skip_absent_data(tmp_path: Path, capsys) -> None:
    figures, common = script("figures"), script("common")
    run = build_run(tmp_path / "run", mitigation=False)
    _, ok = common.load_ok_trials(run)
    with pytest.raises(figures.Skip, match="no mitigated trials"):
        figures.fig9(ok, common.load_groups_or_none(run), "test", "finetuned")
    shutil.rmtree(run / "groups")  # only the trials table: group figures skip, fig8 keeps (a)
    manifest = figures.make_figures(run, tmp_path / "b")
    assert list(manifest["files"]) == ["fig8_distance"]
    assert set(manifest["notes"]) == set(FIGURES) - {"fig8_distance"}
    printed = capsys.readouterr().out
    assert printed.count("skip fig") == 5 and "no groups table" in printed


def test_cli_empty_dir_one_line_exit_2(tmp_path: Path, capsys) -> None:
    proc = subprocess.run(
        [sys.executable, "analysis/report.py", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: no trials under {tmp_path / 'trials'}: is this a tune_linfair run directory?"
    ]
    common = script("common")
    for name in ("pareto", "figures", "report"):
        assert common.run_cli(script(name).main, [str(tmp_path)]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: no trials under"), name
        assert common.run_cli(script(name).main, [str(tmp_path / "missing")]) == 2
        assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "analysis").exists()


def test_all_failed_run_is_a_user_error(tmp_path: Path) -> None:
    common = script("common")
    trial = _fixture_module().make_trial(
        "r", "t1", method="snl", budget=0.5, mitigation="none", seed=0, minute=0
    )[0]
    trial.update(status="failed", error="boom")
    write_trial(tmp_path, trial, [], [])
    with pytest.raises(UserError, match="no successful trials"):
        common.load_ok_trials(tmp_path)
    pareto = script("pareto")
    assert common.run_cli(pareto.main, [str(tmp_path)]) == 2


def test_aggregate_seeds_two_levels() -> None:
    common = script("common")
    df = pd.DataFrame(
        {
            "method": ["a", "a", "a", "b"],
            "seed": [0, 0, 1, 0],
            "x": [1.0, 3.0, 4.0, 7.0],  # seed 0 of "a" averages to 2, then mean(2, 4) = 3
        }
    )
    out = common.aggregate_seeds(df, ["method"], ["x"]).set_index("method")
    assert out.loc["a", "x_mean"] == 3.0 and out.loc["a", "x_std"] == pytest.approx(np.sqrt(2))
    assert out.loc["a", "n_seeds"] == 2 and out.loc["b", "n_seeds"] == 1
    assert np.isnan(out.loc["b", "x_std"])


def test_no_torch_or_ray_imported() -> None:
    code = (
        "import sys; sys.path.insert(0, 'analysis');"
        "import tune_linfair.results, tune_linfair.pareto, common, pareto, figures, report;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'ray'));"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
