"""``forward(resid, start_at_layer=k)``: the run resumed from the residual stream entering block k.

As in TransformerLens, the input is then that residual stream [batch, pos, d_model], and blocks
k .. n_layers - 1, the final LayerNorm and the unembedding run on it. Paired with
``stop_at_layer=k`` it splits a run in two. The NumPy backward after such a forward returns the
gradient of the residual stream given (the torch twin: ``resid.grad``). Checked here in float64,
in both twins, against the whole run: logits to 1e-13, every gradient to 1e-12; the bridge's own
start_at_layer is checked in test_transformer_bridge.py.
"""

import numpy as np
import pytest
import torch

import numpy_impl as npi
import torch_impl as pti
from foundation.contract.agreement import TOL
from parity_tests.helpers import (
    SIDES,
    assert_same_grads,
    grads,
    make_cfg,
    random_dout,
    rel_err,
    to_numpy,
    tokens_for,
    twins,
)

CONFIGS = {
    "pre, learned": make_cfg(n_layers=3),
    "post, sinusoidal": make_cfg(
        n_layers=3, normalization="post", positional="sinusoidal", act_fn="relu"
    ),
    "pre, rotary, resid out": make_cfg(n_layers=3, positional="rotary", unembed=False),
}
LOGITS_TOL = 1e-13  # float64, relative to the largest logit: only rounding differs


def cached_err(ours, whole):
    """rel_err of two cached tensors, whose masked attention scores (-inf) must sit alike."""
    ours, whole = np.asarray(to_numpy(ours)), np.asarray(to_numpy(whole))
    assert np.array_equal(np.isinf(ours), np.isinf(whole))
    return rel_err(np.where(np.isinf(ours), 0, ours), np.where(np.isinf(whole), 0, whole))


def whole_run(model, tokens, dout):
    """(output, parameter gradients, the gradient at every block's hook_resid_pre) of one run."""
    out, cache = model.run_with_cache(tokens, incl_bwd=True, dout=dout)
    resid_grads = [cache[f"blocks.{i}.hook_resid_pre_grad"] for i in range(model.cfg.n_layers)]
    return out, grads(model), [np.asarray(g) for g in resid_grads]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_stop_then_start_is_the_whole_run(name):
    """stop_at_layer=k then start_at_layer=k gives the whole run's output (every k, both twins);
    the backward gives the whole run's gradients of blocks k.. and after, and the gradient of the
    residual stream given equals the whole run's gradient at blocks.k.hook_resid_pre; the twins
    agree with each other on all of it."""
    cfg = CONFIGS[name]
    tokens = tokens_for(cfg, batch=2, pos=5)
    numpy_model, torch_model = twins(cfg)
    out_shape = (2, 5, cfg.d_vocab if cfg.unembed else cfg.d_model)
    dout = random_dout(out_shape)
    for k in range(cfg.n_layers):
        resid_grads = {}
        for side, model in (("numpy", numpy_model), ("torch", torch_model)):
            model.zero_grad()
            full, full_grads, full_resid_grads = whole_run(model, tokens, dout)
            model.zero_grad()
            resid = model(tokens, stop_at_layer=k)  # [batch, pos, d_model]
            if side == "numpy":
                out = model(resid, start_at_layer=k)
                resid_grad = model.backward(dout)
            else:
                resid = resid.detach().requires_grad_()
                out = model(resid, start_at_layer=k)
                out.backward(torch.from_numpy(dout))
                resid_grad = resid.grad.numpy()
            assert rel_err(out, full) <= LOGITS_TOL, (side, k)
            assert rel_err(resid_grad, full_resid_grads[k]) <= 1e-12, (side, k)
            # the blocks before k and the embeddings took no part: their gradients stay zero (None
            # in torch, after zero_grad)
            raw = {n: p.grad for n, p in model.named_parameters()}
            before = [
                n
                for n in raw
                if n.startswith(("embed.", "pos_embed."))
                or any(n.startswith(f"blocks.{i}.") for i in range(k))
            ]
            assert all(raw[n] is None or not raw[n].any() for n in before), (side, k)
            resumed = {n: g for n, g in grads(model).items() if n not in before}
            after = {n: g for n, g in full_grads.items() if n not in before}
            assert_same_grads({n: resumed[n] for n in after}, after)
            resid_grads[side] = resid_grad
        assert rel_err(resid_grads["torch"], resid_grads["numpy"]) <= 1e-12, k


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_twins_agree_from_a_start_layer(dtype):
    """In each dtype the twins agree on a resumed run (the project's parity tolerance, TOL): its
    output, the gradient of the residual stream given (a random upstream gradient), and the
    parameter gradients of the blocks run."""
    cfg = make_cfg(n_layers=3, positional="rotary", dtype=dtype)
    numpy_model, torch_model = twins(cfg)
    resid = numpy_model(tokens_for(cfg, batch=2, pos=5), stop_at_layer=1)  # [batch, pos, d_model]
    dout = random_dout((2, 5, cfg.d_vocab), dtype)
    out_np = numpy_model(resid, start_at_layer=1)
    resid_grad_np = numpy_model.backward(dout)
    resid_torch = torch.from_numpy(resid.copy()).requires_grad_()
    out_torch = torch_model(resid_torch, start_at_layer=1)
    out_torch.backward(torch.from_numpy(dout))
    assert rel_err(out_torch, out_np) <= TOL[dtype]
    assert rel_err(resid_torch.grad, resid_grad_np) <= TOL[dtype]
    theirs = grads(torch_model)
    for name, grad in grads(numpy_model).items():
        if name.startswith("blocks.0.") or name.startswith(("embed.", "pos_embed.")):
            continue
        assert rel_err(theirs[name], grad) <= TOL[dtype], name


