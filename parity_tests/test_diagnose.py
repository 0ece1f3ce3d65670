"""Diagnoses: each classic mistake, planted in a learner's copy, gets the hint that names it.

Every planted mistake is one line of the reference's backward changed, in a copy whose other
bodies are the reference's (as ``parity_tests/copies.py`` plants them); the checker must mark the
exercise wrong and give the hint of that kind. Right answers get no hint, and mistakes that
fit none of the detectors (GELU's derivative missing a term) get none either: a hint is either
exact or absent. A backward that raises gets its hint from the failing line's shapes (a weight
used untransposed, a bias summed over the wrong axes) or from non-finite values exactly where
the mask hides a key.
"""

import numpy as np
import pytest

import numpy_impl as npi
from exercises import diagnose as dg
from exercises.catalog import EXERCISES
from exercises.check import check
from gradcheck.factory import build, make_inputs
from parity_tests.copies import planted_copy

SAMPLE = 1

# (label, exercise, file, reference line, planted line, kind, words the hint must hold)
PLANTED = [
    (
        "fancy-indexed +=",
        "embedding",
        "embedding.py",
        "np.add.at(self.W_E.grad, tokens, dembed)",
        "self.W_E.grad[tokens] += dembed",
        "repeated tokens",
        ["repeated tokens", "np.add.at"],
    ),
    (
        "n-1 in a mean",
        "loss",
        "loss.py",
        "dnll = dloss * weights / weights.sum()",
        "dnll = dloss * weights / (weights.sum() - 1)",
        "constant factor",
        ["tokens/(tokens-1)"],
    ),
    (
        "sqrt(d_model) for sqrt(d_head)",
        "attention",
        "attention.py",
        "dq_h = dscores @ k_h / math.sqrt(d_head)",
        "dq_h = dscores @ k_h / math.sqrt(self.cfg.d_model)",
        "constant factor",
        ["sqrt(d_head/d_model)", "q.hook_out"],
    ),  # hook_q's own name
    (
        "a 2 too many",
        "unembed",
        "unembed.py",
        'dx = np.einsum("mv,bpv->bpm", W_U, dlogits, optimize=True)',
        'dx = 2 * np.einsum("mv,bpv->bpm", W_U, dlogits, optimize=True)',
        "constant factor",
        ["x is 2 times"],
    ),
    (
        "a 1/2",
        "feedforward",
        "feedforward.py",
        "self.b_out.grad += dout.sum(axis=(0, 1))",
        "self.b_out.grad += 0.5 * dout.sum(axis=(0, 1))",
        "constant factor",
        ["b_out is 1/2"],
    ),
    (
        "sign flipped",
        "feedforward",
        "feedforward.py",
        'dx = np.einsum("mf,bpf->bpm", W_in, dpre, optimize=True)',
        'dx = -np.einsum("mf,bpf->bpm", W_in, dpre, optimize=True)',
        "constant factor",
        ["-1", "sign is flipped"],
    ),
    (
        "mean for a sum",
        "positional",
        "positional.py",
        "np.add.at(self.W_pos.grad, positions[0], dpos_embed.sum(axis=0))",
        "np.add.at(self.W_pos.grad, positions[0], dpos_embed.mean(axis=0))",
        "constant factor",
        ["1/batch", "a mean over batch where a sum belongs"],
    ),
    (
        "pattern gradient transposed",
        "attention",
        "attention.py",
        "dpattern = dz_h @ v_h.swapaxes(-1, -2)",
        "dpattern = v_h @ dz_h.swapaxes(-1, -2)",
        "transposed",
        ["hook_pattern", "q_pos and k_pos swapped"],
    ),
    (
        "W_U.grad's einsum transposed",
        "unembed",
        "unembed.py",
        'np.einsum("bpv,bpm->mv", dlogits, x, optimize=True)',
        'np.einsum("bpv,bpm->vm", dlogits, x, optimize=True)',
        "transposed",
        ["transpose"],
    ),
    (
        "first batch row only",
        "positional",
        "positional.py",
        "np.add.at(self.W_pos.grad, positions[0], dpos_embed.sum(axis=0))",
        "np.add.at(self.W_pos.grad, positions[0], dpos_embed[0])",
        "missing sum",
        ["W_pos", "batch row 0 alone"],
    ),
    (
        "one position only",
        "unembed",
        "unembed.py",
        "self.b_U.grad += dlogits.sum(axis=(0, 1))",
        "self.b_U.grad += dlogits[:, -1].sum(axis=0)",
        "missing sum",
        ["b_U", "position 5 alone"],
    ),
    (
        "residual without its skip path",
        "block",
        "block.py",
        "dresid_pre = dresid_mid + dattn_in",
        "dresid_pre = dattn_in",
        "one path",
        ["lacks the skip path"],
    ),
    (
        "residual with only its skip path",
        "block",
        "block.py",
        "dresid_mid = dresid_post + dmlp_in",
        "dresid_mid = dresid_post + 0 * dmlp_in",
        "one path",
        ["hook_resid_mid holds only the skip path", "MLP"],
    ),
    (
        "LayerNorm without the mean's path",
        "layernorm",
        "layernorm.py",
        "dx = dcentered + dmean / d_model",
        "dx = dcentered",
        "one path",
        ["through the mean"],
    ),
    (
        "LayerNorm without the variance's path",
        "layernorm",
        "layernorm.py",
        "dcentered += 2 / d_model * dvar * centered  # [batch, pos, d_model]",
        "pass  # [batch, pos, d_model]",
        "one path",
        ["through the variance"],
    ),
    (
        "pattern used untransposed",
        "attention",
        "attention.py",
        "dv_h = pattern.swapaxes(-1, -2) @ dz_h",
        "dv_h = pattern @ dz_h",
        "slip",
        ["pattern used untransposed", "pattern.swapaxes(-1, -2) @ dz_h"],
    ),
]

