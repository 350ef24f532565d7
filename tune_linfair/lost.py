"""Trials lost without a row: the driver writes it, the sweep says it is incomplete.

A trial writes its own ``trials`` row, ``ok`` or ``failed`` with the reason
(:mod:`tune_linfair.trainables`). A trial whose worker dies first (killed, out of memory,
cannot import) writes nothing; without this module the summary would count one trial
fewer and the command would exit 0. After the fit the driver hands Tune's trials (id,
config, error) to :func:`write_lost_rows`, which writes a ``failed`` row for each trial
that has none, its error ``lost: <Tune's error>``. The summary then counts it failed, and
:func:`check_complete` raises :class:`SweepIncomplete` (exit code :data:`INCOMPLETE_EXIT`)
while the trials table holds such a row. Plain data only: no torch, no Ray.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tune_linfair import results
from tune_linfair.errors import UserError
from tune_linfair.spaces import parse_space
from tune_linfair.trial import TrialParams, trial_row

INCOMPLETE_EXIT = 3
"""Exit code of a sweep that finished with lost trials (2: bad input, 130: interrupted)."""
LOST = "lost: "
"""Prefix of ``trials.error`` in a row the driver wrote for a trial that wrote none."""


@dataclass(frozen=True)
class TuneTrial:
    """What the driver knows of one Tune trial after the fit."""

    tune_trial_id: str
    config: Mapping[str, Any]
    error: str | None


class SweepIncomplete(Exception):
    """The sweep ran to its end, but trials were lost (their rows are ``failed``, error
    ``lost: ...``); the command exits :data:`INCOMPLETE_EXIT`."""

    def __init__(self, run_dir: Path, lost: list[str]) -> None:
        shown = ", ".join(lost[:5]) + (f" and {len(lost) - 5} more" if len(lost) > 5 else "")
        super().__init__(
            f"{len(lost)} trial(s) died before writing their results ({shown}): their rows in "
            f"{run_dir}/trials are failed with the reason; rerun them in a new sweep"
        )
        self.lost = lost


def tune_trials(result_grid: Any) -> list[TuneTrial]:
    """Every Tune trial of a fit (a ``ray.tune.ResultGrid``) as plain data. Read from the
    fit's trials (Ray 2.60: ``ResultGrid._experiment_analysis.trials``), not its results:
    a result's config is empty when the worker died before its first report."""
    out = []
    for trial in result_grid._experiment_analysis.trials:
        error = None
        if trial.status != "TERMINATED":
            err = trial.get_pickled_error() or trial.get_error()
            error = f"{type(err).__name__}: {err}" if err else f"trial {trial.status}"
        out.append(TuneTrial(str(trial.trial_id), dict(trial.config), error))
    return out


def trial_values(config: Mapping[str, Any]) -> dict:
    """The trial parameters from a Tune config (grid points arrive under ``point``, with
    their ``point_index``, which is not a parameter)."""
    return {k: v for k, v in config.get("point", config).items() if k != "point_index"}


def row_trial_id(config: Mapping[str, Any], tune_trial_id: str) -> str:
    """The Parquet row's trial id: the grid point's index for grid runs (so a rerun after a
    crash replaces its row), else Tune's trial id."""
    point = config.get("point")
    if isinstance(point, Mapping) and "point_index" in point:
        return f"grid{int(point['point_index']):05d}"
    return tune_trial_id


def _lost_row(space_raw: Mapping, run_id: str, trial_id: str, config: Mapping, error: str) -> dict:
    """A ``failed`` trials row for a trial that wrote none: its parameters when its config
    is a valid trial (it may be the reason it died), else only the ids and the error."""
    exp = parse_space(dict(space_raw)).experiment
    try:
        params = TrialParams.from_config(trial_values(config), exp)
    except (UserError, ValueError, TypeError, KeyError):
        row = dict.fromkeys(results.TRIALS_COLUMNS)
        row.update(
            run_id=run_id,
            trial_id=trial_id,
            status="failed",
            error=error[:2000],
            finished_at=dt.datetime.now(dt.UTC),
        )
        return row
    return trial_row(
        run_id=run_id, trial_id=trial_id, exp=exp, params=params, wall_time_s=math.nan, error=error
    )


def write_lost_rows(
    run_dir: str | Path, tune_trials: Iterable[TuneTrial], space_raw: Mapping, run_id: str
) -> list[str]:
    """Write a ``failed`` row (error ``lost: <Tune's error>``) for every Tune trial of the
    fit that has no trials row; returns their trial ids. A trial Tune saw end without an
    error wrote its row; one without a row and without an error still gets one."""
    written = []
    for t in tune_trials:
        trial_id = row_trial_id(t.config, t.tune_trial_id)
        if results.read_trial_row(run_dir, trial_id) is not None:
            continue
        reason = t.error or "the trial ended without writing its row"
        error = LOST + " ".join(reason.split())
        row = _lost_row(space_raw, run_id, trial_id, t.config, error)
        results.write_trial(run_dir, row, [], [])
        written.append(trial_id)
    return written


def lost_trial_ids(trials: pd.DataFrame) -> list[str]:
    """Trial ids of the rows the driver wrote for lost trials (error ``lost: ...``)."""
    error = trials["error"].astype("string").fillna("")
    return sorted(trials.loc[error.str.startswith(LOST), "trial_id"].astype(str))


def check_complete(run_dir: str | Path) -> None:
    """Raise :class:`SweepIncomplete` when the run's trials table holds lost trials."""
    lost = lost_trial_ids(results.load_trials(run_dir))
    if lost:
        raise SweepIncomplete(Path(run_dir), lost)
