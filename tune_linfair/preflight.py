"""Checks before a sweep starts Ray: what would fail every trial, and the space as saved.

:func:`preflight` loads the data and builds the model once, in the driver, so missing data,
a model that cannot take the data or a budget no model can meet is one line and exit code 2
before any worker starts. :func:`with_effective_data_options` writes the data set's
effective options into the space the sweep saves.
"""

from __future__ import annotations

from tune_linfair.errors import BudgetUnreachable
from tune_linfair.linearize.budget import resolve_budget
from tune_linfair.linearize.deepreduce import select_config
from tune_linfair.models import create_model, total_relus
from tune_linfair.spaces import SearchSpace, parse_space
from tune_linfair.stages import data_options, load_data


def with_effective_data_options(space: SearchSpace) -> SearchSpace:
    """The space with its data set's effective options written out (the loader's defaults
    with the space's on top). The sweep saves and its trials parse this form, so a resumed
    sweep keeps its split even if a later version changes a loader's default."""
    data = {**(space.raw.get("data") or {}), "options": data_options(space.experiment)}
    return parse_space({**space.raw, "data": data}, space.name)


def preflight(space: SearchSpace, objective: str) -> set[tuple[str, float]]:
    """Fail before Ray starts on what would fail every trial: missing data, a model that
    cannot take the data, budgets above the model's total, impossible DeepReDuce budgets.
    Returns the (method, budget) pairs no model can meet (their trials will fail)."""
    exp = space.experiment
    seeds = _values(space, "seed", objective) or [0]
    data = load_data(exp, int(seeds[0]))
    model = create_model(
        exp.model.name, data.num_classes, data.input_shape, exp.model.width, exp.model.granularity
    )
    total = total_relus(model)
    methods = _values(space, "method", objective)
    budgets = _budget_values(space, objective)
    for budget in budgets:
        resolve_budget(budget, total)
    if "deepreduce" in methods and budgets:
        # Staged model required; budgets no configuration meets fail their own trials
        # (recorded as failed rows), unless no budget at all can be met.
        unmet = []
        for budget in budgets:
            try:
                select_config(model, budget)
            except BudgetUnreachable as err:
                unmet.append((budget, err))
        if len(unmet) == len(budgets):
            raise unmet[0][1]
        for budget, _ in unmet:
            print(f"note: deepreduce cannot meet budget {budget}; those trials will fail")
        return {("deepreduce", budget) for budget, _ in unmet}
    return set()


def _values(space: SearchSpace, key: str, objective: str) -> list:
    if objective == "grid" and key in space.grid:
        return list(space.grid[key])
    spec = space.search.get(key)
    if spec is None:
        return []
    if isinstance(spec, dict):
        return list(spec.get("choices", []))
    return [spec]


def _budget_values(space: SearchSpace, objective: str) -> list:
    values = _values(space, "budget", objective)
    spec = space.search.get("budget")
    if objective != "grid" and isinstance(spec, dict) and "low" in spec:
        values = [spec["low"], spec["high"]]
    return values
