"""The numbers a figure draws, saved beside it: ``NAME.png`` -> ``NAME.data.json``.

A PNG cannot be checked or re-plotted. :func:`save_figure` writes the figure and, beside it,
what its axes draw, read back from the matplotlib artists themselves (so the record is what
was plotted, not what the code meant to plot): per axes its title, labels and tick labels,
and per series its kind, legend label and values:

- ``bar``: bar centres ``x``, heights ``y`` and, with error bars, their half-lengths ``yerr``;
- ``errorbar``: the points ``x``, ``y`` and the half-lengths ``xerr`` / ``yerr``;
- ``scatter``: the points ``x``, ``y``;
- ``line``: any other line (reference lines included), its ``x``, ``y``.

Non-finite values are stored as null. matplotlib is imported lazily; no torch, no Ray.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from tune_linfair.cache import write_text


def _numbers(values: Any) -> list[float | None]:
    out = []
    for v in list(values):
        f = float(v)
        out.append(f if math.isfinite(f) else None)
    return out


def _half_lengths(collection: Any, axis: int) -> list[float | None]:
    """Half-lengths of an error-bar LineCollection's segments along ``axis`` (0 x, 1 y)."""
    return _numbers(abs(seg[1][axis] - seg[0][axis]) / 2 for seg in collection.get_segments())


def _errorbar(container: Any) -> dict[str, Any]:
    data_line, _, bar_cols = container.lines
    out: dict[str, Any] = {"kind": "errorbar", "label": container.get_label()}
    if data_line is not None:
        out["x"], out["y"] = _numbers(data_line.get_xdata()), _numbers(data_line.get_ydata())
    cols = list(bar_cols)
    if container.has_xerr and cols:
        out["xerr"] = _half_lengths(cols.pop(0), 0)
    if container.has_yerr and cols:
        out["yerr"] = _half_lengths(cols.pop(0), 1)
    return out


def _owned(container: Any) -> list[Any]:
    """Every artist a container holds (containers are nested tuples of artists)."""
    found, stack = [], list(container)
    while stack:
        item = stack.pop()
        if isinstance(item, list | tuple):
            stack.extend(item)
        elif item is not None:
            found.append(item)
    return found


def axes_data(ax: Any) -> dict[str, Any]:
    """What one matplotlib Axes draws (module docstring)."""
    from matplotlib.collections import PathCollection
    from matplotlib.container import BarContainer, ErrorbarContainer

    series: list[dict[str, Any]] = []
    owned: set[int] = set()
    bar_errors = {id(c.errorbar) for c in ax.containers if isinstance(c, BarContainer)}
    for c in ax.containers:
        owned.update(id(a) for a in _owned(c))
        if isinstance(c, BarContainer):
            bar = {
                "kind": "bar",
                "label": c.get_label(),
                "x": _numbers(p.get_x() + p.get_width() / 2 for p in c.patches),
                "y": _numbers(p.get_height() for p in c.patches),
            }
            if c.errorbar is not None and c.errorbar.has_yerr:
                bar["yerr"] = _errorbar(c.errorbar)["yerr"]
                owned.update(id(a) for a in _owned(c.errorbar))
            series.append(bar)
        elif isinstance(c, ErrorbarContainer) and id(c) not in bar_errors:
            series.append(_errorbar(c))
    for coll in ax.collections:
        if isinstance(coll, PathCollection) and id(coll) not in owned:
            offsets = coll.get_offsets()
            series.append({"kind": "scatter", "label": coll.get_label(),
                           "x": _numbers(offsets[:, 0]), "y": _numbers(offsets[:, 1])})  # fmt: skip
    for line in ax.lines:
        if id(line) not in owned:
            series.append({"kind": "line", "label": line.get_label(),
                           "x": _numbers(line.get_xdata()), "y": _numbers(line.get_ydata())})  # fmt: skip
    return {
        "title": ax.get_title(),
        "xlabel": ax.get_xlabel(),
        "ylabel": ax.get_ylabel(),
        "xticklabels": [t.get_text() for t in ax.get_xticklabels()],
        "series": series,
    }


def figure_data(fig: Any) -> dict[str, Any]:
    """What a matplotlib Figure draws: its suptitle and :func:`axes_data` of each axes."""
    return {"suptitle": fig.get_suptitle(), "axes": [axes_data(ax) for ax in fig.axes]}


def data_path(figure: str | os.PathLike[str]) -> Path:
    """Where the data of the figure file ``figure`` go: ``NAME.data.json`` beside it."""
    path = Path(figure)
    return path.with_name(path.stem + ".data.json")


def save_figure(fig: Any, path: str | os.PathLike[str], **savefig: Any) -> Path:
    """``fig.savefig(path, **savefig)`` and :func:`figure_data` written atomically to
    :func:`data_path`; returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, **savefig)
    write_text(data_path(path), json.dumps(figure_data(fig), indent=1) + "\n")
    return path


def load_figure_data(figure: str | os.PathLike[str]) -> dict[str, Any]:
    """The data saved beside the figure file ``figure`` (:func:`save_figure`)."""
    return json.loads(data_path(figure).read_text())
