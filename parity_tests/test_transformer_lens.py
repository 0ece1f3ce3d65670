"""TransformerLens's surface on both twins: weight views, FactoredMatrix, cache decompositions,
running, and its everyday ablation calls (hooks, get_act_name, Slice, sampling, folding), checked
against TransformerLens's meaning.

Sum rules are checked in float64 to 1e-12 relative to the largest entry of the tensor they
rebuild; twin agreement as in helpers.py (max |numpy - torch| / max |torch|, 1e-12 in float64).
Weights are random (LayerNorm w and every bias non-trivial), never all ones.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import numpy_impl as npi
import torch_impl as pti
from foundation.contract.config import TransformerConfig
from foundation.files.weights import parameter_count, parameter_shapes
from foundation.lens.cache import Slice
from foundation.lens.factored import FactoredMatrix
from foundation.lens.folding import fold_layer_norm_weights
from foundation.lens.hooks import get_act_name
from foundation.lens.running import sample_logits
from foundation.lens.vocab import WordVocabulary
from parity_tests.helpers import (
    SIDES,
    TOKENS,
    TOL,
    as_float64,
    make_cfg,
    outcome,
    randomize,
    rel_err,
    to_numpy,
    tokens_for,
    twins,
)

B, P = 3, 7
# make_cfg's changes for these tests
LENS = dict(d_vocab=13, d_head=5, d_mlp=16, n_layers=3, n_ctx=10)
SUM_TOL = 1e-12  # float64: a sum rebuilt from its parts differs only by rounding


CONFIGS = {
    "pre": {},
    "pre-attn-only-sinusoidal": dict(attn_only=True, positional="sinusoidal"),
    "no-norm-relu": dict(normalization=None, act_fn="relu"),
}


# --- every hook holds what TransformerLens's hook of the same name holds ---


def _layer_norm(x, w, b):
    """TransformerLens 2.18's LayerNorm: hook_scale = sqrt(var + eps), hook_normalized = centred /
    scale * w + b."""
    centered = x - x.mean(-1, keepdims=True)
    scale = np.sqrt((centered**2).mean(-1, keepdims=True) + 1e-5)
    return scale, centered / scale * w + b


@pytest.mark.parametrize("act_fn", ["gelu_new", "relu", "gelu"])
def test_every_hook_holds_what_transformer_lens_defines(act_fn):
    """Each hook rebuilt from its definition in TransformerLens's components (and the weights), to
    1e-12."""
    model, twin = twins(make_cfg(LENS, act_fn=act_fn), seed=1)
    cfg, sd = model.cfg, model.state_dict()
    tokens = tokens_for(cfg)
    for m in (model, twin):
        out, cache = m.run_with_cache(tokens)
        c = {name: to_numpy(value) for name, value in cache.items()}
        expected = {
            "hook_embed": sd["embed.W_E"][tokens],
            "hook_pos_embed": np.broadcast_to(sd["pos_embed.W_pos"][:P], (B, P, cfg.d_model)),
        }
        resid = expected["hook_embed"] + expected["hook_pos_embed"]
        for i in range(cfg.n_layers):
            pre = f"blocks.{i}."
            w = lambda name: sd[pre + name]  # noqa: E731
            expected[pre + "hook_resid_pre"] = resid
            scale, x = _layer_norm(resid, w("ln1.w"), w("ln1.b"))
            expected[pre + "ln1.hook_scale"], expected[pre + "ln1.hook_normalized"] = scale, x
            q, k, v = (
                np.einsum("bpm,hmd->bphd", x, w(f"attn.W_{n}")) + w(f"attn.b_{n}") for n in "QKV"
            )
            scores = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(cfg.d_head)
            # masked before the hook
            scores = np.where(np.tril(np.ones((P, P), dtype=bool)), scores, -np.inf)
            pattern = np.exp(scores - scores.max(-1, keepdims=True))
            pattern /= pattern.sum(-1, keepdims=True)
            z = np.einsum("bhqk,bkhd->bqhd", pattern, v)
            attn_out = np.einsum("bphd,hdm->bpm", z, w("attn.W_O")) + w("attn.b_O")  # b_O included
            for name, value in (
                ("q", q),
                ("k", k),
                ("v", v),
                ("attn_scores", scores),
                ("pattern", pattern),
                ("z", z),
            ):
                expected[pre + "attn.hook_" + name] = value
            expected[pre + "hook_attn_out"] = attn_out
            resid = resid + attn_out
            expected[pre + "hook_resid_mid"] = resid
            scale, x = _layer_norm(resid, w("ln2.w"), w("ln2.b"))
            expected[pre + "ln2.hook_scale"], expected[pre + "ln2.hook_normalized"] = scale, x
            hidden = x @ w("mlp.W_in") + w("mlp.b_in")
            if act_fn == "relu":
                post = np.maximum(hidden, 0)
            # TransformerLens's "gelu" is torch.nn.functional.gelu, the exact one
            elif act_fn == "gelu":
                post = F.gelu(torch.from_numpy(hidden)).numpy()
            else:
                post = (
                    0.5
                    * hidden
                    * (1 + np.tanh(np.sqrt(2 / np.pi) * (hidden + 0.044715 * hidden**3)))
                )
            mlp_out = post @ w("mlp.W_out") + w("mlp.b_out")  # b_out included
            expected[pre + "mlp.hook_pre"], expected[pre + "mlp.hook_post"] = hidden, post
            expected[pre + "hook_mlp_out"] = mlp_out
            resid = resid + mlp_out
            expected[pre + "hook_resid_post"] = resid
        scale, x = _layer_norm(resid, sd["ln_final.w"], sd["ln_final.b"])
        expected["ln_final.hook_scale"], expected["ln_final.hook_normalized"] = scale, x
        # TransformerLens 2.18's names and meanings; its hook_normalized (after w and b) is the
        # LayerNorm's hook_out in TransformerLens 4 and here, where hook_normalized is (x - mean) /
        # scale, before them
        renamed = {name: name.replace("hook_normalized", "hook_out") for name in expected}
        assert set(renamed.values()) <= set(c), (
            "the model lacks some of TransformerLens 2.18's hooks"
        )
        for name, value in expected.items():
            mine = c[renamed[name]]
            finite = np.isfinite(value)
            assert np.array_equal(finite, np.isfinite(mine)), name  # -inf exactly where the mask is
            assert rel_err(np.where(finite, mine, 0), np.where(finite, value, 0)) < SUM_TOL, name
            if name.endswith("hook_normalized"):  # TransformerLens 4's: before w and b
                ln = name[: -len("hook_normalized")]
                rebuilt = c[name] * sd[ln + "w"] + sd[ln + "b"]
                assert rel_err(rebuilt, value) < SUM_TOL, name
        assert rel_err(out, x @ sd["unembed.W_U"] + sd["unembed.b_U"]) < SUM_TOL


# --- weight views ---

VIEW_SHAPES = {  # name -> (state_dict key pattern, shape), written out from TransformerLens's docs
    "W_Q": ("attn.W_Q", ("L", "H", "D", "d")),
    "W_K": ("attn.W_K", ("L", "H", "D", "d")),
    "W_V": ("attn.W_V", ("L", "H", "D", "d")),
    "W_O": ("attn.W_O", ("L", "H", "d", "D")),
    "b_Q": ("attn.b_Q", ("L", "H", "d")),
    "b_K": ("attn.b_K", ("L", "H", "d")),
    "b_V": ("attn.b_V", ("L", "H", "d")),
    "b_O": ("attn.b_O", ("L", "D")),
    "W_in": ("mlp.W_in", ("L", "D", "M")),
    "W_out": ("mlp.W_out", ("L", "M", "D")),
    "b_in": ("mlp.b_in", ("L", "M")),
    "b_out": ("mlp.b_out", ("L", "D")),
}


def test_weight_views_stack_the_parameters_in_both_twins():
    model, twin = twins(make_cfg(LENS), seed=1)
    cfg = model.cfg
    sizes = {"L": cfg.n_layers, "H": cfg.n_heads, "D": cfg.d_model, "d": cfg.d_head, "M": cfg.d_mlp}
    sd = model.state_dict()
    for name, (key, shape) in VIEW_SHAPES.items():
        expected = np.stack([sd[f"blocks.{i}.{key}"] for i in range(cfg.n_layers)])
        assert expected.shape == tuple(sizes[s] for s in shape), name
        assert np.array_equal(getattr(model, name), expected), name
        assert np.array_equal(to_numpy(getattr(twin, name)), expected), name
    for name, key in (
        ("W_E", "embed.W_E"),
        ("W_pos", "pos_embed.W_pos"),
        ("W_U", "unembed.W_U"),
        ("b_U", "unembed.b_U"),
    ):
        assert np.array_equal(getattr(model, name), sd[key]) and np.array_equal(
            to_numpy(getattr(twin, name)), sd[key]
        )


def test_torch_weight_views_carry_gradients():
    _, twin = twins(make_cfg(LENS), seed=1)
    (twin.W_Q[1, 2] ** 2).sum().backward()
    grad = twin.blocks[1].attn.W_Q.grad
    assert grad is not None and rel_err(grad[2], 2 * twin.blocks[1].attn.W_Q[2]) == 0.0
    assert float(grad[:2].abs().max()) == 0.0


def test_weight_views_without_the_part_refuse_clearly():
    model, twin = twins(make_cfg(LENS, attn_only=True, positional="sinusoidal"), seed=1)
    with pytest.raises(AttributeError, match="attention-only"):
        _ = model.W_in
    assert np.array_equal(model.W_pos, model.pos_embed.table)  # the fixed table the model adds
    assert np.array_equal(to_numpy(twin.W_pos), model.pos_embed.table)


# --- FactoredMatrix ---


def test_factored_matrix_matches_its_product():
    model, twin = twins(make_cfg(LENS), seed=1)
    for fm in (model.OV, model.QK, twin.OV, twin.QK):
        AB = to_numpy(fm.AB)  # [layer, head, d_model, d_model]
        assert fm.shape == AB.shape == (3, 3, 12, 12)
        U, S, Vh = (to_numpy(x) for x in fm.svd())
        assert U.shape == (3, 3, 12, 5) and S.shape == (3, 3, 5) and Vh.shape == (3, 3, 12, 5)
        assert rel_err(U * S[..., None, :] @ Vh.swapaxes(-1, -2), AB) < SUM_TOL
        assert rel_err(S, np.linalg.svd(AB, compute_uv=False)[..., :5]) < SUM_TOL
        assert rel_err(to_numpy(fm.norm()), np.linalg.norm(AB, axis=(-2, -1))) < SUM_TOL
        assert rel_err(to_numpy(fm.T.AB), AB.swapaxes(-1, -2)) < SUM_TOL
        assert rel_err(to_numpy(fm.BA), to_numpy(fm.B) @ to_numpy(fm.A)) < SUM_TOL
        # the eigenvalues of BA are the nonzero eigenvalues of AB (largest 5 in size)
        eig_ab = np.linalg.eigvals(AB[1, 2])
        eig_ab = eig_ab[np.argsort(-np.abs(eig_ab))][:5]
        eig_ba = to_numpy(fm.eigenvalues)[1, 2]
        assert (
            np.abs(np.sort_complex(eig_ab) - np.sort_complex(eig_ba)).max() / np.abs(eig_ab).max()
            < 1e-10
        )
    assert rel_err(twin.OV.S, model.OV.S) < TOL["float64"]
    assert rel_err(twin.QK.AB, model.QK.AB) < TOL["float64"]


def test_factored_matrix_products_and_indexing():
    rng = np.random.default_rng(0)
    A, B, C = rng.standard_normal((4, 2)), rng.standard_normal((2, 5)), rng.standard_normal((5, 3))
    fm = FactoredMatrix(A, B)
    assert isinstance(fm @ C, FactoredMatrix) and rel_err((fm @ C).AB, A @ B @ C) < SUM_TOL
    assert rel_err(fm @ C[:, 0], A @ B @ C[:, 0]) < SUM_TOL  # a vector gives a vector
    D = rng.standard_normal((3, 4))
    assert rel_err((D @ fm).AB, D @ A @ B) < SUM_TOL and rel_err(D[0] @ fm, D[0] @ A @ B) < SUM_TOL
    assert rel_err((fm @ FactoredMatrix(B.T, A.T)).AB, A @ B @ B.T @ A.T) < SUM_TOL
    assert rel_err((2.5 * fm).AB, 2.5 * A @ B) == 0.0
    model, _ = twins(make_cfg(LENS), seed=1)
    assert rel_err(model.OV[1, 2].AB, model.W_V[1, 2] @ model.W_O[1, 2]) == 0.0
    with pytest.raises(ValueError, match="mdim"):
        FactoredMatrix(A, C)
    with pytest.raises(ValueError, match="square"):
        _ = fm.BA
    with pytest.raises(IndexError, match="leading"):
        model.OV[1, 2, 3]


# --- the cache: sum rules ---


def caches(name, **extra):
    model, twin = twins(make_cfg(LENS, **{**CONFIGS[name], **extra}), seed=1)
    tokens = tokens_for(model.cfg)
    out, cache = model.run_with_cache(tokens)
    out_t, cache_t = twin.run_with_cache(tokens)
    return model, twin, tokens, (out, cache), (out_t, cache_t)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_decompositions_add_up_to_the_residual_stream(name):
    model, twin, tokens, (out, cache), (out_t, cache_t) = caches(name)
    n = model.cfg.n_layers
    worst = 0.0
    for c in (cache, cache_t):
        for layer in range(n + 1):
            resid = c["resid_pre", layer] if layer < n else c["resid_post", n - 1]
            for pieces in (
                c.decompose_resid(layer),
                c.stack_head_results(layer, incl_remainder=True),
            ):
                err = rel_err(pieces.sum(0), resid)
                worst = max(worst, err)
                assert err < SUM_TOL, (name, layer, err)
            if layer < n and not model.cfg.attn_only:  # the MLP's input
                err = rel_err(
                    c.decompose_resid(layer, mlp_input=True).sum(0), c["resid_mid", layer]
                )
                assert err < SUM_TOL, (name, layer, "mlp_input", err)
        accumulated = c.accumulated_resid()
        assert accumulated.shape == (n + 1, B, P, model.cfg.d_model)
        # the last one is the final stream
        assert rel_err(accumulated[-1], c["resid_post", n - 1]) == 0.0
    print(f"{name}: worst decomposition sum error {worst:.1e}")


@pytest.mark.parametrize("name", ["pre", "pre-attn-only-sinusoidal"])
def test_apply_ln_to_stack_is_the_layernorm_with_its_cached_scale(name):
    model, twin, tokens, (out, cache), (out_t, cache_t) = caches(name)
    n = model.cfg.n_layers
    for layer in range(n + 1):
        ln = twin.blocks[layer].ln1 if layer < n else twin.ln_final
        resid = cache["resid_pre", layer] if layer < n else cache["resid_post", n - 1]
        # the twin's own LayerNorm on the whole stream
        expected = to_numpy(ln(torch.from_numpy(resid)))
        for c in (cache, cache_t):
            normalized = to_numpy(c.apply_ln_to_stack(c.decompose_resid(layer), layer)).sum(0)
            rebuilt = normalized * to_numpy(ln.w) + to_numpy(ln.b)
            assert rel_err(rebuilt, expected) < SUM_TOL, (name, layer)


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("shape", ["int", "batch", "batch_pos"])
def test_logit_attributions_add_up_to_the_logit_difference(name, shape):
    model, twin, tokens, (out, cache), (out_t, cache_t) = caches(name)
    rng = np.random.default_rng(5)
    right = {"int": 4, "batch": rng.integers(0, 13, B), "batch_pos": rng.integers(0, 13, (B, P))}[
        shape
    ]
    wrong = {"int": 9, "batch": rng.integers(0, 13, B), "batch_pos": rng.integers(0, 13, (B, P))}[
        shape
    ]
    # [batch, pos]
    r = np.broadcast_to(np.asarray(right)[..., None] if shape == "batch" else right, (B, P))
    w = np.broadcast_to(np.asarray(wrong)[..., None] if shape == "batch" else wrong, (B, P))
    logit_diff = (
        np.take_along_axis(out, r[..., None], -1)[..., 0]
        - np.take_along_axis(out, w[..., None], -1)[..., 0]
    )
    direction = model.W_U.T[r] - model.W_U.T[w]  # [batch, pos, d_model]
    constant = model.b_U[r] - model.b_U[w]  # [batch, pos]
    if model.cfg.normalization == "pre":
        constant = constant + direction @ model.ln_final.b.data
    results = []
    for c in (cache, cache_t):
        for stack in (c.decompose_resid(), c.stack_head_results(incl_remainder=True)):
            # [component, batch, pos]
            attrs = to_numpy(c.logit_attrs(stack, right, incorrect_tokens=wrong))
            assert attrs.shape == (len(stack), B, P)
            assert rel_err(attrs.sum(0) + constant, logit_diff) < SUM_TOL, (name, shape)
            results.append(attrs)
    assert (
        rel_err(results[2], results[0]) < TOL["float64"]
        and rel_err(results[3], results[1]) < TOL["float64"]
    )


def test_logit_lens_last_layer_gives_the_logits():
    model, twin, tokens, (out, cache), (out_t, cache_t) = caches("pre")
    for c, o in ((cache, out), (cache_t, out_t)):
        lens = to_numpy(c.accumulated_resid(apply_ln=True))  # [layer + 1, batch, pos, d_model]
        assert rel_err(lens[-1] @ model.W_U + model.b_U, to_numpy(o)) < SUM_TOL
        # the LayerNorm's output
        assert rel_err(lens[-1], to_numpy(c["ln_final.hook_out"])) < SUM_TOL
    assert (
        rel_err(cache_t.accumulated_resid(apply_ln=True), cache.accumulated_resid(apply_ln=True))
        < TOL["float64"]
    )
    # the logit lens leaves the NumPy model's own ln_final ready for a backward pass of the last run
    model.zero_grad()
    model.backward(np.random.default_rng(3).standard_normal(out.shape))


def test_twins_agree_on_every_cache_method():
    model, twin, tokens, (out, cache), (out_t, cache_t) = caches("pre")
    pairs = {
        "accumulated_resid(incl_mid)": lambda c: c.accumulated_resid(
            2, incl_mid=True, apply_ln=True
        ),
        "accumulated_resid(mlp_input)": lambda c: c.accumulated_resid(
            1, mlp_input=True, apply_ln=True
        ),
        "decompose_resid(attn, ln)": lambda c: c.decompose_resid(2, mode="attn", apply_ln=True),
        "decompose_resid(mlp)": lambda c: c.decompose_resid(mode="mlp", incl_embeds=False),
        "stack_head_results(ln)": lambda c: c.stack_head_results(2, apply_ln=True),
        "stack_activation(pattern)": lambda c: c.stack_activation("pattern"),
        "stack_activation(scale, ln2)": lambda c: c.stack_activation("scale", 2, "ln2"),
    }
    for name, fn in pairs.items():
        assert rel_err(fn(cache_t), fn(cache)) < TOL["float64"], name
    _, labels = cache.accumulated_resid(incl_mid=True, return_labels=True)
    assert labels == ["0_pre", "0_mid", "1_pre", "1_mid", "2_pre", "2_mid", "final_post"]
    _, labels = cache.stack_head_results(1, return_labels=True, incl_remainder=True)
    assert labels == ["L0H0", "L0H1", "L0H2", "remainder"]
    assert cache.stack_activation("pattern").shape == (3, B, 3, P, P)
    assert cache.stack_head_results(0).shape == (0, B, P, 12)


def test_remove_batch_dim_keeps_the_sum_rules():
    model, twin = twins(make_cfg(LENS), seed=1)
    tokens = tokens_for(model.cfg, batch=1)
    out, cache = model.run_with_cache(tokens)
    _, cache_t = twin.run_with_cache(tokens)
    for c in (cache.remove_batch_dim(), cache_t.remove_batch_dim()):
        assert c["resid_pre", 0].shape == (P, 12) and not c.has_batch_dim
        assert rel_err(c.decompose_resid().sum(0), c["resid_post", -1]) < SUM_TOL
        attrs = to_numpy(c.logit_attrs(c.decompose_resid(), tokens[0]))  # [component, pos]
        direction = model.W_U.T[tokens[0]]  # [pos, d_model]
        constant = model.b_U[tokens[0]] + direction @ model.ln_final.b.data
        assert (
            rel_err(
                attrs.sum(0) + constant, np.take_along_axis(out[0], tokens[0][:, None], -1)[:, 0]
            )
            < SUM_TOL
        )
    _, big = model.run_with_cache(tokens_for(model.cfg))
    with pytest.raises(ValueError, match="batch size 1"):
        big.remove_batch_dim()


def test_cache_methods_refuse_what_they_cannot_do():
    model, twin = twins(make_cfg(LENS, normalization="post"), seed=1)
    _, cache = model.run_with_cache(tokens_for(model.cfg))
    for call in (
        lambda: cache.decompose_resid(),
        lambda: cache.stack_head_results(),
        lambda: cache.apply_ln_to_stack(cache.accumulated_resid()),
    ):
        with pytest.raises(ValueError, match="post-norm"):
            call()
    model, _ = twins(make_cfg(LENS), seed=1)
    _, cache = model.run_with_cache(tokens_for(model.cfg))
    with pytest.raises(ValueError, match="layer"):
        cache.decompose_resid(7)
    with pytest.raises(ValueError, match="mode"):
        cache.decompose_resid(mode="heads")
    with pytest.raises(ValueError, match="d_vocab"):
        cache.logit_attrs(cache.decompose_resid(), 13)
    with pytest.raises(ValueError, match="same shape"):
        cache.logit_attrs(cache.decompose_resid(), [1, 2, 3], incorrect_tokens=4)


@pytest.mark.parametrize("side", SIDES)
def test_cache_methods_refuse_bad_arguments_naming_them(side):
    model = twins(make_cfg(LENS), seed=1)[SIDES.index(side)]
    cache = _cache(model, TOKENS)
    stack = cache.accumulated_resid()  # [component, batch, pos, d_model]
    last = model.cfg.n_layers
    with pytest.raises(TypeError, match="layer must be an int or None, got 1.5"):
        cache.accumulated_resid(layer=1.5)
    with pytest.raises(ValueError, match="mlp_input=True needs a layer below n_layers"):
        cache.accumulated_resid(layer=last, mlp_input=True)
    with pytest.raises(ValueError, match="mlp_input=True needs a layer below n_layers"):
        cache.decompose_resid(layer=last, mlp_input=True)
    with pytest.raises(ValueError, match="mlp_input=True needs a layer below n_layers"):
        cache.apply_ln_to_stack(stack, layer=last, mlp_input=True)
    with pytest.raises(ValueError, match="stack_activation needs layer >= 1"):
        cache.stack_activation("pattern", layer=0)
    with pytest.raises(ValueError, match=r"residual_stack must have shape \[component, ..., d_m"):
        cache.apply_ln_to_stack(stack[..., :-1])
    with pytest.raises(ValueError, match=r"residual_stack must have shape \[..., batch, pos, d_m"):
        cache.logit_attrs(stack[:, :, :3], 1)
    by_hand = type(cache)(cache.cache_dict, model.cfg, model=model)  # no tokens: the stack says
    with pytest.raises(ValueError, match=r"residual_stack must have shape \[..., batch, pos, d_m"):
        by_hand.logit_attrs(stack[..., :-1], 1)
    without_model = type(cache)(cache.cache_dict, model.cfg)
    with pytest.raises(ValueError, match="stack_head_results needs the model's weights.*model="):
        without_model.stack_head_results()
    _, empty = model.run_with_cache(TOKENS, names_filter=[])
    with pytest.raises(ValueError, match="the cache is empty .names_filter kept no hook"):
        empty.stack_head_results(layer=0)
    single = _cache(model, TOKENS[:1], remove_batch_dim=True)
    assert single.remove_batch_dim() is single  # no batch axis left to remove
    with pytest.raises(ValueError, match="apply_slice_to_batch_dim: this cache has no batch axis"):
        single.apply_slice_to_batch_dim(0)
    encoder = twins(make_cfg(LENS, unembed=False), seed=1)[SIDES.index(side)]
    _, cache = encoder.run_with_cache(TOKENS)
    with pytest.raises(ValueError, match="logit_attrs needs .* an unembedding .cfg.unembed=True"):
        cache.logit_attrs(cache.accumulated_resid(), 1)


# --- running: return_type, generate, the vocabulary ---


def test_return_type_gives_the_next_token_loss():
    model, twin = twins(make_cfg(LENS), seed=1)
    tokens = tokens_for(model.cfg)
    logits = model(tokens)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -np.take_along_axis(log_probs[:, :-1], tokens[:, 1:, None], -1).mean()
    for m in (model, twin):
        assert rel_err(m(tokens, return_type="loss"), expected) < SUM_TOL
        both_logits, both_loss = m(tokens, return_type="both")
        assert (
            rel_err(both_logits, logits) < TOL["float64"] and rel_err(both_loss, expected) < SUM_TOL
        )
        assert m(tokens, return_type=None) is None
        with pytest.raises(ValueError, match="return_type"):
            m(tokens, return_type="probs")
    twin_loss = twin(tokens, return_type="loss")
    twin_loss.backward()
    # the loss's gradient reaches the first layer
    assert twin.blocks[0].attn.W_Q.grad.abs().max() > 0


def test_generate_gives_the_same_tokens_in_both_twins():
    model, twin = twins(make_cfg(LENS), seed=1)
    prompt = tokens_for(model.cfg, pos=4)
    greedy = model.generate(prompt, max_new_tokens=6, do_sample=False, verbose=False)
    assert greedy.shape == (B, 10) and np.array_equal(greedy[:, :4], prompt)
    assert np.array_equal(
        to_numpy(twin.generate(prompt, max_new_tokens=6, do_sample=False, verbose=False)), greedy
    )
    # greedy is the argmax of the logits at every step
    assert np.array_equal(model(greedy)[:, 3:-1].argmax(-1), greedy[:, 4:])
    sampled = model.generate(prompt, 6, temperature=1.5, seed=11)
    assert np.array_equal(to_numpy(twin.generate(prompt, 6, temperature=1.5, seed=11)), sampled)
    assert np.array_equal(model.generate(prompt, 6, temperature=1.5, seed=11), sampled)
    assert not np.array_equal(model.generate(prompt, 6, temperature=1.5, seed=12), sampled)
    with pytest.raises(ValueError, match="n_ctx"):
        model.generate(prompt, 7)
    with pytest.raises(ValueError, match="temperature"):
        model.generate(prompt, 2, temperature=-1)


def test_word_vocabulary_drives_to_tokens_and_generate():
    words = [
        "<pad>",
        "the",
        "cat",
        "sat",
        "on",
        "mat",
        "a",
        "dog",
        "ran",
        "home",
        "<bos>",
        "up",
        "down",
    ]
    model, twin = twins(make_cfg(LENS), seed=1)
    for m in (model, twin):
        m.tokenizer = WordVocabulary(words)
        tokens = m.to_tokens("the cat sat on mat")
        assert to_numpy(tokens).tolist() == [[1, 2, 3, 4, 5]]
        assert m.to_str_tokens("the cat sat on mat") == ["the", "cat", "sat", "on", "mat"]
        assert m.to_str_tokens(tokens) == ["the", "cat", "sat", "on", "mat"]
        assert m.to_string(tokens[0]) == "the cat sat on mat"
        assert m.to_str_tokens("the cat", prepend_bos=False) == ["the", "cat"]
        assert m.to_single_token("cat") == 2
        _, cache = m.run_with_cache(tokens)
        stack = cache.accumulated_resid()
        assert (
            rel_err(
                as_float64(cache.logit_attrs(stack, "cat")), as_float64(cache.logit_attrs(stack, 2))
            )
            == 0
        )
        with pytest.raises(ValueError, match="'bird'"):
            m.to_tokens("the bird")
    assert model.generate("the cat", 3, do_sample=False) == twin.generate(
        "the cat", 3, do_sample=False
    )
    model.tokenizer = WordVocabulary(words, bos_token="<bos>")
    assert model.to_str_tokens("the cat") == ["<bos>", "the", "cat"]


@pytest.mark.parametrize("side", SIDES)
def test_running_refuses_bad_arguments_naming_them(side):
    model = twins(make_cfg(LENS), seed=1)[SIDES.index(side)]
    with pytest.raises(ValueError, match="to_tokens needs model.tokenizer"):
        model.to_tokens("the cat")
    model.tokenizer = WordVocabulary(["<pad>", "the", "cat", "sat"])
    with pytest.raises(TypeError, match="input must be a str or a non-empty list of str, got 3"):
        model.to_tokens(3)
    with pytest.raises(ValueError, match="prepend_bos=True, but model.tokenizer has no bos_token"):
        model.to_tokens("the cat", prepend_bos=True)
    with pytest.raises(ValueError, match="input texts must have the same number of words"):
        model.to_tokens(["the cat", "the"])
    with pytest.raises(ValueError, match="input has no words"):
        model.to_tokens("")
    with pytest.raises(ValueError, match=r"to_str_tokens takes one sequence: \[pos\] or \[1, pos"):
        model.to_str_tokens(TOKENS)
    with pytest.raises(ValueError, match="to_single_token: 'the cat' is 2 tokens, not one"):
        model.to_single_token("the cat")
    with pytest.raises(ValueError, match="return_type='loss': tokens need at least 2 positions"):
        model(TOKENS[:, :1], return_type="loss")
    with pytest.raises(ValueError, match="max_new_tokens must be a non-negative int, got -1"):
        model.generate(TOKENS, -1)
    with pytest.raises(ValueError, match=r"tokens must have shape \[batch, pos\], got \(1, 2, 4\)"):
        model.generate(TOKENS[None], 1)
    encoder = twins(make_cfg(LENS, unembed=False), seed=1)[SIDES.index(side)]
    with pytest.raises(ValueError, match="generate needs logits .cfg.unembed=True"):
        encoder.generate(TOKENS, 1)


# --- the torch twin moves like a module ---


def test_dtype_moves_keep_the_config_in_step():
    model, twin = twins(make_cfg(LENS), seed=1)
    tokens = tokens_for(model.cfg)
    expected = model(tokens)
    twin.float()
    assert twin.cfg.dtype == "float32" and all(
        m.cfg.dtype == "float32" for m in twin.modules() if hasattr(m, "cfg")
    )
    out = twin(tokens)
    assert out.dtype == torch.float32 and rel_err(out, expected) < TOL["float32"]
    twin.to(torch.float64)
    assert twin.cfg.dtype == "float64" and twin.blocks[1].mlp.W_in.dtype == torch.float64
    for refused in (
        lambda: twin.to(torch.complex128),
        lambda: twin.to("cpu", torch.float8_e4m3fn),
        lambda: twin.type(torch.int64),
    ):
        with pytest.raises(TypeError, match="float64, float32, float16, bfloat16"):
            refused()
    assert twin.cfg.dtype == "float64" and twin.embed.W_E.dtype == torch.float64  # nothing moved
    for move, dtype in ((twin.half, "float16"), (twin.bfloat16, "bfloat16")):
        move()  # a precision the twin computes in (docs/precision.md): the config follows
        assert twin.cfg.dtype == dtype and twin.blocks[1].mlp.W_in.dtype == getattr(torch, dtype)
        # float16: 11 significant bits, bfloat16: 8; the loose bound of test_precision.py
        assert rel_err(twin(tokens), expected) < {"float16": 1e-2, "bfloat16": 5e-2}[dtype]


def test_device_moves_take_everything_and_the_tokens():
    _, twin = twins(make_cfg(LENS, positional="sinusoidal"), seed=1)
    twin.to("meta")  # a device with no data: shows where tensors are without a GPU
    assert {t.device.type for t in [*twin.parameters(), *twin.buffers()]} == {"meta"}
    seen = []

    def stop(module, args):
        seen.append(args[0].device.type)
        raise KeyboardInterrupt  # stop before any arithmetic on meta tensors

    twin.embed.register_forward_pre_hook(stop)
    for tokens in ([[1, 2, 3]], np.array([[1, 2, 3]]), torch.tensor([[1, 2, 3]])):
        with pytest.raises(KeyboardInterrupt):
            twin(tokens)
    assert seen == ["meta"] * 3
    assert twin._native_tokens(np.array([[1, 2]])).device.type == "meta"


def test_the_shared_surface_imports_no_torch():
    """The TransformerLens surface is written once in foundation/, which imports NumPy only."""
    import subprocess
    import sys

    code = (
        "import sys, foundation.lens.cache, foundation.lens.factored, foundation.lens.running, "
        "foundation.lens.views, "
        "foundation.lens.vocab, numpy_impl; assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_interp_tour_finds_the_trained_model_in_its_out_folder(tmp_path):
    """`demo.py induction --out X` then `demo.py interp --out X` reads X/induction.npz."""
    import argparse

    from tours.interp import choose_model

    model, _ = twins(make_cfg(LENS), seed=1)
    model.save(tmp_path / "induction.npz")
    found, note, _ = choose_model(argparse.Namespace(model="auto", out=str(tmp_path), seed=0))
    assert str(tmp_path / "induction.npz") in note
    assert all(
        np.array_equal(a, b)
        for a, b in zip(found.state_dict().values(), model.state_dict().values())
    )
    _, note, _ = choose_model(argparse.Namespace(model="auto", out=str(tmp_path / "empty"), seed=0))
    assert "random" in note


# --- logit_attrs: the tokens it takes, checked against the cache ---


def _cache(model, tokens, remove_batch_dim=False):
    _, cache = model.run_with_cache(tokens)
    return cache.remove_batch_dim() if remove_batch_dim else cache


# (tokens the cache was run on, remove_batch_dim, tokens given to logit_attrs)
LOGIT_ATTR_TOKENS_BAD = {
    "batch 1, four 1-D tokens": (TOKENS[:1], False, np.array([1, 2, 3, 4])),
    "batch 2, three 1-D tokens": (TOKENS, False, np.array([1, 2, 3])),
    "batch 2, one 1-D token": (TOKENS, False, np.array([1])),
    "[batch, pos] of the wrong pos": (TOKENS, False, TOKENS[:, :3]),
    "[batch, pos] of the wrong batch": (TOKENS, False, TOKENS[:1]),
    "rank 3": (TOKENS, False, TOKENS[None]),
    "no batch axis, [pos] too long": (TOKENS[:1], True, np.array([1, 2, 3, 4, 5])),
    "no batch axis, [batch, pos]": (TOKENS[:1], True, TOKENS[:1]),
    "a list with a bool": (TOKENS, False, [1, True]),
    "a float": (TOKENS, False, 1.0),
}


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("case", sorted(LOGIT_ATTR_TOKENS_BAD))
def test_logit_attrs_checks_tokens_against_the_cache(side, case):
    model = twins()[SIDES.index(side)]
    run_on, no_batch, tokens = LOGIT_ATTR_TOKENS_BAD[case]
    cache = _cache(model, run_on, no_batch)
    stack = cache.accumulated_resid()
    kind, message = outcome(lambda: cache.logit_attrs(stack, tokens))
    assert kind in ("TypeError", "ValueError") and "tokens" in message and "\n" not in message, (
        kind,
        message,
    )
    kind, message = outcome(lambda: cache.logit_attrs(stack, 1, incorrect_tokens=tokens))
    assert kind in ("TypeError", "ValueError") and "tokens" in message, (kind, message)


@pytest.mark.parametrize("side", SIDES)
def test_logit_attrs_takes_the_forms_transformer_lens_takes(side):
    """int (every position), [batch] (one per sequence, every position), [batch, pos]; without a
    batch axis, [pos]."""
    model = twins()[SIDES.index(side)]
    cache = _cache(model, TOKENS)
    stack = cache.accumulated_resid()
    full = as_float64(cache.logit_attrs(stack, TOKENS))  # [component, batch, pos]
    assert full.shape == (3, 2, 4)
    per_sequence = as_float64(cache.logit_attrs(stack, np.array([3, 9])))
    assert (
        rel_err(per_sequence, as_float64(cache.logit_attrs(stack, np.array([[3] * 4, [9] * 4]))))
        == 0
    )
    one = as_float64(cache.logit_attrs(stack, np.int64(5)))
    assert rel_err(one, as_float64(cache.logit_attrs(stack, np.full((2, 4), 5)))) == 0
    single = _cache(model, TOKENS[:1], remove_batch_dim=True)
    # [component, pos]
    by_pos = as_float64(single.logit_attrs(single.accumulated_resid(), TOKENS[0]))
    assert rel_err(by_pos, full[:, 0]) <= 1e-12


# ================================================================ TransformerLens's everyday
# ablation calls
#
# TransformerLens is not installed here. What each call means in TransformerLens (2.x: its
# ``HookedTransformer.forward``, ``hook_points.py``, ``utils.get_act_name``, ``utils.Slice``,
# ``utils.sample_logits``, ``ActivationCache`` and ``fold_layer_norm``) is written out below
# independently of the code under test: ``tl_forward`` is TransformerLens's forward pass (with its
# hooks' edits) on a state dict, ``tl_fold`` its LayerNorm folding, and the tests state the rest
# next to their checks. Agreement to TL_TOL = 1e-12 unless a test says otherwise (the issue asked
# for 1e-10). Backward hooks are compared with torch's own autograd at the same hook point
# (``retain_grad`` on the hook point's output).

V = 13


B, P, V = 3, 7, 13


TL_TOL = 1e-12


HABITS = dict(d_vocab=V, d_head=5, d_mlp=16, n_ctx=10)  # make_cfg's changes for these tests


HABITS_CFG = make_cfg(HABITS)


def close(a, b, tol=TL_TOL):
    a, b = to_numpy(a), to_numpy(b)
    finite = np.isfinite(b)
    assert np.array_equal(finite, np.isfinite(a)), "-inf (masked) entries differ"
    err = rel_err(np.where(finite, a, 0), np.where(finite, b, 0))
    assert err <= tol, f"relative error {err:.2e} > {tol:.0e}"
    return err


def state(model):
    return {name: to_numpy(value).astype(np.float64) for name, value in model.state_dict().items()}


# --- TransformerLens's forward pass, written out from its components (pre-norm, learned positions)
# ---

ACT = {
    "relu": lambda x: np.maximum(x, 0),
    "gelu_new": lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3))),
    "gelu": lambda x: F.gelu(torch.from_numpy(x)).numpy(),
}  # TransformerLens's "gelu" is F.gelu


def tl_forward(sd, cfg, tokens, edits=None):
    """(logits, {hook name: activation}): HookedTransformer's forward; ``edits[name](x)`` replaces a
    hook's value.

    A LayerNorm with ``w`` in ``sd`` is TransformerLens's LayerNorm, one without is its
    LayerNormPre.
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
    resid = point("hook_embed", sd["embed.W_E"][tokens]) + point(
        "hook_pos_embed",
        np.broadcast_to(sd["pos_embed.W_pos"][:pos], (tokens.shape[0], pos, cfg.d_model)).copy(),
    )
    for i in range(cfg.n_layers):
        pre, w = f"blocks.{i}.", lambda name: sd[f"blocks.{i}.{name}"]  # noqa: E731
        resid = point(pre + "hook_resid_pre", resid)
        x = layer_norm(pre + "ln1.", resid)
        q, k, v = (
            point(
                pre + f"attn.hook_{n.lower()}",
                np.einsum("bpm,hmd->bphd", x, w(f"attn.W_{n}")) + w(f"attn.b_{n}"),
            )
            for n in "QKV"
        )
        scores = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(cfg.d_head)
        scores = point(
            pre + "attn.hook_attn_scores",
            np.where(np.tril(np.ones((pos, pos), bool)), scores, -np.inf),
        )
        pattern = np.exp(scores - scores.max(-1, keepdims=True))
        pattern = point(pre + "attn.hook_pattern", pattern / pattern.sum(-1, keepdims=True))
        z = point(pre + "attn.hook_z", np.einsum("bhqk,bkhd->bqhd", pattern, v))
        resid = resid + point(
            pre + "hook_attn_out", np.einsum("bphd,hdm->bpm", z, w("attn.W_O")) + w("attn.b_O")
        )
        resid = point(pre + "hook_resid_mid", resid)
        x = layer_norm(pre + "ln2.", resid)
        hidden = point(pre + "mlp.hook_pre", x @ w("mlp.W_in") + w("mlp.b_in"))
        post = point(pre + "mlp.hook_post", ACT[cfg.act_fn](hidden))
        mlp_out = point(pre + "hook_mlp_out", post @ w("mlp.W_out") + w("mlp.b_out"))
        resid = point(pre + "hook_resid_post", resid + mlp_out)
    x = layer_norm("ln_final.", resid)
    return x @ sd["unembed.W_U"] + sd["unembed.b_U"], acts


