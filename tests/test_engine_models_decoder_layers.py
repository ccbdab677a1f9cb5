"""koschei.engine.models.decoder's layer types: gated linear attention ("gla"), Mamba-2's layer
("mamba2"), Mamba's ("mamba") and hybrids with softmax attention, against an independent float64 PyTorch
implementation written from the papers' formulas (prefill, every decoding step, greedy
generation), against the model's own NumPy reference, and the recurrent states, the sizes, the
configurations and bad layer types."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from koschei.engine import Decoder, DecoderConfig
from koschei.engine.models import decoder as decoder_module

BASE = DecoderConfig(vocab_size=97, hidden_size=64, num_layers=4, num_heads=4, num_kv_heads=2,
                     intermediate_size=160, max_seq_length=64)
CONFIGS = {
    "gla": BASE.replace(num_layers=3, layer_types=("gla",) * 3),
    "hybrid": BASE.replace(layer_types=("gla", "gla", "attention", "gla")),
    "mamba2": BASE.replace(num_layers=3, layer_types=("mamba2",) * 3),
    "mixed": BASE.replace(layer_types=("mamba2", "attention", "gla", "mamba2")),
    "mamba": BASE.replace(num_layers=3, layer_types=("mamba",) * 3),
    "mamba_hybrid": BASE.replace(layer_types=("mamba", "gla", "attention", "mamba")),
}
PROMPT = np.array([5, 17, 3, 96, 0, 42, 8, 8, 61, 29, 77], dtype=np.int64)  # 11 tokens
NEW_TOKENS = 16
# float32 engine vs the float64 PyTorch model: |engine - torch| <= LOGITS_ATOL * max|torch logits|
LOGITS_ATOL = 1e-4


def draw_parameters(config: DecoderConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Parameters with enough spread that every part of every mixer matters: matrices
    N(0, 0.25^2), gains 1 + N(0, 0.2^2), GLA's gate bias N(0, 0.5^2) (decays exp(g) from about
    0.7 to 1), Mamba-2's A in [0.5, 2], dt_bias N(-1, 0.5^2), D 1 + N(0, 0.2^2), its
    convolution's taps and bias U(-0.5, 0.5) (PyTorch's Conv1d), drawn after the others."""
    rng = np.random.default_rng(seed)
    parameters = {}
    shapes = config.parameter_shapes()
    for name, shape in shapes.items():
        if ".conv1d." in name:
            continue
        if name.endswith(".A_log"):
            value = np.log(rng.uniform(0.5, 2.0, shape))
        elif name.endswith(".dt_bias"):
            value = -1 + 0.5 * rng.standard_normal(shape)
        elif name.endswith(".bias"):
            value = 0.5 * rng.standard_normal(shape)
        elif len(shape) == 1:
            value = 1 + 0.2 * rng.standard_normal(shape)
        else:
            value = 0.25 * rng.standard_normal(shape)
        parameters[name] = value.astype(np.float32)
    for name, shape in shapes.items():
        if ".conv1d." in name:
            parameters[name] = rng.uniform(-0.5, 0.5, shape).astype(np.float32)
    return {name: parameters[name] for name in shapes}


# --- the PyTorch model ----------------------------------------------------------------------------


