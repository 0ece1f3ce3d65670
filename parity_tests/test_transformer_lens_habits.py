"""TransformerLens's everyday ablation calls on both twins, checked against TransformerLens's meaning.

TransformerLens is not installed here. What each call means in TransformerLens (2.x: its
``HookedTransformer.forward``, ``hook_points.py``, ``utils.get_act_name``, ``utils.Slice``,
``utils.sample_logits``, ``ActivationCache`` and ``fold_layer_norm``) is written out in this file
independently of the code under test: ``tl_forward`` is TransformerLens's forward pass (with its
hooks' edits) on a state dict, ``tl_fold`` its LayerNorm folding, and the tests state the rest
next to their checks. Numbers are float64, random weights (LayerNorm w and biases non-trivial),
random upstream gradients; agreement is max |a - b| / max |b| (helpers.py), to 1e-12 unless the
test says otherwise (the issue asks for 1e-10). Backward hooks are compared with torch's own
autograd at the same hook point (``retain_grad`` on the hook point's output).
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import numpy_impl as npi
import torch_impl as pti
from foundation.lens.cache import Slice
from foundation.contract.config import TransformerConfig
from foundation.lens.folding import fold_layer_norm_weights
from foundation.lens.hooks import get_act_name
from foundation.lens.running import sample_logits
from foundation.lens.vocab import WordVocabulary
from foundation.files.weights import parameter_count, parameter_shapes
from parity_tests.helpers import randomize, rel_err, to_numpy
from parity_tests.interp_helpers import twin_of

B, P, V = 3, 7, 13
TOL = 1e-12


def make_pair(**overrides):
    fields = dict(d_vocab=V, d_model=12, n_heads=3, d_head=5, d_mlp=16, n_layers=2, n_ctx=10,
                  normalization="pre", positional="learned", act_fn="gelu_new")
    fields.update(overrides)
    model = npi.Transformer(npi.TransformerConfig(**fields), seed=0)
    randomize(model, 1)
    return model, twin_of(model)


def tokens_for(seed=2, batch=B, pos=P):
    return np.random.default_rng(seed).integers(0, V, (batch, pos))


def close(a, b, tol=TOL):
    a, b = to_numpy(a), to_numpy(b)
    finite = np.isfinite(b)
    assert np.array_equal(finite, np.isfinite(a)), "-inf (masked) entries differ"
    err = rel_err(np.where(finite, a, 0), np.where(finite, b, 0))
    assert err <= tol, f"relative error {err:.2e} > {tol:.0e}"
    return err


def state(model):
    return {name: to_numpy(value).astype(np.float64) for name, value in model.state_dict().items()}


# --- TransformerLens's forward pass, written out from its components (pre-norm, learned positions) ---

ACT = {"relu": lambda x: np.maximum(x, 0),
       "gelu_new": lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3))),
       "gelu": lambda x: F.gelu(torch.from_numpy(x)).numpy()}  # TransformerLens's "gelu" is F.gelu


def tl_forward(sd, cfg, tokens, edits=None):
    """(logits, {hook name: activation}): HookedTransformer's forward; ``edits[name](x)`` replaces a hook's value.

    A LayerNorm with ``w`` in ``sd`` is TransformerLens's LayerNorm, one without is its LayerNormPre.
    """
    edits, acts = edits or {}, {}

    def point(name, x):
        if name in edits:
            x = edits[name](x.copy())
        acts[name] = x
        return x

    def layer_norm(prefix, x):
        centered = x - x.mean(-1, keepdims=True)
        scale = point(prefix + "hook_scale", np.sqrt((centered**2).mean(-1, keepdims=True) + 1e-5))
        out = centered / scale
        if prefix + "w" in sd:
            out = out * sd[prefix + "w"] + sd[prefix + "b"]
        return point(prefix + "hook_normalized", out)

    pos = tokens.shape[1]
    resid = point("hook_embed", sd["embed.W_E"][tokens]) + point("hook_pos_embed", np.broadcast_to(
        sd["pos_embed.W_pos"][:pos], (tokens.shape[0], pos, cfg.d_model)).copy())
    for i in range(cfg.n_layers):
        pre, w = f"blocks.{i}.", lambda name: sd[f"blocks.{i}.{name}"]  # noqa: E731
        resid = point(pre + "hook_resid_pre", resid)
        x = layer_norm(pre + "ln1.", resid)
        q, k, v = (point(pre + f"attn.hook_{n.lower()}", np.einsum("bpm,hmd->bphd", x, w(f"attn.W_{n}"))
                         + w(f"attn.b_{n}")) for n in "QKV")
        scores = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(cfg.d_head)
        scores = point(pre + "attn.hook_attn_scores", np.where(np.tril(np.ones((pos, pos), bool)), scores, -np.inf))
        pattern = np.exp(scores - scores.max(-1, keepdims=True))
        pattern = point(pre + "attn.hook_pattern", pattern / pattern.sum(-1, keepdims=True))
        z = point(pre + "attn.hook_z", np.einsum("bhqk,bkhd->bqhd", pattern, v))
        resid = resid + point(pre + "hook_attn_out", np.einsum("bphd,hdm->bpm", z, w("attn.W_O")) + w("attn.b_O"))
        resid = point(pre + "hook_resid_mid", resid)
        x = layer_norm(pre + "ln2.", resid)
        hidden = point(pre + "mlp.hook_pre", x @ w("mlp.W_in") + w("mlp.b_in"))
        post = point(pre + "mlp.hook_post", ACT[cfg.act_fn](hidden))
        mlp_out = point(pre + "hook_mlp_out", post @ w("mlp.W_out") + w("mlp.b_out"))
        resid = point(pre + "hook_resid_post", resid + mlp_out)
    x = layer_norm("ln_final.", resid)
    return x @ sd["unembed.W_U"] + sd["unembed.b_U"], acts


def tl_loss(logits, tokens, per_token=False):
    """TransformerLens's ``utils.lm_cross_entropy_loss``: -log p(tokens[:, 1:]); its mean unless per_token."""
    log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    predicted = np.take_along_axis(log_probs[:, :-1], tokens[:, 1:, None], -1)[..., 0]  # [batch, pos - 1]
    return -predicted if per_token else -predicted.mean()


def zero_head(head):
    def hook(z, hook):
        z[:, :, head] = 0.0
        return z
    return hook


# --- run_with_hooks and run_with_cache take the forward's arguments ---

