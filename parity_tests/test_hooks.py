"""Hook points, caches and activation gradients: the same names, shapes and numbers in both twins.

Parity is measured as in helpers.py: max |numpy - torch| / max |torch| per tensor, 1e-12 in float64.
Attention scores hold -inf where the causal mask hides a key: the masks must match exactly and the
finite entries are compared.
"""

import warnings

import numpy as np
import pytest
import torch

from numpy_impl import hook_name
from parity_tests.helpers import (
    CFG,
    SIDES,
    TOL,
    make_cfg,
    parametrize_pairwise,
    rel_err,
    to_numpy,
    twins,
)

B, P = 3, 6
BASE = dict(d_head=5, d_mlp=16)  # make_cfg's changes for these tests


def expected_hooks(cfg):
    """The hook names and shapes of the contract (TransformerLens 4's), written out here (not taken
    from the code under test): each component's hook_in and hook_out, the projections' (attn.q, ...,
    mlp.out), and the aliases TransformerLens keeps (hook_embed, hook_resid_pre, hook_q, hook_pre,
    ...)."""
    d, h, dh, f = cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp
    resid, heads = (B, P, d), (B, P, h, dh)
    names = {
        "embed.hook_in": (B, P),
        "embed.hook_out": resid,
        "hook_embed": resid,
        "pos_embed.hook_in": (1, P),
        "pos_embed.hook_out": resid,
        "hook_pos_embed": resid,
    }
    ln = lambda prefix: {
        f"{prefix}.hook_{n}": (B, P, 1) if n == "scale" else resid  # noqa: E731
        for n in ("in", "scale", "normalized", "out")
    }
    for i in range(cfg.n_layers):
        block = f"blocks.{i}."
        names.update({block + "hook_in": resid, block + "hook_resid_pre": resid})
        if cfg.normalization is not None:
            names.update(ln(block + "ln1"))
        names[block + "attn.hook_in"] = resid
        for x in "qkv":
            names.update(
                {
                    block + f"attn.{x}.hook_in": resid,
                    block + f"attn.{x}.hook_out": heads,
                    block + f"attn.hook_{x}": heads,
                }
            )
        names[block + "attn.hook_attn_scores"] = (B, h, P, P)
        names[block + "attn.hook_pattern"] = (B, h, P, P)
        names.update(
            {
                block + "attn.o.hook_in": heads,
                block + "attn.hook_z": heads,
                block + "attn.o.hook_out": resid,
                block + "attn.hook_hidden_states": resid,
                block + "attn.hook_out": resid,
                block + "hook_attn_out": resid,
            }
        )
        if not cfg.attn_only:
            names[block + "hook_resid_mid"] = resid
            if cfg.normalization is not None:
                names.update(ln(block + "ln2"))
            names.update(
                {
                    block + "mlp.hook_in": resid,
                    block + "mlp.in.hook_in": resid,
                    block + "mlp.in.hook_out": (B, P, f),
                    block + "mlp.hook_pre": (B, P, f),
                    block + "mlp.out.hook_in": (B, P, f),
                    block + "mlp.hook_post": (B, P, f),
                    block + "mlp.out.hook_out": resid,
                    block + "mlp.hook_out": resid,
                    block + "hook_mlp_out": resid,
                }
            )
        names.update({block + "hook_out": resid, block + "hook_resid_post": resid})
    if cfg.normalization == "pre":
        names.update(ln("ln_final"))
    logits = (B, P, cfg.d_vocab)
    names.update({"unembed.hook_in": resid, "unembed.hook_out": logits, "hook_unembed": logits})
    return names


NO_GRADIENT = ("embed.hook_in", "pos_embed.hook_in")  # token and position ids: integers


def parity(name, a, b, dtype):
    a, b = to_numpy(a), to_numpy(b)
    if "attn_scores" in name and not name.endswith("_grad"):
        assert np.array_equal(np.isneginf(a), np.isneginf(b)), f"{name}: masks differ"
        keep = np.isfinite(b)
        a, b = a[keep], b[keep]
    err = rel_err(a, b)
    assert err <= TOL[dtype], f"{name}: relative error {err:.3e} > {TOL[dtype]:.0e}"
    return err


