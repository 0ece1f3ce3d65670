"""Both twins against TransformerLens 4.3's ``TransformerBridge`` on the same Hugging Face
checkpoint.

A random float64 GPT-2 (parity_tests/gpt2_checkpoints.py: random LayerNorm weights, non-zero
biases) is written to a folder; the bridge boots on that folder and both twins load it with
``from_pretrained``. Each runs ``run_with_cache(tokens, return_type="loss", incl_bwd=True)``.

- every name the bridge caches is in both twins' caches, and no other;
- every activation and gradient agrees to 1e-10, relative to the largest entry of the bridge's
  tensor (float64: what is left is rounding), with two stated exceptions:
  masked attention scores are -inf in the twins and the dtype's most negative finite number in
  the bridge (softmax gives 0 for both); and ``hook_resid_mid_grad``, which TransformerLens 4.3
  takes at ``ln2.hook_in`` (the gradient through ln2 alone). The twins' ``hook_resid_mid_grad``
  is the residual stream's whole gradient: a test checks it against float64 autograd on the
  Hugging Face model itself, and another shows the bridge's value is the twins' ln2.hook_in_grad.
- weight processing: after ``process_weights()`` (fold_ln, center_writing_weights,
  center_unembed, fold_value_biases) the logits and every cached activation equal the bridge's
  after ``enable_compatibility_mode()``.
- the everyday calls (names_filter, stop_at_layer, hooks(), list_hooks, to_tokens /
  to_str_tokens / to_string, start_at_layer with the gradient of the residual stream given) give
  what the bridge gives.
- a random float64 Llama (parity_tests/llama_checkpoints.py: grouped-query attention, rotary,
  RMSNorm, SwiGLU): every name the bridge caches but its rotary tables (hook_cos, hook_sin,
  rotary_emb.hook_in: constants, kept without hook points in the twins) is in both twins'
  caches, and each tensor agrees to 1e-6: TransformerLens 4.3 is not float64-exact on Llama.
"""

import numpy as np
import pytest
import torch

import numpy_impl as npi
import torch_impl as tpi
from parity_tests.gpt2_checkpoints import hf_tokens, make_checkpoint

TOL = 1e-10  # float64, relative to the largest entry of the bridge's tensor
N_LAYERS = 3
BATCH, POS = 2, 9


def rel_err(ours, theirs):
    ours = ours.detach().cpu().numpy() if hasattr(ours, "detach") else np.asarray(ours)
    theirs = theirs.detach().cpu().numpy() if hasattr(theirs, "detach") else np.asarray(theirs)
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    return np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-300)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """(folder, the float64 Hugging Face model written there)."""
    path = tmp_path_factory.mktemp("gpt2_bridge")
    return path, make_checkpoint(path, n_layer=N_LAYERS)


@pytest.fixture(scope="module")
def folder(checkpoint):
    return checkpoint[0]


@pytest.fixture(scope="module")
def tokens():
    return np.random.default_rng(5).integers(1, 300, (BATCH, POS))


def boot(folder):
    """The bridge on ``folder``. TransformerLens is imported here, by the tests that boot it (3 s of
    imports), not as the file is collected by every pytest-xdist worker."""
    tl_bridge = pytest.importorskip(
        "transformer_lens.model_bridge",
        reason="TransformerLens 4.3 is not installed (pip install -r requirements-lens.txt)",
    )
    bridge = tl_bridge.TransformerBridge.boot_transformers(
        str(folder), dtype=torch.float64, device="cpu"
    )
    return bridge


@pytest.fixture(scope="module")
def runs(folder, tokens):
    """{"bridge" | "numpy" | "torch": (loss, cache as {name: ndarray})}."""
    models = {
        "bridge": boot(folder),
        "numpy": npi.Transformer.from_pretrained(folder),
        "torch": tpi.Transformer.from_pretrained(folder),
    }
    out = {}
    for side, model in models.items():
        given = hf_tokens(tokens) if side == "bridge" else tokens
        loss, cache = model.run_with_cache(given, return_type="loss", incl_bwd=True)
        out[side] = (
            float(loss.detach() if hasattr(loss, "detach") else loss),
            {
                name: np.asarray(
                    value.detach().cpu().numpy() if hasattr(value, "detach") else value
                )
                for name, value in cache.items()
            },
        )
    return out


