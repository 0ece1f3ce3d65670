"""The boundary every component call passes, written once for both twins.

A component's ``forward`` and ``backward`` bodies are the formulas and nothing else. What keeps a
call safe happens here, around every body (each twin's ``Module`` wraps its subclasses' methods
with this machinery; see ``numpy_impl/module.py`` and ``torch_impl/module.py``):

1. **Arguments** are checked by name, before any math, by the table ``ARGUMENTS``: an argument
   called ``x`` or ``resid_pre`` is an activation ``[batch, pos, d_model]`` of the model's dtype
   with ``pos <= n_ctx``; ``tokens`` are integer ids; ``logits``, ``targets`` and ``weights`` are the
   loss's; ``return_type`` is one of the model's return types. A ``backward`` gradient must be
   shaped like what the last ``forward`` returned, in the model's dtype, and that forward must
   have finished.
2. **Copies**: the outermost call (the one a user makes) works on its own copy of every array it
   is given, so a cache never holds an array the caller can still change. Calls one component
   makes into another need no copy: what they pass was made inside. A hook's result is copied
   where the hook point takes it (``HookPoint``), so a hook that reuses one buffer changes nothing
   that was saved.
3. **The non-finite guard**: every value that passes a hook point, every component's output and
   every gradient a backward returns is checked. A NaN or an infinity there raises
   ``NonFiniteError`` (a ``ValueError``) naming the component and the tensor, when every input of
   the outermost call and every weight was finite and no hook put a non-finite value in: the
   textbook formula overflowed the dtype (a float32 row of 1e20 in LayerNorm squares to inf).
   Non-finite inputs give non-finite results, as in NumPy and torch, without a word. Attention
   scores may hold -inf: that is how the causal mask hides a key.

The check is two reductions (the smallest and the largest entry) per tensor: about 1% of a
training step of config M (docs/performance.md).
"""

from __future__ import annotations

import math
import threading

from foundation.contract.checks import (
    check_activation,
    check_dloss,
    check_forward_done,
    check_grad,
    check_loss_inputs,
    check_plain,
    check_tokens,
)


class NonFiniteError(ValueError):
    """A formula produced a NaN or an infinity from finite inputs and weights."""


# --- 1. arguments, by the name the body gives them -------------------------------------------


def check_activation_argument(module, name, value, array_type):
    """An activation: float, the model's dtype, [batch, pos, d_model], pos <= n_ctx."""
    check_activation(value, name, module.cfg, array_type)
    pos = value.shape[1]
    if pos > module.cfg.n_ctx:
        raise ValueError(f"{name} has {pos} positions but n_ctx is {module.cfg.n_ctx}")


def check_tokens_argument(module, name, value, array_type):
    check_tokens(value, module.cfg, array_type, name)


def check_return_type_argument(module, name, value, array_type):
    module._check_return_type(value)


def check_bool_argument(module, name, value, array_type):
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")


ARGUMENTS = {
    "x": check_activation_argument,
    "resid_pre": check_activation_argument,
    "tokens": check_tokens_argument,
    "return_type": check_return_type_argument,
    "loss_per_token": check_bool_argument,
}
LOSS_ARGUMENTS = ("logits", "targets", "weights")  # checked together: each one's shape depends on the others


def check_arguments(module, arguments, array_type):
    """Check the forward's arguments ({name: value}, as the body names them) before any math."""
    if "logits" in arguments:
        check_loss_inputs(arguments["logits"], arguments["targets"], arguments.get("weights"), array_type)
    for name, value in arguments.items():
        if name in ARGUMENTS:
            ARGUMENTS[name](module, name, value, array_type)


class ForwardRecord:
    """What the boundary remembers of a module's last forward, for its ``backward`` to check against."""

    def __init__(self, state, out_shape=None, tainted=False):
        self.state = state  # "running", "raised" or "done"
        self.out_shape = out_shape  # the gradient backward takes has this shape (and the model's dtype)
        self.tainted = tainted  # a non-finite input, or a hook's: the guard stands down in the backward

    def __repr__(self):
        return f"<forward {self.state}>"


def check_backward_allowed(record, component):
    """``backward`` needs a ``forward`` that finished (not one that raised, nor one still running)."""
    check_forward_done(None if record is None else record.state, component)


def check_gradient_argument(record, name, value, model_dtype):
    """The upstream gradient: shaped like the forward's output (a real number for a scalar loss)."""
    check_plain(value, name)  # a masked array's mask would be ignored
    if record.out_shape == ():
        check_dloss(value)
    else:
        check_grad(value, name, record.out_shape, model_dtype)