@parametrize_pairwise(
    norm=["pre", "post", None],
    attn_only=[False, True],
    positional=["learned", "sinusoidal"],
    causal=[True, False],
    dtype=["float64", "float32"],
)
def test_every_hook_cached_with_equal_activations_and_gradients(
    norm, attn_only, positional, causal, dtype
):
    model, twin = twins(
        make_cfg(
            BASE,
            dtype=dtype,
            normalization=norm,
            attn_only=attn_only,
            positional=positional,
            causal=causal,
        ),
        seed=1,
    )
    rng = np.random.default_rng(5)
    tokens = rng.integers(0, 11, (B, P))
    dout = rng.standard_normal((B, P, 11)).astype(dtype)  # random upstream gradient
    out, cache = model.run_with_cache(tokens, incl_bwd=True, dout=dout)
    out_t, cache_t = twin.run_with_cache(torch.from_numpy(tokens), incl_bwd=True, dout=dout)
    expected = expected_hooks(model.cfg)
    names = list(expected) + [name + "_grad" for name in expected if name not in NO_GRADIENT]
    assert set(cache.keys()) == set(names)
    assert set(cache_t.keys()) == set(names)
    for name in expected:
        assert cache[name].shape == expected[name], name
        assert tuple(cache_t[name].shape) == expected[name], name
        if name not in NO_GRADIENT:
            assert cache[name + "_grad"].shape == expected[name], name
    errors = {name: parity(name, cache[name], cache_t[name], dtype) for name in names}
    assert max(errors.values()) <= TOL[dtype]
    # the gradient at the residual stream's end is what the unembedding sends back (a hand check)
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post_grad"
    if norm is None:
        W_U = model.unembed.W_U.data
        assert rel_err(cache[last], dout @ W_U.T) <= TOL[dtype]


def test_default_gradient_is_the_next_token_loss():
    """incl_bwd without dout differentiates the mean next-token cross-entropy, as torch computes
    it."""
    model, twin = twins(make_cfg(BASE), seed=1)
    tokens = np.random.default_rng(0).integers(0, 11, (B, P))
    _, cache = model.run_with_cache(tokens, incl_bwd=True)
    twin.zero_grad()
    _, cache_t = twin.run_with_cache(torch.from_numpy(tokens), names_filter="hook_embed")
    logits = twin(torch.from_numpy(tokens))
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, 11), torch.from_numpy(tokens[:, 1:]).reshape(-1)
    )
    loss.backward()
    # d loss / d W_E from torch's own fused loss equals the NumPy model's accumulated W_E gradient
    assert rel_err(model.embed.W_E.grad, twin.embed.W_E.grad) <= 1e-12
    assert cache["embed_grad"].shape == (B, P, 12)


def test_short_names_reach_the_same_entries():
    model, _ = twins(make_cfg(BASE), seed=1)
    _, cache = model.run_with_cache(np.zeros((1, 4), dtype=np.int64), incl_bwd=True)
    same = {
        ("pattern", 1): "blocks.1.attn.hook_pattern",
        ("attn", 1): "blocks.1.attn.hook_pattern",
        ("resid_pre", 0): "blocks.0.hook_resid_pre",
        ("q", 0, "attn"): "blocks.0.attn.hook_q",
        ("scale", 1, "ln2"): "blocks.1.ln2.hook_scale",
        ("normalized", 0, "ln1"): "blocks.0.ln1.hook_normalized",
        ("post", 1): "blocks.1.mlp.hook_post",
        ("resid_post", -1): "blocks.1.hook_resid_post",
        ("pattern_grad", -1): "blocks.1.attn.hook_pattern_grad",
        "embed": "hook_embed",
        "scale": "ln_final.hook_scale",
        "blocks.0.attn.hook_z": "blocks.0.attn.hook_z",
    }
    for key, full in same.items():
        assert cache[key] is cache[full], key
        assert key in cache
    assert hook_name("k", 3, "a") == "blocks.3.attn.hook_k"
    assert hook_name("mlp_out", 2) == "blocks.2.hook_mlp_out"


