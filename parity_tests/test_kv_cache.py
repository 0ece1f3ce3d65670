"""The key-value cache of ``generate`` changes nothing: cached logits equal the whole sequence's.

Each architecture the twins read (GPT-2 with learned and with sinusoidal positions, Llama with
rotary positions and grouped-query attention, GPT-NeoX with a parallel block and partial rotary)
runs a prompt, then one token at a time until the sequence reaches n_ctx exactly, with a batch of
three and random weights. In float64 every step's logits equal those of the uncached run over the
whole sequence to 1e-13 (relative: max |cached - uncached| / max |uncached|), in both twins, and
the twins' cached logits agree to the parity tolerance; greedy tokens and seeded samples are the
same with the cache and without it, and equal ``transformers``' greedy ``generate`` on the same
checkpoint. In float32 the cached logits drift from the uncached ones by rounding only, measured
and held under a stated bound. Bad caches are refused with a ValueError or TypeError naming the
argument.
"""

import numpy as np
import pytest
import torch

import numpy_impl as npi
import torch_impl as pti
from foundation.contract.boundary import NonFiniteError
from parity_tests.helpers import LLAMA, TOL, load_into_twin, randomize, rel_err

EXACT = 1e-13  # float64: cached vs uncached logits, relative
# float32: cached vs uncached logits, relative. Measured 1.8e-7 to 2.7e-7 on these shapes, both
# twins (a few ulps: a one-row matrix product adds in another order than the whole sequence's);
# bounded at about ten times the largest measured
DRIFT32 = 3e-6
BATCH = 3
N_CTX = 9
PROMPT = 4

COMMON = dict(d_vocab=17, d_model=16, n_heads=4, d_mlp=24, n_layers=2, n_ctx=N_CTX)
ARCHITECTURES = {
    "gpt2-learned": dict(act_fn="gelu_new", positional="learned"),
    "sinusoidal-post-norm": dict(act_fn="relu", positional="sinusoidal", normalization="post"),
    "llama-grouped": dict(d_head=6, **LLAMA),
    "neox-parallel-partial-rotary": dict(
        positional_embedding_type="rotary",
        rotary_dim=2,
        rotary_base=500.0,
        act_fn="gelu",
        parallel_attn_mlp=True,
    ),
}


def make_models(arch, dtype="float64", seed=0):
    cfg = npi.TransformerConfig(**COMMON, **ARCHITECTURES[arch], dtype=dtype)
    model = npi.Transformer(cfg)
    randomize(model, seed)
    twin = pti.Transformer(cfg)
    load_into_twin(model, twin)
    return model, twin


def step_by_step(model, tokens, cache_class, native):
    """The prompt, then one token per forward, all with one cache -> every position's logits."""
    cache = cache_class.init_cache(model.cfg, batch_size=tokens.shape[0])
    steps = [model(native(tokens[:, :PROMPT]), past_kv_cache=cache)]  # [batch, PROMPT, d_vocab]
    for p in range(PROMPT, tokens.shape[1]):
        steps.append(
            model(native(tokens[:, p : p + 1]), past_kv_cache=cache)
        )  # [batch, 1, d_vocab]
    return [to_numpy(step) for step in steps], cache


def to_numpy(x):
    return x.detach().numpy() if isinstance(x, torch.Tensor) else x


SIDES = {
    "numpy": (lambda pair: pair[0], npi.HookedTransformerKeyValueCache, lambda t: t),
    "torch": (lambda pair: pair[1], pti.HookedTransformerKeyValueCache, torch.from_numpy),
}


