"""Shared test helpers: random weights into both twins, and the one way parity is measured.

Parity of a tensor: max |numpy - torch| / max |torch|, the error relative to the tensor's
largest entry. A gradient that is exactly zero in exact arithmetic (b_K's: softmax ignores
a shift shared by every key) holds only rounding noise on both sides, so it is measured
against the largest gradient of the whole component or model instead (see ``scale``).
"""

import numpy as np
import torch

# random weights for tests: LayerNorm w near 1 (never all ones), non-zero biases, N(0, 1/fan_in) matrices
from numpy_impl.gradcheck import randomize_parameters as randomize  # noqa: F401

# float64: both sides do the same operations in a different order; ~1e-15 is typical.
# float32: a few ulps (6e-8) times the depth of the computation.
TOL = {"float64": 1e-12, "float32": 1e-5}


def to_numpy(x):
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def rel_err(actual, expected, scale=None):
    """max |actual - expected| / scale, scale defaulting to max |expected| (never 0)."""
    actual, expected = to_numpy(actual), to_numpy(expected)
    assert actual.shape == expected.shape, f"shape {actual.shape} != {expected.shape}"
    if scale is None:
        scale = np.abs(expected).max()
    return float(np.abs(actual.astype(np.float64) - expected.astype(np.float64)).max() / max(scale, 1e-30))


def assert_close(name, actual, expected, dtype, scale=None):
    err = rel_err(actual, expected, scale)
    assert err <= TOL[dtype], f"{name}: relative error {err:.3e} > {TOL[dtype]:.0e} ({dtype})"
    return err


def load_into_twin(np_module, torch_module):
    """Copy the NumPy module's weights into its torch twin (names and shapes must match exactly)."""
    torch_module.load_state_dict({k: torch.from_numpy(v) for k, v in np_module.state_dict().items()})


def compare_grads(np_module, torch_module, dtype, exact_zero=("b_K",)):
    """Assert every parameter gradient agrees; returns {name: relative error}."""
    np_params = dict(np_module.named_parameters())
    torch_params = dict(torch_module.named_parameters())
    assert list(np_params) == list(torch_params), "parameter names or order differ between the twins"
    largest = max(np.abs(to_numpy(p.grad)).max() for p in torch_params.values())
    errors = {}
    for name, p in np_params.items():
        twin_grad = torch_params[name].grad
        assert twin_grad is not None, f"{name}: torch gradient missing"
        # an exactly-zero gradient is compared with the largest gradient in the module
        scale = largest if name.split(".")[-1] in exact_zero else None
        errors[name] = assert_close(f"grad {name}", p.grad, twin_grad, dtype, scale)
    return errors
