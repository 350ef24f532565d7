"""The run directory of a sweep: its layout, creation, the sweep record, resume checks.

A run directory ``RUN`` (default ``STORAGE/<space>-<objective>-<time>``) holds::

    RUN/sweep.json            the sweep record: objective, space name, run id, arguments
    RUN/space.yaml            the space the sweep runs (a resumed sweep runs it again)
    RUN/resolved_config.json  the experiment with every default filled in
    RUN/command.txt           each command that ran the sweep, one line per start
    RUN/versions.json         Python, platform and package versions
    RUN/trials/ groups/ samples/   the Parquet tables (tune_linfair.results)
    RUN/models/<trial_id>/    fine-tuned checkpoints
    RUN/optuna.journal        Optuna's study (optuna-dashboard can open it)
    RUN/tune/                 Ray Tune's experiment state

and the artifact cache lives beside it in ``STORAGE/cache`` (:mod:`tune_linfair.cache`).
``sweep.json`` marks a sweep: a directory holding one is never overwritten, only resumed.
Nothing here imports torch or Ray.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata as md
import json
import os
import platform
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tune_linfair.cache import write_json, write_text
from tune_linfair.config import to_dict
from tune_linfair.errors import UserError
from tune_linfair.spaces import SearchSpace

SWEEP_FILE = "sweep.json"
SPACE_FILE = "space.yaml"
TABLES = ("trials", "groups", "samples")


@dataclass(frozen=True)
class RunDir:
    """Where a sweep's files go: its run directory and the shared storage path."""

    path: Path
    storage: Path

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def cache(self) -> Path:
        return self.storage / "cache"

    @property
    def tune(self) -> Path:
        return self.path / "tune"

    @property
    def journal(self) -> Path:
        return self.path / "optuna.journal"


@dataclass(frozen=True)
class SweepRecord:
    """``RUN/sweep.json``: what identifies a sweep, and the arguments it started with."""

    objective: str
    space: str
    run_id: str
    created: str
    args: dict[str, Any]


def safe_name(name: str) -> str:
    """``name`` as one harmless path component: letters, digits, ``.``, ``_``, ``-`` only,
    no leading dot or dash (so ``../../evil`` becomes ``evil``). Space names come from
    YAML and ``--set``, and must never lead a run directory out of the storage path."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).lstrip("._-")
    return cleaned[:80] or "sweep"


def _check_creatable(path: Path) -> None:
    """UserError unless ``path`` exists or could be created: its nearest existing ancestor
    must be a writable directory (checked without creating anything)."""
    ancestor = path
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if ancestor == path:
        return
    if not ancestor.is_dir():
        raise UserError(f"cannot create {path}: {ancestor} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"cannot create {path}: {ancestor} is not writable")


def read_record(run_dir: str | Path) -> tuple[SweepRecord, dict]:
    """The sweep record and saved space of the sweep in ``run_dir``; one UserError line
    when there is none or it cannot be read."""
    path = Path(run_dir).expanduser().resolve()
    marker, saved_space = path / SWEEP_FILE, path / SPACE_FILE
    if not marker.is_file() or not saved_space.is_file():
        raise UserError(f"nothing to resume: {path} holds no sweep ({SWEEP_FILE} missing)")
    try:
        saved = json.loads(marker.read_text())
        raw = yaml.safe_load(saved_space.read_text())
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise UserError(f"cannot read the sweep record in {path}: {err}") from None
    if not isinstance(saved, dict) or not isinstance(raw, dict):
        raise UserError(f"{marker} is not a sweep record")
    args = saved.get("args") if isinstance(saved.get("args"), dict) else {}
    record = SweepRecord(
        objective=str(saved.get("objective")),
        space=str(saved.get("space", "space")),
        run_id=str(saved.get("run_id", path.name)),
        created=str(saved.get("created", "")),
        args=args,
    )
    return record, raw


def locate(
    storage_path: str | Path,
    run_dir: str | Path | None,
    space_name: str,
    objective: str,
    record: SweepRecord | None = None,
) -> RunDir:
    """Resolve the run directory and storage path, checking that both can be created and
    that a fresh sweep overwrites nothing. ``record`` is the sweep being resumed (its
    objective must match). Writes nothing: :func:`create_run_dir` creates RUN once Ray is
    up and has the resources, so a refused sweep leaves nothing behind."""
    storage = Path(storage_path).expanduser().resolve()
    if run_dir:
        path = Path(run_dir).expanduser().resolve()
    elif record is not None:
        raise UserError("--resume needs --run-dir: the sweep directory to continue")
    else:
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        path = storage / f"{safe_name(space_name)}-{objective}-{stamp}"
    for where, what in ((storage, "--storage-path"), (path, "run directory")):
        if where.exists() and not where.is_dir():
            raise UserError(f"{what} {where} is a file, not a directory")
        _check_creatable(where)
    marker = path / SWEEP_FILE
    if record is not None:
        if record.objective != objective:
            raise UserError(
                f"{path} holds a {record.objective!r} sweep; resume it with "
                f"--objective {record.objective}"
            )
    elif path.exists() and any(path.iterdir()):
        what = "a sweep" if marker.is_file() else "other files"
        raise UserError(
            f"run directory {path} already holds {what}; pass --resume to continue it "
            "or choose another --run-dir"
        )
    return RunDir(path, storage)


def create_run_dir(run: RunDir, resume: bool) -> None:
    """Create RUN and ``STORAGE/cache``; on resume, remove the hidden temporary files a
    killed writer may have left in the Parquet folders (readers skip them anyway)."""
    try:
        run.path.mkdir(parents=True, exist_ok=True)
        run.cache.mkdir(parents=True, exist_ok=True)
        probe = run.path / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        where = err.filename or run.path
        raise UserError(f"cannot write to {where}: {err.strerror or err}") from None
    if resume:
        for table in TABLES:
            for tmp in (run.path / table).glob(".*.tmp"):
                tmp.unlink(missing_ok=True)


def write_sweep_record(
    run: RunDir, objective: str, space: SearchSpace, args: Mapping[str, Any], command: str
) -> None:
    """Write ``sweep.json``, ``space.yaml`` and ``resolved_config.json`` once (a resumed
    sweep keeps the originals), append ``command`` to ``command.txt``, refresh
    ``versions.json``."""
    if not (run.path / SWEEP_FILE).exists():
        record = {
            "objective": objective,
            "space": space.name,
            "run_id": run.run_id,
            "created": dt.datetime.now(dt.UTC).isoformat(),
            "args": dict(args),
        }
        write_text(run.path / SWEEP_FILE, json.dumps(record, indent=1, default=str))
        write_text(run.path / SPACE_FILE, yaml.safe_dump(space.raw, sort_keys=False))
        write_json(run.path / "resolved_config.json", to_dict(space.experiment))
    with open(run.path / "command.txt", "a") as f:
        f.write(command + "\n")
    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("tune_linfair", "torch", "ray", "optuna", "pandas", "pyarrow", "numpy"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    write_json(run.path / "versions.json", versions)


def fail_orphan_optuna_trials(run_dir: Path) -> int:
    """Tell FAIL to every Optuna trial still RUNNING in ``RUN/optuna.journal`` (left by a
    killed driver; called after a resumed sweep's fit, once the reruns have told theirs)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    journal = run_dir / "optuna.journal"
    if not journal.exists():
        return 0
    storage = JournalStorage(JournalFileBackend(str(journal)))
    failed = 0
    for summary in optuna.get_all_study_summaries(storage):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
            failed += 1
    return failed