def test_names_filter():
    model, twin = twins(make_cfg(BASE), seed=1)
    tokens = np.zeros((1, 4), dtype=np.int64)
    for m in (model, twin):
        # an alias brings its point's own name along, as TransformerLens 4's bridge caches it
        _, cache = m.run_with_cache(tokens, names_filter="blocks.0.attn.hook_q")
        assert list(cache.keys()) == ["blocks.0.attn.q.hook_out", "blocks.0.attn.hook_q"]
        _, cache = m.run_with_cache(tokens, names_filter=["blocks.0.attn.q.hook_out", "scale"])
        assert list(cache.keys()) == ["blocks.0.attn.q.hook_out", "ln_final.hook_scale"]
        _, cache = m.run_with_cache(tokens, names_filter=["hook_embed", "scale"])
        assert list(cache.keys()) == ["embed.hook_out", "hook_embed", "ln_final.hook_scale"]
        _, cache = m.run_with_cache(
            tokens, names_filter=lambda name: name.endswith("pattern"), incl_bwd=True
        )
        assert list(cache.keys()) == [
            f"blocks.{i}.attn.hook_pattern{g}" for g in ("", "_grad") for i in (0, 1)
        ]


def test_run_with_hooks_replaces_and_removes():
    model, twin = twins(make_cfg(BASE), seed=1)
    tokens = np.random.default_rng(1).integers(0, 11, (2, P))
    for m, tok in ((model, tokens), (twin, torch.from_numpy(tokens))):
        clean = to_numpy(m(tok))
        seen = []
        keep = lambda x, hook: None  # noqa: E731 - an outer hook that must survive
        m.hook_dict["hook_embed"].add_hook(keep)
        out = to_numpy(
            m.run_with_hooks(
                tok,
                fwd_hooks=[
                    ("blocks.1.hook_resid_post", lambda x, hook: x * 0),
                    (lambda name: name.endswith("hook_q"), lambda x, hook: seen.append(hook.name)),
                ],
            )
        )
        # resid_post of the last block is zero -> logits are ln_final's bias through W_U, plus b_U
        sd = {k: to_numpy(v) for k, v in m.state_dict().items()}
        expected = sd["ln_final.b"] @ sd["unembed.W_U"] + sd["unembed.b_U"]
        assert np.abs(out - expected).max() <= 1e-12
        # hook_q is an alias: the hook point's own name is q.hook_out
        assert seen == ["blocks.0.attn.q.hook_out", "blocks.1.attn.q.hook_out"]
        assert [handle.fn for handle in m.hook_dict["hook_embed"].fwd_hooks] == [keep]
        kept = m.hook_dict["hook_embed"]  # also embed.hook_out: one point, two names
        assert all(
            not p.fwd_hooks and not p.bwd_hooks for p in m.hook_dict.values() if p is not kept
        )
        m.hook_dict["hook_embed"].remove_hooks()
        assert np.array_equal(to_numpy(m(tok)), clean)

        def boom(x, hook):
            raise RuntimeError("hook failed")

        with pytest.raises(RuntimeError, match="hook failed"):
            m.run_with_hooks(tok, fwd_hooks=[("blocks.0.hook_attn_out", boom)])
        assert all(not p.fwd_hooks and not p.bwd_hooks for p in m.hook_dict.values())


def ablate_head(head):
    def hook(z, hook):
        z[:, :, head] = 0.0
        return z

    return hook