def tl_loss(logits, tokens, per_token=False):
    """TransformerLens's ``utils.lm_cross_entropy_loss``: -log p(tokens[:, 1:]); its mean unless
    per_token."""
    log_probs = (
        logits
        - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
        - logits.max(-1, keepdims=True)
    )
    # [batch, pos - 1]
    predicted = np.take_along_axis(log_probs[:, :-1], tokens[:, 1:, None], -1)[..., 0]
    return -predicted if per_token else -predicted.mean()


def zero_head(head):
    def hook(z, hook):
        z[:, :, head] = 0.0
        return z

    return hook


# --- run_with_hooks and run_with_cache take the forward's arguments ---


@pytest.mark.parametrize("act_fn", ["gelu_new", "gelu", "relu"])
def test_run_with_hooks_returns_the_ablated_loss(act_fn):
    """The most common ablation call: model.run_with_hooks(tokens, return_type="loss",
    fwd_hooks=[...])."""
    model, twin = twins(make_cfg(HABITS, act_fn=act_fn), seed=1)
    tokens = tokens_for(HABITS_CFG)
    sd = state(model)
    clean_logits, _ = tl_forward(sd, model.cfg, tokens)
    ablated_logits, _ = tl_forward(
        sd, model.cfg, tokens, {"blocks.1.attn.hook_z": lambda z: zero_head(2)(z, None)}
    )
    for m in (model, twin):
        loss = m.run_with_hooks(
            tokens, return_type="loss", fwd_hooks=[("blocks.1.attn.hook_z", zero_head(2))]
        )
        close(loss, tl_loss(ablated_logits, tokens))
        per_token = m.run_with_hooks(
            tokens,
            return_type="loss",
            loss_per_token=True,
            fwd_hooks=[(get_act_name("z", 1), zero_head(2))],
        )
        assert per_token.shape == (B, P - 1)
        close(per_token, tl_loss(ablated_logits, tokens, per_token=True))
        # the forward's arguments may be positional too, as model(tokens, "loss") takes them
        close(
            m.run_with_hooks(tokens, "loss", fwd_hooks=[("blocks.1.attn.hook_z", zero_head(2))]),
            loss,
        )
        logits, both_loss = m.run_with_hooks(
            tokens, return_type="both", fwd_hooks=[("z1", zero_head(2))]
        )
        close(logits, ablated_logits)
        close(both_loss, tl_loss(ablated_logits, tokens))
        close(m(tokens, return_type="loss"), tl_loss(clean_logits, tokens))  # the hooks are gone
        assert m.run_with_hooks(tokens, return_type=None, fwd_hooks=[("z1", zero_head(2))]) is None


