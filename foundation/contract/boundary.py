"""The boundary every component call passes, written once for both twins.

A component's ``forward`` and ``backward`` bodies are the formulas and nothing else. What keeps a
call safe is declared beside each method's signature and carried out by each twin's ``Module``
(``numpy_impl/module.py``, ``torch_impl/module.py``), on the part both share, ``TwinModule`` (the
end of this file)::

    @boundary(x="activation")
    def forward(self, x):
        ...

    @boundary(dout="gradient")
    def backward(self, dout):
        ...

1. **Arguments**: ``boundary`` names every argument's kind, from the table ``KINDS`` below. It
   refuses, when the class is defined, a method whose arguments and declaration differ: renaming
   ``x`` fails at import, it never drops a check. A user's call (a direct call, or one from a
   hook) has its arguments checked before any math; a call one body makes into another needs no
   check, since what it passes was made inside.
2. **Copies**: a user's NumPy call works on its own copy of every array it is given, so a cache
   never holds an array the caller can still change. A hook's result is copied where the hook
   point takes it (``HookPoint``), so a hook that reuses one buffer changes nothing that was saved.
3. **The non-finite guard**, in two speeds. By default a user's forward looks at what it returns
   once, at the end, and a user's backward at the gradients it returns and every parameter's
   gradient once, at the end (one host synchronisation each in the torch twin; nothing at the
   hook points that have no hook). Only when that finds a NaN or an infinity, and every input
   (``dout`` and ``dloss`` included) and every weight was finite and no hook put one in, is the call
   replayed with the guard at every hook point, which raises ``NonFiniteError`` (a ``ValueError``)
   naming the component and the tensor: the textbook formula overflowed the dtype. Inside
   ``with guard_every_hook():`` (as ``torch.autograd.detect_anomaly``) every call runs that way from
   the start. A LayerNorm's ``hook_scale`` is always looked at (``HookPoint(always=True)``): an
   infinite scale makes a finite output (x / inf = 0), so the output alone would not show it.
   Non-finite inputs give non-finite results, as in NumPy and torch, without a word. Attention
   scores may hold -inf: that is how the causal mask hides a key.
"""

from __future__ import annotations

import functools
import inspect
import math
import threading
from contextlib import contextmanager

from foundation.contract.arrays import dtype_name, is_float, is_torch, size
from foundation.contract.checks import (
    check_activation,
    check_dloss,
    check_flags,
    check_forward_done,
    check_grad,
    check_loss_inputs,
    check_plain,
    check_state_dict,
    check_tokens,
    is_integer,
)
from foundation.lens.kv_cache import (
    cache_state,
    check_past_kv_cache,
    check_past_kv_cache_entry,
    restore_cache_state,
)
from foundation.lens.running import RETURN_TYPES


class NonFiniteError(ValueError):
    """A formula produced a NaN or an infinity from finite inputs and weights."""


# --- 1. arguments: each method declares its arguments' kinds -------------------------------


def check_activation_argument(module, name, value, arguments, array_type):
    """An activation: float, the model's dtype, [batch, pos, d_model], pos <= n_ctx."""
    check_activation(value, name, module.cfg, array_type)


def check_tokens_argument(module, name, value, arguments, array_type):
    """Token ids: integer, [batch, pos], pos <= n_ctx, each in [0, d_vocab)."""
    check_tokens(value, module.cfg, array_type, name)


def check_model_input_argument(module, name, value, arguments, array_type):
    """The model's input: token ids, or with ``start_at_layer=k`` the residual stream entering
    block k (an activation)."""
    if arguments.get("start_at_layer") is None:
        check_tokens(value, module.cfg, array_type, name)
        return
    if not hasattr(value, "dtype") or not is_float(value):
        raise TypeError(
            f"with start_at_layer, {name} is the residual stream entering that block, a float "
            f"array [batch, pos, d_model], not token ids; got {type(value).__name__}"
            + (f" of dtype {value.dtype}" if hasattr(value, "dtype") else "")
        )
    # named as what it is here, so a dtype or shape error does not call a residual stream tokens
    check_activation(
        value, f"{name} (the residual stream, with start_at_layer)", module.cfg, array_type
    )


