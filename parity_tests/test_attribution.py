"""Attribution patching (node, edge, integrated gradients): equal from both twins, exact where
the metric is linear in the patched activation, and approaching activation patching where it is
not.

Every model has random weights (LayerNorm w near 1, non-zero biases) and float64; the metric's
gradient comes from the NumPy twin's hand-written backward and from autograd on the torch twin.
"""

import numpy as np
import pytest

from interp import (
    attribution_patching,
    edge_attribution_patching,
    patch_head_positions,
    patch_heads,
    patch_positions,
)
from interp.common import native_like, run_cache, run_hooked
from interp.patching import patching_setup
from parity_tests.helpers import INTERP, make_cfg, rel_err, twins
from parity_tests.test_llama import llama_cfg

PARITY_TOL = 1e-12  # relative, float64: both twins' activations and gradients agree to ~1e-14
# relative, float32: a score multiplies a clean - corrupted difference, whose relative error is
# the activations' (a few ulps, ~1e-6 here) times |activation| / |difference| (measured: 1.3e-5)
PARITY_TOL_32 = 1e-4
EXACT_TOL = 1e-12  # absolute, on a metric of size ~1: a linear metric's estimate is exact

GPT2 = make_cfg(INTERP)
LLAMA = llama_cfg(n_ctx=10)
# the logits are linear in the last layer's z and resid_post: no LayerNorm, no MLP after them
LINEAR = make_cfg(INTERP, normalization=None, attn_only=True)
GPT2_32 = make_cfg(INTERP, dtype="float32")


def corrupted_pair(cfg, position=3, batch=3, pos=8, seed=0):
    """(clean, corrupted, answer, wrong): the corrupted tokens differ at ``position`` only."""
    rng = np.random.default_rng(seed)
    clean = rng.integers(0, cfg.d_vocab, (batch, pos))
    corrupted = clean.copy()
    corrupted[:, position] = (corrupted[:, position] + 1) % cfg.d_vocab
    return clean, corrupted, clean[:, position], corrupted[:, position]


def finite(x):
    return np.nan_to_num(x, nan=0.0)  # edges that do not exist are NaN in both


@pytest.mark.parametrize("cfg", [GPT2, LLAMA, GPT2_32], ids=["gpt2", "llama", "gpt2-float32"])
def test_twins_agree(cfg):
    tol = PARITY_TOL if cfg.dtype == "float64" else PARITY_TOL_32
    model, twin = twins(cfg, seed=1)
    args = corrupted_pair(cfg)
    for steps in (None, 3):
        ours = attribution_patching(model, *args, steps=steps)
        theirs = attribution_patching(twin, *args, steps=steps)
        assert sorted(ours.scores) == sorted(theirs.scores)
        assert len(ours.scores) > 30  # every hook point with a gradient
        for name in ours.scores:
            assert rel_err(ours[name], theirs[name]) < tol, (steps, name)
        edges = edge_attribution_patching(model, *args, steps=steps)
        twin_edges = edge_attribution_patching(twin, *args, steps=steps)
        assert edges.upstream == twin_edges.upstream
        assert edges.downstream == twin_edges.downstream
        assert np.array_equal(np.isnan(edges.scores), np.isnan(twin_edges.scores))
        assert rel_err(finite(edges.scores), finite(twin_edges.scores)) < tol, steps
    one = attribution_patching(model, *args, steps=2, at="z1")
    assert rel_err(one["z", 1], attribution_patching(twin, *args, steps=2, at="z1")["z", 1]) < tol


