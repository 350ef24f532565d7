"""Shared test setup: one torch thread (2-core CI box), Ray settings for tests."""

import os

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TUNE_STATE_REFRESH_PERIOD", "0.1")

import torch  # noqa: E402

# One intra-op thread: with two threads on a 2-core box that runs anything else (Ray
# workers, a second test process), OpenMP spin-waiting slowed training about 15-30x.
torch.set_num_threads(1)
