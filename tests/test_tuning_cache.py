"""koschei.tuning.cache: the append-only log of search results, and what a kill leaves of it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from koschei.tuning.cache import CacheLog, CandidateKey, CandidateResult


def key(**tunables) -> CandidateKey:
    return CandidateKey.of(spec="matmul", spec_sha256="a" * 64, templates_sha256="b" * 64,
                           tunables=tunables or {"kc": 256}, case="ffn_512x768x2048",
                           fingerprint="0123456789abcdef")


def test_results_are_read_back_by_key(tmp_path):
    path = tmp_path / "runs" / "tuning" / "matmul.jsonl"
    log = CacheLog(path)
    assert len(log) == 0 and not path.exists()
    ok = CandidateResult(key(kc=256, mc=96), "ok", median_s=1e-3, samples_s=[1e-3, 1.1e-3],
                         incumbent={"tunables": {"kc": 128}, "samples_s": [2e-3]})
    wrong = CandidateResult(key(kc=512, mc=96), "wrong", reason="max abs error 3.2 > 1e-4")
    log.record(ok)
    log.record(wrong)
    again = CacheLog(path)
    assert len(again) == 2 and again.repaired == 0
    assert again.get(key(mc=96, kc=256)) == ok  # the order of the tunables does not matter
    assert again.get(key(kc=512, mc=96)).reason == "max abs error 3.2 > 1e-4"
    assert key(kc=128) not in again
    # anything else in the key makes another result
    other_machine = CandidateKey.of(spec="matmul", spec_sha256="a" * 64,
                                    templates_sha256="b" * 64, tunables={"kc": 256, "mc": 96},
                                    case="ffn_512x768x2048", fingerprint="fedcba9876543210")
    assert other_machine not in again


def test_a_later_line_for_the_same_key_wins(tmp_path):
    log = CacheLog(tmp_path / "log.jsonl")
    log.record(CandidateResult(key(), "timeout", reason="no result in 60 s"))
    log.record(CandidateResult(key(), "ok", median_s=2e-3, samples_s=[2e-3]))
    assert CacheLog(tmp_path / "log.jsonl").get(key()).verdict == "ok"


def test_a_line_cut_short_is_skipped_and_the_next_record_starts_on_its_own_line(tmp_path):
    path = tmp_path / "log.jsonl"
    log = CacheLog(path)
    log.record(CandidateResult(key(kc=128), "ok", median_s=1e-3, samples_s=[1e-3]))
    whole = json.dumps(CandidateResult(key(kc=256), "ok", median_s=1e-3).as_json())
    with open(path, "ab") as stream:  # what a kill in the middle of a write leaves
        stream.write(whole[:40].encode())
    cut = CacheLog(path)
    assert len(cut) == 1 and cut.repaired == 1
    cut.record(CandidateResult(key(kc=384), "crashed", reason="killed by SIGSEGV"))
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and lines[1] == whole[:40]
    after = CacheLog(path)
    assert len(after) == 2 and after.repaired == 1
    assert after.get(key(kc=384)).verdict == "crashed"


WRITER = """
import sys
from koschei.tuning.cache import CacheLog, CandidateKey, CandidateResult
log = CacheLog(sys.argv[1])
for index in range(100000):
    key = CandidateKey.of(spec="s", spec_sha256="a", templates_sha256="b",
                          tunables={"index": index}, case="c", fingerprint="f")
    log.record(CandidateResult(key, "ok", median_s=1e-3, samples_s=[1e-3] * 50))
    if index == 20:
        print("ready", flush=True)
"""


def test_a_log_killed_mid_write_keeps_every_finished_result(tmp_path):
    path = tmp_path / "log.jsonl"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE,
                              text=True, cwd=Path(__file__).resolve().parent.parent)
    assert writer.stdout.readline().strip() == "ready"
    time.sleep(0.2)
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    log = CacheLog(path)
    lines = path.read_bytes().count(b"\n")
    assert len(log) >= 21 and log.repaired <= 1
    assert len(log) == lines  # every whole line was read
    indices = sorted(dict(result.key.tunables)["index"] for result in log.results())
    assert indices == list(range(len(indices)))  # no result lost before the last