@pytest.mark.parametrize("steps", [None, 1, 3, 8])
def test_exact_on_a_linear_model(steps):
    """In an attention-only model without LayerNorm the logits are linear in the last layer's z
    (z W_O + b_O joins the stream, then W_U) and in its resid_post: attribution equals activation
    patching there, for plain attribution and integrated gradients with any number of steps."""
    model, _ = twins(LINEAR, seed=1)
    args = corrupted_pair(LINEAR)
    result = attribution_patching(model, *args, steps=steps)
    heads = patch_heads(model, *args)
    head_positions = patch_head_positions(model, *args)
    positions = patch_positions(model, *args, component="resid_post")
    assert np.abs(heads[-1]).max() > 0.1  # the last layer's heads matter
    assert np.abs(result.heads("z")[-1] - heads[-1]).max() < EXACT_TOL
    assert np.abs(result.head_positions("z")[-1] - head_positions[-1]).max() < EXACT_TOL
    assert np.abs(result.positions("resid_post")[-1] - positions[-1]).max() < EXACT_TOL
    # layer 0's z reaches the logits through layer 1's attention: no longer linear (measured:
    # 0.58 to 0.70 apart)
    assert np.abs(result.heads("z")[0] - heads[0]).max() > 0.1


def test_differs_on_a_nonlinear_model():
    """Layer 0's heads reach the logits through layer 1's attention, LayerNorms and MLPs, layer
    1's through its MLP: the first-order estimate misses by more than 0.01 in layer 0 and 1e-3
    in layer 1 (measured: 0.082 and 0.026), so the exactness above is not a test that cannot
    fail."""
    model, _ = twins(GPT2, seed=1)
    args = corrupted_pair(GPT2)
    result = attribution_patching(model, *args)
    assert np.abs(result.heads("z")[0] - patch_heads(model, *args)[0]).max() > 0.01
    # ... and the last layer's z, through the MLP after it
    assert np.abs(result.heads("z")[-1] - patch_heads(model, *args)[-1]).max() > 1e-3


def test_integrated_gradients_approaches_patching():
    """The corrupted tokens differ at one position, so patching layer 0's resid_pre there restores
    everything (exactly 1) and the interpolated embeddings are the straight path of that
    activation: the midpoint rule's error falls as 1 / steps**2 (measured: 0.090, 0.023, 0.0059,
    0.0015, 0.00037, 0.000091 for 1 to 32 steps). Plain attribution misses by 0.17."""
    model, _ = twins(GPT2, seed=1)
    args = corrupted_pair(GPT2, position=3)
    patched = patch_positions(model, *args, component="resid_pre")[0, 3]
    assert abs(patched - 1.0) < EXACT_TOL
    plain = attribution_patching(model, *args).positions("resid_pre")[0, 3]
    assert abs(plain - patched) > 0.1
    errors = [
        abs(attribution_patching(model, *args, steps=s).positions("resid_pre")[0, 3] - patched)
        for s in (1, 2, 4, 8, 16, 32)
    ]
    for coarse, fine in zip(errors, errors[1:], strict=False):
        assert 0.2 < fine / coarse < 0.3  # 1/4 per doubling of the steps
    assert errors[-1] < 2e-4


def test_integrated_gradients_at_a_hook():
    """Interpolating one hook (layer 1's z): its scores add up to patching that whole activation,
    with the error falling as 1 / steps**2 (measured: 6.8e-4 at 1 step, 2.7e-6 at 16)."""
    model, _ = twins(GPT2, seed=1)
    args = corrupted_pair(GPT2)
    name = "blocks.1.attn.hook_z"
    setup = patching_setup(model, *args)
    _, clean_cache = run_cache(model, setup.clean_tokens, names_filter=[name])

    def patch(z, hook):
        return native_like(clean_cache[name], z)

    whole = setup.normalise(run_hooked(model, setup.corrupted_tokens, [(name, patch)]))
    errors = []
    for steps in (1, 4, 16):
        result = attribution_patching(model, *args, steps=steps, at=name)
        assert list(result.scores) == ["blocks.1.attn.o.hook_in"]  # hook_z's own name
        errors.append(abs(result["z", 1].sum() - whole))
    assert errors[1] < errors[0] / 10 and errors[2] < errors[1] / 10
    assert errors[2] < 1e-5


