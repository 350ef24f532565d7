"""The README's quickstart is exactly two commands, and CI runs the README's test command."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _quickstart_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S)]


def test_quickstart_is_two_commands_main_job_then_tests() -> None:
    commands = _quickstart_commands()
    assert len(commands) == 2 and all("\n" not in c for c in commands)
    main_job, tests = commands
    assert main_job.endswith("python -m tune_linfair.search --objective pareto")
    assert tests.endswith("python -m pytest -q")
    assert "pip install -e ." in main_job and "pip install -e '.[test]'" in tests


def test_ci_runs_the_readme_test_command() -> None:
    test_command = _quickstart_commands()[1].split("&&")[-1].strip()
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_command in ci.splitlines()


def test_reliability_table_names_tests_that_exist() -> None:
    """Every test the README's "Reliability" table names is defined under tests/ (names
    with a parametrization keep the test's name: ``test_x[a]``, or ``[a]`` after it)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Reliability", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`(test_\w+)(?:\[[^\]`]*\])?`", section))
    defined = {
        m
        for path in (ROOT / "tests").glob("test_*.py")
        for m in re.findall(r"^def (test_\w+)\(", path.read_text(), re.M)
    }
    assert len(named) >= 15 and named <= defined, sorted(named - defined)
