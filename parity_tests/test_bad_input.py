"""Bad input other than tokens: refused early with a ValueError or TypeError that names the
argument.

Activations and upstream gradients of the wrong shape, dtype or kind (masked, meta, sparse,
the other twin's arrays); hook results of the wrong kind; loss inputs and weights; seeds;
``generate``'s temperature. Where both twins are concerned, both take the same input and refuse
the same input with the same kind of error. Token ids are in ``test_tokens.py``, configs in
``test_config.py``, state dicts in ``test_state_dict.py``, files in ``test_weights_file.py`` and
``test_saving.py``, the command line in ``test_cli.py``.
"""

import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch

import numpy_impl as npi
import torch_impl as pti
from parity_tests.helpers import (
    CFG,
    SIDES,
    TOKENS,
    as_float64,
    assert_same_grads,
    grads,
    make_cfg,
    masked_like,
    outcome,
    package,
    random_dout,
    randomize,
    rel_err,
    twins,
)

# ---------------------------------------------------------------- activations and components


@pytest.mark.parametrize("side", [npi, pti])
@pytest.mark.parametrize(
    "name", ["LayerNorm", "MultiHeadAttention", "FeedForward", "Unembed", "TransformerBlock"]
)
def test_component_input_checked(side, name):
    component = getattr(side, name)(CFG)
    as_array = (lambda a: a) if side is npi else torch.from_numpy
    with pytest.raises(ValueError, match=r"must have shape \[batch, pos, 12\]"):
        component(as_array(np.zeros((2, 3, 5))))
    with pytest.raises(ValueError, match=r"must have shape \[batch, pos, 12\]"):
        component(as_array(np.zeros((3, 12))))
    with pytest.raises(TypeError, match="must be a float array"):
        component(as_array(np.zeros((2, 3, 12), dtype=np.int64)))


@pytest.mark.parametrize(
    "name",
    [
        "TokenEmbedding",
        "LearnedPositionalEmbedding",
        "LayerNorm",
        "MultiHeadAttention",
        "FeedForward",
        "TransformerBlock",
        "Unembed",
    ],
)
def test_components_need_a_config(name):
    for side in (npi, pti):
        with pytest.raises(TypeError, match="cfg must be a TransformerConfig"):
            getattr(side, name)(None)


@pytest.mark.parametrize("side", [npi, pti])
def test_the_loss_has_no_config_and_moves_without_one(side):
    loss = side.CrossEntropyLoss()
    assert not hasattr(loss, "cfg")
    with pytest.raises(AttributeError, match="CrossEntropyLoss.* has no (attribute ')?cfg"):
        loss.cfg  # noqa: B018 (the attribute read is what raises)
    if side is pti:  # a move asks for the module's dtype in cfg; the loss has none to check
        assert loss.double() is loss


def test_arrays_of_the_other_twin_are_refused():
    """A tensor into a NumPy component, an ndarray into a torch one, float32 into a float64
    model."""
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


def test_a_masked_activation_is_refused_by_a_component():
    layer_norm = npi.LayerNorm(CFG)
    kind, message = outcome(lambda: layer_norm(masked_like((2, 4, 12))))
    assert kind == "TypeError" and "x" in message and "masked" in message, (kind, message)


@pytest.mark.parametrize(
    "seed,error", [("a", TypeError), (1.5, TypeError), (True, TypeError), (-1, ValueError)]
)
def test_bad_seeds(seed, error):
    for side in (npi, pti):
        with pytest.raises(error, match="seed"):
            side.Transformer(CFG, seed=seed)


# ---------------------------------------------------------------- upstream gradients


def test_dout_of_wrong_shape():
    model = npi.Transformer(CFG)
    model(np.array([[1, 2, 3]]))
    with pytest.raises(
        ValueError,
        match=r"dout must have the forward output's shape \(1, 3, 11\), got \(1, 3, 12\)",
    ):
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


@pytest.mark.parametrize("dout_dtype", ["float32", "float16", "longdouble"])
def test_dout_of_another_dtype_is_refused(dout_dtype):
    np_model, torch_model = twins()
    out = np_model(TOKENS)
    dout = random_dout(out.shape).astype(dout_dtype)
    with pytest.raises(TypeError, match="dout.*float64"):
        np_model.backward(dout)
    for model in (np_model, torch_model):
        with pytest.raises(TypeError, match="dout.*float64"):
            model.run_with_hooks(TOKENS, dout=dout)
        with pytest.raises(TypeError, match="dout.*float64"):
            model.run_with_cache(TOKENS, incl_bwd=True, dout=dout)