def check_return_type_argument(module, name, value, arguments, array_type):
    """One of the model's return types ("logits", "loss", "both", None); a loss needs logits."""
    if value not in RETURN_TYPES:
        raise ValueError(f"return_type must be one of {RETURN_TYPES}, got {value!r}")
    if value in ("loss", "both") and not module.cfg.unembed:
        raise ValueError(f"return_type={value!r} needs logits (cfg.unembed=True)")


def check_flag_argument(module, name, value, arguments, array_type):
    """True or False."""
    check_flags(**{name: value})


def check_logits_argument(module, name, value, arguments, array_type):
    """The loss's logits, checked with its targets and weights (each one's shape depends on the
    others)."""
    check_loss_inputs(value, arguments["targets"], arguments.get("weights"), array_type)


def checked_with_logits(module, name, value, arguments, array_type):
    """The loss's targets and weights: checked with the logits (``check_logits_argument``)."""


def check_gradient_argument(module, name, value, arguments, array_type):
    """An upstream gradient, shaped like what the last forward returned (a real number for a
    scalar loss), in the model's dtype."""
    check_plain(value, name)  # a masked array's mask would be ignored
    out_shape = module.forward_record.out_shape
    if out_shape == ():
        check_dloss(value)
    else:
        check_grad(value, name, out_shape, getattr(getattr(module, "cfg", None), "dtype", None))


def check_output_or_loss_gradient(module, name, value, arguments, array_type):
    """The model's: the gradient of its output, or of the loss the last forward returned (None:
    1)."""
    if module._output_shape is None:
        raise ValueError(
            "backward after forward(..., stop_at_layer=k): the run returned an intermediate "
            "residual stream, not the output; run the whole model to backpropagate"
        )
    gradient_target(value, module._output_shape, module._loss_shape, module.cfg.dtype)


def check_stop_layer_argument(module, name, value, arguments, array_type):
    """The model's ``stop_at_layer``: None, or an int in [-n_layers, n_layers]."""
    module._stop_layer(value)


def check_start_layer_argument(module, name, value, arguments, array_type):
    """The model's ``start_at_layer``: None, or an int in [-n_layers, n_layers), at or before
    ``stop_at_layer``; the output it gives is logits (no tokens for a loss)."""
    start = module._start_layer(value)
    if value is None:
        return
    if arguments.get("past_kv_cache") is not None:
        raise ValueError(
            "start_at_layer with past_kv_cache: the cache holds every block's keys and values, "
            "and a run from block k would extend only those of k and after; run from the tokens"
        )
    if arguments.get("return_type") in ("loss", "both"):
        raise ValueError(
            f"return_type={arguments['return_type']!r} with start_at_layer: the input is a "
            "residual stream, not tokens, so there is no next token to predict; take "
            "return_type='logits' and compute the loss from them"
        )
    stop = module._stop_layer(arguments.get("stop_at_layer"))
    if stop < start:
        raise ValueError(
            f"stop_at_layer ({arguments.get('stop_at_layer')}) comes before start_at_layer "
            f"({value}): the blocks run from start to stop"
        )


def check_kv_cache_argument(module, name, value, arguments, array_type):
    """The model's ``past_kv_cache``: None, or a key-value cache this run continues
    (foundation/lens/kv_cache.py says what it must hold)."""
    if value is not None:
        check_past_kv_cache(
            module, value, arguments["tokens"], arguments["stop_at_layer"], array_type
        )


def check_kv_cache_entry_argument(module, name, value, arguments, array_type):
    """A block's or an attention's ``past_kv_cache_entry``: None, or one layer's keys and values
    so far, which the input's positions continue."""
    if value is not None:
        x = next(iter(arguments.values()))  # the forward's input, its first argument
        check_past_kv_cache_entry(module, value, x, array_type)


def check_position_offset_argument(module, name, value, arguments, array_type):
    """A positional embedding's ``past_kv_pos_offset``: the position its first token sits at (the
    positions a key-value cache holds), an int >= 0 that leaves the tokens inside n_ctx."""
    if not is_integer(value) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    pos = arguments["tokens"].shape[1]
    if value + pos > module.cfg.n_ctx:
        raise ValueError(
            f"{name}={value} puts the last of {pos} tokens at position {value + pos - 1}, past "
            f"n_ctx={module.cfg.n_ctx}"
        )


