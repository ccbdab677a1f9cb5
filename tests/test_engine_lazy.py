"""koschei.engine loads lazily, hands out functions in any import order, and can be pointed at a
workspace's generated modules. Each check runs in a fresh interpreter (sys.modules is the
subject)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from koschei.phases import code_generate
from koschei.workspace import Workspace

REPO = Path(__file__).resolve().parent.parent


def python(code: str, tmp_path: Path) -> str:
    """Run ``code`` in a fresh interpreter; return its stdout (fail the test on any error)."""
    env = {**os.environ, "KOSCHEI_NUMBA_CACHE_DIR": str(tmp_path / ".numba_cache")}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], check=False,
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    """A workspace with rmsnorm and softmax rendered (nothing compiled)."""
    root = tmp_path_factory.mktemp("workspace")
    (root / "specs" / "foundation").mkdir(parents=True)
    (root / "koschei.toml").write_text("", encoding="utf-8")
    for name in ("rmsnorm", "softmax"):
        shutil.copy(REPO / "specs" / "foundation" / f"{name}.yaml", root / "specs" / "foundation")
    code_generate.run(Workspace.find(root), code_generate.Options())
    return root


def test_importing_the_engine_imports_neither_numba_nor_numpy_nor_a_kernel(tmp_path):
    output = python("""
        import sys
        import koschei.engine
        heavy = sorted(m for m in sys.modules
                       if m.split(".")[0] in ("numba", "numpy", "llvmlite")
                       or m.startswith("koschei.engine."))
        print(heavy)
    """, tmp_path)
    assert output.strip() == "[]"


@pytest.mark.parametrize("first", ["function", "submodule"])
def test_the_package_attribute_is_the_function_in_either_import_order(generated, tmp_path, first):
    output = python(f"""
        import importlib, sys, types
        import koschei.engine
        koschei.engine.use_workspace({str(generated)!r})
        if {first!r} == "submodule":
            import koschei.engine.rmsnorm
        from koschei.engine import rmsnorm
        assert isinstance(rmsnorm, types.FunctionType), rmsnorm
        assert rmsnorm.__module__ == "koschei.engine.rmsnorm"
        import koschei.engine.rmsnorm
        from koschei.engine import rmsnorm as again
        assert again is rmsnorm and koschei.engine.rmsnorm is rmsnorm
        module = sys.modules["koschei.engine.rmsnorm"]
        assert isinstance(module, types.ModuleType) and module.rmsnorm is rmsnorm
        assert module.__file__ == {str(generated / "koschei/engine/rmsnorm.py")!r}
        from koschei.engine.rmsnorm import reference
        assert callable(reference)
        assert importlib.import_module("koschei.engine.rmsnorm") is module
        assert "koschei.engine.softmax" not in sys.modules  # only what was asked for
        print("ok")
    """, tmp_path)
    assert output.strip() == "ok"


def test_names_unknown_attributes_and_lists_the_kernels(generated, tmp_path):
    output = python(f"""
        import koschei.engine
        koschei.engine.use_workspace({str(generated)!r})
        print(koschei.engine.kernel_names())
        print("rmsnorm" in dir(koschei.engine))
        try:
            koschei.engine.nonexistent
        except AttributeError as error:
            print(error)
    """, tmp_path)
    names, listed, error = output.strip().splitlines()
    assert "'rmsnorm'" in names and "'softmax'" in names
    assert listed == "True"
    assert "no attribute 'nonexistent'" in error and "rmsnorm" in error


def test_use_workspace_replaces_kernels_imported_from_elsewhere(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    for root, answer in ((first, "first"), (second, "second")):
        (root / "koschei" / "engine").mkdir(parents=True)
        (root / "koschei" / "engine" / "probe.py").write_text(
            f"def probe():\n    return {answer!r}\n", encoding="utf-8")
    output = python(f"""
        import koschei.engine
        koschei.engine.use_workspace({str(first)!r})
        from koschei.engine import probe
        print(probe())
        koschei.engine.use_workspace({str(second)!r})
        from koschei.engine import probe
        print(probe())
        koschei.engine.use_workspace({str(second)!r})  # again: nothing changes
        print(koschei.engine.probe())
    """, tmp_path)
    assert output.split() == ["first", "second", "second"]


def test_a_generated_module_checks_arguments_without_compiling(generated, tmp_path):
    output = python(f"""
        import numpy as np
        import koschei.engine
        koschei.engine.use_workspace({str(generated)!r})
        from koschei.engine import rmsnorm
        x = np.ones((2, 8), dtype=np.float64)
        try:
            rmsnorm(x, np.ones(8, dtype=np.float32))
        except TypeError as error:
            print(error)
        import sys
        module = sys.modules["koschei.engine.rmsnorm"]
        print(module._rows_serial.signatures)  # nothing was compiled for the bad call
    """, tmp_path)
    message, signatures = output.strip().splitlines()
    assert message.startswith("rmsnorm: x: expected dtype float32, got float64")
    assert signatures == "[]"


@pytest.mark.skipif(not (REPO / "koschei" / "engine" / "rmsnorm.py").exists(),
                    reason="run `koschei code-generate` in the repository first")
def test_the_installed_engine_hands_out_functions(tmp_path):
    output = python("""
        import sys, types
        import koschei.engine.softmax
        from koschei.engine import softmax, rmsnorm
        print(isinstance(softmax, types.FunctionType), isinstance(rmsnorm, types.FunctionType))
    """, tmp_path)
    assert output.split() == ["True", "True"]


def test_the_models_package_declares_its_names_without_importing_numpy_or_numba(tmp_path):
    output = python("""
        import sys
        import koschei.engine
        import koschei.engine.models
        names = koschei.engine.model_names()
        listed = all(name in dir(koschei.engine) for name in names) and \
            names == sorted(koschei.engine.models.EXPORTS)
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("numba", "numpy", "llvmlite")
                       or (m.startswith("koschei.engine.") and m != "koschei.engine.models"))
        print(names, listed, heavy)
    """, tmp_path)
    assert output.strip() == ("['Decoder', 'DecoderConfig', 'KVCache', 'MiniLM', 'MiniLMConfig'] True "
                              "[]")


def test_model_names_load_their_module_on_first_use(tmp_path):
    output = python("""
        import sys
        from koschei.engine import KVCache
        import koschei.engine
        from koschei.engine.models import KVCache as same
        print(KVCache is same, KVCache.__module__, koschei.engine.KVCache is KVCache)
        print("koschei.engine.models.decoder" in sys.modules)  # only what was asked for
        from koschei.engine import Decoder, DecoderConfig
        print(Decoder.__module__, DecoderConfig.named("tiny").head_dim)
        print(sorted(set(koschei.engine.model_names()) - set(koschei.engine.__all__)))
        try:
            koschei.engine.Encoder
        except AttributeError as error:
            print(error)
    """, tmp_path)
    kv_cache, decoder_loaded, decoder, missing, error = output.strip().splitlines()
    assert kv_cache == "True koschei.engine.models.kv_cache True"
    assert decoder_loaded == "False"
    assert decoder == "koschei.engine.models.decoder 16"
    assert missing == "[]"
    assert "no attribute 'Encoder'" in error and "its models: Decoder, DecoderConfig, KVCache" \
        in error