def uncached_and_cached(arch, dtype, side):
    pair = make_models(arch, dtype)
    pick, cache_class, native = SIDES[side]
    model = pick(pair)
    tokens = np.random.default_rng(1).integers(0, COMMON["d_vocab"], (BATCH, N_CTX))
    with torch.no_grad():
        whole = to_numpy(model(native(tokens)))  # [batch, n_ctx, d_vocab]
        steps, cache = step_by_step(model, tokens, cache_class, native)
    return whole, steps, cache


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_cached_logits_equal_the_whole_sequences_at_every_step_in_float64(arch, side):
    whole, steps, cache = uncached_and_cached(arch, "float64", side)
    assert steps[0].shape == (BATCH, PROMPT, COMMON["d_vocab"])
    assert rel_err(steps[0], whole[:, :PROMPT]) <= EXACT
    for p, step in enumerate(steps[1:], start=PROMPT):
        assert step.shape == (BATCH, 1, COMMON["d_vocab"])
        assert rel_err(step, whole[:, p : p + 1]) <= EXACT, f"position {p}"
    # the sequence reached n_ctx exactly, and the cache holds every position of every layer
    assert cache.pos_so_far == N_CTX and len(cache) == COMMON["n_layers"]
    n_kv = ARCHITECTURES[arch].get("n_key_value_heads", COMMON["n_heads"])
    d_head = ARCHITECTURES[arch].get("d_head", COMMON["d_model"] // COMMON["n_heads"])
    for entry in cache.entries:
        assert tuple(entry.past_keys.shape) == (BATCH, N_CTX, n_kv, d_head)  # not repeated
        assert tuple(entry.past_values.shape) == (BATCH, N_CTX, n_kv, d_head)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_the_twins_cached_logits_agree(arch):
    _, np_steps, np_cache = uncached_and_cached(arch, "float64", "numpy")
    _, torch_steps, torch_cache = uncached_and_cached(arch, "float64", "torch")
    for ours, theirs in zip(np_steps, torch_steps):
        assert rel_err(ours, theirs) <= TOL["float64"]
    for ours, theirs in zip(np_cache.entries, torch_cache.entries):
        assert rel_err(ours.past_keys, theirs.past_keys.numpy()) <= TOL["float64"]
        assert rel_err(ours.past_values, theirs.past_values.numpy()) <= TOL["float64"]


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_float32_drift_of_the_cache_stays_within_rounding(arch, side):
    whole, steps, _ = uncached_and_cached(arch, "float32", side)
    cached = np.concatenate(steps, axis=1)  # [batch, n_ctx, d_vocab]
    drift = rel_err(cached, whole)
    assert drift <= DRIFT32, f"{arch} {side}: {drift:.1e}"


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("arch", ["gpt2-learned", "llama-grouped", "neox-parallel-partial-rotary"])
def test_generate_draws_the_same_tokens_with_and_without_the_cache(arch, side):
    model = SIDES[side][0](make_models(arch))
    prompt = np.random.default_rng(2).integers(0, COMMON["d_vocab"], (BATCH, 3))
    new = N_CTX - 3  # up to n_ctx exactly
    for sampling in (dict(do_sample=False), dict(do_sample=True, seed=5, temperature=2.0)):
        cached = model.generate(prompt, max_new_tokens=new, verbose=False, **sampling)
        plain = model.generate(
            prompt, max_new_tokens=new, verbose=False, use_past_kv_cache=False, **sampling
        )
        assert np.array_equal(to_numpy(cached), to_numpy(plain)), sampling
        assert to_numpy(cached).shape == (BATCH, N_CTX)


def test_hooks_fire_on_a_cached_step_with_this_steps_keys_and_values():
    model, _ = make_models("llama-grouped")
    tokens = np.random.default_rng(3).integers(0, COMMON["d_vocab"], (BATCH, 5))
    cache = npi.HookedTransformerKeyValueCache.init_cache(model.cfg, batch_size=BATCH)
    model(tokens[:, :4], past_kv_cache=cache)
    _, step = model.run_with_cache(tokens[:, 4:], past_kv_cache=cache)
    _, whole = model.run_with_cache(tokens)
    assert step["blocks.1.attn.hook_k"].shape == (BATCH, 1, 2, 6)  # this step's, kv heads
    assert step["blocks.1.attn.hook_pattern"].shape == (BATCH, 4, 1, 5)  # [batch, head, 1, k_pos]
    for name in (
        "blocks.1.attn.hook_rot_k",
        "blocks.1.attn.hook_v",
    ):  # [batch, pos, kv_head, d_head]
        assert rel_err(step[name], whole[name][:, 4:5]) <= EXACT, name
    for name in ("blocks.1.attn.hook_attn_scores", "blocks.1.attn.hook_pattern"):  # the last query
        assert rel_err(step[name], whole[name][:, :, 4:5]) <= EXACT, name


def test_a_frozen_cache_reads_and_keeps_nothing():
    model, _ = make_models("gpt2-learned")
    tokens = np.random.default_rng(4).integers(0, COMMON["d_vocab"], (BATCH, 6))
    cache = npi.HookedTransformerKeyValueCache.init_cache(model.cfg, batch_size=BATCH)
    model(tokens[:, :5], past_kv_cache=cache)
    cache.freeze()
    first = model(tokens[:, 5:], past_kv_cache=cache)
    again = model(tokens[:, 5:], past_kv_cache=cache)
    assert cache.pos_so_far == 5 and np.array_equal(first, again)
    assert rel_err(first, model(tokens)[:, 5:]) <= EXACT
    cache.unfreeze()
    model(tokens[:, 5:], past_kv_cache=cache)
    assert cache.pos_so_far == 6


def test_the_numpy_backward_refuses_a_cached_forward():
    model, _ = make_models("gpt2-learned")
    tokens = np.random.default_rng(5).integers(0, COMMON["d_vocab"], (BATCH, 4))
    cache = npi.HookedTransformerKeyValueCache.init_cache(model.cfg, batch_size=BATCH)
    out = model(tokens, past_kv_cache=cache)
    dout = np.random.default_rng(6).standard_normal(out.shape)
    with pytest.raises(ValueError, match="key-value cache"):
        model.backward(dout)
    with pytest.raises(ValueError, match="key-value cache"):
        model.blocks[0].attn.backward(np.random.default_rng(7).standard_normal((BATCH, 4, 16)))
    model(tokens)  # an uncached forward: its backward runs
    model.backward(dout)


def test_a_positional_embedding_at_an_offset_reads_and_trains_the_rows_it_offsets_to():
    model, twin = make_models("gpt2-learned")
    tokens = np.zeros((BATCH, 3), dtype=np.int64)
    out = model.pos_embed(tokens, past_kv_pos_offset=5)  # [batch, 3, d_model]
    assert np.array_equal(out, np.broadcast_to(model.pos_embed.W_pos.data[5:8], out.shape))
    out_t = twin.pos_embed(torch.from_numpy(tokens), past_kv_pos_offset=5)
    assert rel_err(out, out_t) == 0
    dout = np.random.default_rng(10).standard_normal(out.shape)
    model.zero_grad()
    model.pos_embed.backward(dout)
    grad = model.pos_embed.W_pos.grad  # [n_ctx, d_model]: rows 5, 6, 7 only
    assert rel_err(grad[5:8], dout.sum(axis=0)) <= EXACT
    assert not grad[:5].any() and not grad[8:].any()


# ---------------------------------------------------------------- transformers' generate


def hf_greedy(hf_model, prompt, new):
    """transformers' greedy ``generate`` (with its own key-value cache), every token forced."""
    from parity_tests.llama_checkpoints import exact_float64

    with exact_float64(), torch.no_grad():
        return hf_model.generate(
            torch.from_numpy(prompt),
            attention_mask=torch.ones(prompt.shape, dtype=torch.int64),
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        ).numpy()


@pytest.mark.parametrize("family", ["gpt2", "llama", "gpt_neox"])
def test_greedy_tokens_equal_transformers_generate(family, tmp_path):
    if family == "gpt2":
        from parity_tests.gpt2_checkpoints import SMALL, make_checkpoint

        hf_model = make_checkpoint(tmp_path, tokenizer=False)
        n_ctx, d_vocab = SMALL["n_positions"], SMALL["vocab_size"]
    else:
        from parity_tests.llama_checkpoints import SMALL, make_llama_checkpoint

        hf_model = make_llama_checkpoint(tmp_path, tokenizer=False, family=family)
        n_ctx, d_vocab = SMALL["max_position_embeddings"], SMALL["vocab_size"]
    prompt = np.random.default_rng(9).integers(0, d_vocab, (2, 3))
    new = n_ctx - prompt.shape[1]  # up to n_ctx exactly
    theirs = hf_greedy(hf_model, prompt, new)
    for side in (npi, pti):
        model = side.Transformer.from_pretrained(tmp_path)
        ours = model.generate(prompt, max_new_tokens=new, do_sample=False, verbose=False)
        assert np.array_equal(to_numpy(ours), theirs), side.__name__


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("side", SIDES)
def test_bad_caches_are_refused_naming_the_argument(side):
    pick, cache_class, native = SIDES[side]
    model = pick(make_models("gpt2-learned"))
    other = pick(make_models("gpt2-learned", seed=1))
    tokens = native(np.random.default_rng(8).integers(0, COMMON["d_vocab"], (BATCH, N_CTX)))
    cfg = model.cfg
    with torch.no_grad():
        other_cfg = npi.TransformerConfig(**{**COMMON, "d_mlp": 8}, **ARCHITECTURES["gpt2-learned"])
        with pytest.raises(ValueError, match="past_kv_cache.*another config"):
            model(tokens[:, :2], past_kv_cache=cache_class.init_cache(other_cfg, batch_size=BATCH))
        with pytest.raises(ValueError, match="past_kv_cache holds a batch of 2.*tokens holds 3"):
            model(tokens[:, :2], past_kv_cache=cache_class.init_cache(cfg, batch_size=2))
        cache = cache_class.init_cache(cfg, batch_size=BATCH)
        model(tokens[:, :5], past_kv_cache=cache)
        with pytest.raises(ValueError, match="past_kv_cache holds 5 positions.*past n_ctx=9"):
            model(tokens[:, :5], past_kv_cache=cache)
        assert cache.pos_so_far == 5  # refused before anything ran
        with pytest.raises(ValueError, match="past_kv_cache holds another model's"):
            other(tokens[:, 5:6], past_kv_cache=cache)
        with pytest.raises(ValueError, match="past_kv_cache with stop_at_layer"):
            model(tokens[:, 5:6], past_kv_cache=cache, stop_at_layer=1)
        twin_class = (pti if side == "numpy" else npi).HookedTransformerKeyValueCache
        with pytest.raises(TypeError, match="past_kv_cache\\[0\\].past_keys must be"):
            model(tokens[:, :2], past_kv_cache=twin_class.init_cache(cfg, batch_size=BATCH))
        with pytest.raises(TypeError, match="past_kv_cache must be None or a"):
            model(tokens[:, :2], past_kv_cache={"keys": []})
        with pytest.raises(ValueError, match="past_kv_cache_entry holds a batch of 3.*x holds 1"):
            model.blocks[0](native(np.zeros((1, 1, 16))), past_kv_cache_entry=cache[0])
        with pytest.raises(ValueError, match="past_kv_pos_offset=8 puts.*past n_ctx=9"):
            model.pos_embed(tokens[:, :2], past_kv_pos_offset=8)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        cache_class.init_cache(cfg, batch_size=0)
    if side == "torch":  # a cache on another device than the model's ("meta": no GPU needed)
        elsewhere = cache_class.init_cache(cfg, device="meta", batch_size=BATCH)
        with (
            torch.no_grad(),
            pytest.raises(
                ValueError,
                match="past_kv_cache is on meta, the Transformer.s weights on cpu.*init_cache.cfg",
            ),
        ):
            model(tokens[:, :2], past_kv_cache=elsewhere)
        with (
            torch.no_grad(),
            pytest.raises(ValueError, match="past_kv_cache_entry is on meta.*init_cache_entry"),
        ):
            model.blocks[0](
                torch.zeros(BATCH, 1, 16, dtype=torch.float64), past_kv_cache_entry=elsewhere[0]
            )
    with pytest.raises(ValueError, match="needs a causal model"):
        bidirectional = npi.TransformerConfig(**COMMON, causal=False)
        pick((npi.Transformer(bidirectional), pti.Transformer(bidirectional)))(
            tokens[:, :2], past_kv_cache=cache_class.init_cache(bidirectional, batch_size=BATCH)
        )


@pytest.mark.parametrize("side", SIDES)
def test_caches_changed_by_hand_are_refused_naming_the_argument(side):
    pick, cache_class, native = SIDES[side]
    model = pick(make_models("gpt2-learned"))
    cfg = model.cfg
    tokens = native(np.random.default_rng(8).integers(0, COMMON["d_vocab"], (BATCH, 3)))
    as_float32 = (lambda a: a.astype(np.float32)) if side == "numpy" else (lambda t: t.float())

    def changed(change, steps=0):
        """A new cache, run on ``steps`` tokens, then changed by hand."""
        cache = cache_class.init_cache(cfg, batch_size=BATCH)
        if steps:
            model(tokens[:, :steps], past_kv_cache=cache)
        change(cache)
        return cache

    def set_entry(layer, entry):
        return lambda cache: cache.entries.__setitem__(layer, entry)

    one_step = changed(lambda cache: None, steps=1)
    bad = {
        r"past_kv_cache has 1 entries; the model has 2 layers": (
            ValueError,
            changed(lambda cache: cache.entries.pop()),
        ),
        "past_kv_cache's layers hold different numbers of positions": (
            ValueError,
            changed(set_entry(1, cache_class.init_cache(cfg, batch_size=BATCH)[1]), steps=1),
        ),
        r"past_kv_cache\[0\] must be a HookedTransformerKeyValueCacheEntry, got str": (
            TypeError,
            changed(set_entry(0, "keys")),
        ),
        r"past_kv_cache\[0\].past_keys must be float64, got float32": (
            ValueError,
            changed(lambda cache: setattr(cache[0], "past_keys", as_float32(cache[0].past_keys))),
        ),
        r"past_kv_cache\[0\].past_values must have shape \[batch, pos_so_far, 4, 4\]": (
            ValueError,
            changed(lambda cache: setattr(cache[0], "past_values", cache[0].past_values[:, :, :3])),
        ),
        r"past_kv_cache\[0\]: past_keys \[3, 0, 4, 4\] and past_values \[3, 1, 4, 4\] differ": (
            ValueError,
            changed(lambda cache: setattr(cache[0], "past_values", one_step[0].past_values)),
        ),
    }
    x = native(np.zeros((BATCH, 1, COMMON["d_model"])))
    with torch.no_grad():
        for message, (error, cache) in bad.items():
            with pytest.raises(error, match=message):
                model(tokens[:, 1:2], past_kv_cache=cache)
        with pytest.raises(TypeError, match="past_kv_cache_entry must be None or a .*, got str"):
            model.blocks[0](x, past_kv_cache_entry="keys")
        bidirectional = npi.TransformerConfig(**COMMON, causal=False)
        block = (npi if side == "numpy" else pti).TransformerBlock(bidirectional)
        entry = cache_class.init_cache(bidirectional, batch_size=BATCH)[0]
        with pytest.raises(ValueError, match="past_kv_cache_entry needs a causal model"):
            block(x, past_kv_cache_entry=entry)
    if side == "numpy":
        with pytest.raises(ValueError, match="device='cuda': the NumPy model's arrays live on the"):
            cache_class.init_cache(cfg, device="cuda", batch_size=BATCH)


def _multiply_weight(model, name, factor):
    """Scale one weight in place, in either twin."""
    weight = dict(model.named_parameters())[name]
    if isinstance(weight, torch.Tensor):
        with torch.no_grad():
            weight.mul_(factor)
    else:
        weight.data *= factor
        weight.changed()


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("side", SIDES)
def test_a_step_that_overflows_or_raises_leaves_the_cache_as_it_was(side):
    pick, cache_class, native = SIDES[side]
    model = pick(make_models("llama-grouped", "float32"))
    tokens = np.random.default_rng(5).integers(0, COMMON["d_vocab"], (BATCH, PROMPT + 1))
    cache = cache_class.init_cache(model.cfg, batch_size=BATCH)
    with torch.no_grad():
        model(native(tokens[:, :PROMPT]), past_kv_cache=cache)
    kept = [to_numpy(entry.past_keys).copy() for entry in cache.entries]

    def assert_as_it_was():
        assert cache.pos_so_far == PROMPT
        for entry, keys in zip(cache.entries, kept, strict=True):
            assert np.array_equal(to_numpy(entry.past_keys), keys)

    # a hook that raises in the last block: the first block had appended this step's keys
    def stop(value, hook):
        raise RuntimeError("a hook stopped the run")

    with torch.no_grad(), model.hooks(fwd_hooks=[("blocks.1.attn.hook_z", stop)]):
        with pytest.raises(RuntimeError, match="a hook stopped the run"):
            model(native(tokens[:, PROMPT:]), past_kv_cache=cache)
    assert_as_it_was()
    # logits that overflow float32 from finite weights: the guard replays the step to name where
    # (the replay appends this step once, not twice), raises, and the cache is as it was
    _multiply_weight(model, "ln_final.w", 1e30)
    _multiply_weight(model, "unembed.W_U", 1e30)
    with torch.no_grad(), pytest.raises(NonFiniteError, match="although every input"):
        model(native(tokens[:, PROMPT:]), past_kv_cache=cache)
    assert_as_it_was()
    # and the cache goes on: the next step runs at position PROMPT
    _multiply_weight(model, "unembed.W_U", 1e-30)
    _multiply_weight(model, "ln_final.w", 1e-30)
    with torch.no_grad():
        model(native(tokens[:, PROMPT:]), past_kv_cache=cache)
    assert cache.pos_so_far == PROMPT + 1
