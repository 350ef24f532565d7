"""Random ReLU placement: the control that shows what data-driven placement buys.

Keeps ``budget`` ReLUs chosen uniformly at random among all linearizable ReLUs (no training,
no data): every mask entry gets an i.i.d. score from a seeded generator, and the
top-``budget`` entries by score are kept (:func:`~tune_linfair.linearize.budget.freeze_top`),
which for pixel masks is a uniformly random ``budget``-subset of the entries. With channel
masks each entry stands for H*W ReLUs and the same rule as SNL's applies: walk down the
random ranking keeping every channel that still fits, so the count is at most the budget
and less than one channel's worth below it. Same budget, same masks' shape, same freeze as
SNL; only the choice of which ReLUs survive differs.
"""

from __future__ import annotations

import torch
from torch import nn

from tune_linfair.linearize.budget import freeze_top
from tune_linfair.models.activation import linearizable_layers


def random_linearize(model: nn.Module, budget: int, seed: int = 0) -> int:
    """Freeze ``model``'s masks keeping ``budget`` uniformly random ReLUs; return the count.

    Scores are ``torch.rand`` draws from ``torch.Generator().manual_seed(seed)`` on the CPU,
    in layer order, so the same seed gives the same masks on any device.
    """
    gen = torch.Generator().manual_seed(int(seed))
    scores = [
        torch.rand(layer.mask.shape, generator=gen) for _, layer in linearizable_layers(model)
    ]
    return freeze_top(model, scores, budget)
