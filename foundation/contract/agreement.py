"""One measure of agreement between two tensors: every parity test, tour and check uses it.

    rel_err(actual, expected) = max |actual - expected| / max |expected|

the gap relative to the expected tensor's largest entry. A tensor whose exact value is zero
holds only rounding noise in both twins, so its own size is no yardstick: b_K's gradient is
one (softmax ignores a shift shared by every key, so no change of b_K changes the output).
Such a tensor is measured against the largest entry of the whole group it belongs to (every
gradient of the model, say): ``relative_errors`` applies that rule by name.
"""

from __future__ import annotations

import numpy as np

from foundation.lens.hooks import as_numpy

# float64: both twins do the same operations in a different order; about 1e-15 is typical.
# float32: a few ulps (6e-8) times the depth of the computation.
TOL = {"float64": 1e-12, "float32": 1e-5}

# parameters whose exact gradient is zero (without rotary: a shift shared by all keys)
EXACT_ZERO = ("b_K", "_b_K")


def is_exact_zero(name: str) -> bool:
    """True for a tensor named like ``blocks.0.attn.b_K``, whose exact gradient is zero."""
    return name.split(".")[-1] in EXACT_ZERO


def rel_err(actual, expected, scale=None) -> float:
    """max |actual - expected| / scale, scale defaulting to max |expected| (never 0); ndarrays or
    tensors."""
    actual, expected = as_numpy(actual), as_numpy(expected)
    if actual.shape != expected.shape:
        raise ValueError(f"rel_err: shape {actual.shape} != {expected.shape}")
    if scale is None:
        scale = np.abs(expected).max() if expected.size else 0.0
    gap = (
        np.abs(actual.astype(np.float64) - expected.astype(np.float64)).max()
        if expected.size
        else 0.0
    )
    return float(gap / max(float(scale), 1e-300))


def relative_errors(actual: dict, expected: dict) -> dict:
    """{name: rel_err} over a group of tensors; an exact-zero tensor is measured against the group's
    largest entry."""
    if set(actual) != set(expected):
        raise ValueError(
            f"relative_errors: the names differ: {sorted(set(actual) ^ set(expected))}"
        )
    largest = max(
        (float(np.abs(as_numpy(value)).max()) for value in expected.values()), default=0.0
    )
    return {
        name: rel_err(actual[name], value, largest if is_exact_zero(name) else None)
        for name, value in expected.items()
    }
