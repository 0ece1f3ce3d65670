"""Each bad input the project refuses fails early with a ValueError or TypeError that names the argument."""

import numpy as np
import pytest
import torch

import numpy_impl as npi
import torch_impl as pti

CFG = npi.TransformerConfig(d_vocab=11, d_model=12, n_heads=3, n_layers=1, n_ctx=6)
NP_MODEL = npi.Transformer(CFG)
TORCH_MODEL = pti.Transformer(CFG)

BAD_TOKENS = [
    ("id too large", np.array([[1, 11]]), ValueError, r"tokens must lie in \[0, d_vocab=11\)"),
    ("negative id", np.array([[-1, 2]]), ValueError, r"tokens must lie in \[0, d_vocab=11\)"),
    ("float tokens", np.array([[1.0, 2.0]]), TypeError, "tokens must hold integer token ids"),
    ("rank 1", np.array([1, 2, 3]), ValueError, r"tokens must have shape \[batch, pos\]"),
    ("rank 3", np.zeros((1, 2, 3), dtype=int), ValueError, r"tokens must have shape \[batch, pos\]"),
    ("longer than n_ctx", np.zeros((1, 7), dtype=int), ValueError, "7 positions but the model's n_ctx is 6"),
    ("empty batch", np.zeros((0, 3), dtype=int), ValueError, "tokens must not be empty"),
    ("empty sequence", np.zeros((2, 0), dtype=int), ValueError, "tokens must not be empty"),
    ("not an array", "hello", TypeError, r"tokens must be an integer (numpy\.ndarray|torch\.Tensor)"),
]


@pytest.mark.parametrize("case", BAD_TOKENS, ids=[c[0] for c in BAD_TOKENS])
@pytest.mark.parametrize("side", ["numpy", "torch"])
def test_bad_tokens(case, side):
    _, tokens, error, message = case
    if side == "torch" and isinstance(tokens, np.ndarray):
        tokens = torch.from_numpy(tokens)
    model = NP_MODEL if side == "numpy" else TORCH_MODEL
    with pytest.raises(error, match=message):
        model(tokens)


def test_bool_tokens_are_not_ids():
    with pytest.raises(TypeError, match="integer token ids"):
        TORCH_MODEL(torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="integer token ids"):
        NP_MODEL(np.ones((1, 3), dtype=bool))


def test_backward_before_forward():
    with pytest.raises(ValueError, match=r"Transformer.backward\(\) called before"):
        npi.Transformer(CFG).backward(np.zeros((1, 2, 11)))
    with pytest.raises(ValueError, match=r"LayerNorm.backward\(\) called before"):
        npi.LayerNorm(CFG).backward(np.zeros((1, 2, 12)))
    with pytest.raises(ValueError, match=r"CrossEntropyLoss.backward\(\) called before"):
        npi.CrossEntropyLoss().backward()


def test_dout_of_wrong_shape():
    model = npi.Transformer(CFG)
    model(np.array([[1, 2, 3]]))
    with pytest.raises(ValueError, match=r"dout must have the forward output's shape \(1, 3, 11\), got \(1, 3, 12\)"):
        model.backward(np.zeros((1, 3, 12)))
    with pytest.raises(TypeError, match="dout must be a float array"):
        model.backward(np.zeros((1, 3, 11), dtype=int))
    with pytest.raises(TypeError, match="dout must be a float numpy.ndarray, got list"):
        model.backward([[0.0]])
    with pytest.raises(TypeError, match="dout must be a float numpy.ndarray, got Tensor"):
        model.backward(torch.zeros(1, 3, 11, dtype=torch.float64))
    attn = npi.MultiHeadAttention(CFG, rng=0)
    attn(np.zeros((2, 3, 12)))
    with pytest.raises(ValueError, match="dout must have the forward output's shape"):
        attn.backward(np.zeros((2, 4, 12)))


@pytest.mark.parametrize("side", [npi, pti])
@pytest.mark.parametrize("name", ["LayerNorm", "MultiHeadAttention", "FeedForward", "Unembed", "TransformerBlock"])
def test_component_input_checked(side, name):
    component = getattr(side, name)(CFG)
    as_array = (lambda a: a) if side is npi else torch.from_numpy
    with pytest.raises(ValueError, match=r"must have shape \[batch, pos, 12\]"):
        component(as_array(np.zeros((2, 3, 5))))
    with pytest.raises(ValueError, match=r"must have shape \[batch, pos, 12\]"):
        component(as_array(np.zeros((3, 12))))
    with pytest.raises(TypeError, match="must be a float array"):
        component(as_array(np.zeros((2, 3, 12), dtype=np.int64)))


@pytest.mark.parametrize("side", [npi, pti])
def test_loss_inputs_checked(side):
    as_array = (lambda a: a) if side is npi else torch.from_numpy
    loss = side.CrossEntropyLoss()
    logits = as_array(np.zeros((2, 3, 5)))
    with pytest.raises(ValueError, match=r"targets must lie in \[0, d_vocab=5\)"):
        loss(logits, as_array(np.full((2, 3), 5)))
    with pytest.raises(ValueError, match=r"targets must have shape \(2, 3\)"):
        loss(logits, as_array(np.zeros((2, 4), dtype=np.int64)))
    with pytest.raises(TypeError, match="targets must be an integer array"):
        loss(logits, as_array(np.zeros((2, 3))))
    with pytest.raises(ValueError, match="weights must be non-negative"):
        loss(logits, as_array(np.zeros((2, 3), dtype=np.int64)), as_array(-np.ones((2, 3))))
    with pytest.raises(ValueError, match=r"weights must have the targets' shape"):
        loss(logits, as_array(np.zeros((2, 3), dtype=np.int64)), as_array(np.ones((2, 2))))
    with pytest.raises(ValueError, match=r"logits must have shape \[batch, pos, d_vocab\]"):
        loss(as_array(np.zeros((6, 5))), as_array(np.zeros((2, 3), dtype=np.int64)))