@pytest.mark.parametrize("act_fn", ["gelu_new", "gelu", "relu"])
def test_run_with_hooks_returns_the_ablated_loss(act_fn):
    """The most common ablation call: model.run_with_hooks(tokens, return_type="loss", fwd_hooks=[...])."""
    model, twin = make_pair(act_fn=act_fn)
    tokens = tokens_for()
    sd = state(model)
    clean_logits, _ = tl_forward(sd, model.cfg, tokens)
    ablated_logits, _ = tl_forward(sd, model.cfg, tokens, {"blocks.1.attn.hook_z": lambda z: zero_head(2)(z, None)})
    for m in (model, twin):
        loss = m.run_with_hooks(tokens, return_type="loss", fwd_hooks=[("blocks.1.attn.hook_z", zero_head(2))])
        close(loss, tl_loss(ablated_logits, tokens))
        per_token = m.run_with_hooks(tokens, return_type="loss", loss_per_token=True,
                                     fwd_hooks=[(get_act_name("z", 1), zero_head(2))])
        assert per_token.shape == (B, P - 1)
        close(per_token, tl_loss(ablated_logits, tokens, per_token=True))
        # the forward's arguments may be positional too, as model(tokens, "loss") takes them
        close(m.run_with_hooks(tokens, "loss", fwd_hooks=[("blocks.1.attn.hook_z", zero_head(2))]), loss)
        logits, both_loss = m.run_with_hooks(tokens, return_type="both", fwd_hooks=[("z1", zero_head(2))])
        close(logits, ablated_logits)
        close(both_loss, tl_loss(ablated_logits, tokens))
        close(m(tokens, return_type="loss"), tl_loss(clean_logits, tokens))  # the hooks are gone
        assert m.run_with_hooks(tokens, return_type=None, fwd_hooks=[("z1", zero_head(2))]) is None


def test_run_with_cache_takes_the_forwards_arguments():
    model, twin = make_pair()
    tokens = tokens_for()
    logits, acts = tl_forward(state(model), model.cfg, tokens)
    for m in (model, twin):
        loss, cache = m.run_with_cache(tokens, return_type="loss")
        close(loss, tl_loss(logits, tokens))
        # TransformerLens 2.18's names, each holding 2.18's value; 4 adds more names, and its LayerNorm's
        # hook_out is 2.18's hook_normalized (after w and b)
        renamed = {name: name.replace("hook_normalized", "hook_out") for name in acts}
        assert set(renamed.values()) <= set(cache.keys())
        for name, value in acts.items():
            close(cache[renamed[name]], value)
        per_token, cache = m.run_with_cache(tokens, return_type="loss", loss_per_token=True, names_filter="pattern1")
        close(per_token, tl_loss(logits, tokens, per_token=True))
        assert list(cache.keys()) == ["blocks.1.attn.hook_pattern"]
        out, plain = m.run_with_cache(tokens, return_cache_object=False, names_filter=lambda n: n.endswith("scale"))
        assert isinstance(plain, dict) and len(plain) == 5
        close(out, logits)


# --- backward hooks, as TransformerLens uses them ---

def autograd_at(twin, tokens, name, fwd_hooks=(), per_token_grad=None):
    """torch's own gradient of the loss at hook point ``name``: retain_grad on the point's output."""
    captured = []
    handle = twin.hook_dict[name].register_forward_hook(lambda module, args, out: captured.append(out))
    twin.zero_grad()
    try:
        with twin.hooks(fwd_hooks):
            loss = twin(torch.from_numpy(tokens), return_type="loss", loss_per_token=per_token_grad is not None)
        captured[0].retain_grad()
        loss.backward(None if per_token_grad is None else torch.from_numpy(per_token_grad))
    finally:
        handle.remove()
    return captured[0].grad.numpy().copy(), {n: p.grad.numpy().copy() for n, p in twin.named_parameters()}


@pytest.mark.parametrize("name", ["blocks.0.hook_resid_pre", "blocks.1.attn.hook_pattern", "blocks.0.mlp.hook_post",
                                  "blocks.1.ln1.hook_scale", "hook_embed", "ln_final.hook_normalized"])
def test_backward_hooks_fire_in_the_loss_backward(name):
    """run_with_hooks(..., return_type="loss", bwd_hooks=..., reset_hooks_end=False), then loss.backward()
    (torch) / model.backward() (NumPy), then reset_hooks(): each hook sees torch autograd's gradient there."""
    model, twin = make_pair()
    tokens = tokens_for()
    expected, expected_params = autograd_at(twin, tokens, name)
    for m in (model, twin):
        seen = []
        m.zero_grad()
        record = [(name, lambda g, hook: seen.append(to_numpy(g)))]
        loss = m.run_with_hooks(tokens, return_type="loss", bwd_hooks=record, reset_hooks_end=False)
        assert not seen  # run_with_hooks runs the forward only
        if m is model:
            m.backward()  # the NumPy twin's loss.backward()
        else:
            loss.backward()
        m.reset_hooks()
        assert len(seen) == 1
        close(seen[0], expected)
        largest = max(np.abs(g).max() for g in expected_params.values())
        for pname, p in m.named_parameters():  # b_K's exact gradient is 0: measured against the largest (helpers.py)
            assert rel_err(p.grad, expected_params[pname], largest if pname.endswith("b_K") else None) <= TOL, pname
        assert all(not p.bwd_hooks for p in m.hook_points())


def test_backward_hooks_with_an_ablation_and_a_per_token_loss():
    """A forward ablation and a backward hook together; loss_per_token with its gradient given."""
    model, twin = make_pair(act_fn="gelu")
    tokens = tokens_for(5)
    dloss = np.random.default_rng(6).standard_normal((B, P - 1))
    ablate = [("blocks.0.attn.hook_z", zero_head(1))]
    name = "blocks.0.attn.hook_v"
    expected, _ = autograd_at(twin, tokens, name, ablate, per_token_grad=dloss)
    assert np.all(expected[:, :, 1] == 0) and np.abs(expected[:, :, 0]).max() > 1e-3  # head 1 feeds only the ablated z
    for m in (model, twin):
        seen = []
        loss = m.run_with_hooks(tokens, return_type="loss", loss_per_token=True, fwd_hooks=ablate,
                                bwd_hooks=[(name, lambda g, hook: seen.append(to_numpy(g)))], reset_hooks_end=False)
        if m is model:
            m.backward(dloss)  # loss.backward(dloss)
        else:
            loss.backward(torch.from_numpy(dloss))
        m.reset_hooks()
        close(seen[0], expected)