def test_the_bridge_caches_264_names_and_both_twins_each_of_them(runs):
    bridge = runs["bridge"][1]
    assert (
        len(bridge) == 40 * 2 * N_LAYERS + 24
    )  # 264 for three blocks, as counted on TransformerLens 4.3
    for side in ("numpy", "torch"):
        names = runs[side][1]
        assert set(names) == set(bridge), (side, sorted(set(bridge) ^ set(names)))


@pytest.mark.parametrize("side", ["numpy", "torch"])
def test_every_activation_and_gradient_equals_the_bridge(runs, side):
    """Each cached tensor to 1e-10; masked scores and hook_resid_mid_grad as the module docstring
    says."""
    bridge_loss, bridge = runs["bridge"]
    loss, ours = runs[side]
    assert abs(loss - bridge_loss) <= TOL * abs(bridge_loss)
    errors = {}
    for name, theirs in bridge.items():
        if name.endswith("hook_resid_mid_grad"):
            continue  # the bridge's is ln2.hook_in's: see the two tests below
        mine = ours[name]
        if name.endswith("hook_attn_scores"):
            masked = np.isneginf(mine)
            assert (masked == ~np.tril(np.ones((POS, POS), dtype=bool))).all(), (
                name
            )  # exactly the future keys
            assert (theirs[masked] == np.finfo(np.float64).min).all(), name
            mine, theirs = np.where(masked, 0.0, mine), np.where(masked, 0.0, theirs)
        errors[name] = rel_err(mine, theirs)
    worst = max(errors, key=errors.get)
    assert errors[worst] < TOL, (worst, errors[worst])
    assert len(errors) == len(bridge) - N_LAYERS


@pytest.mark.parametrize("side", ["numpy", "torch"])
def test_resid_mid_grad_is_the_residual_streams_whole_gradient(runs, checkpoint, tokens, side):
    """hook_resid_mid_grad against float64 autograd on the Hugging Face model: the twins agree to
    1e-10; TransformerLens 4.3's value sits about 1 away (relative), because it is ln2.hook_in's."""
    hf = checkpoint[1]
    assert hf.transformer.wte.weight.dtype == torch.float64
    resid_mid = []

    def keep(module, args):  # ln_2's input is the residual stream between attention and MLP
        args[0].retain_grad()
        resid_mid.append(args[0])

    handles = [block.ln_2.register_forward_pre_hook(keep) for block in hf.transformer.h]
    hf.zero_grad()
    ids = hf_tokens(tokens)
    logits = hf(
        ids
    ).logits  # [batch, pos, d_vocab]; the loss by hand: transformers' own casts to float32
    torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).backward()
    for handle in handles:
        handle.remove()
    _, bridge = runs["bridge"]
    _, ours = runs[side]
    for i, tensor in enumerate(resid_mid):
        exact = tensor.grad.numpy()
        assert rel_err(ours[f"blocks.{i}.hook_resid_mid_grad"], exact) < TOL
        assert (
            rel_err(bridge[f"blocks.{i}.hook_resid_mid_grad"], exact) > 0.1
        )  # TransformerLens 4.3's differs
        assert (
            rel_err(ours[f"blocks.{i}.ln2.hook_in_grad"], bridge[f"blocks.{i}.hook_resid_mid_grad"])
            < TOL
        )


def test_an_alias_is_one_hook_point(folder, tokens):
    """hook_embed is embed.hook_out, blocks.0.hook_resid_pre is blocks.0.hook_in, ...: a hook on
    either name fires once and sees the point's own name, as on the bridge."""
    bridge = boot(folder)
    for model in (
        bridge,
        npi.Transformer.from_pretrained(folder),
        tpi.Transformer.from_pretrained(folder),
    ):
        seen = []
        record = lambda x, hook: seen.append(hook.name)  # noqa: E731
        model.run_with_hooks(
            hf_tokens(tokens) if model is bridge else tokens,
            fwd_hooks=[
                ("hook_embed", record),
                ("blocks.1.hook_resid_pre", record),
                ("blocks.0.attn.hook_q", record),
                ("blocks.2.mlp.hook_post", record),
            ],
        )
        assert seen == [
            "embed.hook_out",
            "blocks.0.attn.q.hook_out",
            "blocks.1.hook_in",
            "blocks.2.mlp.out.hook_in",
        ], (type(model).__name__, seen)


