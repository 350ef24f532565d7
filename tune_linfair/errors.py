"""Errors a user can cause.

A :class:`UserError` carries one line that names the bad value and, where there are any, the
valid choices. Command-line entry points print it and exit with code 2 (no traceback).
"""

from __future__ import annotations

from collections.abc import Iterable


class UserError(Exception):
    """A mistake in input (name, path, budget, YAML, resources): one clear line, exit code 2."""


def unknown(kind: str, value: object, choices: Iterable[str]) -> UserError:
    """Build the standard 'unknown X' error naming the valid choices."""
    return UserError(f"unknown {kind} {value!r}; choose one of: {', '.join(sorted(choices))}")


class BudgetUnreachable(UserError):
    """A ReLU budget that a method cannot meet (e.g. below every DeepReDuce configuration):
    the trials asking for it fail, the others of a sweep can still run."""
