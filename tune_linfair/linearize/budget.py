"""ReLU budgets: resolving a user's budget to a count, and keeping exactly that many ReLUs.

A budget is a fraction of the model's linearizable ReLUs (a float in (0, 1]) or an absolute
count (an int >= 1), as in README "Budgets". Every method ends by freezing 0/1 masks; the
ones it keeps are chosen by :func:`select_entries` from a score per mask entry (SNL: the
trained mask value; the random baseline: a random permutation), so the final count equals
the budget (exactly for pixel masks; within one channel's worth for channel masks).
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import nn

from tune_linfair.errors import UserError
from tune_linfair.models.activation import linearizable_layers


def resolve_budget(budget: float | int, total: int) -> int:
    """The number of ReLUs that ``budget`` allows out of ``total``.

    - a float in (0, 1] is a fraction: ``max(1, floor(budget * total + 0.5))`` (nearest
      integer, halves rounded up);
    - an int >= 1 is an absolute count and must not exceed ``total``.

    ``budget <= 0``, a float above 1, a count above ``total`` or a non-number raise
    :class:`UserError` naming the value and the total.
    """
    if total < 1:
        raise UserError(f"model has no linearizable ReLUs (total {total}); nothing to budget")
    if isinstance(budget, bool) or not isinstance(budget, numbers.Real):
        raise UserError(
            f"ReLU budget {budget!r} is not a number; give a fraction in (0, 1] or a count "
            f"1..{total} of the model's {total} ReLUs"
        )
    if isinstance(budget, numbers.Integral):
        count = int(budget)
        if count < 1 or count > total:
            raise UserError(
                f"ReLU budget {count} is out of range; give a count 1..{total} "
                f"(the model has {total} ReLUs) or a fraction in (0, 1]"
            )
        return count
    frac = float(budget)
    if not math.isfinite(frac) or frac <= 0.0 or frac > 1.0:
        raise UserError(
            f"ReLU budget {budget!r} is out of range; give a fraction in (0, 1] or an integer "
            f"count 1..{total} (the model has {total} ReLUs)"
        )
    return max(1, min(total, math.floor(frac * total + 0.5)))


def select_entries(scores: torch.Tensor, weights: torch.Tensor, budget: int) -> torch.Tensor:
    """Boolean keep-mask over mask entries: the highest-scoring entries that fit ``budget``.

    ``scores`` and ``weights`` are 1-D and aligned; ``weights[i]`` is the number of ReLUs
    entry ``i`` stands for (1 for pixel masks, H*W for a channel mask). Entries are ranked by
    score, descending; ties keep their order in ``scores`` (earlier layer, lower index first),
    so the choice is deterministic. Walking down the ranking, an entry is kept when its
    weight still fits into the remaining budget (entries that would overshoot are skipped and
    the walk goes on). With unit weights this keeps exactly the ``budget`` largest entries;
    otherwise the kept count is at most ``budget`` and falls short of it by less than the
    smallest weight among the entries left out (less than one channel's worth of ReLUs).
    """
    if scores.shape != weights.shape or scores.dim() != 1:
        raise ValueError(
            f"scores {tuple(scores.shape)} and weights {tuple(weights.shape)} must be "
            "aligned 1-D tensors"
        )
    order = torch.sort(scores.detach().float().cpu(), descending=True, stable=True).indices
    keep = torch.zeros(scores.numel(), dtype=torch.bool)
    w = weights.cpu()
    if bool((w == 1).all()):
        keep[order[:budget]] = True
        return keep
    remaining = int(budget)
    w_list = w.tolist()
    for idx in order.tolist():
        if w_list[idx] <= remaining:
            keep[idx] = True
            remaining -= w_list[idx]
            if remaining == 0:
                break
    return keep


def freeze_top(model: nn.Module, scores: list[torch.Tensor], budget: int) -> int:
    """Freeze every linearizable mask to 0/1 keeping the top-``budget`` entries by ``scores``.

    ``scores`` holds one tensor per linearizable layer (in :func:`linearizable_layers`
    order) shaped like that layer's mask. Selection by :func:`select_entries`. Returns the
    resulting ReLU count.
    """
    layers = [layer for _, layer in linearizable_layers(model)]
    if len(scores) != len(layers):
        raise ValueError(f"got {len(scores)} score tensors for {len(layers)} layers")
    flat = torch.cat([s.detach().reshape(-1).float().cpu() for s in scores])
    weights = torch.cat(
        [
            torch.full((layer.mask.numel(),), layer.relus_per_entry(), dtype=torch.long)
            for layer in layers
        ]
    )
    keep = select_entries(flat, weights, budget)
    start = 0
    for layer in layers:
        n = layer.mask.numel()
        layer.freeze(keep[start : start + n].reshape(layer.mask.shape).float())
        start += n
    return int((weights * keep).sum())