PLANTED += [
    (
        "Bessel's correction in the variance",
        "layernorm",
        "layernorm.py",
        "dcentered += 2 / d_model * dvar * centered",
        "dcentered += 2 / (d_model - 1) * dvar * centered",
        "Bessel",
        ["Bessel's correction (N-1)", "divides by d_model too"],
    ),
    (
        "the softmax's row-sum term left out",
        "attention",
        "attention.py",
        "dscores = probs * (dprobs - dprobs_mean)",
        "dscores = probs * dprobs",
        "softmax row sum",
        ["hook_attn_scores is probs * dprobs", "row-sum term is missing"],
    ),
    (
        "a weight used untransposed",
        "unembed",
        "unembed.py",
        'dx = np.einsum("mv,bpv->bpm", W_U, dlogits, optimize=True)',
        "dx = dlogits @ self.W_U.data",
        "untransposed",
        [
            "dlogits is [batch, pos, d_vocab]",
            "self.W_U.data is [d_model, d_vocab]",
            "used untransposed",
            "self.W_U.data.T",
        ],
    ),
    (
        "a weight's einsum letters swapped",
        "unembed",
        "unembed.py",
        'dx = np.einsum("mv,bpv->bpm", W_U, dlogits, optimize=True)',
        'dx = np.einsum("vm,bpv->bpm", W_U, dlogits, optimize=True)',
        "untransposed",
        ["W_U is [d_model, d_vocab]", '"mv" matches its axes'],
    ),
    (
        "a bias summed over one axis too few",
        "unembed",
        "unembed.py",
        "self.b_U.grad += dlogits.sum(axis=(0, 1))",
        "self.b_U.grad += dlogits.sum(axis=0)",
        "bias axes",
        ["b_U.grad is [d_vocab]", "[pos, d_vocab]", "Unbroadcasting", "d.sum(axis=(0, 1))"],
    ),
    (
        "a bias summed over its own axis too",
        "attention",
        "attention.py",
        "self.b_Q.grad += dq.sum(axis=(0, 1))",
        "self.b_Q.grad += dq.sum(axis=(0, 1, 2))",
        "bias axes",
        ["b_Q [head, d_head] is summed over head too", "Unbroadcasting"],
    ),
    (
        "a bias summed over every axis",
        "feedforward",
        "feedforward.py",
        "self.b_in.grad += dpre.sum(axis=(0, 1))",
        "self.b_in.grad += dpre.sum()",
        "bias axes",
        ["b_in [d_mlp] is summed over its own d_mlp too", "Unbroadcasting"],
    ),
    (
        "the mask's backward writes -inf",
        "attention",
        "attention.py",
        "dscores = np.where(self.mask[:pos, :pos], dscores, 0.0)",
        "dscores = np.where(self.mask[:pos, :pos], dscores, -np.inf)",
        "mask",
        ["masked entries get a zero gradient", "np.where(mask, dscores, 0.0)"],
    ),
]

