"""The phase jobs a space produces (tune_linfair.jobs), checked against hand-listed sets."""

from __future__ import annotations

from tune_linfair.jobs import LinearizeJob, base_seeds, linearize_jobs
from tune_linfair.spaces import load_space


def test_search_jobs_are_the_product_of_the_choices_and_seeds():
    space = load_space("default", [])
    assert base_seeds(space, "pareto") == [0, 1, 2]
    jobs = linearize_jobs(space, "pareto")
    expected = {
        LinearizeJob(m, b, "none", s)
        for m in ("snl", "deepreduce")
        for b in (0.5, 0.3, 0.2, 0.1, 0.05)
        for s in (0, 1, 2)
    }
    assert set(jobs) == expected and len(jobs) == 30


def test_grid_jobs_are_the_grid_points_models_once_each():
    space = load_space("default", ["grid.mitigation=[none,lagrangian]", "repeats=2"])
    # 4 budgets x 2 mitigations x 2 seeds = 16 points, but only 8 linearized models
    assert len(space.grid_points()) == 16
    assert [j.name for j in linearize_jobs(space, "grid")] == [
        f"snl-b{b}-s{s}" for b in ("0.05", "0.1", "0.2", "0.5") for s in (0, 1)
    ]
    assert base_seeds(space, "grid") == [0, 1]


def test_mask_mitigation_choices_multiply_the_jobs():
    space = load_space(
        "default",
        [
            "search.method=snl",
            "search.budget=0.1",
            "search.mask_mitigation={choices: [none, lagrangian]}",
        ],
    )
    jobs = linearize_jobs(space, "pareto")
    assert {(j.mask_mitigation, j.seed) for j in jobs} == {
        (m, s) for m in ("none", "lagrangian") for s in (0, 1, 2)
    }
    assert jobs[0].name in {"snl-b0.1-s0", "snl-b0.1-mlagrangian-s0"}


def test_a_continuous_budget_has_no_finite_linearize_set():
    space = load_space("default", ["search.budget={low: 0.05, high: 0.5}"])
    assert linearize_jobs(space, "pareto") is None
    assert base_seeds(space, "pareto") == [0, 1, 2]  # base models are still prebuilt