# TransformerLens 4.3 processes the weights in float32 even on a float64 model: each weight it
# leaves after enable_compatibility_mode() sits 4e-8 to 1.6e-7 (relative) from the float64 formula,
# measured on this checkpoint; so the comparison after processing is at 1e-6, and the twins' own
# processing is checked in float64 against the unprocessed model (below)
COMPAT_TOL = 1e-6


@pytest.mark.parametrize("twin", [npi.Transformer, tpi.Transformer])
def test_process_weights_keeps_the_predictions_in_float64(folder, tokens, twin):
    """log-softmax of the logits before and after process_weights() to 1e-12 (center_unembed moves
    every logit of a position alike, so the logits themselves change by a constant)."""
    before = twin.from_pretrained(folder)(tokens)
    after = twin.from_pretrained(folder).process_weights()(tokens)
    log_probs = [
        torch.log_softmax(
            torch.as_tensor(np.asarray(x.detach() if hasattr(x, "detach") else x)), -1
        )
        for x in (before, after)
    ]
    assert rel_err(log_probs[1], log_probs[0]) < 1e-12


@pytest.mark.parametrize("twin", [npi.Transformer, tpi.Transformer])
def test_process_weights_matches_compatibility_mode(folder, tokens, twin):
    """After process_weights() the logits and every cached activation equal the bridge's after
    enable_compatibility_mode() (fold_ln, center_writing_weights, center_unembed,
    fold_value_biases), to COMPAT_TOL."""
    bridge = boot(folder)
    bridge.enable_compatibility_mode(disable_warnings=True)
    model = twin.from_pretrained(folder).process_weights()
    theirs_logits, theirs = bridge.run_with_cache(hf_tokens(tokens))
    logits, ours = model.run_with_cache(tokens)
    assert rel_err(logits, theirs_logits) < COMPAT_TOL
    errors = {}
    for name, value in theirs.items():
        mine, value = ours[name], value
        if name.endswith("hook_attn_scores"):
            mine, value = (
                np.where(np.tril(np.ones((POS, POS), dtype=bool)), np.asarray(t), 0.0)
                for t in (mine.detach() if hasattr(mine, "detach") else mine, value.detach())
            )
        errors[name] = rel_err(mine, value)
    worst = max(errors, key=errors.get)
    assert errors[worst] < COMPAT_TOL, (worst, errors[worst])
    assert set(ours.keys()) == set(theirs.keys())


def test_list_hooks_and_the_hooks_context_as_on_the_bridge(folder, tokens):
    """list_hooks (under every name of a point, per direction, with or without permanent hooks) and
    hooks() as a context manager that removes what it added."""
    bridge = boot(folder)
    models = (
        bridge,
        npi.Transformer.from_pretrained(folder),
        tpi.Transformer.from_pretrained(folder),
    )
    listings = []
    for model in models:
        noop = lambda x, hook: None  # noqa: E731
        model.add_hook("hook_embed", noop)
        model.add_hook("blocks.1.attn.hook_q", noop, dir="bwd")
        model.add_perma_hook("blocks.0.hook_resid_pre", noop)
        listing = {}
        for dir in ("fwd", "bwd", "both"):
            for permanent in (True, False):
                found = model.list_hooks(dir=dir, including_permanent=permanent)
                listing[dir, permanent] = {name: len(handles) for name, handles in found.items()}
        listing["filtered"] = sorted(
            model.list_hooks(name_filter=lambda name: name.startswith("blocks.1"))
        )
        with model.hooks(fwd_hooks=[("blocks.2.hook_mlp_out", noop)]):
            listing["inside"] = sorted(model.list_hooks(dir="fwd"))
        listing["after"] = sorted(model.list_hooks(dir="fwd"))
        model.reset_hooks(including_permanent=True)
        listing["reset"] = model.list_hooks()
        listings.append(listing)
    assert listings[0]["both", True] == {
        "embed.hook_out": 1,
        "hook_embed": 1,
        "blocks.0.hook_in": 1,
        "blocks.0.hook_resid_pre": 1,
        "blocks.1.attn.q.hook_out": 1,
        "blocks.1.attn.hook_q": 1,
    }
    assert listings[1] == listings[0] and listings[2] == listings[0]


