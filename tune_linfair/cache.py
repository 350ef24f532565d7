"""The artifact cache: content-addressed keys, one lock per artifact, and atomic writes.

Stage outputs that many trials share live under ``CACHE/<kind>/<key>/`` (``CACHE`` is
``STORAGE/cache``, see README "Running sweeps"):

- base models under ``CACHE/base/<key>/``, key = hash(dataset, model, training recipe, seed);
- linearized models under ``CACHE/linearized/<key>/``, key = hash(base key, method, budget,
  linearization settings, seed), reused by every trial that only changes mu or lr.

An artifact directory holds ``model.pt`` and ``meta.json``; ``meta.json`` is written last, so
its presence means the artifact is complete. A file lock per key (``filelock``: an OS lock,
released by the kernel when its holder dies, so a crashed worker leaves no stale lock) makes
sure two concurrent trials never compute the same artifact. Each completed computation
appends one line to the artifact's ``computed.jsonl`` (host, process id, start and end
time), its creation record: one line means computed once, however many trials reused it.

:func:`atomic_write` is the package's one way to write a file that readers may open at any
moment (Parquet tables, checkpoints, ``meta.json``, the sweep record): a hidden temporary
file in the same directory, ``fsync``, ``os.replace``, then ``fsync`` of the directory. A
crash leaves the old file or the new one, never a partial one.

This module imports neither torch nor Ray.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from filelock import FileLock

from tune_linfair.config import ExperimentConfig, LinearizeSettings, to_dict

LOCK_TIMEOUT_S = 6 * 3600
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


# -- atomic files -------------------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    """Persist a rename (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a hidden temporary file beside ``path`` for writing; on success ``fsync`` it and
    ``os.replace`` it onto ``path``; on any exception remove it and re-raise.

    The temporary name is ``.<name>.<random>.tmp``: hidden, so Parquet readers skip it, and
    swept by a resumed sweep (:func:`tune_linfair.rundir.create_run_dir`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_json(path: str | os.PathLike[str], payload: Any) -> None:
    """``payload`` as indented JSON, written with :func:`atomic_write`."""
    with atomic_write(path, "w") as fh:
        json.dump(payload, fh, indent=1, default=float)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """``text`` written with :func:`atomic_write`."""
    with atomic_write(path, "w") as fh:
        fh.write(text)


# -- keys ---------------------------------------------------------------------------------
def stable_hash(*parts: Any, length: int = 16) -> str:
    """Hex digest of the JSON of ``parts`` (keys sorted): the artifact cache keys."""
    text = json.dumps([to_dict(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def base_key(exp: ExperimentConfig, seed: int, data_options: dict[str, Any]) -> str:
    """Cache key of a base model: dataset (not its download flag) with its *effective*
    options (``data_options``: the loader's defaults merged with the space's, so a changed
    default such as the split protocol makes a new key), model, recipe, seed."""
    data = {k: v for k, v in to_dict(exp.data).items() if k not in ("download", "options")}
    return stable_hash("base", data, dict(sorted(data_options.items())), exp.model, exp.base, seed)


def linearized_key(
    base_key: str, settings: LinearizeSettings, method: str, budget: float, seed: int
) -> str:
    """Cache key of a linearized model: base key, method, budget, the trial's linearization
    settings (mask mitigation included), seed."""
    return stable_hash("linearized", base_key, method, budget, settings, seed)


# -- artifacts ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Artifact:
    """A cached stage output: its key, directory and ``meta.json`` record, and how long the
    caller that got it waited on its lock (``lock_wait_s``, 0 when it was there already)."""

    key: str
    path: Path
    meta: dict
    lock_wait_s: float = 0.0

    @property
    def checkpoint(self) -> Path:
        return self.path / "model.pt"


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


def computations(path: Path) -> list[dict]:
    """The creation record of the artifact directory ``path``: one dict (``host``, ``pid``,
    ``started``, ``finished``, Unix seconds) per completed computation, oldest first."""
    record = path / "computed.jsonl"
    if not record.is_file():
        return []
    return [json.loads(line) for line in record.read_text().splitlines() if line.strip()]


def _record_computation(path: Path, started: float) -> None:
    """Append this process's completed computation to ``path/computed.jsonl`` (one short
    line, one ``O_APPEND`` write, ``fsync``)."""
    line = {"host": socket.gethostname(), "pid": os.getpid(), "started": started,
            "finished": time.time()}  # fmt: skip
    fd = os.open(path / "computed.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (json.dumps(line) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def read_meta(path: Path) -> dict | None:
    """The artifact's ``meta.json`` when the artifact is complete, else None."""
    meta = path / "meta.json"
    if not meta.is_file() or not (path / "model.pt").is_file():
        return None
    try:
        return json.loads(meta.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # a torn or foreign file: recompute


def cached(
    cache_dir: str | Path, kind: str, key: str, compute: Callable[[Path], dict]
) -> tuple[Artifact, bool]:
    """Return the artifact ``kind/key``, computing it under the key's lock if absent.

    ``compute(path)`` must write ``path/"model.pt"`` and return the meta record.
    Returns ``(artifact, computed)``; ``computed`` is False when it was reused. The
    artifact's ``lock_wait_s`` is the time spent waiting for another process's lock. A
    computation is recorded in ``computed.jsonl`` (:func:`computations`) just before
    ``meta.json`` marks the artifact complete.
    """
    path = artifact_dir(cache_dir, kind, key)
    meta = read_meta(path)
    if meta is not None:
        return Artifact(key, path, meta), False
    path.mkdir(parents=True, exist_ok=True)
    asked = time.monotonic()
    with FileLock(str(artifact_lock(path)), timeout=LOCK_TIMEOUT_S):
        waited = time.monotonic() - asked
        meta = read_meta(path)  # another worker may have finished it meanwhile
        if meta is not None:
            return Artifact(key, path, meta, waited), False
        started = time.time()
        meta = compute(path)
        _record_computation(path, started)
        write_json(path / "meta.json", meta)
    return Artifact(key, path, meta, waited), True
