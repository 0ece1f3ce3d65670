"""Finite differences: the reference's hand-written backward passes, and the twin's autograd.

The NumPy half runs ``gradcheck.finite_diff`` on every component and on models of every
normalization, with random weights (LayerNorm w never all ones, biases never zero), random
inputs and a random upstream direction R, and requires max relative error <= 1e-7 on every
tensor. It also plants the two classic mistakes (LayerNorm without the mean term, softmax
without the row sum) and requires the checker to fail on the right tensors, so it can fail.
The torch half runs ``torch.autograd.gradcheck`` on every twin component in float64.
"""

import inspect
import textwrap

import numpy as np
import pytest
import torch

import numpy_impl as npi
import torch_impl as pti
from foundation.contract.boundary import NonFiniteError
from gradcheck.factory import Variant, build, make_inputs, randomize_parameters
from gradcheck.finite_diff import gradcheck
from numpy_impl import attention as np_attention
from numpy_impl import gated_feedforward as np_gated
from numpy_impl import layernorm as np_layernorm
from numpy_impl import rmsnorm as np_rmsnorm

TOL = 1e-7  # the bar for a correct backward (see gradcheck/finite_diff.py for the metric)
SAMPLE = 12  # entries per tensor: enough to hit every tensor, small enough for a fast suite
FLOAT_INPUT = {
    "LayerNorm",
    "MultiHeadAttention",
    "FeedForward",
    "TransformerBlock",
    "Unembed",
    "CrossEntropyLoss",
}


def check(cls, overrides=None, weighted=False, seed=0, sample=SAMPLE):
    cfg = Variant("test", overrides or {}).config()
    module = build(npi, cls, cfg, seed)
    report = gradcheck(
        module, *make_inputs(cls, cfg, seed + 1, weighted), sample=sample, seed=seed + 2
    )
    return module, report


@pytest.mark.parametrize(
    "cls, overrides, weighted",
    [
        ("TokenEmbedding", {}, False),
        ("LearnedPositionalEmbedding", {}, False),
        ("Unembed", {}, False),
        ("FeedForward", {"act_fn": "relu"}, False),
        ("FeedForward", {"act_fn": "gelu_new"}, False),
        ("FeedForward", {"act_fn": "gelu"}, False),
        ("CrossEntropyLoss", {}, False),
        ("CrossEntropyLoss", {}, True),
        ("LayerNorm", {}, False),
        ("MultiHeadAttention", {"causal": True}, False),
        ("MultiHeadAttention", {"causal": False}, False),
        ("TransformerBlock", {"normalization": "pre"}, False),
        ("TransformerBlock", {"normalization": "post", "act_fn": "relu"}, False),
        ("TransformerBlock", {"normalization": None, "causal": False}, False),
        ("TransformerBlock", {"normalization": "post", "attn_only": True}, False),
    ],
)
def test_every_component_passes(cls, overrides, weighted):
    module, report = check(cls, overrides, weighted)
    names = [row.tensor for row in report.rows]
    expected = [name for name, _ in module.named_parameters()]
    if cls in FLOAT_INPUT:
        expected.append(next(iter(inspect.signature(module.forward).parameters)))
    assert names == expected, "every parameter, and the float input, must be checked"
    for row in report.rows:
        assert row.checked == min(SAMPLE, row.size)
        assert row.max_rel_error <= TOL, (
            f"{cls} {overrides}: {row.tensor} {row.max_rel_error:.1e} > {TOL:.0e}"
        )
    assert report.passed


@pytest.mark.parametrize(
    "overrides",
    # the default run checks one whole model (the components above cover each option); -m slow the
    # others
    [
        pytest.param({"normalization": "pre"}, id="pre"),
        pytest.param(
            {
                "normalization": "post",
                "causal": False,
                "act_fn": "relu",
                "positional": "sinusoidal",
                "unembed": False,
            },
            id="post-encoder",
            marks=pytest.mark.slow,
        ),
        pytest.param(
            {"normalization": None, "attn_only": True}, id="none-attn_only", marks=pytest.mark.slow
        ),
    ],
)
def test_whole_model_every_parameter(overrides):
    model, report = check("Transformer", overrides, sample=6)
    assert [row.tensor for row in report.rows] == [name for name, _ in model.named_parameters()]
    assert all(row.kind == "parameter" for row in report.rows), "tokens are discrete: no input row"
    worst = report.worst
    assert worst.max_rel_error <= TOL, f"{worst.tensor}: {worst.max_rel_error:.1e} > {TOL:.0e}"