def test_edited_activation_changes_the_backward_alike_in_both():
    """Zero head 1's z in layer 0: the rule makes the ablated entries constants.

    Checked three ways: the twins agree on every activation gradient and every parameter
    gradient; nothing reaches head 1's v, pattern or W_V (they only feed the ablated z); and the
    NumPy parameter gradients match central finite differences of the hooked model's loss.
    """
    model, twin = twins(make_cfg(BASE), seed=1)
    rng = np.random.default_rng(2)
    tokens = rng.integers(0, 11, (B, P))
    dout = rng.standard_normal((B, P, 11))
    hooks = [("blocks.0.attn.hook_z", ablate_head(1))]
    model.zero_grad()
    twin.zero_grad()
    with model.hooks(hooks):
        _, cache = model.run_with_cache(tokens, incl_bwd=True, dout=dout)
    with twin.hooks(hooks):
        _, cache_t = twin.run_with_cache(torch.from_numpy(tokens), incl_bwd=True, dout=dout)
    assert np.all(cache["z", 0][:, :, 1] == 0)
    for name in cache.keys():
        parity(name, cache[name], cache_t[name], "float64")
    params_t = dict(twin.named_parameters())
    largest = max(float(np.abs(p.grad).max()) for _, p in model.named_parameters())
    for name, p in model.named_parameters():
        # b_K's exact gradient is zero (helpers.py)
        scale = largest if name.endswith("b_K") else None
        assert rel_err(p.grad, params_t[name].grad, scale) <= 1e-12, name
    for grads in (cache, cache_t):
        assert np.all(to_numpy(grads["v_grad", 0])[:, :, 1] == 0)
        assert np.all(to_numpy(grads["pattern_grad", 0])[:, 1] == 0)
        # the other heads still learn
        assert np.abs(to_numpy(grads["v_grad", 0])[:, :, 0]).max() > 1e-3
        # recorded w.r.t. the replacement
        assert np.abs(to_numpy(grads["z_grad", 0])[:, :, 1]).max() > 1e-3
    assert np.all(model.blocks[0].attn.W_V.grad[1] == 0)
    assert_finite_differences(model, tokens, dout, hooks, "blocks.0.attn.W_V")


def assert_finite_differences(model, tokens, dout, hooks, param_name, n_entries=4):
    """The NumPy gradient (hooks on) of sum(out * dout) against central differences, on a few
    entries."""
    model.zero_grad()
    model.run_with_hooks(tokens, fwd_hooks=hooks, dout=dout)
    param = dict(model.named_parameters())[param_name]
    rng = np.random.default_rng(0)
    for _ in range(n_entries):
        index = tuple(int(rng.integers(0, n)) for n in param.shape)
        original = param.data[index]
        values = []
        for step in (1e-6, -1e-6):
            param.data[index] = original + step
            values.append(float((model.run_with_hooks(tokens, fwd_hooks=hooks) * dout).sum()))
        param.data[index] = original
        numeric = (values[0] - values[1]) / 2e-6
        analytic = param.grad[index]
        assert abs(numeric - analytic) / max(abs(numeric) + abs(analytic), 1e-12) < 1e-6, (
            param_name,
            index,
        )


def set_key0_attention(x, hook):
    x[:, 0, :, 0] = 0.5  # head 0 gives half its attention to key 0 (rows no longer sum to 1)
    return x


def zero_some_neurons(x, hook):
    x[..., ::3] = 0.0
    return x


def set_scale(x, hook):
    x[:, 2] = 1.5
    return x