@pytest.mark.parametrize("cfg", [GPT2, LLAMA, LINEAR], ids=["gpt2", "llama", "linear"])
def test_edges_add_up_to_nodes(cfg):
    """Every edge into a node adds up to that node's input score (the stream is the sum of what
    the upstream nodes write; biases are the same in both runs), and every edge out of a node to
    its output score (the stream's gradient is the sum of what its readers take)."""
    model, _ = twins(cfg, seed=1)
    args = corrupted_pair(cfg)
    nodes = attribution_patching(model, *args)
    edges = edge_attribution_patching(model, *args)
    into = np.nansum(edges.scores, axis=0)  # [down]
    out_of = np.nansum(edges.scores, axis=1)  # [up]
    pre = cfg.normalization == "pre"
    assert abs(into[-1] - nodes["ln_final.hook_in" if pre else "unembed.hook_in"].sum()) < 1e-12
    heads_z = nodes.heads("z")
    for layer in range(cfg.n_layers):
        attn = [d for d, label in enumerate(edges.downstream) if label.startswith(f"L{layer}")]
        attn_in = nodes[f"blocks.{layer}.ln1.hook_in" if pre else f"blocks.{layer}.attn.hook_in"]
        assert abs(into[attn].sum() - attn_in.sum()) < 1e-12
        if not cfg.attn_only:
            mlp_in = nodes[f"blocks.{layer}.ln2.hook_in" if pre else f"blocks.{layer}.mlp.hook_in"]
            assert abs(into[edges.downstream.index(f"MLP{layer}.in")] - mlp_in.sum()) < 1e-12
            mlp_out = out_of[edges.upstream.index(f"MLP{layer}")]
            assert abs(mlp_out - nodes["mlp_out", layer].sum()) < 1e-12
        for head in range(cfg.n_heads):
            assert abs(out_of[edges.upstream.index(f"L{layer}H{head}")] - heads_z[layer, head]) < (
                1e-12
            )
    # no edge runs backwards: layer 1's heads write nothing that layer 0 or layer 1 reads
    assert np.isnan(edges.score("L1H0", "L0H0.q")) and np.isnan(edges.score("L1H0", "L1H1.q"))


def test_bad_input():
    model, _ = twins(GPT2, seed=1)
    clean, corrupted, answer, wrong = corrupted_pair(GPT2)
    with pytest.raises(ValueError, match="corrupted_tokens"):
        attribution_patching(model, clean, corrupted[:, :-1], answer, wrong)
    with pytest.raises(ValueError, match="at="):
        attribution_patching(model, clean, corrupted, answer, wrong, steps=2, at="hook_nothing")
    with pytest.raises(ValueError, match="at="):
        attribution_patching(model, clean, corrupted, answer, wrong, steps=2, at="embed.hook_in")
    with pytest.raises(ValueError, match="pass steps"):
        attribution_patching(model, clean, corrupted, answer, wrong, at="z1")
    with pytest.raises(TypeError, match="at"):
        attribution_patching(model, clean, corrupted, answer, wrong, steps=2, at=3)
    with pytest.raises(ValueError, match="steps"):
        attribution_patching(model, clean, corrupted, answer, wrong, steps=0)
    for steps in (2.5, True):
        with pytest.raises(TypeError, match="steps"):
            edge_attribution_patching(model, clean, corrupted, answer, wrong, steps=steps)
    with pytest.raises(ValueError, match="answer"):
        attribution_patching(model, clean, corrupted, GPT2.d_vocab, wrong)
    with pytest.raises(ValueError, match="nothing to restore"):
        attribution_patching(model, clean, clean, answer, wrong)
    result = attribution_patching(model, clean, corrupted, answer, wrong)
    with pytest.raises(ValueError, match="name"):
        result["hook_nothing"]
    edges = edge_attribution_patching(model, clean, corrupted, answer, wrong)
    with pytest.raises(ValueError, match="up="):
        edges.score("L9H9", "final")
    post, _ = twins(make_cfg(INTERP, normalization="post"), seed=1)
    with pytest.raises(ValueError, match="normalization"):
        edge_attribution_patching(post, clean, corrupted, answer, wrong)
