"""The wheel holds what a plain ``pip install .`` needs: every subpackage and every bundled
search space, found from any working directory (cluster nodes install the wheel, not an
editable checkout)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(300)
def test_wheel_ships_every_space_and_loads_the_default_elsewhere(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(wheels)],
        check=True,
        capture_output=True,
        timeout=240,
    )
    (wheel,) = wheels.glob("tune_linfair-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())

    spaces = sorted(p.name for p in (ROOT / "search_spaces").glob("*.yaml"))
    assert "default.yaml" in spaces
    missing = [s for s in spaces if f"tune_linfair/search_spaces/{s}" not in names]
    assert not missing, f"spaces missing from the wheel: {missing}"
    packages = sorted(
        p.parent.relative_to(ROOT).as_posix() for p in (ROOT / "tune_linfair").rglob("__init__.py")
    )
    missing = [p for p in packages if f"{p}/__init__.py" not in names]
    assert not missing, f"subpackages missing from the wheel: {missing}"

    target = tmp_path / "target"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=240,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = (
        "import tune_linfair; from tune_linfair.spaces import list_spaces, load_space; "
        "space = load_space('default'); "
        "print(tune_linfair.__file__); print(len(list_spaces())); print(space.experiment.data.name)"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    where, count, dataset = proc.stdout.split()
    assert Path(where).is_relative_to(target), where  # the installed copy, not the checkout
    assert int(count) == len(spaces) and dataset == "digits"
