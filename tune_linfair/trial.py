"""The trial contract: what a trial varies, what it optimizes, and the row it leaves.

Everything that ties a sweep's trials together is defined here once (no torch, no Ray):

- :class:`TrialParams`: the parameters a trial varies (:data:`TRIAL_PARAMS`), validated, with
  the space's fine-tuning defaults filled in;
- :data:`APPLIES_TO`: the one rule of which parameter applies to which mitigation (``mu``
  only to ``lagrangian``, ``epsilon`` only to ``accuracy_gap``). Optuna's define-by-run space
  (:func:`suggest`), the fine-tuning settings (:meth:`TrialParams.finetune_settings`) and
  the rows (:func:`trial_row`) all follow it: a parameter that does not apply is neither
  sampled, nor used, nor written (null in Parquet);
- :data:`OBJECTIVES`: the search objectives, each with its direction and unit, and
  :data:`SEARCHES`, which of them each ``--objective`` optimizes;
- :func:`trial_row`: the one builder of a ``trials`` row, for ok and failed trials alike.

Units (the Parquet convention, also stated in each column's description in
:mod:`tune_linfair.results`): accuracies and parity gaps are **fractions** in [0, 1];
relative drops are in **percent** of the base model's accuracy,
``100 * (acc_base_a - acc_a) / acc_base_a``; ReLU counts are per image. The metrics API
(:mod:`tune_linfair.metrics`) works in percent; :func:`fraction` converts, nowhere else.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tune_linfair.cache import stable_hash
from tune_linfair.config import (
    MASK_MITIGATIONS,
    METHODS,
    MITIGATIONS,
    ExperimentConfig,
    FinetuneSettings,
    LinearizeSettings,
    to_dict,
)
from tune_linfair.errors import UserError, unknown

TRIAL_PARAMS: tuple[str, ...] = (
    "method",
    "budget",
    "mitigation",
    "mu",
    "epsilon",
    "eta",
    "lr",
    "mask_mitigation",
    "seed",
)
"""What a trial varies (the keys of a space's ``search`` and ``grid``); the space fixes the rest."""

APPLIES_TO: dict[str, str] = {"mu": "lagrangian", "epsilon": "accuracy_gap", "eta": "group_dro"}
"""Parameters that apply to one mitigation only; every other parameter always applies."""


def applies(name: str, mitigation: str) -> bool:
    """Whether trial parameter ``name`` has an effect under ``mitigation``."""
    return APPLIES_TO.get(name, mitigation) == mitigation


# -- values -------------------------------------------------------------------------------
def validate_value(name: str, value: Any, where: str) -> None:
    """Range checks on one value of trial parameter ``name``; messages name ``where``
    (``search.lr``, ``grid.budget``: what --set or YAML got wrong)."""
    if name == "method" and value not in METHODS:
        raise unknown("method", value, METHODS)
    if name == "mitigation" and value not in MITIGATIONS:
        raise unknown("mitigation", value, MITIGATIONS)
    if name == "mask_mitigation" and value not in MASK_MITIGATIONS:
        raise unknown("mask mitigation", value, MASK_MITIGATIONS)
    if name in ("budget", "mu", "epsilon", "eta", "lr"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise UserError(f"{where} must be a number, got {value!r}")
    if name == "budget" and not (0 < value <= 1 or (isinstance(value, int) and value >= 1)):
        raise UserError(f"{where} must be a fraction in (0, 1] or a ReLU count >= 1, got {value}")
    if name in ("mu", "epsilon", "eta") and value < 0:
        raise UserError(f"{where} must be non-negative, got {value}")
    if name == "lr" and value <= 0:
        raise UserError(f"{where} must be positive, got {value}")
    if name == "seed" and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise UserError(f"{where} must be a non-negative integer, got {value!r}")


def validate_spec(name: str, spec: Any) -> Any:
    """Check one ``search`` entry: a constant, ``{choices}``, or ``{low, high[, log, int]}``."""
    if name not in TRIAL_PARAMS:
        raise unknown("search parameter", name, TRIAL_PARAMS)
    where = f"search.{name}"
    if not isinstance(spec, dict):
        validate_value(name, spec, where)
        return spec
    keys = set(spec)
    if "choices" in spec:
        if keys - {"choices"} or not isinstance(spec["choices"], list) or not spec["choices"]:
            raise UserError(f"{where}: 'choices' must be a non-empty list and stand alone")
        for v in spec["choices"]:
            validate_value(name, v, where)
        return spec
    if not {"low", "high"} <= keys or keys - {"low", "high", "log", "int"}:
        raise UserError(
            f"{where} must be a constant, {{choices: [...]}} or {{low, high, log, int}}; "
            f"got keys {sorted(keys)}"
        )
    low, high = spec["low"], spec["high"]
    for v in (low, high):
        validate_value(name, v, where)
    if low > high:
        raise UserError(f"{where}: low {low} is above high {high}")
    if spec.get("log") and low <= 0:
        raise UserError(f"{where}: a log range needs low > 0, got {low}")
    return spec


@dataclass(frozen=True)
class TrialParams:
    """The parameters of one trial. ``mu`` / ``epsilon`` / ``eta`` are None where they do not
    apply (:data:`APPLIES_TO`); ``lr`` is the fine-tuning learning rate; ``mask_mitigation``
    the group term of SNL's mask training (a linearization setting)."""

    method: str
    budget: float | int
    mitigation: str
    lr: float
    seed: int = 0
    mu: float | None = None
    epsilon: float | None = None
    eta: float | None = None
    mask_mitigation: str = "none"

    @classmethod
    def from_config(cls, values: Mapping[str, Any], exp: ExperimentConfig) -> TrialParams:
        """The trial's parameters from a Tune config or a grid point; what ``values`` lacks
        comes from the space's ``finetune`` and ``linearize`` sections. Unknown keys, a
        missing method or budget, and out-of-range values are one-line UserErrors."""
        defaults = exp.finetune
        bad = sorted(set(values) - set(TRIAL_PARAMS))
        if bad:
            raise unknown("trial parameter", bad[0], TRIAL_PARAMS)
        for name in ("method", "budget"):
            if name not in values:
                raise UserError(f"trial parameters give no {name}")
        for name, value in values.items():
            validate_value(name, value, f"trial parameter {name}")
        mitigation = values.get("mitigation", defaults.mitigation)

        def applying(name: str) -> float | None:
            return (
                float(values.get(name, getattr(defaults, name)))
                if applies(name, mitigation)
                else None
            )

        return cls(
            method=values["method"],
            budget=values["budget"],
            mitigation=mitigation,
            lr=float(values.get("lr", defaults.lr)),
            seed=int(values.get("seed", 0)),
            mu=applying("mu"),
            epsilon=applying("epsilon"),
            eta=applying("eta"),
            mask_mitigation=values.get("mask_mitigation", exp.linearize.mask_mitigation),
        )

    def finetune_settings(self, defaults: FinetuneSettings) -> FinetuneSettings:
        """``defaults`` with this trial's mitigation, learning rate and applicable knobs."""
        chosen = {"mitigation": self.mitigation, "lr": self.lr}
        chosen.update({k: getattr(self, k) for k in APPLIES_TO if getattr(self, k) is not None})
        return dataclasses.replace(defaults, **chosen)

    def linearize_settings(self, defaults: LinearizeSettings) -> LinearizeSettings:
        """``defaults`` with this trial's mask mitigation (part of the linearized model's
        cache key)."""
        return dataclasses.replace(defaults, mask_mitigation=self.mask_mitigation)

    def as_dict(self) -> dict[str, Any]:
        """The parameters that apply, as a plain dict (for rows and checkpoints)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @property
    def config_id(self) -> str:
        """The configuration: a hash of every parameter that applies except the seed. The
        seeds of one configuration (its repeats) share it; the configs table groups by it."""
        config = {k: v for k, v in self.as_dict().items() if k != "seed"}
        return "c" + stable_hash(config, length=11)


def suggest(trial: Any, search: Mapping[str, Any], default_mitigation: str) -> dict[str, Any]:
    """Optuna define-by-run: sample each searched parameter of ``search`` on ``trial`` (an
    ``optuna.Trial``), skipping those that do not apply to the mitigation (sampled, constant
    in ``search``, or else ``default_mitigation``); return the constants. Conditional
    parameters come last, after the mitigation."""
    constants, chosen = {}, {}
    for name, spec in sorted(search.items(), key=lambda kv: kv[0] in APPLIES_TO):
        if not isinstance(spec, dict):
            constants[name] = spec
            continue
        mitigation = chosen.get("mitigation", constants.get("mitigation", default_mitigation))
        if not applies(name, mitigation):
            continue
        log = bool(spec.get("log"))
        if "choices" in spec:
            chosen[name] = trial.suggest_categorical(name, spec["choices"])
        elif spec.get("int"):
            chosen[name] = trial.suggest_int(name, int(spec["low"]), int(spec["high"]), log=log)
        else:
            chosen[name] = trial.suggest_float(
                name, float(spec["low"]), float(spec["high"]), log=log
            )
    return constants


# -- objectives and units -----------------------------------------------------------------
@dataclass(frozen=True)
class Objective:
    """A search objective: a ``trials`` column, its direction and unit."""

    name: str
    mode: str  # "max" or "min"
    unit: str  # "fraction", "percent" or "count"
    label: str


OBJECTIVES: tuple[Objective, ...] = (
    Objective("val_accuracy", "max", "fraction", "validation accuracy"),
    Objective("val_worst_group_drop", "min", "percent", "validation worst-group relative drop"),
    Objective("relu_count", "min", "count", "ReLUs kept per image"),
)
"""The search objectives (validation only: test numbers are reported, never optimized)."""

SEARCHES: dict[str, tuple[Objective, ...]] = {
    "pareto": OBJECTIVES,
    "accuracy": OBJECTIVES[:1],
    "fairness": OBJECTIVES[1:2],
    "grid": (),
}
"""What each ``--objective`` optimizes (``grid`` runs the space's grid, no search)."""


def fraction(percent: float | None) -> float | None:
    """A percentage (metrics API) as a fraction (Parquet's accuracies and gaps)."""
    return None if percent is None else float(percent) / 100.0


def accuracy_drop_points(base_accuracy: float, accuracy: float) -> float:
    """Global accuracy lost against the base model, in percentage points, from two
    fractions: the quantity ``--max-accuracy-drop`` bounds."""
    return 100.0 * (float(base_accuracy) - float(accuracy))


def constraint_columns(row: Mapping[str, Any], max_accuracy_drop: float | None) -> dict:
    """The ``max_accuracy_drop`` and ``feasible`` columns of a trials row in a sweep with
    ``--max-accuracy-drop`` (``feasible`` null when unconstrained or the trial failed)."""
    if max_accuracy_drop is None or row.get("status") != "ok":
        return {"max_accuracy_drop": max_accuracy_drop, "feasible": None}
    drop = accuracy_drop_points(row["base_val_accuracy"], row["val_accuracy"])
    return {"max_accuracy_drop": max_accuracy_drop, "feasible": bool(drop <= max_accuracy_drop)}


# -- the row ------------------------------------------------------------------------------
MEASURED: tuple[str, ...] = (
    "relu_count",
    "relu_total",
    "relu_fraction",
    "reached_budget",
    "threshold_count",
    "lin_steps",
    "lin_epochs",
    "val_accuracy",
    "test_accuracy",
    "val_worst_group_drop",
    "test_worst_group_drop",
    "val_parity_gap",
    "test_parity_gap",
    "base_val_accuracy",
    "base_test_accuracy",
    "weight_distance",
    "est_online_latency_s",
    "est_online_comm_mb",
    "est_offline_storage_mb",
    "est_online_latency_total_s",
    "est_online_comm_total_mb",
    "checkpoint_path",
    "base_key",
    "lin_key",
)
"""The columns a trial measures (in table units); null in a failed trial's row."""


def trial_row(
    *,
    run_id: str,
    trial_id: str,
    exp: ExperimentConfig,
    params: TrialParams,
    wall_time_s: float,
    measured: Mapping[str, Any] | None = None,
    error: str | None = None,
    lock_wait_s: float | None = None,
    node_id: str | None = None,
    device: str | None = None,
    resumed_from_epoch: int | None = None,
) -> dict[str, Any]:
    """The ``trials`` row of one trial: ok with every :data:`MEASURED` value, or failed
    (``measured`` None) with its ``error``. Parameters that do not apply are null.
    ``lock_wait_s``, ``node_id`` and ``device`` say where and how it ran (null if unknown);
    ``resumed_from_epoch``: the fine-tuning epochs done by the checkpoint the trial resumed
    from (None: it ran straight through)."""
    if (measured is None) == (error is None):
        raise ValueError("give measured values (ok trial) or an error (failed trial)")
    if measured is not None and set(measured) != set(MEASURED):
        raise ValueError(f"measured values differ from MEASURED: {set(measured) ^ set(MEASURED)}")
    settings = params.finetune_settings(exp.finetune)
    row: dict[str, Any] = {
        "run_id": run_id,
        "trial_id": trial_id,
        "config_id": params.config_id,
        "stage": "finetuned",
        "dataset": exp.data.name,
        "model": exp.model.name,
        "width": exp.model.width,
        "method": params.method,
        "granularity": exp.model.granularity,
        "mitigation": params.mitigation,
        "mask_mitigation": params.mask_mitigation,
        "budget": float(params.budget),
        "mu": params.mu,
        "epsilon": params.epsilon,
        "eta": params.eta,
        "lr": params.lr,
        "epochs": settings.epochs,
        "seed": params.seed,
    }
    row.update({k: None if measured is None else measured[k] for k in MEASURED})
    row.update(max_accuracy_drop=None, feasible=None)  # set by a constrained sweep
    row.update(
        resumed_from_epoch=resumed_from_epoch,
        wall_time_s=wall_time_s,
        lock_wait_s=lock_wait_s,
        node_id=node_id,
        device=device,
        status="ok" if error is None else "failed",
        error=None if error is None else error[:2000],
        config_json=json.dumps({"params": params.as_dict(), "experiment": to_dict(exp)}),
        finished_at=datetime.datetime.now(datetime.UTC),
    )
    return row
