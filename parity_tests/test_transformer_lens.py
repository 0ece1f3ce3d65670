"""TransformerLens's surface on both twins: weight views, FactoredMatrix, cache decompositions, running.

Sum rules are checked in float64 to 1e-12 relative to the largest entry of the tensor they
rebuild; twin agreement as in helpers.py (max |numpy - torch| / max |torch|, 1e-12 in float64).
Weights are random (LayerNorm w and every bias non-trivial), never all ones.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import numpy_impl as npi
from foundation.lens.factored import FactoredMatrix
from foundation.lens.vocab import WordVocabulary
from parity_tests.helpers import TOL, randomize, rel_err, to_numpy
from parity_tests.interp_helpers import twin_of

B, P = 3, 7
SUM_TOL = 1e-12  # float64: a sum rebuilt from its parts differs only by rounding


def make_pair(dtype="float64", **overrides):
    fields = dict(d_vocab=13, d_model=12, n_heads=3, d_head=5, d_mlp=16, n_layers=3, n_ctx=10, dtype=dtype,
                  normalization="pre", positional="learned", act_fn="gelu_new")
    fields.update(overrides)
    model = npi.Transformer(npi.TransformerConfig(**fields), seed=0)
    randomize(model, 1)
    return model, twin_of(model)


def tokens_for(cfg, seed=2, batch=B, pos=P):
    return np.random.default_rng(seed).integers(0, cfg.d_vocab, (batch, pos))


CONFIGS = {
    "pre": {},
    "pre-attn-only-sinusoidal": dict(attn_only=True, positional="sinusoidal"),
    "no-norm-relu": dict(normalization=None, act_fn="relu"),
}


# --- every hook holds what TransformerLens's hook of the same name holds ---

def _layer_norm(x, w, b):
    """TransformerLens 2.18's LayerNorm: hook_scale = sqrt(var + eps), hook_normalized = centred / scale * w + b."""
    centered = x - x.mean(-1, keepdims=True)
    scale = np.sqrt((centered**2).mean(-1, keepdims=True) + 1e-5)
    return scale, centered / scale * w + b