@pytest.mark.parametrize(
    "hook_point,fn,param_name",
    [
        ("blocks.0.attn.hook_pattern", set_key0_attention, "blocks.0.attn.W_Q"),
        ("blocks.1.attn.hook_pattern", set_key0_attention, "blocks.1.attn.W_K"),
        ("blocks.0.mlp.hook_post", zero_some_neurons, "blocks.0.mlp.W_in"),
        ("blocks.1.ln1.hook_scale", set_scale, "blocks.0.mlp.W_out"),
        (
            "blocks.0.attn.hook_attn_scores",
            lambda x, hook: (
                np.where(np.isfinite(x), 0.0, x)
                if isinstance(x, np.ndarray)
                else torch.where(torch.isfinite(x), 0.0, x)
            ),
            "blocks.0.attn.W_V",
        ),
    ],
)
def test_constant_edits_give_the_true_gradient_of_the_edited_model(hook_point, fn, param_name):
    """Overwriting entries with constants: the rule is then exact calculus, so the NumPy gradient
    matches finite differences of the hooked model, and the twin matches the NumPy gradient."""
    model, twin = twins(make_cfg(BASE), seed=1)
    rng = np.random.default_rng(8)
    tokens = rng.integers(0, 11, (B, P))
    dout = rng.standard_normal((B, P, 11))
    hooks = [(hook_point, fn)]
    assert_finite_differences(model, tokens, dout, hooks, param_name)
    twin.zero_grad()
    twin.run_with_hooks(torch.from_numpy(tokens), fwd_hooks=hooks, dout=dout)
    largest = max(float(np.abs(p.grad).max()) for _, p in model.named_parameters())
    for name, p in twin.named_parameters():
        # b_K's exact gradient is zero (helpers.py)
        scale = largest if name.endswith("b_K") else None
        assert rel_err(dict(model.named_parameters())[name].grad, p.grad, scale) <= 1e-12, name


def test_hook_that_depends_on_its_input_is_cut_in_both():
    """A hook returning 2 * pattern changes every unmasked entry: all are constants to the
    backward in both twins (autograd alone would pass 2 * the gradient)."""
    model, twin = twins(make_cfg(BASE), seed=1)
    tokens = np.random.default_rng(3).integers(0, 11, (B, P))
    dout = np.random.default_rng(4).standard_normal((B, P, 11))
    hooks = [("blocks.1.attn.hook_pattern", lambda x, hook: 2 * x)]
    with model.hooks(hooks):
        _, cache = model.run_with_cache(tokens, incl_bwd=True, dout=dout)
    with twin.hooks(hooks):
        _, cache_t = twin.run_with_cache(torch.from_numpy(tokens), incl_bwd=True, dout=dout)
    for grads in (cache, cache_t):
        assert np.all(to_numpy(grads["attn_scores_grad", 1]) == 0)
        assert np.abs(to_numpy(grads["pattern_grad", 1])).max() > 1e-3
    for name in cache.keys():
        parity(name, cache[name], cache_t[name], "float64")


def test_backward_hooks_edit_the_gradient_alike():
    """A backward hook that halves the gradient at resid_mid of layer 1 halves what reaches layer
    0."""
    model, twin = twins(make_cfg(BASE), seed=1)
    tokens = np.random.default_rng(6).integers(0, 11, (B, P))
    dout = np.random.default_rng(7).standard_normal((B, P, 11))
    grads = {}
    for tag, m, tok in (("np", model, tokens), ("torch", twin, torch.from_numpy(tokens))):
        for factor in (1.0, 0.5):
            m.zero_grad()
            m.run_with_hooks(
                tok,
                bwd_hooks=[("blocks.1.hook_resid_mid", lambda g, hook, f=factor: g * f)],
                dout=dout,
            )
            grads[tag, factor] = to_numpy(
                dict(m.named_parameters())["blocks.0.attn.W_Q"].grad
            ).copy()
    assert rel_err(grads["np", 0.5], 0.5 * grads["np", 1.0]) <= 1e-12
    assert rel_err(grads["np", 0.5], grads["torch", 0.5]) <= 1e-12