def planted(cls, old, new):
    """A subclass of ``cls`` whose backward is the reference's with one line changed (a planted
    mistake)."""
    source = textwrap.dedent(inspect.getsource(cls.backward))
    assert source.count(old) == 1, (
        f"the reference no longer contains {old!r}; update the planted mistake"
    )
    namespace = {}
    exec(source.replace(old, new), vars(inspect.getmodule(cls)), namespace)
    return type(f"Planted{cls.__name__}", (cls,), {"backward": namespace["backward"]})


def test_planted_layernorm_mistake_is_caught_at_x():
    # dropping the mean term: dx = dcentered, forgetting that x also reaches the output through
    # mean(x)
    Wrong = planted(np_layernorm.LayerNorm, "dx = dcentered + dmean / d_model", "dx = dcentered")
    cfg = Variant("test").config()
    module = randomize_parameters(Wrong(cfg), 1)
    report = gradcheck(module, *make_inputs("LayerNorm", cfg, 2), sample=SAMPLE)
    errors = {row.tensor: row.max_rel_error for row in report.rows}
    assert errors["x"] > 1e-2, f"missing mean term not caught: x error {errors['x']:.1e}"
    assert errors["w"] <= TOL and errors["b"] <= TOL, "w and b do not depend on the mean term"
    assert not report.passed


def test_planted_softmax_mistake_is_caught_at_queries_and_keys():
    # dropping the row sum of the softmax Jacobian: dscores = probs * dprobs
    Wrong = planted(
        np_attention.MultiHeadAttention,
        "dscores = probs * (dprobs - dprobs_mean)",
        "dscores = probs * dprobs",
    )
    cfg = Variant("test").config()
    module = randomize_parameters(Wrong(cfg, 0), 1)
    report = gradcheck(module, *make_inputs("MultiHeadAttention", cfg, 2), sample=SAMPLE)
    errors = {row.tensor: row.max_rel_error for row in report.rows}
    for name in ("W_Q", "W_K", "b_Q", "x"):
        assert errors[name] > 1e-2, f"missing row sum not caught at {name}: {errors[name]:.1e}"
    for name in ("W_V", "W_O", "b_V", "b_O"):  # the values and output path come before the softmax
        assert errors[name] <= TOL, f"{name} should be unaffected, got {errors[name]:.1e}"


def test_a_nan_gradient_is_stopped_at_the_boundary():
    # a backward that makes NaN from finite inputs never reaches the comparison: the boundary names
    # it
    Wrong = planted(
        np_layernorm.LayerNorm, "dx = dcentered + dmean / d_model", "dx = dcentered * np.nan"
    )
    cfg = Variant("test").config()
    with pytest.raises(
        NonFiniteError, match="LayerNorm.backward: the gradient (it returns|at hook_in) holds nan"
    ):
        gradcheck(
            randomize_parameters(Wrong(cfg), 1), *make_inputs("LayerNorm", cfg, 2), sample=SAMPLE
        )


def test_refuses_float32():
    cfg = Variant("test", {"dtype": "float32"}).config()
    module = npi.LayerNorm(cfg)
    x = np.random.default_rng(0).standard_normal((2, 3, cfg.d_model)).astype(np.float32)
    with pytest.raises(TypeError, match="float64"):
        gradcheck(module, x)
    cfg64 = Variant("test").config()
    with pytest.raises(TypeError, match="float64"):
        gradcheck(npi.LayerNorm(cfg64), x)  # float64 weights, float32 input


def test_bad_arguments_name_themselves():
    cfg = Variant("test").config()
    x = make_inputs("LayerNorm", cfg)[0]
    with pytest.raises(ValueError, match="sample"):
        gradcheck(npi.LayerNorm(cfg), x, sample=0)
    with pytest.raises(ValueError, match="step"):
        gradcheck(npi.LayerNorm(cfg), x, step=-1e-6)
    with pytest.raises(TypeError, match="module"):
        gradcheck(torch.nn.LayerNorm(cfg.d_model), x)


def test_leaves_weights_and_input_unchanged():
    cfg = Variant("test").config()
    module = build(npi, "FeedForward", cfg)
    before = module.state_dict()
    (x,) = make_inputs("FeedForward", cfg)
    x_before = x.copy()
    gradcheck(module, x, sample=SAMPLE)
    for name, value in module.state_dict().items():
        assert np.array_equal(value, before[name]), f"{name} changed"
    assert np.array_equal(x, x_before)


# --- the twin: torch.autograd.gradcheck in float64 -------------------------------------------

