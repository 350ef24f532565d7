"""Typed, validated settings for every section of a search space (no torch, no Ray).

A search space (``search_spaces/*.yaml``, parsed by :mod:`tune_linfair.spaces`) fixes an
:class:`ExperimentConfig` made of these sections:

- ``data`` (:class:`DataConfig`): data set name, root, download flag, loader options;
- ``model`` (:class:`ModelConfig`): registered model, width, mask granularity;
- ``base`` (:class:`PretrainSettings`): the all-ReLU base-training recipe;
- ``linearize`` (:class:`LinearizeSettings`): SNL and DeepReDuce knobs;
- ``finetune`` (:class:`FinetuneSettings`): distillation and mitigation knobs;
- ``diagnostics`` (:class:`DiagnosticsConfig`): which per-group diagnostics are computed.

Every section is a frozen dataclass validated one way, by :class:`Section`: on construction
each field is checked against its type hint (an int is accepted for a float; a list for a
tuple) and against the bounds in its metadata (``gt``, ``ge``, ``lt``, ``le``, ``choices``).
A bad value is one :class:`~tune_linfair.errors.UserError` line naming ``section.field``,
the value and what it must be; :func:`build` also refuses unknown keys, naming the valid ones.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

from tune_linfair.errors import UserError, unknown

METHODS: tuple[str, ...] = ("snl", "deepreduce", "random")
"""Linearization methods (:mod:`tune_linfair.linearize`)."""
MITIGATIONS: tuple[str, ...] = ("none", "lagrangian", "accuracy_gap", "group_dro")
"""Fine-tuning mitigations (``none`` is plain distillation, the paper's baseline)."""
MASK_MITIGATIONS: tuple[str, ...] = ("none", "lagrangian", "accuracy_gap")
"""Group terms SNL's mask training can add (the multiplier mitigations)."""
SELECTORS: tuple[str, ...] = ("accuracy", "worst_group")
"""Model selection on the validation split: overall accuracy, or minimum group accuracy."""
GRANULARITIES: tuple[str, ...] = ("pixel", "channel")
"""Mask granularity: one mask entry per activation entry, or one per channel."""


# -- the one validator --------------------------------------------------------------------
def _coerce(where: str, value: Any, hint: Any) -> Any:
    """``value`` checked against a simple type hint (and int -> float, list -> tuple)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None and len(args) < len(typing.get_args(hint)):
            return None
        errors = []
        for arg in args:
            try:
                return _coerce(where, value, arg)
            except UserError as err:
                errors.append(err)
        raise errors[0]
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise UserError(f"{where} must be a list, got {value!r}")
        (arg, *_rest) = typing.get_args(hint)
        return tuple(_coerce(where, v, arg) for v in value)
    if hint is bool:
        if not isinstance(value, bool):
            raise UserError(f"{where} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{where} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise UserError(f"{where} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise UserError(f"{where} must be a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise UserError(f"{where} must be a string, got {value!r}")
        return value
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    raise TypeError(f"{where}: unsupported type hint {hint!r}")


_BOUNDS = {
    "gt": (lambda v, b: v > b, "> {b}"),
    "ge": (lambda v, b: v >= b, ">= {b}"),
    "lt": (lambda v, b: v < b, "< {b}"),
    "le": (lambda v, b: v <= b, "<= {b}"),
}
_WORDS = {("gt", 0): "positive", ("ge", 0): "non-negative"}


def _check_bounds(where: str, value: Any, meta: typing.Mapping[str, Any]) -> None:
    if value is None:
        return
    values = value if isinstance(value, tuple) else (value,)
    for v in values:
        if "choices" in meta and v not in meta["choices"]:
            raise unknown(where, v, meta["choices"])
    for key, (ok, text) in _BOUNDS.items():
        if key in meta and not all(ok(v, meta[key]) for v in values):
            what = _WORDS.get((key, meta[key]), text.format(b=meta[key]))
            raise UserError(f"{where} must be {what}, got {value!r}")


def bounded(default: Any, **bounds: Any) -> Any:
    """A dataclass field with ``default`` and bounds (``gt``, ``ge``, ``lt``, ``le``,
    ``choices``) that :class:`Section` checks."""
    if isinstance(default, list | dict):
        raise TypeError("mutable defaults need a default_factory")
    return field(default=default, metadata=bounds)


class Section:
    """Mixin for a frozen settings dataclass: validates every field on construction.

    ``SECTION`` names the section in messages (``base.lr must be positive, got -1.0``).
    Subclasses may add cross-field checks in ``_check``.
    """

    SECTION: ClassVar[str] = "settings"

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            where = f"{self.SECTION}.{f.name}"
            value = _coerce(where, getattr(self, f.name), hints[f.name])
            _check_bounds(where, value, f.metadata)
            object.__setattr__(self, f.name, value)
        self._check()

    def _check(self) -> None:
        """Cross-field checks (none by default)."""


def build(cls: type, values: Any, where: str) -> Any:
    """Build section ``cls`` from a mapping, refusing unknown keys (named, with the valid
    ones) and bad values (:class:`Section`)."""
    values = {} if values is None else values
    if not isinstance(values, dict):
        raise UserError(f"{where} must be a mapping, got {values!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    bad = sorted(set(values) - names)
    if bad:
        raise UserError(f"unknown key {where}.{bad[0]}; valid keys: {', '.join(sorted(names))}")
    return cls(**values)


def to_dict(obj: Any) -> Any:
    """A dataclass (or nested structure) as plain JSON-compatible values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    return obj


# -- the sections -------------------------------------------------------------------------
@dataclass(frozen=True)
class DataConfig(Section):
    """Which data set, where its files are, and the loader's keyword options."""

    SECTION: ClassVar[str] = "data"
    name: str = "digits"
    root: str | None = None
    download: bool = False
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ModelConfig(Section):
    """Which registered model, its base width (None: the model's own), mask granularity."""

    SECTION: ClassVar[str] = "model"
    name: str = "resnet_mini"
    width: int | None = bounded(None, gt=0)
    granularity: str = bounded("pixel", choices=GRANULARITIES)


@dataclass(frozen=True)
class PretrainSettings(Section):
    """The all-ReLU base-training recipe (:func:`tune_linfair.pretrain.pretrain`).

    SGD (``lr`` 0.1, ``momentum`` 0.9, ``weight_decay`` 5e-4) on cross entropy, MultiStepLR
    multiplying the rate by ``gamma`` (0.1) at the fractions ``milestones`` (50%, 75%) of
    ``epochs``, as in the paper's base models (Das et al., ICML 2024, Sec. 5; He et al.'s
    CIFAR recipe). Paper scale: 160 epochs, batch 256; the defaults suit ``digits``.
    """

    SECTION: ClassVar[str] = "base"
    epochs: int = bounded(15, gt=0)
    batch_size: int = bounded(64, gt=0)
    lr: float = bounded(0.1, gt=0)
    momentum: float = bounded(0.9, ge=0, lt=1)
    weight_decay: float = bounded(5e-4, ge=0)
    milestones: tuple[float, ...] = bounded((0.5, 0.75), ge=0, le=1)
    gamma: float = bounded(0.1, ge=0)


@dataclass(frozen=True)
class LinearizeSettings(Section):
    """Every knob of the linearization methods (:func:`tune_linfair.linearize.linearize`).

    SNL (Cho et al., "Selective Network Linearization for Efficient Private Inference",
    ICML 2022): Adam at ``snl_lr`` (masks at ``snl_mask_lr`` when set, else ``snl_lr``), loss
    ``CE + T^2 * KL + c * sum|m|`` with ``T = temperature``; ``c`` starts at ``c0`` and is
    multiplied by ``c_growth`` at every ``c_every`` steps (None: once per epoch, as the
    original) whose count ``m > threshold`` is no new low, after ``warmup_checks`` such
    updates; the count is checked for the stop every ``check_every`` steps; at most
    ``max_epochs`` epochs of batches of ``batch_size`` (a safety cap: ``c`` grows
    geometrically while the count stalls, so SNL normally stops at the budget first). Keep
    ``snl_mask_lr`` at or below ``threshold``: Adam moves a mask by about its lr per step, so
    larger values make masks oscillate across the threshold and the count stalls.

    DeepReDuce (Jha et al., "DeepReDuce: ReLU Reduction for Fast Private Inference", ICML
    2021): ``deepreduce_epochs`` of SGD (``deepreduce_lr``, ``deepreduce_momentum``,
    ``deepreduce_weight_decay``, cosine) on ``lambda * CE + (1 - lambda) * T^2 * KL`` with
    ``lambda = deepreduce_lambda``, from the base weights, or fresh weights with
    ``from_scratch``.

    Fairness-aware SNL (beyond the paper): ``mask_mitigation`` adds a fine-tuning
    mitigation's per-group term to SNL's mask-training loss, ``L_KD + group term + c *
    sum|m|``, with its multipliers updated once per epoch of mask training: ``lagrangian``
    with step ``mask_mu``, ``accuracy_gap`` with tolerance ``mask_epsilon`` and step
    ``mask_dual_lr`` (:mod:`tune_linfair.mitigation`). It changes which ReLUs are kept.

    ``snl_cpu_bf16`` runs SNL's forward and backward (student and teacher) under bf16
    autocast on CPU, as training always does on CUDA: about 3x faster per step on a CPU with
    native bf16 (bench/RESULTS.md); masks, their L1 term and the ReLU count stay float32.
    """

    SECTION: ClassVar[str] = "linearize"
    snl_lr: float = bounded(1e-3, gt=0)
    snl_mask_lr: float | None = bounded(None, gt=0)
    temperature: float = bounded(4.0, gt=0)
    c0: float = bounded(1e-5, gt=0)
    c_growth: float = bounded(1.1, ge=1)
    threshold: float = bounded(1e-2, ge=0, lt=1)
    check_every: int = bounded(10, ge=1)
    c_every: int | None = bounded(None, ge=1)
    warmup_checks: int = bounded(5, ge=0)
    max_epochs: int = bounded(1000, ge=1)
    batch_size: int = bounded(128, ge=1)
    deepreduce_lambda: float = bounded(0.5, ge=0, le=1)
    deepreduce_epochs: int = bounded(10, ge=0)
    deepreduce_lr: float = bounded(1e-2, gt=0)
    deepreduce_momentum: float = bounded(0.9, ge=0, lt=1)
    deepreduce_weight_decay: float = bounded(5e-4, ge=0)
    from_scratch: bool = False
    mask_mitigation: str = bounded("none", choices=MASK_MITIGATIONS)
    mask_mu: float = bounded(0.1, ge=0)
    mask_epsilon: float = bounded(0.0, ge=0)
    mask_dual_lr: float = bounded(0.01, ge=0)
    snl_cpu_bf16: bool = False


@dataclass(frozen=True)
class FinetuneSettings(Section):
    """Fine-tuning settings (:func:`tune_linfair.finetune.finetune`).

    - ``mitigation``: one of :data:`MITIGATIONS`;
    - ``mu`` (>= 0): step of the ``lagrangian`` multipliers, in units of the KD-loss gap
      (ignored by the other mitigations);
    - ``epsilon`` (>= 0, percentage points) and ``dual_lr`` (>= 0, multiplier change per
      percentage point of violation per epoch): ``accuracy_gap``'s tolerance and step;
    - ``eta`` (>= 0): ``group_dro``'s step on the log group weights per batch;
    - ``lr`` (> 0), ``momentum`` in [0, 1), ``weight_decay`` (>= 0): SGD, cosine schedule
      over ``epochs``;
    - ``batch_size``, ``temperature`` (> 0) of the distillation;
    - ``select``: ``"accuracy"`` (validation accuracy) or ``"worst_group"`` (minimum
      per-group validation accuracy).

    Defaults follow the paper's fine-tuning (Das et al., ICML 2024, Sec. 5: lr 1e-3,
    momentum 0.9, wd 5e-4, T = 4); ``epochs`` and ``batch_size`` suit the ``digits`` data.
    """

    SECTION: ClassVar[str] = "finetune"
    mitigation: str = bounded("none", choices=MITIGATIONS)
    mu: float = bounded(0.0, ge=0)
    epsilon: float = bounded(0.0, ge=0)
    dual_lr: float = bounded(0.01, ge=0)
    eta: float = bounded(0.01, ge=0)
    lr: float = bounded(1e-3, gt=0)
    momentum: float = bounded(0.9, ge=0, lt=1)
    weight_decay: float = bounded(5e-4, ge=0)
    epochs: int = bounded(20, ge=1)
    batch_size: int = bounded(64, ge=1)
    temperature: float = bounded(4.0, gt=0)
    select: str = bounded("accuracy", choices=SELECTORS)


@dataclass(frozen=True)
class DiagnosticsConfig(Section):
    """Per-group diagnostics every trial computes on ``splits``: accuracy, loss and margins
    on each; gradient norms and Hessian top eigenvalues (the costly ones) on test only."""

    SECTION: ClassVar[str] = "diagnostics"
    splits: tuple[str, ...] = bounded(("val", "test"), choices=("val", "test"))
    gradients: bool = True
    hessian: bool = True
    hessian_max_samples: int = bounded(64, ge=1)
    boundary: bool = True
    samples: bool = True

    def _check(self) -> None:
        if "val" not in self.splits:
            raise UserError(
                f"diagnostics.splits must include val (the search objectives), got {list(self.splits)}"
            )


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything fixed across the trials of a sweep."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    base: PretrainSettings = field(default_factory=PretrainSettings)
    linearize: LinearizeSettings = field(default_factory=LinearizeSettings)
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "base": PretrainSettings,
    "linearize": LinearizeSettings,
    "finetune": FinetuneSettings,
    "diagnostics": DiagnosticsConfig,
}
"""The sections of :class:`ExperimentConfig`, by their name in a search space."""


def build_experiment(raw: typing.Mapping[str, Any]) -> ExperimentConfig:
    """The :class:`ExperimentConfig` of a space mapping's sections (missing: defaults)."""
    sections = {name: build(cls, raw.get(name), name) for name, cls in SECTIONS.items()}
    return ExperimentConfig(**sections)
