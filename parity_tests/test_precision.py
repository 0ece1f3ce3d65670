"""The precision ladder (interp/precision.py) and the dtypes under it: float16 and bfloat16 models,
checkpoints loaded by exact upcast, and what is refused.

- A float16 or bfloat16 checkpoint loads into float32 with exactly its values: the same state dict
  as a float32 file holding the upcast values, in GPT-2, Llama and GPT-NeoX layouts.
- The ladder's float64 rung is exactly zero, its float32 rung within the float32 parity tolerance
  (TOL["float32"]), its float16 and bfloat16 rungs finite and within LOOSE_BOUND, on tiny random
  GPT-2- and Llama-shaped models with random weights, in both twins.
- A formula that overflows float16 is reported as a result, naming the hook point.
- Bad input: an unknown dtype, bfloat16 in NumPy, an unknown twin.
"""

import dataclasses

import numpy as np
import pytest
import safetensors.torch
import torch

import numpy_impl as npi
import torch_impl as pti
from foundation.contract.agreement import TOL
from foundation.files.pretrained import read_pretrained
from foundation.files.tiny import write_checkpoint
from interp.precision import LOOSE_BOUND, accumulation, precision_ladder
from parity_tests.helpers import randomize

# ---------------------------------------------------------------- checkpoints: exact upcast


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("arch", ["gpt2", "llama", "gpt_neox"])
def test_half_precision_checkpoints_load_by_exact_upcast(tmp_path, arch, dtype):
    # torch rounds a float64 checkpoint to the dtype and writes it; a float32 copy holds the same
    # values upcast: both folders must give the same float32 state dict, bit for bit
    write_checkpoint(tmp_path / "wide", arch=arch, dtype="float64", layers=2)
    tensors = safetensors.torch.load_file(tmp_path / "wide" / "model.safetensors")
    rounded = {name: t.to(getattr(torch, dtype)) for name, t in tensors.items()}
    for folder, values in (
        ("half", rounded),
        ("upcast", {n: t.float() for n, t in rounded.items()}),
    ):
        write_checkpoint(tmp_path / folder, arch=arch, dtype="float64", layers=2)  # config, vocab
        safetensors.torch.save_file(values, tmp_path / folder / "model.safetensors")
    cfg, state, _ = read_pretrained(tmp_path / "half")
    cfg_upcast, expected, _ = read_pretrained(tmp_path / "upcast")
    assert cfg == cfg_upcast and cfg.dtype == "float32"
    assert state.keys() == expected.keys()
    for name, value in state.items():
        assert value.dtype == np.float32 and np.array_equal(value, expected[name]), name
    # both twins hold exactly those values
    for twin in (npi, pti):
        model = twin.Transformer.from_pretrained(tmp_path / "half")
        for name, value in model.state_dict().items():
            assert np.array_equal(np.asarray(value), expected[name]), (twin.__name__, name)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_the_tiny_writer_rounds_to_bfloat16_as_torch_does(tmp_path, arch):
    write_checkpoint(tmp_path / "wide", arch=arch, dtype="float64")
    write_checkpoint(tmp_path / "bf16", arch=arch, dtype="bfloat16")
    wide = safetensors.torch.load_file(tmp_path / "wide" / "model.safetensors")
    written = safetensors.torch.load_file(tmp_path / "bf16" / "model.safetensors")
    assert written.keys() == wide.keys()
    for name, value in wide.items():
        assert written[name].dtype == torch.bfloat16
        assert torch.equal(written[name], value.float().bfloat16()), name


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_a_bfloat16_twin_saves_and_loads_its_own_values(tmp_path, suffix):
    cfg = npi.TransformerConfig(d_vocab=11, d_model=12, n_heads=3, n_layers=1, n_ctx=6)
    twin = pti.Transformer(dataclasses.replace(cfg, dtype="bfloat16"), seed=3)
    twin.save(tmp_path / f"w{suffix}")
    again = pti.Transformer.load(tmp_path / f"w{suffix}")
    assert again.cfg == twin.cfg
    for (name, a), (_, b) in zip(twin.state_dict().items(), again.state_dict().items()):
        assert a.dtype == b.dtype == torch.bfloat16 and torch.equal(a, b), name
    with pytest.raises(ValueError, match="NumPy has no bfloat16"):
        npi.Transformer.load(tmp_path / f"w{suffix}")