KINDS = {
    "activation": check_activation_argument,
    "tokens": check_tokens_argument,
    "tokens or residual": check_model_input_argument,
    "return_type": check_return_type_argument,
    "flag": check_flag_argument,
    "logits": check_logits_argument,
    "targets": checked_with_logits,
    "weights": checked_with_logits,
    "gradient": check_gradient_argument,
    "output or loss gradient": check_output_or_loss_gradient,
    "layer": check_stop_layer_argument,
    "start layer": check_start_layer_argument,
    "kv cache": check_kv_cache_argument,
    "kv cache entry": check_kv_cache_entry_argument,
    "position offset": check_position_offset_argument,
}
CACHE_KINDS = ("kv cache", "kv cache entry")  # a forward given one runs no NumPy backward


def boundary(**kinds):
    """Declare a ``forward``'s or ``backward``'s arguments by kind (``KINDS``).

    The method becomes ``module._forward_at_the_boundary(method, ...)`` (or ``_backward_...``),
    which each twin's ``Module`` writes. Every argument must be declared, and nothing else.
    """
    for name, kind in kinds.items():
        if kind not in KINDS:
            raise TypeError(
                f"boundary({name}={kind!r}): unknown kind; the kinds are {', '.join(KINDS)}"
            )

    def declare(method):
        signature = inspect.signature(method)
        names = list(signature.parameters)[1:]  # after self
        if names != list(kinds):
            raise TypeError(
                f"{method.__qualname__} takes ({', '.join(names)}) but its boundary declares "
                f"({', '.join(kinds)}): rename both, or the argument would lose its check"
            )
        if method.__name__ not in ("forward", "backward"):
            raise TypeError(
                f"{method.__qualname__}: boundary declares a forward or a backward only"
            )
        direction = f"_{method.__name__}_at_the_boundary"
        # the body carries its declaration (check_arguments reads it; functools.wraps copies it)
        method.kinds = dict(kinds)
        # the arguments that hand it a key-value cache: continues_a_cache reads them
        method.cache_arguments = [name for name, kind in kinds.items() if kind in CACHE_KINDS]

        @functools.wraps(method)
        def at_the_boundary(self, *args, **kwargs):
            return getattr(self, direction)(method, signature, args, kwargs)

        return at_the_boundary

    return declare


def bind(module, signature, args, kwargs):
    """{name: value} of a call, defaults applied (self left out)."""
    bound = signature.bind(module, *args, **kwargs)
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    del arguments[next(iter(signature.parameters))]
    return arguments


def continues_a_cache(body, signature, args, kwargs):
    """Was this forward given a key-value cache (an argument of a ``CACHE_KINDS`` kind, not None)?
    Its record then says "cached", and the NumPy backward refuses it."""
    if not body.cache_arguments:
        return False
    arguments = signature.bind(None, *args, **kwargs).arguments
    return any(arguments.get(name) is not None for name in body.cache_arguments)


def check_arguments(module, method, arguments, array_type, checked=()):
    """Check a user's call's arguments ({name: value}) by the kinds ``method`` (a body) declares;
    the names in ``checked`` were checked already."""
    for name, value in arguments.items():
        if name in checked:
            continue
        KINDS[method.kinds[name]](module, name, value, arguments, array_type)


class ForwardRecord:
    """What the boundary remembers of a module's last forward, for its ``backward``."""

    def __init__(self, state, out_shape=None, tainted=False, versions=None):
        self.state = state  # "running", "raised" or "done"
        # the gradient backward takes has this shape (and the model's dtype)
        self.out_shape = out_shape
        # a non-finite input, or a hook's: the guard stands down in the backward
        self.tainted = tainted
        # [(parameter, its version)] when a user's forward read them (NumPy)
        self.versions = versions

    def __repr__(self):
        return f"<forward {self.state}>"


RUNNING = ForwardRecord("running")
RAISED = ForwardRecord("raised")


def check_backward_allowed(record, component):
    """``backward`` needs a ``forward`` that finished (not one that raised, nor one running), whose
    weights are those the backward reads: refuse when one changed."""
    check_forward_done(None if record is None else record.state, component)
    changed = [
        parameter for parameter, version in record.versions or () if parameter.version != version
    ]
    if changed:
        raise ValueError(
            f"{component}.backward(): a weight was changed in place after {component}.forward() "
            "(an optimizer step, load_state_dict), so the gradient would mix two models; run "
            "forward again first (torch refuses such a backward too)"
        )