def test_run_with_cache_takes_the_forwards_arguments():
    model, twin = twins(make_cfg(HABITS), seed=1)
    tokens = tokens_for(HABITS_CFG)
    logits, acts = tl_forward(state(model), model.cfg, tokens)
    for m in (model, twin):
        loss, cache = m.run_with_cache(tokens, return_type="loss")
        close(loss, tl_loss(logits, tokens))
        # TransformerLens 2.18's names, each holding 2.18's value; 4 adds more names, and its
        # LayerNorm's hook_out is 2.18's hook_normalized (after w and b)
        renamed = {name: name.replace("hook_normalized", "hook_out") for name in acts}
        assert set(renamed.values()) <= set(cache.keys())
        for name, value in acts.items():
            close(cache[renamed[name]], value)
        per_token, cache = m.run_with_cache(
            tokens, return_type="loss", loss_per_token=True, names_filter="pattern1"
        )
        close(per_token, tl_loss(logits, tokens, per_token=True))
        assert list(cache.keys()) == ["blocks.1.attn.hook_pattern"]
        out, plain = m.run_with_cache(
            tokens, return_cache_object=False, names_filter=lambda n: n.endswith("scale")
        )
        assert isinstance(plain, dict) and len(plain) == 5
        close(out, logits)


# --- backward hooks, as TransformerLens uses them ---


