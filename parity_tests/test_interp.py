"""Logit lens, direct logit attribution, head ablation, patching and circuits: equal numbers from
both twins, and right on cases whose answer is known without the code under test.

The analyses are NumPy code fed by each twin's activations (which agree to ~1e-15), so the two
results must agree to 1e-12 relative (PARITY_TOL).
"""

import numpy as np
import pytest
import torch

from interp import (
    all_head_scores,
    composition_score,
    composition_scores,
    copying_score,
    copying_scores,
    direct_logit_attribution,
    full_ov_circuit,
    head_ablation,
    induction_scores,
    logit_lens,
    patch_heads,
    patch_positions,
    pattern_scores,
    positional_qk_circuit,
    previous_token_scores,
    repeated_random_tokens,
)
from interp.common import run_cache
from interp.handmade import bos_repeated_tokens
from interp.scores import (
    duplicate_token_targets,
    induction_targets,
    previous_token_targets,
)
from parity_tests.helpers import (
    INTERP,
    handmade_pair,
    make_cfg,
    max_abs_diff,
    rel_err,
    tokens_for,
    twin_of,
    twins,
)

PARITY_TOL = 1e-12


def with_dead_head(layer, head, **overrides):
    """A random pair whose head (layer, head) has W_O = 0: it writes nothing."""
    model, _ = twins(make_cfg(INTERP, **overrides), seed=1)
    model.blocks[layer].attn.W_O.data[head] = 0.0
    return model, twin_of(model)


def layer_norm(x, w, b):
    centered = x - x.mean(-1, keepdims=True)
    return centered / np.sqrt((centered**2).mean(-1, keepdims=True) + 1e-5) * w + b


# ------------------------------------------------------------------------------------ logit lens


@pytest.mark.parametrize("norm", ["pre", "post", None])
def test_logit_lens(norm):
    model, twin = twins(make_cfg(INTERP, normalization=norm), seed=1)
    tokens = tokens_for(model.cfg, 3, 8, seed=0)
    lens, lens_t = logit_lens(model, tokens), logit_lens(twin, tokens)
    assert lens.logits.shape == (3, 3, 8, 13) and lens.labels == ["embed", "after L0", "after L1"]
    assert rel_err(lens.logits, lens_t.logits) <= PARITY_TOL
    assert rel_err(lens.next_logprob, lens_t.next_logprob) <= PARITY_TOL
    # the last state is the model's own output, in both twins
    assert rel_err(lens.logits[-1], model(tokens)) <= PARITY_TOL
    assert rel_err(lens_t.logits[-1], twin(torch.from_numpy(tokens))) <= PARITY_TOL
    # the first is the embeddings, (normalised and) unembedded: computed here by hand
    sd = model.state_dict()
    resid = sd["embed.W_E"][tokens] + sd["pos_embed.W_pos"][:8]
    if norm == "pre":
        resid = layer_norm(resid, sd["ln_final.w"], sd["ln_final.b"])
    assert rel_err(lens.logits[0], resid @ sd["unembed.W_U"] + sd["unembed.b_U"]) <= PARITY_TOL
    # log-probabilities: each row of probabilities sums to one, and they are read at the next token
    logp = lens.logits[1, 0, 2] - np.log(np.exp(lens.logits[1, 0, 2]).sum())
    assert abs(lens.next_logprob[1, 0, 2] - logp[tokens[0, 3]]) <= 1e-12


def test_logit_lens_on_the_handmade_circuit():
    """Before L1 the answer block is empty: every logit is 0 and log p = -log(d_vocab) exactly;
    after L1 the repeated half is predicted (top-1 = 5 of 12 positions, where an induction target
    exists)."""
    model, _ = handmade_pair()
    lens = logit_lens(model, bos_repeated_tokens())
    assert np.all(np.abs(lens.next_logprob[:2] + np.log(8)) < 1e-12)
    assert abs(lens.next_top1[2] - 5 / 12) < 1e-12


# ------------------------------------------------------------------------------- attribution