def test_backward_hooks_removed_at_the_end_do_not_fire_and_warn():
    model, twin = make_pair()
    tokens = tokens_for()
    for m in (model, twin):
        seen = []
        with pytest.warns(UserWarning, match="reset_hooks_end=False"):
            loss = m.run_with_hooks(tokens, return_type="loss",
                                    bwd_hooks=[("hook_embed", lambda g, hook: seen.append(1))])
        model.backward() if m is model else loss.backward()
        assert seen == []


def test_a_backward_hook_that_returns_a_gradient_edits_what_flows_on():
    """Halving the gradient at resid_mid of layer 1 halves every gradient below it, alike in both twins."""
    model, twin = make_pair()
    tokens = tokens_for(3)
    grads = {}
    for m in (model, twin):
        for factor in (1.0, 0.5):
            m.zero_grad()
            loss = m.run_with_hooks(tokens, return_type="loss", reset_hooks_end=False,
                                    bwd_hooks=[("blocks.1.hook_resid_mid", lambda g, hook, f=factor: g * f)])
            model.backward() if m is model else loss.backward()
            m.reset_hooks()
            grads[m is model, factor] = to_numpy(dict(m.named_parameters())["blocks.0.mlp.W_in"].grad).copy()
    close(grads[True, 0.5], 0.5 * grads[True, 1.0])
    close(grads[True, 0.5], grads[False, 0.5])


def test_run_with_cache_incl_bwd_differentiates_the_returned_loss():
    model, twin = make_pair()
    tokens = tokens_for(4)
    expected = {name: autograd_at(twin, tokens, name)[0]
                for name in ("blocks.0.hook_resid_mid", "blocks.1.attn.hook_q", "ln_final.hook_scale")}
    for m in (model, twin):
        m.zero_grad()
        loss, cache = m.run_with_cache(tokens, return_type="loss", incl_bwd=True)
        for name, grad in expected.items():
            close(cache[name + "_grad"], grad)
    dloss = np.random.default_rng(1).standard_normal((B, P - 1))
    _, cache = model.run_with_cache(tokens, return_type="loss", loss_per_token=True, incl_bwd=True, dout=dloss)
    _, cache_t = twin.run_with_cache(tokens, return_type="loss", loss_per_token=True, incl_bwd=True, dout=dloss)
    close(cache["resid_pre_grad", 1], autograd_at(twin, tokens, "blocks.1.hook_resid_pre", per_token_grad=dloss)[0])
    close(cache["resid_pre_grad", 1], cache_t["resid_pre_grad", 1])
    for m in (model, twin):
        with pytest.raises(ValueError, match="per token"):
            m.run_with_cache(tokens, return_type="loss", loss_per_token=True, incl_bwd=True)
        with pytest.raises(ValueError, match="return_type=None"):
            m.run_with_cache(tokens, return_type=None, incl_bwd=True)


# --- the NumPy model's backward() after a loss ---

def test_numpy_backward_without_dout_is_loss_backward():
    model, twin = make_pair()
    tokens = tokens_for(7)
    for return_type in ("loss", "both"):
        model.zero_grad()
        twin.zero_grad()
        model(tokens, return_type=return_type)
        model.backward()
        result = twin(tokens, return_type=return_type)
        (result[1] if return_type == "both" else result).backward()
        largest = max(float(p.grad.abs().max()) for p in twin.parameters())
        for (name, p), (_, q) in zip(model.named_parameters(), twin.named_parameters()):
            assert rel_err(p.grad, q.grad, largest if name.endswith("b_K") else None) <= TOL, name
    model.zero_grad()
    model(tokens, return_type="loss")
    model.backward(2.5)  # loss.backward(torch.tensor(2.5)): the gradient times 2.5
    twin.zero_grad()
    twin(tokens, return_type="loss").backward(torch.tensor(2.5, dtype=torch.float64))
    close(model.blocks[1].mlp.W_out.grad, twin.blocks[1].mlp.W_out.grad)
    model(tokens)  # a forward that returns logits: no loss to start from any more
    with pytest.raises(ValueError, match="return_type='loss'"):
        model.backward()
    model(tokens, return_type="loss", loss_per_token=True)
    with pytest.raises(ValueError, match=r"per token, shape \(3, 6\)"):
        model.backward()
    with pytest.raises(ValueError, match=r"dout must have the forward output's shape \(3, 7, 13\)"):
        model.backward(np.zeros((3, 5)))
    with pytest.raises(TypeError, match="loss_per_token"):
        model(tokens, return_type="loss", loss_per_token="yes")


# --- add_hook, reset_hooks and the hook points ---

def test_reset_hooks_clears_hooks_however_they_were_added():
    """The issue's case: a hook put on a HookPoint directly stays on (TransformerLens too) until reset_hooks()."""
    model, twin = make_pair()
    tokens = tokens_for()
    sd = state(model)
    clean = tl_loss(tl_forward(sd, model.cfg, tokens)[0], tokens)
    ablated = tl_loss(tl_forward(sd, model.cfg, tokens, {"blocks.1.attn.hook_z": lambda z: zero_head(0)(z, None)})[0],
                      tokens)
    for m in (model, twin):
        m.blocks[1].attn.hook_z.add_hook(zero_head(0))
        close(m(tokens, return_type="loss"), ablated)
        close(m(tokens, return_type="loss"), ablated)  # still on
        m.reset_hooks()
        close(m(tokens, return_type="loss"), clean)
        m.add_hook("blocks.1.attn.hook_z", zero_head(0))
        m.add_hook(lambda name: name.endswith("hook_pattern"), lambda x, hook: None, dir="fwd")
        close(m(tokens, return_type="loss"), ablated)
        m.remove_all_hook_fns()
        close(m(tokens, return_type="loss"), clean)
        # a permanent hook survives reset_hooks(), not reset_hooks(including_permanent=True)
        m.add_hook("z1", zero_head(0), is_permanent=True)
        m.reset_hooks()
        close(m(tokens, return_type="loss"), ablated)
        m.reset_hooks(including_permanent=True)
        close(m(tokens, return_type="loss"), clean)
        # hooks left on by reset_hooks_end=False also apply to generate, until reset_hooks()
        m.run_with_hooks(tokens, fwd_hooks=[("z1", zero_head(0))], reset_hooks_end=False)
        close(m(tokens, return_type="loss"), ablated)
        m.reset_hooks()
        assert all(not p.fwd_hooks and not p.bwd_hooks for p in m.hook_points())