@pytest.mark.parametrize(
    "name", ["LayerNorm", "MultiHeadAttention", "FeedForward", "Unembed", "TransformerBlock"]
)
def test_component_dout_of_another_dtype_is_refused(name):
    module = getattr(npi, name)(CFG)
    randomize(module, seed=3)
    out = module(np.random.default_rng(0).standard_normal((2, 4, 12)))
    with pytest.raises(TypeError, match="float64"):
        module.backward(random_dout(out.shape, "float32"))


def test_a_float32_model_refuses_a_float64_dout():
    cfg = make_cfg(n_layers=1, dtype="float32")
    model = npi.Transformer(cfg)
    out = model(TOKENS)
    with pytest.raises(TypeError, match="dout.*float32"):
        model.backward(random_dout(out.shape, "float64"))


DOUT_BAD = {
    "a masked array": lambda: masked_like((2, 4, 11)),
    "a masked array, nothing masked": lambda: masked_like((2, 4, 11), False),
    "a meta tensor": lambda: torch.empty(2, 4, 11, dtype=torch.float64, device="meta"),
    "a sparse tensor": lambda: torch.zeros(2, 4, 11, dtype=torch.float64).to_sparse(),
}


@pytest.mark.parametrize("case", sorted(DOUT_BAD))
def test_a_dout_that_would_be_read_wrongly_is_refused(case):
    results = []
    for model in twins():
        results.append(outcome(lambda: model.run_with_hooks(TOKENS, dout=DOUT_BAD[case]())))
        results.append(
            outcome(lambda: model.run_with_cache(TOKENS, incl_bwd=True, dout=DOUT_BAD[case]()))
        )
    if isinstance(DOUT_BAD[case](), np.ndarray):
        np_model = twins()[0]
        np_model(TOKENS)
        results.append(outcome(lambda: np_model.backward(DOUT_BAD[case]())))
    assert {kind for kind, _ in results} == {"TypeError"}, results
    assert all("dout" in message and "\n" not in message for _, message in results), results


def test_bad_dloss():
    loss = npi.CrossEntropyLoss()
    loss(np.zeros((1, 2, 5)), np.zeros((1, 2), dtype=np.int64))
    with pytest.raises(TypeError, match="dloss must be a real number"):
        loss.backward("a")
    with pytest.raises(TypeError, match="dloss must be a real number"):
        loss.backward(np.ones(3))


# ---------------------------------------------------------------- hook results


HOOK_RESULTS = {
    "a str": lambda x: "hello",
    "bytes": lambda x: b"hello",
    "a dict": lambda x: {"x": x},
    "a list": lambda x: [1, 2],
    "a python complex": lambda x: 1j,
    "a complex array": lambda x: np.asarray(_np(x)) + 1j,
    "a str array": lambda x: np.full(_np(x).shape, "1.0"),
    "an object array": lambda x: np.asarray(_np(x)).astype(object),
    "a bool array": lambda x: np.ones(_np(x).shape, dtype=bool),
    "a wrong shape": lambda x: np.asarray(_np(x))[..., :1],
    "a scalar": lambda x: 0.0,
    "a 0-d array": lambda x: np.array(0.0),
    "a datetime array": lambda x: np.zeros(_np(x).shape, dtype="datetime64[s]"),
}


def _np(x):
    return x.detach().numpy() if hasattr(x, "detach") else x


@pytest.mark.parametrize("case", sorted(HOOK_RESULTS))
@pytest.mark.parametrize("direction", ["fwd", "bwd"])
def test_hook_results_of_the_wrong_kind(case, direction):
    np_model, torch_model = twins()
    kinds = []
    for model in (np_model, torch_model):
        hooks = [("blocks.0.hook_resid_mid", lambda x, hook: HOOK_RESULTS[case](x))]
        dout = random_dout((2, 4, 11))
        kind, message = outcome(
            lambda: model.run_with_hooks(
                TOKENS,
                **({"fwd_hooks": hooks} if direction == "fwd" else {"bwd_hooks": hooks}),
                dout=dout,
            )
        )
        assert kind in ("TypeError", "ValueError") and "blocks.0.hook_resid_mid" in message, (
            kind,
            message,
        )
        kinds.append(kind)
    assert kinds[0] == kinds[1]


