"""Name the mistake: what the difference between a wrong gradient and the right one says.

A learner's gradient ``mine`` and the right one (the reference's) differ in telling ways when
the backward holds one of the classic mistakes. Each detector below asks for an exact fit, to
rounding (``FIT``, relative): a mistake that fits none of them gets no hint, never a guess.

    repeated tokens   W_E's rows of tokens that appear once are right, those of repeated tokens
                      are not: a fancy-indexed ``+=`` keeps one occurrence, ``np.add.at`` adds all
    constant factor   mine = c * right everywhere; c is named when it is recognisable
                      (2, 1/2, -1, n/(n-1), 1/batch, sqrt(d_head/d_model), ...)
    transposed        mine is right with two axes of the same size swapped
    missing sum       mine is the gradient from one batch row, or one position, alone
    one path          a residual's gradient lacks its skip path, or holds only it; LayerNorm's
                      input gradient is off by the same amount across each row (the mean's
                      path) or by a multiple of the centred row (the variance's path)
    causal            an upstream gradient at position 0 alone reaches later positions (the
                      right one stays exactly 0 there), or masked attention scores get a gradient
    Bessel            LayerNorm's variance path is d_model/(d_model-1) times too large
    bias axes         a bias's gradient summed over one of the bias's own axes too (unbroadcasting)
    softmax row sum   the scores' gradient is probs * dprobs: the row-sum term left out
    probs or pattern  the softmax's backward built on the hooked pattern instead of probs (or
                      the values' gradient on probs instead of the pattern z was made from)
    mask              masked scores given -inf (or NaN) for a gradient instead of 0
    rotation          q's or k's gradient turned forward instead of back, with the other pairing,
                      with cos and sin swapped, or without the untouched tail of a partial rotary
    group sum         a shared key/value head's gradient from one head of its group, or summed
                      over strided heads (np.tile's order) instead of its own contiguous group

A backward that raises gets a hint from what the learner's process saw at the failing line
(``diagnose_error``): the shapes of each product's operands (a weight used untransposed), of a
bias gradient and what was added into it (summed over the wrong axes), and arrays that hold
non-finite values exactly where the causal mask hides a key.

Where to look: the first hook point whose gradient is wrong, walking backward from the output
(the mistake sits in the lines just before that hook's ``backward`` call), then the wrong
tensors, then the probes that rerun the backward with an upstream gradient of one batch row
or one position. The first detector that fits gives the hint.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from .catalog import AXIS_NAMES as SIZE_NAMES

_names = [SIZE_NAMES]  # {size: axis name} of the run being diagnosed (its size set)

EPS = 1e-5  # LayerNorm's, as in numpy_impl/layernorm.py and torch.nn.LayerNorm

# a fit counts when |mine - candidate| <= FIT * max(|mine|, |candidate|) (Euclidean norms)
FIT = 1e-8
# a tensor is right when |mine - right| <= RIGHT * |right| (then it is no evidence of a mistake)
RIGHT = 1e-7


@dataclass(frozen=True)
class Diagnosis:
    """One recognised mistake: its kind, the tensor or hook point it shows in, and a one-line
    hint."""

    # "repeated tokens", "constant factor", "transposed", "missing sum", "one path", "causal"
    kind: str
    tensor: str  # e.g. "W_E", "x", "hook_pattern", "blocks.1.hook_resid_mid"
    hint: str  # one line, for the learner


@dataclass
class Evidence:
    """What the checker saw for one component under one variant (gradients as float64 ndarrays).

    tensors: {name: (mine, right)} for each parameter and the input gradient (named as forward's
        argument: x, resid_pre, logits), in named_parameters order, the input last.
    hooks: {hook name: (mine or None, right)} in forward order; None: the learner never passed a
        gradient through that hook point.
    activations: {hook name: activation} from the forward pass (the reference's).
    rerun: rerun(R) -> (mine, right), each {name: gradient} over tensors and hooks, after a fresh
        forward and backward with upstream gradient R; None when the backward cannot be rerun.
    """

    cls: str
    cfg: object
    inputs: tuple
    R: np.ndarray
    tensors: dict
    hooks: dict = field(default_factory=dict)
    activations: dict = field(default_factory=dict)
    rerun: object = None
    parameters: dict = field(default_factory=dict)  # {name: the reference's weights}
    names: dict = field(default_factory=dict)  # {size: axis name} of the run's size set


def diagnose(evidence: Evidence):
    """The first recognised mistake in ``evidence``, or None (a right answer, or a mistake none of
    the detectors fits)."""
    _names[0] = evidence.names or SIZE_NAMES
    wrong_tensors = [
        name for name, (mine, right) in evidence.tensors.items() if not _right(mine, right)
    ]
    wrong_hooks = [
        name
        for name, (mine, right) in evidence.hooks.items()
        if mine is not None and not _right(mine, right)
    ]
    if not wrong_tensors and not wrong_hooks:
        return None
    for name in wrong_tensors:
        if name.split(".")[-1] == "W_E":
            found = repeated_tokens(name, *evidence.tensors[name], _tokens(evidence))
            if found:
                return found
    try:
        found = known_slip(evidence)
    except Exception:  # noqa: BLE001  (a detector that cannot apply here is no evidence)
        found = None
    if found:
        return found
    # backward order: the last hook point of the forward is the first the gradient reaches
    first_hook = next(
        (name for name in reversed(list(evidence.hooks)) if name in wrong_hooks), None
    )
    candidates = ([first_hook] if first_hook else []) + list(reversed(wrong_tensors))
    for name in candidates:
        mine, right = evidence.hooks[name] if name == first_hook else evidence.tensors[name]
        found = (
            softmax_row_sum(name, mine, right, evidence)
            or masked_nonfinite(name, mine, right, evidence)
            or bessel(name, mine, right, evidence)
            or bias_axes(name, mine, right)
            or constant_factor(name, mine, right, _sizes(evidence))
            or transposed(name, mine, right)
            or residual_path(name, mine, right, evidence)
            or silu_derivative(name, mine, right, evidence)
            or rmsnorm_path(name, mine, right, evidence)
            or layernorm_paths(name, mine, right, evidence)
        )
        if found:
            return found
    if evidence.rerun is None:
        return None
    try:
        return missing_sum(evidence, wrong_tensors) or causal(evidence)
    # the learner's backward failing on a second run is no evidence of anything here
    except Exception:
        return None


# --- the detectors, each: (name, mine, right, ...) -> Diagnosis or None ---


def repeated_tokens(name, mine, right, tokens):
    """W_E: rows of tokens seen once right, rows of tokens seen more than once wrong."""
    if tokens is None or mine.shape != right.shape:
        return None
    counts = np.bincount(np.asarray(tokens).ravel(), minlength=right.shape[0])[: right.shape[0]]
    once, repeated = counts == 1, counts > 1
    if not once.any() or not repeated.any():
        return None
    if _right(mine[once], right[once]) and not _right(mine[repeated], right[repeated]):
        return Diagnosis(
            "repeated tokens",
            name,
            (
                f"{name}: rows of tokens that appear once are right, rows of repeated tokens are "
                f"not: "
                f"W_E.grad[tokens] += ... keeps one occurrence of each; np.add.at(W_E.grad, "
                f"tokens, ...) adds them all"
            ),
        )
    return None


def constant_factor(name, mine, right, sizes):
    """mine = c * right everywhere (c != 1), with c named when it is a recognisable number."""
    if mine.shape != right.shape or not np.any(right):
        return None
    c = float(np.vdot(mine, right) / np.vdot(right, right))
    if abs(c - 1) <= FIT or not _fits(mine, c * right):
        return None
    if abs(c) <= FIT:
        return None  # all zeros: the checker says so in its own words
    label = recognise(c, sizes)
    if label is None:
        return Diagnosis(
            "constant factor",
            name,
            f"{name} is {c:.4g} times the right gradient, everywhere: one constant factor is off",
        )
    what, why = label
    value = "" if what.lstrip("-") in ("1", "2", "1/2") else f" = {c:.4g}"
    return Diagnosis(
        "constant factor",
        name,
        f"{name} is {what}{value} times the right gradient, everywhere: {why}",
    )


def transposed(name, mine, right):
    """mine is right with two axes of equal size swapped (e.g. q_pos and k_pos, or a square
    matrix)."""
    if mine.shape != right.shape or mine.ndim < 2:
        return None
    for i in range(mine.ndim):
        for j in range(i + 1, mine.ndim):
            if mine.shape[i] == mine.shape[j] and _fits(mine, np.swapaxes(right, i, j)):
                axes = AXIS_NAMES.get(name.split(".")[-1])
                which = f"{axes[i]} and {axes[j]}" if axes else f"axes {i} and {j}"
                return Diagnosis(
                    "transposed",
                    name,
                    (
                        f"{name} is the right gradient transposed ({which} swapped): a matrix used "
                        f"where its "
                        f"transpose belongs (.T or swapaxes(-1, -2) missing, or one too many)"
                    ),
                )
    return None


def residual_path(name, mine, right, evidence):
    """At a residual stream point: mine lacks the skip path's gradient, or holds nothing else."""
    short = name.split(".")[-1]
    prefix = name[: len(name) - len(short)]
    if short in ("resid_pre", "hook_resid_pre"):
        branch, skip_hook = "attention", prefix + "hook_attn_out"
    elif short == "hook_resid_mid":
        branch, skip_hook = "MLP", prefix + "hook_mlp_out"
    else:
        return None
    if skip_hook not in evidence.hooks:
        return None
    # the gradient arriving at the residual add: what the skip path carries
    skip = evidence.hooks[skip_hook][1]
    if _fits(mine, right - skip):
        return Diagnosis(
            "one path",
            name,
            (
                f"{name} lacks the skip path: a residual add (x + {branch}(...)) copies x to two "
                f"places, "
                f"so its gradient is the sum of both; add the gradient that arrived at the add to "
                f"the {branch} branch's"
            ),
        )
    if _fits(mine, skip):
        return Diagnosis(
            "one path",
            name,
            (
                f"{name} holds only the skip path: the gradient back through the {branch} branch "
                f"is missing "
                f"(a residual add's input gets the sum of both)"
            ),
        )
    return None


def layernorm_paths(name, mine, right, evidence):
    """LayerNorm's input gradient off by a constant per row (the mean's path) or a multiple of the
    centred row (the variance's)."""
    if mine.shape != right.shape or mine.ndim < 1 or mine.shape[-1] != evidence.cfg.d_model:
        return None
    if evidence.cls != "LayerNorm" and evidence.cfg.normalization is None:
        return None
    difference = mine - right
    scale = max(np.linalg.norm(mine), np.linalg.norm(right))
    if np.linalg.norm(difference) <= FIT * scale:
        return None
    per_row = difference.mean(axis=-1, keepdims=True)  # [..., 1]
    if np.linalg.norm(difference - per_row) <= FIT * scale:
        return Diagnosis(
            "one path",
            name,
            (
                f"{name} is off by the same amount across each row: the gradient through the mean "
                f"is missing or wrong "
                f"(forward: centered = x - mean, mean = x.mean(-1); x reaches centered directly "
                f"and through the mean)"
            ),
        )
    for x in _layernorm_inputs(name, evidence):
        if x.shape != difference.shape:
            continue
        centered = x - x.mean(axis=-1, keepdims=True)  # [..., d_model]
        alpha = (difference * centered).sum(-1, keepdims=True) / np.maximum(
            (centered**2).sum(-1, keepdims=True), 1e-300
        )
        if np.linalg.norm(difference - alpha * centered) <= FIT * scale:
            return Diagnosis(
                "one path",
                name,
                (
                    f"{name} is off by a multiple of the centred row: the gradient through the "
                    f"variance is missing or wrong "
                    f"(forward: var = mean(centered**2), scale = sqrt(var + eps); centered reaches "
                    f"the output through scale too)"
                ),
            )
    return None


def silu_derivative(name, mine, right, evidence):
    """At the gated MLP's hook_pre (gate.hook_out, the same point): silu's derivative with one
    of its two terms, sigmoid or pre * sigmoid'."""
    if not getattr(evidence.cfg, "gated_mlp", False):
        return None
    short = next((s for s in ("hook_pre", "gate.hook_out") if name.endswith(s)), None)
    if short is None:
        return None
    prefix = name[: -len(short)]
    pre = evidence.activations.get(prefix + "hook_pre")
    pre_linear = evidence.activations.get(prefix + "hook_pre_linear")
    dpost = evidence.hooks.get(prefix + "hook_post", (None, None))[1]
    if pre is None or pre_linear is None or dpost is None:
        return None
    dact = dpost * pre_linear  # the gradient of silu(pre), as the reference has it
    sigmoid = 1 / (1 + np.exp(-pre))
    for candidate, kept in (
        (dact * sigmoid, "sigmoid"),
        (dact * pre * sigmoid * (1 - sigmoid), "pre * sigmoid'"),
    ):
        if _fits_finite(mine, candidate):
            return Diagnosis("one path", name, SILU_HINT.format(name=name, kept=kept))
    return None


SILU_HINT = (
    "{name} keeps only {kept} of silu's derivative. act = pre * sigmoid(pre): pre reaches act "
    "directly and "
    "through sigmoid, so the derivative has two terms: dpre = dact * sigmoid + dact * pre * "
    "sigmoid * "
    "(1 - sigmoid)"
)


def rmsnorm_path(name, mine, right, evidence):
    """RMSNorm's input gradient off by a multiple of x itself, row by row: the mean square's
    path."""
    if evidence.cls != "RMSNorm" and getattr(evidence.cfg, "normalization_type", None) != "RMS":
        return None
    difference = mine - right
    scale = max(np.linalg.norm(mine), np.linalg.norm(right))
    if mine.shape != right.shape or np.linalg.norm(difference) <= FIT * scale:
        return None
    for x in _layernorm_inputs(name, evidence):
        if x.shape != difference.shape:
            continue
        alpha = (difference * x).sum(-1, keepdims=True) / np.maximum(
            (x**2).sum(-1, keepdims=True), 1e-300
        )
        if np.linalg.norm(difference - alpha * x) <= FIT * scale:
            return Diagnosis(
                "one path",
                name,
                (
                    f"{name} is off by a multiple of x's own row: the gradient through the mean "
                    f"square is missing or "
                    f"wrong (forward: mean_square = mean(x**2), scale = sqrt(mean_square + eps); x "
                    f"reaches the output "
                    f"directly and through scale: dx += 2 / d_model * dmean_square * x)"
                ),
            )
    return None


def softmax_row_sum(name, mine, right, evidence):
    """At hook_attn_scores: mine = probs * dprobs, the softmax's backward without its row-sum
    term."""
    if not name.endswith("hook_attn_scores"):
        return None
    prefix = name[: -len("hook_attn_scores")]
    probs = evidence.activations.get(prefix + "hook_pattern")
    dprobs = evidence.hooks.get(prefix + "hook_pattern", (None, None))[1]
    if probs is None or dprobs is None or not _fits_finite(mine, probs * dprobs):
        return None
    return Diagnosis("softmax row sum", name, ROW_SUM_HINT.format(name=name))


ROW_SUM_HINT = (
    "{name} is probs * dprobs: the softmax's row-sum term is missing. Each probability depends on "
    "every score of its row, through the sum that normalises it, so "
    "dscores = probs * (dprobs - (dprobs * probs).sum(axis=-1, keepdims=True))"
)
MASK_HINT = (
    "{name} holds -inf or NaN exactly where the causal mask hides a key (k_pos > q_pos): masked "
    "entries get a "
    "zero gradient. The forward replaced those scores by a constant (-inf), and a constant passes "
    "no gradient back: dscores = np.where(mask, dscores, 0.0)"
)


def masked_nonfinite(name, mine, right, evidence):
    """Non-finite values exactly at the entries the causal mask hides (k_pos > q_pos), finite
    elsewhere."""
    if not _masked_pattern(mine):
        return None
    return Diagnosis("mask", name, MASK_HINT.format(name=name))


def _masked_pattern(array):
    """True when ``array`` [..., q_pos, k_pos] is non-finite exactly where k_pos > q_pos."""
    array = np.asarray(array)
    if (
        array.ndim < 2
        or array.shape[-1] != array.shape[-2]
        or array.shape[-1] < 2
        or array.dtype.kind != "f"
    ):
        return False
    # [q_pos, k_pos]: True where k_pos > q_pos
    hidden = np.triu(np.ones(array.shape[-2:], dtype=bool), k=1)
    bad = ~np.isfinite(array)
    return bool(bad[..., hidden].all() and not bad[..., ~hidden].any())


def bessel(name, mine, right, evidence):
    """LayerNorm's input gradient whose variance path is c times the right one (c = d/(d-1):
    Bessel's correction)."""
    if evidence.cls != "LayerNorm" or name != "x" or "w" not in evidence.parameters:
        return None
    x = np.asarray(evidence.inputs[0], dtype=np.float64)
    dout = np.asarray(evidence.R, dtype=np.float64)
    centered = x - x.mean(axis=-1, keepdims=True)  # [batch, pos, d_model]
    scale = np.sqrt((centered**2).mean(axis=-1, keepdims=True) + EPS)  # [batch, pos, 1]
    # [batch, pos, 1]
    dscale = -(dout * evidence.parameters["w"] * centered).sum(axis=-1, keepdims=True) / scale**2
    d = x.shape[-1]
    variance_path = 2 / d * dscale / (2 * scale) * centered  # what the variance adds to dx
    difference = np.asarray(mine, dtype=np.float64) - right
    factor = float(
        np.vdot(difference, variance_path) / max(np.vdot(variance_path, variance_path), 1e-300)
    )
    if not _fits_finite(difference, factor * variance_path) or abs(factor) <= FIT:
        return None
    c = factor + 1
    if abs(c - d / (d - 1)) <= 1e-6 * c:
        return Diagnosis(
            "Bessel",
            name,
            (
                f"{name}: the gradient through the variance is d_model/(d_model-1) = {c:.4g} times "
                f"the right one: "
                "Bessel's correction (N-1). The forward's variance is the biased one, var = "
                "mean(centered**2) = "
                "sum(centered**2) / d_model (as torch.nn.LayerNorm), so its gradient divides by "
                "d_model too: "
                "dcentered += 2 / d_model * dvar * centered"
            ),
        )
    label = recognise(c, {"d_model": d})
    if label is not None:
        return Diagnosis(
            "one path",
            name,
            (
                f"{name}: the gradient through the variance is {label[0]} times the right one "
                f"({label[1]}); "
                "forward: var = mean(centered**2), scale = sqrt(var + eps)"
            ),
        )
    return None


def bias_axes(name, mine, right):
    """A bias's gradient summed over some of the bias's own axes too (each entry holds the sum over
    them)."""
    short = name.split(".")[-1]
    if (
        not short.startswith("b")
        or mine.shape != right.shape
        or not np.any(right)
        or _right(mine, right)
    ):
        return None
    axes = range(right.ndim)
    for count in range(1, right.ndim + 1):
        for subset in _subsets(list(axes), count):
            candidate = np.broadcast_to(right.sum(axis=tuple(subset), keepdims=True), right.shape)
            if _fits(mine, candidate):
                names = _axis_names(right.shape)
                summed = " and ".join(names[i] for i in subset)
                if len(subset) == right.ndim:
                    what = f"is summed over its own {summed} too: every entry holds the same total"
                else:
                    what = (
                        f"is summed over {summed} too: each entry holds the sum over every "
                        f"{summed}, not its own"
                    )
                return Diagnosis(
                    "bias axes",
                    name,
                    (f"{name} [{', '.join(names)}] {what}. {UNBROADCAST.format(bias=short)}"),
                )
    return None


UNBROADCAST = (
    "Unbroadcasting: the forward added {bias} to every batch row and position (NumPy broadcast it "
    "up), "
    "so its gradient sums the incoming gradient over exactly the axes the broadcast added, batch "
    "and pos, "
    "and keeps its own: d.sum(axis=(0, 1))"
)


def _subsets(items, count):
    import itertools

    return itertools.combinations(items, count)


def _axis_names(shape):
    return [_names[0].get(size, str(size)) for size in shape]


def _fits_finite(mine, candidate):
    mine, candidate = np.asarray(mine), np.asarray(candidate)
    return bool(
        np.all(np.isfinite(mine)) and np.all(np.isfinite(candidate)) and _fits(mine, candidate)
    )


def diagnose_step(step, tensors, mine_locals, expected, given, cfg):
    """A hint for one wrong step of the attention's backward, from its outputs and the locals it
    left."""
    cache = expected["cache"]
    ref = expected["locals"]
    if step == "softmax" and "dscores" in tensors:
        mine, right = tensors["dscores"]
        dprobs = ref.get("dprobs")
        if dprobs is not None and _fits_finite(mine, cache["probs"] * dprobs):
            return Diagnosis("softmax row sum", "dscores", ROW_SUM_HINT.format(name="dscores"))
        if dprobs is not None and not np.array_equal(cache["probs"], cache["pattern"]):
            pattern = cache["pattern"]
            built_on_pattern = pattern * (dprobs - (dprobs * pattern).sum(axis=-1, keepdims=True))
            if _fits_finite(mine, built_on_pattern):
                return Diagnosis(
                    "probs or pattern",
                    "dscores",
                    (
                        "dscores is built on pattern, the hooked pattern, instead of probs: right "
                        "until a hook edits the "
                        "pattern. The softmax's backward takes the softmax's own output, probs"
                    ),
                )
    if (
        step == "output"
        and "dv_h" in tensors
        and not np.array_equal(cache["probs"], cache["pattern"])
    ):
        mine, right = tensors["dv_h"]
        dz_h = ref.get("dz_h")
        if dz_h is not None and _fits_finite(mine, cache["probs"].swapaxes(-1, -2) @ dz_h):
            return Diagnosis(
                "probs or pattern",
                "dv_h",
                (
                    "dv_h is built on probs instead of pattern: z was made from the pattern after "
                    "its hook "
                    "(z = pattern @ v_h), so dv_h = pattern.swapaxes(-1, -2) @ dz_h"
                ),
            )
    if step == "scores":
        for name, value in mine_locals.items():
            if _masked_pattern(value):
                return Diagnosis("mask", name, MASK_HINT.format(name=name))
    for name, candidate, hint in _step_slips(step, cache, ref, cfg, given):
        if (
            name in tensors
            and not _right(*tensors[name])
            and _fits_finite(tensors[name][0], candidate)
        ):
            return Diagnosis("slip", name, hint)
    batch, pos = np.shape(cache["x_q"])[:2]  # the query projection's input [batch, pos, d_model]
    sizes = {"batch": int(batch), "pos": int(pos), "tokens": int(batch * pos)}
    sizes.update(
        {
            key: getattr(cfg, key)
            for key in ("d_model", "d_head", "d_mlp", "n_heads", "d_vocab", "n_ctx")
        }
    )
    for name, (mine, right) in tensors.items():
        if _right(mine, right):
            continue
        found = (
            constant_factor(name, mine, right, sizes)
            or transposed(name, mine, right)
            or bias_axes(name.removesuffix(".grad"), mine, right)
        )
        if found:
            return found
    return None


def missing_sum(evidence, wrong_tensors):
    """A parameter's gradient that is the gradient from one batch row, or one position, alone."""
    R = np.asarray(evidence.R)
    parameters = [name for name in wrong_tensors if name in _parameter_names(evidence)]
    if R.ndim < 2 or not parameters:
        return None
    batch, pos = R.shape[:2]
    for axis, label, count in ((0, "batch row", batch), (1, "position", pos)):
        for index in range(count):
            part = np.zeros_like(R)
            where = (slice(None),) * axis + (index,)
            part[where] = R[where]
            _, right = evidence.rerun(part)
            for name in parameters:
                mine, full = evidence.tensors[name]
                if (
                    np.any(right[name])
                    and not _fits(full, right[name])
                    and _fits(mine, right[name])
                ):
                    axis_name = "batch" if axis == 0 else "pos"
                    return Diagnosis(
                        "missing sum",
                        name,
                        (
                            f"{name} is the gradient from {label} {index} alone: a parameter used "
                            f"at every "
                            f"{'sequence' if axis == 0 else 'position'} collects the gradient of "
                            f"all of them "
                            f"(sum over the {axis_name} axis instead of indexing it)"
                        ),
                    )
    return None


def causal(evidence):
    """An upstream gradient at position 0 alone must reach nothing after position 0 in a causal
    model."""
    if not getattr(evidence.cfg, "causal", False) or evidence.cls not in (
        "MultiHeadAttention",
        "TransformerBlock",
        "Transformer",
    ):
        return None
    for name, (mine, right) in evidence.hooks.items():
        if mine is not None and name.split(".")[-1] == "hook_attn_scores":
            allowed = np.tril(np.ones(right.shape[-2:], dtype=bool))  # [q_pos, k_pos]
            if not np.any(right[..., ~allowed]) and np.any(
                np.abs(mine[..., ~allowed]) > FIT * np.abs(right).max()
            ):
                return Diagnosis(
                    "causal",
                    name,
                    (
                        f"{name} has a gradient where the mask hides a key (k_pos > q_pos): masked "
                        f"scores are constants "
                        "(-inf), so their gradient is 0"
                    ),
                )
    R = np.asarray(evidence.R)
    first = np.zeros_like(R)
    first[:, 0] = R[:, 0]
    mine, right = evidence.rerun(first)
    names = [
        name
        for name in reversed(list(evidence.hooks))
        if name.split(".")[-1] not in ("hook_attn_scores", "hook_pattern")
    ]
    names += [name for name in evidence.tensors if name not in _parameter_names(evidence)]
    largest = max(
        (np.abs(g).max() for g in right.values() if g is not None and np.size(g)), default=0.0
    )
    for name in names:
        if mine.get(name) is None or right.get(name) is None or np.ndim(right[name]) < 2:
            continue
        later_mine, later_right = np.abs(mine[name][:, 1:]), np.abs(right[name][:, 1:])
        if not np.any(later_right) and np.any(later_mine > FIT * largest):
            return Diagnosis(
                "causal",
                name,
                (
                    f"causal structure broken at {name}: an upstream gradient at position 0 alone "
                    f"reaches later "
                    "positions (the right one stays 0): a mask left out, or the pattern used "
                    "untransposed (forward: z = pattern @ v)"
                ),
            )
    return None


def diagnose_error(error, names=None):
    """A hint for an error a backward raised, or None.

    ``error``: the learner's process's description of it (``learner.describe``: its text, the
    failing line, the shapes of that line's operands, non-finite locals), or just its text.
    ``names``: {size: axis name} of the run (its size set); NumPy's shapes are said in those names.
    """
    _names[0] = names or SIZE_NAMES
    if isinstance(error, str):
        error = {"text": error, "message": error}
    line = error.get("line", "")
    for operation in error.get("shapes", []):
        found = _operation_hint(operation, line)
        if found:
            return found
    for local in error.get("nonfinite", []):
        if local.get("masked"):
            return Diagnosis("mask", local["name"], MASK_HINT.format(name=local["name"]))
    message = str(error.get("message", error.get("text", "")))
    # einsum's remapped shapes: the operands' own come first
    message = re.sub(r"->\([^)]*\)", "", message)
    shapes = [
        tuple(int(n) for n in re.findall(r"\d+", group))
        for group in re.findall(r"\((\d+(?:\s*,\s*\d+)+),?\)", message)
    ]
    for i, a in enumerate(shapes):
        for b in shapes[i + 1 :]:
            if (
                a != b
                and len(a) == len(b)
                and sorted(a) == sorted(b)
                and sum(x != y for x, y in zip(a, b)) == 2
            ):
                return Diagnosis(
                    "transposed",
                    "",
                    (
                        f"shapes {a} and {b} are each other's transpose: a matrix used where its "
                        f"transpose belongs "
                        "(.T or swapaxes missing, or one too many)"
                    ),
                )
    if shapes:
        said = "; ".join(
            f"({','.join(map(str, shape))}) is {_named(shape)}" for shape in dict.fromkeys(shapes)
        )
        at = f" in `{line}`" if line else ""
        return Diagnosis(
            "shapes",
            "",
            (
                f"NumPy's shapes{at}, in axis names: {said}. "
                + (
                    "An einsum's letters name each operand's axes in their order (W_O [head, "
                    "d_head, d_model] is "
                    '"hdm"), and each letter one axis, the same size everywhere'
                    if "remapped" in str(error.get("message"))
                    else "Line the axes up as the forward did: a product sums over the axis the "
                    "two operands share "
                    "(last of the first, second-to-last of the second), and broadcasting matches "
                    "axes from the right"
                )
            ),
        )
    return None


def _named(shape):
    return "[" + ", ".join(_axis_names(shape)) + "]"


def _operation_hint(operation, line):
    """One ``@``, einsum or ``+=`` of the failing line whose shapes explain the error."""
    operands = [
        (source, tuple(shape))
        for source, shape in operation.get("operands", [])
        if shape is not None
    ]
    if len(operands) != len(operation.get("operands", [])):
        return None
    kind = operation.get("op")
    if kind == "@" and len(operands) == 2:
        (a, sa), (b, sb) = operands
        if len(sa) < 1 or len(sb) < 2 or sa[-1] == sb[-2]:
            return None
        if sa[-1] == sb[-1]:
            return Diagnosis(
                "untransposed",
                b,
                (
                    f"in `{line}`: {a} is {_named(sa)} and {b} is {_named(sb)}, so their last axes "
                    f"({_axis_names(sa)[-1]}) meet: {b} is used untransposed. The forward "
                    f"multiplied by this weight "
                    f"(x @ W); going back, the gradient meets its transpose: {a} @ "
                    f"{_transposed(b)}, which is "
                    f"{_named(sa)} @ {_named(sb[:-2] + (sb[-1], sb[-2]))}"
                ),
            )
        if len(sa) >= 2 and sa[-2] == sb[-2]:
            return Diagnosis(
                "untransposed",
                a,
                (
                    f"in `{line}`: {a} is {_named(sa)} and {b} is {_named(sb)}: {a} is used "
                    f"untransposed; its "
                    f"{_axis_names(sa)[-2]} axis should meet {b}'s: {_transposed(a)} @ {b}"
                ),
            )
        return None
    if kind == "einsum":
        return _einsum_hint(operation.get("subscripts", ""), operands, line)
    if kind == "+=" and len(operands) == 2:
        (target, st), (value, sv) = operands
        if st == sv:
            return None
        short = target.split(".grad")[0].split(".")[-1]
        names_t, names_v = _axis_names(st), _axis_names(sv)
        if (
            len(st) == len(sv)
            and st[1:] == sv[1:]
            and names_t[0] == "n_ctx"
            and names_v[0] == "pos"
            and "[" not in target
        ):
            return Diagnosis(
                "positions",
                short,
                (
                    f"in `{line}`: {target} is {_named(st)}, one row per position the model can "
                    f"take, but what is "
                    f"added is {_named(sv)}: forward used only the first pos rows (W_pos[:pos]), "
                    f"so only those get a "
                    f"gradient: {target}[:pos] += ..., with pos = dpos_embed.shape[1] (or the "
                    f"cache)"
                ),
            )
        if short.startswith("b") and target.endswith(".grad"):
            return Diagnosis(
                "bias axes",
                short,
                (
                    f"in `{line}`: {short}.grad is {_named(st)} but what is added is {_named(sv)}. "
                    f"{UNBROADCAST.format(bias=short)} -> {_named(st)}"
                ),
            )
        if len(st) == len(sv) == 2 and st == sv[::-1]:
            return Diagnosis(
                "transposed",
                short,
                (
                    f"in `{line}`: {target} is {_named(st)} but what is added is {_named(sv)}, its "
                    f"transpose: the product's "
                    "operands are in the wrong order (or a .T is missing)"
                ),
            )
    return None


def _transposed(source):
    return f"{source}.T" if not source.endswith(".T") else source[:-2]


def _einsum_hint(subscripts, operands, line):
    inputs = subscripts.replace(" ", "").split("->")[0].split(",")
    if len(inputs) != len(operands):
        return None
    sizes = {}
    for letters, (_, shape) in zip(inputs, operands):
        if len(letters) != len(shape):
            return None
        for letter, size in zip(letters, shape):
            sizes.setdefault(letter, set()).add(size)
    clashes = [letter for letter, seen in sizes.items() if len(seen) > 1]
    if not clashes:
        return None
    for letters, (source, shape) in zip(inputs, operands):
        if len(shape) >= 2:
            for i in range(len(shape)):
                for j in range(i + 1, len(shape)):
                    swapped = list(letters)
                    swapped[i], swapped[j] = swapped[j], swapped[i]
                    trial = dict.fromkeys(sizes)
                    ok = True
                    for other, (_, other_shape) in zip(inputs, operands):
                        use = "".join(swapped) if other is letters else other
                        for letter, size in zip(use, other_shape):
                            if trial[letter] is None:
                                trial[letter] = size
                            elif trial[letter] != size:
                                ok = False
                    if ok:
                        return Diagnosis(
                            "untransposed",
                            source,
                            (
                                f"in `{line}`: {source} is {_named(shape)}, but the subscripts "
                                f'"{subscripts}" read it '
                                f'as "{letters}": its letters are in the wrong order '
                                f'("{"".join(swapped)}" matches its '
                                "axes), as if it were transposed"
                            ),
                        )
    letter = clashes[0]
    return Diagnosis(
        "einsum",
        "",
        (
            f"in `{line}`: the letter {letter} stands for sizes {sorted(sizes[letter])} "
            f"({', '.join(_names[0].get(n, str(n)) for n in sorted(sizes[letter]))}) in different "
            f"operands: "
            "each letter names one axis, the same size everywhere"
        ),
    )


# --- naming constants ---


def recognise(c, sizes):
    """(name, reason) for a constant factor c, from the sizes in play, or None when it is no
    recognisable number.

    -1, 2 and 1/2 are named as they are; when sizes coincide (batch = d_head = 3), the first
    reading is given, with one other in brackets.
    """
    matches = [
        (what, why)
        for value, what, why in _named_constants(sizes)
        if abs(c - value) <= 1e-6 * abs(value)
    ]
    if not matches:
        return None
    what, why = matches[0]
    if what.lstrip("-") in ("1", "2", "1/2"):
        return what, why
    others = list(dict.fromkeys(other for other, _ in matches[1:] if other != what))
    return (what + (f" (or {others[0]})" if others else "")), why


def _named_constants(sizes):
    """(value, name, likely reason), most specific first; sizes is {name: int}, e.g. {"d_model": 8,
    "batch": 3}."""
    out = [
        (-1.0, "-1", "the sign is flipped"),
        (2.0, "2", "a term counted twice, or the 2 of a square's derivative applied twice"),
        (0.5, "1/2", "half of it is missing: a 2 (a square's derivative) left out"),
    ]
    scales = [(n, s) for n, s in sizes.items() if s > 1]
    for a, size_a in scales:
        for b, size_b in scales:
            if size_a != size_b and {a, b} <= {"d_head", "d_model", "d_mlp", "n_heads"}:
                out.append(
                    (
                        math.sqrt(size_a / size_b),
                        f"sqrt({a}/{b})",
                        f"divided by sqrt({b}) where sqrt({a}) belongs",
                    )
                )
    for n, s in scales:
        out += [
            (
                s / (s - 1),
                f"{n}/({n}-1)",
                f"divided by {n}-1 where {n} belongs (an unbiased count?)",
            ),
            ((s - 1) / s, f"({n}-1)/{n}", f"divided by {n} where {n}-1 belongs"),
            (1 / s, f"1/{n}", f"a mean over {n} where a sum belongs, or a 1/{n} too many"),
            (float(s), n, f"a sum over {n} where a mean belongs, or a 1/{n} left out"),
            (1 / math.sqrt(s), f"1/sqrt({n})", f"divided by sqrt({n}) once too often"),
            (math.sqrt(s), f"sqrt({n})", f"the 1/sqrt({n}) scale left out"),
        ]
    return out + [
        (-value, f"-{what}", f"the sign is flipped, and {why}") for value, what, why in out[1:]
    ]


def _sizes(evidence):
    """{name: size}: the batch's sizes first (sums and means run over them), then the config's."""
    cfg = evidence.cfg
    sizes = {}
    first = np.asarray(evidence.inputs[0]) if evidence.inputs else None
    if first is not None and first.ndim >= 2:
        sizes.update(
            batch=first.shape[0], pos=first.shape[1], tokens=first.shape[0] * first.shape[1]
        )
    sizes.update(
        {
            key: getattr(cfg, key)
            for key in ("d_model", "d_head", "d_mlp", "n_heads", "d_vocab", "n_ctx")
        }
    )
    return sizes


# axis names of the tensors whose shapes repeat a size (q_pos = k_pos; square matrices)
AXIS_NAMES = {
    "hook_attn_scores": ("batch", "head", "q_pos", "k_pos"),
    "hook_pattern": ("batch", "head", "q_pos", "k_pos"),
    "hook_q": ("batch", "pos", "head", "d_head"),
    "hook_k": ("batch", "pos", "kv_head", "d_head"),  # kv_head is head unless heads are shared
    "hook_v": ("batch", "pos", "kv_head", "d_head"),
    "hook_z": ("batch", "pos", "head", "d_head"),
}


# --- helpers ---


def _norm(x):
    return float(np.linalg.norm(np.asarray(x, dtype=np.float64)))


def _fits(mine, candidate):
    mine, candidate = np.asarray(mine), np.asarray(candidate)
    if mine.shape != candidate.shape:
        return False
    scale = max(_norm(mine), _norm(candidate))
    return scale > 0 and _norm(mine - candidate) <= FIT * scale


def _right(mine, right):
    mine, right = np.asarray(mine), np.asarray(right)
    if mine.shape != right.shape or not np.all(np.isfinite(mine)):
        return False
    return _norm(mine - right) <= RIGHT * max(_norm(right), 1e-300)


def _tokens(evidence):
    first = np.asarray(evidence.inputs[0]) if evidence.inputs else None
    return first if first is not None and np.issubdtype(first.dtype, np.integer) else None


def _parameter_names(evidence):
    """Tensor names that are parameters (the input gradient is the one named after forward's
    argument)."""
    inputs = {"x", "resid_pre", "logits", "tokens"}
    return [name for name in evidence.tensors if name not in inputs]


def _layernorm_inputs(name, evidence):
    """What a LayerNorm normalised, where ``name``'s gradient arrives: the component's x, or the
    activation at a hook."""
    if evidence.cls in ("LayerNorm", "RMSNorm"):
        return [np.asarray(evidence.inputs[0], dtype=np.float64)]
    acts = evidence.activations
    out = [acts[name]] if name in acts else []
    short = name.split(".")[-1]
    prefix = name[: len(name) - len(short)]
    # post-norm: LayerNorm(resid + branch_out); the gradient at the branch's output hook is the
    # sum's
    for branch, resid in (("hook_attn_out", "hook_resid_pre"), ("hook_mlp_out", "hook_resid_mid")):
        if short == branch and prefix + resid in acts and name in acts:
            out.append(acts[prefix + resid] + acts[name])
    return [np.asarray(x, dtype=np.float64) for x in out]


# --- the size set and the dtype ---


def hard_coded_hint(body_lines, first, second):
    """(hint, found a number) for a backward right under the first size set and wrong under the
    second: the literal numbers in its lines that are sizes of the first set (``W_pos.grad[:6]``,
    ``math.sqrt(8)``)."""
    import ast

    sizes = {value: name for value, name in first.axis_names.items() if value > 3}
    names = dict(sizes)
    for a, name_a in list(sizes.items()):
        for b, name_b in list(sizes.items()):
            names.setdefault(a * b, f"{name_a} * {name_b}")
    found = []
    for where, line in body_lines:
        code = line.split("#", 1)[0].strip()
        if not code:
            continue
        try:
            tree = ast.parse(code if not code.endswith(":") else code + " pass")
        except SyntaxError:
            continue
        numbers = [
            node.value
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and type(node.value) is int and node.value in names
        ]
        if numbers:
            what = ", ".join(f"{n} is {names[n]}" for n in dict.fromkeys(numbers))
            found.append(f"`{code}` ({where}: {what} in the first set)")
    fix = (
        "read every size off the arrays (batch, pos = x.shape[:2]) or the config "
        "(self.cfg.d_head), "
        "never write it as a number"
    )
    if found:
        return "a size written as a number: " + "; ".join(
            found[:3]
        ) + f". The second set has other sizes: {fix}", True
    return (
        f"something in it holds for the first set's sizes only (batch 1 and pos = n_ctx are the "
        f"second's): "
        f"{fix}; slice what forward sliced (self.mask[:pos, :pos], W_pos[:pos])"
    ), False


SCALAR_FUNCTIONS = re.compile(r"np\.(sqrt|exp|log|power|float64|double|float_)\(")


def dtype_hint(first, dtype):
    """Why the dtype changed on the line ``first`` names (from the learner's process), or a general
    word."""
    line = (first or {}).get("line", "")
    if dtype == "float32" and SCALAR_FUNCTIONS.search(line):
        return (
            "a NumPy function of a Python number (np.sqrt(self.cfg.d_head)) returns a NumPy "
            "float64 scalar, and "
            "NumPy 2 lets such a scalar make a float32 array float64; math.sqrt gives a Python "
            "float, which "
            "keeps the array's dtype"
        )
    if "astype" in line:
        return (
            f"astype changed the dtype: a backward keeps its inputs' dtype; leave astype out (a "
            f"{dtype} model "
            f"gives {dtype} gradients)"
        )
    if re.search(r"np\.(zeros|ones|eye|empty|full|arange)\(", line):
        return (
            f"np.zeros, np.ones, np.eye and np.full make float64 unless given a dtype: "
            f"np.zeros_like(x), or "
            f"dtype=x.dtype, makes the array in the model's {dtype}"
        )
    if first:
        return (
            f"{first['name']} became {first['dtype']} on that line: keep every array in the "
            f"model's {dtype}"
        )
    return ""


# --- slips with a known wrong formula: the wrong gradient is computed and compared ---


def known_slip(evidence):
    """The first classic slip whose wrong gradient ``mine`` equals exactly (at a hook point or a
    tensor), or None.

    Each candidate is the gradient the slip gives, computed from the reference's activations and the
    right gradients around the line it sits on: a softmax's row sum over the wrong axis, a transpose
    left out, a path left out, an activation's derivative with a term missing, the loss's dloss or
    weights left out, a LayerNorm's backward in the wrong place of a pre-norm block.
    """
    for name, candidate, hint in _slip_candidates(evidence):
        pair = evidence.hooks.get(name) or evidence.tensors.get(name)
        if pair is None or pair[0] is None or _right(*pair):
            continue
        if _fits_finite(pair[0], candidate):
            return Diagnosis("slip", name, hint)
    return None


def _slip_candidates(evidence):
    hooks, acts, tensors = evidence.hooks, evidence.activations, evidence.tensors
    right = lambda name: (hooks.get(name) or tensors.get(name) or (None, None))[1]  # noqa: E731
    for prefix in [name[: -len("hook_pattern")] for name in acts if name.endswith("hook_pattern")]:
        yield from _attention_slips(evidence, prefix, acts, right)
    for prefix in [name[: -len("hook_pre")] for name in acts if name.endswith("hook_pre")]:
        yield from _feedforward_slips(evidence, prefix, acts, right)
    if evidence.cls == "CrossEntropyLoss":
        yield from _loss_slips(evidence)
    if evidence.cls == "TransformerBlock" and evidence.cfg.normalization == "pre":
        yield from _norm_placement(evidence, right)


def _attention_slips(evidence, p, acts, right):
    cfg = evidence.cfg
    pattern = acts[p + "hook_pattern"]  # [batch, head, q_pos, k_pos]
    yield from _llama_attention_slips(cfg, p, acts, right, pattern)
    dz = right(p + "hook_z")  # [batch, pos, head, d_head]
    if dz is not None:
        dz_h = dz.transpose(0, 2, 1, 3)  # [batch, head, q_pos, d_head]
        yield (
            p + "hook_v",
            (pattern @ dz_h).transpose(0, 2, 1, 3),
            "hook_v's gradient is pattern @ dz_h: the pattern used untransposed. Each value (key "
            "position) "
            "reaches every query that looks at it, so dv_h = pattern.swapaxes(-1, -2) @ dz_h "
            "[batch, head, k_pos, q_pos] @ [batch, head, q_pos, d_head]",
        )
    dprobs = right(p + "hook_pattern")
    if dprobs is not None:
        probs = pattern
        yield (
            p + "hook_attn_scores",
            probs * (dprobs - (dprobs * probs).sum(axis=-2, keepdims=True)),
            "the softmax's row sum is taken over the wrong axis (axis=-2, the queries): the "
            "softmax normalises "
            "each query's row over its keys, so the sum runs over the last axis, k_pos: "
            "dscores = probs * (dprobs - (dprobs * probs).sum(axis=-1, keepdims=True))",
        )
    dscores = right(p + "hook_attn_scores")
    q, k = acts.get(p + "hook_q"), acts.get(p + "hook_k")
    if dscores is not None and q is not None and k is not None:
        pos = dscores.shape[-1]
        if cfg.causal:
            dscores = np.where(np.tril(np.ones((pos, pos), dtype=bool)), dscores, 0.0)
        q_h, k_h = q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3)
        scale = math.sqrt(cfg.d_head)
        yield (
            p + "hook_k",
            (dscores @ q_h / scale).transpose(0, 2, 1, 3),
            "hook_k's gradient is dscores @ q_h: the transpose of dscores is missing. scores = q_h "
            "@ k_h^T, "
            "so k_h meets dscores from the other side: dk_h = dscores.swapaxes(-1, -2) @ q_h / "
            "sqrt(d_head) "
            "[batch, head, k_pos, q_pos] @ [batch, head, q_pos, d_head]",
        )
        yield (
            p + "hook_q",
            (dscores.swapaxes(-1, -2) @ k_h / scale).transpose(0, 2, 1, 3),
            "hook_q's gradient is dscores^T @ k_h: dscores is transposed where it must not be. "
            "scores = q_h @ "
            "k_h^T, so dq_h = dscores @ k_h / sqrt(d_head) [batch, head, q_pos, k_pos] @ [batch, "
            "head, k_pos, d_head]",
        )
    if evidence.cls == "MultiHeadAttention" and "x" in evidence.tensors:
        x_right = evidence.tensors["x"][1]
        for letter, words in (("V", "values"), ("K", "keys"), ("Q", "queries")):
            dgrad = right(f"hook_{letter.lower()}")
            weight = evidence.parameters.get(f"W_{letter}")
            if dgrad is None or weight is None:
                continue
            path = np.einsum("hmd,bphd->bpm", weight, dgrad)
            yield (
                "x",
                x_right - path,
                f"x lacks the {words}' path: x made q, k and v (three products with W_Q, W_K, "
                f"W_V), so its "
                f"gradient is the sum of all three: dx = einsum(W_Q, dq) + einsum(W_K, dk) + "
                f"einsum(W_V, dv); "
                f"the W_{letter} term is missing",
            )


