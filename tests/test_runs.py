"""Run records: ids, manifests, phase results, what a run wrote, and the lock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import git
import pytest

from koschei.bench import machine
from koschei.errors import UsageError
from koschei.files import write_json_atomic
from koschei.phases.base import Result
from koschei.runs import (
    RUN_ID_PATTERN,
    RunRecord,
    list_runs,
    reported_writes,
    workspace_lock,
)
from koschei.workspace import Workspace


def make_workspace(root: Path) -> Workspace:
    (root / "specs").mkdir(parents=True)
    (root / "koschei.toml").write_text("[workspace]\nformat = 1\n")
    return Workspace(root.resolve())


def make_repo(root: Path) -> git.Repo:
    repo = git.Repo.init(root, initial_branch="main")
    with repo.config_writer() as config:
        config.set_value("user", "name", "Test Author")
        config.set_value("user", "email", "author@example.com")
    return repo


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return make_workspace(tmp_path / "ws")


@dataclass
class FakeGenerateResult(Result):
    files: list[dict] = field(default_factory=list)


def temporaries(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*.tmp")]


# --- ids and manifests ---------------------------------------------------------------------------


def test_create_writes_a_manifest_with_the_machine_and_versions(workspace):
    record = RunRecord.create(workspace, "cycle")
    assert RUN_ID_PATTERN.match(record.id)
    assert record.dir == workspace.runs_dir / record.id
    manifest = json.loads((record.dir / "manifest.json").read_text())
    assert manifest["run_id"] == record.id
    assert manifest["command"] == "cycle"
    assert manifest["started_at"].startswith(record.id[:4])
    assert manifest["git_sha"] is None and manifest["dirty"] is None  # not a repository
    assert manifest["machine"] == json.loads(json.dumps(machine.describe()))
    assert manifest["fingerprint"] == machine.fingerprint()
    assert set(manifest["versions"]) == {"koschei", "numpy", "numba", "torch", "python"}
    assert manifest["versions"]["numpy"]
    assert temporaries(record.dir) == []


def test_manifest_records_head_and_whether_the_tree_was_dirty(workspace):
    repo = make_repo(workspace.root)
    (workspace.root / "a.txt").write_text("a\n")
    repo.git.add("--all")
    repo.git.commit("-qm", "first")
    clean = RunRecord.create(workspace, "cycle")
    assert clean.manifest["git_sha"] == repo.head.commit.hexsha
    assert clean.manifest["git_branch"] == "main"
    assert clean.manifest["dirty"] is False
    (workspace.root / "a.txt").write_text("changed\n")
    assert RunRecord.create(workspace, "cycle").manifest["dirty"] is True


def test_run_ids_are_unique_and_sort_in_creation_order(workspace):
    created = [RunRecord.create(workspace, "test-run").id for _ in range(25)]
    assert len(set(created)) == 25
    assert created == sorted(created)
    assert [record.id for record in list_runs(workspace)] == created


def test_list_runs_skips_calibration_and_folders_without_a_manifest(workspace):
    record = RunRecord.create(workspace, "cycle")
    (workspace.runs_dir / "calibration").mkdir()
    (workspace.runs_dir / "20200101-000000-000000").mkdir()  # a run cut off before its manifest
    assert [r.id for r in list_runs(workspace)] == [record.id]


def record_folder(workspace: Workspace, run_id: str) -> None:
    folder = workspace.runs_dir / run_id
    folder.mkdir(parents=True)
    write_json_atomic(folder / "manifest.json", {"run_id": run_id, "command": "cycle"})


def test_load_latest_by_id_by_prefix_and_errors(workspace):
    with pytest.raises(UsageError, match="no run records"):
        RunRecord.load(workspace, "latest")
    for run_id in ("20261122-101010-00000a", "20261122-101010-0000ff", "20261123-090000-000001"):
        record_folder(workspace, run_id)
    assert RunRecord.load(workspace).id == "20261123-090000-000001"
    assert RunRecord.load(workspace, "20261122-101010-0000ff").id == "20261122-101010-0000ff"
    assert RunRecord.load(workspace, "20261123").id == "20261123-090000-000001"
    with pytest.raises(UsageError, match="ambiguous"):
        RunRecord.load(workspace, "20261122")
    with pytest.raises(UsageError, match="no run '19990101'") as caught:
        RunRecord.load(workspace, "19990101")
    assert "20261123-090000-000001" in str(caught.value)  # the hint lists recent runs


# --- phase results and what a run wrote ----------------------------------------------------------


def test_save_phase_round_trips_a_result(workspace):
    record = RunRecord.create(workspace, "cycle")
    path = record.save_phase("code_generate", FakeGenerateResult(files=[]))
    assert path == record.dir / "code_generate.json"
    assert record.phase("code_generate") == {"files": [], "ok": True}
    assert record.phase("benchmark") is None
    assert record.phases() == ["code_generate"]


def test_written_paths_are_the_created_and_updated_files_and_the_record(workspace):
    engine = workspace.root / "koschei" / "engine"
    engine.mkdir(parents=True)
    (engine / "softmax.py").write_text("generated\n")
    (engine / "rmsnorm.py").write_text("generated\n")
    record = RunRecord.create(workspace, "cycle")
    record.save_phase("code_generate", FakeGenerateResult(files=[
        {"path": "koschei/engine/softmax.py", "action": "create"},
        {"path": str(engine / "rmsnorm.py"), "action": "update"},  # absolute: made relative
        {"path": "tests/engine/test_softmax.py", "action": "identical"},
        {"path": "/etc/passwd", "action": "update"},  # outside the workspace: never
    ]))
    record.save_phase("spec_create", {"created": ["specs/ffn/geglu.yaml"], "ok": True})
    record.save_phase("benchmark", {"dry_run": True, "written": ["not/really.txt"]})
    assert record.written_paths() == sorted([
        "koschei/engine/rmsnorm.py", "koschei/engine/softmax.py", "specs/ffn/geglu.yaml",
        record.relative_dir])
    hashes = record.written_files()
    import hashlib
    assert hashes["koschei/engine/softmax.py"] == hashlib.sha256(b"generated\n").hexdigest()
    assert hashes["specs/ffn/geglu.yaml"] is None  # reported, but not on disk


def test_reported_writes_finds_both_shapes_anywhere():
    result = {"specs": [{"name": "a", "files": [{"file": "x.py", "action": "create"},
                                                {"path": "y.py", "action": "identical"}]}],
              "created": "specs/a.yaml", "nested": {"written": ["z.txt", 3]}}
    assert reported_writes(result) == ["x.py", "specs/a.yaml", "z.txt"]
    assert reported_writes({"check": True, "files": [{"path": "x", "action": "update"}]}) == []
    assert reported_writes(None) == []


# --- the lock -----------------------------------------------------------------------------------

HOLD_LOCK = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from koschei.runs import workspace_lock
    from koschei.workspace import Workspace
    with workspace_lock(Workspace(Path(sys.argv[1])), "cycle"):
        print("held", flush=True)
        time.sleep(120)
""")