def output_shape(result):
    """The shape of what a forward returned (its first element for a tuple), or None."""
    if isinstance(result, tuple):
        result = result[0] if result else None
    shape = getattr(result, "shape", None)
    return None if shape is None else tuple(shape)


# --- 3. the non-finite guard and the calls in progress -------------------------------------

_calls = threading.local()


class Call:
    """One ``forward`` or ``backward`` in progress: its module, its array arguments, whether a hook
    put a non-finite value in."""

    def __init__(self, module, method, arrays, parameters, tainted=False):
        self.module = module
        self.method = method  # "forward" or "backward"
        self.arrays = arrays  # the arguments, for the guard to look at when something is not finite
        self.parameters = parameters  # a function: the module's weights, as arrays or tensors
        self.tainted = tainted


def calls():
    """The calls in progress on this thread, outermost first."""
    if not hasattr(_calls, "stack"):
        _calls.stack = []
    return _calls.stack


class entered:
    """``with entered(call):`` pushes ``call`` for the length of a body; nested calls inherit a taint."""

    def __init__(self, call):
        self.call = call

    def __enter__(self):
        stack = calls()
        if stack and stack[-1].tainted:
            self.call.tainted = True
        stack.append(self.call)
        return self.call

    def __exit__(self, *exc):
        calls().pop()
        return False


def taint():
    """A hook put a non-finite value in: the calls in progress no longer promise finite results."""
    for call in calls():
        call.tainted = True


def nonfinite(x):
    """None if every entry of the float array or tensor ``x`` is finite, else "nan", "inf" or "-inf"."""
    if not hasattr(x, "dtype") or not _is_float(x) or _size(x) == 0:
        return None
    if _is_torch(x):
        low, high = x.detach().aminmax()  # one pass, and no autograd record
    else:
        low, high = x.min(), x.max()
    low, high = float(low), float(high)
    if math.isnan(low) or math.isnan(high):
        return "nan"
    if high == math.inf:
        return "inf"
    if low == -math.inf:
        return "-inf"
    return None


def _is_torch(x):
    return type(x).__module__.startswith("torch")


def _size(x):
    return x.numel() if _is_torch(x) else x.size


def _is_float(x):
    return x.is_floating_point() if _is_torch(x) else x.dtype.kind == "f"


def guard(value, tensor, forward_call=None):
    """Raise ``NonFiniteError`` if ``value`` holds a NaN or an infinity that finite inputs produced.

    ``tensor`` names the value: a string ("its output"), or a function that returns the name (a
    hook point's, looked up only when something is wrong). The calls in progress say what the
    inputs were; outside any call (a hook point used on its own) there is nothing to guard. The
    torch twin's gradients arrive after its forward has returned, so they pass the ``Call`` records
    of that forward as ``forward_call`` (outermost, innermost).
    """
    kind = nonfinite(value)
    if kind is None:
        return
    stack = calls() if forward_call is None else list(forward_call)
    if not stack or any(call.tainted for call in stack):
        return
    name = tensor if isinstance(tensor, str) else tensor()
    if kind == "-inf" and name.endswith("attn_scores"):
        return  # the causal mask sets hidden keys' scores to -inf
    outer, inner = stack[0], stack[-1]
    if any(nonfinite(a) for a in outer.arrays) or any(nonfinite(p) for p in outer.parameters()):
        for call in stack:
            call.tainted = True  # non-finite in, non-finite out, as NumPy and torch do; the backward too
        return
    component = type(inner.module).__name__
    method = inner.method if forward_call is None else "backward"
    dtype = str(getattr(value, "dtype", "")).replace("torch.", "")
    raise NonFiniteError(
        f"{component}.{method}: {name} holds {kind} although every input and weight was finite: "
        f"the formula overflows {dtype} here (the inputs are too large for this dtype)"
    )


def hook_label(hook_point, owner=None):
    """A hook point's name for a message: its full name in a model, else its attribute name in
    ``owner`` (by default the component being run)."""
    if getattr(hook_point, "name", None):
        return hook_point.name
    if owner is None and calls():
        owner = calls()[-1].module
    children = dict(getattr(owner, "_modules", None) or vars(owner)) if owner is not None else {}
    for name, value in children.items():
        if value is hook_point:
            return name
    return "a hook point"