def autograd_at(twin, tokens, name, fwd_hooks=(), per_token_grad=None):
    """torch's own gradient of the loss at hook point ``name``: retain_grad on the point's
    output."""
    captured = []
    handle = twin.hook_dict[name].register_forward_hook(
        lambda module, args, out: captured.append(out)
    )
    twin.zero_grad()
    try:
        with twin.hooks(fwd_hooks):
            loss = twin(
                torch.from_numpy(tokens),
                return_type="loss",
                loss_per_token=per_token_grad is not None,
            )
        captured[0].retain_grad()
        loss.backward(None if per_token_grad is None else torch.from_numpy(per_token_grad))
    finally:
        handle.remove()
    return captured[0].grad.numpy().copy(), {
        n: p.grad.numpy().copy() for n, p in twin.named_parameters()
    }


@pytest.mark.parametrize(
    "name",
    [
        "blocks.0.hook_resid_pre",
        "blocks.1.attn.hook_pattern",
        "blocks.0.mlp.hook_post",
        "blocks.1.ln1.hook_scale",
        "hook_embed",
        "ln_final.hook_normalized",
    ],
)
def test_backward_hooks_fire_in_the_loss_backward(name):
    """run_with_hooks(..., return_type="loss", bwd_hooks=..., reset_hooks_end=False), then
    loss.backward() (torch) / model.backward() (NumPy), then reset_hooks(): each hook sees torch
    autograd's gradient there."""
    model, twin = twins(make_cfg(HABITS), seed=1)
    tokens = tokens_for(HABITS_CFG)
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
        # b_K's exact gradient is 0: measured against the largest (helpers.py)
        for pname, p in m.named_parameters():
            assert (
                rel_err(p.grad, expected_params[pname], largest if pname.endswith("b_K") else None)
                <= TL_TOL
            ), pname
        assert all(not p.bwd_hooks for p in m.hook_points())


