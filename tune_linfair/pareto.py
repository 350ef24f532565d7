"""Pareto dominance, hypervolume and attainment, on moocore (no torch, no Ray).

Conventions. ``points`` is an ``(n, d)`` array of objective values, one row per candidate;
``maximize[k]`` says whether objective ``k`` is maximized.

* ``a`` *dominates* ``b`` iff ``a`` is at least as good in every objective and strictly
  better in one. The Pareto (non-dominated) set is every row that no other row dominates;
  exact duplicates do not dominate each other, so both stay.
* The *hypervolume* (Zitzler & Thiele 1998, "S-metric") of a set ``P`` with reference point
  ``r`` is the Lebesgue measure of the region the set dominates, bounded by ``r``. A point
  that does not strictly beat ``r`` in every objective adds nothing.
* The *empirical attainment function* of several runs' fronts (Grunert da Fonseca,
  Fonseca & Hall 2001) gives, for each point of objective space, the share of runs whose
  front attains it; its 50% level is the *median attainment surface*: what half of the
  runs (seeds) reached.

Rows containing NaN are never Pareto and never dominate nor add volume.

The computations are moocore's (López-Ibáñez et al., https://multi-objective.github.io/
moocore/), a maintained C library with Python bindings: exact hypervolume in any
dimension, non-dominance and the EAF. This module keeps the project's conventions (the
maximize flags, NaN rows, the reference point in natural units) around them.
"""

from __future__ import annotations

from collections.abc import Sequence

import moocore
import numpy as np

__all__ = ["hypervolume", "median_attainment", "normalize", "pareto_mask", "to_minimization"]


def to_minimization(points: np.ndarray, maximize: Sequence[bool]) -> np.ndarray:
    """Return a float copy of ``points`` with the maximized columns negated.

    Raises ValueError when ``points`` is not 2-D or ``maximize`` has the wrong length.
    """
    pts = np.asarray(points, dtype=float)
    if pts.ndim != 2:
        raise ValueError(f"points must be a 2-D array (n, d), got shape {pts.shape}")
    signs = np.asarray([-1.0 if m else 1.0 for m in maximize])
    if signs.shape != (pts.shape[1],):
        raise ValueError(
            f"maximize has {signs.shape[0]} entries but points have {pts.shape[1]} objectives"
        )
    return pts * signs


def pareto_mask(points: np.ndarray, maximize: Sequence[bool]) -> np.ndarray:
    """Boolean mask of the non-dominated rows of ``points`` (NaN rows: False; duplicates of
    a non-dominated row: True). An empty input gives an empty mask."""
    pts = to_minimization(points, maximize)
    mask = np.zeros(pts.shape[0], dtype=bool)
    valid = ~np.isnan(pts).any(axis=1)
    if valid.any():
        mask[valid] = moocore.is_nondominated(pts[valid], keep_weakly=True)
    return mask


def normalize(points: np.ndarray, lower: Sequence[float], upper: Sequence[float]) -> np.ndarray:
    """Affine map of each column to ``(x - lower_k) / (upper_k - lower_k)``.

    Use it to put objectives in comparable units before a hypervolume, e.g. accuracy and
    drop in percent with ``lower=0, upper=100`` and a ReLU fraction with ``0, 1``. Values
    outside ``[lower, upper]`` map outside ``[0, 1]`` (nothing is clipped). Raises
    ValueError when a bound pair is empty or lengths disagree.
    """
    pts = np.asarray(points, dtype=float)
    lo = np.asarray(lower, dtype=float)
    hi = np.asarray(upper, dtype=float)
    if pts.ndim != 2 or lo.shape != (pts.shape[1],) or hi.shape != lo.shape:
        raise ValueError(
            f"normalize: points {pts.shape}, lower {lo.shape}, upper {hi.shape} disagree"
        )
    if not np.all(hi > lo):
        raise ValueError(f"normalize: every upper must exceed lower, got {lo} / {hi}")
    return (pts - lo) / (hi - lo)


def _inside(points: np.ndarray, maximize: Sequence[bool], reference: Sequence[float]):
    """(points, reference) in minimization form, keeping the finite rows that strictly beat
    the reference in every objective."""
    pts = to_minimization(points, maximize)
    ref = to_minimization(np.asarray(reference, dtype=float)[None, :], maximize)[0]
    if np.isnan(ref).any():
        raise ValueError(f"reference point has NaN: {list(reference)}")
    pts = pts[~np.isnan(pts).any(axis=1)]
    return pts[(pts < ref).all(axis=1)], ref


def hypervolume(points: np.ndarray, maximize: Sequence[bool], reference: Sequence[float]) -> float:
    """Exact hypervolume of ``points`` w.r.t. ``reference`` (in the same units as ``points``).

    ``HV(P; r) = vol( union_{p in P} prod_k [s_k p_k, s_k r_k] )`` with ``s_k = -1`` for a
    maximized objective, ``+1`` otherwise. Points with NaN, or not strictly better than
    ``reference`` in every objective, add nothing; an empty set has volume 0.
    """
    pts, ref = _inside(points, maximize, reference)
    return float(moocore.hypervolume(pts, ref=ref)) if len(pts) else 0.0


def median_attainment(
    fronts: Sequence[np.ndarray], maximize: Sequence[bool], percentile: float = 50.0
) -> np.ndarray:
    """The ``percentile`` attainment surface of several runs' point sets (one array per
    run, e.g. per seed), in the objectives' own signs: the non-dominated points that at
    least ``percentile`` % of the runs attain. NaN rows are ignored; empty when no run has
    a finite point."""
    sets = [to_minimization(f, maximize) for f in fronts]
    sets = [s[~np.isnan(s).any(axis=1)] for s in sets]
    ids = np.concatenate([np.full(len(s), i + 1) for i, s in enumerate(sets)]) if sets else []
    if not len(ids):
        return np.zeros((0, len(maximize)))
    surface = moocore.eaf(np.concatenate(sets), ids, percentiles=[percentile])[:, :-1]
    return to_minimization(surface, maximize)
