"""koschei.bench.check: the final state of a benchmarked call goes into buffers made once."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from koschei.bench import check
from koschei.engine import gla, mlstm
from koschei.specs import load_specs
from koschei.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]


def _spec(name):
    return load_specs(Workspace(REPO))[name].spec


def _gla_inputs(rng, with_state):
    q, k, v = (rng.standard_normal((1, 2, 8), dtype=np.float32) for _ in range(3))
    g = -rng.uniform(0.0, 1.0, (1, 2, 8)).astype(np.float32)
    state = rng.standard_normal((2, 8, 8), dtype=np.float32) if with_state else None
    return {"q": q, "k": k, "v": v, "g": g, "initial_state": state}


def test_a_call_that_asks_for_the_final_state_writes_it_into_buffers_made_once():
    spec = _spec("gla")
    inputs = _gla_inputs(np.random.default_rng(0), with_state=True)
    params = {"output_final_state": True}
    buffers = check.state_buffers(spec, inputs, params)
    assert list(buffers) == ["final_state"]
    assert buffers["final_state"].shape == (2, 8, 8)
    assert buffers["final_state"] is not inputs["initial_state"]
    out = np.empty((1, 2, 8), np.float32)
    call = check.kernel_call(gla, inputs, params, out, buffers)
    o, state = call()
    assert o is out and state is buffers["final_state"]
    _, expected_state = gla(**inputs, **params)
    np.testing.assert_array_equal(state, expected_state)
    np.testing.assert_array_equal(call()[1], expected_state)  # the input state is left alone


def test_no_buffers_without_the_flag_or_without_a_state_to_start_from():
    spec = _spec("gla")
    rng = np.random.default_rng(1)
    assert check.state_buffers(spec, _gla_inputs(rng, True), {}) == {}
    assert check.state_buffers(spec, _gla_inputs(rng, False), {"output_final_state": True}) == {}
    assert check.state_buffers(_spec("rmsnorm"), {"x": np.zeros((2, 4), np.float32)}, {}) == {}


def test_a_state_of_several_arrays_gets_a_buffer_for_each():
    spec = _spec("mlstm")
    rng = np.random.default_rng(2)
    T, H, K, V = 1, 2, 8, 4
    inputs = {"q": rng.standard_normal((T, H, K), dtype=np.float32),
              "k": rng.standard_normal((T, H, K), dtype=np.float32),
              "v": rng.standard_normal((T, H, V), dtype=np.float32),
              "i": rng.standard_normal((T, H), dtype=np.float32),
              "f": rng.standard_normal((T, H), dtype=np.float32),
              "initial_C": rng.standard_normal((H, K, V), dtype=np.float32),
              "initial_n": rng.standard_normal((H, K), dtype=np.float32),
              "initial_m": np.zeros(H, np.float32)}
    params = {"output_final_state": True}
    buffers = check.state_buffers(spec, inputs, params)
    assert list(buffers) == ["final_C", "final_n", "final_m"]
    result = check.kernel_call(mlstm, inputs, params, np.empty((T, H, V), np.float32),
                               buffers)()
    assert all(got is buffers[name] for got, name in zip(result[1:], buffers, strict=True))
    for got, wanted in zip(result, mlstm(**inputs, **params), strict=True):
        np.testing.assert_array_equal(got, wanted)