def test_names_filter_and_the_tokenizer_calls_as_on_the_bridge(folder, tokens):
    """run_with_cache's names_filter (a name, an alias, a list, a function) keeps the names the
    bridge keeps; to_tokens, to_str_tokens and to_string give what the bridge gives on the
    checkpoint's tokenizer."""
    bridge = boot(folder)
    filters = [
        "hook_embed",
        ["blocks.0.hook_resid_pre", "blocks.1.attn.q.hook_out", "blocks.2.mlp.hook_post"],
        lambda name: name.endswith(("hook_in", "hook_pattern")),
    ]
    text = "The cat sat on the mat."
    expected = [
        sorted(bridge.run_with_cache(hf_tokens(tokens), names_filter=f)[1].keys()) for f in filters
    ]
    ids = bridge.to_tokens(text)
    for model in (npi.Transformer.from_pretrained(folder), tpi.Transformer.from_pretrained(folder)):
        assert [
            sorted(model.run_with_cache(tokens, names_filter=f)[1].keys()) for f in filters
        ] == expected
        mine = model.to_tokens(text)
        assert np.array_equal(
            np.asarray(mine.detach() if hasattr(mine, "detach") else mine), ids.numpy()
        )
        assert model.to_str_tokens(text) == bridge.to_str_tokens(text)
        assert model.to_string(ids[0].numpy()) == bridge.to_string(ids[0])


@pytest.mark.parametrize("stop", [0, 1, -1, N_LAYERS])
def test_stop_at_layer_as_on_the_bridge(folder, tokens, stop):
    """forward and run_with_cache with stop_at_layer: the residual stream entering that block (the
    full output at n_layers), the same cached names, the same values; incl_bwd refused, as the
    bridge does."""
    bridge = boot(folder)
    theirs, their_cache = bridge.run_with_cache(hf_tokens(tokens), stop_at_layer=stop)
    for model in (npi.Transformer.from_pretrained(folder), tpi.Transformer.from_pretrained(folder)):
        assert rel_err(model(tokens, stop_at_layer=stop), theirs) < TOL
        out, cache = model.run_with_cache(tokens, stop_at_layer=stop)
        assert rel_err(out, theirs) < TOL
        assert set(cache.keys()) == set(their_cache.keys())
        with pytest.raises(ValueError, match="stop_at_layer"):
            model.run_with_cache(tokens, stop_at_layer=stop, incl_bwd=True)
    model = npi.Transformer.from_pretrained(folder)
    if stop != N_LAYERS:
        resid = model(tokens, stop_at_layer=stop)
        with pytest.raises(
            ValueError, match="stop_at_layer"
        ):  # the NumPy backward starts at the output only
            model.backward(np.random.default_rng(0).standard_normal(resid.shape))


@pytest.mark.parametrize("start", [0, 1, -1])
def test_start_at_layer_as_on_the_bridge(folder, tokens, start):
    """forward and run_with_cache from the residual stream the bridge stopped at (start_at_layer):
    the same logits, the same cached names (blocks before k left out), the same values; the
    gradient of that residual stream (the NumPy backward returns it) equals the bridge's."""
    bridge = boot(folder)
    resid = bridge(hf_tokens(tokens), stop_at_layer=start).detach()  # [batch, pos, d_model]
    theirs, their_cache = bridge.run_with_cache(resid, start_at_layer=start)
    dout = np.random.default_rng(3).standard_normal(tuple(theirs.shape))
    given = resid.clone().requires_grad_()
    bridge(given, start_at_layer=start).backward(torch.from_numpy(dout))
    for model in (npi.Transformer.from_pretrained(folder), tpi.Transformer.from_pretrained(folder)):
        ours = (
            resid.clone().requires_grad_() if isinstance(model, tpi.Transformer) else resid.numpy()
        )
        out, cache = model.run_with_cache(ours, start_at_layer=start)
        assert rel_err(out, theirs) < TOL
        assert set(cache.keys()) == set(their_cache.keys())
        for name in (
            "blocks.2.hook_resid_pre",
            "ln_final.hook_in",
            f"blocks.{start % N_LAYERS}.mlp.hook_post",
        ):
            assert rel_err(cache[name], their_cache[name]) < TOL, name
        if isinstance(model, tpi.Transformer):
            model(ours, start_at_layer=start).backward(torch.from_numpy(dout))
            ours_grad = ours.grad
        else:
            model(ours, start_at_layer=start)
            ours_grad = model.backward(dout)
        assert rel_err(ours_grad, given.grad) < TOL


