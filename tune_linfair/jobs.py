"""The artifacts a sweep needs before its trials run: base models and linearized models.

A sweep runs in phases (README "Running sweeps"): **base** trains one all-ReLU model per seed,
**linearize** builds one linearized model per (method, budget, mask mitigation, seed), then
the **search** (or **grid**) trials fine-tune and evaluate, finding both built, and
**diagnose** adds the expensive per-group diagnostics to the trials that need them. This
module says which base and linearize jobs a space produces (no torch, no Ray).

The linearize set is finite when every parameter that changes a linearized model (method,
budget, mask mitigation, seed) is a constant or a list of choices (``search``) or comes from
the grid (``--objective grid``). A continuous range (``budget: {low, high}``) has no finite
set: those models are built inside the trials that need them, as they ask.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import pandas as pd

from tune_linfair.aggregate import configs_table
from tune_linfair.spaces import SearchSpace
from tune_linfair.trial import TrialParams

LINEARIZE_PARAMS: tuple[str, ...] = ("method", "budget", "mask_mitigation", "seed")
"""The trial parameters that change a linearized model (its cache key)."""


@dataclass(frozen=True, order=True)
class LinearizeJob:
    """One linearized model to build: ``method`` to ``budget`` on the base of ``seed``, with
    SNL's group term ``mask_mitigation``."""

    method: str
    budget: float | int
    mask_mitigation: str
    seed: int

    @property
    def name(self) -> str:
        """A short readable id, e.g. ``snl-b0.1-s2`` (``-m<mask>`` when a group term is on)."""
        mask = "" if self.mask_mitigation == "none" else f"-m{self.mask_mitigation}"
        return f"{self.method}-b{self.budget:g}{mask}-s{self.seed}"


def _choices(spec: Any) -> list | None:
    """A search entry's finite values: a constant, or ``{choices}``; None for a range."""
    if not isinstance(spec, dict):
        return [spec]
    return list(spec["choices"]) if "choices" in spec else None


def base_seeds(space: SearchSpace, objective: str) -> list[int] | None:
    """The seeds whose base models the sweep trains, sorted; None when the seed is searched
    over a range (then each trial trains its own on demand)."""
    if objective == "grid":
        points = space.grid_points()
        return sorted({TrialParams.from_config(p, space.experiment).seed for p in points})
    if space.seeds:
        return sorted(space.seeds)
    values = _choices(space.search.get("seed", 0))
    return None if values is None else sorted({int(v) for v in values})


def linearize_jobs(space: SearchSpace, objective: str) -> list[LinearizeJob] | None:
    """Every linearized model the sweep can ask for, sorted; None when that set is not
    finite (a parameter of :data:`LINEARIZE_PARAMS` searched over a range).

    For ``--objective grid`` these are the grid points' models. For a search, the product
    of the choices of method, budget and mask mitigation with :func:`base_seeds`: Optuna
    may not visit every combination, so some may go unused (``--plan`` counts them).
    """
    exp = space.experiment
    if objective == "grid":
        params = [TrialParams.from_config(p, exp) for p in space.grid_points()]
        return sorted({LinearizeJob(p.method, p.budget, p.mask_mitigation, p.seed) for p in params})
    seeds = base_seeds(space, objective)
    values = {
        name: _choices(space.search[name])
        for name in ("method", "budget", "mask_mitigation")
        if name in space.search
    }
    if seeds is None or any(v is None for v in values.values()):
        return None
    combos = itertools.product(
        values.get("method", []),
        values.get("budget", []),
        values.get("mask_mitigation", [exp.linearize.mask_mitigation]),
        seeds,
    )
    return sorted({LinearizeJob(*combo) for combo in combos})


DIAGNOSE_MODES: tuple[str, ...] = ("pareto", "all", "none")
"""``--diagnose``: the trials whose fine-tuned models get the full diagnostics."""


def diagnose_targets(trials: pd.DataFrame, mode: str, done: set[str] = frozenset()) -> list[str]:
    """The trial ids the diagnose phase runs on, sorted, leaving out those in ``done``: with
    ``pareto`` every ok seed of the configurations on the front of the configuration means
    (:func:`tune_linfair.aggregate.configs_table`), with ``all`` every ok trial, with
    ``none`` nothing."""
    if mode not in DIAGNOSE_MODES:
        raise ValueError(f"unknown diagnose mode {mode!r}")
    ok = trials[(trials["status"] == "ok").fillna(False).astype(bool)]
    if mode == "none" or ok.empty:
        return []
    if mode == "pareto":
        configs = configs_table(trials)
        front = set(configs.loc[configs["pareto"], "config_id"])
        ok = ok[ok["config_id"].isin(front)]
    return sorted(set(ok["trial_id"]) - set(done))
