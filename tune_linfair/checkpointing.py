"""In-training checkpoints: what the one training loop saves every N epochs and resumes from.

:func:`tune_linfair.train.fit` takes an optional :class:`Checkpointer`, a plain object with
``every`` (epochs between saves; 0 never saves), ``restore()`` and ``save(state, epoch)``.
Every ``every`` epochs the loop hands it the full training state (:func:`training_state`:
model, optimizer, scheduler, the loss's multipliers or group weights, the torch / CUDA /
NumPy / Python RNG states and the batch-order generator, the epoch, the history and the
best-epoch tracking); at the start it asks ``restore()`` and, given a state, continues with
the next epoch (:func:`load_training_state`). A resumed run is the uninterrupted run: the
same batches, the same updates, the same final weights (bit for bit on CPU;
tests/test_checkpointing.py).

Nothing here knows Ray. :class:`DirectoryCheckpointer` keeps the state in a folder (stages
run without Ray, e.g. from a notebook); the Ray Tune adapter,
:class:`tune_linfair.trainables.TuneCheckpointer`, reports the same state as a Tune
checkpoint and restores from ``tune.get_checkpoint()``. :class:`StageCheckpointer` lets one
checkpointer serve several stages of a trial (base training, then fine-tuning): each stage
only resumes from its own states. States are written by :func:`save_state` and read with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import copy
import json
import math
import random
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from tune_linfair.cache import atomic_write

STATE_FILE = "state.pt"
META_FILE = "meta.json"


class Checkpointer(Protocol):
    """Where the training loop saves its state every ``every`` epochs and resumes from."""

    every: int

    def restore(self) -> dict[str, Any] | None:
        """The last saved state, or None to start from epoch 0."""

    def save(self, state: dict[str, Any], epoch: int) -> None:
        """Keep ``state``, saved after the (0-based) ``epoch``. Its tensors are the live
        ones (the model's, the optimizer's): write or copy them before returning."""


def checkpoint_due(checkpoint: Checkpointer | None, epoch: int) -> bool:
    """Whether the loop saves after ``epoch`` (0-based): every ``every``-th epoch."""
    return checkpoint is not None and checkpoint.every > 0 and (epoch + 1) % checkpoint.every == 0


# -- RNG states -----------------------------------------------------------------------------
def rng_state(generator: torch.Generator | None) -> dict[str, Any]:
    """Every random state training draws from: torch (CPU and each CUDA device), NumPy,
    Python's ``random`` and the loop's batch-order ``generator``. Tensors and plain Python
    only, so ``torch.load(weights_only=True)`` reads it. CUDA states only once CUDA is in use
    (before that nothing drew from them, and reading them would start a context per GPU)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": random.getstate(),
        "generator": None if generator is None else generator.get_state(),
    }


def set_rng_state(state: dict[str, Any], generator: torch.Generator | None) -> None:
    """Restore what :func:`rng_state` captured (CUDA states only when the device count
    matches: a state cannot move to another set of devices)."""
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if generator is not None and state.get("generator") is not None:
        generator.set_state(state["generator"])


# -- the loop's state -----------------------------------------------------------------------
def training_state(
    *,
    epoch: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    loss_fn: Any,
    generator: torch.Generator | None,
    history: list[dict[str, float]],
    steps: int,
    best_epoch: int,
    best_score: float,
    best_state: dict[str, torch.Tensor] | None,
) -> dict[str, Any]:
    """The full state of :func:`tune_linfair.train.fit` after ``epoch``. The loss's state
    (Lagrange multipliers, Group DRO weights) is kept when the loss has a ``state_dict``;
    the best epoch's weights only when they are not the current ones."""
    loss_state = getattr(loss_fn, "state_dict", None)
    return {
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": None if scheduler is None else scheduler.state_dict(),
        "loss": loss_state() if callable(loss_state) else None,
        "rng": rng_state(generator),
        "history": copy.deepcopy(history),
        "steps": steps,
        "best_epoch": best_epoch,
        "best_score": best_score,
        "best_state": None if best_epoch == epoch else best_state,
    }


def load_training_state(
    state: dict[str, Any],
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    loss_fn: Any,
    generator: torch.Generator | None,
) -> dict[str, Any]:
    """Put ``state`` (from :func:`training_state`) back into the model, optimizer, scheduler,
    loss and RNGs; return the loop's bookkeeping: ``epoch`` (the last one done),
    ``history``, ``steps``, ``best_epoch``, ``best_score``, ``best_state``."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    if state["loss"] is not None:
        loss_fn.load_state_dict(state["loss"])
    set_rng_state(state["rng"], generator)
    best_state = state["best_state"]
    if best_state is None and state["best_epoch"] == state["epoch"]:
        best_state = copy.deepcopy(model.state_dict())
    return {
        "epoch": int(state["epoch"]),
        "history": list(state["history"]),
        "steps": int(state["steps"]),
        "best_epoch": int(state["best_epoch"]),
        "best_score": float(state["best_score"]) if state["best_score"] is not None else -math.inf,
        "best_state": best_state,
    }


# -- on disk --------------------------------------------------------------------------------
def save_state(
    folder: str | Path, state: dict[str, Any], epoch: int, *, atomic: bool = False
) -> Path:
    """Write ``state`` to ``folder/state.pt`` and ``folder/meta.json`` (the epoch, the
    epochs done and the stage, for people and tests); returns the folder. ``atomic``: through
    :func:`~tune_linfair.cache.atomic_write` (a folder that is kept, not a temporary one)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if atomic:
        with atomic_write(folder / STATE_FILE) as fh:
            torch.save(state, fh)
    else:
        torch.save(state, folder / STATE_FILE)
    meta = {"epoch": epoch, "epochs_done": epoch + 1, "stage": state.get("stage")}
    (folder / META_FILE).write_text(json.dumps(meta) + "\n")
    return folder


def load_state(folder: str | Path) -> dict[str, Any]:
    """The state :func:`save_state` wrote to ``folder`` (tensors on the CPU)."""
    return torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)


class DirectoryCheckpointer:
    """A :class:`Checkpointer` that keeps the latest state in ``folder`` (no Ray): run a
    stage with it, and after a crash run it again with the same folder to continue."""

    def __init__(self, folder: str | Path, every: int = 1) -> None:
        self.folder = Path(folder)
        self.every = every

    def restore(self) -> dict[str, Any] | None:
        return load_state(self.folder) if (self.folder / STATE_FILE).exists() else None

    def save(self, state: dict[str, Any], epoch: int) -> None:
        save_state(self.folder, state, epoch, atomic=True)


class StageCheckpointer:
    """``inner`` for one named stage: saves tag the state with ``stage``, and ``restore``
    returns only a state of that stage (a trial's checkpoint from base training is not a
    fine-tuning state)."""

    def __init__(self, inner: Checkpointer, stage: str) -> None:
        self.inner = inner
        self.stage = stage
        self.every = inner.every

    def restore(self) -> dict[str, Any] | None:
        state = self.inner.restore()
        return state if state is not None and state.get("stage") == self.stage else None

    def save(self, state: dict[str, Any], epoch: int) -> None:
        self.inner.save({**state, "stage": self.stage}, epoch)


def for_stage(checkpoint: Checkpointer | None, stage: str) -> Checkpointer | None:
    """:class:`StageCheckpointer` of ``checkpoint`` (None stays None)."""
    return None if checkpoint is None else StageCheckpointer(checkpoint, stage)