def _llama_attention_slips(cfg, p, acts, right, pattern):
    """The rotation's and the group sum's slips at the hook points they show in (whole body)."""
    rotary = cfg.positional == "rotary"
    if rotary:
        from numpy_impl.rotary import rotary_tables

        pos = pattern.shape[-1]
        cos, sin = (table[:pos] for table in rotary_tables(cfg))  # [pos, half] each
        for letter in ("q", "k"):
            turned, before = right(f"{p}hook_rot_{letter}"), right(f"{p}hook_{letter}")
            if turned is not None and before is not None:
                yield from rotation_slips(f"{p}hook_{letter}", turned, before, cos, sin, cfg)
    if cfg.n_key_value_heads is None:
        return
    dscores, dz = right(p + "hook_attn_scores"), right(p + "hook_z")
    q = acts.get(p + ("hook_rot_q" if rotary else "hook_q"))
    if dscores is not None and q is not None:
        pos = dscores.shape[-1]
        if cfg.causal:
            dscores = np.where(np.tril(np.ones((pos, pos), dtype=bool)), dscores, 0.0)
        dk_h = dscores.swapaxes(-1, -2) @ q.transpose(0, 2, 1, 3) / math.sqrt(cfg.d_head)
        name = p + ("hook_rot_k" if rotary else "hook_k")
        yield from group_slips(name, dk_h.transpose(0, 2, 1, 3), cfg)
    if dz is not None:
        dv_h = pattern.swapaxes(-1, -2) @ dz.transpose(0, 2, 1, 3)
        yield from group_slips(p + "hook_v", dv_h.transpose(0, 2, 1, 3), cfg)