# ---------------------------------------------------------------- the ladder

GPT2_SHAPED = npi.TransformerConfig(d_vocab=23, d_model=16, n_heads=4, n_layers=2, n_ctx=12)
LLAMA_SHAPED = npi.TransformerConfig(
    d_vocab=23,
    d_model=16,
    n_heads=4,
    n_layers=2,
    n_ctx=12,
    d_mlp=24,
    act_fn="silu",
    gated_mlp=True,
    mlp_bias=False,
    attn_bias=False,
    normalization_type="RMS",
    positional_embedding_type="rotary",
    n_key_value_heads=2,
)


@pytest.fixture(scope="module", params=[GPT2_SHAPED, LLAMA_SHAPED], ids=["gpt2", "llama"])
def ladder(request):
    model = npi.Transformer(request.param)
    randomize(model, seed=4)  # LayerNorm gains near 1, non-zero biases: nothing hides
    tokens = np.random.default_rng(5).integers(0, request.param.d_vocab, (2, 12))
    return precision_ladder(model, tokens)


def test_the_ladder_has_every_rung_and_every_cached_name(ladder):
    labels = [rung.label for rung in ladder.rungs]
    assert labels == [
        "torch float64",
        "torch float32",
        "torch float16",
        "torch bfloat16",
        "numpy float64",
        "numpy float32",
        "numpy float16",
    ]
    for rung in ladder.rungs:
        assert rung.overflow is None and set(rung.errors) == set(ladder.rungs[0].errors)
        # an activation and a gradient for every distinct hook point that holds floats
        assert {name for name in ladder.names if name + "_grad" in rung.errors}
        assert all(name in rung.errors for name in ladder.names)
    assert "blocks.1.hook_resid_post" in ladder.names and "blocks.1.hook_out" not in ladder.names


def test_the_float64_rung_is_exactly_zero(ladder):
    for twin in ("torch", "numpy"):
        rung = ladder.rung(twin, "float64")
        assert max(rung.errors.values()) == 0.0
        assert rung.loss == ladder.reference_loss[twin]


def test_the_float32_rung_is_within_the_parity_tolerance(ladder):
    for twin in ("torch", "numpy"):
        errors = ladder.rung(twin, "float32").errors
        assert 0 < max(errors.values()) <= TOL["float32"], max(errors, key=errors.get)
    assert ladder.references_agree <= TOL["float64"]  # the two float64 references: parity


@pytest.mark.parametrize("rung", ["torch float16", "torch bfloat16", "numpy float16"])
def test_half_precision_rungs_are_finite_and_within_their_loose_bound(ladder, rung):
    twin, dtype = rung.split()
    errors = ladder.rung(twin, dtype).errors
    worst = max(errors, key=errors.get)
    assert np.isfinite(errors[worst]) and errors[worst] <= LOOSE_BOUND[dtype], (
        worst,
        errors[worst],
    )
    # and not below the dtype's own rounding: the rung really computed in it
    assert errors[worst] >= {"float16": 2.0**-11, "bfloat16": 2.0**-8}[dtype]
    loss = ladder.rung(twin, dtype).loss
    assert (
        abs(loss - ladder.reference_loss[twin]) <= LOOSE_BOUND[dtype] * ladder.reference_loss[twin]
    )


def test_the_table_and_the_figure(ladder, tmp_path):
    table = ladder.layer_table()
    assert table.count("| torch bfloat16 |") == 3 and "| embed | 0 | 1 | final |" in table
    full = ladder.full_table()
    assert "| `blocks.0.attn.hook_pattern_grad` |" in full
    path = ladder.plot(tmp_path / "ladder.png")
    assert path.stat().st_size > 10_000