@pytest.mark.parametrize("act_fn", ["gelu_new", "relu", "gelu"])
def test_every_hook_holds_what_transformer_lens_defines(act_fn):
    """Each hook rebuilt from its definition in TransformerLens's components (and the weights), to 1e-12."""
    model, twin = make_pair(act_fn=act_fn)
    cfg, sd = model.cfg, model.state_dict()
    tokens = tokens_for(cfg)
    for m in (model, twin):
        out, cache = m.run_with_cache(tokens)
        c = {name: to_numpy(value) for name, value in cache.items()}
        expected = {"hook_embed": sd["embed.W_E"][tokens],
                    "hook_pos_embed": np.broadcast_to(sd["pos_embed.W_pos"][:P], (B, P, cfg.d_model))}
        resid = expected["hook_embed"] + expected["hook_pos_embed"]
        for i in range(cfg.n_layers):
            pre = f"blocks.{i}."
            w = lambda name: sd[pre + name]  # noqa: E731
            expected[pre + "hook_resid_pre"] = resid
            scale, x = _layer_norm(resid, w("ln1.w"), w("ln1.b"))
            expected[pre + "ln1.hook_scale"], expected[pre + "ln1.hook_normalized"] = scale, x
            q, k, v = (np.einsum("bpm,hmd->bphd", x, w(f"attn.W_{n}")) + w(f"attn.b_{n}") for n in "QKV")
            scores = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(cfg.d_head)
            scores = np.where(np.tril(np.ones((P, P), dtype=bool)), scores, -np.inf)  # masked before the hook
            pattern = np.exp(scores - scores.max(-1, keepdims=True))
            pattern /= pattern.sum(-1, keepdims=True)
            z = np.einsum("bhqk,bkhd->bqhd", pattern, v)
            attn_out = np.einsum("bphd,hdm->bpm", z, w("attn.W_O")) + w("attn.b_O")  # b_O included
            for name, value in (("q", q), ("k", k), ("v", v), ("attn_scores", scores), ("pattern", pattern), ("z", z)):
                expected[pre + "attn.hook_" + name] = value
            expected[pre + "hook_attn_out"] = attn_out
            resid = resid + attn_out
            expected[pre + "hook_resid_mid"] = resid
            scale, x = _layer_norm(resid, w("ln2.w"), w("ln2.b"))
            expected[pre + "ln2.hook_scale"], expected[pre + "ln2.hook_normalized"] = scale, x
            hidden = x @ w("mlp.W_in") + w("mlp.b_in")
            if act_fn == "relu":
                post = np.maximum(hidden, 0)
            elif act_fn == "gelu":  # TransformerLens's "gelu" is torch.nn.functional.gelu, the exact one
                post = F.gelu(torch.from_numpy(hidden)).numpy()
            else:
                post = 0.5 * hidden * (1 + np.tanh(np.sqrt(2 / np.pi) * (hidden + 0.044715 * hidden**3)))
            mlp_out = post @ w("mlp.W_out") + w("mlp.b_out")  # b_out included
            expected[pre + "mlp.hook_pre"], expected[pre + "mlp.hook_post"] = hidden, post
            expected[pre + "hook_mlp_out"] = mlp_out
            resid = resid + mlp_out
            expected[pre + "hook_resid_post"] = resid
        scale, x = _layer_norm(resid, sd["ln_final.w"], sd["ln_final.b"])
        expected["ln_final.hook_scale"], expected["ln_final.hook_normalized"] = scale, x
        # TransformerLens 2.18's names and meanings; its hook_normalized (after w and b) is the LayerNorm's
        # hook_out in TransformerLens 4 and here, where hook_normalized is (x - mean) / scale, before them
        renamed = {name: name.replace("hook_normalized", "hook_out") for name in expected}
        assert set(renamed.values()) <= set(c), "the model lacks some of TransformerLens 2.18's hooks"
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
    "W_Q": ("attn.W_Q", ("L", "H", "D", "d")), "W_K": ("attn.W_K", ("L", "H", "D", "d")),
    "W_V": ("attn.W_V", ("L", "H", "D", "d")), "W_O": ("attn.W_O", ("L", "H", "d", "D")),
    "b_Q": ("attn.b_Q", ("L", "H", "d")), "b_K": ("attn.b_K", ("L", "H", "d")), "b_V": ("attn.b_V", ("L", "H", "d")),
    "b_O": ("attn.b_O", ("L", "D")), "W_in": ("mlp.W_in", ("L", "D", "M")), "W_out": ("mlp.W_out", ("L", "M", "D")),
    "b_in": ("mlp.b_in", ("L", "M")), "b_out": ("mlp.b_out", ("L", "D")),
}


def test_weight_views_stack_the_parameters_in_both_twins():
    model, twin = make_pair()
    cfg = model.cfg
    sizes = {"L": cfg.n_layers, "H": cfg.n_heads, "D": cfg.d_model, "d": cfg.d_head, "M": cfg.d_mlp}
    sd = model.state_dict()
    for name, (key, shape) in VIEW_SHAPES.items():
        expected = np.stack([sd[f"blocks.{i}.{key}"] for i in range(cfg.n_layers)])
        assert expected.shape == tuple(sizes[s] for s in shape), name
        assert np.array_equal(getattr(model, name), expected), name
        assert np.array_equal(to_numpy(getattr(twin, name)), expected), name
    for name, key in (("W_E", "embed.W_E"), ("W_pos", "pos_embed.W_pos"), ("W_U", "unembed.W_U"), ("b_U", "unembed.b_U")):
        assert np.array_equal(getattr(model, name), sd[key]) and np.array_equal(to_numpy(getattr(twin, name)), sd[key])


def test_torch_weight_views_carry_gradients():
    _, twin = make_pair()
    (twin.W_Q[1, 2] ** 2).sum().backward()
    grad = twin.blocks[1].attn.W_Q.grad
    assert grad is not None and rel_err(grad[2], 2 * twin.blocks[1].attn.W_Q[2]) == 0.0
    assert float(grad[:2].abs().max()) == 0.0