@pytest.mark.parametrize(
    "overrides", [{}, {"normalization": None}, {"attn_only": True}, {"positional": "sinusoidal"}]
)
def test_direct_logit_attribution_parity_and_sum(overrides):
    model, twin = twins(make_cfg(INTERP, **overrides), seed=1)
    tokens = tokens_for(model.cfg, 3, 8, seed=0)
    for kwargs in ({}, {"answer": [1, 2, 3], "wrong": 4}):
        ours, theirs = (
            direct_logit_attribution(model, tokens, **kwargs),
            direct_logit_attribution(twin, tokens, **kwargs),
        )
        assert ours.component_labels == theirs.component_labels
        assert rel_err(ours.components, theirs.components) <= PARITY_TOL
        assert rel_err(ours.heads, theirs.heads) <= PARITY_TOL
        # the pieces add up to the logit the model outputs (ln_final is linear at its cached scale)
        assert abs(ours.components.sum() + ours.bias - ours.logit) <= 1e-12 * max(
            1, abs(ours.logit)
        )
    if overrides.get("normalization", "pre") is None:
        # without LayerNorm each piece is read by u = W_U[:, next token] directly; computed here by
        # hand
        sd = model.state_dict()
        u = sd["unembed.W_U"][:, tokens[:, 1:]]  # [d_model, batch, pos - 1]
        ours = direct_logit_attribution(model, tokens)
        embed_effect = np.einsum("bpm,mbp->bp", sd["embed.W_E"][tokens[:, :-1]], u).mean()
        assert abs(ours.components[0] - embed_effect) <= 1e-12
        # the heads plus b_O's share make each layer's attention component
        for layer in range(2):
            b_O_effect = np.einsum("m,mbp->bp", sd[f"blocks.{layer}.attn.b_O"], u).mean()
            attn = ours.components[ours.component_labels.index(f"{layer}_attn_out")]
            assert abs(ours.heads[layer].sum() + b_O_effect - attn) <= 1e-12


def test_attribution_of_a_dead_head_is_zero_and_the_circuit_is_all_L1H0():
    model, twin = with_dead_head(1, 2)
    for source in (model, twin):
        assert (
            direct_logit_attribution(source, tokens_for(model.cfg, 3, 8, seed=0)).heads[1, 2] == 0.0
        )
    handmade, _ = handmade_pair()
    result = direct_logit_attribution(handmade, bos_repeated_tokens())
    # only L1H0 writes into the answer block that W_U reads: 10 per induction position, 5 of 12
    # positions
    assert abs(result.heads[1, 0] - 10 * 5 / 12) < 1e-9
    assert np.all(result.heads.ravel()[[0, 1, 3]] == 0)


def test_attribution_rejects_post_norm_and_bad_answers():
    model, _ = twins(make_cfg(INTERP, normalization="post"), seed=1)
    with pytest.raises(ValueError, match="normalization"):
        direct_logit_attribution(model, tokens_for(model.cfg, 3, 8, seed=0))
    model, _ = twins(make_cfg(INTERP), seed=1)
    with pytest.raises(ValueError, match="answer"):
        direct_logit_attribution(model, tokens_for(model.cfg, 3, 8, seed=0), answer=[1, 2])
    with pytest.raises(ValueError, match="wrong"):
        direct_logit_attribution(model, tokens_for(model.cfg, 3, 8, seed=0), answer=1, wrong=99)


# ---------------------------------------------------------------------------------- ablation


@pytest.mark.parametrize("kind", ["zero", "mean"])
def test_head_ablation_parity_and_dead_head(kind):
    model, twin = with_dead_head(0, 1)
    tokens = tokens_for(model.cfg, 2, 6, seed=0)
    ours, theirs = head_ablation(model, tokens, kind), head_ablation(twin, tokens, kind)
    assert ours.shape == (2, 3)
    assert np.abs(ours - theirs).max() <= PARITY_TOL
    assert ours[0, 1] == 0.0 and theirs[0, 1] == 0.0  # writes nothing: ablating it changes nothing
    assert np.abs(ours).max() > 1e-4


def test_zero_ablation_equals_deleting_the_head_from_the_weights():
    """Zeroing z_h through a hook is the same model as W_O[h] = 0; the loss here comes from
    torch."""
    model, _ = twins(make_cfg(INTERP), seed=1)
    tokens = tokens_for(model.cfg, 2, 6, seed=0)
    change = head_ablation(model, tokens, "zero")

    def torch_loss(m):
        logits = m(torch.from_numpy(tokens))[:, :-1].detach()
        return float(
            torch.nn.functional.cross_entropy(
                logits.reshape(-1, 13), torch.from_numpy(tokens[:, 1:]).reshape(-1)
            )
        )

    clean = torch_loss(twin_of(model))
    edited, _ = twins(make_cfg(INTERP), seed=1)
    edited.blocks[1].attn.W_O.data[0] = 0.0
    assert abs(change[1, 0] - (torch_loss(twin_of(edited)) - clean)) <= 1e-12