ROTATE_BACK = (
    "rotate(x, cos, sin) turns each pair (first, second) by the angle: first * cos - second * sin, "
    "second * cos + first * sin. A rotation's transpose is its inverse, the turn by the opposite "
    "angle: dfirst = dfirst' * cos + dsecond' * sin, dsecond = dsecond' * cos - dfirst' * sin, "
    "that is rotate(d, cos, -sin, adjacent_pairs)"
)


def _gradient(name):
    """ "dk" for a step's gradient, "hook_k's gradient" for a hook point's."""
    return name if name.startswith("d") else f"{name}'s gradient"


def rotation_slips(name, given, right, cos, sin, cfg):
    """(name, the wrong value, hint) for each classic slip in undoing the rotation of ``given``
    [batch, pos, head, d_head] (the gradient of the turned q or k); ``right`` is the right one."""
    from numpy_impl.rotary import rotate

    adjacent = cfg.rotary_adjacent_pairs
    pairs = "neighbours (2i, 2i + 1)" if adjacent else "the two halves (i, i + rotary_dim / 2)"
    yield (
        name,
        rotate(given, cos, sin, adjacent),
        f"{_gradient(name)} is turned forward again, by +angle: {ROTATE_BACK}",
    )
    yield (
        name,
        rotate(given, cos, -sin, not adjacent),
        f"{_gradient(name)} is turned back with the other pairing: this model pairs {pairs} "
        f"(cfg.rotary_adjacent_pairs is {adjacent}), and the backward must pair the entries "
        f"exactly as the forward did",
    )
    for cos_as, sin_as in ((sin, -cos), (sin, cos), (-sin, cos)):
        yield (
            name,
            rotate(given, cos_as, sin_as, adjacent),
            f"{_gradient(name)} has cos and sin swapped: {ROTATE_BACK}",
        )
    rotary_dim = 2 * cos.shape[-1]
    if rotary_dim < given.shape[-1]:
        tail_dropped = np.array(right, copy=True)
        tail_dropped[..., rotary_dim:] = 0.0
        yield (
            name,
            tail_dropped,
            f"{_gradient(name)} is 0 on the last d_head - rotary_dim entries of each head: only "
            f"the first rotary_dim = {rotary_dim} entries turn, the rest pass unchanged "
            f"(rotated = concatenate(turned, passing)), so their gradient passes unchanged too",
        )


