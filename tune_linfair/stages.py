"""The stages of a study as plain functions (no Ray): base, linearize, fine-tune, trial.

Each stage reads and writes the artifact cache (:mod:`tune_linfair.cache`): a base model
is trained once per (data set, model, recipe, seed), a linearized model once per (base,
method, budget, linearization settings, seed), and every trial that only changes the
mitigation, ``mu``, ``epsilon`` or the learning rate reuses both.

:func:`run_trial` chains base (cached) -> linearize (cached) -> fine-tune -> evaluate and
returns the rows of the Parquet tables (:mod:`tune_linfair.results`), in the table units of
:mod:`tune_linfair.trial`.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tune_linfair.cache import Artifact, artifact_dir, base_key, cached, linearized_key, read_meta
from tune_linfair.checkpointing import Checkpointer, for_stage
from tune_linfair.config import ExperimentConfig, LinearizeSettings, to_dict
from tune_linfair.data import GroupedDataset, dataset_options, get_dataset
from tune_linfair.finetune import finetune
from tune_linfair.jobs import LinearizeJob
from tune_linfair.linearize import linearize
from tune_linfair.metrics import diagnose, pi_cost, weight_distance
from tune_linfair.metrics.cost import cost_model_for
from tune_linfair.models import count_relus, create_model, save_checkpoint, total_relus
from tune_linfair.models.checkpoint import load_model
from tune_linfair.pretrain import pretrain
from tune_linfair.train import seed_everything
from tune_linfair.trial import TrialParams, fraction, trial_row


# -- data ---------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _load_data_cached(data_json: str, seed: int) -> GroupedDataset:
    spec = json.loads(data_json)
    return get_dataset(
        spec["name"], root=spec["root"], seed=seed, download=spec["download"], **spec["options"]
    )


def load_data(
    exp: ExperimentConfig, seed: int, device: torch.device | str = "cpu"
) -> GroupedDataset:
    """The experiment's dataset for ``seed`` (splits depend on the seed), on ``device``.
    Loaded once per process and seed."""
    spec = json.dumps(to_dict(exp.data), sort_keys=True)
    return _load_data_cached(spec, seed).to(device)


def data_options(exp: ExperimentConfig) -> dict[str, Any]:
    """The data set's effective options: its loader's defaults with the space's on top."""
    return {**dataset_options(exp.data.name), **exp.data.options}


def load_artifact_model(artifact: Artifact, device: torch.device | str = "cpu") -> torch.nn.Module:
    """The model saved in a cached artifact."""
    model, _ = load_model(artifact.checkpoint, device)
    return model


def _model_spec(exp: ExperimentConfig, data: GroupedDataset) -> dict:
    return {
        "name": exp.model.name,
        "num_classes": data.num_classes,
        "input_shape": list(data.input_shape),
        "width": exp.model.width,
        "granularity": exp.model.granularity,
    }


def _diagnostics(
    exp: ExperimentConfig,
    model: torch.nn.Module,
    data: GroupedDataset,
    stage: str,
    base_acc: dict[str, list[float]] | None,
    heavy: bool = True,
    boundary: bool = True,
) -> dict[str, Any]:
    """Per-group diagnostics on the configured splits: accuracy, loss and margins on every
    split; with ``heavy``, gradient norms and Hessian eigenvalues on the test split (they
    feed the paper's figures); with ``boundary``, boundary distances on every split (each as
    the space's ``diagnostics`` section allows). Values in the metrics API's percent."""
    d = exp.diagnostics
    out: dict[str, Any] = {"groups": [], "samples": [], "summary": {}}
    for split in d.splits:
        on_test = split == "test" and heavy
        diag = diagnose(
            model,
            data.split(split),
            split_name=split,
            group_names=list(data.group_names),
            stage=stage,
            base_group_accuracy=None if base_acc is None else base_acc[split],
            gradients=d.gradients and on_test,
            hessian=d.hessian and on_test,
            hessian_max_samples=d.hessian_max_samples,
            boundary=d.boundary and boundary,
        )
        out["groups"].extend(diag.group_rows)
        if split == "test" and d.samples:
            out["samples"].extend(diag.sample_rows)
        out["summary"][split] = {
            "accuracy": diag.accuracy,
            "worst_group_drop": diag.worst_group_drop,
            "parity_gap": diag.parity_gap,
            "group_accuracy": list(diag.group_accuracy),
        }
    return out