def test_hooks_context_removes_only_its_own_hooks():
    model, twin = make_pair()
    tokens = tokens_for()
    for m in (model, twin):
        outer = []
        m.add_hook("hook_embed", lambda x, hook: outer.append(hook.name))
        with m.hooks(fwd_hooks=[("hook_pos_embed", lambda x, hook: None)]):
            assert len(m.hook_dict["hook_pos_embed"].fwd_hooks) == 1
            with m.hooks(fwd_hooks=[("hook_pos_embed", lambda x, hook: None)], reset_hooks_end=False):
                pass
            assert len(m.hook_dict["hook_pos_embed"].fwd_hooks) == 2  # the inner block left its hook on
        assert len(m.hook_dict["hook_pos_embed"].fwd_hooks) == 1  # the outer block took only its own
        m(tokens)
        assert outer == ["embed.hook_out"]  # hook_embed: an alias; hook.name is the point's own name
        m.reset_hooks()
        assert all(not p.fwd_hooks for p in m.hook_points())


def test_hook_points_know_their_name_layer_and_context():
    model, twin = make_pair()
    tokens = tokens_for()
    for m in (model, twin):
        seen = {}

        def note(x, hook):
            seen[hook.name] = hook.layer()
            hook.ctx["calls"] = hook.ctx.get("calls", 0) + 1

        m.run_with_hooks(tokens, fwd_hooks=[(lambda n: n.endswith(("hook_z", "ln2.hook_scale")), note)])
        # hook_z is an alias of o.hook_in: hook.name is the point's own name
        assert seen == {"blocks.0.attn.o.hook_in": 0, "blocks.0.ln2.hook_scale": 0,
                        "blocks.1.attn.o.hook_in": 1, "blocks.1.ln2.hook_scale": 1}
        assert m.hook_dict["blocks.1.attn.hook_z"].ctx == {"calls": 1}
        m.run_with_hooks(tokens, fwd_hooks=[("z1", note)], clear_contexts=True)
        assert m.hook_dict["blocks.1.attn.hook_z"].ctx == {}
        m.hook_dict["blocks.0.hook_resid_pre"].ctx["x"] = 1
        m.reset_hooks()  # clear_contexts=True by default, as in TransformerLens
        assert m.hook_dict["blocks.0.hook_resid_pre"].ctx == {}
        with pytest.raises(ValueError, match="not inside a block"):
            m.hook_dict["hook_embed"].layer()
        order = []
        m.add_hook("hook_embed", lambda x, hook: order.append("second"))
        m.add_hook("hook_embed", lambda x, hook: order.append("first"), prepend=True)
        m(tokens)
        assert order == ["first", "second"]
        m.reset_hooks()
        assert m.mod_dict["blocks.1.attn"] is m.blocks[1].attn


def test_hook_functions_are_called_with_hook_as_a_keyword():
    """TransformerLens calls fn(activation, hook=point): a keyword-only ``hook`` works, as there."""
    model, twin = make_pair()
    for m in (model, twin):
        names = []

        def keyword_only(activation, *, hook):
            names.append(hook.name)

        m.run_with_hooks(tokens_for(), fwd_hooks=[("hook_embed", keyword_only)])
        assert names == ["embed.hook_out"]  # hook_embed is an alias of embed.hook_out


def test_get_act_name_reads_transformer_lens_short_names():
    """The examples of TransformerLens's utils.get_act_name docstring."""
    assert get_act_name("k", 6, "a") == "blocks.6.attn.hook_k"
    assert get_act_name("pre", 2) == "blocks.2.mlp.hook_pre"
    assert get_act_name("embed") == "hook_embed"
    assert get_act_name("normalized", 27, "ln2") == "blocks.27.ln2.hook_normalized"
    assert get_act_name("k6") == "blocks.6.attn.hook_k"
    assert get_act_name("scale4ln1") == "blocks.4.ln1.hook_scale"
    assert get_act_name("pre5") == "blocks.5.mlp.hook_pre"
    assert get_act_name("pattern", 0) == "blocks.0.attn.hook_pattern"
    assert get_act_name("attn", 1) == "blocks.1.attn.hook_pattern"
    assert get_act_name("resid_post", 3) == "blocks.3.hook_resid_post"
    assert npi.get_act_name is get_act_name and pti.get_act_name is get_act_name
    model, _ = make_pair()
    _, cache = model.run_with_cache(tokens_for())
    assert cache["k1"] is cache["blocks.1.attn.hook_k"] and cache["scale0ln2"] is cache["blocks.0.ln2.hook_scale"]


def test_bad_hook_calls_are_named():
    model, twin = make_pair()
    for m in (model, twin):
        with pytest.raises(ValueError, match="add_hook.*no hook named"):
            m.add_hook("blocks.0.attn.hook_nothing", lambda x, hook: None)
        with pytest.raises(ValueError, match="dir must be"):
            m.add_hook("hook_embed", lambda x, hook: None, dir="up")
        with pytest.raises(ValueError, match="dir must be"):
            m.reset_hooks(direction="sideways")
        with pytest.raises(TypeError, match="is_permanent"):
            m.add_hook("hook_embed", lambda x, hook: None, is_permanent="yes")
        assert all(not p.fwd_hooks for p in m.hook_points())
        with pytest.raises(ValueError, match="remove_batch_dim"):
            m.run_with_cache(tokens_for(), remove_batch_dim=True)
    with pytest.raises(ValueError, match="CPU"):
        model.run_with_cache(tokens_for(), device="cuda")


# --- the cache: pos_slice, batch_slice, remove_batch_dim, to ---

SLICES = [None, -1, (1, 5), slice(2, None, 2), [0, 3, 6], np.array([6, 1])]


def tl_slice(x, input_slice, dim):
    """TransformerLens's Slice(input_slice).apply(x, dim): an int drops the axis, a tuple is slice(*tuple)."""
    index = [slice(None)] * x.ndim
    index[dim] = (slice(*input_slice) if isinstance(input_slice, tuple) else slice(None) if input_slice is None
                  else input_slice)
    return x[tuple(index)]


