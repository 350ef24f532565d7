"""The three stages of a study, as plain functions (no Ray): base, linearize, fine-tune.

Each stage reads and writes a content-addressed artifact cache (DESIGN.md section 7):

- base models under ``CACHE/base/<key>/``, key = hash(dataset, model, training config, seed);
- linearized models under ``CACHE/linearized/<key>/``, key = hash(base key, method, budget,
  linearization settings, seed), reused by every trial that only changes mu or lr.

An artifact directory holds ``model.pt`` (weights and masks, loadable with
``weights_only=True``) and ``meta.json`` (config, logs, per-group diagnostics); ``meta.json``
is written last, so its presence means the artifact is complete. A file lock per key
(``filelock``: an OS lock, released by the kernel when its holder dies, so a crashed worker
leaves no stale lock) makes sure two concurrent trials never compute the same artifact.

:func:`run_trial` chains base (cached) -> linearize (cached) -> fine-tune -> evaluate and
returns the rows of the Parquet tables (:mod:`tune_linfair.results`).
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import functools
import json
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

from tune_linfair.config import ExperimentConfig, stable_hash, to_dict
from tune_linfair.data import GroupedDataset, get_dataset, random_crop_flip
from tune_linfair.errors import UserError
from tune_linfair.finetune import FinetuneSettings, finetune
from tune_linfair.linearize import linearize
from tune_linfair.metrics import diagnose, pi_cost, weight_distance
from tune_linfair.models import count_relus, create_model, save_checkpoint, total_relus
from tune_linfair.models.checkpoint import load_model
from tune_linfair.train import fit, resolve_device, seed_everything

LOCK_TIMEOUT_S = 6 * 3600


@dataclass(frozen=True)
class Artifact:
    """A cached stage output: its key, directory and ``meta.json`` record."""

    key: str
    path: Path
    meta: dict

    @property
    def checkpoint(self) -> Path:
        return self.path / "model.pt"

    def load(self, device: torch.device | str = "cpu") -> torch.nn.Module:
        model, _ = load_model(self.checkpoint, device)
        return model


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


def _augment(data: GroupedDataset):
    return random_crop_flip if data.augment else None


# -- cache --------------------------------------------------------------------------------
def _read_meta(path: Path) -> dict | None:
    meta = path / "meta.json"
    if not meta.is_file() or not (path / "model.pt").is_file():
        return None
    try:
        return json.loads(meta.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # a torn or foreign file: recompute


def _write_json_atomic(path: Path, payload: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1, default=float)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def artifact_dir(cache_dir: str | Path, kind: str, key: str) -> Path:
    """``CACHE/<kind>/<key>``; ``kind`` and ``key`` must be plain names (letters, digits,
    ``_``, ``-``), so no name can lead the cache outside ``cache_dir``."""
    for what, name in (("kind", kind), ("key", key)):
        if not isinstance(name, str) or not _PLAIN_NAME.fullmatch(name):
            raise ValueError(f"artifact {what} {name!r} is not a plain name")
    return Path(cache_dir) / kind / key


def artifact_lock(path: Path) -> Path:
    """The lock file guarding the artifact directory ``path``: ``<path>.lock`` beside it."""
    return path.with_name(path.name + ".lock")


def cached(
    cache_dir: Path, kind: str, key: str, compute: Callable[[Path], dict]
) -> tuple[Artifact, bool]:
    """Return the artifact ``kind/key``, computing it under the key's lock if absent.

    ``compute(path)`` must write ``path/"model.pt"`` and return the meta record.
    Returns ``(artifact, computed)``; ``computed`` is False when it was reused.
    """
    path = artifact_dir(cache_dir, kind, key)
    meta = _read_meta(path)
    if meta is not None:
        return Artifact(key, path, meta), False
    path.mkdir(parents=True, exist_ok=True)
    with FileLock(str(artifact_lock(path)), timeout=LOCK_TIMEOUT_S):
        meta = _read_meta(path)  # another worker may have finished it meanwhile
        if meta is not None:
            return Artifact(key, path, meta), False
        meta = compute(path)
        _write_json_atomic(path / "meta.json", meta)
    return Artifact(key, path, meta), True


def base_key(exp: ExperimentConfig, seed: int) -> str:
    """Cache key of a base model: dataset (not its download flag), model, recipe, seed."""
    data = {k: v for k, v in to_dict(exp.data).items() if k != "download"}
    return stable_hash("base", data, exp.model, exp.base, seed)


def linearized_key(
    base: Artifact, exp: ExperimentConfig, method: str, budget: float, seed: int
) -> str:
    """Cache key of a linearized model: base key, method, budget, settings, seed."""
    return stable_hash("linearized", base.key, method, budget, exp.linearize, seed)


# -- stages -------------------------------------------------------------------------------
def _diagnostics(
    exp: ExperimentConfig,
    model: torch.nn.Module,
    data: GroupedDataset,
    stage: str,
    base_acc: dict[str, list[float]] | None,
    heavy: bool = True,
) -> dict[str, Any]:
    """Per-group diagnostics on the configured splits: gradient norms and Hessian
    eigenvalues only on the test split (they feed the paper's figures), accuracy, loss and
    margins on every split."""
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
            boundary=d.boundary,
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


def run_base(
    exp: ExperimentConfig,
    seed: int,
    cache_dir: str | Path,
    *,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> tuple[Artifact, bool]:
    """Train (or reuse) the all-ReLU base model for ``seed``.

    Recipe (DESIGN.md section 5): SGD (lr, momentum 0.9, wd 5e-4; masks excluded), cross
    entropy, MultiStepLR x0.1 at 50% and 75% of the epochs; the checkpoint is the epoch
    with the best validation accuracy. Its meta holds validation/test accuracy overall and
    per group and the base diagnostics (gradients and Hessians at the base weights, which
    the paper's Theorem 4.4 needs).
    """
    device = resolve_device(device)
    key = base_key(exp, seed)

    def compute(path: Path) -> dict:
        start = time.time()
        data = load_data(exp, seed, device)
        generator = seed_everything(seed)
        model = create_model(
            exp.model.name,
            data.num_classes,
            data.input_shape,
            exp.model.width,
            exp.model.granularity,
        ).to(device)
        cfg = exp.base
        params = [p for n, p in model.named_parameters() if not n.endswith(".mask")]
        optimizer = torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
        milestones = sorted({max(1, round(f * cfg.epochs)) for f in cfg.milestones})
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, cfg.gamma)

        def cross_entropy(m, batch):
            return torch.nn.functional.cross_entropy(m(batch.x), batch.y)

        result = fit(
            model,
            data.train,
            data.val,
            cross_entropy,
            optimizer,
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            generator=generator,
            scheduler=scheduler,
            augment=_augment(data),
            progress=progress,
            desc="base",
        )
        diag = _diagnostics(exp, model, data, "base", None)
        save_checkpoint(path / "model.pt", model, {"model": _model_spec(exp, data)})
        return {
            "key": key,
            "seed": seed,
            "config": to_dict(exp),
            "history": result.history,
            "best_epoch": result.best_epoch,
            "accuracy": {s: v["accuracy"] for s, v in diag["summary"].items()},
            "group_accuracy": {s: v["group_accuracy"] for s, v in diag["summary"].items()},
            "group_names": list(data.group_names),
            "groups": diag["groups"],
            "relu_total": total_relus(model),
            "wall_time_s": time.time() - start,
        }

    return cached(Path(cache_dir), "base", key, compute)


def _model_spec(exp: ExperimentConfig, data: GroupedDataset) -> dict:
    return {
        "name": exp.model.name,
        "num_classes": data.num_classes,
        "input_shape": list(data.input_shape),
        "width": exp.model.width,
        "granularity": exp.model.granularity,
    }


def run_linearize(
    exp: ExperimentConfig,
    base: Artifact,
    method: str,
    budget: float,
    seed: int,
    cache_dir: str | Path,
    *,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> tuple[Artifact, bool]:
    """Linearize (or reuse) ``base`` to ``budget`` with ``method`` (snl, deepreduce, random).

    The student starts as a copy of the base, the teacher is the base. The output's masks
    are binary and frozen; its meta holds the linearization log (ReLU count and penalty
    coefficient over time, steps used) and accuracy right after linearization.
    """
    device = resolve_device(device)
    key = linearized_key(base, exp, method, budget, seed)

    def compute(path: Path) -> dict:
        start = time.time()
        data = load_data(exp, seed, device)
        teacher = base.load(device)
        student = copy.deepcopy(teacher)
        seed_everything(seed)
        log = linearize(
            method,
            student,
            teacher,
            data,
            budget,
            settings=exp.linearize,
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

    return cached(Path(cache_dir), "linearized", key, compute)


@dataclass
class TrialOutcome:
    """What :func:`run_trial` returns: the Parquet rows and the fine-tuning history."""

    trial_row: dict
    group_rows: list[dict]
    sample_rows: list[dict]
    history: list[dict]
    base_computed: bool
    linearized_computed: bool


def finetune_settings(exp: ExperimentConfig, params: dict) -> FinetuneSettings:
    """The space's fine-tuning settings with the trial's mitigation, mu, epsilon and lr."""
    chosen = {k: params[k] for k in ("mitigation", "mu", "epsilon", "lr") if k in params}
    try:
        return dataclasses.replace(exp.finetune, **chosen)
    except TypeError as err:
        raise UserError(f"bad fine-tuning parameter: {err}") from None


def run_trial(
    exp: ExperimentConfig,
    params: dict,
    cache_dir: str | Path,
    trial_dir: str | Path,
    *,
    run_id: str = "",
    trial_id: str = "",
    device: str | torch.device | None = None,
    on_epoch_end: Callable[[int, dict, torch.nn.Module], None] | None = None,
    progress: bool = False,
) -> TrialOutcome:
    """One trial: base (cached) -> linearize (cached) -> fine-tune -> evaluate.

    ``params`` holds the trial parameters (:data:`tune_linfair.config.TRIAL_PARAMS`). The
    fine-tuned checkpoint is written to ``trial_dir/model.pt``. Validation metrics are the
    search objectives; test metrics are reported, never used for selection.
    """
    start = time.time()
    device = resolve_device(device)
    seed = int(params.get("seed", 0))
    method, budget = params["method"], params["budget"]
    base, base_computed = run_base(exp, seed, cache_dir, device=device, progress=progress)
    lin, lin_computed = run_linearize(
        exp, base, method, budget, seed, cache_dir, device=device, progress=progress
    )
    data = load_data(exp, seed, device)
    teacher = base.load(device)
    student = lin.load(device)
    settings = finetune_settings(exp, params)
    seed_everything(seed)
    result = finetune(
        student, teacher, data, settings, seed=seed, on_epoch_end=on_epoch_end, progress=progress
    )
    trial_dir = Path(trial_dir)
    checkpoint = save_checkpoint(
        trial_dir / "model.pt", student, {"model": _model_spec(exp, data), "params": params}
    )
    diag = _diagnostics(exp, student, data, "finetuned", base.meta["group_accuracy"])
    relu_count = count_relus(student)
    ids = {"run_id": run_id, "trial_id": trial_id}
    groups = [
        {**ids, **_table_units(r, GROUP_PERCENT_KEYS)}
        for r in base.meta["groups"] + lin.meta["groups"] + diag["groups"]
    ]
    samples = [{**ids, **r} for r in diag["samples"]]
    summary = diag["summary"]
    nan = math.nan
    row = {
        **ids,
        "stage": "finetuned",
        "dataset": exp.data.name,
        "model": exp.model.name,
        "width": exp.model.width,
        "method": method,
        "granularity": exp.model.granularity,
        "mitigation": settings.mitigation,
        "budget": float(budget),
        "relu_count": relu_count,
        "relu_total": lin.meta["relu_total"],
        "relu_fraction": relu_count / lin.meta["relu_total"],
        "mu": settings.mu if settings.mitigation == "lagrangian" else None,
        "epsilon": settings.epsilon if settings.mitigation == "accuracy_gap" else None,
        "lr": settings.lr,
        "epochs": settings.epochs,
        "seed": seed,
        "val_accuracy": summary.get("val", {}).get("accuracy", nan),
        "test_accuracy": summary.get("test", {}).get("accuracy", nan),
        "val_worst_group_drop": summary.get("val", {}).get("worst_group_drop", nan),
        "test_worst_group_drop": summary.get("test", {}).get("worst_group_drop", nan),
        "val_parity_gap": summary.get("val", {}).get("parity_gap", nan),
        "test_parity_gap": summary.get("test", {}).get("parity_gap", nan),
        "base_val_accuracy": base.meta["accuracy"].get("val", nan),
        "base_test_accuracy": base.meta["accuracy"].get("test", nan),
        "weight_distance": weight_distance(student, teacher),
        **pi_cost(relu_count),
        "wall_time_s": time.time() - start,
        "status": "ok",
        "error": None,
        "checkpoint_path": str(checkpoint),
        "base_key": base.key,
        "lin_key": lin.key,
        "config_json": json.dumps({"params": params, "experiment": to_dict(exp)}, default=str),
        "finished_at": datetime.datetime.now(datetime.UTC),
    }
    row = _table_units(row, TRIAL_PERCENT_KEYS)
    return TrialOutcome(row, groups, samples, result.history, base_computed, lin_computed)


# Stages and metrics work in percent; the Parquet tables store accuracies and parity gaps as
# fractions in [0, 1] and relative drops in percent (see tune_linfair.results).
GROUP_PERCENT_KEYS = ("accuracy", "base_accuracy")
TRIAL_PERCENT_KEYS = (
    "val_accuracy",
    "test_accuracy",
    "val_parity_gap",
    "test_parity_gap",
    "base_val_accuracy",
    "base_test_accuracy",
)


def _table_units(row: dict, percent_keys: tuple[str, ...]) -> dict:
    out = dict(row)
    for key in percent_keys:
        if out.get(key) is not None:
            out[key] = float(out[key]) / 100.0
    return out