TINY = dict(d_vocab=5, d_model=4, n_heads=2, d_head=2, d_mlp=6, n_layers=1, n_ctx=4)


def twin_case(cls, overrides):
    """A torch twin component with random float64 weights, and its forward inputs (batch 2, pos
    3)."""
    cfg = npi.TransformerConfig(**{**TINY, **overrides})
    reference = build(npi, cls, cfg, seed=3)
    twin = getattr(pti, cls).from_twin(reference)
    rng = np.random.default_rng(4)
    if cls in ("TokenEmbedding", "LearnedPositionalEmbedding", "Transformer"):
        inputs = [torch.from_numpy(rng.integers(0, cfg.d_vocab, (2, 3)))]
    elif cls == "CrossEntropyLoss":
        inputs = [
            torch.from_numpy(rng.standard_normal((2, 3, cfg.d_vocab))).requires_grad_(),
            torch.from_numpy(rng.integers(0, cfg.d_vocab, (2, 3))),
            torch.from_numpy(rng.uniform(0.5, 1.5, (2, 3))),
        ]
    else:
        inputs = [torch.from_numpy(rng.standard_normal((2, 3, cfg.d_model))).requires_grad_()]
    return twin, inputs


# small components: torch's full mode (the whole Jacobian, entry by entry) is cheap
FULL = [
    ("TokenEmbedding", {}),
    ("LearnedPositionalEmbedding", {}),
    ("Unembed", {}),
    ("FeedForward", {"act_fn": "gelu_new"}),
    ("FeedForward", {"act_fn": "gelu"}),
    ("FeedForward", {"act_fn": "relu"}),
    ("CrossEntropyLoss", {}),
    ("LayerNorm", {}),
]
# larger ones: fast mode (random projections u^T J v of the same Jacobian) in the default run,
# the full Jacobian under ``pytest -m slow``
LARGE = [
    ("MultiHeadAttention", {"causal": True}),
    ("MultiHeadAttention", {"causal": False}),
    ("TransformerBlock", {"normalization": "pre"}),
    ("TransformerBlock", {"normalization": "post"}),
    ("TransformerBlock", {"normalization": None, "attn_only": True}),
    ("Transformer", {"normalization": "pre"}),
    ("Transformer", {"normalization": "post", "positional": "sinusoidal", "unembed": False}),
]


def run_torch_gradcheck(cls, overrides, fast_mode):
    twin, inputs = twin_case(cls, overrides)
    names = [name for name, _ in twin.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for _, p in twin.named_parameters())
    float_inputs = tuple(x for x in inputs if x.requires_grad)

    def f(*tensors):
        # the parameters come in as arguments, so gradcheck differentiates them too
        state = dict(zip(names, tensors[: len(names)]))
        call_inputs = list(tensors[len(names) :]) + [x for x in inputs if not x.requires_grad]
        return torch.func.functional_call(twin, state, tuple(call_inputs))

    # torch's default tolerances: eps 1e-6, atol 1e-5, rtol 1e-3; every parameter and the float
    # input
    return torch.autograd.gradcheck(
        f, params + float_inputs, eps=1e-6, atol=1e-5, rtol=1e-3, fast_mode=fast_mode
    )


@pytest.mark.parametrize("cls, overrides", FULL + LARGE)
def test_twin_passes_torch_autograd_gradcheck(cls, overrides):
    assert run_torch_gradcheck(cls, overrides, fast_mode=(cls, overrides) in LARGE)


@pytest.mark.slow
@pytest.mark.parametrize("cls, overrides", LARGE)
def test_twin_passes_torch_autograd_gradcheck_full_jacobian(cls, overrides):
    assert run_torch_gradcheck(cls, overrides, fast_mode=False)


# --- the Llama family: RMSNorm, rotary q and k, SwiGLU, grouped-query attention ---------------

LLAMA = {
    "normalization_type": "RMS",
    "eps": 1e-6,
    "positional_embedding_type": "rotary",
    "act_fn": "silu",
    "gated_mlp": True,
    "mlp_bias": False,
    "attn_bias": False,
    "d_head": 4,
    "rotary_base": 100.0,
}


