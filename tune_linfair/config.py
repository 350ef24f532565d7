"""Typed, validated experiment configuration, built from YAML search spaces.

A search space file (``search_spaces/*.yaml``) has these sections, each refusing unknown
keys with a one-line :class:`~tune_linfair.errors.UserError`:

- ``data``: ``name``, ``root``, ``download``, ``options`` (the loader's keyword options);
- ``model``: ``name``, ``width``, ``granularity``;
- ``base``: base training (DESIGN.md section 5: SGD lr 0.1, momentum 0.9, wd 5e-4,
  MultiStepLR x0.1 at 50% and 75% of the epochs);
- ``linearize``: :class:`~tune_linfair.linearize.LinearizeSettings` fields;
- ``finetune``: :class:`~tune_linfair.finetune.FinetuneSettings` fields not searched;
- ``diagnostics``: which per-group diagnostics every trial computes;
- ``search``: the trial parameters Optuna samples, each ``{choices: [...]}``,
  ``{low, high, log}`` (float) or ``{low, high, int: true}``, or a constant;
- ``grid``: for ``--objective grid``, a list of values per trial parameter (cartesian
  product);
- ``trials``, ``max_concurrent``: sweep defaults that the command line may override.

Trial parameters (the keys of ``search`` and ``grid``) are :data:`TRIAL_PARAMS`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tune_linfair.errors import UserError, unknown

TRIAL_PARAMS = ("method", "budget", "mitigation", "mu", "epsilon", "lr", "seed")
"""What a trial varies. Everything else is fixed by the space (or ``--set``)."""


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, where its files are, and the loader's options."""

    name: str = "digits"
    root: str | None = None
    download: bool = False
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ModelConfig:
    """Which registered model, its base width (None: the paper's), mask granularity."""

    name: str = "resnet_mini"
    width: int | None = None
    granularity: str = "pixel"


@dataclass(frozen=True)
class BaseConfig:
    """All-ReLU base training (DESIGN.md section 5). Paper scale: 160 epochs, batch 256."""

    epochs: int = 15
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1

    def __post_init__(self) -> None:
        _positive(self, "epochs", "batch_size", "lr", section="base")
        _non_negative(self, "momentum", "weight_decay", "gamma", section="base")


@dataclass(frozen=True)
class DiagnosticsConfig:
    """Per-group diagnostics every trial computes on ``splits`` (DESIGN.md section 6)."""

    splits: tuple[str, ...] = ("val", "test")
    gradients: bool = True
    hessian: bool = True
    hessian_max_samples: int = 64
    boundary: bool = True
    samples: bool = True