def test_ablating_the_induction_circuit():
    """Clean: 7 of 12 positions have nothing to copy (uniform: log 8 each) and 5 predict the
    answer with logit 10 against 0 (log(1 + 7 e^-10) each). Without L1H0, or L0H0 which it reads,
    all 12 are uniform. The two heads that write nothing change nothing."""
    model, twin = handmade_pair()
    tokens = bos_repeated_tokens()
    expected = 5 / 12 * (np.log(8) - np.log(1 + 7 * np.exp(-10)))
    for source in (model, twin):
        change = head_ablation(source, tokens, "zero")
        assert abs(change[1, 0] - expected) < 1e-9
        assert abs(change[0, 0] - expected) < 1e-9
        assert change[0, 1] == 0.0 and change[1, 1] == 0.0


# ---------------------------------------------------------------------------------- patching


def corrupt(tokens, position, seed=0):
    """A copy of tokens with one position changed to a token id absent from the sequence."""
    rng = np.random.default_rng(seed)
    corrupted = tokens.copy()
    for row in corrupted:
        unused = np.setdiff1d(np.arange(7), row)
        row[position] = rng.choice(unused) if len(unused) else (row[position] + 1) % 7
    return corrupted


def test_patching_parity_and_layer_zero_known_answer():
    """Layer 0's resid_pre is the embeddings: patching the corrupted position restores the clean
    run exactly (1) and patching any other position changes nothing (0)."""
    model, twin = twins(make_cfg(INTERP), seed=1)
    clean = tokens_for(model.cfg, 2, 6, seed=1)
    corrupted = clean.copy()
    corrupted[:, 2] = (clean[:, 2] + 5) % 13
    answer, wrong = clean[:, 0], (clean[:, 0] + 1) % 13
    grid, grid_t = (
        patch_positions(model, clean, corrupted, answer, wrong),
        patch_positions(twin, clean, corrupted, answer, wrong),
    )
    assert grid.shape == (2, 6)
    assert np.abs(grid - grid_t).max() <= PARITY_TOL
    expected = np.zeros(6)
    expected[2] = 1.0
    assert np.abs(grid[0] - expected).max() <= 1e-12
    for component in ("attn_out", "mlp_out", "resid_post"):
        ours = patch_positions(model, clean, corrupted, answer, wrong, component)
        assert (
            np.abs(ours - patch_positions(twin, clean, corrupted, answer, wrong, component)).max()
            <= PARITY_TOL
        )
    # resid_post of the last layer at the last position decides the last logits: fully restored
    assert abs(ours[-1, -1] - 1.0) <= 1e-12
    heads, heads_t = (
        patch_heads(model, clean, corrupted, answer, wrong),
        patch_heads(twin, clean, corrupted, answer, wrong),
    )
    assert heads.shape == (2, 3) and np.abs(heads - heads_t).max() <= PARITY_TOL


def test_patching_a_dead_head_restores_nothing_and_the_induction_head_everything():
    model, twin = with_dead_head(1, 1)
    clean = tokens_for(model.cfg, 2, 6, seed=2)
    corrupted = clean.copy()
    corrupted[:, 1] = (clean[:, 1] + 3) % 13
    assert patch_heads(model, clean, corrupted, 0, 1)[1, 1] == 0.0
    # handmade: the last query (token r_5) finds r_6 through the induction head; corrupt r_6
    handmade, handmade_t = handmade_pair()
    tokens = bos_repeated_tokens()[:, :12]
    corrupted = corrupt(tokens, 6)
    for source in (handmade, handmade_t):
        heads = patch_heads(source, tokens, corrupted, tokens[:, 6], corrupted[:, 6])
        assert abs(heads[1, 0] - 1.0) < 1e-9
        assert np.all(heads[:, 1] == 0.0)


