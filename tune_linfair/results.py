"""Parquet results of a sweep: explicit schemas, atomic per-trial writers, loaders.

A run directory ``RUN`` holds three Parquet datasets, one file per trial in each::

    RUN/trials/<trial_id>.parquet    one row per trial (configuration, objectives, cost)
    RUN/groups/<trial_id>.parquet    one row per trial x stage x split x group
    RUN/samples/<trial_id>.parquet   one row per trial x stage x split x sample

Units (the convention of :mod:`tune_linfair.trial`, repeated in every column's description).
Accuracies are fractions in [0, 1]; a *relative drop* is in percent,
``100 * (acc_base_a - acc_a) / acc_base_a`` (Das et al., ICML 2024, the group drop of
Figs. 1/6); the worst-group drop is the max of that over groups; the parity gap is
``max_a acc_a - min_a acc_a`` (a fraction, like accuracy). ReLU counts are per image.

Atomicity. :func:`write_trial` writes each file with :func:`tune_linfair.cache.atomic_write`
(a hidden temporary file in the same directory, ``fsync``, ``os.replace`` onto
``<trial_id>.parquet``, ``fsync`` of the directory): a crash leaves either the old file or
the new one, never a partial one, and rewriting a trial (a resumed sweep) replaces its rows
instead of duplicating them. Groups and samples are written before the trials row, so a trials row
implies its details exist. Readers (pyarrow datasets, ``pd.read_parquet(dir)``) skip
hidden files, hence never see a temporary file.

The column lists (``TRIALS_SCHEMA``, ``GROUPS_SCHEMA``, ``SAMPLES_SCHEMA``, in
:mod:`tune_linfair.schemas`) carry a
description of every column in the field metadata; :func:`describe` renders them as the
Markdown tables of the README. Every column is nullable except the ids ``run_id`` and
``trial_id``. The loaders return nullable pandas dtypes for integers (``Int64``) and
flags (``boolean``) so a missing value never silently turns a count into a float.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from tune_linfair.aggregate import CONFIGS_SCHEMA
from tune_linfair.cache import atomic_write
from tune_linfair.errors import UserError
from tune_linfair.pareto import pareto_mask
from tune_linfair.trial import OBJECTIVES

__all__ = [
    "ALL_TABLES",
    "GROUPS_COLUMNS",
    "GROUPS_SCHEMA",
    "SAMPLES_COLUMNS",
    "SAMPLES_SCHEMA",
    "STAGES_COLUMNS",
    "STAGES_SCHEMA",
    "TABLES",
    "TRIALS_COLUMNS",
    "TRIALS_SCHEMA",
    "describe",
    "load_groups",
    "load_samples",
    "load_stages",
    "load_table",
    "load_trials",
    "read_trial_row",
    "trial_file",
    "write_stage",
    "write_trial",
]

from tune_linfair.schemas import (  # noqa: F401  (re-exported)
    _F,
    _IDS,
    ALL_TABLES,
    GROUPS_COLUMNS,
    GROUPS_SCHEMA,
    SAMPLES_COLUMNS,
    SAMPLES_SCHEMA,
    STAGES_COLUMNS,
    STAGES_SCHEMA,
    TABLES,
    TRIALS_COLUMNS,
    TRIALS_SCHEMA,
)


def describe(table: str | None = None) -> str:
    """Markdown tables (column, type, description) of one table or of all five (the
    per-trial tables, ``stages`` and :data:`tune_linfair.aggregate.CONFIGS_SCHEMA`).

    The README's "Parquet tables" section embeds this text (tests/test_results.py checks it
    is current).
    """
    schemas = {"configs": CONFIGS_SCHEMA, **ALL_TABLES}
    names = [table] if table is not None else list(schemas)
    out: list[str] = []
    for name in names:
        if name not in schemas:
            raise ValueError(f"unknown table {name!r}; choose one of: {', '.join(schemas)}")
        out += [f"### `{name}`", "", "| column | type | description |", "| --- | --- | --- |"]
        for f in schemas[name]:
            doc = (f.metadata or {}).get(b"description", b"").decode().replace("|", "\\|")
            typ = ("float64" if f.type == _F else str(f.type)) + (
                "" if f.nullable else ", not null"
            )
            out.append(f"| `{f.name}` | {typ} | {doc} |")
        out.append("")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------
# writing


def _is_missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, float | np.floating) and math.isnan(value)


def _coerce(value: Any, typ: pa.DataType, column: str) -> Any:
    """Convert one Python/numpy value to the schema type; ValueError when impossible."""
    if _is_missing(value):
        return None  # NaN is stored as null: one representation of "no value"
    if pa.types.is_floating(typ):
        if isinstance(value, bool | np.bool_):
            raise ValueError(f"column {column!r}: expected a number, got bool {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"column {column!r}: expected a number, got {value!r}") from None
    if pa.types.is_integer(typ):
        if isinstance(value, bool | np.bool_):
            raise ValueError(f"column {column!r}: expected an integer, got bool {value!r}")
        if isinstance(value, int | np.integer):
            return int(value)
        if isinstance(value, float | np.floating) and float(value).is_integer():
            return int(value)
        raise ValueError(f"column {column!r}: expected an integer, got {value!r}")
    if pa.types.is_boolean(typ):
        if isinstance(value, bool | np.bool_) or value in (0, 1):
            return bool(value)
        raise ValueError(f"column {column!r}: expected a bool, got {value!r}")
    if pa.types.is_string(typ):
        if isinstance(value, Mapping | list | tuple):
            return json.dumps(value, sort_keys=True, default=str)
        return str(value)
    if pa.types.is_timestamp(typ):
        if isinstance(value, int | float | np.integer | np.floating):
            return dt.datetime.fromtimestamp(float(value), tz=dt.UTC)
        ts = pd.Timestamp(value)
        if ts.tzinfo is None:
            raise ValueError(f"column {column!r}: timestamp {value!r} has no time zone")
        return ts.tz_convert("UTC").to_pydatetime()
    raise TypeError(f"unsupported type {typ} for column {column!r}")


def _table(name: str, rows: Sequence[Mapping[str, Any]], ids: Mapping[str, str]) -> pa.Table:
    """Validate ``rows`` against ``TABLES[name]`` and build the Arrow table.

    Every row must have exactly the schema's columns (ValueError otherwise: a programming
    error, not a user one) and the same ``run_id``/``trial_id`` as the trial.
    """
    schema = ALL_TABLES[name]
    expected = set(schema.names)
    columns: dict[str, list[Any]] = {c: [] for c in schema.names}
    for i, row in enumerate(rows):
        keys = set(row)
        if keys != expected:
            missing = sorted(expected - keys)
            extra = sorted(keys - expected)
            raise ValueError(f"{name} row {i}: missing columns {missing}, unknown keys {extra}")
        for key, want in ids.items():
            if row[key] != want:
                raise ValueError(f"{name} row {i}: {key} {row[key]!r} != trial's {want!r}")
        for f in schema:
            try:
                columns[f.name].append(_coerce(row[f.name], f.type, f.name))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{name} row {i}: {exc}") from exc
    arrays = [pa.array(columns[f.name], type=f.type) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def _check_trial_id(trial_id: Any) -> str:
    """A trial id must be a usable, visible file name (pyarrow skips names with . or _)."""
    if not isinstance(trial_id, str) or not trial_id:
        raise ValueError(f"trial_id must be a non-empty string, got {trial_id!r}")
    if trial_id[0] in "._" or any(c in trial_id for c in '/\\:*?"<>|\0'):
        raise ValueError(
            f"trial_id {trial_id!r} cannot name a file: no leading '.'/'_', no path characters"
        )
    return trial_id


def trial_file(run_dir: str | os.PathLike[str], table: str, trial_id: str) -> Path:
    """Path of one trial's file: ``RUN/<table>/<trial_id>.parquet``."""
    if table not in ALL_TABLES:
        raise ValueError(f"unknown table {table!r}; choose one of: {', '.join(ALL_TABLES)}")
    return Path(run_dir) / table / f"{_check_trial_id(trial_id)}.parquet"