@pytest.mark.parametrize("direction", ["fwd", "bwd"])
def test_hook_results_of_the_other_library_are_welcome(direction):
    np_model, torch_model = twins()
    dout = random_dout((2, 4, 11))
    key = "fwd_hooks" if direction == "fwd" else "bwd_hooks"
    results = []
    for model, halve in (
        (np_model, lambda x, hook: torch.from_numpy(x * 0.5)),
        (torch_model, lambda x, hook: x.detach().numpy() * 0.5),
    ):
        model.zero_grad()
        out = model.run_with_hooks(TOKENS, **{key: [("blocks.0.hook_resid_mid", halve)]}, dout=dout)
        results.append((_np(out), grads(model)))
    assert rel_err(results[0][0], results[1][0]) < 1e-12
    assert_same_grads(results[0][1], results[1][1])


def _as_tensor(x):
    return x if hasattr(x, "detach") else torch.from_numpy(x)


# a leaf that requires grad (a steering scale)
SCALE = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)


# name -> (the hook's result from its argument, words of the refusal, directions)
HOOK_RESULTS_BAD = {
    "a masked array": (
        lambda x: np.ma.masked_array(_np(x).copy(), mask=_np(x) > 0),
        "masked",
        ["fwd", "bwd"],
    ),
    "a masked array, nothing masked": (
        lambda x: np.ma.masked_array(_np(x).copy()),
        "masked",
        ["fwd", "bwd"],
    ),
    "a tensor that requires grad": (
        lambda x: torch.tensor(_np(x) * 0.5, requires_grad=True),
        "requires grad",
        ["fwd"],
    ),
    "a tensor computed from a parameter": (
        lambda x: _as_tensor(x) * SCALE,
        "requires grad",
        ["fwd"],
    ),
}


HOOK_CASES = [
    (case, direction)
    for case, (_, _, directions) in sorted(HOOK_RESULTS_BAD.items())
    for direction in directions
]


@pytest.mark.parametrize("case, direction", HOOK_CASES, ids=[f"{d}-{c}" for c, d in HOOK_CASES])
def test_hook_results_that_would_be_read_wrongly_are_refused(case, direction):
    """A forward hook's result is a constant: one that requires grad would lose its gradient without
    a word."""
    make, words, _ = HOOK_RESULTS_BAD[case]
    kinds = []
    for model in twins():
        hooks = [("blocks.0.hook_resid_mid", lambda x, hook: make(x))]
        kind, message = outcome(
            lambda: model.run_with_hooks(
                TOKENS,
                dout=np.random.default_rng(1).standard_normal((2, 4, 11)),
                **({"fwd_hooks": hooks} if direction == "fwd" else {"bwd_hooks": hooks}),
            )
        )
        assert kind in ("TypeError", "ValueError"), (kind, message)
        assert "blocks.0.hook_resid_mid" in message and words in message and "\n" not in message, (
            message
        )
        kinds.append(kind)
    assert kinds[0] == kinds[1]


def test_backward_hooks_may_return_tensors_that_require_grad():
    """A backward hook's result is the gradient from there on (torch computes it with grad off):
    both twins use its values."""
    np_model, torch_model = twins()
    dout = np.random.default_rng(1).standard_normal((2, 4, 11))
    np_model.zero_grad()
    np_model.run_with_hooks(TOKENS, dout=dout)
    plain = {name: as_float64(p.grad) for name, p in np_model.named_parameters()}
    results = []
    for model in (np_model, torch_model):
        model.zero_grad()
        model.run_with_hooks(
            TOKENS,
            bwd_hooks=[("blocks.0.hook_resid_mid", lambda g, hook: _as_tensor(g) * SCALE)],
            dout=dout,
        )
        results.append({name: as_float64(p.grad) for name, p in model.named_parameters()})
    largest = max(np.abs(g).max() for g in results[0].values())
    for name in results[0]:
        assert rel_err(results[0][name], results[1][name], scale=largest) <= 1e-12, name
    assert rel_err(results[0]["embed.W_E"], 0.5 * plain["embed.W_E"]) <= 1e-12, (
        "the hook's halving reached W_E"
    )
    assert rel_err(results[0]["unembed.W_U"], plain["unembed.W_U"]) <= 1e-12, (
        "above the hook: untouched"
    )


