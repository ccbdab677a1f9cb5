"""spec_create: scaffolds that validate and render but whose tests fail until filled in."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import koschei.cli  # noqa: F401  (registers every command)
from koschei.cli.app import app
from koschei.errors import UsageError
from koschei.phases import code_generate, spec_create
from koschei.specs import load_specs
from koschei.workspace import Workspace

REPO = Path(__file__).resolve().parent.parent


def make_workspace(root: Path, names: tuple[str, ...] = ("rmsnorm",)) -> Workspace:
    (root / "specs" / "foundation").mkdir(parents=True)
    (root / "koschei.toml").write_text("", encoding="utf-8")
    for name in names:
        shutil.copy(REPO / "specs" / "foundation" / f"{name}.yaml",
                    root / "specs" / "foundation" / f"{name}.yaml")
    return Workspace.find(root)


def create(workspace: Workspace, name: str | None, **options) -> spec_create.SpecCreateResult:
    return spec_create.run(workspace, spec_create.Options(name=name, **options))


def run_generated_tests(root: Path, name: str) -> subprocess.CompletedProcess:
    """pytest on one generated test module, the way `koschei test-run` runs it."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           "KOSCHEI_NUMBA_CACHE_DIR": str(root / ".numba_cache")}
    return subprocess.run([sys.executable, "-m", "pytest", f"tests/engine/test_{name}.py", "-q",
                           "-p", "no:cacheprovider"],
                          check=False, cwd=root, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.parametrize("family", ["rowwise", "custom"])
def test_a_scaffold_validates_renders_and_its_tests_fail_until_filled_in(tmp_path, family):
    workspace = make_workspace(tmp_path)
    result = create(workspace, "geglu", family=family, tier="ffn")
    assert result.created == ["specs/ffn/geglu.yaml"]
    text = (tmp_path / "specs/ffn/geglu.yaml").read_text(encoding="utf-8")
    assert "TO FILL IN" in text

    loaded = load_specs(workspace).get("geglu")  # it validates with the others
    assert loaded is not None and loaded.spec.kernel.family == family
    assert result.specs[0].sha256 == hashlib.sha256(text.encode()).hexdigest()
    generated = code_generate.run(workspace, code_generate.Options(only=["geglu"]))
    assert "koschei/engine/geglu.py" in generated.written

    tests = run_generated_tests(tmp_path, "geglu")
    assert tests.returncode == 1, tests.stdout + tests.stderr
    assert "NotImplementedError" in tests.stdout and "TO FILL IN" in tests.stdout
    assert "passed" in tests.stdout  # the argument checks hold already; only the math is missing


def test_a_filled_in_custom_scaffold_passes_its_tests(tmp_path):
    workspace = make_workspace(tmp_path)
    create(workspace, "double", family="custom", tier="foundation", title="Doubling")
    path = tmp_path / "specs/foundation/double.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["summary"] = "y = 2 x, elementwise."
    data["kernel"]["params"]["source"] = (
        "def _compute(x, out):\n    np.multiply(x, np.float32(2.0), out=out)\n")
    data["reference"] = "def reference(x):\n    return (2 * x).astype(x.dtype)\n"
    data["tests"]["invariants"] = [{"name": "keeps_signs", "check": "np.array_equal("
                                    "np.sign(out), np.sign(x))"}]
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    code_generate.run(workspace, code_generate.Options())
    tests = run_generated_tests(tmp_path, "double")
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert " passed" in tests.stdout and "failed" not in tests.stdout


def test_the_generated_tests_import_the_workspace_modules(tmp_path):
    workspace = make_workspace(tmp_path)
    create(workspace, "double", family="custom")
    code_generate.run(workspace, code_generate.Options())
    probe = tmp_path / "tests/engine/test_where.py"
    probe.write_text("import importlib\n\n\ndef test_where():\n"
                     "    module = importlib.import_module('koschei.engine.double')\n"
                     f"    assert module.__file__ == {str(tmp_path / 'koschei/engine/double.py')!r}\n",
                     encoding="utf-8")
    tests = run_generated_tests(tmp_path, "where")
    assert tests.returncode == 0, tests.stdout + tests.stderr


@pytest.mark.parametrize(("name", "options", "message"), [
    ("rmsnorm", {}, "already a spec"),
    ("llm_rmsnorm", {}, "already an alias of rmsnorm"),
    ("Not-A-Name", {}, "not a valid spec name"),
    ("class", {}, "not a valid spec name"),
    ("fresh", {"family": "nope"}, "unknown family"),
    ("fresh", {"tier": "nope"}, "unknown tier"),
])
def test_refuses_bad_requests_and_writes_nothing(tmp_path, name, options, message):
    workspace = make_workspace(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(UsageError, match=message):
        create(workspace, name, **options)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_without_a_name_it_reports_every_spec_with_its_sha256(tmp_path):
    workspace = make_workspace(tmp_path, ("rmsnorm", "softmax"))
    result = create(workspace, None)
    assert result.created == []
    by_name = {entry.name: entry for entry in result.specs}
    assert sorted(by_name) == ["rmsnorm", "softmax"]
    entry = by_name["softmax"]
    assert entry.status == "implemented" and entry.family == "rowwise"
    assert entry.sha256 == hashlib.sha256(
        (tmp_path / "specs/foundation/softmax.yaml").read_bytes()).hexdigest()
    with pytest.raises(UsageError, match="give its NAME"):
        create(workspace, None, family="rowwise")


def test_another_family_starts_from_an_implemented_spec_of_that_family(tmp_path):
    workspace = make_workspace(tmp_path, ("softmax",))
    shutil.copytree(REPO / "templates", tmp_path / "templates")  # the workspace's own templates
    shutil.copy(tmp_path / "templates/families/rowwise.py.j2",
                tmp_path / "templates/families/rows.py.j2")
    softmax = tmp_path / "specs/foundation/softmax.yaml"
    softmax.write_text(softmax.read_text(encoding="utf-8").replace("family: rowwise",
                                                                   "family: rows"),
                       encoding="utf-8")
    result = create(workspace, "logsumexp", family="rows", tier="foundation")
    text = (tmp_path / result.created[0]).read_text(encoding="utf-8")
    assert "Started from specs/foundation/softmax.yaml" in text
    assert "def reference(x):" in text and "NotImplementedError" in text
    loaded = load_specs(workspace).get("logsumexp")
    assert loaded.spec.kernel.params == {"shift": "max", "map": "exp", "scale": "sum"}
    assert loaded.spec.tests.invariants == [] and loaded.spec.tests.torch is None
    shutil.copy(tmp_path / "templates/families/rows.py.j2",
                tmp_path / "templates/families/unused.py.j2")
    with pytest.raises(UsageError, match="no implemented spec uses this family"):
        create(workspace, "other", family="unused")


def test_the_command_line_scaffolds_and_lists(tmp_path):
    make_workspace(tmp_path)
    runner = CliRunner()
    result = runner.invoke(app, ["spec-create", "geglu", "--family", "rowwise", "--tier", "ffn",
                                 "--root", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "created specs/ffn/geglu.yaml" in result.output
    again = runner.invoke(app, ["spec-create", "geglu", "--root", str(tmp_path)])
    assert again.exit_code == 2 and "already a spec" in again.output
    listing = runner.invoke(app, ["spec-create", "--root", str(tmp_path)])
    assert listing.exit_code == 0 and "geglu" in listing.output and "rmsnorm" in listing.output


def test_a_planned_spec_of_that_name_is_pointed_out(tmp_path):
    workspace = make_workspace(tmp_path)
    planned = tmp_path / "specs/foundation/geglu.yaml"
    planned.write_text("name: geglu\ntitle: GEGLU\ntier: foundation\n", encoding="utf-8")
    with pytest.raises(UsageError, match="already a planned spec") as caught:
        create(workspace, "geglu", family="rowwise", tier="ffn")
    assert "implement it in place" in str(caught.value)
    assert planned.read_text(encoding="utf-8") == "name: geglu\ntitle: GEGLU\ntier: foundation\n"
    assert not (tmp_path / "specs/ffn").exists()
