"""The config: its defaults and JSON round trip, and every field of the wrong kind or value refused
by name."""

import numpy as np
import pytest
import torch

import numpy_impl as npi
import torch_impl as pti
from parity_tests.helpers import FIELDS, make_cfg, outcome

CONFIG_ERRORS = [
    (
        dict(d_model=10, n_heads=3),
        ValueError,
        "d_model \\(10\\) must be divisible by n_heads \\(3\\)",
    ),
    (dict(d_model=0), ValueError, "d_model must be positive"),
    (dict(n_layers=2.0), TypeError, "n_layers must be an int"),
    (dict(act_fn="swish"), ValueError, "act_fn must be one of"),
    (dict(normalization="both"), ValueError, "normalization must be one of"),
    (dict(positional="alibi"), ValueError, "positional must be one of"),
    (dict(dtype="float8"), ValueError, "dtype must be one of"),
    (dict(causal=1), TypeError, "causal must be a bool"),
    (dict(d_head=0), ValueError, "d_head must be positive"),
    (dict(d_mlp=-4), ValueError, "d_mlp must be positive"),
    (
        dict(normalization=None, normalization_type="RMS"),
        ValueError,
        "normalization_type='RMS' does not fit normalization=None",
    ),
    (
        dict(normalization_type=None),
        ValueError,
        "normalization_type=None does not fit normalization='pre'",
    ),
    (dict(eps=1e-6), ValueError, "eps must be 1e-05 with normalization_type='LN'"),
    (dict(eps="1e-5"), TypeError, "eps must be a number"),
    (dict(eps=float("nan")), ValueError, "eps must be a positive finite number"),
    (dict(rotary_base=0.0), ValueError, "rotary_base must be a positive finite number"),
    (
        dict(positional="sinusoidal", positional_embedding_type="rotary"),
        ValueError,
        "positional_embedding_type='rotary' does not fit positional='sinusoidal'",
    ),
    (dict(positional="rotary", rotary_dim=3), ValueError, "rotary_dim must be even"),
    (dict(positional="rotary", rotary_dim=6), ValueError, "rotary_dim must be .* at most d_head"),
    (dict(rotary_dim=2), ValueError, "rotary_dim=2 needs positional_embedding_type='rotary'"),
    (
        dict(gated_mlp=True, attn_only=True, act_fn="silu", mlp_bias=False),
        ValueError,
        "gated_mlp=True needs an MLP, but attn_only=True",
    ),
    (dict(act_fn="silu"), ValueError, "act_fn='silu' is for the gated MLP.*gated_mlp=True"),
    (dict(gated_mlp=True, act_fn="silu"), ValueError, "gated_mlp=True has no biases.*mlp_bias"),
    (
        dict(parallel_attn_mlp=True, attn_only=True),
        ValueError,
        "parallel_attn_mlp=True needs an MLP",
    ),
    (
        dict(parallel_attn_mlp=True, normalization="post"),
        ValueError,
        "parallel_attn_mlp=True needs .* normalization 'pre' or None",
    ),
]


@pytest.mark.parametrize("overrides,error,message", CONFIG_ERRORS)
def test_config_errors_name_the_field(overrides, error, message):
    fields = dict(d_vocab=11, d_model=12, n_heads=3, n_layers=1, n_ctx=6)
    fields.update(overrides)
    with pytest.raises(error, match=message):
        npi.TransformerConfig(**fields)


def test_config_defaults_and_json_round_trip():
    cfg = make_cfg(n_layers=1)
    assert (cfg.d_head, cfg.d_mlp) == (4, 48)
    assert npi.TransformerConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match="unknown TransformerConfig field"):
        npi.TransformerConfig.from_dict(dict(cfg.to_dict(), wings=2))
    with pytest.raises(TypeError, match="fields must be a dict, got list"):
        npi.TransformerConfig.from_dict([("d_model", 12)])
    with pytest.raises(ValueError, match="config is not valid JSON"):
        npi.TransformerConfig.from_json("{'d_model': 12}")
    with pytest.raises(TypeError, match="cfg must be a TransformerConfig"):
        npi.Transformer({"d_model": 12})
    with pytest.raises(TypeError, match="cfg must be a TransformerConfig"):
        pti.Transformer({"d_model": 12})


CONFIG_BAD = {
    "d_model an array": dict(d_model=np.array(12)),
    "d_model a 1-element array": dict(d_model=np.array([12])),
    "n_layers a float": dict(n_layers=1.0),
    "n_layers a str": dict(n_layers="1"),
    "d_vocab None": dict(d_vocab=None),
    "d_head an array": dict(d_head=np.array([4])),
    "d_mlp negative": dict(d_mlp=-1),
    "act_fn an array": dict(act_fn=np.array("relu")),
    "act_fn a list": dict(act_fn=["relu"]),
    "normalization an array": dict(normalization=np.array("pre")),
    "normalization 'none'": dict(normalization="none"),
    "positional an array": dict(positional=np.array("learned")),
    "dtype a numpy dtype": dict(dtype=np.dtype("float64")),
    "dtype a type": dict(dtype=np.float64),
    "dtype a torch dtype": dict(dtype=torch.float64),
    "dtype float8": dict(dtype="float8_e4m3fn"),
    "causal an int": dict(causal=1),
    "causal an array": dict(causal=np.array(True)),
    "unembed a str": dict(unembed="yes"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_BAD))
def test_config_fields_of_the_wrong_kind(case):
    kind, message = outcome(lambda: npi.TransformerConfig(**{**FIELDS, **CONFIG_BAD[case]}))
    field = next(iter(CONFIG_BAD[case]))
    assert kind in ("TypeError", "ValueError") and field in message, (kind, message)


@pytest.mark.parametrize(
    "fields",
    [dict(d_model=np.int64(12)), dict(n_layers=np.int32(1)), dict(causal=np.bool_(False))],
    ids=["np.int64", "np.int32", "np.bool_"],
)
def test_numpy_scalars_in_a_config_become_python_values(fields):
    cfg = npi.TransformerConfig(**{**FIELDS, **fields})
    name, value = next(iter(fields.items()))
    assert type(getattr(cfg, name)) in (int, bool) and getattr(cfg, name) == value
    assert npi.TransformerConfig.from_json(cfg.to_json()) == cfg