HOOK_RESULTS_GOOD = {  # what both twins take from a hook, with the same values
    "big-endian >f8": lambda x: _np(x).astype(">f8") * 0.5,
    "longdouble": lambda x: _np(x).astype(np.longdouble) * 0.5,
    "negative strides": lambda x: np.flip(np.flip(_np(x) * 0.5, 0).copy(), 0),
    "fortran order": lambda x: np.asfortranarray(_np(x) * 0.5),
    "float16 ndarray": lambda x: (_np(x) * 0.5).astype(np.float16),
    "uint64 ndarray": lambda x: np.abs(np.round(_np(x) * 4)).astype(np.uint64),
    "bfloat16 tensor": lambda x: (_as_tensor(x) * 0.5).bfloat16(),
    "float16 tensor": lambda x: (_as_tensor(x) * 0.5).half(),
    "non-contiguous tensor": lambda x: (
        (_as_tensor(x) * 0.5).transpose(0, 1).contiguous().transpose(0, 1)
    ),
    "an ndarray subclass": lambda x: (_np(x) * 0.5).view(type("Sub", (np.ndarray,), {})),
}


@pytest.mark.parametrize("direction", ["fwd", "bwd"])
@pytest.mark.parametrize("case", sorted(HOOK_RESULTS_GOOD))
def test_the_twins_take_the_same_hook_results(case, direction):
    dout = np.random.default_rng(1).standard_normal((2, 4, 11))
    outs, gradients = [], []
    for model in twins():
        model.zero_grad()
        hooks = [("blocks.0.hook_resid_mid", lambda x, hook: HOOK_RESULTS_GOOD[case](x))]
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            out = model.run_with_hooks(TOKENS, dout=dout, **{f"{direction}_hooks": hooks})
        outs.append(as_float64(out))
        gradients.append({name: as_float64(p.grad) for name, p in model.named_parameters()})
    assert rel_err(outs[1], outs[0]) <= 1e-12
    largest = max(np.abs(g).max() for g in gradients[0].values())
    for name in gradients[0]:
        assert rel_err(gradients[1][name], gradients[0][name], scale=largest) <= 1e-12, name


# ---------------------------------------------------------------- the loss


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
    with pytest.raises(TypeError, match="logits must be a float array .* of dtype (torch.)?int64"):
        loss(as_array(np.zeros((2, 3, 5), dtype=np.int64)), as_array(np.zeros((2, 3), np.int64)))
    with pytest.raises(TypeError, match="weights must be a float array .* of dtype (torch.)?int64"):
        loss(logits, as_array(np.zeros((2, 3), np.int64)), as_array(np.ones((2, 3), np.int64)))
    with pytest.raises(ValueError, match="weights must be non-negative"):
        loss(logits, as_array(np.zeros((2, 3), dtype=np.int64)), as_array(-np.ones((2, 3))))
    with pytest.raises(ValueError, match=r"weights must have the targets' shape"):
        loss(logits, as_array(np.zeros((2, 3), dtype=np.int64)), as_array(np.ones((2, 2))))
    with pytest.raises(ValueError, match=r"logits must have shape \[batch, pos, d_vocab\]"):
        loss(as_array(np.zeros((6, 5))), as_array(np.zeros((2, 3), dtype=np.int64)))


LOSS_WEIGHTS_BAD = {
    "inf": lambda w: np.where(np.arange(w.size).reshape(w.shape) == 0, np.inf, w),
    "-inf": lambda w: np.where(np.arange(w.size).reshape(w.shape) == 0, -np.inf, w),
    "nan": lambda w: np.where(np.arange(w.size).reshape(w.shape) == 0, np.nan, w),
    "all inf": lambda w: np.full_like(w, np.inf),
    "float32 max": lambda w: (
        np.full_like(w, np.finfo(np.float32).max).astype(np.float32).astype(w.dtype)
    ),
}


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("case", sorted(LOSS_WEIGHTS_BAD))
def test_loss_weights_that_are_not_finite_are_refused(side, case):
    rng = np.random.default_rng(0)
    logits, targets = rng.standard_normal((2, 3, 5)), np.array([[0, 1, 2], [3, 4, 0]])
    weights = LOSS_WEIGHTS_BAD[case](rng.uniform(0.5, 1.5, (2, 3)))
    convert = (lambda a: a) if side == "numpy" else torch.from_numpy
    loss = package(side).CrossEntropyLoss()
    kind, message = outcome(lambda: loss(convert(logits), convert(targets), convert(weights)))
    if case == "float32 max":  # finite: a weighted mean that the loss computes without overflow
        assert kind == "accepted" and np.isfinite(float(message)), (kind, message)
        return
    assert kind == "ValueError" and "weights" in message, (kind, message)