@pytest.mark.parametrize("pos_slice", SLICES, ids=repr)
def test_pos_slice_on_the_stacks(pos_slice):
    model, twin = make_pair()
    tokens = tokens_for()
    _, cache = model.run_with_cache(tokens)
    _, cache_t = twin.run_with_cache(tokens)
    sd = state(model)
    for c in (cache, cache_t):
        # TransformerLens slices each stacked piece on its pos axis (-2; -3 for z) before stacking
        expected = np.stack([tl_slice(c["resid_pre", i].numpy() if hasattr(c["resid_pre", i], "numpy")
                                      else c["resid_pre", i], pos_slice, -2) for i in range(2)])
        close(c.accumulated_resid(1, pos_slice=pos_slice), expected)
        parts = ["hook_embed", "hook_pos_embed", "blocks.0.hook_attn_out", "blocks.0.hook_mlp_out"]
        close(c.decompose_resid(1, pos_slice=pos_slice),
              np.stack([tl_slice(to_numpy(c[n]), pos_slice, -2) for n in parts]))
        heads = c.stack_head_results(1, pos_slice=pos_slice)
        z = tl_slice(to_numpy(c["z", 0]), pos_slice, -3)
        close(heads, np.stack([z[..., h, :] @ sd["blocks.0.attn.W_O"][h] for h in range(3)]))
        # apply_ln: the stack's pos_slice picks the matching cached scales
        scale = tl_slice(to_numpy(c["blocks.1.ln1.hook_scale"]), pos_slice, -2)
        pieces = to_numpy(c.decompose_resid(1, pos_slice=pos_slice))
        close(c.decompose_resid(1, pos_slice=pos_slice, apply_ln=True),
              (pieces - pieces.mean(-1, keepdims=True)) / scale)
    close(cache_t.decompose_resid(pos_slice=pos_slice, apply_ln=True), cache.decompose_resid(pos_slice=pos_slice,
                                                                                             apply_ln=True))


@pytest.mark.parametrize("batch_slice", [None, 1, (0, 2), [2, 0]], ids=repr)
def test_logit_attrs_with_pos_and_batch_slices(batch_slice):
    """TransformerLens's logit_attrs: batch_slice the stack (axis 1), centre it, divide by the cached
    ln_final scale (pos_slice, then batch_slice applied to it), read along W_U[:, token] (ln_final.w
    folded in: here W_U * ln_final.w)."""
    model, twin = make_pair()
    tokens = tokens_for()
    sd = state(model)
    answers = np.random.default_rng(9).integers(0, V, B)
    for m in (model, twin):
        _, c = m.run_with_cache(tokens)
        stack = to_numpy(c.decompose_resid(pos_slice=-1))  # [component, batch, d_model]: the last position
        kept = tl_slice(stack, batch_slice, 1)
        scale = tl_slice(tl_slice(to_numpy(c["ln_final.hook_scale"]), -1, -2), batch_slice, 0)
        right = tl_slice(answers, batch_slice, 0)
        direction = (sd["unembed.W_U"] * sd["ln_final.w"][:, None]).T[right]  # [batch, d_model]
        expected = ((kept - kept.mean(-1, keepdims=True)) / scale * direction).sum(-1)
        attrs = c.logit_attrs(c.decompose_resid(pos_slice=-1), right, pos_slice=-1, batch_slice=batch_slice)
        close(attrs, expected)
        # summed, plus the constants, they are the logit of the answer at the last position
        full = to_numpy(c.logit_attrs(c.decompose_resid(pos_slice=-1), answers, pos_slice=-1)).sum(0)
        logits = tl_forward(sd, m.cfg, tokens)[0][:, -1]
        close(full + (sd["unembed.W_U"].T[answers] @ sd["ln_final.b"]) + sd["unembed.b_U"][answers],
              logits[np.arange(B), answers])


def test_run_with_cache_pos_slice_remove_batch_dim_and_to():
    model, twin = make_pair()
    tokens = tokens_for()
    _, full = model.run_with_cache(tokens)
    for m in (model, twin):
        _, c = m.run_with_cache(tokens, pos_slice=-1)  # TransformerLens keeps the axis for an int here
        assert tuple(c["z", 0].shape) == (B, 1, 3, 5) and tuple(c["pattern", 0].shape) == (B, 3, 1, P)
        close(c["resid_post", 1], full["resid_post", 1][:, -1:])
        close(c["scale"], full["scale"][:, -1:])
        _, c = m.run_with_cache(tokens, pos_slice=(1, 4), names_filter=["k0", "blocks.1.attn.hook_attn_scores"])
        close(c["k", 0], full["k", 0][:, 1:4])
        close(c["attn_scores", 1], full["attn_scores", 1][:, :, 1:4])
        _, one = m.run_with_cache(tokens[1:2], remove_batch_dim=True)
        assert not one.has_batch_dim and tuple(one["resid_pre", 1].shape) == (P, 12)
        close(one["resid_pre", 1], full["resid_pre", 1][1])
        sliced = m.run_with_cache(tokens)[1].apply_slice_to_batch_dim([2, 0])
        close(sliced["v", 1], full["v", 1][[2, 0]])
        dropped = m.run_with_cache(tokens)[1].apply_slice_to_batch_dim(1)
        assert not dropped.has_batch_dim
        close(dropped.decompose_resid().sum(0), full["resid_post", 1][1])
    _, c = twin.run_with_cache(tokens)
    assert c.to("cpu") is c
    c.to("meta")  # a device with no data: shows that every tensor moved
    assert {v.device.type for v in c.values()} == {"meta"}
    _, c = model.run_with_cache(tokens)
    assert c.to("cpu") is c
    with pytest.raises(ValueError, match="CPU"):
        c.to("cuda")


def test_slice_follows_transformer_lens():
    x = np.arange(40).reshape(5, 8)
    assert np.array_equal(Slice(3).apply(x, 1), x[:, 3])
    assert np.array_equal(Slice((2, 6)).apply(x, 1), x[:, 2:6])
    assert np.array_equal(Slice((1, 7, 2)).apply(x, 1), x[:, 1:7:2])
    assert np.array_equal(Slice([4, 0]).apply(x, 0), x[[4, 0]])
    assert np.array_equal(Slice(None).apply(x, 0), x)
    assert np.array_equal(Slice.unwrap(3).apply(x, 1), x[:, [3]])
    with pytest.raises(ValueError, match="slice"):
        Slice("first")


# --- generate ---

