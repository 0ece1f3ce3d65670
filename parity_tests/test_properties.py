"""Property tests: over random valid configs, the twins agree and the weights file round-trips.

Hypothesis draws every config field (tiny and odd sizes included: d_model 1, one head of
width 1, one position, attention-only, no LayerNorm, an encoder without unembedding ...),
random weights, tokens and upstream gradient, and checks in float64 that

- the twins' outputs agree to ``TOL["float64"]`` and every parameter gradient to that times
  ``n_layers`` (rounding grows with depth: a three-layer model without LayerNorm, whose
  attention saturates, reaches 1.02e-12 in ``W_K``);
- saving from either twin and loading into either gives the same config and every array
  bit for bit.

A gradient whose exact value is zero (b_K's always; in tiny configs others too, e.g. W_Q's
when every query sees a single key) holds only rounding noise in both twins, so its own size
is no yardstick. Odd configs make near-zero ones too: through a LayerNorm of width 2 the output
is +-1 whatever the input, so every gradient below it is a difference of terms as large as the
model's largest gradient, cancelling to 1e-6 .. 1e-4 of it (what remains comes from eps; the
twins then differ by about 4e-16 of the largest gradient, 2e-12 of their own size). Both
kinds carry rounding error relative to the largest gradient, not to themselves, so each
gradient is measured against max(its own largest entry, ``NOISE`` times the model's largest
gradient). A wrong gradient is still caught: an error of its own size in a tensor at 1e-6 of
the largest is 1e-4 of the yardstick, far above 1e-12.

Two Hypothesis profiles: the default run draws ``QUICK`` configs (a few seconds); ``pytest -m
slow`` draws ``LONG`` more. Both are derandomized, so every run, in CI too, draws the same ones.
"""

import os
import tempfile

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import numpy_impl as npi
import torch_impl as pti
from foundation.contract.agreement import TOL, rel_err
from parity_tests.helpers import randomize

QUICK, LONG = 10, 250
NOISE = 1e-2
settings.register_profile(
    "twins-quick",
    max_examples=QUICK,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "twins-long",
    max_examples=LONG,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@st.composite
def configs(draw):
    n_heads = draw(st.integers(1, 3))
    explicit_head = draw(st.booleans())
    d_model = draw(st.integers(1, 9)) if explicit_head else n_heads * draw(st.integers(1, 3))
    return npi.TransformerConfig(
        d_vocab=draw(st.integers(1, 7)),
        d_model=d_model,
        n_heads=n_heads,
        n_layers=draw(st.integers(1, 3)),
        n_ctx=draw(st.integers(1, 5)),
        d_mlp=draw(st.one_of(st.none(), st.integers(1, 6))),
        d_head=draw(st.integers(1, 4)) if explicit_head else None,
        act_fn=draw(st.sampled_from(["relu", "gelu_new"])),
        normalization=draw(st.sampled_from(["pre", "post", None])),
        positional=draw(st.sampled_from(["learned", "sinusoidal"])),
        causal=draw(st.booleans()),
        attn_only=draw(st.booleans()),
        unembed=draw(st.booleans()),
    )


@st.composite
def cases(draw):
    cfg = draw(configs())
    batch = draw(st.integers(1, 3))
    pos = draw(st.integers(1, cfg.n_ctx))
    seed = draw(st.integers(0, 2**16))
    return cfg, batch, pos, seed


def check_twins_agree(case):
    cfg, batch, pos, seed = case
    rng = np.random.default_rng(seed)
    np_model = npi.Transformer(cfg, seed=seed)
    randomize(np_model, seed=seed)
    torch_model = pti.Transformer.from_twin(np_model)
    tokens = rng.integers(0, cfg.d_vocab, size=(batch, pos))
    out = np_model(tokens)
    twin_out = torch_model(torch.from_numpy(tokens))
    assert rel_err(out, twin_out) <= TOL["float64"], f"outputs differ for {cfg}"
    dout = rng.standard_normal(out.shape)
    np_model.zero_grad()
    np_model.backward(dout)
    twin_out.backward(torch.from_numpy(dout))
    expected = {name: p.grad.detach().numpy() for name, p in torch_model.named_parameters()}
    largest = max(float(np.abs(g).max()) for g in expected.values())
    # rounding grows with depth (three layers without LayerNorm: 1.02e-12)
    tolerance = TOL["float64"] * cfg.n_layers
    for name, p in np_model.named_parameters():
        # a (near-)zero gradient: rounding noise
        scale = max(float(np.abs(expected[name]).max()), NOISE * largest)
        assert rel_err(p.grad, expected[name], scale) <= tolerance, f"grad {name} differs for {cfg}"


def check_round_trip(case):
    cfg, _, _, seed = case
    np_model = npi.Transformer(cfg, seed=seed)
    randomize(np_model, seed=seed)
    torch_model = pti.Transformer.from_twin(np_model)
    with tempfile.TemporaryDirectory() as folder:
        for saver in (np_model, torch_model):
            path = os.path.join(folder, "w.npz")
            saver.save(path)
            for loader in (npi.Transformer, pti.Transformer):
                loaded = loader.load(path)
                assert loaded.cfg == cfg
                state = {
                    k: v.detach().numpy() if hasattr(v, "detach") else v
                    for k, v in loaded.state_dict().items()
                }
                assert list(state) == list(np_model.state_dict())
                for name, value in np_model.state_dict().items():
                    assert (
                        state[name].dtype == value.dtype
                        and state[name].tobytes() == value.tobytes()
                    ), name


@settings(settings.get_profile("twins-quick"))
@given(cases())
def test_twins_agree_on_random_configs(case):
    check_twins_agree(case)


@settings(settings.get_profile("twins-quick"))
@given(cases())
def test_weights_round_trip_bit_for_bit(case):
    check_round_trip(case)


@pytest.mark.slow
@settings(settings.get_profile("twins-long"))
@given(cases())
def test_twins_agree_on_many_random_configs(case):
    check_twins_agree(case)


@pytest.mark.slow
@settings(settings.get_profile("twins-long"))
@given(cases())
def test_weights_round_trip_bit_for_bit_many(case):
    check_round_trip(case)
