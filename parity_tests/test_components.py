"""Parity of each component on its own: the output, the input gradient and every parameter gradient.

Each test loads one set of random weights into the NumPy component and its torch twin, runs
both on the same random input, sends the same random upstream gradient back, and compares.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import numpy_impl as npi
import torch_impl as pti
from parity_tests.helpers import (
    assert_close,
    compare_grads,
    load_into_twin,
    make_cfg,
    parametrize_pairwise,
    randomize,
    twins,
)

DTYPES = ["float64", "float32"]
N_CTX = 7
BATCH = 3
BASE = dict(d_vocab=13, d_mlp=20, n_ctx=N_CTX)  # make_cfg's changes for these tests


def run_float_component(name, cfg, pos, seed=0):
    """Forward and backward through one float-input component in both twins; assert parity."""
    np_module, torch_module = twins(cfg, name, seed + 1)
    rng = np.random.default_rng(seed + 2)
    x = rng.standard_normal((BATCH, pos, cfg.d_model)).astype(cfg.dtype)
    x_t = torch.from_numpy(x).requires_grad_(True)
    out = np_module.forward(x)
    out_t = torch_module(x_t)
    assert_close(f"{name} output", out, out_t, cfg.dtype)
    dout = rng.standard_normal(out.shape).astype(cfg.dtype)  # random, never all ones
    dx = np_module.backward(dout)
    out_t.backward(torch.from_numpy(dout))
    assert_close(f"{name} input gradient", dx, x_t.grad, cfg.dtype)
    compare_grads(np_module, torch_module, cfg.dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pos", [1, N_CTX])
def test_layernorm(dtype, pos):
    run_float_component("LayerNorm", make_cfg(BASE, dtype=dtype), pos)


@parametrize_pairwise(dtype=DTYPES, pos=[1, N_CTX], causal=[True, False])
def test_attention(dtype, pos, causal):
    run_float_component("MultiHeadAttention", make_cfg(BASE, dtype=dtype, causal=causal), pos)


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_with_d_head_not_d_model_over_n_heads(dtype):
    run_float_component("MultiHeadAttention", make_cfg(BASE, dtype=dtype, d_head=5), N_CTX)


@parametrize_pairwise(dtype=DTYPES, pos=[1, N_CTX], act_fn=["relu", "gelu_new", "gelu"])
def test_feedforward(dtype, pos, act_fn):
    run_float_component("FeedForward", make_cfg(BASE, dtype=dtype, act_fn=act_fn), pos)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pos", [1, N_CTX])
def test_unembed(dtype, pos):
    run_float_component("Unembed", make_cfg(BASE, dtype=dtype), pos)


@parametrize_pairwise(
    dtype=DTYPES,
    pos=[1, N_CTX],
    normalization=["pre", "post", None],
    attn_only=[False, True],
    causal=[True, False],
)
def test_block(dtype, pos, normalization, attn_only, causal):
    cfg = make_cfg(
        BASE, dtype=dtype, normalization=normalization, attn_only=attn_only, causal=causal
    )
    run_float_component("TransformerBlock", cfg, pos)


@parametrize_pairwise(
    dtype=DTYPES,
    pos=[1, N_CTX],
    name=["TokenEmbedding", "LearnedPositionalEmbedding", "SinusoidalPositionalEncoding"],
)
def test_token_input_components(dtype, pos, name):
    cfg = make_cfg(BASE, dtype=dtype)
    np_module, torch_module = twins(cfg, name, seed=1)
    rng = np.random.default_rng(2)
    tokens = rng.integers(0, cfg.d_vocab, (BATCH, pos))
    # repeated ids, so that the embedding's scatter-add of gradients is exercised
    tokens[:, 0] = tokens[0, 0]
    out = np_module.forward(tokens)
    out_t = torch_module(torch.from_numpy(tokens))
    assert_close(f"{name} output", out, out_t, dtype)
    dout = rng.standard_normal(out.shape).astype(dtype)
    assert np_module.backward(dout) is None  # tokens are discrete: no input gradient
    if list(torch_module.parameters()):
        out_t.backward(torch.from_numpy(dout))
        compare_grads(np_module, torch_module, dtype)


def test_sinusoidal_table_values():
    """PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(...), checked entry by entry, odd
    d_model too."""
    for d_model in (12, 7):
        table = npi.positional.sinusoidal_table(5, d_model)
        for pos in range(5):
            for j in range(d_model):
                angle = pos / 10000 ** ((j - j % 2) / d_model)
                expected = np.sin(angle) if j % 2 == 0 else np.cos(angle)
                assert abs(table[pos, j] - expected) <= 1e-15


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy(dtype, weighted):
    """The loss and dlogits agree between the twins and with torch.nn.functional.cross_entropy."""
    rng = np.random.default_rng(3)
    logits = (3 * rng.standard_normal((BATCH, 5, 11))).astype(dtype)
    targets = rng.integers(0, 11, (BATCH, 5))
    weights = rng.uniform(0.1, 1.0, (BATCH, 5)).astype(dtype) if weighted else None
    loss_fn, loss_fn_t = npi.CrossEntropyLoss(), pti.CrossEntropyLoss()
    logits_t = torch.from_numpy(logits).requires_grad_(True)
    weights_t = None if weights is None else torch.from_numpy(weights)
    loss = loss_fn.forward(logits, targets, weights)
    loss_t = loss_fn_t(logits_t, torch.from_numpy(targets), weights_t)
    assert_close("loss", loss, loss_t, dtype)
    dloss = 1.7  # a random-looking upstream gradient, not 1
    dlogits = loss_fn.backward(dloss)
    (loss_t * dloss).backward()
    assert_close("dlogits", dlogits, logits_t.grad, dtype)
    # against the fused library call
    ref_logits = torch.from_numpy(logits).requires_grad_(True)
    nll = F.cross_entropy(
        ref_logits.reshape(-1, 11), torch.from_numpy(targets).reshape(-1), reduction="none"
    )
    ref = nll.mean() if weights is None else (nll * weights_t.reshape(-1)).sum() / weights_t.sum()
    (ref * dloss).backward()
    assert_close("loss vs F.cross_entropy", loss, ref, dtype)
    assert_close("dlogits vs F.cross_entropy", dlogits, ref_logits.grad, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_layernorm_matches_torch_layer_norm(dtype):
    """The one-op-per-line LayerNorm equals the fused torch.nn.functional.layer_norm."""
    cfg = make_cfg(BASE, dtype=dtype)
    ln = npi.LayerNorm(cfg)
    randomize(ln, 4)
    x = np.random.default_rng(5).standard_normal((BATCH, N_CTX, cfg.d_model)).astype(dtype)
    ref = F.layer_norm(
        torch.from_numpy(x),
        (cfg.d_model,),
        torch.from_numpy(ln.w.data),
        torch.from_numpy(ln.b.data),
        eps=1e-5,
    )
    assert_close("LayerNorm vs F.layer_norm", ln.forward(x), ref, dtype)


@pytest.mark.parametrize("causal", [True, False])
def test_attention_matches_scaled_dot_product_attention(causal):
    """The hand-written softmax attention equals torch's fused scaled_dot_product_attention
    (float64)."""
    cfg = make_cfg(BASE, dtype="float64", causal=causal)
    attn = pti.MultiHeadAttention(cfg, rng=6)
    captured = {}
    for hook_name in ("hook_q", "hook_k", "hook_v", "hook_z"):
        getattr(attn, hook_name).add_hook(
            lambda x, hook, key=hook_name: captured.__setitem__(key, x)
        )
    x = torch.randn(BATCH, N_CTX, cfg.d_model, dtype=torch.float64)
    attn(x)
    q, k, v = (captured[k].permute(0, 2, 1, 3) for k in ("hook_q", "hook_k", "hook_v"))
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal).permute(0, 2, 1, 3)
    assert_close("z vs scaled_dot_product_attention", captured["hook_z"], ref, "float64")


def test_gradients_accumulate_until_zero_grad():
    """Two backward passes add up (as torch does); zero_grad resets every gradient to zero."""
    cfg = make_cfg(BASE, dtype="float64")
    ff = npi.FeedForward(cfg, rng=0)
    x = np.random.default_rng(1).standard_normal((2, 3, cfg.d_model))
    dout = np.random.default_rng(2).standard_normal((2, 3, cfg.d_model))
    ff.forward(x)
    ff.backward(dout)
    once = {n: p.grad.copy() for n, p in ff.named_parameters()}
    ff.backward(dout)
    for n, p in ff.named_parameters():
        assert np.abs(p.grad - 2 * once[n]).max() <= 1e-12 * np.abs(once[n]).max()
    ff.zero_grad()
    assert all(np.all(p.grad == 0) for p in ff.parameters())


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_gradient_at_exactly_zero(dtype):
    """Where pre == 0 exactly, both twins give ReLU the gradient 0 (a subgradient choice that must
    agree)."""
    cfg = make_cfg(BASE, dtype=dtype, act_fn="relu")
    ff = npi.FeedForward(cfg, rng=0)
    randomize(ff, 1)
    ff.b_in.data[::2] = 0  # with x = 0, pre = b_in: every other hidden unit sits exactly at 0
    twin = pti.FeedForward(cfg)
    load_into_twin(ff, twin)
    x = np.zeros((BATCH, 4, cfg.d_model), dtype=dtype)
    dout = np.random.default_rng(2).standard_normal(x.shape).astype(dtype)
    ff.forward(x)
    ff.backward(dout)
    twin(torch.from_numpy(x)).backward(torch.from_numpy(dout))
    assert np.all(ff.b_in.grad[::2] == 0)
    compare_grads(ff, twin, dtype)