# --- a Llama checkpoint: grouped-query attention, rotary, RMSNorm, SwiGLU ---

LLAMA_TOL = 1e-6  # TransformerLens 4.3 is not float64-exact on Llama (its logits sit ~7e-8 away)
# the bridge's rotary tables (cos, sin and the rotary module's input): constants of the position,
# with no gradient, which the twins keep as fixed tables without hook points
ROTARY_TABLES = ("hook_cos", "hook_sin", "rotary_emb.hook_in")


@pytest.fixture(scope="module")
def llama_runs(tmp_path_factory):
    """{"bridge" | "numpy" | "torch": (loss, cache as {name: ndarray})}, a random float64 Llama."""
    from parity_tests.llama_checkpoints import exact_float64, make_llama_checkpoint

    folder = tmp_path_factory.mktemp("llama_bridge")
    make_llama_checkpoint(folder)
    tokens = np.random.default_rng(6).integers(1, 30, (BATCH, POS))
    with exact_float64():
        models = {
            "bridge": boot(folder),
            "numpy": npi.Transformer.from_pretrained(folder),
            "torch": tpi.Transformer.from_pretrained(folder),
        }
        out = {}
        for side, model in models.items():
            given = torch.as_tensor(tokens) if side == "bridge" else tokens
            loss, cache = model.run_with_cache(given, return_type="loss", incl_bwd=True)
            out[side] = (
                float(loss.detach() if hasattr(loss, "detach") else loss),
                {name: as_array(value) for name, value in cache.items()},
            )
    return out


def as_array(value):
    return np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value)


def test_a_llama_checkpoint_caches_the_bridges_names(llama_runs):
    """Every name the bridge caches on Llama is in both twins' caches, but the rotary tables'."""
    bridge = llama_runs["bridge"][1]
    expected = {name for name in bridge if not name.endswith(ROTARY_TABLES)}
    assert "blocks.0.attn.hook_rot_q" in expected and "blocks.0.mlp.gate.hook_out_grad" in expected
    for side in ("numpy", "torch"):
        names = set(llama_runs[side][1])
        assert expected <= names, (side, sorted(expected - names))
        extra = {name.split(".")[-1] for name in names - expected}
        assert extra <= {"hook_hidden_states", "hook_hidden_states_grad"}, (side, extra)


@pytest.mark.parametrize("side", ["numpy", "torch"])
def test_a_llama_checkpoints_activations_and_gradients_equal_the_bridge(llama_runs, side):
    """Each cached tensor to 1e-6 (TransformerLens 4.3 on Llama is not float64-exact); masked
    scores and hook_resid_mid_grad as on GPT-2 (module docstring)."""
    bridge_loss, bridge = llama_runs["bridge"]
    loss, ours = llama_runs[side]
    assert abs(loss - bridge_loss) <= LLAMA_TOL * abs(bridge_loss)
    errors = {}
    for name, theirs in bridge.items():
        if name.endswith(ROTARY_TABLES) or name.endswith("hook_resid_mid_grad"):
            continue
        mine = ours[name]
        if name.endswith("hook_attn_scores"):
            masked = np.isneginf(mine)
            assert (masked == ~np.tril(np.ones((POS, POS), dtype=bool))).all(), name
            mine, theirs = np.where(masked, 0.0, mine), np.where(masked, 0.0, theirs)
        errors[name] = rel_err(mine, theirs)
    worst = max(errors, key=errors.get)
    assert errors[worst] < LLAMA_TOL, (worst, errors[worst])  # 2.3e-7 measured (attention's grads)
    for i in range(2):  # the bridge's hook_resid_mid_grad is ln2.hook_in's here too
        mine = ours[f"blocks.{i}.ln2.hook_in_grad"]
        assert rel_err(mine, bridge[f"blocks.{i}.hook_resid_mid_grad"]) < LLAMA_TOL