def gradient_target(dout, logits_shape, loss_shape, dtype):
    """Which output a model's backward starts from -> ("logits" or "loss", the gradient, checked).

    ``dout`` None: the scalar loss, gradient 1 (``loss.backward()``); a per-token loss needs its
    gradient given, as torch asks. ``dout`` shaped like the loss: the loss; otherwise ``dout``
    must be shaped like the logits. A shape is None for an output the forward did not return.
    """
    if dout is None:
        if loss_shape is None:
            raise ValueError(
                f"backward without dout needs a loss: run the forward with return_type='loss' "
                f"just before, or pass dout shaped like the output {tuple(logits_shape)}"
            )
        if tuple(loss_shape) != ():
            raise ValueError(
                f"backward without dout needs a scalar loss; this one is per token, shape "
                f"{tuple(loss_shape)}: pass dout of that shape (torch: loss.backward(dout)), "
                "or use loss_per_token=False"
            )
        return "loss", 1.0
    check_plain(dout, "dout")
    shape = (
        tuple(dout.shape)
        if hasattr(dout, "shape")
        else ()
        if isinstance(dout, (int, float))
        else None
    )
    if loss_shape is not None and (shape == tuple(loss_shape) or logits_shape is None):
        if tuple(loss_shape) == ():
            check_dloss(dout)
        else:
            check_grad(dout, "dout", loss_shape, dtype)
        return "loss", dout
    check_grad(dout, "dout", logits_shape, dtype)
    return "logits", dout


def outputs(result):
    """The arrays or tensors a forward returned (a tuple's elements, or the one result)."""
    return [
        out for out in (result if isinstance(result, tuple) else (result,)) if hasattr(out, "dtype")
    ]


# --- 3. the non-finite guard and the calls in progress -------------------------------------

_state = threading.local()


class Call:
    """A user's ``forward`` or ``backward`` in progress (and, while every hook is guarded, each
    component's): its module, its array arguments, whether a hook put a non-finite value in."""

    is_hook = False

    def __init__(self, module, method, arrays, parameters, tainted=False):
        self.module = module
        self.method = method  # "forward" or "backward"
        self.arrays = arrays  # the arguments, for the guard to look at when something is not finite
        self.parameters = parameters  # a function: the module's weights, as arrays or tensors
        self.tainted = tainted
        self.always = []  # always-guarded hook points' values (a LayerNorm's scale), for the end


class HookCall:
    """Hooks running at a hook point: a model they call is a user's call, and what it saved is put
    back when they return (``keep``), so the run around them goes on as if they had not run."""

    is_hook = True
    tainted = False

    def __init__(self):
        self.restore = []  # functions that put back what a nested call overwrote

    def keep(self, module):
        """Before a nested call on ``module``: put its saved state back when the hooks return."""
        saved = module.saved_state()
        self.restore.append(lambda: module.restore_state(saved))


def calls():
    """The calls in progress on this thread, outermost first."""
    if not hasattr(_state, "stack"):
        _state.stack = []
    return _state.stack


def guarding():
    """True inside ``guard_every_hook()`` (or a replay): every hook point and output is guarded."""
    return getattr(_state, "guarding", 0) > 0


@contextmanager
def guard_every_hook():
    """Guard every value at every hook point, every component's output and every gradient, as they
    are made (``with guard_every_hook(): model(tokens)``; like ``torch.autograd.detect_anomaly``).

    By default only the outermost results are looked at, once, and a call that finds a NaN or an
    infinity is replayed this way to name where it began; inside this block every call is, from
    the start. Slower: a reduction (and in the torch twin a host synchronisation) per hook point.
    """
    _state.guarding = getattr(_state, "guarding", 0) + 1
    try:
        yield
    finally:
        _state.guarding -= 1


def user_call():
    """Is the call starting now a user's (no call in progress, or hooks running), not a body's?"""
    stack = calls()
    return not stack or stack[-1].is_hook


@contextmanager
def entered(call):
    """``with entered(call):`` pushes ``call`` for a body's length; nested calls inherit a taint."""
    stack = calls()
    if stack and stack[-1].tainted:
        call.tainted = True
    stack.append(call)
    try:
        yield call
    finally:
        stack.pop()


@contextmanager
def running_hooks():
    """Around the hooks of one hook point: see ``HookCall``."""
    call = HookCall()
    calls().append(call)
    try:
        yield call
    finally:
        calls().pop()
        for restore in reversed(call.restore):
            restore()


