"""The console entry point ``tune-linfair``, beside ``python -m tune_linfair.search``.

    tune-linfair search [OPTIONS]     the sweep (every option of python -m tune_linfair.search)
    tune-linfair summary RUN          print a finished sweep's summary again, from its Parquet

Errors a user can cause end with one ``error: ...`` line and exit code 2, as in the sweep.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tune_linfair.errors import UserError

USAGE = "usage: tune-linfair {search,summary} ...  (tune-linfair search --help)"


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
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
