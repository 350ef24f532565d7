"""Ctrl-C during a sweep: a clean stop that ``--resume`` continues.

Ray Tune stops gracefully on SIGINT, saves its state, and returns from ``Tuner.fit`` as if
the sweep were done. :class:`InterruptWatch` notes the interrupt so the command can exit
130 instead of summarizing a half-run sweep; :class:`SweepInterrupted` carries the run
directory to the message ``interrupted: continue with --resume --run-dir RUN``.
"""

from __future__ import annotations

import os
from pathlib import Path


class InterruptWatch:
    """Notes a Ctrl-C (SIGINT) during ``Tuner.fit``, which Tune does not report: it stops
    gracefully, saves its state and returns as if the sweep were done.

    The SIGINT is passed on to Tune as SIGUSR1, its other stop signal (so the graceful stop
    is kept); before Tune's handler is in place, or on a second Ctrl-C, it raises
    KeyboardInterrupt as usual. Only in the main thread; a no-op elsewhere."""

    def __init__(self) -> None:
        self.seen = False
        self._saved: tuple | None = None

    def __enter__(self) -> InterruptWatch:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGUSR1"):
            env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # ours stays in place
            self._saved = (
                env,
                signal.signal(signal.SIGINT, self._on_sigint),
                signal.getsignal(signal.SIGUSR1),
            )
        return self

    def _on_sigint(self, signum, frame) -> None:
        import signal

        first, self.seen = not self.seen, True
        usr1 = signal.getsignal(signal.SIGUSR1)
        tune_listens = callable(usr1) and self._saved is not None and usr1 is not self._saved[2]
        if not (first and tune_listens):
            raise KeyboardInterrupt
        os.kill(os.getpid(), signal.SIGUSR1)

    def __exit__(self, *exc) -> None:
        import signal

        if self._saved is not None:
            env, sigint, sigusr1 = self._saved
            signal.signal(signal.SIGINT, sigint)
            signal.signal(signal.SIGUSR1, sigusr1)
            if env is None:
                os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
            else:
                os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = env


class SweepInterrupted(KeyboardInterrupt):
    """The sweep stopped before its trials finished; ``--resume --run-dir RUN`` goes on."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(str(run_dir))
        self.run_dir = run_dir