def test_bad_input_is_named():
    model, twin = twins(make_cfg(BASE), seed=1)
    tokens = np.zeros((1, 4), dtype=np.int64)
    for m in (model, twin):
        with pytest.raises(ValueError, match="fwd_hooks"):
            m.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_nothing", lambda x, hook: x)])
        with pytest.raises(TypeError, match="fwd_hooks"):
            m.run_with_hooks(tokens, fwd_hooks=[("hook_embed", "not a function")])
        with pytest.raises(TypeError, match="fwd_hooks"):
            m.run_with_hooks(tokens, fwd_hooks=("hook_embed", print))
        with pytest.raises(ValueError, match="returned shape"):
            m.run_with_hooks(tokens, fwd_hooks=[("hook_embed", lambda x, hook: x[:, :2])])
        assert all(not p.fwd_hooks for p in m.hook_dict.values())
        with pytest.raises(ValueError, match="names_filter"):
            m.run_with_cache(tokens, names_filter=["blocks.9.hook_resid_pre"])
        with pytest.raises(TypeError, match="names_filter"):
            m.run_with_cache(tokens, names_filter=3)
        with pytest.raises(ValueError, match="dout"):
            m.run_with_cache(tokens, incl_bwd=True, dout=np.zeros((1, 3, 11)))
        with pytest.raises(ValueError, match="tokens"):
            m.run_with_cache(np.full((1, 4), 99))
        _, cache = m.run_with_cache(tokens)
        with pytest.raises(KeyError):
            cache["pattern", 7]
        with pytest.raises(ValueError, match="needs a layer"):
            cache["pattern"]
        with pytest.raises(ValueError, match="incl_bwd"):
            cache["pattern_grad", 0]
        with pytest.raises(ValueError, match="ln1"):
            cache["scale", 0]
        with pytest.raises(TypeError):
            cache[3]
    encoder, _ = twins(make_cfg(BASE, unembed=False, causal=False), seed=1)
    with pytest.raises(ValueError, match="dout"):
        encoder.run_with_cache(tokens, incl_bwd=True)
    attn_only, _ = twins(make_cfg(BASE, attn_only=True), seed=1)
    _, cache = attn_only.run_with_cache(tokens)
    with pytest.raises(ValueError, match="no such hook"):
        cache["resid_mid", 0]


def test_backward_hooks_get_a_copy():
    """A backward hook that zeroes its gradient in place acts exactly like one that returns zeros,
    in both twins: the residual path, which shares the array, is not wiped with it."""
    model, twin = twins(CFG, seed=1)
    tokens = np.random.default_rng(2).integers(0, 11, (2, 6))
    dout = np.random.default_rng(3).standard_normal((2, 6, 11))

    def zero_in_place(grad, hook):
        grad[...] = 0

    def return_zeros(grad, hook):
        return grad * 0

    grads = {}
    for label, fn in (("in place", zero_in_place), ("returned", return_zeros)):
        for side, m in (("numpy", model), ("torch", twin)):
            m.zero_grad()
            m.run_with_hooks(
                tokens, bwd_hooks=[("blocks.1.hook_attn_out", fn), ("hook_embed", fn)], dout=dout
            )
            grads[label, side] = {n: to_numpy(p.grad).copy() for n, p in m.named_parameters()}
    reference = grads["returned", "numpy"]
    assert np.abs(reference["embed.W_E"]).max() == 0  # hook_embed's gradient was zeroed
    # ... but not the positional path beside it
    assert np.abs(reference["pos_embed.W_pos"]).max() > 0
    # b_K's exact gradient is 0: compare to the largest
    largest = max(np.abs(g).max() for g in reference.values())
    for key, result in grads.items():
        for name, grad in result.items():
            assert (
                rel_err(grad, reference[name], max(np.abs(reference[name]).max(), 1e-3 * largest))
                <= 1e-12
            ), (key, name)


HOOK_NAMES_BAD = [
    ((3,), TypeError, "hook name must be a str, got int"),
    (("k", 1.5), TypeError, "layer must be an int, got 1.5"),
    (("k", 0, 1), TypeError, "layer_type must be a str, got 1"),
    (("embed", 0), ValueError, "'embed' is not per layer"),
    (("k", 0, "mlp"), ValueError, "'k' lives in attn, not 'mlp'"),
    (("wings", 0), ValueError, "hook name 'wings' .*unknown short name"),
]


