"""Inputs at the edges of the dtype: the textbook formula's answer where it has one, a clear error
where it overflows.

The components compute the textbook formulas; the boundary (foundation/contract/boundary.py) raises
``NonFiniteError``, naming the component and the tensor, when finite inputs and weights make a
NaN or an infinity. So each test either checks forward and backward against what the math says
(a LayerNorm of a large row is the LayerNorm of the same row scaled down; a GELU far from zero
is ReLU; a softmax of huge scores is one-hot; a weighted mean does not depend on the weights'
scale), or, where a square or a sum overflows the dtype, that both twins raise that error.
"""

import numpy as np
import pytest
import torch

import numpy_impl as npi
import torch_impl as pti
from foundation.contract.boundary import NonFiniteError
from parity_tests.helpers import assert_close, compare_grads, make_cfg, twins

DTYPES = ["float64", "float32"]
BATCH, POS = 3, 7
BASE = dict(d_vocab=13, d_mlp=20, n_ctx=POS)  # make_cfg's changes for these tests
# entries whose squares overflow the dtype, while their sums over d_model do not
HUGE = {"float32": 1e30, "float64": 1e300}
# entries whose squares, summed over d_model, still fit the dtype
LARGE = {"float32": 1e15, "float64": 1e150}


def forward_backward(np_module, torch_module, x, dout):
    """Both twins' output and input gradient for the same x and upstream gradient."""
    out = np_module.forward(x)
    dx = np_module.backward(dout)
    x_t = torch.from_numpy(x).requires_grad_(True)
    out_t = torch_module(x_t)
    out_t.backward(torch.from_numpy(dout))
    return out, dx, out_t.detach().numpy(), x_t.grad.numpy()


def all_finite(*arrays):
    return all(bool(np.isfinite(np.asarray(a)).all()) for a in arrays)


@pytest.mark.parametrize("dtype", DTYPES)
def test_layernorm_of_large_rows_is_the_layernorm_of_the_rows_scaled_down(dtype):
    # LayerNorm(x) = LayerNorm(x / c) up to eps / c**2, which is far below rounding for these c
    cfg = make_cfg(BASE, dtype=dtype)
    rng = np.random.default_rng(0)
    small = rng.standard_normal((BATCH, POS, cfg.d_model)) + 3.0
    x = (small * LARGE[dtype]).astype(dtype)
    dout = rng.standard_normal(x.shape).astype(dtype)
    np_ln, torch_ln = twins(cfg, "LayerNorm", seed=1)
    out, dx, out_t, dx_t = forward_backward(np_ln, torch_ln, x, dout)
    # the same rows scaled down to about 1e6 (eps / var about 1e-17): an ordinary input, in float64
    c = LARGE[dtype] / 1e6
    ref_ln, _ = twins(make_cfg(BASE, dtype="float64"), "LayerNorm", seed=1)
    expected = ref_ln.forward(x.astype(np.float64) / c)
    expected_dx = ref_ln.backward(dout.astype(np.float64)) / c  # d/dx f(x / c) = f'(x / c) / c
    # float32 against the float64 answer: the gradient's cancellations cost a few ulps more than
    # parity's
    tol = {"float64": 1e-12, "float32": 1e-4}[dtype]
    for what, actual, exact in (("output", out, expected), ("input gradient", dx, expected_dx)):
        err = np.abs(actual - exact).max() / np.abs(exact).max()
        assert err <= tol, (
            f"{what} against the scaled-down rows: relative error {err:.2e} > {tol:.0e}"
        )
    assert_close("torch twin output", out_t, out, dtype)
    assert_close("torch twin input gradient", dx_t, dx, dtype)
    compare_grads(np_ln, torch_ln, dtype)


# the error below is the answer
@pytest.mark.filterwarnings("ignore:overflow encountered in square:RuntimeWarning")
@pytest.mark.parametrize("dtype", DTYPES)
def test_layernorm_where_the_square_overflows_raises_in_both_twins(dtype):
    # centered**2 is inf, so var and scale are inf and the output would be b: silently wrong
    cfg = make_cfg(BASE, dtype=dtype)
    x = (
        (np.random.default_rng(0).standard_normal((BATCH, POS, cfg.d_model)) + 3.0) * HUGE[dtype]
    ).astype(dtype)
    np_ln, torch_ln = twins(cfg, "LayerNorm", seed=1)
    message = "LayerNorm.forward: hook_scale holds inf although every input and weight was finite"
    with pytest.raises(NonFiniteError, match=message):
        np_ln.forward(x)
    with pytest.raises(NonFiniteError, match=message):
        torch_ln(torch.from_numpy(x))
    # in a model the hook point's full name says which LayerNorm
    model = npi.Transformer(make_cfg(BASE, dtype=dtype, normalization="pre"), seed=0)
    model.hook_embed.add_hook(lambda embed, hook: embed * HUGE[dtype])
    # caught as a ValueError (bad input's error), and of the boundary's own class
    with pytest.raises(ValueError, match=r"blocks\.0\.ln1\.hook_scale holds inf") as raised:
        model.forward(np.zeros((1, 3), dtype=int))
    assert type(raised.value) is NonFiniteError


