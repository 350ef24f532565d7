"""Checkpoints: model weights (masks included) plus a JSON-serializable record.

A checkpoint is ``{"state_dict": ..., "meta": json-string}`` written atomically
(:func:`tune_linfair.cache.atomic_write`), so a crash never leaves a half-written file.
``meta["model"]`` holds the arguments of :func:`~tune_linfair.models.create_model`, so
:func:`load_model` rebuilds the model from the file alone. Files load with ``torch.load(..., weights_only=True)``: no
arbitrary pickle is executed, whatever the file holds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tune_linfair.cache import atomic_write
from tune_linfair.errors import UserError


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict[str, Any]) -> Path:
    """Write ``model``'s state dict and ``meta`` (JSON-serializable) atomically to ``path``."""
    path = Path(path)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with atomic_write(path) as f:
        torch.save({"state_dict": state, "meta": json.dumps(meta)}, f)
    return path


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read ``(state_dict, meta)`` with ``weights_only=True``; a bad file is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        return blob["state_dict"], json.loads(blob["meta"])
    except Exception as err:  # any unreadable content is the same user-facing problem
        raise UserError(f"corrupt or foreign checkpoint {path}: {type(err).__name__}") from None


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model recorded in ``meta["model"]`` and load its weights and masks."""
    from tune_linfair.models.registry import create_model

    state, meta = load_checkpoint(path)
    spec = meta.get("model")
    if not isinstance(spec, dict):
        raise UserError(f"checkpoint {path} records no model specification")
    model = create_model(**spec)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise UserError(
            f"checkpoint {path} does not fit model {spec.get('name')!r}: {str(err).splitlines()[0]}"
        ) from None
    return model.to(device), meta