# -- the cache's keys ----------------------------------------------------------------------
def artifact_key(
    exp: ExperimentConfig, seed: int, job: LinearizeJob | None = None
) -> tuple[str, str]:
    """``(kind, key)`` of the base model of ``seed``, or of ``job``'s linearized model: the
    keys :func:`run_base` and :func:`run_linearize` use (a trial's linearization settings are
    the space's with its mask mitigation)."""
    base = base_key(exp, seed, data_options(exp))
    if job is None:
        return "base", base
    settings = dataclasses.replace(exp.linearize, mask_mitigation=job.mask_mitigation)
    return "linearized", linearized_key(base, settings, job.method, job.budget, job.seed)


def in_cache(
    exp: ExperimentConfig, cache_dir: str | Path, seed: int, job: LinearizeJob | None = None
) -> bool:
    """Whether ``cache_dir`` holds the complete artifact :func:`artifact_key` names."""
    kind, key = artifact_key(exp, seed, job)
    return read_meta(artifact_dir(cache_dir, kind, key)) is not None


# -- stages -------------------------------------------------------------------------------
def run_base(
    exp: ExperimentConfig,
    seed: int,
    cache_dir: str | Path,
    *,
    device: str | torch.device = "cpu",
    progress: bool = False,
    checkpoint: Checkpointer | None = None,
) -> tuple[Artifact, bool]:
    """Train (or reuse) the all-ReLU base model for ``seed`` (:func:`~tune_linfair.pretrain.pretrain`)
    on ``device`` (the caller's: in a sweep, the one Ray gave the trial).

    Its meta holds validation/test accuracy overall and per group and the base diagnostics
    (gradients and Hessians at the base weights, which the paper's Theorem 4.4 needs).
    ``checkpoint``: training saves there every ``checkpoint.every`` epochs, and resumes from
    its last ``base`` state (:mod:`tune_linfair.checkpointing`).
    Returns ``(artifact, computed)``.
    """
    device = torch.device(device)
    _, key = artifact_key(exp, seed)

    def compute(path: Path) -> dict:
        start = time.time()
        data = load_data(exp, seed, device)
        seed_everything(seed)
        model = create_model(
            exp.model.name,
            data.num_classes,
            data.input_shape,
            exp.model.width,
            exp.model.granularity,
        ).to(device)
        result = pretrain(
            model,
            data,
            exp.base,
            seed=seed,
            progress=progress,
            checkpoint=for_stage(checkpoint, "base"),
        )
        diag = _diagnostics(exp, model, data, "base", None)
        save_checkpoint(path / "model.pt", model, {"model": _model_spec(exp, data)})
        return {
            "key": key,
            "seed": seed,
            "config": to_dict(exp),
            "history": result.history,
            "best_epoch": result.best_epoch,
            "resumed_from_epoch": result.resumed_from_epoch,
            "accuracy": {s: v["accuracy"] for s, v in diag["summary"].items()},
            "group_accuracy": {s: v["group_accuracy"] for s, v in diag["summary"].items()},
            "group_names": list(data.group_names),
            "groups": diag["groups"],
            "relu_total": total_relus(model),
            "wall_time_s": time.time() - start,
        }

    return cached(cache_dir, "base", key, compute)