SLIPS = [
    (
        "GELU's derivative missing a term",
        "feedforward",
        "feedforward.py",
        "dpre += dinner * GELU_C * (1 + 3 * 0.044715 * pre * pre)",
        "dpre += dinner * GELU_C",
        "slip",
        ["cubic term's derivative"],
    ),
]

UNRECOGNISED = [
    (
        "GELU's derivative missing its 3",
        "feedforward",
        "feedforward.py",
        "dpre += dinner * GELU_C * (1 + 3 * 0.044715 * pre * pre)",
        "dpre += dinner * GELU_C * (1 + 0.044715 * pre * pre)",
    ),
]


# the Llama family's classic slips (a list of their own: the tests above index PLANTED from its end)
LLAMA_PLANTED = [
    (
        "silu's derivative without its second term",
        "swiglu",
        "gated_feedforward.py",
        "dpre += dsigmoid * sigmoid * (1 - sigmoid)",
        "pass",
        "one path",
        ["keeps only sigmoid of silu's derivative", "two terms"],
    ),
    (
        "silu's derivative without its first term",
        "swiglu",
        "gated_feedforward.py",
        "dpre = dact * sigmoid  #",
        "dpre = 0 * dact  #",
        "one path",
        ["keeps only pre * sigmoid'"],
    ),
    (
        "RMSNorm without the mean square's path",
        "rmsnorm",
        "rmsnorm.py",
        "dx += 2 / d_model * dmean_square * x",
        "pass",
        "one path",
        ["multiple of x's own row", "mean square"],
    ),
]


def result_of(results, key):
    return next(result for result in results if result.key == key)


@pytest.fixture(scope="module")
def planted(solved, tmp_path_factory):
    """``planted(key, file, old, new)``: the checker's result for exercise (or step) ``key`` on a
    copy of the solved exercises with one line of ``file`` replaced: the exercise alone, without
    its steps (``steps=False``), whose rows no test here reads. Each planted line is checked once
    in this module, however many tests read the result."""
    results = {}

    def result(key, file, old, new):
        if (key, file, old, new) not in results:
            directory = planted_copy(solved, tmp_path_factory.mktemp("planted"), file, old, new)
            results[key, file, old, new] = result_of(
                check(directory, keys=[key], sample=SAMPLE, steps=False), key
            )
        return results[key, file, old, new]

    return result


# one mistake of each kind by default (each detector once), the rest: pytest -m slow
QUICK = (
    "fancy-indexed +=",
    "sqrt(d_model) for sqrt(d_head)",
    "pattern gradient transposed",
    "one position only",
    "residual without its skip path",
    "Bessel's correction in the variance",
    "the softmax's row-sum term left out",
    "a weight used untransposed",
    "a bias summed over one axis too few",
    "the mask's backward writes -inf",
)


def some_slow(cases):
    return [
        case if case[0] in QUICK else pytest.param(*case, marks=pytest.mark.slow) for case in cases
    ]


@pytest.mark.parametrize(
    "label, key, file, old, new, kind, words",
    some_slow(PLANTED + SLIPS),
    ids=[p[0] for p in PLANTED + SLIPS],
)
def test_planted_mistake_gets_its_hint(planted, label, key, file, old, new, kind, words):
    result = planted(key, file, old, new)
    assert result.status == "wrong", f"{label}: {result.status} {result.message}"
    assert result.hint, f"{label}: no hint; message: {result.message}"
    for word in words:
        assert word in result.hint, f"{label}: {word!r} not in the hint {result.hint!r}"


@pytest.mark.parametrize(
    "label, key, file, old, new", UNRECOGNISED, ids=[u[0] for u in UNRECOGNISED]
)
def test_unrecognised_mistake_gets_no_hint(planted, label, key, file, old, new):
    result = planted(key, file, old, new)
    assert result.status == "wrong" and result.hint == "", f"{label}: a false hint {result.hint!r}"