def hold_lock_in_subprocess(workspace: Workspace) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(workspace.root)],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_the_lock_refuses_a_second_holder_and_names_the_first(workspace):
    process = hold_lock_in_subprocess(workspace)
    try:
        with pytest.raises(UsageError) as caught, workspace_lock(workspace):
            pass
        message = str(caught.value)
        assert "another koschei cycle is running in this workspace" in message
        assert f"pid {process.pid}" in message
        assert "started 20" in message
    finally:
        process.kill()
        process.wait()


def test_the_lock_is_released_by_the_os_when_its_holder_is_killed(workspace):
    process = hold_lock_in_subprocess(workspace)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 10
    while True:
        try:
            with workspace_lock(workspace):
                break
        except UsageError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_the_lock_can_be_taken_again_by_its_holder_and_is_released_after(workspace):
    with workspace_lock(workspace):
        with workspace_lock(workspace, "git-commit"):
            pass
        # still held after the inner release: another process is refused
        code = ("import sys; from pathlib import Path; from koschei.runs import workspace_lock;"
                "from koschei.workspace import Workspace;\n"
                "try:\n"
                "    with workspace_lock(Workspace(Path(sys.argv[1]))): print('got it')\n"
                "except Exception as e: print('refused')")
        out = subprocess.run([sys.executable, "-c", code, str(workspace.root)],
                             capture_output=True, text=True, check=True).stdout.strip()
        assert out == "refused"
    out = subprocess.run([sys.executable, "-c", code, str(workspace.root)],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == "got it"