@pytest.mark.parametrize("arguments,error,message", HOOK_NAMES_BAD, ids=repr)
def test_hook_names_that_name_no_hook_are_refused_naming_the_part(arguments, error, message):
    with pytest.raises(error, match=message):
        hook_name(*arguments)


@pytest.mark.parametrize("side", SIDES)
def test_bad_hooks_caches_and_listings_are_refused_naming_the_argument(side):
    model = twins(make_cfg(BASE), seed=1)[SIDES.index(side)]
    tokens = np.zeros((2, 4), dtype=np.int64)
    with pytest.raises(TypeError, match="hook must be callable, got str"):
        model.hook_dict["hook_embed"].add_hook("not a function")
    with pytest.raises(
        TypeError, match=r"fwd_hooks must be a list \(or another iterable\) of .* pairs, got dict"
    ):
        model.run_with_hooks(tokens, fwd_hooks={"hook_embed": lambda x, hook: None})
    with warnings.catch_warnings():  # a bad bwd_hooks is refused, with no warning before
        warnings.simplefilter("error")
        with pytest.raises(
            TypeError,
            match=r"bwd_hooks must be a list \(or another iterable\) of .* pairs, got int",
        ):
            model.run_with_hooks(tokens, bwd_hooks=3)
    # a near miss: the closest names, not every hook point of the model
    with pytest.raises(ValueError, match=r"did you mean .*'blocks\.0\.hook_resid_pre'") as raised:
        model.run_with_hooks(tokens, fwd_hooks=[("hook_resid_pre", lambda x, hook: None)])
    assert "hook_embed" not in str(raised.value)
    seen = []  # any iterable of pairs, as TransformerLens takes: a generator too
    pairs = ((name, lambda x, hook: seen.append(hook.name)) for name in ["hook_embed"])
    model.run_with_hooks(tokens, fwd_hooks=pairs)
    assert seen == ["embed.hook_out"]  # hook_embed is its alias
    with pytest.raises(TypeError, match=r"fwd_hooks\[0\]: the hook name must be a str or a filter"):
        model.run_with_hooks(tokens, fwd_hooks=[(3, lambda x, hook: None)])
    with pytest.raises(TypeError, match="cache_dict must be a dict, got list"):
        type(model.run_with_cache(tokens)[1])([], model.cfg)
    with pytest.raises(TypeError, match="cache must be a dict, got list"):
        model.get_caching_hooks(cache=[])
    # caching hooks made with remove_batch_dim, run on a batch of 2
    _, fwd_hooks, _ = model.get_caching_hooks(names_filter="hook_embed", remove_batch_dim=True)
    with pytest.raises(ValueError, match="remove_batch_dim needs a batch of 1; embed.hook_out"):
        model.run_with_hooks(tokens, fwd_hooks=fwd_hooks)
    with pytest.raises(ValueError, match="tokens need at least 2 positions .* pass dout"):
        model.run_with_cache(tokens[:, :1], incl_bwd=True)
    model.add_hook("hook_embed", lambda x, hook: None)
    assert list(model.list_hooks("hook_embed")) == list(model.list_hooks(["hook_embed"]))
    assert list(model.list_hooks("hook_embed")) == ["hook_embed"]
    with pytest.raises(ValueError, match="dir must be 'fwd', 'bwd' or 'both', got 'up'"):
        model.list_hooks(dir="up")
    with pytest.raises(TypeError, match="name_filter must be None, a hook name, .* got 3"):
        model.list_hooks(name_filter=3)


def test_a_numpy_cache_does_not_move_its_model_and_torch_names_a_device_it_does_not_know():
    model, twin = twins(make_cfg(BASE), seed=1)
    tokens = np.zeros((1, 4), dtype=np.int64)
    _, cache = model.run_with_cache(tokens)
    with pytest.raises(ValueError, match="move_model=True.*the NumPy model does not move"):
        cache.to("cpu", move_model=True)
    with pytest.raises(RuntimeError, match="nowhere"):
        twin.run_with_cache(tokens, device="nowhere")