def group_slips(name, per_head, cfg):
    """(name, the wrong value, hint) for each classic slip in summing ``per_head`` [batch, pos,
    head, d_head] (a gradient for every query head) into the shared key/value heads."""
    n_kv = cfg.n_key_value_heads
    group = cfg.n_heads // n_kv
    batch, pos = per_head.shape[:2]
    grouped = per_head.reshape(batch, pos, n_kv, group, cfg.d_head)  # head -> kv_head, group
    how = (
        f"np.repeat(k, {group}, axis=2) gave query heads 0..{group - 1} shared head 0, the next "
        f"{group} shared head 1, and so on, so each shared head's gradient is the sum over its "
        f"own contiguous group: d.reshape(batch, pos, n_key_value_heads, group, d_head).sum(axis=3)"
    )
    yield (
        name,
        grouped[:, :, :, 0],
        f"{_gradient(name)} holds one head of each group: the group's sum is missing. {how}",
    )
    yield (
        name,
        per_head[:, :, :n_kv],
        f"{_gradient(name)} holds the first {n_kv} query heads' gradients: the group's sum is "
        f"missing. {how}",
    )
    yield (
        name,
        per_head.reshape(batch, pos, group, n_kv, cfg.d_head).sum(axis=2),
        f"{_gradient(name)} sums strided heads (0, {n_kv}, {2 * n_kv}, ...: np.tile's order) "
        f"instead of each shared head's own group. {how}",
    )
    yield (
        name,
        grouped.mean(axis=3),
        f"{_gradient(name)} is the group's mean: each of the {group} query heads used the shared "
        f"head in full, so their gradients add up (a sum, not a mean). {how}",
    )