def test_backward_hooks_with_an_ablation_and_a_per_token_loss():
    """A forward ablation and a backward hook together; loss_per_token with its gradient given."""
    model, twin = twins(make_cfg(HABITS, act_fn="gelu"), seed=1)
    tokens = tokens_for(HABITS_CFG, seed=5)
    dloss = np.random.default_rng(6).standard_normal((B, P - 1))
    ablate = [("blocks.0.attn.hook_z", zero_head(1))]
    name = "blocks.0.attn.hook_v"
    expected, _ = autograd_at(twin, tokens, name, ablate, per_token_grad=dloss)
    # head 1 feeds only the ablated z
    assert np.all(expected[:, :, 1] == 0) and np.abs(expected[:, :, 0]).max() > 1e-3
    for m in (model, twin):
        seen = []
        loss = m.run_with_hooks(
            tokens,
            return_type="loss",
            loss_per_token=True,
            fwd_hooks=ablate,
            bwd_hooks=[(name, lambda g, hook: seen.append(to_numpy(g)))],
            reset_hooks_end=False,
        )
        if m is model:
            m.backward(dloss)  # loss.backward(dloss)
        else:
            loss.backward(torch.from_numpy(dloss))
        m.reset_hooks()
        close(seen[0], expected)


def test_backward_hooks_removed_at_the_end_do_not_fire_and_warn():
    model, twin = twins(make_cfg(HABITS), seed=1)
    tokens = tokens_for(HABITS_CFG)
    for m in (model, twin):
        seen = []
        with pytest.warns(UserWarning, match="reset_hooks_end=False") as warned:
            loss = m.run_with_hooks(
                tokens,
                return_type="loss",
                bwd_hooks=[("hook_embed", lambda g, hook: seen.append(1))],
            )
        assert warned[0].filename == __file__  # the warning points at the caller's line
        model.backward() if m is model else loss.backward()
        assert seen == []


def test_a_backward_hook_that_returns_a_gradient_edits_what_flows_on():
    """Halving the gradient at resid_mid of layer 1 halves every gradient below it, alike in both
    twins."""
    model, twin = twins(make_cfg(HABITS), seed=1)
    tokens = tokens_for(HABITS_CFG, seed=3)
    grads = {}
    for m in (model, twin):
        for factor in (1.0, 0.5):
            m.zero_grad()
            loss = m.run_with_hooks(
                tokens,
                return_type="loss",
                reset_hooks_end=False,
                bwd_hooks=[("blocks.1.hook_resid_mid", lambda g, hook, f=factor: g * f)],
            )
            model.backward() if m is model else loss.backward()
            m.reset_hooks()
            grads[m is model, factor] = to_numpy(
                dict(m.named_parameters())["blocks.0.mlp.W_in"].grad
            ).copy()
    close(grads[True, 0.5], 0.5 * grads[True, 1.0])
    close(grads[True, 0.5], grads[False, 0.5])