def test_patching_rejects_bad_input():
    model, _ = twins(make_cfg(INTERP), seed=1)
    clean = tokens_for(model.cfg, 2, 6, seed=0)
    with pytest.raises(ValueError, match="same shape"):
        patch_heads(model, clean, clean[:, :5], 0, 1)
    with pytest.raises(ValueError, match="nothing to restore"):
        patch_heads(model, clean, clean, 0, 1)
    with pytest.raises(ValueError, match="component"):
        patch_positions(model, clean, clean, 0, 1, component="hook_q")
    with pytest.raises(ValueError, match="answer"):
        patch_heads(model, clean, clean, [0, 1, 2], 1)


# ---------------------------------------------------------------------------------- circuits


def test_circuits_parity():
    model, twin = twins(make_cfg(INTERP), seed=1)
    assert rel_err(copying_scores(model), copying_scores(twin)) <= PARITY_TOL
    for kind in "qkv":
        assert (
            rel_err(composition_scores(model, kind), composition_scores(twin, kind)) <= PARITY_TOL
        )
    assert rel_err(full_ov_circuit(model, 1, 2), full_ov_circuit(twin, 1, 2)) <= PARITY_TOL


def test_circuits_of_the_handmade_model():
    """L0H0 writes token t to the previous-token block, which L1H0's keys read with weight s: W_OV^A
    = I (V ones), W_QK^B = s I, so K-composition = s sqrt(V) / (sqrt(V) s sqrt(V)) = 1/sqrt(V);
    nothing of L0's output reaches L1's queries or values; L1H0's full OV is 10 on the diagonal."""
    model, twin = handmade_pair()
    for source in (model, twin):
        k = composition_scores(source, "k")
        assert abs(k[0, 0] - 1 / np.sqrt(8)) < 1e-12
        assert np.all(k.ravel()[1:] == 0)
        assert np.all(composition_scores(source, "q") == 0) and np.all(
            composition_scores(source, "v") == 0
        )
        copying = copying_scores(source)
        assert abs(copying[1, 0] - 1.0) < 1e-12 and copying[0, 0] == 0.0
        # the positional QK circuit of the previous-token head peaks at key p - 1 for every query p
        # >= 1
        pos_qk = positional_qk_circuit(source, 0, 0)
        assert np.array_equal(pos_qk[1:].argmax(axis=1), np.arange(12))


def test_copying_and_composition_scores_of_known_matrices():
    assert copying_score(np.diag([1.0, 2.0, 3.0])) == 1.0
    assert copying_score(-np.eye(4)) == -1.0
    assert abs(copying_score(np.diag([3.0, -1.0])) - 0.5) < 1e-15
    assert copying_score(np.zeros((3, 3))) == 0.0
    assert abs(composition_score(np.eye(16), np.eye(16)) - 0.25) < 1e-15  # 1 / sqrt(16)
    assert (
        composition_score(np.eye(4)[:, :2] @ np.eye(4)[:2], np.eye(4)[:, 2:] @ np.eye(4)[2:]) == 0.0
    )
    model, _ = twins(make_cfg(INTERP), seed=1)
    with pytest.raises(ValueError, match="kind"):
        composition_scores(model, "x")
    with pytest.raises(ValueError, match="layer_from"):
        composition_scores(model, "q", 1, 1)
    with pytest.raises(ValueError, match="head"):
        full_ov_circuit(model, 0, 3)
    with pytest.raises(ValueError, match="square"):
        copying_score(np.zeros((2, 3)))


def test_pre_norm_heads_and_b_O_make_the_attention_component():
    """Pre-norm: each piece is read through ln_final at the cached scale, (x - mean x) / scale * w,
    then W_U. The heads plus b_O's share, computed here by hand, must give each layer's attention
    component."""
    model, _ = twins(make_cfg(INTERP), seed=1)
    assert model.cfg.normalization == "pre"
    tokens = tokens_for(model.cfg, 3, 8, seed=0)
    sd = model.state_dict()
    _, cache = model.run_with_cache(tokens)
    scale = cache["ln_final.hook_scale"][:, :-1]  # [batch, pos - 1, 1]
    u = sd["unembed.W_U"][:, tokens[:, 1:]]  # [d_model, batch, pos - 1]
    ours = direct_logit_attribution(model, tokens)
    for layer in range(model.cfg.n_layers):
        b_O = sd[f"blocks.{layer}.attn.b_O"]  # [d_model]
        read = (b_O - b_O.mean()) / scale * sd["ln_final.w"]  # [batch, pos - 1, d_model]
        b_O_effect = np.einsum("bpm,mbp->bp", read, u).mean()
        attn = ours.components[ours.component_labels.index(f"{layer}_attn_out")]
        assert abs(ours.heads[layer].sum() + b_O_effect - attn) <= 1e-12 * max(1, abs(attn))