def run_linearize(
    exp: ExperimentConfig,
    base: Artifact,
    method: str,
    budget: float,
    seed: int,
    cache_dir: str | Path,
    *,
    settings: LinearizeSettings | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> tuple[Artifact, bool]:
    """Linearize (or reuse) ``base`` to ``budget`` with ``method`` (snl, deepreduce, random)
    and ``settings`` (default: the space's; a trial's mask mitigation changes them).

    The student starts as a copy of the base, the teacher is the base. The output's masks
    are binary and frozen; its meta holds the linearization log (ReLU count and penalty
    coefficient over time, steps used) and accuracy right after linearization.
    """
    device = torch.device(device)
    settings = exp.linearize if settings is None else settings
    key = linearized_key(base.key, settings, method, budget, seed)

    def compute(path: Path) -> dict:
        start = time.time()
        data = load_data(exp, seed, device)
        teacher = load_artifact_model(base, device)
        student = copy.deepcopy(teacher)
        seed_everything(seed)
        log = linearize(
            method,
            student,
            teacher,
            data,
            budget,
            settings=settings,
            seed=seed,
            progress=progress,
        )
        base_acc = base.meta["group_accuracy"]
        diag = _diagnostics(exp, student, data, "linearized", base_acc, heavy=False)
        save_checkpoint(path / "model.pt", student, {"model": _model_spec(exp, data)})
        return {
            "key": key,
            "base_key": base.key,
            "method": method,
            "budget": budget,
            "seed": seed,
            "log": log,
            "relu_count": count_relus(student),
            "relu_total": total_relus(student),
            "accuracy": {s: v["accuracy"] for s, v in diag["summary"].items()},
            "groups": diag["groups"],
            "wall_time_s": time.time() - start,
        }

    return cached(cache_dir, "linearized", key, compute)


@dataclass
class TrialOutcome:
    """What :func:`run_trial` returns: the rows of the three Parquet tables (table units)
    and whether the base and linearized models were computed (False: reused)."""

    trial_row: dict
    group_rows: list[dict]
    sample_rows: list[dict]
    base_computed: bool
    linearized_computed: bool


GROUP_PERCENT_KEYS = ("accuracy", "base_accuracy", "accuracy_ci_low", "accuracy_ci_high")
"""Group-row values that the metrics API gives in percent and Parquet stores as fractions."""


def _group_row(ids: Mapping[str, str], row: Mapping[str, Any], n_train: list[int]) -> dict:
    fractions = {k: fraction(row.get(k)) for k in GROUP_PERCENT_KEYS}
    return {**ids, **row, **fractions, "n_train": n_train[int(row["group"])]}


def linearization_columns(log: Mapping[str, Any]) -> dict[str, Any]:
    """The trials columns that report how the linearization went, from its log (the
    linearized artifact's meta): ``reached_budget`` and ``threshold_count`` (SNL; None for
    other methods), ``lin_steps`` and ``lin_epochs``."""
    return {
        "reached_budget": log.get("reached_budget"),
        "threshold_count": log.get("threshold_count"),
        "lin_steps": log.get("steps"),
        "lin_epochs": log.get("epochs"),
    }


def run_trial(
    exp: ExperimentConfig,
    params: TrialParams | Mapping[str, Any],
    cache_dir: str | Path,
    trial_dir: str | Path,
    *,
    run_id: str = "",
    trial_id: str = "",
    device: str | torch.device = "cpu",
    on_epoch_end: Callable[[int, dict, torch.nn.Module], None] | None = None,
    progress: bool = False,
    checkpoint: Checkpointer | None = None,
) -> TrialOutcome:
    """One trial: base (cached) -> linearize (cached) -> fine-tune -> evaluate.

    ``params`` are the trial's parameters (:class:`~tune_linfair.trial.TrialParams`, or a
    mapping of them). The fine-tuned checkpoint, with the trial's parameters and final
    Lagrange multipliers in its record, is written to ``trial_dir/model.pt``. Validation
    metrics are the search objectives; test metrics are reported, never used for selection.
    The fine-tuned model gets the cheap diagnostics (accuracy, loss, margin per group);
    :func:`run_diagnose` adds gradients, Hessians and boundary distances later.
    ``checkpoint``: base training (when this trial computes it) and fine-tuning save their
    state there every ``checkpoint.every`` epochs and resume from it; the row's
    ``resumed_from_epoch`` says where fine-tuning resumed.
    """
    start = time.time()
    if not isinstance(params, TrialParams):
        params = TrialParams.from_config(params, exp)
    device = torch.device(device)
    seed = params.seed
    base, base_computed = run_base(
        exp, seed, cache_dir, device=device, progress=progress, checkpoint=checkpoint
    )
    lin, lin_computed = run_linearize(
        exp,
        base,
        params.method,
        params.budget,
        seed,
        cache_dir,
        settings=params.linearize_settings(exp.linearize),
        device=device,
        progress=progress,
    )
    data = load_data(exp, seed, device)
    teacher = load_artifact_model(base, device)
    student = load_artifact_model(lin, device)
    seed_everything(seed)
    result = finetune(
        student,
        teacher,
        data,
        params.finetune_settings(exp.finetune),
        seed=seed,
        on_epoch_end=on_epoch_end,
        progress=progress,
        checkpoint=for_stage(checkpoint, "finetune"),
    )
    record = {
        "model": _model_spec(exp, data),
        "params": params.as_dict(),
        "multipliers": {k: v.tolist() for k, v in result.multipliers.items()},
    }
    checkpoint = save_checkpoint(Path(trial_dir) / "model.pt", student, record)
    diag = _diagnostics(
        exp, student, data, "finetuned", base.meta["group_accuracy"], heavy=False, boundary=False
    )
    relu_count = count_relus(student)
    summary = {s: diag["summary"].get(s, {}) for s in ("val", "test")}
    measured = {
        "relu_count": relu_count,
        "relu_total": lin.meta["relu_total"],
        "relu_fraction": relu_count / lin.meta["relu_total"],
        "weight_distance": weight_distance(student, teacher),
        **pi_cost(
            relu_count,
            cost_model_for(exp.model.name, data.input_shape),
            include_linear=True,
        ),
        "checkpoint_path": str(checkpoint),
        "base_key": base.key,
        "lin_key": lin.key,
        **linearization_columns(lin.meta["log"]),
    }
    for split, values in summary.items():
        measured[f"{split}_accuracy"] = fraction(values.get("accuracy"))
        measured[f"{split}_worst_group_drop"] = values.get("worst_group_drop")
        measured[f"{split}_parity_gap"] = fraction(values.get("parity_gap"))
        measured[f"base_{split}_accuracy"] = fraction(base.meta["accuracy"].get(split))
    ids = {"run_id": run_id, "trial_id": trial_id}
    row = trial_row(
        **ids,
        exp=exp,
        params=params,
        wall_time_s=time.time() - start,
        measured=measured,
        lock_wait_s=base.lock_wait_s + lin.lock_wait_s,
        device=str(device),
        resumed_from_epoch=result.resumed_from_epoch,
    )
    groups, samples = _trial_details(ids, data, base, lin, diag)
    return TrialOutcome(row, groups, samples, base_computed, lin_computed)


def _trial_details(
    ids: Mapping[str, str],
    data: GroupedDataset,
    base: Artifact,
    lin: Artifact,
    diag: Mapping[str, Any],
) -> tuple[list[dict], list[dict]]:
    """A trial's groups rows (base, linearized, fine-tuned) and samples rows."""
    n_train = data.train.group_counts(data.num_groups)
    groups = [
        _group_row(ids, r, n_train)
        for r in base.meta["groups"] + lin.meta["groups"] + diag["groups"]
    ]
    return groups, [{**ids, **r} for r in diag["samples"]]


def run_diagnose(
    exp: ExperimentConfig,
    checkpoint: str | Path,
    cache_dir: str | Path,
    ids: Mapping[str, str],
    *,
    device: str | torch.device = "cpu",
) -> tuple[list[dict], list[dict]]:
    """The full diagnostics of a fine-tuned trial, from its checkpoint: per-group gradient
    norms and Hessian eigenvalues (where the space's ``diagnostics`` asks for them) and
    boundary distances, beside accuracy, loss and margins. Returns the trial's groups and
    samples rows, which replace the cheap ones its search trial wrote."""
    device = torch.device(device)
    student, record = load_model(checkpoint, device)
    params = TrialParams.from_config(record["params"], exp)
    base, _ = run_base(exp, params.seed, cache_dir, device=device)
    settings = params.linearize_settings(exp.linearize)
    lin, _ = run_linearize(
        exp,
        base,
        params.method,
        params.budget,
        params.seed,
        cache_dir,
        settings=settings,
        device=device,
    )
    data = load_data(exp, params.seed, device)
    diag = _diagnostics(exp, student, data, "finetuned", base.meta["group_accuracy"])
    return _trial_details(ids, data, base, lin, diag)
