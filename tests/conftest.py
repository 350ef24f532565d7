"""Shared test setup: one torch thread (2-core CI box), Ray settings for tests."""

import os

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TUNE_STATE_REFRESH_PERIOD", "0.1")

import torch  # noqa: E402

# One intra-op thread: with two threads on a 2-core box that runs anything else (Ray
# workers, a second test process), OpenMP spin-waiting slowed training about 15-30x.
torch.set_num_threads(1)


import importlib.util  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

FIG2_SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "synthetic_fig2.py"


@pytest.fixture(scope="module")
def fig2():
    """experiments/synthetic_fig2.py imported as a module (it is not part of the package)."""
    spec = importlib.util.spec_from_file_location("synthetic_fig2", FIG2_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