# ================================================================ head scores: equal from both
# twins, right on known heads


def test_scores_equal_from_both_twins():
    model, twin = twins(make_cfg(INTERP), seed=1)
    tokens = repeated_random_tokens(model.cfg.d_vocab, 5, batch=4, seed=3)
    ours, theirs = all_head_scores(model, tokens), all_head_scores(twin, tokens)
    for kind in ours:
        assert ours[kind].shape == (2, 3)
        assert max_abs_diff(ours[kind], theirs[kind]) <= PARITY_TOL, kind


def test_scores_from_a_cache_match_scores_from_the_model():
    model, twin = twins(make_cfg(INTERP), seed=1)
    tokens = repeated_random_tokens(model.cfg.d_vocab, 5, batch=2, seed=4)
    _, cache = twin.run_with_cache(tokens)
    assert max_abs_diff(induction_scores(cache), induction_scores(model, tokens)) <= PARITY_TOL


def test_handmade_heads_score_one():
    """L0H0 is a previous-token head, L1H0 an induction head, L1H1 a duplicate-token head
    (interp.handmade)."""
    model, twin = handmade_pair()
    tokens = bos_repeated_tokens(batch=4)
    for source in (model, twin):
        scores = all_head_scores(source, tokens)
        assert abs(scores["previous_token"][0, 0] - 1) < 1e-9
        assert abs(scores["induction"][1, 0] - 1) < 1e-9
        assert abs(scores["duplicate_token"][1, 1] - 1) < 1e-9
        # the other heads of each kind are far from it
        assert scores["induction"][0].max() < 0.2 and scores["induction"][1, 1] < 1e-9
        assert scores["previous_token"][1].max() < 0.2


def test_uniform_head_scores_are_the_harmonic_mean():
    """L0H1 has W_Q = W_K = 0: query q spreads 1/(q+1) over keys 0..q, so its previous-token
    score is mean over q = 1..P-1 of 1/(q+1)."""
    model, _ = handmade_pair()
    tokens = bos_repeated_tokens(batch=2)
    pos = tokens.shape[1]
    expected = np.mean([1 / (q + 1) for q in range(1, pos)])
    assert abs(previous_token_scores(model, tokens)[0, 1] - expected) < 1e-12


def test_targets_on_a_written_out_sequence():
    # duplicates: q3 -> k0, q4 -> k1; induction: q3 -> k1, q4 -> k2
    tokens = np.array([[5, 1, 2, 5, 1]])
    dup, ind, prev = (
        duplicate_token_targets(tokens)[0],
        induction_targets(tokens)[0],
        previous_token_targets(tokens)[0],
    )
    assert sorted(zip(*np.nonzero(dup))) == [(3, 0), (4, 1)]
    assert sorted(zip(*np.nonzero(ind))) == [(3, 1), (4, 2)]
    assert sorted(zip(*np.nonzero(prev))) == [(q, q - 1) for q in range(1, 5)]
    # a pattern that puts 0.7 on the induction target of each query that has one
    pattern = np.zeros((1, 1, 5, 5))
    pattern[0, 0, 3, 1] = pattern[0, 0, 4, 2] = 0.7
    assert abs(pattern_scores(pattern, induction_targets(tokens))[0] - 0.7) < 1e-15


def test_scores_reject_bad_input():
    model, _ = twins(make_cfg(INTERP), seed=1)
    with pytest.raises(ValueError, match="kind"):
        all_head_scores(model, kinds=("copying",))
    with pytest.raises(TypeError, match="source"):
        induction_scores("model")
    with pytest.raises(ValueError, match="target"):
        induction_scores(model, np.arange(6)[None])  # no token repeats: no induction target
    _, cache = run_cache(model, np.zeros((1, 4), dtype=np.int64))
    with pytest.raises(ValueError, match="tokens"):
        induction_scores(cache, np.zeros((2, 4), dtype=np.int64))