def test_start_at_layer_forms():
    """A negative k counts from the end; start_at_layer=k with stop_at_layer=j runs blocks k..j-1
    (start = stop gives the input back); run_with_cache caches blocks k.. only, with the whole
    run's values; return_type=None returns nothing. Both twins."""
    cfg = CONFIGS["pre, learned"]
    tokens = tokens_for(cfg, batch=2, pos=5)
    for model in twins(cfg):
        full, full_cache = model.run_with_cache(tokens)
        resid1 = model(tokens, stop_at_layer=1)
        resid2 = model(tokens, stop_at_layer=2)
        assert rel_err(model(resid1, start_at_layer=1 - cfg.n_layers), full) <= LOGITS_TOL
        assert rel_err(model(resid1, start_at_layer=1, stop_at_layer=2), resid2) <= LOGITS_TOL
        assert rel_err(model(resid1, start_at_layer=1, stop_at_layer=1), resid1) == 0
        assert model(resid1, start_at_layer=1, return_type=None) is None
        out, cache = model.run_with_cache(resid1, start_at_layer=1)
        assert rel_err(out, full) <= LOGITS_TOL
        assert not any(name.startswith(("hook_embed", "embed.", "blocks.0.")) for name in cache)
        assert any(name.startswith("blocks.1.") for name in cache)
        for name in cache:
            assert cached_err(cache[name], full_cache[name]) <= LOGITS_TOL, name


def test_start_at_layer_with_incl_bwd():
    """run_with_cache(resid, start_at_layer=k, incl_bwd=True, dout=...) caches the whole run's
    gradients of blocks k..; without dout it is refused (no tokens for the default loss)."""
    cfg = CONFIGS["pre, learned"]
    tokens = tokens_for(cfg, batch=2, pos=5)
    dout = random_dout((2, 5, cfg.d_vocab))
    for model in twins(cfg):
        _, full_cache = model.run_with_cache(tokens, incl_bwd=True, dout=dout)
        resid = model(tokens, stop_at_layer=1)
        _, cache = model.run_with_cache(resid, start_at_layer=1, incl_bwd=True, dout=dout)
        assert "blocks.1.hook_resid_pre_grad" in cache
        for name in cache:
            assert cached_err(cache[name], full_cache[name]) <= 1e-12, name
        with pytest.raises(ValueError, match="incl_bwd=True with start_at_layer needs dout"):
            model.run_with_cache(resid, start_at_layer=1, incl_bwd=True)