def taint():
    """A hook put a non-finite value in: the calls in progress no longer promise finite results."""
    for call in calls():
        call.tainted = True


def note_always_guarded(value):
    """An always-guarded hook point's value, looked at when the user's call ends."""
    stack = calls()
    if stack and not stack[-1].is_hook:
        stack[-1].always.append(value)


def nonfinite(x):
    """None if every entry of the float array ``x`` is finite, else "nan", "inf", "-inf"."""
    if not hasattr(x, "dtype") or not is_float(x) or size(x) == 0:
        return None
    if is_torch(x):
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


def inputs_finite(call):
    """Were the call's arrays and the module's weights finite? (Only asked when a result is not.)"""
    return not any(nonfinite(a) for a in call.arrays) and not any(
        nonfinite(p) for p in call.parameters()
    )


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
    stack = (
        [call for call in calls() if not call.is_hook]
        if forward_call is None
        else list(forward_call)
    )
    if not stack or any(call.tainted for call in stack):
        return
    name = tensor if isinstance(tensor, str) else tensor()
    if kind == "-inf" and name.endswith("attn_scores"):
        return  # the causal mask sets hidden keys' scores to -inf
    outer, inner = stack[0], stack[-1]
    if not inputs_finite(outer):
        for call in stack:
            # non-finite in, non-finite out, as NumPy and torch do; the backward too
            call.tainted = True
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
    stack = [call for call in calls() if not call.is_hook]
    if owner is None and stack:
        owner = stack[-1].module
    children = dict(getattr(owner, "_modules", None) or vars(owner)) if owner is not None else {}
    for name, value in children.items():
        if value is hook_point:
            return name
    return "a hook point"


def parameter_label(module, parameter):
    """``parameter``'s name in ``module`` (``unembed.W_U``) for a message."""
    for name, candidate in module.named_parameters():
        if candidate is parameter:
            return name
    return "a parameter"


# --- 4. what both twins' Module do alike ---------------------------------------------------


class TwinModule:
    """The part of each twin's ``Module`` that reads the same in both, written once.

    Each twin's ``Module`` adds what its array library changes: ``_checked_arguments`` (a user's
    arguments checked and converted; NumPy also copies them), ``_guarded_forward`` (a forward with
    every hook point guarded), ``_weights`` (the weights as arrays or detached tensors) and
    ``_finite`` (one look at a call's results: in torch, one host synchronisation), and what a
    finished forward leaves for the backward (NumPy: a record; torch: a hook on the output).
    """

    @classmethod
    def from_twin(cls, twin):
        """A module of this class holding ``twin``'s config and weights (``twin``: the same class
        from the other twin)."""
        module = cls(twin.cfg) if hasattr(twin, "cfg") else cls()
        module.load_state_dict(twin.state_dict())
        return module

    def _checked_state_dict(self, state_dict, strict):
        """{name: ndarray cast to the model's dtype} of ``state_dict``, every key checked first
        (``check_state_dict``), so both twins take and refuse the same state dicts."""
        shapes = {name: tuple(p.shape) for name, p in self.named_parameters()}
        weights = self._weights()
        dtype = dtype_name(weights[0]) if weights else None
        return check_state_dict(state_dict, shapes, dtype, strict)

    def _user_forward(self, body, arguments, arrays):
        """A user's forward on checked arguments -> (result, its ``Call``, whether it ran guarded).

        The results are looked at once (``_finite``); only when one is not finite although the
        inputs and weights were, and no hook put a NaN or an infinity in, is the forward replayed
        with every hook point guarded, which names the component and tensor (or raises nothing,
        if the replay is finite).
        """
        call = Call(self, "forward", arrays, self._weights)
        caches = cache_state(arguments)  # a replay, or a raise part way, leaves caches as found
        try:
            if guarding():
                return self._guarded_forward(body, (), arguments, call), call, True
            with entered(call):
                result = body(self, **arguments)
            if not self._finite(outputs(result) + call.always) and not call.tainted:
                if inputs_finite(call):
                    restore_cache_state(caches)  # the replay appends this step's keys once
                    with guard_every_hook():  # replayed to name the component and tensor
                        call = Call(self, "forward", arrays, self._weights)
                        return self._guarded_forward(body, (), arguments, call), call, True
                call.tainted = True  # non-finite in, non-finite out, as NumPy and torch do
            return result, call, False
        except BaseException:
            restore_cache_state(caches)
            raise