def torch_attention(config, p, prefix, h):
    """Llama's attention (as tests/test_engine_models_decoder.py): rotate-half RoPE, causal SDPA
    with GQA."""
    n, hq, hkv, hd = h.shape[0], config.num_heads, config.num_kv_heads, config.head_dim
    half = hd // 2
    inverse_frequencies = 1.0 / config.rope_theta ** (
        torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    angles = torch.arange(n, dtype=torch.float64)[:, None] * inverse_frequencies[None, :]
    cos = torch.cat([angles, angles], dim=-1).cos()  # (n, hd)
    sin = torch.cat([angles, angles], dim=-1).sin()

    def rotary(t):  # (heads, n, hd)
        return t * cos + torch.cat([-t[..., half:], t[..., :half]], dim=-1) * sin

    q = F.linear(h, p[prefix + "q_proj.weight"]).view(n, hq, hd).transpose(0, 1)
    k = F.linear(h, p[prefix + "k_proj.weight"]).view(n, hkv, hd).transpose(0, 1)
    v = F.linear(h, p[prefix + "v_proj.weight"]).view(n, hkv, hd).transpose(0, 1)
    attended = F.scaled_dot_product_attention(rotary(q)[None], rotary(k)[None], v[None],
                                              is_causal=True, enable_gqa=True)[0]
    return F.linear(attended.transpose(0, 1).reshape(n, hq * hd), p[prefix + "o_proj.weight"])


def torch_gla(config, p, prefix, h):
    """Gated linear attention (Yang et al. 2023) in its parallel form: with the gates
    alpha_t = sigmoid(gk_t)^(1/16) per key channel and b_t = sum_{s<=t} log alpha_s,
    o_i = sum_{j<=i} ((q_i exp(b_i - b_j)) . k_j) v_j / sqrt(hd); then fla's output gate,
    rmsnorm per head times silu(h W_g^T), and W_o."""
    n, heads, hd = h.shape[0], config.num_heads, config.head_dim
    q = F.linear(h, p[prefix + "q_proj.weight"]).view(n, heads, hd)
    k = F.linear(h, p[prefix + "k_proj.weight"]).view(n, heads, hd)
    v = F.linear(h, p[prefix + "v_proj.weight"]).view(n, heads, hd)
    gk = F.linear(F.linear(h, p[prefix + "gk_proj.0.weight"]), p[prefix + "gk_proj.1.weight"],
                  p[prefix + "gk_proj.1.bias"])
    log_alpha = torch.log(torch.sigmoid(gk) ** (1 / 16)).view(n, heads, hd)
    b = torch.cumsum(log_alpha, dim=0)  # (n, H, hd)
    decay = torch.exp(b[:, None] - b[None, :])  # (i, j, H, hd): exp(b_i - b_j)
    causal = torch.tril(torch.ones(n, n, dtype=torch.bool))
    scores = torch.einsum("ihk,jhk,ijhk->hij", q, k, torch.where(
        causal[:, :, None, None], decay, torch.zeros_like(decay))) / hd ** 0.5
    o = torch.einsum("hij,jhv->ihv", scores, v)  # (n, H, hd)
    gate = F.silu(F.linear(h, p[prefix + "g_proj.weight"])).view(n, heads, hd)
    o = F.rms_norm(o, (hd,), p[prefix + "g_norm.weight"], config.rms_norm_eps) * gate
    return F.linear(o.reshape(n, heads * hd), p[prefix + "o_proj.weight"])


def torch_mamba2(config, p, prefix, h):
    """Mamba-2's SSD layer (Dao and Gu 2024), one group: x, B and C through mamba_ssm's causal
    depthwise Conv1d (width 4, padded by 3 zeros, cut to n outputs) and SiLU, then the
    recurrence: per head, h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t^T (N, P),
    y_t = C_t h_t + D x_t; then y silu(z) through a gated RMSNorm, and W_out."""
    n, heads, hd = h.shape[0], config.num_heads, config.head_dim
    inner = heads * hd
    z = F.linear(h, p[prefix + "z_proj.weight"])
    xbc = torch.cat([F.linear(h, p[prefix + name + ".weight"])
                     for name in ("x_proj", "B_proj", "C_proj")], dim=1)  # (n, inner + 2 N)
    width = p[prefix + "conv1d.weight"].shape[2]
    xbc = F.conv1d(xbc.T[None], p[prefix + "conv1d.weight"], p[prefix + "conv1d.bias"],
                   padding=width - 1, groups=xbc.shape[1])[0, :, :n].T
    xbc = F.silu(xbc)
    x = xbc[:, :inner].reshape(n, heads, hd)
    B, C = xbc[:, inner:inner + hd], xbc[:, inner + hd:]  # (n, N) each
    dt = F.softplus(F.linear(h, p[prefix + "dt_proj.weight"]) + p[prefix + "dt_bias"])  # (n, H)
    A = -torch.exp(p[prefix + "A_log"])  # (H,)
    state = torch.zeros(heads, hd, hd, dtype=torch.float64)  # (H, N, P)
    ys = []
    for t in range(n):
        state = (torch.exp(dt[t] * A)[:, None, None] * state
                 + dt[t][:, None, None] * B[t][None, :, None] * x[t][:, None, :])
        ys.append(torch.einsum("n,hnp->hp", C[t], state) + p[prefix + "D"][:, None] * x[t])
    y = torch.stack(ys).reshape(n, heads * hd) * F.silu(z)
    y = F.rms_norm(y, (heads * hd,), p[prefix + "norm.weight"], config.rms_norm_eps)
    return F.linear(y, p[prefix + "out_proj.weight"])


def torch_mamba(config, p, prefix, h):
    """Mamba's selective SSM block (Gu and Dao 2023) as mamba_ssm's Mamba computes it, expand 1:
    x and z from in_proj, x through the causal depthwise Conv1d and SiLU, dt's low rank, B and
    C from x_proj, dt = softplus(dt_proj(.) + its bias); per channel h_t = exp(dt_t A) h_{t-1}
    + dt_t x_t B_t (N values), y_t = h_t C_t + D x_t, as a loop; then y silu(z) and out_proj."""
    n, inner, rank = h.shape[0], config.hidden_size, config.dt_rank
    N = p[prefix + "A_log"].shape[1]
    xz = F.linear(h, p[prefix + "in_proj.weight"])
    x, z = xz[:, :inner], xz[:, inner:]
    width = p[prefix + "conv1d.weight"].shape[2]
    x = F.silu(F.conv1d(x.T[None], p[prefix + "conv1d.weight"], p[prefix + "conv1d.bias"],
                        padding=width - 1, groups=inner)[0, :, :n].T)
    x_dbl = F.linear(x, p[prefix + "x_proj.weight"])
    dt = F.softplus(F.linear(x_dbl[:, :rank], p[prefix + "dt_proj.weight"],
                             p[prefix + "dt_proj.bias"]))  # (n, inner)
    B, C = x_dbl[:, rank:rank + N], x_dbl[:, rank + N:]
    A = -torch.exp(p[prefix + "A_log"])  # (inner, N)
    state = torch.zeros(inner, N, dtype=torch.float64)
    ys = []
    for t in range(n):
        state = torch.exp(dt[t][:, None] * A) * state + (dt[t] * x[t])[:, None] * B[t][None, :]
        ys.append(state @ C[t] + p[prefix + "D"] * x[t])
    y = torch.stack(ys) * F.silu(z)
    return F.linear(y, p[prefix + "out_proj.weight"])


MIXERS = {"attention": ("self_attn.", torch_attention), "gla": ("gla.", torch_gla),
          "mamba2": ("mamba2.", torch_mamba2), "mamba": ("mamba.", torch_mamba)}


def torch_logits(config: DecoderConfig, parameters: dict[str, np.ndarray],
                 ids: np.ndarray) -> np.ndarray:
    """The logits of every position of ``ids`` (n, vocab), float64, one pass from scratch."""
    p = {name: torch.from_numpy(array).double() for name, array in parameters.items()}
    d, eps = config.hidden_size, config.rms_norm_eps
    x = p["embed_tokens.weight"][torch.from_numpy(np.asarray(ids, dtype=np.int64))]
    for layer, kind in enumerate(config.layer_types):
        prefix = f"layers.{layer}."
        h = F.rms_norm(x, (d,), p[prefix + "input_layernorm.weight"], eps)
        name, mixer = MIXERS[kind]
        x = x + mixer(config, p, prefix + name, h)
        h = F.rms_norm(x, (d,), p[prefix + "post_attention_layernorm.weight"], eps)
        hidden = F.silu(F.linear(h, p[prefix + "mlp.gate_proj.weight"])) * F.linear(
            h, p[prefix + "mlp.up_proj.weight"])
        x = x + F.linear(hidden, p[prefix + "mlp.down_proj.weight"])
    x = F.rms_norm(x, (d,), p["norm.weight"], eps)
    return F.linear(x, p["embed_tokens.weight"]).numpy()


def torch_greedy(config, parameters, prompt, count) -> np.ndarray:
    """The prompt and ``count`` tokens of a greedy loop over the PyTorch model."""
    tokens = list(prompt)
    for _ in range(count):
        tokens.append(int(np.argmax(torch_logits(config, parameters, np.array(tokens))[-1])))
    return np.array(tokens, dtype=np.int64)


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def case(request):
    """(name, config, parameters, greedy tokens: the prompt then NEW_TOKENS tokens)."""
    config = CONFIGS[request.param]
    parameters = draw_parameters(config)
    return request.param, config, parameters, torch_greedy(config, parameters, PROMPT,
                                                           NEW_TOKENS)


def assert_logits_close(engine: np.ndarray, expected: np.ndarray, atol: float,
                        what: str) -> None:
    error = np.max(np.abs(engine - expected)) / np.max(np.abs(expected))
    assert error <= atol, f"{what}: max |engine - torch| / max |torch| = {error:.2e} > {atol}"


# --- equivalence with PyTorch ---------------------------------------------------------------------


def test_prefill_and_every_decoding_step_match_pytorch(case):
    name, config, parameters, tokens = case
    decoder = Decoder(config, parameters)
    expected = torch_logits(config, parameters, tokens)
    prefill = decoder.forward(PROMPT)
    assert prefill.shape == (len(PROMPT), config.vocab_size) and prefill.dtype == np.float32
    assert_logits_close(prefill, expected[:len(PROMPT)], LOGITS_ATOL, f"{name}: prefill")
    for position in range(len(PROMPT), len(tokens) - 1):
        logits = decoder.forward(tokens[position:position + 1])
        assert_logits_close(logits, expected[position:position + 1], LOGITS_ATOL,
                            f"{name}: decoding step at position {position}")
    assert decoder.length == len(tokens) - 1


def test_greedy_generation_gives_the_tokens_of_a_greedy_pytorch_loop(case):
    name, config, parameters, tokens = case
    decoder = Decoder(config, parameters)
    new = decoder.generate(PROMPT, NEW_TOKENS, temperature=0)
    assert new.dtype == np.int64 and new.shape == (NEW_TOKENS,)
    assert new.tolist() == tokens[len(PROMPT):].tolist(), name
    assert len(set(new.tolist())) > 2  # not a constant sequence
    assert decoder.length == len(PROMPT) + NEW_TOKENS - 1
    # generate starts over: the states are zeroed first
    assert decoder.generate(PROMPT, NEW_TOKENS, temperature=0).tolist() == new.tolist()


def test_the_pytorch_model_is_not_trivially_satisfied(case):
    """Its logits depend on the order of the tokens (the mixers carry information along), and on
    the gates: GLA's gate bias, Mamba-2's A, D and convolution, far beyond the tolerance."""
    name, config, parameters, _ = case
    expected = torch_logits(config, parameters, PROMPT)
    scale = np.max(np.abs(expected))
    swapped = PROMPT.copy()
    swapped[[0, 1]] = swapped[[1, 0]]
    assert np.max(np.abs(torch_logits(config, parameters, swapped)[-1] - expected[-1])) > \
        100 * LOGITS_ATOL * scale
    # GLA's gate moves its log-decays by /16 (fla's normalizer): a larger step
    steps = {"gk_proj.1.bias": 2.0, "A_log": 0.5, "D": 0.5, "conv1d.weight": 0.5,
             "conv1d.bias": 0.5}
    for suffix, step in steps.items():
        names = [key for key in parameters if key.endswith(suffix)]
        for key in names:
            changed = {**parameters, key: parameters[key] + np.float32(step)}
            assert np.max(np.abs(torch_logits(config, changed, PROMPT) - expected)) > \
                100 * LOGITS_ATOL * scale, (name, key)


# --- the NumPy reference, chunks and states -------------------------------------------------------


@pytest.mark.parametrize("weights", ["fp32", "bf16", "ternary"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_the_kernels_references_composed_give_the_logits_of_forward(name, weights):
    config = CONFIGS[name]
    parameters = draw_parameters(config, 3)
    model = Decoder(config, parameters, weights=weights, max_len=32)
    ids = np.random.default_rng(5).integers(0, config.vocab_size, 19)
    expected = model.reference_logits(ids)
    assert model.length == 0 and all(state is None or not state.any()
                                      for state in model.states)  # left alone
    logits = model.forward(ids)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-5 * scale)
    broken = Decoder(config, {**parameters, "norm.weight": parameters["norm.weight"] * 1.01},
                     weights=weights, max_len=32)
    assert np.abs(broken.reference_logits(ids) - logits).max() > 1e-3 * scale


@pytest.mark.parametrize("name", ["hybrid", "mixed"])
def test_a_prompt_longer_than_a_prefill_chunk_runs_in_chunks_alike(name, monkeypatch):
    config = CONFIGS[name]
    parameters = draw_parameters(config, 4)
    ids = np.random.default_rng(6).integers(0, config.vocab_size, 19)
    whole = Decoder(config, parameters, max_len=32)
    expected, greedy = whole.forward(ids), whole.generate(ids, 3, temperature=0)
    monkeypatch.setattr(decoder_module, "PREFILL_CHUNK", 8)  # chunks of 8, 8 and 3 tokens
    chunked = Decoder(config, parameters, max_len=32)
    np.testing.assert_allclose(chunked.forward(ids), expected, rtol=0,
                               atol=1e-5 * np.abs(expected).max())
    assert chunked.length == 19
    np.testing.assert_array_equal(chunked.generate(ids, 3, temperature=0), greedy)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_a_prompt_fed_in_pieces_equals_one_prefill(name):
    """Pieces of 1, 6 (gla's chunked form) and 4 tokens (its recurrence) pass the states on."""
    config = CONFIGS[name]
    decoder = Decoder(config, draw_parameters(config, 5))
    whole = decoder.forward(PROMPT)
    states = decoder.states
    decoder.reset()
    pieces = [decoder.forward(PROMPT[:1]), decoder.forward(PROMPT[1:7]),
              decoder.forward(PROMPT[7:])]
    assert_logits_close(np.concatenate(pieces), whole, 1e-5, f"{name}: prompt in pieces")
    for state, again in zip(states, decoder.states):
        if state is not None:
            np.testing.assert_allclose(again, state, rtol=0, atol=1e-5 * np.abs(state).max())


def test_the_states_are_one_per_linear_layer_read_only_and_reset():
    config = CONFIGS["mixed"]  # mamba2, attention, gla, mamba2
    decoder = Decoder(config, draw_parameters(config))
    assert decoder.cache.num_layers == 1  # the attention layer only
    shape = (config.num_heads, config.head_dim, config.head_dim)
    assert [None if s is None else s.shape for s in decoder.states] == [shape, None, shape, shape]
    assert not any(s.any() for s in decoder.states if s is not None)
    decoder.forward(PROMPT)
    states = decoder.states
    for state in (states[0], states[2], states[3]):
        assert state.dtype == np.float32 and state.any() and not state.flags.writeable
    decoder.forward(PROMPT[:1])
    assert all(new is not old for new, old in zip(decoder.states, states) if new is not None)
    decoder.reset()
    assert decoder.length == 0 and decoder.cache.length == 0
    assert not any(s.any() for s in decoder.states if s is not None)
    # mamba2's conv states: the last 3 rows of x, B and C, replaced by every step, zeroed
    window = (3, config.num_heads * config.head_dim + 2 * config.head_dim)
    assert [None if s is None else s.shape for s in decoder.conv_states] == \
        [window, None, None, window]
    decoder.forward(PROMPT)
    conv = decoder.conv_states
    assert conv[0].any() and not conv[0].flags.writeable
    snapshot = decoder.snapshot()
    decoder.forward(PROMPT[:2])
    assert decoder.conv_states[0] is not conv[0]
    decoder.restore(snapshot)
    assert all(a is b for a, b in zip(decoder.conv_states, conv))
    decoder.reset()
    assert not any(s.any() for s in decoder.conv_states if s is not None)


@pytest.mark.parametrize("name, fail_at", [("gla", 2), ("mixed", 3)])
def test_an_interrupted_forward_leaves_the_states_and_the_cache_as_they_were(name, fail_at,
                                                                             monkeypatch):
    """A kernel that fails in a later layer: the earlier layers' new states are not kept, the
    cache is truncated back, and the next forward goes on as if nothing happened."""
    config = CONFIGS[name]
    parameters = draw_parameters(config, 6)
    expected = Decoder(config, parameters).forward(PROMPT)
    decoder = Decoder(config, parameters)
    decoder.forward(PROMPT[:5])
    states = decoder.states
    calls = []
    real_gla = decoder_module.gla

    def failing_gla(*args, **kwargs):
        calls.append(1)
        if len(calls) == fail_at:
            raise KeyboardInterrupt
        return real_gla(*args, **kwargs)

    monkeypatch.setattr(decoder_module, "gla", failing_gla)
    for piece in (PROMPT[5:6], PROMPT[5:]):  # a decoding step, a prefill
        calls.clear()
        with pytest.raises(KeyboardInterrupt):
            decoder.forward(piece)
        assert decoder.length == 5
        assert all(a is b for a, b in zip(decoder.states, states))
    monkeypatch.setattr(decoder_module, "gla", real_gla)
    assert_logits_close(decoder.forward(PROMPT[5:]), expected[5:], 1e-5, "after the failure")


def test_truncating_the_cache_of_a_hybrid_is_refused():
    """A recurrent state cannot be rewound: the next forward says so instead of mixing
    positions."""
    config = CONFIGS["hybrid"]
    decoder = Decoder(config, draw_parameters(config))
    decoder.forward(PROMPT)
    decoder.cache.truncate(5)
    with pytest.raises(ValueError, match=r"Decoder.forward: the KV cache holds 5 positions but "
                                         r"the recurrent states of the linear layers \[0, 1, 3\] "
                                         r"hold 11: a recurrent state cannot be rewound"):
        decoder.forward(PROMPT[:1])
    decoder.reset()
    assert decoder.forward(PROMPT[:1]).shape == (1, config.vocab_size)


@pytest.mark.parametrize("name", ["gla", "mixed"])
def test_a_snapshot_brings_back_the_position_the_cache_and_the_states(name):
    """Decode two continuations of one prompt from a snapshot: each equals a model that was fed
    only that continuation; a snapshot from before a reset, or beyond the position held, is
    refused."""
    config = CONFIGS[name]
    decoder = Decoder(config, draw_parameters(config))
    decoder.forward(PROMPT)
    after_prompt = decoder.snapshot()
    first = decoder.forward(np.array([7, 9]))
    decoder.restore(after_prompt)
    assert decoder.length == PROMPT.shape[0]
    second = decoder.forward(np.array([11]))
    fresh = Decoder(config, draw_parameters(config))
    fresh.forward(PROMPT)
    np.testing.assert_array_equal(second, fresh.forward(np.array([11])))
    decoder.restore(after_prompt)
    np.testing.assert_array_equal(decoder.forward(np.array([7, 9])), first)
    decoder.reset()
    with pytest.raises(ValueError, match="from before a reset"):
        decoder.restore(after_prompt)
    decoder.forward(PROMPT[:3])
    at_three = decoder.snapshot()
    decoder.restore(at_three)
    decoder.reset()
    decoder.forward(PROMPT[:2])
    with pytest.raises(ValueError, match=r"Decoder.restore: snapshot: expected one taken since "
                                         r"the last reset\(\) at a position the model still "
                                         r"holds \(<= 2\), got one at position 3"):
        decoder.restore(at_three)
    with pytest.raises(ValueError, match="expected one of this model's"):
        decoder.restore(fresh.snapshot())
    with pytest.raises(TypeError, match="expected a DecoderSnapshot"):
        decoder.restore(3)


def test_sampling_works_for_linear_layers():
    config = CONFIGS["gla"]
    decoder = Decoder(config, draw_parameters(config))
    first = decoder.generate(PROMPT, 12, temperature=1.0, top_p=0.9, rng=7)
    assert first.tolist() == decoder.generate(PROMPT, 12, temperature=1.0, top_p=0.9,
                                              rng=7).tolist()
    assert first.min() >= 0 and first.max() < config.vocab_size


# --- sizes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_bytes_per_token_counts_the_kv_cache_of_attention_layers_and_the_states(name):
    config = CONFIGS[name]
    decoder = Decoder(config, draw_parameters(config))
    attention = config.layer_types.count("attention")
    # float32 matrices are stored as matmul's packed panels: rows padded to the panel width
    # (GLA's rank-16 gate projection may be), the embedding (and Mamba's A) as it is
    weights = 4 * config.num_parameters() + sum(
        decoder_module._matmul.packed_weight(np.zeros(shape, np.float32)).nbytes
        - 4 * shape[0] * shape[1] for name, shape in config.parameter_shapes().items()
        if len(shape) == 2 and name != "embed_tokens.weight" and not name.endswith("A_log"))
    per_position = 2 * attention * config.num_kv_heads * config.head_dim * 4
    heads, hd = config.num_heads, config.head_dim
    inner = heads * hd
    # a state per linear layer; mamba2 and mamba also keep the last 3 rows their convolution
    # has seen (x, B and C; x)
    state_bytes = {"attention": 0, "gla": 4 * heads * hd * hd,
                   "mamba2": 4 * heads * hd * hd + 4 * 3 * (inner + 2 * hd),
                   "mamba": 4 * inner * 16 + 4 * 3 * inner}
    states = sum(state_bytes[kind] for kind in config.layer_types)
    assert decoder.weight_nbytes == weights
    assert decoder.state_nbytes == states
    for context in (1, 40):
        assert decoder.bytes_per_token(context) == \
            weights + context * per_position + 2 * states
    if attention:
        assert decoder.cache.num_layers == attention
        assert decoder.cache.bytes_per_position == per_position
    else:
        assert decoder.cache is None


@pytest.mark.parametrize("weights", ["bf16", "ternary"])
def test_the_mixers_matrices_are_stored_as_the_weights_say_and_their_vectors_float32(weights):
    config = CONFIGS["mixed"]
    decoder = Decoder(config, draw_parameters(config), weights=weights)
    shapes = config.parameter_shapes()
    vectors = 4 * sum(math.prod(shape) for shape in shapes.values() if len(shape) != 2)
    matrices = {name: shape for name, shape in shapes.items() if len(shape) == 2}
    if weights == "bf16":
        stored = sum(2 * rows * columns for rows, columns in matrices.values())
    else:  # the embedding and the decays' projections float32, every other matrix packed
        # ternary with one float32 scale (the decays' as the float32 GEMM's packed panels)
        embedding = matrices.pop("embed_tokens.weight")
        decays = {name: shape for name, shape in matrices.items()
                  if "gk_proj" in name or "dt_proj" in name}
        assert decays
        stored = 4 * embedding[0] * embedding[1] + sum(
            decoder_module._Float32Projection(np.zeros(shape, np.float32)).nbytes
            for shape in decays.values())
        stored += sum(rows * ((columns + 3) // 4) + 4 for name, (rows, columns) in matrices.items()
                      if name not in decays)
    assert decoder.weight_nbytes == vectors + stored


# --- configurations -------------------------------------------------------------------------------


def test_the_default_layer_types_are_attention_with_the_names_of_before():
    config = DecoderConfig.named("tiny")
    assert config.layer_types == ("attention", "attention")
    assert config.attention_layers == (0, 1)
    assert list(config.parameter_shapes())[:11] == [
        "embed_tokens.weight", "layers.0.input_layernorm.weight",
        "layers.0.self_attn.q_proj.weight", "layers.0.self_attn.k_proj.weight",
        "layers.0.self_attn.v_proj.weight", "layers.0.self_attn.o_proj.weight",
        "layers.0.post_attention_layernorm.weight", "layers.0.mlp.gate_proj.weight",
        "layers.0.mlp.up_proj.weight", "layers.0.mlp.down_proj.weight",
        "layers.1.input_layernorm.weight"]
    assert DecoderConfig(**{**vars(config), "layer_types": None}) == config


def test_the_mixers_parameters_have_fla_and_mamba_names_and_shapes():
    config = CONFIGS["mixed"]  # d = 64, H = 4, hd = 16
    shapes = config.parameter_shapes()
    gla = {name[len("layers.2.gla."):]: shape for name, shape in shapes.items()
           if name.startswith("layers.2.gla.")}
    assert gla == {"q_proj.weight": (64, 64), "k_proj.weight": (64, 64),
                   "v_proj.weight": (64, 64), "gk_proj.0.weight": (16, 64),
                   "gk_proj.1.weight": (64, 16), "gk_proj.1.bias": (64,),
                   "g_proj.weight": (64, 64), "g_norm.weight": (16,), "o_proj.weight": (64, 64)}
    mamba2 = {name[len("layers.0.mamba2."):]: shape for name, shape in shapes.items()
              if name.startswith("layers.0.mamba2.")}
    assert mamba2 == {"z_proj.weight": (64, 64), "x_proj.weight": (64, 64),
                      "B_proj.weight": (16, 64), "C_proj.weight": (16, 64),
                      "dt_proj.weight": (4, 64), "dt_bias": (4,), "A_log": (4,), "D": (4,),
                      "conv1d.weight": (96, 1, 4), "conv1d.bias": (96,),
                      "norm.weight": (64,), "out_proj.weight": (64, 64)}
    assert not any("self_attn" in name for name in shapes if not name.startswith("layers.1."))


def test_random_parameters_initialize_the_mixers_as_their_papers():
    config = CONFIGS["mixed"]
    parameters = config.random_parameters(3)
    a = np.exp(parameters["layers.0.mamba2.A_log"])
    assert np.all((a >= 1) & (a <= 16))
    dt = np.logaddexp(0, parameters["layers.3.mamba2.dt_bias"].astype(np.float64))
    np.testing.assert_array_less(9.99e-4, dt)
    np.testing.assert_array_less(dt, 0.1001)
    assert np.all(parameters["layers.0.mamba2.D"] == 1)
    taps = parameters["layers.0.mamba2.conv1d.weight"]  # PyTorch's Conv1d: +-1/sqrt(4)
    assert taps.shape == (96, 1, 4) and np.abs(taps).max() <= 0.5 and taps.std() > 0.2
    assert np.all(parameters["layers.2.gla.gk_proj.1.bias"] == 0)
    assert np.all(parameters["layers.2.gla.g_norm.weight"] == 1)
    # an all-attention config draws what it drew before there were layer types
    tiny = DecoderConfig.named("tiny")
    draws = np.random.default_rng(3)
    first = draws.standard_normal((97, 64), dtype=np.float32) * np.float32(0.02)
    np.testing.assert_array_equal(tiny.random_parameters(3)["embed_tokens.weight"], first)
    assert Decoder.random(config, seed=1).generate(PROMPT, 2).shape == (2,)


def test_igla_and_igla_hybrid_are_igla_v2_with_gla_layers():
    v2 = DecoderConfig.named("igla_v2")
    igla, hybrid = DecoderConfig.named("igla"), DecoderConfig.named("igla_hybrid")
    assert set(DecoderConfig.names()) >= {"igla", "igla_hybrid", "igla_v2", "tiny", "small",
                                          "mamba", "mamba_hybrid"}
    mamba, mamba_hybrid = DecoderConfig.named("mamba"), DecoderConfig.named("mamba_hybrid")
    assert mamba.layer_types == ("mamba",) * 12
    assert mamba_hybrid.layer_types == ("mamba", "mamba", "mamba", "attention") * 3
    assert mamba.replace(layer_types=None) == DecoderConfig.named("igla_v2")
    for config in (igla, hybrid):
        assert config.replace(layer_types=None) == v2
    assert igla.layer_types == ("gla",) * 12
    assert hybrid.layer_types == ("gla", "gla", "gla", "attention") * 3
    assert hybrid.attention_layers == (3, 7, 11)
    d, r = 768, 16
    gla_layer = 5 * d * d + d * r + r * d + d + 64 + 3 * d * 2048 + 2 * d
    assert igla.num_parameters() == 32000 * d + 12 * gla_layer + d


@pytest.mark.parametrize("layer_types, error, message", [
    (("gla", "rwkv", "attention"), ValueError,
     ("DecoderConfig: layer_types[1]: expected one of ('attention', 'gla', 'mamba2', 'mamba'), "
      "got 'rwkv'")),
    (("gla", "gla"), ValueError,
     ("DecoderConfig: layer_types: expected a sequence of 3 layer types (num_layers), each one "
      "of ('attention', 'gla', 'mamba2', 'mamba'), got 2 types")),
    (("gla",) * 4, ValueError, "got 4 types"),
    (("gla", 1, "gla"), TypeError,
     ("DecoderConfig: layer_types[1]: expected one of ('attention', 'gla', 'mamba2', 'mamba'), "
      "got int 1")),
    ("gla", TypeError, ("DecoderConfig: layer_types: expected a sequence of 3 layer types "
                        "(num_layers), each one of ('attention', 'gla', 'mamba2', 'mamba'), "
                        "got str 'gla'")),
    ({"gla": 3}, TypeError, "layer_types: expected a sequence of 3 layer types"),
])
def test_bad_layer_types_are_refused(layer_types, error, message):
    with pytest.raises(error) as raised:
        BASE.replace(num_layers=3, layer_types=layer_types)
    assert message in str(raised.value)


def test_layer_types_are_kept_as_a_tuple_and_follow_a_new_layer_count_when_uniform():
    config = BASE.replace(num_layers=3, layer_types=["gla", "attention", "mamba2"])
    assert config.layer_types == ("gla", "attention", "mamba2")
    assert CONFIGS["gla"].replace(num_layers=5).layer_types == ("gla",) * 5
    assert DecoderConfig.named("tiny").replace(num_layers=3).layer_types == ("attention",) * 3
    with pytest.raises(ValueError, match=r"layer_types: expected a sequence of 2 layer types"):
        config.replace(num_layers=2)
    with pytest.raises(ValueError, match="DecoderConfig: num_layers: expected >= 1, got 0"):
        CONFIGS["gla"].replace(num_layers=0)