def test_start_at_layer_bad_input():
    """Each mistake is refused before any math, with a message naming it: token ids given with
    start_at_layer, a residual stream of the wrong shape or dtype, k out of range or not an int,
    a loss asked for (there are no tokens), stop_at_layer before start_at_layer, a key-value cache
    (it holds every block's keys and values; a run from block k would extend only some)."""
    cfg = CONFIGS["pre, learned"]
    tokens = tokens_for(cfg, batch=2, pos=5)
    for model in twins(cfg):
        resid = model(tokens, stop_at_layer=1)
        is_torch = isinstance(resid, torch.Tensor)
        float32 = resid.float() if is_torch else resid.astype(np.float32)
        narrow = resid[..., :-1]
        long = (
            torch.zeros(2, cfg.n_ctx + 1, cfg.d_model, dtype=resid.dtype)
            if is_torch
            else (np.zeros((2, cfg.n_ctx + 1, cfg.d_model)))
        )
        cases = [
            (dict(tokens=tokens), TypeError, "start_at_layer, tokens is the residual stream"),
            (dict(tokens=tokens.tolist()), TypeError, "not token ids; got list"),
            (dict(tokens=narrow), ValueError, r"shape \[batch, pos, 12\]"),
            (dict(tokens=resid[0]), ValueError, r"shape \[batch, pos, 12\]"),
            (dict(tokens=long), ValueError, "positions but n_ctx is"),
            (dict(tokens=float32), TypeError, "model's dtype float64"),
            (
                dict(start_at_layer=cfg.n_layers),
                ValueError,
                r"start_at_layer must lie in .* = \[-3, 3\), got",
            ),
            (
                dict(start_at_layer=-4),
                ValueError,
                r"start_at_layer must lie in .* = \[-3, 3\), got",
            ),
            (dict(start_at_layer=1.0), TypeError, "start_at_layer must be an int"),
            (dict(start_at_layer=True), TypeError, "start_at_layer must be an int"),
            (dict(return_type="loss"), ValueError, "'loss' with start_at_layer"),
            (dict(return_type="both"), ValueError, "'both' with start_at_layer"),
            (dict(stop_at_layer=0), ValueError, "stop_at_layer .0. comes before start_at_layer"),
        ]
        package = pti if is_torch else npi
        cache = package.HookedTransformerKeyValueCache.init_cache(cfg, batch_size=2)
        cases.append((dict(past_kv_cache=cache), ValueError, "start_at_layer with past_kv_cache"))
        for changes, error, message in cases:
            call = {"tokens": resid, "start_at_layer": 1, **changes}
            with pytest.raises(error, match=message):
                model(call.pop("tokens"), **call)


@pytest.mark.parametrize("side", SIDES)
def test_stop_at_layer_bad_input(side):
    cfg = CONFIGS["pre, learned"]
    model = twins(cfg)[SIDES.index(side)]
    tokens = tokens_for(cfg, batch=2, pos=5)
    with pytest.raises(TypeError, match="stop_at_layer must be an int or None, got 1.0"):
        model(tokens, stop_at_layer=1.0)
    with pytest.raises(ValueError, match=r"stop_at_layer must lie in .* = \[-3, 3\], got 4"):
        model(tokens, stop_at_layer=4)
    with pytest.raises(ValueError, match=r"stop_at_layer must lie in .* = \[-3, 3\], got -4"):
        model(tokens, stop_at_layer=-4)