def write_trial(
    run_dir: str | os.PathLike[str],
    trial_row: Mapping[str, Any],
    group_rows: Sequence[Mapping[str, Any]],
    sample_rows: Sequence[Mapping[str, Any]],
) -> None:
    """Atomically write (or replace) one trial's rows in ``RUN/{groups,samples,trials}``.

    Each dict must hold exactly its table's columns (``None`` for a missing value); values
    are coerced to the schema types (ints that are whole floats are accepted, dicts become
    JSON strings, NaN is stored as null, timestamps must carry a time zone). Groups and samples are written first
    and the trials row last, so a trials row implies its details exist; every file is
    written even when its list is empty, so a rewrite with fewer rows leaves no stale ones.
    ValueError on a missing/extra column, an uncoercible value or ids that disagree.
    """
    trial_id = _check_trial_id(trial_row.get("trial_id"))
    ids = {"run_id": trial_row.get("run_id"), "trial_id": trial_id}
    if not isinstance(ids["run_id"], str) or not ids["run_id"]:
        raise ValueError(f"run_id must be a non-empty string, got {ids['run_id']!r}")
    tables = {
        "groups": _table("groups", group_rows, ids),
        "samples": _table("samples", sample_rows, ids),
        "trials": _table("trials", [trial_row], ids),
    }
    for name in ("groups", "samples", "trials"):  # trials last
        with atomic_write(trial_file(run_dir, name, trial_id)) as fh:
            pq.write_table(tables[name], fh, compression="zstd")