def test_run_with_cache_incl_bwd_differentiates_the_returned_loss():
    model, twin = twins(make_cfg(HABITS), seed=1)
    tokens = tokens_for(HABITS_CFG, seed=4)
    expected = {
        name: autograd_at(twin, tokens, name)[0]
        for name in ("blocks.0.hook_resid_mid", "blocks.1.attn.hook_q", "ln_final.hook_scale")
    }
    for m in (model, twin):
        m.zero_grad()
        loss, cache = m.run_with_cache(tokens, return_type="loss", incl_bwd=True)
        for name, grad in expected.items():
            close(cache[name + "_grad"], grad)
    dloss = np.random.default_rng(1).standard_normal((B, P - 1))
    _, cache = model.run_with_cache(
        tokens, return_type="loss", loss_per_token=True, incl_bwd=True, dout=dloss
    )
    _, cache_t = twin.run_with_cache(
        tokens, return_type="loss", loss_per_token=True, incl_bwd=True, dout=dloss
    )
    close(
        cache["resid_pre_grad", 1],
        autograd_at(twin, tokens, "blocks.1.hook_resid_pre", per_token_grad=dloss)[0],
    )
    close(cache["resid_pre_grad", 1], cache_t["resid_pre_grad", 1])
    for m in (model, twin):
        with pytest.raises(ValueError, match="per token"):
            m.run_with_cache(tokens, return_type="loss", loss_per_token=True, incl_bwd=True)
        with pytest.raises(ValueError, match="return_type=None"):
            m.run_with_cache(tokens, return_type=None, incl_bwd=True)


# --- the NumPy model's backward() after a loss ---


def test_numpy_backward_without_dout_is_loss_backward():
    model, twin = twins(make_cfg(HABITS), seed=1)
    tokens = tokens_for(HABITS_CFG, seed=7)
    for return_type in ("loss", "both"):
        model.zero_grad()
        twin.zero_grad()
        model(tokens, return_type=return_type)
        model.backward()
        result = twin(tokens, return_type=return_type)
        (result[1] if return_type == "both" else result).backward()
        largest = max(float(p.grad.abs().max()) for p in twin.parameters())
        for (name, p), (_, q) in zip(model.named_parameters(), twin.named_parameters()):
            assert rel_err(p.grad, q.grad, largest if name.endswith("b_K") else None) <= TL_TOL, (
                name
            )
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
    """The issue's case: a hook put on a HookPoint directly stays on (TransformerLens too) until
    reset_hooks()."""
    model, twin = twins(make_cfg(HABITS), seed=1)
    tokens = tokens_for(HABITS_CFG)
    sd = state(model)
    clean = tl_loss(tl_forward(sd, model.cfg, tokens)[0], tokens)
    ablated = tl_loss(
        tl_forward(
            sd, model.cfg, tokens, {"blocks.1.attn.hook_z": lambda z: zero_head(0)(z, None)}
        )[0],
        tokens,
    )
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
    model, twin = twins(make_cfg(HABITS), seed=1)
    tokens = tokens_for(HABITS_CFG)
    for m in (model, twin):
        outer = []
        m.add_hook("hook_embed", lambda x, hook: outer.append(hook.name))
        with m.hooks(fwd_hooks=[("hook_pos_embed", lambda x, hook: None)]):
            assert len(m.hook_dict["hook_pos_embed"].fwd_hooks) == 1
            with m.hooks(
                fwd_hooks=[("hook_pos_embed", lambda x, hook: None)], reset_hooks_end=False
            ):
                pass
            # the inner block left its hook on
            assert len(m.hook_dict["hook_pos_embed"].fwd_hooks) == 2
        # the outer block took only its own
        assert len(m.hook_dict["hook_pos_embed"].fwd_hooks) == 1
        m(tokens)
        # hook_embed: an alias; hook.name is the point's own name
        assert outer == ["embed.hook_out"]
        m.reset_hooks()
        assert all(not p.fwd_hooks for p in m.hook_points())


def test_hook_points_know_their_name_layer_and_context():
    model, twin = twins(make_cfg(HABITS), seed=1)
    tokens = tokens_for(HABITS_CFG)
    for m in (model, twin):
        seen = {}

        def note(x, hook):
            seen[hook.name] = hook.layer()
            hook.ctx["calls"] = hook.ctx.get("calls", 0) + 1

        m.run_with_hooks(
            tokens, fwd_hooks=[(lambda n: n.endswith(("hook_z", "ln2.hook_scale")), note)]
        )
        # hook_z is an alias of o.hook_in: hook.name is the point's own name
        assert seen == {
            "blocks.0.attn.o.hook_in": 0,
            "blocks.0.ln2.hook_scale": 0,
            "blocks.1.attn.o.hook_in": 1,
            "blocks.1.ln2.hook_scale": 1,
        }
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
    model, twin = twins(make_cfg(HABITS), seed=1)
    for m in (model, twin):
        names = []

        def keyword_only(activation, *, hook):
            names.append(hook.name)

        m.run_with_hooks(tokens_for(HABITS_CFG), fwd_hooks=[("hook_embed", keyword_only)])
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
    model, _ = twins(make_cfg(HABITS), seed=1)
    _, cache = model.run_with_cache(tokens_for(HABITS_CFG))
    assert (
        cache["k1"] is cache["blocks.1.attn.hook_k"]
        and cache["scale0ln2"] is cache["blocks.0.ln2.hook_scale"]
    )


def test_bad_hook_calls_are_named():
    model, twin = twins(make_cfg(HABITS), seed=1)
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
            m.run_with_cache(tokens_for(HABITS_CFG), remove_batch_dim=True)
    with pytest.raises(ValueError, match="CPU"):
        model.run_with_cache(tokens_for(HABITS_CFG), device="cuda")


# --- the cache: pos_slice, batch_slice, remove_batch_dim, to ---

SLICES = [None, -1, (1, 5), slice(2, None, 2), [0, 3, 6], np.array([6, 1])]


def tl_slice(x, input_slice, dim):
    """TransformerLens's Slice(input_slice).apply(x, dim): an int drops the axis, a tuple is
    slice(*tuple)."""
    index = [slice(None)] * x.ndim
    index[dim] = (
        slice(*input_slice)
        if isinstance(input_slice, tuple)
        else slice(None)
        if input_slice is None
        else input_slice
    )
    return x[tuple(index)]


@pytest.mark.parametrize("pos_slice", SLICES, ids=repr)
def test_pos_slice_on_the_stacks(pos_slice):
    model, twin = twins(make_cfg(HABITS), seed=1)
    tokens = tokens_for(HABITS_CFG)
    _, cache = model.run_with_cache(tokens)
    _, cache_t = twin.run_with_cache(tokens)
    sd = state(model)
    for c in (cache, cache_t):
        # TransformerLens slices each stacked piece on its pos axis (-2; -3 for z) before stacking
        expected = np.stack(
            [
                tl_slice(
                    c["resid_pre", i].numpy()
                    if hasattr(c["resid_pre", i], "numpy")
                    else c["resid_pre", i],
                    pos_slice,
                    -2,
                )
                for i in range(2)
            ]
        )
        close(c.accumulated_resid(1, pos_slice=pos_slice), expected)
        parts = ["hook_embed", "hook_pos_embed", "blocks.0.hook_attn_out", "blocks.0.hook_mlp_out"]
        close(
            c.decompose_resid(1, pos_slice=pos_slice),
            np.stack([tl_slice(to_numpy(c[n]), pos_slice, -2) for n in parts]),
        )
        heads = c.stack_head_results(1, pos_slice=pos_slice)
        z = tl_slice(to_numpy(c["z", 0]), pos_slice, -3)
        close(heads, np.stack([z[..., h, :] @ sd["blocks.0.attn.W_O"][h] for h in range(3)]))
        # apply_ln: the stack's pos_slice picks the matching cached scales
        scale = tl_slice(to_numpy(c["blocks.1.ln1.hook_scale"]), pos_slice, -2)
        pieces = to_numpy(c.decompose_resid(1, pos_slice=pos_slice))
        close(
            c.decompose_resid(1, pos_slice=pos_slice, apply_ln=True),
            (pieces - pieces.mean(-1, keepdims=True)) / scale,
        )
    close(
        cache_t.decompose_resid(pos_slice=pos_slice, apply_ln=True),
        cache.decompose_resid(pos_slice=pos_slice, apply_ln=True),
    )


@pytest.mark.parametrize("batch_slice", [None, 1, (0, 2), [2, 0]], ids=repr)
def test_logit_attrs_with_pos_and_batch_slices(batch_slice):
    """TransformerLens's logit_attrs: batch_slice the stack (axis 1), centre it, divide by the
    cached ln_final scale (pos_slice, then batch_slice applied to it), read along W_U[:, token]
    (ln_final.w folded in: here W_U * ln_final.w)."""
    model, twin = twins(make_cfg(HABITS), seed=1)
    tokens = tokens_for(HABITS_CFG)
    sd = state(model)
    answers = np.random.default_rng(9).integers(0, V, B)
    for m in (model, twin):
        _, c = m.run_with_cache(tokens)
        # [component, batch, d_model]: the last position
        stack = to_numpy(c.decompose_resid(pos_slice=-1))
        kept = tl_slice(stack, batch_slice, 1)
        scale = tl_slice(tl_slice(to_numpy(c["ln_final.hook_scale"]), -1, -2), batch_slice, 0)
        right = tl_slice(answers, batch_slice, 0)
        direction = (sd["unembed.W_U"] * sd["ln_final.w"][:, None]).T[right]  # [batch, d_model]
        expected = ((kept - kept.mean(-1, keepdims=True)) / scale * direction).sum(-1)
        attrs = c.logit_attrs(
            c.decompose_resid(pos_slice=-1), right, pos_slice=-1, batch_slice=batch_slice
        )
        close(attrs, expected)
        # summed, plus the constants, they are the logit of the answer at the last position
        full = to_numpy(c.logit_attrs(c.decompose_resid(pos_slice=-1), answers, pos_slice=-1)).sum(
            0
        )
        logits = tl_forward(sd, m.cfg, tokens)[0][:, -1]
        close(
            full + (sd["unembed.W_U"].T[answers] @ sd["ln_final.b"]) + sd["unembed.b_U"][answers],
            logits[np.arange(B), answers],
        )