def group_shape_hint(name, mine_shape, right_shape, cfg):
    """A hint for a key/value gradient left with every query head, or a head cut to rotary_dim."""
    if cfg.n_key_value_heads is not None and len(mine_shape) == 4 and len(right_shape) == 4:
        if mine_shape[2] == cfg.n_heads and right_shape[2] == cfg.n_key_value_heads:
            return (
                f"{name} still has a gradient for each of the {cfg.n_heads} query heads: k and v "
                f"have {cfg.n_key_value_heads} shared heads, each repeated over a group of "
                f"{cfg.n_heads // cfg.n_key_value_heads}, so each shared head's gradient is its "
                f"group's sum: d.reshape(batch, pos, n_key_value_heads, group, d_head).sum(axis=3)"
            )
    if cfg.positional == "rotary" and mine_shape[-1:] == (cfg.rotary_dim,) != right_shape[-1:]:
        return (
            f"{name} keeps only the rotary_dim = {cfg.rotary_dim} turned entries of each head: the "
            f"other d_head - rotary_dim pass the rotation unchanged, and so do their gradients"
        )
    return ""


def _feedforward_slips(evidence, p, acts, right):
    act = evidence.cfg.act_fn
    pre = acts[p + "hook_pre"]  # [batch, pos, d_mlp]
    dpost = right(p + "hook_post")
    if dpost is None:
        return
    name = p + "hook_pre"
    if act == "relu":
        post = np.maximum(pre, 0)
        why = (
            "the derivative of max(pre, 0) is 1 where pre > 0 and 0 elsewhere, a mask, not the "
            "activation "
            "itself: dpre = dpost * (pre > 0)"
        )
        yield name, dpost * post, f"{name}'s gradient is dpost * post: {why}"
        yield name, dpost * pre, f"{name}'s gradient is dpost * pre: {why}"
    elif act == "gelu":
        from scipy.special import erf

        cdf = 0.5 * (1 + erf(pre / math.sqrt(2)))
        pdf = np.exp(-0.5 * pre * pre) / math.sqrt(2 * math.pi)
        yield (
            name,
            dpost * cdf,
            f"{name}'s gradient is dpost * cdf: post = pre * cdf holds pre twice, and the "
            "product rule takes both: dpre = dpost * cdf + dpost * pre * pdf (pdf = exp(-pre**2 / "
            "2) / sqrt(2 pi))",
        )
        yield (
            name,
            dpost * (cdf + pdf),
            f"{name}: the second term of the product rule lacks its pre: "
            "d(pre * cdf) = cdf + pre * pdf, so dpre = dpost * (cdf + pre * pdf)",
        )
    else:
        c, a = math.sqrt(2 / math.pi), 0.044715
        t = np.tanh(c * (pre + a * pre**3))
        first = 0.5 * (1 + t)
        inner = c * (1 + 3 * a * pre**2)
        yield (
            name,
            dpost * first,
            f"{name}'s gradient is dpost * 0.5 * (1 + tanh): post = 0.5 * pre * (1 + tanh) "
            "holds pre twice (tanh depends on pre too), and the product rule takes both: "
            "dpre = dpost * 0.5 * (1 + tanh) + dpost * 0.5 * pre * (1 - tanh**2) * d inner / d pre",
        )
        yield (
            name,
            dpost * (first + 0.5 * pre * (1 - t**2) * c),
            f"{name}: d inner / d pre lacks the cubic term's derivative: inner = GELU_C * (pre + "
            f"0.044715 * "
            "pre**3), so d inner / d pre = GELU_C * (1 + 3 * 0.044715 * pre**2)",
        )
        yield (
            name,
            dpost * (first + 0.5 * pre * (1 - t) * inner),
            f"{name}: tanh's derivative is 1 - tanh**2, not 1 - tanh",
        )
        yield (
            name,
            dpost * (first + pre * (1 - t**2) * inner),
            f"{name}: the 0.5 of post = 0.5 * pre * (1 + tanh) is missing from the tanh path: "
            "dtanh = dpost * 0.5 * pre",
        )