def write_stage(run_dir: str | os.PathLike[str], row: Mapping[str, Any]) -> None:
    """Atomically write (or replace) one phase run's row, ``RUN/stages/<trial_id>.parquet``
    (:data:`STAGES_SCHEMA`); a rerun of the same phase run replaces it."""
    trial_id = _check_trial_id(row.get("trial_id"))
    table = _table("stages", [row], {"run_id": row.get("run_id"), "trial_id": trial_id})
    with atomic_write(trial_file(run_dir, "stages", trial_id)) as fh:
        pq.write_table(table, fh, compression="zstd")


# ---------------------------------------------------------------------------------------
# reading


def _types_mapper(typ: pa.DataType) -> Any:
    """Nullable pandas dtypes for ints and bools; pandas' defaults otherwise."""
    if pa.types.is_integer(typ):
        return pd.Int64Dtype()
    if pa.types.is_boolean(typ):
        return pd.BooleanDtype()
    return None


def load_table(run_dir: str | os.PathLike[str], table: str) -> pd.DataFrame:
    """Read ``RUN/<table>/*.parquet`` with the explicit schema into a DataFrame.

    UserError (one line) when the directory holds no such files or a file is not one of
    ours (a foreign or corrupt Parquet file, ids missing).
    """
    if table not in ALL_TABLES:
        raise ValueError(f"unknown table {table!r}; choose one of: {', '.join(ALL_TABLES)}")
    run = Path(run_dir)
    folder = run / table
    files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    files = [f for f in files if not f.name.startswith((".", "_"))]
    if not files:
        raise UserError(
            f"no {table} under {folder}: is this a tune_linfair run directory?"
            if run.is_dir()
            else f"run directory {run} does not exist"
        )
    schema = ALL_TABLES[table]
    try:
        data = pads.dataset([str(f) for f in files], schema=schema, format="parquet").to_table()
    except (pa.ArrowException, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(
            f"{folder} holds a file that is not a tune_linfair {table} table: {first}"
        ) from None
    if any(data.column(c).null_count for c in _IDS):
        raise UserError(f"{folder} holds rows without run_id/trial_id: not a tune_linfair table")
    return data.to_pandas(types_mapper=_types_mapper)


def load_trials(run_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """All trials rows, sorted by ``finished_at`` then ``trial_id``, plus a ``pareto`` column.

    ``pareto`` is True for the rows with ``status == "ok"``, not marked infeasible
    (``feasible`` False: ``--max-accuracy-drop``) and finite objectives that no
    other such row dominates on (val_accuracy max, val_worst_group_drop min, relu_count
    min) (see :data:`tune_linfair.trial.OBJECTIVES` and :func:`tune_linfair.pareto.pareto_mask`).
    """
    df = load_table(run_dir, "trials")
    df = df.sort_values(["finished_at", "trial_id"], na_position="last", kind="stable")
    df = df.reset_index(drop=True)
    ok = (df["status"] == "ok").fillna(False).to_numpy(dtype=bool)
    ok = ok & df["feasible"].fillna(True).to_numpy(dtype=bool)  # --max-accuracy-drop
    cols = [o.name for o in OBJECTIVES]
    pts = df.loc[ok, cols].astype("float64").to_numpy(na_value=np.nan)
    flag = np.zeros(len(df), dtype=bool)
    flag[np.flatnonzero(ok)] = pareto_mask(pts, [o.mode == "max" for o in OBJECTIVES])
    df["pareto"] = flag
    return df


def load_groups(run_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """All groups rows (trial x stage x split x group); see :data:`GROUPS_SCHEMA`."""
    return load_table(run_dir, "groups")


def load_samples(run_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """All samples rows (trial x stage x split x sample); see :data:`SAMPLES_SCHEMA`."""
    return load_table(run_dir, "samples")


def load_stages(run_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """All phase runs (base, linearize, search, diagnose), in finishing order; see
    :data:`STAGES_SCHEMA`."""
    df = load_table(run_dir, "stages")
    return df.sort_values(["finished_at", "trial_id"], kind="stable").reset_index(drop=True)


def read_trial_row(run_dir: str | os.PathLike[str], trial_id: str) -> dict[str, Any] | None:
    """The stored trials row of ``trial_id`` as a dict (nulls as None), or None if absent.

    A resumed sweep uses it to skip trials that already finished: the file exists only
    once the whole trial (groups and samples included) was written.
    """
    path = trial_file(run_dir, "trials", trial_id)
    if not path.is_file():
        return None
    rows = pq.read_table(path, schema=TRIALS_SCHEMA).to_pylist()
    return rows[0] if rows else None