def test_an_overflow_in_float16_is_a_result_naming_the_hook_point():
    model = npi.Transformer(GPT2_SHAPED)
    randomize(model, seed=4)
    model.embed.W_E.data *= 600  # the residual stream reaches ~1e3: its square, ~1e6, is no float16
    ladder = precision_ladder(model, np.arange(12)[None] % GPT2_SHAPED.d_vocab)
    for twin in ("torch", "numpy"):
        rung = ladder.rung(twin, "float16")
        assert rung.errors == {} and "blocks.0.ln1.hook_scale holds inf" in rung.overflow
        assert "overflow at blocks.0.ln1.hook_scale" in ladder.layer_table()
        assert max(ladder.rung(twin, "float32").errors.values()) <= TOL["float32"]
    # bfloat16 has float32's exponent: no overflow there
    assert ladder.rung("torch", "bfloat16").overflow is None


@pytest.mark.parametrize("twin, dtype", [("torch", "float16"), ("torch", "bfloat16")])
def test_torch_accumulates_half_precision_products_in_float32(twin, dtype):
    # every entry the exact sum rounded once: the accumulator is wider than the dtype
    share, error = accumulation(twin, dtype)
    assert share == 1.0 and error <= {"float16": 2.0**-11, "bfloat16": 2.0**-8}[dtype]


def test_the_demo_climbs_a_tiny_checkpoints_ladder(tmp_path, capsys):
    import demo

    demo.main(["precision", "--arch", "llama", "--twins", "torch", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "| torch float64 | 0 | 0 | 0 | 0 | (nowhere) |" in printed
    assert "| torch | bfloat16 | 100.0% |" in printed  # float32 sums inside bfloat16 products
    written = (tmp_path / "precision_ladder.md").read_text(encoding="utf-8")
    assert "| `blocks.1.attn.hook_rot_q` |" in written and "## Every hook point" in written
    assert (tmp_path / "precision_ladder.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- bad input


def test_bad_input_is_refused_by_name():
    model = npi.Transformer(GPT2_SHAPED)
    with pytest.raises(ValueError, match="dtypes: 'float8' is not one of"):
        precision_ladder(model, dtypes=("float64", "float8"))
    with pytest.raises(ValueError, match="twins: 'jax' is not one of"):
        precision_ladder(model, twins=("jax",))
    encoder = npi.Transformer(dataclasses.replace(GPT2_SHAPED, unembed=False, causal=False))
    with pytest.raises(ValueError, match="needs logits"):
        precision_ladder(encoder)
    with pytest.raises(TypeError, match="model must be a numpy_impl or torch_impl Transformer"):
        precision_ladder(GPT2_SHAPED)
    with pytest.raises(ValueError, match="dtype must be one of"):
        dataclasses.replace(GPT2_SHAPED, dtype="float8")
    bfloat16 = dataclasses.replace(GPT2_SHAPED, dtype="bfloat16")
    with pytest.raises(ValueError, match="NumPy has no bfloat16 type"):
        npi.Transformer(bfloat16)
    assert pti.Transformer(bfloat16).embed.W_E.dtype == torch.bfloat16  # the torch twin takes it


COMPONENTS = [
    "TokenEmbedding",
    "LearnedPositionalEmbedding",
    "SinusoidalPositionalEncoding",
    "LayerNorm",
    "MultiHeadAttention",
    "FeedForward",
    "TransformerBlock",
    "Unembed",
]


@pytest.mark.parametrize("component", COMPONENTS)
def test_each_numpy_component_refuses_bfloat16_and_its_twin_takes_it(component):
    bfloat16 = dataclasses.replace(GPT2_SHAPED, dtype="bfloat16")
    with pytest.raises(ValueError, match="NumPy has no bfloat16 type"):
        getattr(npi, component)(bfloat16)
    twin = getattr(pti, component)(bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in twin.parameters())
    float16 = dataclasses.replace(GPT2_SHAPED, dtype="float16")
    assert all(
        p.data.dtype == np.float16 for _, p in getattr(npi, component)(float16).named_parameters()
    )