def test_generate_greedy_is_the_argmax_and_the_twins_agree():
    model, twin = make_pair()
    prompt = tokens_for(pos=3)
    greedy = model.generate(prompt, max_new_tokens=5, do_sample=False, verbose=False)
    rows = prompt.copy()
    for _ in range(5):  # TransformerLens's greedy loop: the argmax of the last position's logits
        rows = np.concatenate([rows, tl_forward(state(model), model.cfg, rows)[0][:, -1].argmax(-1)[:, None]], 1)
    assert np.array_equal(greedy, rows)
    assert np.array_equal(to_numpy(twin.generate(prompt, max_new_tokens=5, do_sample=False, verbose=False)), greedy)
    assert np.array_equal(model.generate(prompt, 5, temperature=0, verbose=False, seed=1), greedy)  # temperature 0 too
    # stop_at_eos: a sequence that produced eos is padded with it; generation stops once all have
    eos = int(greedy[0, 3])
    stopped = model.generate(prompt, max_new_tokens=5, do_sample=False, eos_token_id=eos, verbose=False)
    expected = greedy.copy()
    for row in expected:
        hits = np.flatnonzero(row[3:] == eos)
        if hits.size:
            row[3 + hits[0]:] = eos
    finished_at = max(np.flatnonzero(row[3:] == eos)[0] if (row[3:] == eos).any() else 4 for row in expected)
    assert np.array_equal(stopped, expected[:, :3 + finished_at + 1])
    assert np.array_equal(to_numpy(twin.generate(prompt, 5, do_sample=False, eos_token_id=eos, verbose=False)), stopped)
    unstopped = model.generate(prompt, 5, do_sample=False, eos_token_id=eos, stop_at_eos=False, verbose=False)
    assert np.array_equal(unstopped, greedy)


@pytest.mark.parametrize("options", [dict(), dict(temperature=0.7), dict(top_k=3), dict(top_p=0.6),
                                     dict(freq_penalty=1.5, temperature=1.3)], ids=repr)
def test_seeded_sampling_draws_the_same_tokens_in_both_twins(options):
    model, twin = make_pair()
    prompt = tokens_for(pos=3)
    sampled = model.generate(prompt, 6, seed=11, verbose=False, **options)
    assert sampled.shape == (B, 9)
    assert np.array_equal(to_numpy(twin.generate(prompt, 6, seed=11, verbose=False, **options)), sampled)
    assert np.array_equal(model.generate(prompt, 6, seed=11, verbose=False, **options), sampled)
    assert not np.array_equal(model.generate(prompt, 6, seed=12, verbose=False, **options), sampled)


def test_sample_logits_keeps_what_transformer_lens_keeps():
    """top_k keeps the k largest logits; top_p the most likely tokens until their mass passes top_p
    (the one that crosses it included); temperature divides the logits; 0 is greedy. Checked on
    20000 draws from one row: only kept tokens appear, at their renormalised probabilities."""
    logits = np.array([[2.0, -1.0, 0.5, 1.5, 0.0, -0.5, 1.0]])
    rows = np.repeat(logits, 20000, axis=0)

    def frequencies(**options):
        draws = sample_logits(rows, rng=np.random.default_rng(0), **options)
        return np.bincount(draws, minlength=7) / draws.size

    def softmax(x):
        e = np.exp(x - x.max())
        return e / e.sum()

    probs = softmax(logits[0] / 0.8)
    kept_k = np.zeros(7, bool)
    kept_k[[0, 3, 6]] = True  # the 3 largest
    order = np.argsort(-probs)
    kept_p = np.zeros(7, bool)
    kept_p[order[:np.searchsorted(np.cumsum(probs[order]), 0.7) + 1]] = True
    for options, kept in ((dict(temperature=0.8), np.ones(7, bool)), (dict(temperature=0.8, top_k=3), kept_k),
                          (dict(temperature=0.8, top_p=0.7), kept_p)):
        seen = frequencies(**options)
        expected = np.where(kept, probs, 0) / probs[kept].sum()
        assert np.array_equal(seen > 0, kept), options
        assert np.abs(seen - expected).max() < 0.015, options
    assert np.array_equal(sample_logits(rows[:3], temperature=0), [0, 0, 0])
    assert np.array_equal(sample_logits(rows[:50], top_k=1, rng=np.random.default_rng(1)), np.zeros(50))


def test_generate_takes_text_and_returns_what_transformer_lens_returns(capsys):
    words = ["<pad>", "the", "cat", "sat", "on", "mat", "a", "dog", "ran", "home", "<bos>", "up", "down"]
    model, twin = make_pair()
    for m in (model, twin):
        m.tokenizer = WordVocabulary(words, bos_token="<bos>")
    text = model.generate("the cat", 3, do_sample=False, verbose=False)
    ids = model.generate(model.to_tokens("the cat"), 3, do_sample=False, verbose=False)
    assert isinstance(text, str) and text == model.to_string(ids[0, 1:])  # the BOS that to_tokens added is gone
    assert text.startswith("the cat ") and len(text.split()) == 5
    assert twin.generate("the cat", 3, do_sample=False, verbose=False) == text
    tokens = twin.generate("the cat", 3, do_sample=False, verbose=False, return_type="tensor")
    assert isinstance(tokens, torch.Tensor) and np.array_equal(tokens.numpy(), ids)
    # tokens in, a str out: every token, the BOS included (to_tokens did not add it here)
    assert model.generate(ids[:, :3], 3, do_sample=False, verbose=False, return_type="str") == "<bos> " + text
    assert model.generate(np.repeat(ids[:, 1:3], 2, 0), 3, do_sample=False, verbose=False,
                          return_type="str") == [model.generate("the cat", 3, do_sample=False, verbose=False,
                                                                prepend_bos=False)] * 2
    model.generate("the cat", 3, do_sample=False)  # verbose=True, TransformerLens's default: progress on stderr
    assert "generate: 3/3 tokens" in capsys.readouterr().err
    for bad, match in ((dict(top_k=0), "top_k"), (dict(top_p=1.5), "top_p"), (dict(return_type="list"), "return_type"),
                       (dict(eos_token_id=99), "eos_token_id"), (dict(do_sample="no"), "do_sample"),
                       (dict(freq_penalty=-1), "freq_penalty")):
        with pytest.raises((ValueError, TypeError), match=match):
            model.generate(ids, 2, verbose=False, **bad)


# --- act_fn="gelu": the exact GELU ---

def test_gelu_is_torchs_exact_gelu_with_its_gradient():
    """hook_post is torch.nn.GELU() of hook_pre (TransformerLens's "gelu"); the hand-written backward
    gives autograd's gradient of F.gelu at hook_pre."""
    model, twin = make_pair(act_fn="gelu")
    tokens = tokens_for()
    for m in (model, twin):
        _, cache = m.run_with_cache(tokens, return_type="loss", incl_bwd=True)
        for i in range(2):
            close(cache["post", i], torch.nn.GELU()(torch.as_tensor(to_numpy(cache["pre", i]))))
            pre = torch.as_tensor(to_numpy(cache["pre", i])).requires_grad_()
            F.gelu(pre).backward(torch.as_tensor(to_numpy(cache["post_grad", i])))
            close(cache["pre_grad", i], pre.grad)
    assert npi.FeedForward(model.cfg) is not None
    with pytest.raises(ValueError, match="act_fn must be one of"):
        npi.TransformerConfig(d_vocab=5, d_model=4, n_heads=2, n_layers=1, n_ctx=3, act_fn="gelu_fast")