def test_load_state_dict_strict():
    model = npi.Transformer(CFG)
    sd = model.state_dict()
    with pytest.raises(ValueError, match=r"missing keys: embed\.W_E"):
        model.load_state_dict({k: v for k, v in sd.items() if k != "embed.W_E"})
    with pytest.raises(ValueError, match=r"unexpected keys: extra"):
        model.load_state_dict(dict(sd, extra=np.zeros(1)))
    with pytest.raises(ValueError, match=r"unembed\.W_U: shape \(12, 3\) does not match the model's \(12, 11\)"):
        model.load_state_dict(dict(sd, **{"unembed.W_U": np.zeros((12, 3))}))
    with pytest.raises(TypeError, match="state_dict must be a dict"):
        model.load_state_dict([1, 2])
    with pytest.raises(TypeError, match=r"state_dict\['embed.W_E'\] must be an ndarray"):
        model.load_state_dict(dict(sd, **{"embed.W_E": "zeros"}))


CONFIG_ERRORS = [
    (dict(d_model=10, n_heads=3), ValueError, "d_model \\(10\\) must be divisible by n_heads \\(3\\)"),
    (dict(d_model=0), ValueError, "d_model must be positive"),
    (dict(n_layers=2.0), TypeError, "n_layers must be an int"),
    (dict(act_fn="swish"), ValueError, "act_fn must be one of"),
    (dict(normalization="both"), ValueError, "normalization must be one of"),
    (dict(positional="alibi"), ValueError, "positional must be one of"),
    (dict(dtype="float16"), ValueError, "dtype must be one of"),
    (dict(causal=1), TypeError, "causal must be a bool"),
    (dict(d_head=0), ValueError, "d_head must be positive"),
    (dict(d_mlp=-4), ValueError, "d_mlp must be positive"),
]


@pytest.mark.parametrize("overrides,error,message", CONFIG_ERRORS)
def test_config_errors_name_the_field(overrides, error, message):
    fields = dict(d_vocab=11, d_model=12, n_heads=3, n_layers=1, n_ctx=6)
    fields.update(overrides)
    with pytest.raises(error, match=message):
        npi.TransformerConfig(**fields)


def test_config_defaults_and_json_round_trip():
    cfg = npi.TransformerConfig(d_vocab=11, d_model=12, n_heads=3, n_layers=1, n_ctx=6)
    assert (cfg.d_head, cfg.d_mlp) == (4, 48)
    assert npi.TransformerConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match="unknown TransformerConfig field"):
        npi.TransformerConfig.from_dict(dict(cfg.to_dict(), wings=2))
    with pytest.raises(TypeError, match="cfg must be a TransformerConfig"):
        npi.Transformer({"d_model": 12})
    with pytest.raises(TypeError, match="cfg must be a TransformerConfig"):
        pti.Transformer({"d_model": 12})


def test_ragged_token_lists():
    for model in (NP_MODEL, TORCH_MODEL):
        with pytest.raises(ValueError, match="tokens must be a rectangular"):
            model([[1, 2], [3]])


@pytest.mark.parametrize("seed,error", [("a", TypeError), (1.5, TypeError), (True, TypeError), (-1, ValueError)])
def test_bad_seeds(seed, error):
    for side in (npi, pti):
        with pytest.raises(error, match="seed"):
            side.Transformer(CFG, seed=seed)


@pytest.mark.parametrize("name", ["TokenEmbedding", "LearnedPositionalEmbedding", "LayerNorm",
                                  "MultiHeadAttention", "FeedForward", "TransformerBlock", "Unembed"])
def test_components_need_a_config(name):
    for side in (npi, pti):
        with pytest.raises(TypeError, match="cfg must be a TransformerConfig"):
            getattr(side, name)(None)


def test_arrays_of_the_other_twin_are_refused():
    """A tensor into a NumPy component, an ndarray into a torch one, float32 into a float64 model."""
    x = np.zeros((2, 3, 12))
    with pytest.raises(TypeError, match="x must be a numpy.ndarray, got Tensor"):
        npi.LayerNorm(CFG)(torch.from_numpy(x))
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got ndarray"):
        pti.LayerNorm(CFG)(x)
    with pytest.raises(TypeError, match="x must have the model's dtype float64, got float32"):
        pti.FeedForward(CFG)(torch.zeros(2, 3, 12, dtype=torch.float32))
    with pytest.raises(TypeError, match="x must have the model's dtype float64, got float32"):
        npi.MultiHeadAttention(CFG)(np.zeros((2, 3, 12), dtype=np.float32))
    with pytest.raises(TypeError, match="logits must be a torch.Tensor"):
        pti.CrossEntropyLoss()(np.zeros((1, 2, 5)), torch.zeros(1, 2, dtype=torch.int64))
    with pytest.raises(TypeError, match="tokens must be an integer torch.Tensor"):
        pti.TokenEmbedding(CFG)(np.zeros((1, 2), dtype=np.int64))


def test_bad_dloss():
    loss = npi.CrossEntropyLoss()
    loss(np.zeros((1, 2, 5)), np.zeros((1, 2), dtype=np.int64))
    with pytest.raises(TypeError, match="dloss must be a real number"):
        loss.backward("a")
    with pytest.raises(TypeError, match="dloss must be a real number"):
        loss.backward(np.ones(3))
