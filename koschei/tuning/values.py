"""Tuned tunable values, per machine: what code_generate renders instead of the spec defaults.

A workspace keeps them in ``tuning/<fingerprint>.json``, one file per machine fingerprint
(koschei.bench.machine): a machine renders with its own file's values, and a machine without
one gets the specs' defaults, so that generation stays deterministic given the specs, the
templates and that file. Each spec's entry holds the value of every tunable the search
settled (defaults included) and the evidence of the search that chose them::

    {"format": 1, "fingerprint": "aba5a72f6fca1765", "machine": {...},
     "specs": {"matmul": {"tunables": {"kc": 384, ...},
                          "evidence": {"case": "encoder_128x384x1536", "gain": 0.07, ...}}}}

Files are written atomically (koschei.files): a kill leaves the old file or the new one.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from koschei.errors import UsageError
from koschei.files import read_json, write_json_atomic

FORMAT = 1
FOLDER = "tuning"


def path_for(root: Path, fingerprint: str) -> Path:
    """The tuned values of machine ``fingerprint`` in the workspace at ``root``."""
    return Path(root) / FOLDER / f"{fingerprint}.json"


def load(root: Path, fingerprint: str) -> dict[str, Any]:
    """The file's data ({} when there is none); a file that is not a tuning file raises
    UsageError naming it."""
    path = path_for(root, fingerprint)
    if not path.exists():
        return {}
    data = read_json(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT \
            or not isinstance(data.get("specs"), dict):
        raise UsageError(f"{FOLDER}/{path.name} is not a tuning file of format {FORMAT}",
                         hint="fix it, or delete it to render with the specs' defaults")
    return data


def tunables_for(root: Path, fingerprint: str) -> dict[str, dict[str, Any]]:
    """spec name -> its tuned tunable values on this machine."""
    specs = load(root, fingerprint).get("specs", {})
    return {name: dict(entry.get("tunables") or {}) for name, entry in specs.items()
            if isinstance(entry, dict)}


def record(root: Path, fingerprint: str, machine: Mapping[str, Any], spec: str,
           tunables: Mapping[str, Any], evidence: Mapping[str, Any]) -> Path:
    """Set ``spec``'s tuned values on this machine (with the evidence), keeping the others."""
    data = load(root, fingerprint) or {"format": FORMAT, "fingerprint": fingerprint,
                                       "specs": {}}
    data["machine"] = dict(machine)
    data["specs"][spec] = {"tunables": dict(tunables), "evidence": dict(evidence)}
    path = path_for(root, fingerprint)
    write_json_atomic(path, data, sort_keys=True)
    return path


def forget(root: Path, fingerprint: str, spec: str) -> bool:
    """Drop ``spec``'s tuned values on this machine (back to the defaults); whether it had any."""
    data = load(root, fingerprint)
    if spec not in data.get("specs", {}):
        return False
    del data["specs"][spec]
    write_json_atomic(path_for(root, fingerprint), data, sort_keys=True)
    return True