# (label, step, file, reference line, planted line, words the step's hint must hold)
STEPS = [
    (
        "the softmax's row-sum term left out",
        "attention.softmax",
        *PLANTED[-7][2:5],
        ["dscores is probs * dprobs", "row-sum term is missing"],
    ),
    (
        "the mask's backward writes -inf",
        "attention.scores",
        *PLANTED[-1][2:5],
        ["masked entries get a zero gradient"],
    ),
    (
        "a bias summed over its own axis too",
        "attention.projections",
        *PLANTED[-3][2:5],
        ["summed over head too"],
    ),
    (
        "the 1/sqrt(d_head) left out",
        "attention.scores",
        "attention.py",
        "dk_h = dscores.swapaxes(-1, -2) @ q_h / math.sqrt(d_head)",
        "dk_h = dscores.swapaxes(-1, -2) @ q_h",
        ["dk_h is sqrt(d_head)", "the 1/sqrt(d_head) scale left out"],
    ),
]


@pytest.mark.parametrize(
    "label, key, file, old, new, words", some_slow(STEPS), ids=[s[0] for s in STEPS]
)
def test_a_step_planted_wrong_gets_its_hint(planted, label, key, file, old, new, words):
    result = planted(key, file, old, new)
    assert result.status == "wrong", f"{label}: {result.status} {result.message}"
    for word in words:
        assert word in result.hint, f"{label}: {word!r} not in the hint {result.hint!r}"


def test_the_first_hook_point_inside_where_a_gradient_parts_is_named(planted):
    """Inside the attention: right at hook_z and hook_pattern, first wrong at hook_attn_scores."""
    label, key, file, old, new, *_ = PLANTED[-7]
    result = planted(key, file, old, new)
    assert result.parting.startswith(
        "right at the first 6 hook points the gradient reaches, down to hook_pattern; "
        "first wrong at hook_attn_scores (relative error"
    ), result.parting


def test_the_mask_writing_inf_is_a_non_finite_gradient_at_the_boundary(planted):
    *_, file, old, new, _, _ = PLANTED[-1]
    result = planted("attention", file, old, new)
    assert (
        "backward made NaN or inf from finite inputs" in result.message
        and "NonFiniteError" in result.message
    )
    assert "masked entries get a zero gradient" in result.hint


def test_right_answers_get_no_hint_from_the_checker(solved):
    for result in check(solved, keys=["unembed", "layernorm", "attention"], sample=SAMPLE):
        assert result.status == "done" and result.hint == "" and result.parting == "", result.key


def _record(module, direction):
    seen = {}
    for name, sub in module.named_modules():
        if hasattr(sub, "bwd_hooks") and hasattr(sub, "add_hook"):
            sub.add_hook(
                lambda x, hook, name=name: seen.__setitem__(
                    name,
                    np.array(
                        np.asarray(x.detach() if hasattr(x, "detach") else x), dtype=np.float64
                    ),
                ),
                dir=direction,
            )
    return seen


def evidence_of(cls, variant, seed=0):
    """Evidence for ``cls`` whose 'mine' is the reference's own gradient and 'right' the twin's
    (equal to rounding)."""
    import torch

    import torch_impl

    cfg = variant.config()
    module = build(npi, cls, cfg, seed)
    inputs = make_inputs(cls, cfg, seed + 1, variant.weighted)
    if cls == "CrossEntropyLoss":
        twin = torch_impl.CrossEntropyLoss()
    elif cls == "MultiHeadAttention":  # grouped-query in the Llama variant
        twin = torch_impl.MultiHeadAttention.for_config(cfg)
    else:
        twin = getattr(torch_impl, cls)(cfg)
    twin.load_state_dict(
        {name: torch.from_numpy(p.data.copy()) for name, p in module.named_parameters()}
    )
    twin_inputs = [
        torch.tensor(x, requires_grad=bool(np.issubdtype(x.dtype, np.floating)) and i == 0)
        for i, x in enumerate(inputs)
    ]
    mine_hooks, right_hooks, activations = (
        _record(module, "bwd"),
        _record(twin, "bwd"),
        _record(twin, "fwd"),
    )
    out = module.forward(*inputs)
    R = np.asarray(np.random.default_rng(seed + 2).standard_normal(np.shape(out)))
    module.zero_grad()
    dinput = module.backward(R.copy() if np.ndim(out) else float(R))
    (twin(*twin_inputs) * torch.from_numpy(R)).sum().backward()
    tensors = {
        name: (p.grad.copy(), tp.grad.numpy())
        for (name, p), (_, tp) in zip(module.named_parameters(), twin.named_parameters())
    }
    if dinput is not None:
        tensors["x"] = (np.asarray(dinput), twin_inputs[0].grad.numpy())
    hooks = {
        name: (mine_hooks.get(name), right) for name, right in reversed(list(right_hooks.items()))
    }
    parameters = {name: p.data.copy() for name, p in module.named_parameters()}
    return dg.Evidence(cls, cfg, tuple(inputs), R, tensors, hooks, activations, None, parameters)