def _positive(obj: Any, *names: str, section: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is not None and value <= 0:
            raise UserError(f"{section}.{name} must be positive, got {value}")


def _non_negative(obj: Any, *names: str, section: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is not None and value < 0:
            raise UserError(f"{section}.{name} must be non-negative, got {value}")


def _check_type(where: str, value: Any, hint: Any) -> Any:
    """Coerce/verify ``value`` against a simple type hint; UserError naming ``where``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(where, value, arg)
            except UserError:
                continue
        raise UserError(f"{where} has the wrong type: {value!r}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise UserError(f"{where} must be a list, got {value!r}")
        (arg, *_rest) = typing.get_args(hint)
        return tuple(_check_type(where, v, arg) for v in value)
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
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise UserError(f"{where} must be a string, got {value!r}")
        return value
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    return value


def build(cls: type, values: dict | None, where: str) -> Any:
    """Build frozen dataclass ``cls`` from ``values``, refusing unknown keys and bad types."""
    values = {} if values is None else values
    if not isinstance(values, dict):
        raise UserError(f"{where} must be a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    bad = sorted(set(values) - set(fields))
    if bad:
        raise UserError(f"unknown key {where}.{bad[0]}; valid keys: {', '.join(sorted(fields))}")
    kwargs = {k: _check_type(f"{where}.{k}", v, hints[k]) for k, v in values.items()}
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    """A dataclass (or nested structure) as plain JSON-compatible values."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    return obj


def stable_hash(*parts: Any, length: int = 16) -> str:
    """Hex digest of the JSON of ``parts`` (keys sorted): the artifact cache keys."""
    text = json.dumps([to_dict(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything fixed across the trials of a sweep."""

    data: DataConfig
    model: ModelConfig
    base: BaseConfig
    linearize: Any  # LinearizeSettings
    finetune: Any  # FinetuneSettings
    diagnostics: DiagnosticsConfig


@dataclass(frozen=True)
class SearchSpace:
    """A parsed search space: the experiment, Optuna's parameters, the grid, defaults."""

    name: str
    experiment: ExperimentConfig
    search: dict[str, Any]
    grid: dict[str, list]
    trials: int
    max_concurrent: int
    raw: dict

    def grid_points(self) -> list[dict[str, Any]]:
        """The cartesian product of the grid (method-major), constants from ``search``."""
        import itertools

        if not self.grid:
            raise UserError(f"space {self.name!r} has no grid section for --objective grid")
        keys = list(self.grid)
        fixed = {k: v for k, v in self.search.items() if not isinstance(v, dict) and k not in keys}
        points = []
        for combo in itertools.product(*(self.grid[k] for k in keys)):
            point = {**fixed, **dict(zip(keys, combo))}
            points.append(point)
        return points


_SECTIONS = {
    "name",
    "description",
    "data",
    "model",
    "base",
    "linearize",
    "finetune",
    "diagnostics",
    "search",
    "grid",
    "trials",
    "max_concurrent",
}


def _validate_param(name: str, spec: Any) -> Any:
    """Check one ``search`` entry: a constant, ``{choices}``, or ``{low, high[, log, int]}``."""
    if name not in TRIAL_PARAMS:
        raise unknown("search parameter", name, TRIAL_PARAMS)
    if not isinstance(spec, dict):
        _validate_value(name, spec, f"search.{name}")
        return spec
    keys = set(spec)
    if "choices" in spec:
        if keys - {"choices"} or not isinstance(spec["choices"], list) or not spec["choices"]:
            raise UserError(f"search.{name}: 'choices' must be a non-empty list and stand alone")
        for v in spec["choices"]:
            _validate_value(name, v, f"search.{name}")
        return spec
    if not {"low", "high"} <= keys or keys - {"low", "high", "log", "int"}:
        raise UserError(
            f"search.{name} must be a constant, {{choices: [...]}} or {{low, high, log, int}}; "
            f"got keys {sorted(keys)}"
        )
    low, high = spec["low"], spec["high"]
    for v in (low, high):
        _validate_value(name, v, f"search.{name}")
    if low > high:
        raise UserError(f"search.{name}: low {low} is above high {high}")
    if spec.get("log") and low <= 0:
        raise UserError(f"search.{name}: a log range needs low > 0, got {low}")
    return spec


def _validate_value(name: str, value: Any, where: str) -> None:
    """Range checks on one value of trial parameter ``name``; messages name ``where``
    (``search.lr``, ``grid.budget``: what --set or YAML got wrong)."""
    from tune_linfair.finetune import MITIGATIONS
    from tune_linfair.linearize import METHODS

    if name == "method" and value not in METHODS:
        raise unknown("method", value, METHODS)
    if name == "mitigation" and value not in MITIGATIONS:
        raise unknown("mitigation", value, MITIGATIONS)
    if name in ("budget", "mu", "epsilon", "lr"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise UserError(f"{where} must be a number, got {value!r}")
    if name == "budget" and not (0 < value <= 1 or (isinstance(value, int) and value >= 1)):
        raise UserError(f"{where} must be a fraction in (0, 1] or a ReLU count >= 1, got {value}")
    if name in ("mu", "epsilon") and value < 0:
        raise UserError(f"{where} must be non-negative, got {value}")
    if name == "lr" and value <= 0:
        raise UserError(f"{where} must be positive, got {value}")
    if name == "seed" and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise UserError(f"{where} must be a non-negative integer, got {value!r}")


def parse_space(raw: Any, name: str = "space") -> SearchSpace:
    """Validate a search-space mapping (from YAML) into a :class:`SearchSpace`."""
    from tune_linfair.finetune import FinetuneSettings
    from tune_linfair.linearize import LinearizeSettings

    if not isinstance(raw, dict):
        raise UserError(f"search space {name!r} must be a YAML mapping, got {type(raw).__name__}")
    bad = sorted(set(raw) - _SECTIONS)
    if bad:
        raise UserError(
            f"unknown section {bad[0]!r} in {name}; valid: {', '.join(sorted(_SECTIONS))}"
        )
    experiment = ExperimentConfig(
        data=build(DataConfig, raw.get("data"), "data"),
        model=build(ModelConfig, raw.get("model"), "model"),
        base=build(BaseConfig, raw.get("base"), "base"),
        linearize=build(LinearizeSettings, raw.get("linearize"), "linearize"),
        finetune=build(FinetuneSettings, raw.get("finetune"), "finetune"),
        diagnostics=build(DiagnosticsConfig, raw.get("diagnostics"), "diagnostics"),
    )
    search = raw.get("search") or {}
    if not isinstance(search, dict):
        raise UserError("section 'search' must be a mapping of trial parameters")
    search = {k: _validate_param(k, v) for k, v in search.items()}
    grid = raw.get("grid") or {}
    if not isinstance(grid, dict):
        raise UserError("section 'grid' must be a mapping of trial parameters to lists")
    for k, values in grid.items():
        if k not in TRIAL_PARAMS:
            raise unknown("grid parameter", k, TRIAL_PARAMS)
        if not isinstance(values, list) or not values:
            raise UserError(f"grid.{k} must be a non-empty list, got {values!r}")
        for v in values:
            _validate_value(k, v, f"grid.{k}")
    trials = raw.get("trials", 8)
    max_concurrent = raw.get("max_concurrent", 2)
    for key, value in (("trials", trials), ("max_concurrent", max_concurrent)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{key} must be a positive integer, got {value!r}")
    return SearchSpace(
        name=str(raw.get("name", name)),
        experiment=experiment,
        search=search,
        grid=grid,
        trials=trials,
        max_concurrent=max_concurrent,
        raw=raw,
    )


SPACES_DIR = Path(__file__).resolve().parent.parent / "search_spaces"


def list_spaces() -> list[str]:
    """Names of the bundled search spaces."""
    return sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))


def load_space_dict(name_or_path: str) -> tuple[dict, str]:
    """Read a space by bundled name or YAML path (safe loader); return (mapping, name)."""
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") or path.exists()):
        path = SPACES_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            raise unknown("search space", name_or_path, list_spaces())
    if not path.is_file():
        raise UserError(f"search space file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(
            f"malformed YAML in {path}{where}: {getattr(err, 'problem', err)}"
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read search space {path}: {err}") from None
    return raw, path.stem


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``--set key.sub=value`` overrides (values parsed as YAML) to a copy of ``raw``.

    The key path must exist in the space or name a known field (checked when the result is
    parsed); a malformed override is a UserError.
    """
    out = json.loads(json.dumps(raw, default=str))
    for item in overrides:
        if "=" not in item:
            raise UserError(f"--set needs key=value, got {item!r}")
        key, text = item.split("=", 1)
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise UserError(f"--set {key}: cannot parse value {text!r}") from None
        parts = key.strip().split(".")
        if not all(parts):
            raise UserError(f"--set: bad key {key!r}")
        node = out
        for part in parts[:-1]:
            if node.get(part) is None:
                node[part] = {}
            if not isinstance(node[part], dict):
                raise UserError(f"--set {key}: {part!r} is not a section")
            node = node[part]
        node[parts[-1]] = value
    return out


def load_space(name_or_path: str, overrides: list[str] | None = None) -> SearchSpace:
    """Load, override and validate a search space."""
    raw, name = load_space_dict(name_or_path)
    if overrides:
        raw = apply_overrides(raw if isinstance(raw, dict) else {}, overrides)
    return parse_space(raw, name)
