"""Finite-difference gradient checking: the hand-written backward against the forward alone.

This file has no twin: autograd needs no checking of this kind (``torch.autograd.gradcheck``
is its own tool). It checks the NumPy reference and a learner's copy of it.

Axes: none of their own; every tensor keeps the shape of the parameter or input it checks.

For a module m, inputs and a random R shaped like the output, the scalar
    f = sum(m.forward(inputs) * R)
has the gradient the backward computes from dout = R (the analytic one, a). Its numeric
estimate, one entry e at a time, is the central difference (step h, about 1e-6):
    n[e] = (f(theta + h e) - f(theta - h e)) / (2 h)
and the report gives, per tensor, max over the checked entries of
    |a - n| / max(|a| + |n|, tiny)                        (CS231n's relative error)
Large tensors are checked on a random sample of entries. Everything runs in float64: in
float32 the two forwards differ by rounding alone (about 1e-7 of f), and dividing by 2h
turns that into an error larger than most gradients.

``tiny`` keeps entries whose exact gradient is zero, or nearly so, from dividing noise by
noise. At h = 1e-6 the two forwards' rounding leaves every numeric entry off by about
1e-10 to 1e-9 of the component's largest gradient (up to 5e-9 for the loss: its output is
one number, so nothing cancels entry by entry); b_K's exact gradient is zero (softmax
ignores a shift shared by every key), so there both sides are pure noise and the plain
ratio is about 1. tiny is therefore ``floor`` (0.1) times the largest analytic gradient of
the component. An entry at least that large must agree to ``tolerance`` (1e-7) relative;
a smaller one to an absolute tolerance * tiny, 1e-8 of the largest gradient. A real
mistake is off by about the size of the gradient itself and scores near 1 (see the planted
mistakes in parity_tests/test_gradcheck.py).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np

from numpy_impl.module import Module

STEP = 1e-6  # h: the central-difference step
TOLERANCE = 1e-7  # a tensor passes when its max relative error is at most this
FLOOR = 1e-1  # tiny = FLOOR * (largest |analytic gradient| in the component)


@dataclass(frozen=True)
class GradcheckRow:
    """One checked tensor: a parameter (``W_Q``, ``blocks.0.ln1.w``) or a float input (``x``)."""

    component: str  # what was checked, e.g. "LayerNorm" or a caller-given label
    tensor: str  # parameter name, or the forward's argument name for an input
    kind: str  # "parameter" or "input"
    shape: tuple  # the tensor's shape
    checked: int  # entries compared (all of them, or a random sample)
    size: int  # entries in the tensor
    max_rel_error: float  # max |a - n| / max(|a| + |n|, tiny) over the checked entries
    passed: bool  # max_rel_error <= tolerance


@dataclass(frozen=True)
class GradcheckReport:
    """Every row of one check, with the settings that produced them."""

    rows: tuple
    tolerance: float
    step: float
    tiny: float

    @property
    def passed(self) -> bool:
        return all(row.passed for row in self.rows)

    @property
    def worst(self) -> GradcheckRow:
        return max(self.rows, key=lambda row: row.max_rel_error)

    def table(self) -> str:
        """The rows as a plain-text table, with a footnote saying what the error is relative to."""
        return format_rows(self.rows) + (
            f"\n* |a - n| / max(|a| + |n|, tiny), tiny = {self.tiny:.1e} (a fraction of the "
            f"largest gradient)"
        )


def format_rows(rows) -> str:
    """A plain-text table of GradcheckRows: component, tensor, shape, entries, error, pass/FAIL."""
    header = ("component", "tensor", "shape", "entries", "max rel err*", "")
    lines = [
        (
            row.component,
            row.tensor,
            "x".join(map(str, row.shape)) or "scalar",
            f"{row.checked}/{row.size}",
            f"{row.max_rel_error:.1e}",
            "pass" if row.passed else "FAIL",
        )
        for row in rows
    ]
    widths = [max(len(cell) for cell in column) for column in zip(header, *lines)]
    out = ["  ".join(cell.ljust(w) for cell, w in zip(header, widths)).rstrip()]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines]
    return "\n".join(out)


def gradcheck(
    module, *inputs, sample=50, seed=0, step=STEP, tolerance=TOLERANCE, floor=FLOOR, name=None
):
    """Check ``module.backward`` against central differences of ``module.forward``.

    module: a float64 NumPy ``Module`` (a component or the whole ``Transformer``).
    inputs: the arguments of ``module.forward``; float arrays among them are checked too
        (their gradient is what ``backward`` returns), integer ones (tokens, targets) are
        discrete and are not. ``CrossEntropyLoss``'s optional ``weights`` are held fixed.
    sample: at most this many entries per tensor, drawn at random without repeats.
    Leaves each parameter's ``.grad`` holding the analytic gradient of sum(out * R) and its
    ``.data`` exactly as it found it. Returns a ``GradcheckReport``.
    """
    _check_arguments(module, inputs, sample, step, tolerance, floor)
    rng = np.random.default_rng(seed)
    label = name if name is not None else type(module).__name__
    inputs = [np.array(x, copy=True) if isinstance(x, np.ndarray) else x for x in inputs]
    input_names = _argument_names(module, len(inputs))
    out = module.forward(*inputs)
    R = rng.standard_normal(np.shape(out))  # the random direction; never all ones
    # analytic: one backward from dout = R
    module.zero_grad()
    dinput = module.backward(R if np.ndim(out) else float(R))
    tensors = [
        (param_name, "parameter", p.data, p.grad.copy())
        for param_name, p in module.named_parameters()
    ]
    checked_input = _first_float_input(inputs)
    if checked_input is not None and dinput is not None:
        tensors.append(
            (
                input_names[checked_input],
                "input",
                inputs[checked_input],
                np.array(dinput, dtype=np.float64),
            )
        )
    largest = max((np.abs(analytic).max() for _, _, _, analytic in tensors), default=0.0)
    tiny = max(floor * largest, np.finfo(np.float64).tiny)

    def f_difference(array, index):
        """(f(theta + h e) - f(theta - h e)) / 2h, the outputs subtracted before the sum (less
        cancellation)."""
        original = array[index]
        # the step actually taken is plus - minus, not 2h
        plus, minus = original + step, original - step
        array[index] = plus
        out_plus = np.array(module.forward(*inputs), dtype=np.float64)
        array[index] = minus
        out_minus = np.array(module.forward(*inputs), dtype=np.float64)
        array[index] = original
        return float(((out_plus - out_minus) * R).sum() / (plus - minus))

    rows = []
    for tensor_name, kind, array, analytic in tensors:
        flat = (
            rng.permutation(array.size)[:sample] if array.size > sample else np.arange(array.size)
        )
        worst = 0.0
        for flat_index in flat:
            index = np.unravel_index(flat_index, array.shape)
            numeric = f_difference(array, index)
            a = float(analytic[index])
            error = abs(a - numeric) / max(abs(a) + abs(numeric), tiny)
            # a NaN must fail, not vanish
            worst = max(worst, error if np.isfinite(error) else np.inf)
        rows.append(
            GradcheckRow(
                label,
                tensor_name,
                kind,
                tuple(array.shape),
                len(flat),
                int(array.size),
                worst,
                worst <= tolerance,
            )
        )
    module.forward(*inputs)  # leave the cache as the caller's inputs made it
    return GradcheckReport(tuple(rows), tolerance, step, tiny)


def _check_arguments(module, inputs, sample, step, tolerance, floor):
    if not _is_module(module):
        raise TypeError(
            f"module must be a numpy_impl Module (a component or the Transformer), got "
            f"{type(module).__name__}"
        )
    for param_name, p in module.named_parameters():
        if p.data.dtype != np.float64:
            raise TypeError(
                f"gradcheck needs float64, but parameter {param_name} is {p.data.dtype}: finite "
                f"differences "
                "in float32 are swamped by rounding; build the model with "
                "TransformerConfig(dtype='float64')"
            )
    for position, x in enumerate(inputs):
        if (
            isinstance(x, np.ndarray)
            and np.issubdtype(x.dtype, np.floating)
            and x.dtype != np.float64
        ):
            raise TypeError(
                f"gradcheck needs float64, but input {position} is {x.dtype}: finite differences "
                f"in "
                "float32 are swamped by rounding; pass x.astype(np.float64)"
            )
    if isinstance(sample, bool) or not isinstance(sample, (int, np.integer)) or sample < 1:
        raise ValueError(
            f"sample must be a positive int (entries checked per tensor), got {sample!r}"
        )
    for arg_name, value in (("step", step), ("tolerance", tolerance), ("floor", floor)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
            raise ValueError(f"{arg_name} must be a positive number, got {value!r}")


def _is_module(module):
    """A numpy_impl Module, or one from a copy of the package (an exercise copy has its own Module
    class)."""
    return isinstance(module, Module) or all(
        callable(getattr(module, method, None))
        for method in ("forward", "backward", "named_parameters", "zero_grad")
    )


def _argument_names(module, count):
    """The names of forward's positional parameters (x, resid_pre, logits, tokens ...)."""
    names = [p.name for p in inspect.signature(module.forward).parameters.values()]
    return names[:count] + [f"input{i}" for i in range(len(names), count)]


def _first_float_input(inputs):
    """The input backward returns the gradient of: the first float array (a loss's weights are
    fixed)."""
    for position, x in enumerate(inputs):
        if isinstance(x, np.ndarray) and np.issubdtype(x.dtype, np.floating):
            return position
    return None