def test_feedforward_exercise_checks_gelu_and_its_hint_lists_its_lines():
    from exercises.catalog import BY_KEY
    from exercises.generate import stub_source
    from numpy_impl import feedforward

    assert "gelu" in [variant.label for variant in BY_KEY["feedforward"].variants]
    stub = stub_source(open(feedforward.__file__).read(), "feedforward.py")
    assert '#   the exact GELU branch (act_fn "gelu"):\n' in stub  # its lines under their own label
    assert "#       post = pre * cdf\n" in stub
    assert "#       cdf = 0.5 * (1 + erf(pre / sqrt(2)));  d cdf / d pre = exp(-pre**2 / 2) / sqrt(2 pi)\n" in stub
    assert "dcdf" not in stub  # the answer itself is not in the learner's copy


# --- a config from TransformerLens's field names ---

def test_config_from_transformer_lens_names():
    cfg = TransformerConfig.from_transformer_lens(n_layers=2, d_model=12, n_ctx=10, d_head=4, d_vocab=V, act_fn="gelu",
                                                  normalization_type="LN", positional_embedding_type="standard",
                                                  attention_dir="causal", dtype="float64")
    assert cfg == TransformerConfig(d_vocab=V, d_model=12, n_heads=3, n_layers=2, n_ctx=10, d_head=4, act_fn="gelu",
                                    normalization="pre", positional="learned", causal=True, dtype="float64")
    # TransformerLens's defaults: float32, n_heads = d_model // d_head, d_mlp = 4 * d_model
    cfg = TransformerConfig.from_transformer_lens(n_layers=1, d_model=8, n_ctx=4, d_head=2, d_vocab=5, act_fn="relu")
    assert (cfg.dtype, cfg.n_heads, cfg.d_mlp, cfg.normalization_type) == ("float32", 4, 32, "LN")
    cfg = TransformerConfig.from_transformer_lens(n_layers=1, d_model=8, n_ctx=4, d_head=2, d_vocab=5, attn_only=True,
                                                  normalization_type=None, attention_dir="bidirectional",
                                                  dtype=torch.float64)
    assert (cfg.normalization, cfg.normalization_type, cfg.causal, cfg.dtype) == (None, None, False, "float64")
    folded = TransformerConfig.from_transformer_lens(n_layers=1, d_model=8, n_ctx=4, d_head=2, d_vocab=5,
                                                     act_fn="gelu_new", normalization_type="LNPre")
    assert folded.normalization_type == "LNPre" and "blocks.0.ln1.w" not in parameter_shapes(folded)
    assert parameter_count(folded) == len(parameter_shapes(folded)) == len(npi.Transformer(folded).state_dict())
    # what a TransformerLens config's to_dict() holds for such a model (its defaults filled in) is accepted
    tl_dict = dict(n_layers=1, d_model=8, n_ctx=4, d_head=2, model_name="custom", n_heads=4, d_mlp=32, act_fn="gelu",
                   d_vocab=5, eps=1e-5, use_attn_result=False, use_attn_scale=True, attn_scale=np.sqrt(2),
                   use_split_qkv_input=False, use_hook_mlp_in=False, use_attn_in=False, use_local_attn=False,
                   original_architecture=None, from_checkpoint=False, checkpoint_index=None, tokenizer_name=None,
                   window_size=None, attn_types=None, init_mode="gpt2", normalization_type="LN", device="cpu",
                   n_devices=1, attention_dir="causal", attn_only=False, seed=42, initializer_range=0.28,
                   init_weights=True, scale_attn_by_inverse_layer_idx=False, positional_embedding_type="standard",
                   final_rms=False, d_vocab_out=5, parallel_attn_mlp=False, rotary_dim=None, n_params=512,
                   use_hook_tokens=False, gated_mlp=False, default_prepend_bos=True, dtype=torch.float32,
                   n_key_value_heads=None, post_embedding_ln=False, rotary_base=10000, trust_remote_code=False)
    assert TransformerConfig.from_transformer_lens(**tl_dict).act_fn == "gelu"


@pytest.mark.parametrize("field, value, match", [
    ("normalization_type", "RMS", "normalization_type"),
    ("positional_embedding_type", "rotary", "positional_embedding_type"),
    ("positional_embedding_type", "sinusoidal", "positional='sinusoidal'"),
    ("use_attn_result", True, "use_attn_result"),
    ("gated_mlp", True, "gated_mlp"),
    ("n_key_value_heads", 2, "n_key_value_heads"),
    ("eps", 1e-6, "eps"),
    ("dtype", "float16", "dtype"),
    ("attention_dir", "sideways", "attention_dir"),
    ("wings", 2, "wings"),
    ("normalization", "post", "this project's name"),
])
def test_config_from_transformer_lens_refuses_what_is_not_modelled(field, value, match):
    fields = dict(n_layers=1, d_model=8, n_ctx=4, d_head=2, d_vocab=5, act_fn="relu", **{field: value})
    with pytest.raises(ValueError, match=match) as error:
        TransformerConfig.from_transformer_lens(**fields)
    assert "\n" not in str(error.value)


# --- fold_layer_norm ---

def tl_fold(sd, n_layers, center_weights=True):
    """TransformerLens's fold_layer_norm(state_dict, fold_biases=True, center_weights) in NumPy, its expressions."""
    sd = dict(sd)
    for i in range(n_layers):
        p = f"blocks.{i}."
        for n in "QKV":
            W, b = sd[p + f"attn.W_{n}"], sd[p + "ln1.b"]
            sd[p + f"attn.b_{n}"] = sd[p + f"attn.b_{n}"] + (W * b[None, :, None]).sum(-2)
            sd[p + f"attn.W_{n}"] = sd[p + f"attn.W_{n}"] * sd[p + "ln1.w"][None, :, None]
            if center_weights:
                sd[p + f"attn.W_{n}"] = sd[p + f"attn.W_{n}"] - sd[p + f"attn.W_{n}"].mean(1, keepdims=True)
        sd[p + "mlp.b_in"] = sd[p + "mlp.b_in"] + (sd[p + "mlp.W_in"] * sd[p + "ln2.b"][:, None]).sum(-2)
        sd[p + "mlp.W_in"] = sd[p + "mlp.W_in"] * sd[p + "ln2.w"][:, None]
        if center_weights:
            sd[p + "mlp.W_in"] = sd[p + "mlp.W_in"] - sd[p + "mlp.W_in"].mean(0, keepdims=True)
        for name in ("ln1.w", "ln1.b", "ln2.w", "ln2.b"):
            del sd[p + name]
    sd["unembed.b_U"] = sd["unembed.b_U"] + (sd["unembed.W_U"] * sd["ln_final.b"][:, None]).sum(-2)
    sd["unembed.W_U"] = sd["unembed.W_U"] * sd["ln_final.w"][:, None]
    if center_weights:
        sd["unembed.W_U"] = sd["unembed.W_U"] - sd["unembed.W_U"].mean(0, keepdims=True)
    del sd["ln_final.w"], sd["ln_final.b"]
    return sd


