"""Helpers shared by the benchmarks in ``bench/``: machine record, load averages, min/median/max
summaries, a plain-text table, and the JSON-lines result files under ``bench/results/``.

Every benchmark measures ratios within one run (A and B interleaved, repeated) because the
machines these run on are shared; each record carries the load averages seen before and
after, so a reader can judge how noisy it was (airbench's habit: a number names its command,
hardware and number of runs).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """Hardware and versions: what a quoted number must name."""
    import torch

    info: dict[str, Any] = {
        "host_cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    for pkg in ("ray", "optuna", "torchvision"):
        try:
            info[pkg] = __import__(pkg).__version__
        except ImportError:
            info[pkg] = None
    return info


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages (what ``uptime`` prints)."""
    return [round(v, 2) for v in os.getloadavg()]


def uptime() -> str:
    """``uptime``'s line, for the record."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return f"load average: {', '.join(f'{v:.2f}' for v in loadavg())}"


def summary(values: Sequence[float]) -> dict[str, float]:
    """``{"n", "min", "median", "max"}`` of ``values``."""
    values = [float(v) for v in values]
    return {
        "n": len(values),
        "min": min(values),
        "median": statistics.median(values),
        "max": max(values),
    }


def fmt_summary(values: Sequence[float], digits: int = 2, unit: str = "") -> str:
    """``median (min-max, n=N)``."""
    s = summary(values)
    f = f"{{:.{digits}f}}"
    return (
        f"{f.format(s['median'])}{unit} (min {f.format(s['min'])}, max {f.format(s['max'])}, "
        f"n={s['n']})"
    )


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``(fn(), seconds)`` by the wall clock (``time.perf_counter``); syncs CUDA if used."""
    import torch

    sync = torch.cuda.is_available() and torch.cuda.is_initialized()
    if sync:
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if sync:
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """A Markdown table (also readable as plain text)."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    lines.insert(1, "| " + " | ".join("-" * w for w in widths) + " |")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def command() -> str:
    """The command line that ran this benchmark."""
    script = Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(Path.cwd())
    except ValueError:
        pass
    return " ".join(["python", str(script), *sys.argv[1:]])


def record(name: str, payload: dict[str, Any], quick: bool = False) -> Path:
    """Append one JSON line to ``bench/results/NAME[-quick].jsonl``; returns its path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}{'-quick' if quick else ''}.jsonl"
    entry = {
        "benchmark": name,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": command(),
        "machine": machine(),
        **payload,
    }
    with open(path, "a") as f:
        f.write(json.dumps(entry, default=_json_default) + "\n")
    return path


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path | dt.datetime):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