@pytest.mark.parametrize("exercise", EXERCISES, ids=[e.key for e in EXERCISES])
def test_right_answers_get_no_hint(exercise):
    """The reference's gradients against the twin's: equal to rounding, so nothing to diagnose."""
    for variant in exercise.variants:
        assert dg.diagnose(evidence_of(exercise.cls, variant)) is None, (
            f"{exercise.key} [{variant.label}]"
        )


def test_each_detector_needs_an_exact_fit():
    rng = np.random.default_rng(0)
    right = rng.standard_normal((3, 5, 8))  # [batch, pos, d_model]
    sizes = {"d_model": 8, "d_head": 3, "batch": 3}
    noisy = 2 * right + 1e-3 * rng.standard_normal(right.shape)
    assert dg.constant_factor("x", noisy, right, sizes) is None, (
        "2 x + noise is not a constant factor"
    )
    assert "2 times" in dg.constant_factor("x", 2 * right, right, sizes).hint
    assert "1.37 times" in dg.constant_factor("x", 1.37 * right, right, sizes).hint, (
        "an unnamed factor is still said"
    )
    assert dg.constant_factor("x", right, right, sizes) is None, "a factor of 1 is no mistake"
    square = rng.standard_normal((2, 4, 4))  # [batch, q_pos, k_pos]
    assert "axes 1 and 2 swapped" in dg.transposed("W", square.swapaxes(1, 2), square).hint
    assert dg.transposed("W", square.swapaxes(1, 2) + 1e-3, square) is None
    assert dg.transposed("W", square, square) is None


def test_a_broadcast_error_between_transposed_shapes_is_named():
    message = "operands could not be broadcast together with shapes (8,7) (7,8) "
    assert dg.diagnose_error(message).kind == "transposed"
    other = dg.diagnose_error("operands could not be broadcast together with shapes (8,7) (3,8) ")
    assert (
        other.kind == "shapes" and "(8,7) is [d_head, n_ctx]; (3,8) is [head, d_head]" in other.hint
    ), other
    assert (
        dg.diagnose_error("matmul: Input operand 1 has a mismatch in its core dimension 0") is None
    )


def test_recognised_constants_name_their_sizes():
    sizes = {"d_model": 8, "d_head": 3, "batch": 3, "pos": 5, "tokens": 15}
    assert dg.recognise(np.sqrt(3 / 8), sizes)[0].startswith("sqrt(d_head/d_model)")
    assert dg.recognise(15 / 14, sizes)[0].startswith("tokens/(tokens-1)")
    assert dg.recognise(-0.5, sizes)[0].startswith("-1/2")
    assert dg.recognise(1 / 8, sizes)[0].startswith("1/d_model")
    assert dg.recognise(1.37, sizes) is None


def test_numpys_remapped_shapes_are_said_in_axis_names():
    """An einsum's broadcast error lists each operand's shape and a remapped one: the operands' own
    are named."""
    message = (
        "operands could not be broadcast together with remapped shapes [original->remapped]: "
        "(5,6,3,8)->(5,6,newaxis,8,3) (3,10,8)->(8,10,3) "
    )
    found = dg.diagnose_error(message)
    assert found.kind == "shapes", found
    assert (
        "(5,6,3,8) is [batch, pos, head, d_head]" in found.hint
        and "(3,10,8) is [head, d_model, d_head]" in found.hint
    )
    assert (
        "einsum's letters name each operand's axes" in found.hint and "(8,10,3)" not in found.hint
    )


@pytest.mark.parametrize(
    "label, key, file, old, new, kind, words", LLAMA_PLANTED, ids=[p[0] for p in LLAMA_PLANTED]
)
def test_llama_family_slip_gets_its_hint(planted, label, key, file, old, new, kind, words):
    result = planted(key, file, old, new)
    assert result.status == "wrong", f"{label}: {result.status} {result.message}"
    for word in words:
        assert word in result.hint, f"{label}: {word!r} not in the hint {result.hint!r}"
