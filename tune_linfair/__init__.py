"""tune_linfair: ReLU linearization for private inference, measured and mitigated per group.

Stages (base training, linearization, fine-tuning) are plain functions in
:mod:`tune_linfair.stages`; :mod:`tune_linfair.search` schedules them with Ray Tune and
Optuna. See README.md and docs/ARCHITECTURE.md.
"""

from tune_linfair.errors import UserError

__all__ = ["UserError"]
__version__ = "0.1.0"
