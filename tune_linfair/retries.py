"""A sweep's in-trial checkpoints and retries: ``--checkpoint-every`` and ``--max-failures``.

Base training and fine-tuning save their full state as a Ray Tune checkpoint every
``--checkpoint-every`` epochs (:mod:`tune_linfair.checkpointing`,
:class:`tune_linfair.trainables.TuneCheckpointer`). A trial whose worker process dies (killed,
out of memory, a node lost) is retried by Tune up to ``--max-failures`` times and continues
from its last checkpoint; so does every unfinished trial of a ``--resume`` after the driver
was killed. A trial that failed for a reason of its own (a NaN loss, an
unreachable budget) has written its ``failed`` row and is not retried
(:class:`tune_linfair.trainables.NoRetryOfRecordedFailures`).

Neither option is part of any cache key or of the results: they change where a trial
resumes, not what it computes. Torch-free and Ray-free: the command line is parsed here;
:func:`tune_linfair.trainables.fault_tolerance` builds Tune's configuration from it.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from tune_linfair.errors import UserError

CHECKPOINT_EVERY = 5
"""Default epochs between checkpoints (bench/RESULTS.md: the overhead on the main job)."""
MAX_FAILURES = 1
"""Default retries of a trial whose worker died."""
CHECKPOINTS_KEPT = 2
"""Tune checkpoints kept per trial (the latest ones; a trial resumes from the newest)."""


def add_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--checkpoint-every`` and ``--max-failures`` (None when not given, so a resumed
    sweep can take its recorded values)."""
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        metavar="EPOCHS",
        help=f"save a trial's training state every EPOCHS epochs, 0 never "
        f"(default {CHECKPOINT_EVERY}; a resumed sweep keeps its own)",
    )
    parser.add_argument(
        "--max-failures",
        type=int,
        metavar="N",
        help=f"retries of a trial whose worker died, from its last checkpoint "
        f"(default {MAX_FAILURES})",
    )


def settle(args: argparse.Namespace, recorded: Mapping[str, Any] | None) -> argparse.Namespace:
    """``args`` with both options decided: given, else the resumed sweep's ``recorded``
    value, else the default. A ``--max-failures`` that differs from a resumed sweep's is
    refused (Tune restores the sweep with its own). Raises ``UserError`` on a negative value."""
    recorded = recorded or {}
    values = vars(args).copy()
    for name, default in (("checkpoint_every", CHECKPOINT_EVERY), ("max_failures", MAX_FAILURES)):
        flag = "--" + name.replace("_", "-")
        given, saved = values.get(name), recorded.get(name)
        if given is not None and given < 0:
            raise UserError(f"{flag} must be 0 or more, got {given}")
        if name == "max_failures" and given is not None and saved is not None and given != saved:
            raise UserError(
                f"--resume keeps the sweep's {flag} {saved} (Ray Tune restores it); drop {flag}"
            )
        values[name] = given if given is not None else saved if saved is not None else default
    return argparse.Namespace(**values)
