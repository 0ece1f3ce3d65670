"""What the tests share: the small models, random weights in both twins, and how parity is measured.

``twins(cfg)`` is the pair most tests start from: a NumPy model (or one of its components) with
random weights and its torch twin holding the same weights. ``make_cfg`` changes fields of the
tests' small config; ``tokens_for`` draws token ids for a config.

Parity of a tensor is ``foundation.contract.agreement.rel_err``: max |numpy - torch| / max |torch|.
A gradient that is exactly zero in exact arithmetic (b_K's) is measured against the largest gradient
of the whole component or model instead (``relative_errors``).
"""

import itertools
import os
import threading
import warnings

import numpy as np
import pytest
import torch

import numpy_impl as npi
import torch_impl as pti
from foundation.contract.agreement import TOL, rel_err, relative_errors  # noqa: F401
from foundation.lens.hooks import as_numpy as to_numpy  # noqa: F401

# random weights for tests: LayerNorm w near 1 (never all ones), non-zero biases, N(0, 1/fan_in)
# matrices
from gradcheck.factory import randomize_parameters as randomize  # noqa: F401
from interp.handmade import induction_circuit_model

# ---------------------------------------------------------------- the tests' models

# the small model most tests use
FIELDS = dict(d_vocab=11, d_model=12, n_heads=3, n_layers=2, n_ctx=6)
CFG = npi.TransformerConfig(**FIELDS)
CFG32 = npi.TransformerConfig(**FIELDS, dtype="float32")
# tiny: files
SMALL = npi.TransformerConfig(d_vocab=5, d_model=4, n_heads=2, n_layers=1, n_ctx=3, d_mlp=4)
TOKENS = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])  # [batch, pos]: ids of CFG's vocabulary
SIDES = ["numpy", "torch"]
# the interpretability tests' changes: a longer context
INTERP = dict(d_vocab=13, d_mlp=16, n_ctx=10)
# Llama's choices (RMSNorm, rotary halves, SwiGLU, no biases, grouped heads), TransformerLens's
# field names; a test adds the sizes
LLAMA = dict(
    normalization_type="RMS",
    eps=1e-6,
    positional_embedding_type="rotary",
    rotary_base=500.0,
    act_fn="silu",
    gated_mlp=True,
    mlp_bias=False,
    attn_bias=False,
    n_key_value_heads=2,
)


def make_cfg(base=None, **changes):
    """The small config (FIELDS) with the fields of ``base`` (a dict), then ``changes``, put in."""
    return npi.TransformerConfig(**{**FIELDS, **(base or {}), **changes})


def twin_of(module):
    """The torch twin of a NumPy model or component, holding its weights."""
    return getattr(pti, type(module).__name__).from_twin(module)


def twins(cfg=CFG, component="Transformer", seed=0):
    """A NumPy model (or its component of that class name) with random weights, and its torch twin.

    The weights are ``randomize``'s for ``seed``; the twin holds the same, loaded by name.
    """
    module = getattr(npi, component)(cfg)
    randomize(module, seed)
    twin = getattr(pti, component)(cfg)
    load_into_twin(module, twin)
    return module, twin


def handmade_pair():
    """The hand-set induction circuit (interp/handmade.py) and its torch twin."""
    model = induction_circuit_model()
    return model, twin_of(model)


def tokens_for(cfg, batch=3, pos=7, seed=2):
    """Random token ids of ``cfg``'s vocabulary, [batch, pos]."""
    return np.random.default_rng(seed).integers(0, cfg.d_vocab, (batch, pos))


def package(side):
    """numpy_impl for "numpy", torch_impl for "torch"."""
    return npi if side == "numpy" else pti


def max_abs_diff(a, b):
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


# ---------------------------------------------------------------- parity


def assert_close(name, actual, expected, dtype, scale=None):
    err = rel_err(actual, expected, scale)
    assert err <= TOL[dtype], f"{name}: relative error {err:.3e} > {TOL[dtype]:.0e} ({dtype})"
    return err


def load_into_twin(np_module, torch_module):
    """Copy the NumPy module's weights into its torch twin (names and shapes must match exactly)."""
    torch_module.load_state_dict(np_module.state_dict())


def compare_grads(np_module, torch_module, dtype):
    """Assert every parameter gradient agrees; returns {name: relative error}."""
    np_grads = {name: p.grad for name, p in np_module.named_parameters()}
    torch_grads = {name: p.grad for name, p in torch_module.named_parameters()}
    assert list(np_grads) == list(torch_grads), "parameter names or order differ between the twins"
    for name, grad in torch_grads.items():
        assert grad is not None, f"{name}: torch gradient missing"
    errors = relative_errors(np_grads, torch_grads)
    for name, err in errors.items():
        assert err <= TOL[dtype], (
            f"grad {name}: relative error {err:.3e} > {TOL[dtype]:.0e} ({dtype})"
        )
    return errors


# ---------------------------------------------------------------- pairwise selection of
# configurations
#
# A product of options (normalization x positional x causal x ...) grows fast; most mistakes show
# up in one option or in two of them together. The default run checks a pairwise selection: every
# value of every option next to every value of every other option, at least once. The rest of
# the product runs under ``pytest -m slow``.