# ---------------------------------------------------------------- generate's temperature


TEMPERATURES_GOOD = {
    "np.float32(0.5)": np.float32(0.5),
    "np.float64(0.5)": np.float64(0.5),
    "Fraction(1, 2)": Fraction(1, 2),
    "a 0-d array": np.array(0.5),
}


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("case", sorted(TEMPERATURES_GOOD))
def test_generate_takes_any_real_number_type_as_temperature(side, case):
    model = twins()[SIDES.index(side)]
    expected = as_float64(model.generate(TOKENS[:, :2], max_new_tokens=3, temperature=0.5, seed=4))
    got = as_float64(
        model.generate(TOKENS[:, :2], max_new_tokens=3, temperature=TEMPERATURES_GOOD[case], seed=4)
    )
    assert np.array_equal(got, expected)
    one = as_float64(
        model.generate(TOKENS[:, :2], max_new_tokens=3, temperature=np.int64(1), seed=4)
    )
    assert np.array_equal(
        one, as_float64(model.generate(TOKENS[:, :2], max_new_tokens=3, temperature=1, seed=4))
    )


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("temperature", [1e-320, 5e-324, 1e-300, 1e-30, np.float32(1e-45)])
def test_a_tiny_temperature_samples_the_most_likely_token(side, temperature):
    """softmax(logits / T) as T -> 0 puts all its mass on the largest logit: no overflow, no NaN."""
    model = twins()[SIDES.index(side)]
    greedy = as_float64(model.generate(TOKENS[:, :2], max_new_tokens=3, temperature=0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warning either
        tiny = as_float64(
            model.generate(TOKENS[:, :2], max_new_tokens=3, temperature=temperature, seed=1)
        )
    assert np.array_equal(tiny, greedy)


TEMPERATURES_BAD = {
    "inf": float("inf"),
    "nan": float("nan"),
    "-1": -1.0,
    "np.float32(-0.5)": np.float32(-0.5),
    "'0.5'": "0.5",
    "True": True,
    "np.True_": np.True_,
    "None": None,
    "1j": 1j,
    "an array of two": np.array([0.5, 0.5]),
    "np.float64 inf": np.float64("inf"),
}


@pytest.mark.parametrize("case", sorted(TEMPERATURES_BAD))
def test_a_temperature_that_cannot_be_sampled_is_refused(case):
    results = [
        outcome(
            lambda: model.generate(
                TOKENS[:, :2], max_new_tokens=1, temperature=TEMPERATURES_BAD[case]
            )
        )
        for model in twins()
    ]
    assert results[0][0] in ("TypeError", "ValueError") and results[0][0] == results[1][0], results
    assert all("temperature" in message and "\n" not in message for _, message in results), results


# --- generate's penalty, the seeds both twins take ---

from parity_tests.helpers import SIDES as _SIDES  # noqa: E402
from parity_tests.helpers import SMALL as _SMALL  # noqa: E402


@pytest.mark.parametrize("side", _SIDES)
@pytest.mark.parametrize(
    "value", [float("inf"), 1e308, np.float64(7e307)], ids=["inf", "1e308", "7e307 times n_ctx 3"]
)
def test_generate_refuses_a_penalty_that_would_make_probabilities_non_finite(side, value):
    model = {"numpy": npi, "torch": pti}[side].Transformer(_SMALL, seed=0)
    with pytest.raises(ValueError, match="freq_penalty must be finite"):
        model.generate([[1, 2]], max_new_tokens=1, freq_penalty=value, seed=0)


@pytest.mark.parametrize("side", _SIDES)
def test_generate_takes_a_large_finite_penalty(side):
    model = {"numpy": npi, "torch": pti}[side].Transformer(_SMALL, seed=0)
    out = model.generate([[1, 2]], max_new_tokens=1, freq_penalty=1e300, seed=0)
    assert np.asarray(out).shape == (1, 3)


@pytest.mark.parametrize(
    "seed, accepted", [(0, True), (2**64 - 1, True), (2**64, False), (2**70, False)]
)
def test_the_twins_take_and_refuse_the_same_seeds(seed, accepted):
    outcomes = []
    for twin in (npi, pti):
        try:
            twin.Transformer(_SMALL, seed=seed)
            outcomes.append("built")
        except ValueError as error:
            assert "seed" in str(error), str(error)
            outcomes.append("refused")
    assert outcomes == (["built", "built"] if accepted else ["refused", "refused"])
