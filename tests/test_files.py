"""Atomic writes: the target holds the old content or the new, never a part, and no temporary
file is left behind."""

from __future__ import annotations

import json
import os

import pytest

from koschei.files import file_sha256, read_json, write_bytes_atomic, write_json_atomic


def temporaries(folder):
    return sorted(path.name for path in folder.iterdir() if path.name.endswith(".tmp"))


def test_a_write_creates_folders_and_replaces_the_content(tmp_path):
    target = tmp_path / "a" / "b" / "module.py"
    write_bytes_atomic(target, b"old\n")
    write_bytes_atomic(target, b"new\n")
    assert target.read_bytes() == b"new\n"
    assert temporaries(target.parent) == []


def test_a_failed_rename_keeps_the_old_content_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "journal.json"
    write_json_atomic(target, {"status": "running"})

    def refuse(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        write_json_atomic(target, {"status": "finished"})
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"status": "running"}
    assert temporaries(tmp_path) == []


def test_json_round_trip_and_unreadable_files(tmp_path):
    target = tmp_path / "data.json"
    write_json_atomic(target, {"b": 1, "a": [1.5, None]}, sort_keys=True)
    assert target.read_text() == '{\n  "a": [\n    1.5,\n    null\n  ],\n  "b": 1\n}\n'
    assert read_json(target) == {"a": [1.5, None], "b": 1}
    (tmp_path / "broken.json").write_text("{")
    assert read_json(tmp_path / "broken.json") is None
    assert read_json(tmp_path / "absent.json") is None


def test_file_sha256(tmp_path):
    target = tmp_path / "x"
    target.write_bytes(b"abc")
    assert file_sha256(target) == \
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
