"""Pareto dominance and exact hypervolume (numpy only; no torch, no Ray).

Conventions. ``points`` is an ``(n, d)`` array of objective values, one row per candidate;
``maximize[k]`` says whether objective ``k`` is maximized. Internally every objective is
turned into one to minimize (maximized columns are negated), so:

* ``a`` *dominates* ``b`` iff ``a_k <= b_k`` for every ``k`` and ``a_k < b_k`` for some ``k``
  (minimization form). The Pareto (non-dominated) set is every row that no other row
  dominates; exact duplicates do not dominate each other, so both stay.
* The *hypervolume* (Zitzler & Thiele 1998, "S-metric") of a set ``P`` with reference point
  ``r`` is the Lebesgue measure of ``union_{p in P} [p_1, r_1] x ... x [p_d, r_d]`` (in
  minimization form): the volume that the set dominates, bounded by ``r``. A point that does
  not strictly beat ``r`` in every objective adds nothing.

Rows containing NaN are never Pareto and never dominate nor add volume.

The exact hypervolume uses the "hypervolume by slicing objectives" recursion (HSO; While,
Hingston, Barone & Huband, IEEE TEVC 10(1), 2006): sort by the last objective, cut the space
into slabs between consecutive values, and sum ``slab thickness x (d-1)-dimensional
hypervolume`` of the points below the slab; the 2-D base case is a sorted sweep. Cost is
``O(n^(d-1) log n)``: fine for a few hundred points in 3-D.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["hypervolume", "normalize", "pareto_mask", "to_minimization"]

_CHUNK = 512  # rows compared at once in pareto_mask (memory ~ _CHUNK * n * d booleans)


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


def _mask_min(pts: np.ndarray) -> np.ndarray:
    """Non-dominated mask of finite-row minimization points (NaN rows excluded)."""
    valid = ~np.isnan(pts).any(axis=1)
    mask = valid.copy()
    cand = pts[valid]
    if cand.shape[0] == 0:
        return mask
    idx = np.flatnonzero(valid)
    keep = np.ones(cand.shape[0], dtype=bool)
    for start in range(0, cand.shape[0], _CHUNK):
        block = cand[start : start + _CHUNK]  # (b, d): is each of these dominated?
        le = (cand[None, :, :] <= block[:, None, :]).all(axis=2)  # (b, n): other <= block
        lt = (cand[None, :, :] < block[:, None, :]).any(axis=2)
        keep[start : start + block.shape[0]] = ~(le & lt).any(axis=1)
    mask[idx] = keep
    return mask


def pareto_mask(points: np.ndarray, maximize: Sequence[bool]) -> np.ndarray:
    """Boolean mask of the non-dominated rows of ``points``.

    Row ``i`` is Pareto iff it has no NaN and no other row ``j`` satisfies
    ``s*x_j <= s*x_i`` elementwise with at least one strict inequality, where ``s_k = -1``
    for maximized objectives and ``+1`` otherwise. An empty input gives an empty mask.
    """
    pts = to_minimization(points, maximize)
    return _mask_min(pts)


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


def _hv2(pts: np.ndarray, ref: np.ndarray) -> float:
    """2-D hypervolume (minimization), all points strictly below ``ref``: sorted sweep.

    With points sorted by x ascending, the strip ``[x_i, x_{i+1}]`` (``x_{n} = r_x``) is
    covered up to height ``r_y - min_{j <= i} y_j``.
    """
    order = np.lexsort((pts[:, 1], pts[:, 0]))
    x = pts[order, 0]
    y_min = np.minimum.accumulate(pts[order, 1])
    widths = np.diff(np.append(x, ref[0]))
    return float(np.sum(widths * (ref[1] - y_min)))


def _hv(pts: np.ndarray, ref: np.ndarray) -> float:
    """Exact hypervolume (minimization) of points strictly below ``ref`` (HSO slicing)."""
    n, d = pts.shape
    if n == 0:
        return 0.0
    if d == 1:
        return float(ref[0] - pts[:, 0].min())
    if d == 2:
        return _hv2(pts, ref)
    pts = pts[_mask_min(pts)]
    pts = pts[np.argsort(pts[:, -1], kind="stable")]
    z_next = np.append(pts[1:, -1], ref[-1])
    total = 0.0
    for i in range(pts.shape[0]):
        thickness = z_next[i] - pts[i, -1]
        if thickness > 0:
            total += thickness * _hv(pts[: i + 1, :-1], ref[:-1])
    return total


def hypervolume(points: np.ndarray, maximize: Sequence[bool], reference: Sequence[float]) -> float:
    """Exact hypervolume of ``points`` w.r.t. ``reference`` (in the same units as ``points``).

    ``HV(P; r) = vol( union_{p in P} prod_k [s_k p_k, s_k r_k] )`` with ``s_k = -1`` for a
    maximized objective, ``+1`` otherwise (so for a maximized objective the box spans
    ``[r_k, p_k]``). Points with NaN, or not strictly better than ``reference`` in every
    objective, add nothing; an empty set has volume 0. Any number of objectives.
    """
    pts = to_minimization(points, maximize)
    ref = to_minimization(np.asarray(reference, dtype=float)[None, :], maximize)[0]
    if np.isnan(ref).any():
        raise ValueError(f"hypervolume: reference point has NaN: {list(reference)}")
    pts = pts[~np.isnan(pts).any(axis=1)]
    pts = pts[(pts < ref).all(axis=1)]
    return _hv(pts, ref)