@pytest.mark.parametrize("dtype", DTYPES)
def test_layernorm_of_tiny_and_constant_rows_is_finite(dtype):
    # below sqrt(eps) the variance is dwarfed by eps: the output is close to b, the gradient finite
    cfg = make_cfg(BASE, dtype=dtype)
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((BATCH, POS, cfg.d_model)) * np.finfo(dtype).tiny).astype(dtype)
    x[0] = 7.0  # constant rows: centered is exactly 0
    dout = rng.standard_normal(x.shape).astype(dtype)
    np_ln, torch_ln = twins(cfg, "LayerNorm", seed=1)
    out, dx, out_t, dx_t = forward_backward(np_ln, torch_ln, x, dout)
    assert all_finite(out, dx, out_t, dx_t)
    assert_close(
        "output at constant rows", out[0], np.broadcast_to(np_ln.b.data, out[0].shape), dtype
    )
    assert_close("torch twin output", out_t, out, dtype)
    assert_close("torch twin input gradient", dx_t, dx, dtype)


def feedforward_pair(cfg, pre_size, seed=0):
    """A GELU FeedForward whose pre-activations are about pre_size, and the ReLU one with its
    weights."""
    gelu, gelu_t = twins(cfg, "FeedForward", seed + 1)
    relu, relu_t = twins(make_cfg(BASE, dtype=cfg.dtype, act_fn="relu"), "FeedForward", seed + 1)
    relu.load_state_dict(gelu.state_dict())
    relu_t.load_state_dict(gelu.state_dict())
    rng = np.random.default_rng(seed + 5)
    x = (rng.standard_normal((BATCH, POS, cfg.d_model)) * pre_size).astype(cfg.dtype)
    dout = rng.standard_normal(x.shape).astype(cfg.dtype)
    return (gelu, gelu_t), (relu, relu_t), x, dout


# pre**3 is inf; tanh(inf) is 1
@pytest.mark.filterwarnings("ignore:overflow encountered in multiply:RuntimeWarning")
@pytest.mark.parametrize("dtype", DTYPES)
def test_gelu_far_from_zero_is_relu_in_both_twins(dtype):
    # pre**3 overflows (pre about 1e15 in float32, 1e110 in float64) but pre**2 does not:
    # tanh is exactly +-1, so GELU and its gradient are ReLU's, and both twins must say so
    pre_size = {"float32": 1e15, "float64": 1e110}[dtype]
    (gelu, gelu_t), (relu, relu_t), x, dout = feedforward_pair(
        make_cfg(BASE, dtype=dtype), pre_size
    )
    out, dx, out_t, dx_t = forward_backward(gelu, gelu_t, x, dout)
    expected, expected_dx, _, _ = forward_backward(relu, relu_t, x, dout)
    assert all_finite(out, dx, out_t, dx_t)
    assert_close("GELU output against ReLU's", out, expected, dtype)
    assert_close("GELU input gradient against ReLU's", dx, expected_dx, dtype)
    compare_grads(gelu, relu, dtype)
    assert_close("torch twin output", out_t, out, dtype)
    assert_close("torch twin input gradient", dx_t, dx, dtype)
    compare_grads(gelu, gelu_t, dtype)


# the error below is the answer
@pytest.mark.filterwarnings("ignore:overflow encountered in multiply:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered in multiply:RuntimeWarning")
@pytest.mark.parametrize("dtype", DTYPES)
def test_gelu_backward_where_pre_squared_overflows_raises_in_both_twins(dtype):
    # pre about 1e25 (float32) or 1e200 (float64): the product rule's pre * pre is inf, and the
    # (exactly zero) gradient of tanh's input times inf is NaN, in the reference and in autograd
    pre_size = {"float32": 1e25, "float64": 1e200}[dtype]
    (gelu, gelu_t), _, x, dout = feedforward_pair(make_cfg(BASE, dtype=dtype), pre_size)
    out = gelu.forward(x)
    assert all_finite(out), "the forward is finite: tanh(inf) is 1 and GELU is ReLU there"
    message = (
        "FeedForward.backward: the gradient at hook_pre holds nan although every input and "
        "weight was finite"
    )
    with pytest.raises(NonFiniteError, match=message):
        gelu.backward(dout)
    out_t = gelu_t(torch.from_numpy(x).requires_grad_(True))
    with pytest.raises(NonFiniteError, match=message):
        out_t.backward(torch.from_numpy(dout))