def test_weight_views_without_the_part_refuse_clearly():
    model, twin = make_pair(attn_only=True, positional="sinusoidal")
    with pytest.raises(AttributeError, match="attention-only"):
        model.W_in
    assert np.array_equal(model.W_pos, model.pos_embed.table)  # the fixed table the model adds
    assert np.array_equal(to_numpy(twin.W_pos), model.pos_embed.table)


# --- FactoredMatrix ---

def test_factored_matrix_matches_its_product():
    model, twin = make_pair()
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
        assert np.abs(np.sort_complex(eig_ab) - np.sort_complex(eig_ba)).max() / np.abs(eig_ab).max() < 1e-10
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
    model, _ = make_pair()
    assert rel_err(model.OV[1, 2].AB, model.W_V[1, 2] @ model.W_O[1, 2]) == 0.0
    with pytest.raises(ValueError, match="mdim"):
        FactoredMatrix(A, C)
    with pytest.raises(ValueError, match="square"):
        fm.BA
    with pytest.raises(IndexError, match="leading"):
        model.OV[1, 2, 3]


# --- the cache: sum rules ---

def caches(name, **extra):
    model, twin = make_pair(**{**CONFIGS[name], **extra})
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
            for pieces in (c.decompose_resid(layer), c.stack_head_results(layer, incl_remainder=True)):
                err = rel_err(pieces.sum(0), resid)
                worst = max(worst, err)
                assert err < SUM_TOL, (name, layer, err)
            if layer < n and not model.cfg.attn_only:  # the MLP's input
                err = rel_err(c.decompose_resid(layer, mlp_input=True).sum(0), c["resid_mid", layer])
                assert err < SUM_TOL, (name, layer, "mlp_input", err)
        accumulated = c.accumulated_resid()
        assert accumulated.shape == (n + 1, B, P, model.cfg.d_model)
        assert rel_err(accumulated[-1], c["resid_post", n - 1]) == 0.0  # the last one is the final stream
    print(f"{name}: worst decomposition sum error {worst:.1e}")


@pytest.mark.parametrize("name", ["pre", "pre-attn-only-sinusoidal"])
def test_apply_ln_to_stack_is_the_layernorm_with_its_cached_scale(name):
    model, twin, tokens, (out, cache), (out_t, cache_t) = caches(name)
    n = model.cfg.n_layers
    for layer in range(n + 1):
        ln = twin.blocks[layer].ln1 if layer < n else twin.ln_final
        resid = cache["resid_pre", layer] if layer < n else cache["resid_post", n - 1]
        expected = to_numpy(ln(torch.from_numpy(resid)))  # the twin's own LayerNorm on the whole stream
        for c in (cache, cache_t):
            normalized = to_numpy(c.apply_ln_to_stack(c.decompose_resid(layer), layer)).sum(0)
            rebuilt = normalized * to_numpy(ln.w) + to_numpy(ln.b)
            assert rel_err(rebuilt, expected) < SUM_TOL, (name, layer)


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("shape", ["int", "batch", "batch_pos"])
def test_logit_attributions_add_up_to_the_logit_difference(name, shape):
    model, twin, tokens, (out, cache), (out_t, cache_t) = caches(name)
    rng = np.random.default_rng(5)
    right = {"int": 4, "batch": rng.integers(0, 13, B), "batch_pos": rng.integers(0, 13, (B, P))}[shape]
    wrong = {"int": 9, "batch": rng.integers(0, 13, B), "batch_pos": rng.integers(0, 13, (B, P))}[shape]
    r = np.broadcast_to(np.asarray(right)[..., None] if shape == "batch" else right, (B, P))  # [batch, pos]
    w = np.broadcast_to(np.asarray(wrong)[..., None] if shape == "batch" else wrong, (B, P))
    logit_diff = np.take_along_axis(out, r[..., None], -1)[..., 0] - np.take_along_axis(out, w[..., None], -1)[..., 0]
    direction = model.W_U.T[r] - model.W_U.T[w]  # [batch, pos, d_model]
    constant = model.b_U[r] - model.b_U[w]  # [batch, pos]
    if model.cfg.normalization == "pre":
        constant = constant + direction @ model.ln_final.b.data
    results = []
    for c in (cache, cache_t):
        for stack in (c.decompose_resid(), c.stack_head_results(incl_remainder=True)):
            attrs = to_numpy(c.logit_attrs(stack, right, incorrect_tokens=wrong))  # [component, batch, pos]
            assert attrs.shape == (len(stack), B, P)
            assert rel_err(attrs.sum(0) + constant, logit_diff) < SUM_TOL, (name, shape)
            results.append(attrs)
    assert rel_err(results[2], results[0]) < TOL["float64"] and rel_err(results[3], results[1]) < TOL["float64"]


