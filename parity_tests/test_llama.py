"""Parity of the Llama family's components and models: RMSNorm, rotary q and k, SwiGLU, grouped
queries.

Each NumPy component (hand-written backward) against its torch twin (autograd), with random
weights, random inputs and a random upstream gradient, in float64 (1e-12 relative) and float32
(1e-5). The model runs over a product of the family's options: group sizes 1, 2 and 4 (4
query heads sharing 4, 2 or 1 key/value heads), plain multi-head attention, full and partial
rotary, both pairings, RMSNorm or LayerNorm, SwiGLU or GELU, with and without attention biases.
The default run takes a pairwise selection; ``pytest -m slow`` runs the rest.
"""

import itertools

import numpy as np
import pytest
import torch

import numpy_impl as npi
import torch_impl as pti
from parity_tests.helpers import (
    LLAMA,
    TOL,
    assert_close,
    compare_grads,
    load_into_twin,
    pairwise_then_slow,
    randomize,
    rel_err,
)

DTYPES = ["float64", "float32"]
N_CTX = 7
BATCH = 3
D_HEAD = 6


def llama_cfg(dtype="float64", **overrides):
    fields = dict(
        d_vocab=13,
        d_model=16,
        n_heads=4,
        d_head=D_HEAD,
        d_mlp=20,
        n_layers=2,
        n_ctx=N_CTX,
        dtype=dtype,
        **LLAMA,
    )
    fields.update(overrides)
    return npi.TransformerConfig(**fields)


