"""Shared test setup: small thread counts (2-core CI box), Ray settings for tests."""

import os

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TUNE_STATE_REFRESH_PERIOD", "0.1")

import torch  # noqa: E402

torch.set_num_threads(2)
