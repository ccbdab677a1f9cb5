"""koschei.engine._runtime: the Numba cache folder, argument checks and their messages, threads."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from koschei.engine import _runtime as rt

REPO = Path(__file__).resolve().parent.parent
F32 = np.dtype("float32")


def test_the_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    for name in ("KOSCHEI_NUMBA_CACHE_DIR", "NUMBA_CACHE_DIR", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert rt.numba_cache_dir() == tmp_path / "home" / ".cache" / "koschei" / "numba"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert rt.numba_cache_dir() == tmp_path / "xdg" / "koschei" / "numba"
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "numba"))
    assert rt.numba_cache_dir() == tmp_path / "numba"
    monkeypatch.setenv("KOSCHEI_NUMBA_CACHE_DIR", str(tmp_path / "ours"))
    assert rt.numba_cache_dir() == tmp_path / "ours"


def test_compiled_kernels_land_in_the_chosen_cache_folder(tmp_path):
    from koschei.phases import code_generate
    from koschei.workspace import Workspace

    (tmp_path / "specs" / "foundation").mkdir(parents=True)
    (tmp_path / "koschei.toml").write_text("", encoding="utf-8")
    shutil.copy(REPO / "specs/foundation/softmax.yaml", tmp_path / "specs/foundation")
    code_generate.run(Workspace.find(tmp_path), code_generate.Options())
    cache = tmp_path / "cache"
    code = textwrap.dedent(f"""
        import numpy as np
        import koschei.engine
        koschei.engine.use_workspace({str(tmp_path)!r})
        from koschei.engine import softmax
        from numba.core import config
        from koschei.engine import _runtime
        expected = {str(cache)!r} + "/helpers-" + _runtime.helpers_key()
        assert config.CACHE_DIR == expected, config.CACHE_DIR
        print(softmax(np.zeros((2, 3), dtype=np.float32)).tolist())
    """)
    env = {**os.environ, "KOSCHEI_NUMBA_CACHE_DIR": str(cache)}
    done = subprocess.run([sys.executable, "-c", code], check=False, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert np.allclose(eval(done.stdout), 1 / 3)  # a printed list of floats
    assert any(path.suffix == ".nbi" for path in cache.rglob("*"))
    beside = tmp_path / "koschei" / "engine" / "__pycache__"
    assert not any(p.suffix in (".nbi", ".nbc") for p in beside.glob("*"))


def test_the_cache_subfolder_follows_the_helpers_sources():
    key = rt.helpers_key()
    assert len(key) == 16 and int(key, 16) >= 0
    assert rt.CACHE_DIR.name == f"helpers-{key}"


def test_check_array_says_what_is_wrong():
    good = np.zeros((2, 3), dtype=np.float32)
    rt.check_array("f", "x", good, F32, "(..., d)", min_ndim=1)  # acceptable: returns
    cases = [
        ([1.0], TypeError, "f: x: expected a numpy.ndarray of float32 with shape (n, d), got list"),
        (good.astype(np.float64), TypeError, "f: x: expected dtype float32, got float64"),
        (np.zeros(3, np.float32), ValueError, "f: x: expected 2 dimensions (n, d), got 1"),
        (good[:, ::2], ValueError, "f: x: expected a C-contiguous array"),
        (np.zeros((0, 3), np.float32), ValueError, "f: x: expected a non-empty array"),
    ]
    for value, error, message in cases:
        with pytest.raises(error) as caught:
            rt.check_array("f", "x", value, F32, "(n, d)", ndim=2)
        assert str(caught.value).startswith(message), str(caught.value)


def test_check_out_refuses_overlap_read_only_and_wrong_shapes():
    x = np.zeros((4, 8), dtype=np.float32)
    rt.check_out("f", np.zeros((4, 8), F32), F32, (4, 8), "(n, d)", {"x": x})
    with pytest.raises(ValueError, match="overlaps the input x"):
        rt.check_out("f", x, F32, (4, 8), "(n, d)", {"x": x})
    buffer = np.zeros(64, dtype=np.float32)
    with pytest.raises(ValueError, match="overlaps the input x"):
        rt.check_out("f", buffer[:32].reshape(4, 8), F32, (4, 8), "(n, d)",
                      {"x": buffer[16:48].reshape(4, 8)})
    read_only = np.zeros((4, 8), F32)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        rt.check_out("f", read_only, F32, (4, 8), "(n, d)", {"x": x})
    with pytest.raises(ValueError, match=r"f: out: expected shape \(4, 8\)"):
        rt.check_out("f", np.zeros((4, 9), F32), F32, (4, 8), "(n, d)", {"x": x})


def test_parameter_conversions():
    assert rt.as_float("f", "eps", 1) == 1.0 and type(rt.as_float("f", "eps", 1)) is float
    assert rt.as_float("f", "eps", np.float32(0.5)) == 0.5
    assert rt.as_int("f", "k", np.int64(3)) == 3
    assert rt.as_bool("f", "causal", np.bool_(True)) is True
    for convert, value in ((rt.as_float, True), (rt.as_float, "1"), (rt.as_int, 1.5),
                           (rt.as_int, True), (rt.as_bool, 1), (rt.as_str, 1)):
        with pytest.raises(TypeError, match=r"^f: p: expected"):
            convert("f", "p", value)
    assert str(rt.out_of_range("f", "eps", 0.0, "> 0")) == "f: eps: expected > 0, got 0.0"


def test_float32_from_bits_builds_powers_of_two():
    from numba import njit

    @njit
    def power_of_two(k):
        return rt.float32_from_bits((k + 127) << 23)

    for k in (-126, -1, 0, 1, 127):
        assert power_of_two(k) == np.float32(2.0) ** k


def test_threads_are_set_and_restored():
    before = rt.get_threads()
    with rt.threads(1):
        assert rt.get_threads() == 1
    assert rt.get_threads() == before
    with pytest.raises(ValueError, match="set_threads: count"):
        rt.set_threads(rt.max_threads() + 1)
    with pytest.raises(TypeError):
        rt.set_threads(True)


def test_empty_huge_gives_aligned_writable_arrays_of_every_size():
    small = rt.empty_huge(10)
    assert small.shape == (10,) and small.dtype == np.float32
    count = (rt.HUGE_PAGE // 4) * 3 + 5  # more than three huge pages of float32
    large = rt.empty_huge(count)
    assert large.shape == (count,) and large.flags.writeable and large.flags.c_contiguous
    assert large.ctypes.data % rt.HUGE_PAGE == 0
    large[:] = 1.5
    assert float(large[-1]) == 1.5
    assert rt.empty_huge(7, np.int8).dtype == np.int8


def test_scratch_reuses_its_buffer_per_key_and_thread():
    first = rt.scratch("test.scratch", 1000)
    again = rt.scratch("test.scratch", 600)
    assert again.ctypes.data == first.ctypes.data and again.size == 600
    other = rt.scratch("test.other", 1000)
    assert other.ctypes.data != first.ctypes.data
    bigger = rt.scratch("test.scratch", 5000)  # grown: new memory, large enough
    assert bigger.size == 5000
    seen = {}

    def in_a_thread():
        seen["address"] = rt.scratch("test.scratch", 600).ctypes.data

    worker = threading.Thread(target=in_a_thread)
    worker.start()
    worker.join()
    assert seen["address"] != bigger.ctypes.data  # each thread has its own