def run_component(np_module, torch_module, cfg, pos, seed=0):
    """Forward and backward through one component in both twins; assert parity of everything."""
    randomize(np_module, seed + 1)
    load_into_twin(np_module, torch_module)
    rng = np.random.default_rng(seed + 2)
    x = rng.standard_normal((BATCH, pos, cfg.d_model)).astype(cfg.dtype)
    x_t = torch.from_numpy(x).requires_grad_(True)
    out = np_module.forward(x)
    out_t = torch_module(x_t)
    assert_close("output", out, out_t, cfg.dtype)
    dout = rng.standard_normal(out.shape).astype(cfg.dtype)  # random, never all ones
    dx = np_module.backward(dout)
    out_t.backward(torch.from_numpy(dout))
    assert_close("input gradient", dx, x_t.grad, cfg.dtype)
    return compare_grads(np_module, torch_module, cfg.dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pos", [1, N_CTX])
def test_rmsnorm(dtype, pos):
    cfg = llama_cfg(dtype)
    run_component(npi.RMSNorm(cfg), pti.RMSNorm(cfg), cfg, pos)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gated_feedforward(dtype):
    cfg = llama_cfg(dtype)
    errors = run_component(npi.GatedFeedForward(cfg), pti.GatedFeedForward(cfg), cfg, N_CTX)
    assert set(errors) == {"W_gate", "W_in", "W_out"}


ATTENTION = list(
    itertools.product(
        DTYPES,
        [
            None,
            4,
            2,
            1,
        ],  # n_key_value_heads: plain multi-head, then groups of 1, 2 and 4 query heads
        [D_HEAD, 4, 2],  # rotary_dim: all of each head, or its leading entries
        [False, True],  # rotary_adjacent_pairs
        [True, False],  # causal
        [False, True],  # attn_bias
    )
)


@pytest.mark.parametrize(
    "dtype, n_key_value_heads, rotary_dim, adjacent, causal, attn_bias",
    pairwise_then_slow(ATTENTION, ids=["-".join(map(str, case)) for case in ATTENTION]),
)
def test_attention(dtype, n_key_value_heads, rotary_dim, adjacent, causal, attn_bias):
    cfg = llama_cfg(
        dtype,
        n_key_value_heads=n_key_value_heads,
        rotary_dim=rotary_dim,
        rotary_adjacent_pairs=adjacent,
        causal=causal,
        attn_bias=attn_bias,
    )
    np_module = npi.MultiHeadAttention.for_config(cfg, 0)
    torch_module = pti.MultiHeadAttention.for_config(cfg, 0)
    assert type(np_module).__name__ == type(torch_module).__name__
    assert type(np_module).__name__ == (
        "MultiHeadAttention" if n_key_value_heads is None else "GroupedQueryAttention"
    )
    errors = run_component(np_module, torch_module, cfg, N_CTX)
    expected = (
        {"W_Q", "W_K", "W_V", "W_O"}
        if n_key_value_heads is None
        else {"W_Q", "_W_K", "_W_V", "W_O"}
    )
    if attn_bias:
        expected |= {"b_Q", "b_O"} | (
            {"b_K", "b_V"} if n_key_value_heads is None else {"_b_K", "_b_V"}
        )
    assert set(errors) == expected


def test_grouped_heads_are_kept_as_transformer_lens_keeps_them():
    cfg = llama_cfg(n_key_value_heads=2, attn_bias=True, rotary_dim=4)
    for package in (npi, pti):
        shapes = {
            name: tuple(value.shape)
            for name, value in package.Transformer(cfg).state_dict().items()
        }
        assert shapes["blocks.0.attn._W_K"] == shapes["blocks.0.attn._W_V"] == (2, 16, D_HEAD)
        assert shapes["blocks.0.attn._b_K"] == shapes["blocks.0.attn._b_V"] == (2, D_HEAD)
        assert shapes["blocks.0.attn.W_Q"] == (4, 16, D_HEAD)
        assert shapes["blocks.0.mlp.W_gate"] == shapes["blocks.0.mlp.W_in"] == (16, 20)
        assert shapes["blocks.0.ln1.w"] == (16,) and "blocks.0.ln1.b" not in shapes
        assert not any(name.startswith("pos_embed") or "rotary" in name for name in shapes), (
            "rotary has no weights"
        )
    llama = llama_cfg()  # no biases: fixed zeros, neither saved nor trained
    assert not any(
        ".b_" in name or "._b_" in name
        for name in npi.Transformer(llama).state_dict()
        if not name.startswith("unembed")
    )


MODELS = list(
    itertools.product(
        [None, 4, 2, 1],  # n_key_value_heads (n_heads 4)
        [D_HEAD, 2],  # rotary_dim
        [False, True],  # rotary_adjacent_pairs
        ["RMS", "LN"],  # normalization_type
        [True, False],  # gated_mlp (SwiGLU) or GELU
        [False, True],  # parallel_attn_mlp (GPT-NeoX)
        DTYPES,
    )
)


def model_cfg(n_key_value_heads, rotary_dim, adjacent, norm, gated, parallel, dtype):
    mlp = (
        dict(act_fn="silu", gated_mlp=True, mlp_bias=False)
        if gated
        else dict(act_fn="gelu", gated_mlp=False, mlp_bias=True)
    )
    return llama_cfg(
        dtype,
        n_key_value_heads=n_key_value_heads,
        rotary_dim=rotary_dim,
        rotary_adjacent_pairs=adjacent,
        normalization_type=norm,
        eps=1e-6 if norm == "RMS" else 1e-5,
        parallel_attn_mlp=parallel,
        **mlp,
    )


@pytest.mark.parametrize(
    "n_key_value_heads, rotary_dim, adjacent, norm, gated, parallel, dtype",
    pairwise_then_slow(MODELS, ids=["-".join(map(str, case)) for case in MODELS]),
)
def test_model_parity(
    n_key_value_heads, rotary_dim, adjacent, norm, gated, parallel, dtype, tmp_path
):
    """The whole model, with its weights carried by a file, and the gradient at every hook point."""
    cfg = model_cfg(n_key_value_heads, rotary_dim, adjacent, norm, gated, parallel, dtype)
    model = randomize(npi.Transformer(cfg, seed=0), 1)
    model.save(tmp_path / "w.npz")
    twin = pti.Transformer.load(tmp_path / "w.npz")
    rng = np.random.default_rng(2)
    for pos in (1, N_CTX):
        tokens = rng.integers(0, cfg.d_vocab, (BATCH, pos))
        dout = rng.standard_normal((BATCH, pos, cfg.d_vocab)).astype(dtype)
        model.zero_grad()
        twin.zero_grad()
        out, cache = model.run_with_cache(tokens, incl_bwd=True, dout=dout)
        out_t, cache_t = twin.run_with_cache(torch.from_numpy(tokens), incl_bwd=True, dout=dout)
        assert_close(f"output (pos={pos})", out, out_t, dtype)
        compare_grads(model, twin, dtype)
        assert set(cache.keys()) == set(cache_t.keys())
        assert "blocks.0.attn.hook_rot_q" in cache and "blocks.0.attn.hook_rot_k_grad" in cache
        assert ("blocks.0.hook_resid_mid" in cache) != parallel, "a parallel block has no resid_mid"
        for name in cache.keys():
            a, b = cache[name], cache_t[name].detach().numpy()
            assert a.shape == b.shape, name
            if name.endswith("hook_attn_scores"):  # -inf where the mask hides a key, in both
                assert np.array_equal(np.isinf(a), np.isinf(b)), name
                a, b = a[np.isfinite(a)], b[np.isfinite(b)]
            assert rel_err(a, b) <= TOL[dtype], f"{name}: {rel_err(a, b):.2e}"
        n_kv = n_key_value_heads or cfg.n_heads
        assert cache["blocks.0.attn.hook_k"].shape == (BATCH, pos, n_kv, D_HEAD)
        assert cache["blocks.0.attn.hook_rot_q"].shape == (BATCH, pos, cfg.n_heads, D_HEAD)


def test_rotation_keeps_lengths_and_turns_only_the_rotary_entries():
    """A rotation: each pair's length is kept; entries past rotary_dim pass untouched; position 0
    does not turn."""
    cfg = llama_cfg(rotary_dim=4, rotary_adjacent_pairs=False)
    from numpy_impl.rotary import rotary_tables, rotate

    cos, sin = rotary_tables(cfg)
    x = np.random.default_rng(0).standard_normal((2, N_CTX, 4, D_HEAD))
    for adjacent in (False, True):
        rotated = rotate(x, cos, sin, adjacent)
        assert np.array_equal(rotated[..., 4:], x[..., 4:])
        assert np.array_equal(rotated[:, 0], x[:, 0]), "angle 0 at position 0"
        pairs = (
            (lambda v: (v[..., 0:4:2], v[..., 1:4:2]))
            if adjacent
            else (lambda v: (v[..., :2], v[..., 2:4]))
        )
        (a, b), (c, d) = pairs(x), pairs(rotated)
        assert rel_err(a**2 + b**2, c**2 + d**2) <= 1e-14
        assert rel_err(rotate(rotated, cos, -sin, adjacent), x) <= 1e-14, (
            "the inverse rotation undoes it"
        )
    # a query and a key, placed at every position: their rotated dot product depends on the offset
    # only
    # [1, pos, 1, d_head]: one vector everywhere
    q = np.broadcast_to(x[:1, :1, :1], (1, N_CTX, 1, D_HEAD))
    k = np.broadcast_to(x[:1, 1:2, :1], (1, N_CTX, 1, D_HEAD))  # [1, pos, 1, d_head]
    for adjacent in (False, True):
        q_rot, k_rot = (
            rotate(q, cos, sin, adjacent)[0, :, 0],
            rotate(k, cos, sin, adjacent)[0, :, 0],
        )  # [pos, d_head]
        scores = q_rot @ k_rot.T  # [q_pos, k_pos]
        assert abs(scores[3, 1] - scores[5, 3]) <= 1e-13 * abs(scores).max()
        assert abs(scores[3, 1] - scores[3, 2]) > 1e-3 * abs(scores).max(), (
            "another offset, another score"
        )


def test_plain_attention_refuses_a_grouped_config():
    cfg = llama_cfg(n_key_value_heads=2)
    for package in (npi, pti):
        with pytest.raises(ValueError, match="GroupedQueryAttention"):
            package.MultiHeadAttention(cfg)
        assert type(package.MultiHeadAttention.for_config(cfg)).__name__ == "GroupedQueryAttention"


def test_config_from_transformer_lens_fields():
    """A TransformerLens Llama config's fields map onto the same-named fields here."""
    cfg = npi.TransformerConfig.from_transformer_lens(
        n_layers=2,
        d_model=16,
        n_ctx=8,
        d_head=4,
        n_heads=4,
        d_mlp=24,
        d_vocab=11,
        act_fn="silu",
        normalization_type="RMS",
        positional_embedding_type="rotary",
        rotary_dim=4,
        rotary_base=1e5,
        rotary_adjacent_pairs=False,
        gated_mlp=True,
        n_key_value_heads=2,
        eps=1e-6,
        dtype="float64",
        final_rms=False,
        original_architecture="LlamaForCausalLM",
    )
    assert (cfg.normalization_type, cfg.positional, cfg.rotary_dim, cfg.rotary_base) == (
        "RMS",
        "rotary",
        4,
        1e5,
    )
    assert (
        cfg.gated_mlp
        and cfg.n_key_value_heads == 2
        and cfg.eps == 1e-6
        and cfg.normalization == "pre"
    )
