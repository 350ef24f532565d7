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


# -- one Ray instance for the sweeps that need no fresh one -------------------------------
@pytest.fixture(scope="module")
def ray_address():
    """A local Ray instance shared by a test module's sweeps (``--address``): ``ray.init``
    costs 3-10 s on a 2-core box. Sweeps whose driver is killed start their own."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
