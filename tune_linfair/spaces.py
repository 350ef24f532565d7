"""Search spaces: YAML files that fix an experiment and say what a sweep varies.

A space has the sections of :class:`~tune_linfair.config.ExperimentConfig` (``data``,
``model``, ``base``, ``linearize``, ``finetune``, ``diagnostics``) plus:

- ``search``: the trial parameters Optuna samples (:data:`~tune_linfair.trial.TRIAL_PARAMS`),
  each a constant, ``{choices: [...]}``, ``{low, high, log}`` (float) or
  ``{low, high, int: true}``;
- ``grid``: for ``--objective grid``, a list of values per trial parameter (cartesian
  product);
- ``repeats``: seeds per configuration (default 1): every configuration Optuna suggests and
  every grid point runs on seeds ``s, s+1, ..., s+repeats-1`` (``s`` = ``search.seed``, 0 by
  default); the seed is then not searched; a grid that lists ``seed`` runs those seeds
  instead;
- ``trials``, ``max_concurrent``: sweep defaults the command line may override (``trials``
  counts configurations);
- ``name``, ``description``.

The bundled spaces live in the repository's top-level ``search_spaces/`` folder, which is
installed as the package ``tune_linfair.search_spaces`` (a ``package-dir`` mapping in
``pyproject.toml``) and read with :mod:`importlib.resources`, so they are found after a
plain ``pip install`` too. Everything is read with YAML's safe loader; a malformed file or a
bad value is one :class:`~tune_linfair.errors.UserError` line.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from tune_linfair.config import ExperimentConfig, build_experiment
from tune_linfair.errors import UserError, unknown
from tune_linfair.trial import TRIAL_PARAMS, TrialParams, validate_spec, validate_value

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
    "repeats",
}


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
    repeats: int = 1

    @property
    def seeds(self) -> list[int]:
        """The seeds every configuration runs on: ``repeats`` seeds from ``search.seed``."""
        first = self.search.get("seed", 0)
        return [int(first) + i for i in range(self.repeats)] if isinstance(first, int) else []

    def grid_points(self) -> list[dict[str, Any]]:
        """The cartesian product of the grid (first key slowest), with the constants of
        ``search`` that the grid does not vary, each on the space's :attr:`seeds` unless the
        grid lists seeds itself (a configuration's seeds are adjacent points)."""
        if not self.grid:
            raise UserError(f"space {self.name!r} has no grid section for --objective grid")
        grid = dict(self.grid)
        if "seed" not in grid and self.seeds:
            grid["seed"] = self.seeds
        keys = list(grid)
        fixed = {k: v for k, v in self.search.items() if not isinstance(v, dict) and k not in keys}
        points, seen = [], set()
        for combo in itertools.product(*(grid[k] for k in keys)):
            point = {**fixed, **dict(zip(keys, combo))}
            # points that differ only in a parameter that does not apply (mu of a `none`
            # trial) are the same trial: run it once
            same = TrialParams.from_config(point, self.experiment).as_dict()
            key = tuple(sorted((k, repr(v)) for k, v in same.items()))
            if key not in seen:
                seen.add(key)
                points.append(point)
        return points


def parse_space(raw: Any, name: str = "space") -> SearchSpace:
    """Validate a search-space mapping (from YAML) into a :class:`SearchSpace`."""
    if not isinstance(raw, dict):
        raise UserError(f"search space {name!r} must be a YAML mapping, got {type(raw).__name__}")
    bad = sorted(set(raw) - _SECTIONS)
    if bad:
        raise UserError(
            f"unknown section {bad[0]!r} in {name}; valid: {', '.join(sorted(_SECTIONS))}"
        )
    experiment = build_experiment(raw)
    search = raw.get("search") or {}
    if not isinstance(search, dict):
        raise UserError("section 'search' must be a mapping of trial parameters")
    search = {k: validate_spec(k, v) for k, v in search.items()}
    grid = raw.get("grid") or {}
    if not isinstance(grid, dict):
        raise UserError("section 'grid' must be a mapping of trial parameters to lists")
    for k, values in grid.items():
        if k not in TRIAL_PARAMS:
            raise unknown("grid parameter", k, TRIAL_PARAMS)
        if not isinstance(values, list) or not values:
            raise UserError(f"grid.{k} must be a non-empty list, got {values!r}")
        for v in values:
            validate_value(k, v, f"grid.{k}")
    trials = raw.get("trials", 8)
    max_concurrent = raw.get("max_concurrent", 2)
    repeats = raw.get("repeats", 1)
    for key, value in (
        ("trials", trials),
        ("max_concurrent", max_concurrent),
        ("repeats", repeats),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{key} must be a positive integer, got {value!r}")
    if repeats > 1 and isinstance(search.get("seed"), dict):
        raise UserError(
            "repeats runs every configuration on consecutive seeds: search.seed must be a constant"
        )

    return SearchSpace(
        name=str(raw.get("name", name)),
        experiment=experiment,
        search=search,
        grid=grid,
        trials=trials,
        max_concurrent=max_concurrent,
        raw=raw,
        repeats=repeats,
    )


def bundled_spaces() -> Any:
    """The folder of the bundled spaces (an :mod:`importlib.resources` traversable)."""
    return resources.files("tune_linfair.search_spaces")


def list_spaces() -> list[str]:
    """Names of the bundled search spaces."""
    return sorted(
        p.name[: -len(".yaml")] for p in bundled_spaces().iterdir() if p.name.endswith(".yaml")
    )


def _read_yaml(text: str, where: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(
            f"malformed YAML in {where}{line}: {getattr(err, 'problem', err)}"
        ) from None


def load_space_dict(name_or_path: str) -> tuple[Any, str]:
    """Read a space by bundled name or YAML path (safe loader); return (mapping, name)."""
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") or path.exists()):
        bundled = bundled_spaces() / f"{name_or_path}.yaml"
        if not bundled.is_file():
            raise unknown("search space", name_or_path, list_spaces())
        return _read_yaml(bundled.read_text(), f"bundled space {name_or_path}"), name_or_path
    if not path.is_file():
        raise UserError(f"search space file not found: {path}")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read search space {path}: {err}") from None
    return _read_yaml(text, str(path)), path.stem


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
    """Load a bundled space by name, or a YAML file by path; apply ``--set`` overrides;
    validate."""
    raw, name = load_space_dict(name_or_path)
    if overrides:
        raw = apply_overrides(raw if isinstance(raw, dict) else {}, overrides)
    return parse_space(raw, name)
