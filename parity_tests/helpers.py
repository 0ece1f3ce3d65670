"""Shared test helpers: random weights into both twins, and the one way parity is measured.

Parity of a tensor is ``foundation.agreement.rel_err``: max |numpy - torch| / max |torch|. A
gradient that is exactly zero in exact arithmetic (b_K's) is measured against the largest
gradient of the whole component or model instead (``relative_errors``).
"""


from foundation.agreement import TOL, rel_err, relative_errors  # noqa: F401
from foundation.hooks import as_numpy as to_numpy  # noqa: F401

# random weights for tests: LayerNorm w near 1 (never all ones), non-zero biases, N(0, 1/fan_in) matrices
from gradcheck.factory import randomize_parameters as randomize  # noqa: F401


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
        assert err <= TOL[dtype], f"grad {name}: relative error {err:.3e} > {TOL[dtype]:.0e} ({dtype})"
    return errors