def test_run_with_cache_pos_slice_remove_batch_dim_and_to():
    model, twin = twins(make_cfg(HABITS), seed=1)
    tokens = tokens_for(HABITS_CFG)
    _, full = model.run_with_cache(tokens)
    for m in (model, twin):
        # TransformerLens keeps the axis for an int here
        _, c = m.run_with_cache(tokens, pos_slice=-1)
        assert tuple(c["z", 0].shape) == (B, 1, 3, 5) and tuple(c["pattern", 0].shape) == (
            B,
            3,
            1,
            P,
        )
        close(c["resid_post", 1], full["resid_post", 1][:, -1:])
        close(c["scale"], full["scale"][:, -1:])
        _, c = m.run_with_cache(
            tokens, pos_slice=(1, 4), names_filter=["k0", "blocks.1.attn.hook_attn_scores"]
        )
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
    with pytest.raises(ValueError, match="a slice given as a list or array must hold indices"):
        Slice([[1, 2]])
    with pytest.raises(ValueError, match="a slice given as a list or array must hold indices"):
        Slice(np.array([0.5]))


# --- generate ---


def test_generate_greedy_is_the_argmax_and_the_twins_agree():
    model, twin = twins(make_cfg(HABITS), seed=1)
    prompt = tokens_for(HABITS_CFG, pos=3)
    greedy = model.generate(prompt, max_new_tokens=5, do_sample=False, verbose=False)
    rows = prompt.copy()
    for _ in range(5):  # TransformerLens's greedy loop: the argmax of the last position's logits
        rows = np.concatenate(
            [rows, tl_forward(state(model), model.cfg, rows)[0][:, -1].argmax(-1)[:, None]], 1
        )
    assert np.array_equal(greedy, rows)
    assert np.array_equal(
        to_numpy(twin.generate(prompt, max_new_tokens=5, do_sample=False, verbose=False)), greedy
    )
    # temperature 0 too
    assert np.array_equal(model.generate(prompt, 5, temperature=0, verbose=False, seed=1), greedy)
    # stop_at_eos: a sequence that produced eos is padded with it; generation stops once all have
    eos = int(greedy[0, 3])
    stopped = model.generate(
        prompt, max_new_tokens=5, do_sample=False, eos_token_id=eos, verbose=False
    )
    expected = greedy.copy()
    for row in expected:
        hits = np.flatnonzero(row[3:] == eos)
        if hits.size:
            row[3 + hits[0] :] = eos
    finished_at = max(
        np.flatnonzero(row[3:] == eos)[0] if (row[3:] == eos).any() else 4 for row in expected
    )
    assert np.array_equal(stopped, expected[:, : 3 + finished_at + 1])
    assert np.array_equal(
        to_numpy(twin.generate(prompt, 5, do_sample=False, eos_token_id=eos, verbose=False)),
        stopped,
    )
    unstopped = model.generate(
        prompt, 5, do_sample=False, eos_token_id=eos, stop_at_eos=False, verbose=False
    )
    assert np.array_equal(unstopped, greedy)


@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(temperature=0.7),
        dict(top_k=3),
        dict(top_p=0.6),
        dict(freq_penalty=1.5, temperature=1.3),
    ],
    ids=repr,
)
def test_seeded_sampling_draws_the_same_tokens_in_both_twins(options):
    model, twin = twins(make_cfg(HABITS), seed=1)
    prompt = tokens_for(HABITS_CFG, pos=3)
    sampled = model.generate(prompt, 6, seed=11, verbose=False, **options)
    assert sampled.shape == (B, 9)
    assert np.array_equal(
        to_numpy(twin.generate(prompt, 6, seed=11, verbose=False, **options)), sampled
    )
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
    kept_p[order[: np.searchsorted(np.cumsum(probs[order]), 0.7) + 1]] = True
    for options, kept in (
        (dict(temperature=0.8), np.ones(7, bool)),
        (dict(temperature=0.8, top_k=3), kept_k),
        (dict(temperature=0.8, top_p=0.7), kept_p),
    ):
        seen = frequencies(**options)
        expected = np.where(kept, probs, 0) / probs[kept].sum()
        assert np.array_equal(seen > 0, kept), options
        assert np.abs(seen - expected).max() < 0.015, options
    assert np.array_equal(sample_logits(rows[:3], temperature=0), [0, 0, 0])
    assert np.array_equal(
        sample_logits(rows[:50], top_k=1, rng=np.random.default_rng(1)), np.zeros(50)
    )
    with pytest.raises(ValueError, match="freq_penalty needs the tokens so far"):
        sample_logits(rows[:3], freq_penalty=0.5)
    for row in ([np.nan, 0.0], [np.inf, 0.0], [-np.inf, -np.inf]):  # nothing to draw from
        with pytest.raises(ValueError, match="final_logits has a row with NaN"):
            sample_logits(np.array([row]))


def test_generate_takes_text_and_returns_what_transformer_lens_returns(capsys):
    words = [
        "<pad>",
        "the",
        "cat",
        "sat",
        "on",
        "mat",
        "a",
        "dog",
        "ran",
        "home",
        "<bos>",
        "up",
        "down",
    ]
    model, twin = twins(make_cfg(HABITS), seed=1)
    for m in (model, twin):
        m.tokenizer = WordVocabulary(words, bos_token="<bos>")
    text = model.generate("the cat", 3, do_sample=False, verbose=False)
    ids = model.generate(model.to_tokens("the cat"), 3, do_sample=False, verbose=False)
    # the BOS that to_tokens added is gone
    assert isinstance(text, str) and text == model.to_string(ids[0, 1:])
    assert text.startswith("the cat ") and len(text.split()) == 5
    assert twin.generate("the cat", 3, do_sample=False, verbose=False) == text
    tokens = twin.generate("the cat", 3, do_sample=False, verbose=False, return_type="tensor")
    assert isinstance(tokens, torch.Tensor) and np.array_equal(tokens.numpy(), ids)
    # tokens in, a str out: every token, the BOS included (to_tokens did not add it here)
    assert (
        model.generate(ids[:, :3], 3, do_sample=False, verbose=False, return_type="str")
        == "<bos> " + text
    )
    assert (
        model.generate(
            np.repeat(ids[:, 1:3], 2, 0), 3, do_sample=False, verbose=False, return_type="str"
        )
        == [model.generate("the cat", 3, do_sample=False, verbose=False, prepend_bos=False)] * 2
    )
    # verbose=True, TransformerLens's default: progress on stderr
    model.generate("the cat", 3, do_sample=False)
    assert "generate: 3/3 tokens" in capsys.readouterr().err
    for bad, match in (
        (dict(top_k=0), "top_k"),
        (dict(top_p=1.5), "top_p"),
        (dict(return_type="list"), "return_type"),
        (dict(eos_token_id=99), "eos_token_id"),
        (dict(do_sample="no"), "do_sample"),
        (dict(freq_penalty=-1), "freq_penalty"),
    ):
        with pytest.raises((ValueError, TypeError), match=match):
            model.generate(ids, 2, verbose=False, **bad)


# --- act_fn="gelu": the exact GELU ---


def test_gelu_is_torchs_exact_gelu_with_its_gradient():
    """hook_post is torch.nn.GELU() of hook_pre (TransformerLens's "gelu"); the hand-written
    backward gives autograd's gradient of F.gelu at hook_pre."""
    model, twin = twins(make_cfg(HABITS, act_fn="gelu"), seed=1)
    tokens = tokens_for(HABITS_CFG)
    for m in (model, twin):
        _, cache = m.run_with_cache(tokens, return_type="loss", incl_bwd=True)
        for i in range(2):
            close(cache["post", i], torch.nn.GELU()(torch.as_tensor(to_numpy(cache["pre", i]))))
            pre = torch.as_tensor(to_numpy(cache["pre", i])).requires_grad_()
            F.gelu(pre).backward(torch.as_tensor(to_numpy(cache["post_grad", i])))
            close(cache["pre_grad", i], pre.grad)
    # a FeedForward of its own, outside a model, computes the exact GELU too
    ff = npi.FeedForward(model.cfg)
    randomize(ff, 3)
    x = np.random.default_rng(4).standard_normal((2, P, model.cfg.d_model))
    w = {name: torch.from_numpy(np.asarray(value)) for name, value in ff.state_dict().items()}
    expected = F.gelu(torch.from_numpy(x) @ w["W_in"] + w["b_in"]) @ w["W_out"] + w["b_out"]
    close(ff(x), expected)
    close(pti.FeedForward.from_twin(ff)(torch.from_numpy(x)), expected)
    with pytest.raises(ValueError, match="act_fn must be one of"):
        npi.TransformerConfig(
            d_vocab=5, d_model=4, n_heads=2, n_layers=1, n_ctx=3, act_fn="gelu_fast"
        )


def test_feedforward_exercise_checks_gelu_and_its_hint_lists_its_lines():
    from exercises.catalog import BY_KEY
    from exercises.generate import stub_source
    from numpy_impl import feedforward

    assert "gelu" in [variant.label for variant in BY_KEY["feedforward"].variants]
    stub = stub_source(open(feedforward.__file__).read(), "feedforward.py")
    assert '#   the exact GELU branch (act_fn "gelu"):\n' in stub  # its lines under their own label
    assert "#       post = pre * cdf\n" in stub
    assert (
        "#       cdf = 0.5 * (1 + erf(pre / sqrt(2)));  slope: exp(-pre**2 / 2) / sqrt(2 pi)\n"
        in stub
    )
    assert "dcdf" not in stub  # the answer itself is not in the learner's copy


# --- a config from TransformerLens's field names ---