@pytest.mark.parametrize(
    "cls, overrides",
    [
        ("RMSNorm", LLAMA),
        ("GatedFeedForward", LLAMA),
        ("MultiHeadAttention", {**LLAMA, "attn_bias": True}),  # rotary, split halves, all of d_head
        # GPT-J pairs, partial
        ("MultiHeadAttention", {**LLAMA, "rotary_adjacent_pairs": True, "rotary_dim": 2}),
        # one group of 2
        ("GroupedQueryAttention", {**LLAMA, "n_key_value_heads": 1, "attn_bias": True}),
        # groups of 4
        ("GroupedQueryAttention", {**LLAMA, "n_heads": 4, "n_key_value_heads": 1, "rotary_dim": 2}),
        ("TransformerBlock", {**LLAMA, "n_key_value_heads": 1}),
        (
            "TransformerBlock",
            {
                "positional_embedding_type": "rotary",
                "d_head": 4,
                "rotary_dim": 2,
                "act_fn": "gelu",
                "parallel_attn_mlp": True,
            },
        ),  # GPT-NeoX's block
        (
            "TransformerBlock",
            {**LLAMA, "normalization": None, "normalization_type": None, "parallel_attn_mlp": True},
        ),
        ("Transformer", {**LLAMA, "n_heads": 4, "n_key_value_heads": 2}),
    ],
)
def test_llama_family_component_passes(cls, overrides):
    module, report = check(cls, overrides, sample=8 if cls == "Transformer" else SAMPLE)
    names = [row.tensor for row in report.rows]
    expected = [name for name, _ in module.named_parameters()]
    if cls != "Transformer":  # tokens are discrete: the model has no input row
        expected.append(next(iter(inspect.signature(module.forward).parameters)))
    assert names == expected, "every parameter, and the float input, must be checked"
    for row in report.rows:
        assert row.max_rel_error <= TOL, (
            f"{cls} {overrides}: {row.tensor} {row.max_rel_error:.1e} > {TOL:.0e}"
        )
    assert report.passed


@pytest.mark.parametrize(
    "cls, old, new, wrong",
    [
        # the rotation's backward turned the same way as the forward, not back
        (
            np_attention.MultiHeadAttention,
            "dq = rotate(dq, cos, -sin, adjacent)",
            "dq = rotate(dq, cos, sin, adjacent)",
            {"W_Q", "x"},
        ),
        # one head's gradient kept, the group's sum missed
        (
            np_attention.GroupedQueryAttention,
            "dk = dk.reshape(*dk.shape[:2], *grouped).sum(axis=3)",
            "dk = dk.reshape(*dk.shape[:2], *grouped)[:, :, :, 0]",
            {"_W_K", "x"},
        ),
        # silu's derivative without its second term: sigmoid alone
        (
            np_gated.GatedFeedForward,
            "dpre += dsigmoid * sigmoid * (1 - sigmoid)",
            "pass",
            {"W_gate", "x"},
        ),
        # RMSNorm without the path through the mean square
        (np_rmsnorm.RMSNorm, "dx += 2 / d_model * dmean_square * x", "pass", {"x"}),
    ],
    ids=["rotation-sign", "group-sum", "silu-derivative", "rms-mean-square"],
)
def test_llama_family_planted_mistakes_are_caught(cls, old, new, wrong):
    Wrong = planted(cls, old, new)
    overrides = {**LLAMA, "n_key_value_heads": 1} if "Grouped" in cls.__name__ else LLAMA
    cfg = Variant("test", overrides).config()
    module = randomize_parameters(Wrong(cfg, 0), 1)
    report = gradcheck(module, *make_inputs("MultiHeadAttention", cfg, 2), sample=SAMPLE)
    errors = {row.tensor: row.max_rel_error for row in report.rows}
    assert all(errors[name] > 1e-2 for name in wrong), errors
    assert not report.passed


# --- the tour: python demo.py gradcheck -------------------------------------------------------


def test_the_gradcheck_tour_reaches_every_hand_written_backward(tmp_path, capsys):
    """The tour says "every hand-written backward": each NumPy class with a backward of its own
    (and the grouped-query attention that shares one) has a row, and every row passes. The
    sinusoidal encoding has no parameter and a discrete input: nothing to differentiate."""
    import argparse

    from tours import gradcheck as tour

    tour.run(argparse.Namespace(out=str(tmp_path), sample=2, seed=0))
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("---")) + 1
    rows = lines[first : lines.index("", first)]  # the table ends at an empty line
    checked = {row.split()[-1] for row in rows}  # the last column is pass or FAIL
    assert checked == {"pass"}, rows
    components = {word for row in rows for word in row.split() if word in vars(npi)}
    with_backward = {
        name
        for name, value in vars(npi).items()
        if inspect.isclass(value) and "backward" in vars(value)
    }
    expected = with_backward - {"HookPoint", "SinusoidalPositionalEncoding"}
    assert expected | {"GroupedQueryAttention"} <= components, expected - components