def _loss_slips(evidence):
    if "logits" not in evidence.tensors:
        return
    mine, right = evidence.tensors["logits"]
    dloss = float(np.asarray(evidence.R))
    if dloss not in (0.0, 1.0):
        yield (
            "logits",
            right / dloss,
            f"logits is 1/dloss = {1 / dloss:.4g} times the right gradient: dloss, the gradient "
            f"backward is given, "
            "is left out (it is 1 only for loss.backward(); a scaled loss, or one term of a sum, "
            "hands on another): "
            "dnll = dloss * weights / weights.sum()",
        )
    inputs = evidence.inputs
    if len(inputs) >= 3 and inputs[2] is not None:
        logits, targets, weights = (np.asarray(x) for x in inputs[:3])
        shifted = logits - logits.max(axis=-1, keepdims=True)
        probs = np.exp(shifted) / np.exp(shifted).sum(axis=-1, keepdims=True)
        onehot = np.zeros_like(probs)
        np.put_along_axis(onehot, targets[..., None], 1.0, axis=-1)
        yield (
            "logits",
            dloss * (probs - onehot) / targets.size,
            "logits is the gradient of the plain mean: the weights are left out. loss = "
            "sum(weights * nll) / "
            "sum(weights), so each token's nll gets dloss * weights / weights.sum()",
        )
        yield (
            "logits",
            right * weights.sum(),
            f"logits is sum(weights) = {weights.sum():.4g} times the right gradient: the division "
            "by weights.sum() is missing (loss = sum(weights * nll) / sum(weights))",
        )