def test_config_from_transformer_lens_names():
    cfg = TransformerConfig.from_transformer_lens(
        n_layers=2,
        d_model=12,
        n_ctx=10,
        d_head=4,
        d_vocab=V,
        act_fn="gelu",
        normalization_type="LN",
        positional_embedding_type="standard",
        attention_dir="causal",
        dtype="float64",
    )
    assert cfg == TransformerConfig(
        d_vocab=V,
        d_model=12,
        n_heads=3,
        n_layers=2,
        n_ctx=10,
        d_head=4,
        act_fn="gelu",
        normalization="pre",
        positional="learned",
        causal=True,
        dtype="float64",
    )
    # TransformerLens's defaults: float32, n_heads = d_model // d_head, d_mlp = 4 * d_model
    cfg = TransformerConfig.from_transformer_lens(
        n_layers=1, d_model=8, n_ctx=4, d_head=2, d_vocab=5, act_fn="relu"
    )
    assert (cfg.dtype, cfg.n_heads, cfg.d_mlp, cfg.normalization_type) == ("float32", 4, 32, "LN")
    cfg = TransformerConfig.from_transformer_lens(
        n_layers=1,
        d_model=8,
        n_ctx=4,
        d_head=2,
        d_vocab=5,
        attn_only=True,
        normalization_type=None,
        attention_dir="bidirectional",
        dtype=torch.float64,
    )
    assert (cfg.normalization, cfg.normalization_type, cfg.causal, cfg.dtype) == (
        None,
        None,
        False,
        "float64",
    )
    folded = TransformerConfig.from_transformer_lens(
        n_layers=1,
        d_model=8,
        n_ctx=4,
        d_head=2,
        d_vocab=5,
        act_fn="gelu_new",
        normalization_type="LNPre",
    )
    assert folded.normalization_type == "LNPre" and "blocks.0.ln1.w" not in parameter_shapes(folded)
    assert (
        parameter_count(folded)
        == len(parameter_shapes(folded))
        == len(npi.Transformer(folded).state_dict())
    )
    # what a TransformerLens config's to_dict() holds for such a model (its defaults filled in) is
    # accepted
    tl_dict = dict(
        n_layers=1,
        d_model=8,
        n_ctx=4,
        d_head=2,
        model_name="custom",
        n_heads=4,
        d_mlp=32,
        act_fn="gelu",
        d_vocab=5,
        eps=1e-5,
        use_attn_result=False,
        use_attn_scale=True,
        attn_scale=np.sqrt(2),
        use_split_qkv_input=False,
        use_hook_mlp_in=False,
        use_attn_in=False,
        use_local_attn=False,
        original_architecture=None,
        from_checkpoint=False,
        checkpoint_index=None,
        tokenizer_name=None,
        window_size=None,
        attn_types=None,
        init_mode="gpt2",
        normalization_type="LN",
        device="cpu",
        n_devices=1,
        attention_dir="causal",
        attn_only=False,
        seed=42,
        initializer_range=0.28,
        init_weights=True,
        scale_attn_by_inverse_layer_idx=False,
        positional_embedding_type="standard",
        final_rms=False,
        d_vocab_out=5,
        parallel_attn_mlp=False,
        rotary_dim=None,
        n_params=512,
        use_hook_tokens=False,
        gated_mlp=False,
        default_prepend_bos=True,
        dtype=torch.float32,
        n_key_value_heads=None,
        post_embedding_ln=False,
        rotary_base=10000,
        trust_remote_code=False,
    )
    assert TransformerConfig.from_transformer_lens(**tl_dict).act_fn == "gelu"


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("normalization_type", "RMSPre", "normalization_type"),
        ("positional_embedding_type", "alibi", "positional_embedding_type"),
        ("positional_embedding_type", "sinusoidal", "positional='sinusoidal'"),
        ("use_attn_result", True, "use_attn_result"),
        ("gated_mlp", True, "gated_mlp"),
        ("n_key_value_heads", 3, "n_key_value_heads"),
        ("eps", 1e-6, "eps"),
        ("dtype", "float8_e4m3fn", "dtype"),
        ("attention_dir", "sideways", "attention_dir"),
        ("wings", 2, "wings"),
        ("normalization", "post", "this project's name"),
    ],
)
def test_config_from_transformer_lens_refuses_what_is_not_modelled(field, value, match):
    fields = dict(
        n_layers=1, d_model=8, n_ctx=4, d_head=2, d_vocab=5, act_fn="relu", **{field: value}
    )
    with pytest.raises(ValueError, match=match) as error:
        TransformerConfig.from_transformer_lens(**fields)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(d_vocab=None), "d_vocab must be given"),
        (dict(d_vocab=-1), "d_vocab must be given"),
        (
            dict(d_head=3),
            r"n_heads is not set, and d_model \(8\) is not a multiple of d_head \(3\)",
        ),
        (dict(act_fn=None), "act_fn must be given for a model with MLPs"),
        (dict(d_vocab_out=7), "d_vocab_out=7: this project's output vocabulary is d_vocab"),
    ],
    ids=repr,
)
def test_config_from_transformer_lens_refuses_what_it_cannot_infer(changes, match):
    fields = {**dict(n_layers=1, d_model=8, n_ctx=4, d_head=2, d_vocab=5, act_fn="relu"), **changes}
    with pytest.raises(ValueError, match=match):
        TransformerConfig.from_transformer_lens(
            **{name: value for name, value in fields.items() if value is not None}
        )


# --- fold_layer_norm ---


def tl_fold(sd, n_layers, center_weights=True):
    """TransformerLens's fold_layer_norm(state_dict, fold_biases=True, center_weights) in NumPy, its
    expressions."""
    sd = dict(sd)
    for i in range(n_layers):
        p = f"blocks.{i}."
        for n in "QKV":
            W, b = sd[p + f"attn.W_{n}"], sd[p + "ln1.b"]
            sd[p + f"attn.b_{n}"] = sd[p + f"attn.b_{n}"] + (W * b[None, :, None]).sum(-2)
            sd[p + f"attn.W_{n}"] = sd[p + f"attn.W_{n}"] * sd[p + "ln1.w"][None, :, None]
            if center_weights:
                sd[p + f"attn.W_{n}"] = sd[p + f"attn.W_{n}"] - sd[p + f"attn.W_{n}"].mean(
                    1, keepdims=True
                )
        sd[p + "mlp.b_in"] = sd[p + "mlp.b_in"] + (
            sd[p + "mlp.W_in"] * sd[p + "ln2.b"][:, None]
        ).sum(-2)
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
    model, twin = twins(make_cfg(HABITS, act_fn="gelu"), seed=1)
    tokens = tokens_for(HABITS_CFG)
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
    for name in (
        "ln_final.hook_normalized",
        "blocks.1.ln2.hook_normalized",
        "blocks.0.attn.hook_q",
        "blocks.1.mlp.hook_pre",
    ):
        close(cache[name], acts[name])
    close(model(tokens), tl_logits)


@pytest.mark.parametrize("side", SIDES)
def test_process_weights_refuses_what_it_cannot_centre(side):
    post_norm = twins(make_cfg(HABITS, normalization="post"), seed=1)[SIDES.index(side)]
    with pytest.raises(ValueError, match="center_writing_weights needs a LayerNorm .* pre-norm"):
        post_norm.process_weights(fold_ln=False)
    encoder = twins(make_cfg(HABITS, unembed=False), seed=1)[SIDES.index(side)]
    with pytest.raises(ValueError, match="center_unembed needs an unembedding .cfg.unembed=True"):
        encoder.process_weights(fold_ln=False, center_writing_weights=False)


def test_folded_twins_agree_forward_and_backward_and_save():
    model, twin = twins(make_cfg(HABITS), seed=1)
    model.fold_layer_norm()
    twin.fold_layer_norm()
    tokens = tokens_for(HABITS_CFG, seed=8)
    model.zero_grad()
    twin.zero_grad()
    model(tokens, return_type="loss")
    model.backward()
    twin(tokens, return_type="loss").backward()
    largest = max(float(p.grad.abs().max()) for p in twin.parameters())
    for (name, p), (_, q) in zip(model.named_parameters(), twin.named_parameters()):
        assert rel_err(p.grad, q.grad, largest if name.endswith("b_K") else None) <= TL_TOL, name


def test_folded_model_saves_and_loads(tmp_path):
    model, twin = twins(make_cfg(HABITS), seed=1)
    model.fold_layer_norm()
    model.save(tmp_path / "folded.npz")
    for cls in (npi.Transformer, pti.Transformer):
        loaded = cls.load(tmp_path / "folded.npz")
        assert loaded.cfg.normalization_type == "LNPre"
        close(loaded(tokens_for(HABITS_CFG)), model(tokens_for(HABITS_CFG)))


def test_after_folding_logit_attrs_read_as_on_a_fold_ln_model():
    """On TransformerLens's fold_ln model, logit_attrs is (centred piece / cached scale) .
    W_U[:, token] with the folded W_U, and the pieces plus b_U[token] make the logit. The
    decompositions are the same before and after folding (folding changes no residual stream), and
    so are the attributions."""
    model, twin = twins(make_cfg(HABITS), seed=1)
    tokens = tokens_for(HABITS_CFG)
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
        expected = (
            (pieces - pieces.mean(-1, keepdims=True)) / scale * folded_sd["unembed.W_U"].T[answers]
        ).sum(-1)
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
    """interp's direct_logit_attribution on a folded model: the same numbers; ln_final.b is now in
    b_U."""
    from interp.analyses import direct_logit_attribution

    model, twin = twins(make_cfg(HABITS), seed=1)
    tokens = tokens_for(HABITS_CFG)
    before = direct_logit_attribution(model, tokens)
    for m in (model, twin):
        m.fold_layer_norm()
        after = direct_logit_attribution(m, tokens)
        close(after.components, before.components)
        close(after.components.sum() + after.bias, after.logit)
        close(after.logit, before.logit)


def test_fold_layer_norm_refuses_what_it_cannot_fold():
    for overrides, match in (
        (dict(normalization="post"), "normalization='pre'"),
        (dict(normalization=None), "normalization='pre'"),
        (dict(unembed=False, causal=False), "unembedding"),
    ):
        model, twin = twins(make_cfg(HABITS, **overrides), seed=1)
        for m in (model, twin):
            with pytest.raises(ValueError, match=match):
                m.fold_layer_norm()
    model, _ = twins(make_cfg(HABITS), seed=1)
    model.fold_layer_norm()
    with pytest.raises(ValueError, match="LNPre"):
        model.fold_layer_norm()


def test_fold_layer_norm_weights_is_the_shared_formula():
    model, _ = twins(make_cfg(HABITS, attn_only=True), seed=1)
    sd = state(model)
    folded = fold_layer_norm_weights(sd, model.cfg)
    assert "blocks.0.ln1.w" not in folded and "ln_final.b" not in folded and "blocks.0.ln1.w" in sd
    tokens = tokens_for(HABITS_CFG)
    logits = model(tokens)
    model.fold_layer_norm()
    close(model(tokens), logits)