@pytest.mark.parametrize("center_weights", [True, False])
def test_fold_layer_norm_is_transformer_lens_fold_ln(center_weights):
    model, twin = make_pair(act_fn="gelu")
    tokens = tokens_for()
    sd = state(model)
    expected = tl_fold(sd, 2, center_weights)
    logits = model(tokens)
    for m in (model, twin):
        assert m.fold_layer_norm(center_weights=center_weights) is m
        assert m.cfg.normalization_type == "LNPre" and m.blocks[0].cfg.normalization_type == "LNPre"
        assert type(m.ln_final).__name__ == "LayerNormPre"
        folded = state(m)
        assert list(folded) == [k for k in sd if k in expected]  # the LayerNorms' w and b are gone
        for name, value in expected.items():
            close(folded[name], value)
        close(m(tokens), logits)  # the same logits, to rounding
    # the folded model is TransformerLens's LNPre model on the folded weights
    tl_logits, acts = tl_forward(expected, model.cfg, tokens)
    _, cache = model.run_with_cache(tokens)
    for name in ("ln_final.hook_normalized", "blocks.1.ln2.hook_normalized", "blocks.0.attn.hook_q",
                 "blocks.1.mlp.hook_pre"):
        close(cache[name], acts[name])
    close(model(tokens), tl_logits)


def test_folded_twins_agree_forward_and_backward_and_save():
    model, twin = make_pair()
    model.fold_layer_norm()
    twin.fold_layer_norm()
    tokens = tokens_for(8)
    model.zero_grad()
    twin.zero_grad()
    model(tokens, return_type="loss")
    model.backward()
    twin(tokens, return_type="loss").backward()
    largest = max(float(p.grad.abs().max()) for p in twin.parameters())
    for (name, p), (_, q) in zip(model.named_parameters(), twin.named_parameters()):
        assert rel_err(p.grad, q.grad, largest if name.endswith("b_K") else None) <= TOL, name


def test_folded_model_saves_and_loads(tmp_path):
    model, twin = make_pair()
    model.fold_layer_norm()
    model.save(tmp_path / "folded.npz")
    for cls in (npi.Transformer, pti.Transformer):
        loaded = cls.load(tmp_path / "folded.npz")
        assert loaded.cfg.normalization_type == "LNPre"
        close(loaded(tokens_for()), model(tokens_for()))


def test_after_folding_logit_attrs_read_as_on_a_fold_ln_model():
    """On TransformerLens's fold_ln model, logit_attrs is (centred piece / cached scale) . W_U[:, token]
    with the folded W_U, and the pieces plus b_U[token] make the logit. The decompositions are the
    same before and after folding (folding changes no residual stream), and so are the attributions."""
    model, twin = make_pair()
    tokens = tokens_for()
    answers = np.random.default_rng(3).integers(0, V, (B, P))
    _, before = model.run_with_cache(tokens)
    attrs_before = before.logit_attrs(before.decompose_resid(), answers)
    folded_sd = tl_fold(state(model), 2)
    for m in (model, twin):
        m.fold_layer_norm()
        out, c = m.run_with_cache(tokens)
        pieces = to_numpy(c.decompose_resid())
        close(pieces, before.decompose_resid())
        scale = to_numpy(c["ln_final.hook_scale"])
        expected = ((pieces - pieces.mean(-1, keepdims=True)) / scale * folded_sd["unembed.W_U"].T[answers]).sum(-1)
        attrs = c.logit_attrs(c.decompose_resid(), answers)
        close(attrs, expected)
        close(attrs, attrs_before)
        logit = np.take_along_axis(to_numpy(out), answers[..., None], -1)[..., 0]
        close(to_numpy(attrs).sum(0) + folded_sd["unembed.b_U"][answers], logit)
        heads = c.logit_attrs(c.stack_head_results(incl_remainder=True), answers)
        close(to_numpy(heads).sum(0) + folded_sd["unembed.b_U"][answers], logit)
        lens = to_numpy(c.accumulated_resid(apply_ln=True))
        close(lens[-1] @ folded_sd["unembed.W_U"] + folded_sd["unembed.b_U"], out)


def test_direct_logit_attribution_adds_up_after_folding():
    """interp's direct_logit_attribution on a folded model: the same numbers; ln_final.b is now in b_U."""
    from interp.analyses import direct_logit_attribution

    model, twin = make_pair()
    tokens = tokens_for()
    before = direct_logit_attribution(model, tokens)
    for m in (model, twin):
        m.fold_layer_norm()
        after = direct_logit_attribution(m, tokens)
        close(after.components, before.components)
        close(after.components.sum() + after.bias, after.logit)
        close(after.logit, before.logit)


def test_fold_layer_norm_refuses_what_it_cannot_fold():
    for overrides, match in ((dict(normalization="post"), "normalization='pre'"),
                             (dict(normalization=None), "normalization='pre'"),
                             (dict(unembed=False, causal=False), "unembedding")):
        model, twin = make_pair(**overrides)
        for m in (model, twin):
            with pytest.raises(ValueError, match=match):
                m.fold_layer_norm()
    model, _ = make_pair()
    model.fold_layer_norm()
    with pytest.raises(ValueError, match="LNPre"):
        model.fold_layer_norm()


def test_fold_layer_norm_weights_is_the_shared_formula():
    model, _ = make_pair(attn_only=True)
    sd = state(model)
    folded = fold_layer_norm_weights(sd, model.cfg)
    assert "blocks.0.ln1.w" not in folded and "ln_final.b" not in folded and "blocks.0.ln1.w" in sd
    tokens = tokens_for()
    logits = model(tokens)
    model.fold_layer_norm()
    close(model(tokens), logits)
