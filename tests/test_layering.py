"""The rules of the house (docs/ARCHITECTURE.md), enforced.

- Ray is imported only by ``tune_linfair/search.py``, ``phases.py`` and ``trainables.py``:
  every stage and everything below it runs as a plain function.
- ``analysis/`` never imports torch or Ray (claims.py included), so it runs wherever the
  Parquet files were copied.
- The torch-free layer (settings, trial contract, spaces, cache, run directory, results,
  summary) imports neither torch nor Ray, so the driver and the analysis load it cheaply.

Imports are read from the source (static, so a lazy ``import ray`` inside a function is
caught too) and checked again at run time in a fresh interpreter (transitive imports).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tune_linfair"
RAY_MODULES = {"search.py", "phases.py", "trainables.py"}
TORCH_FREE = [
    "tune_linfair.errors",
    "tune_linfair.config",
    "tune_linfair.trial",
    "tune_linfair.spaces",
    "tune_linfair.cache",
    "tune_linfair.rundir",
    "tune_linfair.pareto",
    "tune_linfair.results",
    "tune_linfair.schemas",
    "tune_linfair.jobs",
    "tune_linfair.aggregate",
    "tune_linfair.summary",
    "tune_linfair.interrupt",
    "tune_linfair.plotdata",
    "tune_linfair.retries",
    "tune_linfair.lost",
    "tune_linfair.metrics.groups",
]


def imported_roots(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports, anywhere in the file."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_imported_roots_sees_lazy_imports(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    import ray.tune\n    from torch import nn\n")
    assert imported_roots(probe) == {"ray", "torch"}


@pytest.mark.parametrize(
    "path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT))
)
def test_only_the_sweep_modules_import_ray(path: Path) -> None:
    if path.parent == PACKAGE and path.name in RAY_MODULES:
        return
    assert "ray" not in imported_roots(path), f"{path.relative_to(ROOT)} imports Ray"


@pytest.mark.parametrize("path", sorted((ROOT / "analysis").glob("*.py")), ids=lambda p: p.name)
def test_analysis_imports_neither_torch_nor_ray(path: Path) -> None:
    assert not imported_roots(path) & {"torch", "ray"}, f"analysis/{path.name}"


def _loaded_heavy(code: str) -> list[str]:
    probe = (
        f"import sys; sys.path.insert(0, 'analysis'); {code}; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'ray'}))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return ast.literal_eval(proc.stdout.strip().splitlines()[-1])


def test_torch_free_layer_loads_without_torch_or_ray() -> None:
    assert _loaded_heavy("import " + ", ".join(TORCH_FREE)) == []


def test_analysis_scripts_load_without_torch_or_ray() -> None:
    scripts = sorted(p.stem for p in (ROOT / "analysis").glob("*.py"))
    assert "claims" in scripts
    assert _loaded_heavy("import " + ", ".join(scripts)) == []


def test_the_probe_sees_torch() -> None:
    assert _loaded_heavy("import tune_linfair.stages") == ["torch"]


def _names_a_cuda_device(node: ast.Call) -> bool:
    """``torch.device("cuda...")``, ``x.to("cuda...")`` or ``x.cuda()``: code that chooses a
    GPU by itself rather than using the device it was given."""
    func = ast.unparse(node.func)
    if func.endswith(".cuda") and not func.startswith("torch."):
        return True
    if func == "torch.device" or func.endswith(".to"):
        return any(
            isinstance(a, ast.Constant) and isinstance(a.value, str) and a.value.startswith("cuda")
            for a in node.args
        )
    return False


@pytest.mark.parametrize(
    "path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT))
)
def test_only_the_orchestration_picks_a_device(path: Path) -> None:
    """Devices come from Ray: ``trainables.trial_device`` asks Ray which GPU a trial got and
    passes the device down; nothing else names a CUDA device or asks whether CUDA is there
    to decide where to run (a stage that did would take a GPU Ray gave another trial).
    ``search.validate_args`` may count a local machine's GPUs (and tells ``--plan``
    whether to measure one: ``workload`` times that GPU in the driver, before
    Ray starts), and the RNG state of ``checkpointing`` may restore the CUDA generators it
    saved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    if not (path.parent == PACKAGE and path.name in ("trainables.py", "workload.py")):
        assert not any(map(_names_a_cuda_device, calls)), f"{path.relative_to(ROOT)} names a GPU"
    if path.parent == PACKAGE and path.name in ("trainables.py", "search.py", "checkpointing.py"):
        return
    asked = {ast.unparse(n.func) for n in calls} & {"torch.cuda.is_available"}
    assert not asked, f"{path.relative_to(ROOT)} asks whether CUDA is there"