def test_logit_lens_last_layer_gives_the_logits():
    model, twin, tokens, (out, cache), (out_t, cache_t) = caches("pre")
    for c, o in ((cache, out), (cache_t, out_t)):
        lens = to_numpy(c.accumulated_resid(apply_ln=True))  # [layer + 1, batch, pos, d_model]
        assert rel_err(lens[-1] @ model.W_U + model.b_U, to_numpy(o)) < SUM_TOL
        assert rel_err(lens[-1], to_numpy(c["ln_final.hook_out"])) < SUM_TOL  # the LayerNorm's output
    assert rel_err(cache_t.accumulated_resid(apply_ln=True), cache.accumulated_resid(apply_ln=True)) < TOL["float64"]
    # the logit lens leaves the NumPy model's own ln_final ready for a backward pass of the last run
    model.zero_grad()
    model.backward(np.random.default_rng(3).standard_normal(out.shape))


def test_twins_agree_on_every_cache_method():
    model, twin, tokens, (out, cache), (out_t, cache_t) = caches("pre")
    pairs = {
        "accumulated_resid(incl_mid)": lambda c: c.accumulated_resid(2, incl_mid=True, apply_ln=True),
        "accumulated_resid(mlp_input)": lambda c: c.accumulated_resid(1, mlp_input=True, apply_ln=True),
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
    model, twin = make_pair()
    tokens = tokens_for(model.cfg, batch=1)
    out, cache = model.run_with_cache(tokens)
    _, cache_t = twin.run_with_cache(tokens)
    for c in (cache.remove_batch_dim(), cache_t.remove_batch_dim()):
        assert c["resid_pre", 0].shape == (P, 12) and not c.has_batch_dim
        assert rel_err(c.decompose_resid().sum(0), c["resid_post", -1]) < SUM_TOL
        attrs = to_numpy(c.logit_attrs(c.decompose_resid(), tokens[0]))  # [component, pos]
        direction = model.W_U.T[tokens[0]]  # [pos, d_model]
        constant = model.b_U[tokens[0]] + direction @ model.ln_final.b.data
        assert rel_err(attrs.sum(0) + constant, np.take_along_axis(out[0], tokens[0][:, None], -1)[:, 0]) < SUM_TOL
    _, big = model.run_with_cache(tokens_for(model.cfg))
    with pytest.raises(ValueError, match="batch size 1"):
        big.remove_batch_dim()


def test_cache_methods_refuse_what_they_cannot_do():
    model, twin = make_pair(normalization="post")
    _, cache = model.run_with_cache(tokens_for(model.cfg))
    for call in (lambda: cache.decompose_resid(), lambda: cache.stack_head_results(),
                 lambda: cache.apply_ln_to_stack(cache.accumulated_resid())):
        with pytest.raises(ValueError, match="post-norm"):
            call()
    model, _ = make_pair()
    _, cache = model.run_with_cache(tokens_for(model.cfg))
    with pytest.raises(ValueError, match="layer"):
        cache.decompose_resid(7)
    with pytest.raises(ValueError, match="mode"):
        cache.decompose_resid(mode="heads")
    with pytest.raises(ValueError, match="d_vocab"):
        cache.logit_attrs(cache.decompose_resid(), 13)
    with pytest.raises(ValueError, match="same shape"):
        cache.logit_attrs(cache.decompose_resid(), [1, 2, 3], incorrect_tokens=4)


# --- running: return_type, generate, the vocabulary ---

def test_return_type_gives_the_next_token_loss():
    model, twin = make_pair()
    tokens = tokens_for(model.cfg)
    logits = model(tokens)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -np.take_along_axis(log_probs[:, :-1], tokens[:, 1:, None], -1).mean()
    for m in (model, twin):
        assert rel_err(m(tokens, return_type="loss"), expected) < SUM_TOL
        both_logits, both_loss = m(tokens, return_type="both")
        assert rel_err(both_logits, logits) < TOL["float64"] and rel_err(both_loss, expected) < SUM_TOL
        assert m(tokens, return_type=None) is None
        with pytest.raises(ValueError, match="return_type"):
            m(tokens, return_type="probs")
    twin_loss = twin(tokens, return_type="loss")
    twin_loss.backward()
    assert twin.blocks[0].attn.W_Q.grad is not None


def test_generate_gives_the_same_tokens_in_both_twins():
    model, twin = make_pair()
    prompt = tokens_for(model.cfg, pos=4)
    greedy = model.generate(prompt, max_new_tokens=6, do_sample=False, verbose=False)
    assert greedy.shape == (B, 10) and np.array_equal(greedy[:, :4], prompt)
    assert np.array_equal(to_numpy(twin.generate(prompt, max_new_tokens=6, do_sample=False, verbose=False)), greedy)
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
    words = ["<pad>", "the", "cat", "sat", "on", "mat", "a", "dog", "ran", "home", "<bos>", "up", "down"]
    model, twin = make_pair()
    for m in (model, twin):
        m.tokenizer = WordVocabulary(words)
        tokens = m.to_tokens("the cat sat on mat")
        assert to_numpy(tokens).tolist() == [[1, 2, 3, 4, 5]]
        assert m.to_str_tokens("the cat sat on mat") == ["the", "cat", "sat", "on", "mat"]
        assert m.to_str_tokens(tokens) == ["the", "cat", "sat", "on", "mat"]
        assert m.to_string(tokens[0]) == "the cat sat on mat"
        assert m.to_str_tokens("the cat", prepend_bos=False) == ["the", "cat"]
        with pytest.raises(ValueError, match="'bird'"):
            m.to_tokens("the bird")
    assert model.generate("the cat", 3, do_sample=False) == twin.generate("the cat", 3, do_sample=False)
    model.tokenizer = WordVocabulary(words, bos_token="<bos>")
    assert model.to_str_tokens("the cat") == ["<bos>", "the", "cat"]


# --- the torch twin moves like a module ---

def test_dtype_moves_keep_the_config_in_step():
    model, twin = make_pair()
    tokens = tokens_for(model.cfg)
    expected = model(tokens)
    twin.float()
    assert twin.cfg.dtype == "float32" and all(m.cfg.dtype == "float32" for m in twin.modules() if hasattr(m, "cfg"))
    out = twin(tokens)
    assert out.dtype == torch.float32 and rel_err(out, expected) < TOL["float32"]
    twin.to(torch.float64)
    assert twin.cfg.dtype == "float64" and twin.blocks[1].mlp.W_in.dtype == torch.float64
    for refused in (twin.half, twin.bfloat16, lambda: twin.to(torch.float16), lambda: twin.to("cpu", torch.bfloat16)):
        with pytest.raises(TypeError, match="float32 or float64"):
            refused()
    assert twin.cfg.dtype == "float64" and twin.embed.W_E.dtype == torch.float64  # nothing moved


def test_device_moves_take_everything_and_the_tokens():
    _, twin = make_pair(positional="sinusoidal")
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

    code = ("import sys, foundation.lens.cache, foundation.lens.factored, foundation.lens.running, foundation.lens.views, "
            "foundation.lens.vocab, numpy_impl; assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_interp_tour_finds_the_trained_model_in_its_out_folder(tmp_path):
    """`demo.py induction --out X` then `demo.py interp --out X` reads X/induction.npz."""
    import argparse

    from tours.interp import choose_model

    model, _ = make_pair()
    model.save(tmp_path / "induction.npz")
    found, note, _ = choose_model(argparse.Namespace(model="auto", out=str(tmp_path), seed=0))
    assert str(tmp_path / "induction.npz") in note
    assert all(np.array_equal(a, b) for a, b in zip(found.state_dict().values(), model.state_dict().values()))
    _, note, _ = choose_model(argparse.Namespace(model="auto", out=str(tmp_path / "empty"), seed=0))
    assert "random" in note
