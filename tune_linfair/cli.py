"""The console entry point ``tune-linfair``, beside ``python -m tune_linfair.search``.

    tune-linfair search [OPTIONS]     the sweep (every option of python -m tune_linfair.search)
    tune-linfair summary RUN          print a finished sweep's summary again, from its Parquet

Errors a user can cause end with one ``error: ...`` line and exit code 2, as in the sweep;
run as a program (:func:`run_program`), that line stays the last one on stderr.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from tune_linfair.errors import UserError

USAGE = "usage: tune-linfair {search,summary} ...  (tune-linfair search --help)"
ERROR_EXIT = 2


def run_program(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run ``main(argv)`` as this process's command; return its exit code.

    After an error exit (code 2, its ``error: ...`` line printed, by us or by argparse),
    stderr is flushed and then pointed at /dev/null, at the file-descriptor level, for the
    rest of the process: a warning written later (a library's atexit handler, a
    background thread, a native logger at interpreter shutdown) cannot follow the error
    line, which stays the last one the user sees. Only for a real command: called
    in-process (tests, notebooks), ``main`` is used directly and nothing is redirected.
    """
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse's own errors and --help
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    if code == ERROR_EXIT:
        sys.stdout.flush()
        sys.stderr.flush()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
    return code


def main(argv: list[str] | None = None) -> int:
    """The ``tune-linfair`` command: ``argv`` None reads ``sys.argv`` and runs as the
    process's program (:func:`run_program`); a list runs in-process."""
    if argv is None:
        return run_program(main, sys.argv[1:])
    args = list(argv)
    if not args or args[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "search":
        from tune_linfair import search

        return search.main(rest)
    if command == "summary":
        if len(rest) != 1 or rest[0].startswith("-"):
            print("error: tune-linfair summary takes one run directory", file=sys.stderr)
            return 2
        from tune_linfair.summary import summarize

        try:
            summarize(Path(rest[0]))
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    print(f"error: unknown command {command!r}; {USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