def pairs_of(combo):
    """Every (option index, value, option index, value) pair one combination covers; of a single
    option, its value."""
    if len(combo) == 1:
        return {(0, combo[0])}
    return {(i, combo[i], j, combo[j]) for i in range(len(combo)) for j in range(i + 1, len(combo))}


def pairwise(combos):
    """A subset of ``combos`` (tuples, one value per option) covering every pair the whole list
    covers.

    Every value of every option appears too (with a single option, that is all of them).

    Greedy: take the combination that covers the most pairs not yet covered (the first one on a
    tie), until none is left. Deterministic, and it respects any exclusion already made in
    ``combos`` (a pair that no allowed combination has is not asked for).
    """
    combos = list(combos)
    uncovered = set().union(*map(pairs_of, combos)) if combos else set()
    chosen = []
    while uncovered:
        best = max(combos, key=lambda combo: len(pairs_of(combo) & uncovered))
        chosen.append(best)
        uncovered -= pairs_of(best)
    return chosen


def pairwise_then_slow(cases, ids=None, options=tuple):
    """pytest params of every case: a pairwise selection by default, the others marked slow.

    ``cases`` are the parameter values as the test takes them; ``options(case)`` is the tuple of
    option values whose pairs must be covered (by default the case itself).
    """
    cases = list(cases)
    default = set(pairwise([tuple(options(case)) for case in cases]))
    ids = ids or [None] * len(cases)
    return [
        pytest.param(
            *case, id=name, marks=() if tuple(options(case)) in default else pytest.mark.slow
        )
        for case, name in zip(cases, ids)
    ]


def parametrize_pairwise(**options):
    """``@pytest.mark.parametrize`` over the product of ``options`` (name -> values), pairwise by
    default.

    ``@parametrize_pairwise(dtype=["float64", "float32"], pos=[1, 7], causal=[True, False])`` gives
    every combination, as stacked ``parametrize`` decorators would; those outside a pairwise
    selection carry the ``slow`` mark.
    """
    cases = list(itertools.product(*options.values()))
    ids = ["-".join(str(value) for value in case) for case in cases]
    return pytest.mark.parametrize(",".join(options), pairwise_then_slow(cases, ids))


# ---------------------------------------------------------------- hostile input: what the twins
# take and refuse


def outcome(fn):
    """("accepted", result), or (the exception's type name, its message) for the errors bad input
    may raise."""
    try:
        return "accepted", fn()
    except (TypeError, ValueError, OSError, RuntimeError, NotImplementedError) as error:
        return type(error).__name__, str(error)


def random_dout(shape, dtype="float64", seed=1):
    """A random upstream gradient (never all ones: an all-ones gradient hides LayerNorm bugs)."""
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def as_float64(x):
    """A float64 copy of an ndarray or a tensor."""
    return (
        x.detach().cpu().numpy().astype(np.float64)
        if hasattr(x, "detach")
        else np.array(x, dtype=np.float64)
    )


def grads(model):
    """{name: a float64 copy of the parameter's gradient}, from either twin."""
    return {name: as_float64(p.grad) for name, p in model.named_parameters()}


def assert_same_grads(actual, expected, tol=1e-12):
    """Every gradient agrees to ``tol``, relative to the largest gradient of them all."""
    largest = max(np.abs(g).max() for g in expected.values())
    for name in expected:
        assert rel_err(actual[name], expected[name], scale=largest) <= tol, name


def masked_like(shape, mask_something=True):
    """A masked array of random values (their positive entries masked, or none)."""
    values = np.random.default_rng(2).standard_normal(shape)
    return np.ma.masked_array(values, mask=values > 0 if mask_something else False)


def read_only(a):
    a = np.array(a, copy=True)
    a.flags.writeable = False
    return a


def as_matrix(a):
    with warnings.catch_warnings():
        # np.matrix is discouraged, not gone
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        return np.asmatrix(a)


def quantized(values, scale=0.01, dtype=None):
    """A quantized tensor of ``values`` (qint32 unless ``dtype`` says otherwise)."""
    with warnings.catch_warnings():
        # quantized tensors are deprecated: torch says so
        warnings.simplefilter("ignore", UserWarning)
        return torch.quantize_per_tensor(
            torch.from_numpy(np.asarray(values, dtype=np.float32)), scale, 0, dtype or torch.qint32
        )


# special files where a file is expected (the readers' tests): a FIFO, /dev/zero, a folder
SPECIAL = ["fifo", "device", "folder"]
SPECIAL_WORDS = {"fifo": "a FIFO", "device": "a character device", "folder": "a folder"}
HAS_SPECIAL_FILES = hasattr(os, "mkfifo") and os.path.exists("/dev/zero")
NEEDS_SPECIAL_FILES = pytest.mark.skipif(not HAS_SPECIAL_FILES, reason="needs FIFOs and /dev/zero")


def special_file(path, kind):
    """Put a FIFO, a character device (a link to /dev/zero) or a folder at ``path``."""
    if path.exists() or path.is_symlink():
        path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        path.symlink_to("/dev/zero")
    else:
        path.mkdir()


def without_hanging(function, seconds=30):
    """What ``function()`` raised, or None; one still running after ``seconds`` fails the test."""
    caught = []

    def run():
        try:
            function()
        except BaseException as error:  # noqa: B036
            caught.append(error)
        else:
            caught.append(None)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert caught, f"still running after {seconds} s: it hangs"
    return caught[0]