def test_non_finite_inputs_pass_through_without_a_word():
    # NaN in, NaN out, as NumPy and torch do: the guard speaks only when finite inputs made it
    cfg = make_cfg(BASE, dtype="float64")
    x = np.random.default_rng(0).standard_normal((BATCH, POS, cfg.d_model))
    x[0, 0, 0] = np.nan
    np_ln, torch_ln = twins(cfg, "LayerNorm", seed=1)
    assert np.isnan(np_ln.forward(x)).any()
    assert np.isnan(np_ln.backward(np.ones_like(x) * 0.5)).any()
    assert torch.isnan(torch_ln(torch.from_numpy(x))).any()


# inf * 0 downstream of the hook
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_a_hook_that_writes_inf_is_the_hook_s_doing():
    # a forward hook that writes inf (an ablation to -inf, say) takes the guard off for that run
    cfg = make_cfg(BASE, dtype="float64")
    tokens = np.random.default_rng(0).integers(0, cfg.d_vocab, (2, POS))
    for twin in (npi.Transformer(cfg, seed=0), pti.Transformer(cfg)):

        def to_inf(z, hook):
            z[..., 0] = np.inf if isinstance(z, np.ndarray) else torch.inf

        twin.blocks[0].attn.hook_z.add_hook(to_inf)
        out = twin(tokens)
        assert not all_finite(out if isinstance(out, np.ndarray) else out.detach().numpy())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [True, False])
def test_attention_with_huge_scores_is_one_hot_and_finite(dtype, causal):
    # scores about 1e34 (float32) or 1e300 (float64): each softmax row is one-hot, its gradient 0
    cfg = make_cfg(BASE, dtype=dtype, causal=causal)
    x_size = {"float32": 1e17, "float64": 1e150}[dtype]
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((BATCH, POS, cfg.d_model)) * x_size).astype(dtype)
    dout = rng.standard_normal(x.shape).astype(dtype)
    np_attn, torch_attn = twins(cfg, "MultiHeadAttention", seed=1)
    out, dx, out_t, dx_t = forward_backward(np_attn, torch_attn, x, dout)
    assert all_finite(out, dx, out_t, dx_t)
    assert all(all_finite(p.grad) for _, p in np_attn.named_parameters())
    pattern = np_attn.cache[6]  # probs: after x_q, x_k, x_v, q_h, k_h, v_h
    assert np.array_equal(np.sort(pattern, axis=-1)[..., -1], np.ones(pattern.shape[:-1])), (
        "rows must be one-hot"
    )
    assert_close("torch twin output", out_t, out, dtype)
    assert_close("torch twin input gradient", dx_t, dx, dtype)
    compare_grads(np_attn, torch_attn, dtype)


def loss_pair(logits, targets, weights, dloss=0.7):
    """Both twins' loss and logits gradient."""
    loss_fn = npi.CrossEntropyLoss()
    loss = loss_fn.forward(logits, targets, weights)
    dlogits = loss_fn.backward(dloss)
    logits_t = torch.from_numpy(logits).requires_grad_(True)
    weights_t = None if weights is None else torch.from_numpy(weights)
    loss_t = pti.CrossEntropyLoss()(logits_t, torch.from_numpy(targets), weights_t)
    loss_t.backward(torch.tensor(dloss, dtype=loss_t.dtype))
    return loss, dlogits, loss_t.detach().numpy(), logits_t.grad.numpy()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", [1e-30, 1e30])
def test_loss_weights_far_from_one(dtype, size):
    # a weighted mean does not change when every weight is multiplied by the same number
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((BATCH, POS, 13)).astype(dtype)
    targets = rng.integers(0, 13, (BATCH, POS))
    relative = rng.uniform(0.5, 1.0, (BATCH, POS))
    weights = (relative * size).astype(dtype)
    loss, dlogits, loss_t, dlogits_t = loss_pair(logits, targets, weights)
    expected, expected_dlogits, _, _ = loss_pair(logits, targets, relative.astype(dtype))
    assert_close("loss against weights scaled to 1", loss, expected, dtype)
    assert_close("logits gradient against weights scaled to 1", dlogits, expected_dlogits, dtype)
    assert_close("torch twin loss", loss_t, loss, dtype)
    assert_close("torch twin logits gradient", dlogits_t, dlogits, dtype)


# the error below is the answer
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
# inf / inf on the way to it
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("dtype", DTYPES)
def test_loss_weights_whose_sum_overflows_raise_in_both_twins(dtype):
    # weights at the dtype's largest value: sum(weights) is inf and the weighted mean inf / inf
    rng = np.random.default_rng(4)
    logits = rng.standard_normal((BATCH, POS, 13)).astype(dtype)
    targets = rng.integers(0, 13, (BATCH, POS))
    weights = np.full((BATCH, POS), np.finfo(dtype).max, dtype=dtype)
    message = (
        "CrossEntropyLoss.forward: its output holds nan although every input and weight was finite"
    )
    with pytest.raises(NonFiniteError, match=message):
        npi.CrossEntropyLoss().forward(logits, targets, weights)
    with pytest.raises(NonFiniteError, match=message):
        pti.CrossEntropyLoss()(
            torch.from_numpy(logits), torch.from_numpy(targets), torch.from_numpy(weights)
        )