def _norm_placement(evidence, right):
    """Pre-norm block: ln1's (or ln2's) backward applied to the sum, to the skip path, or left
    out."""
    import numpy_impl

    # out_hook: the LayerNorm's output (its hook_out; hook_normalized is before w and b)
    for ln, skip_hook, out_hook, target in (
        ("ln1", "hook_attn_out", "ln1.hook_out", "resid_pre"),
        ("ln2", "hook_mlp_out", "ln2.hook_out", "hook_resid_mid"),
    ):
        x_name = "hook_resid_pre" if ln == "ln1" else "hook_resid_mid"
        x = evidence.activations.get(x_name)
        dskip, dbranch = right(skip_hook), right(out_hook)
        if x is None or dskip is None or dbranch is None or f"{ln}.w" not in evidence.parameters:
            continue
        cfg = evidence.cfg

        def backward(d, x=x, ln=ln):
            norm = numpy_impl.LayerNorm(cfg)
            norm.load_state_dict(
                {"w": evidence.parameters[f"{ln}.w"], "b": evidence.parameters[f"{ln}.b"]}
            )
            norm.forward(x)
            return norm.backward(np.array(d, copy=True))

        where = "attention" if ln == "ln1" else "MLP"
        fix = (
            f"in pre-norm, {ln} sits on the {where} branch only (x + {where}({ln}(x))): the skip "
            f"path passes its gradient straight through, so "
            f"d = dskip + self.{ln}.backward(dbranch_in)"
        )
        yield (
            target,
            backward(dskip + dbranch),
            f"{ln}'s backward is applied to the sum of both paths: {fix}",
        )
        yield (
            target,
            backward(dskip) + dbranch,
            f"{ln}'s backward is applied to the skip path, not the branch: {fix}",
        )
        yield target, dskip + dbranch, f"{ln}'s backward is missing: {fix}"


