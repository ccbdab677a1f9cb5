"""Every command is reachable, documented, ends its help with an example, and --help is cheap."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import koschei.cli  # noqa: F401  (registers every command)
from koschei.cli.app import app

README = Path(__file__).resolve().parent.parent / "README.md"
COMMANDS = ["init", "pas-analyze", "tech-tree", "spec-create", "code-generate", "test-run",
            "benchmark", "git-commit", "cycle"]
SEED_NAMES = ["pas_analyze", "tech_tree", "spec_create", "code_generate", "test_run", "benchmark",
              "git_commit"]
runner = CliRunner()


def test_top_level_help_lists_every_command_and_hides_seed_names():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in COMMANDS:
        assert name in result.output
    listed = re.findall(r"^\W*([a-z][a-z_-]+)\s{2,}", result.output, flags=re.MULTILINE)
    assert set(COMMANDS) <= set(listed), listed
    for seed in SEED_NAMES:
        if seed != "benchmark":
            assert seed not in listed, f"seed alias {seed} clutters --help"


@pytest.mark.parametrize("name", COMMANDS + SEED_NAMES)
def test_every_command_help_ends_with_an_example(name):
    result = runner.invoke(app, [name, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    last = [line for line in result.output.strip().splitlines() if line.strip()][-1]
    assert "Example: koschei" in last, result.output


@pytest.mark.parametrize("name", [c for c in COMMANDS if c != "init"])
def test_every_workspace_command_offers_json(name):
    result = runner.invoke(app, [name, "--help"], terminal_width=200)
    assert "--json" in result.output


def test_every_command_is_documented_in_the_readme():
    text = README.read_text(encoding="utf-8")
    for name in COMMANDS:
        assert re.search(rf"koschei {name}\b", text), f"README does not document `koschei {name}`"


def test_help_imports_neither_numba_nor_the_engine():
    """What keeps `koschei --help` fast: nothing heavy is imported to answer it."""
    code = ("import sys; from koschei.cli import app; import typer.testing as tt;"
            "r = tt.CliRunner().invoke(app, ['--help']); assert r.exit_code == 0;"
            "heavy = [m for m in ('numba', 'torch', 'git', 'koschei.engine.rmsnorm')"
            " if m in sys.modules]; print(','.join(heavy) or 'none')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "none"


def test_unknown_command_is_a_usage_error():
    result = runner.invoke(app, ["no-such-command"])
    assert result.exit_code == 2
