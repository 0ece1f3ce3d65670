"""The reference's big products come back C-contiguous: what its speed rests on.

Every einsum in attention, the feed-forward network and the unembedding that multiplies an
activation by a weight names the weight first. NumPy's optimized einsum then writes the product
in the output's own axis order; with the activation first it returns a transposed view, and
every later element-wise step (bias, residual sum, LayerNorm) walks memory out of order
(benchmarks/fwd_bwd.py measured 7 to 10% of the float32 config-M step). Speed itself is the
benchmark's business, never a test's; this test pins the memory layout, which does not depend
on the machine. If a NumPy release changes how einsum lays
out its result, the first test fails, and the docstrings' reason for the operand order is stale.
"""

import numpy as np
import pytest

import numpy_impl as npi
from gradcheck.factory import BASE, Variant, build

# big enough that NumPy's einsum takes its matrix-product path, as it does for real sizes
SIZES = dict(d_vocab=48, d_model=32, n_heads=4, d_head=8, d_mlp=64, n_ctx=24)
BATCH, POS = 4, 24


def config(dtype):
    return Variant("layout", {**BASE, **SIZES, "dtype": dtype, "act_fn": "gelu_new"}).config()


def random(shape, dtype, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def test_the_detector_sees_a_transposed_einsum_result():
    """Activation first, NumPy hands back a view in another order: the check below could fail."""
    x = random((BATCH, POS, 32), "float64", 0)
    W_Q = random((4, 32, 8), "float64", 1)
    activation_first = np.einsum("bpm,hmd->bphd", x, W_Q, optimize=True)
    weight_first = np.einsum("hmd,bpm->bphd", W_Q, x, optimize=True)
    assert not activation_first.flags.c_contiguous
    assert weight_first.flags.c_contiguous
    np.testing.assert_allclose(weight_first, activation_first, rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_products_and_their_gradients_are_c_contiguous(dtype):
    cfg = config(dtype)
    x = random((BATCH, POS, cfg.d_model), dtype, 2)
    arrays = {}

    attn = build(npi, "MultiHeadAttention", cfg, seed=3)
    arrays["attention out"] = attn.forward(x)
    _, _, _, q_h, k_h, v_h, *_ = attn.cache  # x_q, x_k, x_v first
    for name, head_first in (("q", q_h), ("k", k_h), ("v", v_h)):
        # back to [batch, pos, head, d_head]: the einsum's result
        arrays[name] = head_first.transpose(0, 2, 1, 3)
    arrays["attention dx"] = attn.backward(random(x.shape, dtype, 4))

    mlp = build(npi, "FeedForward", cfg, seed=5)
    arrays["mlp out"] = mlp.forward(x)
    arrays["mlp pre"] = mlp.cache[1]
    arrays["mlp dx"] = mlp.backward(random(x.shape, dtype, 6))

    unembed = build(npi, "Unembed", cfg, seed=7)
    arrays["logits"] = unembed.forward(x)
    arrays["unembed dx"] = unembed.backward(random((BATCH, POS, cfg.d_vocab), dtype, 8))

    strided = {
        name: array.strides for name, array in arrays.items() if not array.flags.c_contiguous
    }
    assert not strided, f"not C-contiguous ({dtype}): {strided}"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_weight_gradients_come_back_c_contiguous(dtype, monkeypatch):
    """W_U's, W_in's, W_out's and W_O's gradient products are added into C-ordered buffers with
    ``+=``: a transposed product makes that add walk memory out of order (for GPT-2's 768 x 50257
    W_U it took longer than the product itself). W_Q, W_K, W_V's [head, d_model, d_head] cannot come
    back in order."""
    cfg = config(dtype)
    x = random((BATCH, POS, cfg.d_model), dtype, 2)
    products = {}
    einsum = np.einsum

    def recording_einsum(subscripts, *operands, **kwargs):
        result = einsum(subscripts, *operands, **kwargs)
        products[subscripts.split("->")[1]] = result
        return result

    for name, dout_shape in (
        ("MultiHeadAttention", x.shape),
        ("FeedForward", x.shape),
        ("Unembed", (BATCH, POS, cfg.d_vocab)),
    ):
        module = build(npi, name, cfg, seed=3)
        module.forward(x)
        monkeypatch.setattr(np, "einsum", recording_einsum)
        module.backward(random(dout_shape, dtype, 4))
        monkeypatch.setattr(np, "einsum", einsum)
    gradients = {
        "W_U": products["mv"],
        "W_in": products["mf"],
        "W_out": products["fm"],
        "W_O": products["hdm"],
    }
    strided = {
        name: array.strides for name, array in gradients.items() if not array.flags.c_contiguous
    }
    assert not strided, f"weight gradients not C-contiguous ({dtype}): {strided}"