def _step_slips(step, cache, ref, cfg, given=None):
    """(name, the wrong value a slip gives, hint) for the attention's steps."""
    given = given or {}
    if step == "rotary" and cfg.positional == "rotary" and "cos" in ref:
        for name in ("dq", "dk"):
            if given.get(name) is not None:
                yield from rotation_slips(name, given[name], ref[name], ref["cos"], ref["sin"], cfg)
    if step == "groups" and cfg.n_key_value_heads is not None:
        for name in ("dk", "dv"):
            if given.get(name + "_h") is not None:
                yield from group_slips(name, given[name + "_h"].transpose(0, 2, 1, 3), cfg)
    if step == "scores" and cfg.causal and (given or {}).get("dscores") is not None:
        unmasked = given["dscores"]
        yield (
            "dq_h",
            unmasked @ cache["k_h"] / math.sqrt(cfg.d_head),
            "dq_h takes the gradient of masked scores too: the causal mask's backward is missing. "
            "The forward "
            "replaced each score where k_pos > q_pos by -inf, a constant, so no gradient passes "
            "there: "
            "dscores = np.where(self.mask[:pos, :pos], dscores, 0.0)",
        )
    if step == "output" and ref.get("dz_h") is not None:
        yield (
            "dv_h",
            cache["pattern"] @ ref["dz_h"],
            "dv_h is pattern @ dz_h: the pattern used untransposed. Each value (key position) "
            "reaches every "
            "query that looks at it, so dv_h = pattern.swapaxes(-1, -2) @ dz_h",
        )
    if step == "softmax" and ref.get("dprobs") is not None:
        probs, dprobs = cache["probs"], ref["dprobs"]
        yield (
            "dscores",
            probs * (dprobs - (dprobs * probs).sum(axis=-2, keepdims=True)),
            "dscores: the softmax's row sum is taken over the wrong axis (axis=-2, the queries): "
            "each query's "
            "row is normalised over its keys, so dscores = probs * (dprobs - (dprobs * "
            "probs).sum(axis=-1, "
            "keepdims=True))",
        )
    if step == "scores" and ref.get("dscores") is not None:
        scale = math.sqrt(cfg.d_head)
        yield (
            "dk_h",
            ref["dscores"] @ cache["q_h"] / scale,
            "dk_h is dscores @ q_h: the transpose of dscores is missing. scores = q_h @ k_h^T, so "
            "k_h meets "
            "dscores from the other side: dk_h = dscores.swapaxes(-1, -2) @ q_h / sqrt(d_head)",
        )
        yield (
            "dq_h",
            ref["dscores"].swapaxes(-1, -2) @ cache["k_h"] / scale,
            "dq_h is dscores^T @ k_h: scores = q_h @ k_h^T, so dq_h = dscores @ k_h / "
            "sqrt(d_head), untransposed",
        )
