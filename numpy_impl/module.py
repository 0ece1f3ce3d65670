"""The small machinery under every NumPy component: parameters, modules and hook points.

It copies just enough of ``torch.nn`` that the two implementations are used the same way:
``Parameter`` holds ``.data`` and ``.grad``; ``Module`` finds its parameters and children by
walking its attributes in the order they were set, so ``named_parameters()`` and
``state_dict()`` list the same names, in the same order, as the torch twin.

``Module`` also carries the boundary each component method declares with
``@boundary(x="activation")`` (``foundation/contract/boundary.py`` says what it guarantees):
``_forward_at_the_boundary`` and ``_backward_at_the_boundary`` below, on what both twins share
(``TwinModule`` in ``foundation/contract/boundary.py``: ``from_twin``, the state-dict check, a
user's guarded forward), so the bodies in the component files hold only the formulas.
"""

from __future__ import annotations

import numpy as np

from foundation.contract.arrays import as_numpy
from foundation.contract.boundary import (  # noqa: F401 (boundary, for the components)
    RAISED,
    RUNNING,
    Call,
    ForwardRecord,
    TwinModule,
    bind,
    boundary,
    calls,
    check_arguments,
    check_backward_allowed,
    continues_a_cache,
    entered,
    guard,
    guard_every_hook,
    guarding,
    hook_label,
    nonfinite,
    note_always_guarded,
    outputs,
    taint,
    user_call,
)
from foundation.contract.checks import IncompatibleKeys, tokens_as_array
from foundation.lens.hooks import HookLists

__all__ = ["HookPoint", "Module", "Parameter", "boundary"]


class Parameter:
    """A trainable array and its gradient (same shape, accumulated by ``backward``).

    ``version`` counts the changes made through ``.data`` (``p.data -= lr * m`` assigns it) and
    ``load_state_dict``, as torch's version counter: a backward refuses a weight that changed after
    its forward. Writing into ``p.data[...]`` yourself changes no version; call ``p.changed()``.
    """

    def __init__(self, data: np.ndarray):
        self._data = data
        self.version = 0
        self.grad = np.zeros_like(data)

    @property
    def data(self):
        return self._data

    @data.setter
    def data(self, value):
        self._data = value
        self.version += 1

    def changed(self):
        """Say that ``data`` was written in place: a backward of an earlier forward is refused."""
        self.version += 1

    @property
    def shape(self):
        return self._data.shape

    def __repr__(self):
        return f"Parameter(shape={self._data.shape}, dtype={self._data.dtype})"


class Constant:
    """A fixed array in a parameter's place: ``.data`` reads as a parameter's; what ``.grad`` is
    given is dropped."""

    def __init__(self, data):
        self.data = data

    @property
    def grad(self):
        return np.zeros_like(self.data)

    @grad.setter
    def grad(self, value):
        pass  # a constant is not trained: nothing keeps its gradient


class Module(TwinModule):
    """Base class: parameter discovery, state dicts, ``zero_grad`` and ``__call__``; and the
    boundary of every method declared with ``@boundary(...)`` (below; what reads the same in both
    twins, ``from_twin`` and a user's guarded forward among it, is ``TwinModule``'s)."""

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def saved_state(self):
        """What the last forward left for backward, in this module and every one below it
        (references)."""
        return [
            (
                module,
                {
                    name: vars(module)[name]
                    for name in ("cache", "changed", "forward_record")
                    if name in vars(module)
                },
            )
            for _, module in self.named_modules()
        ]

    @staticmethod
    def restore_state(saved):
        """Put back what ``saved_state`` recorded."""
        for module, attributes in saved:
            for name, value in attributes.items():
                setattr(module, name, value)

    def named_children(self):
        """Direct sub-modules, in the order they were set; a list ``blocks`` gives ``blocks.0``
        ..."""
        for name, value in vars(self).items():
            if name.startswith("_"):
                continue  # not a part of the model (the loss of the last forward)
            if isinstance(value, Module):
                yield name, value
            elif isinstance(value, list) and value and all(isinstance(v, Module) for v in value):
                for i, child in enumerate(value):
                    yield f"{name}.{i}", child

    def named_modules(self, prefix: str = ""):
        """This module and every module below it, with dotted names ("" for this one)."""
        yield prefix, self
        for name, child in self.named_children():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def named_parameters(self, prefix: str = ""):
        """(name, Parameter) pairs with torch's dotted names, e.g. ``blocks.0.attn.W_Q``."""
        for name, value in vars(self).items():
            if isinstance(value, Parameter):
                yield (f"{prefix}.{name}" if prefix else name), value
        for name, child in self.named_children():
            yield from child.named_parameters(f"{prefix}.{name}" if prefix else name)

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def zero_grad(self):
        """Reset every gradient to zero; ``backward`` adds into them until then."""
        for p in self.parameters():
            p.grad[...] = 0

    def state_dict(self) -> dict:
        """{name: copy of the array}: a snapshot that later updates do not change."""
        return {name: p.data.copy() for name, p in self.named_parameters()}

    def load_state_dict(self, state_dict: dict, strict=True):
        """Copy arrays into the parameters, in place -> (missing_keys, unexpected_keys). Strict, as
        torch's default.

        ``foundation.contract.checks.check_state_dict`` checks everything first and casts to the
        model's dtype, so the torch twin takes the same state dicts with the same values: ndarrays
        of any float width, byte order or integer type, and torch tensors (bfloat16 included).
        Missing keys (when ``strict``), unexpected keys (when ``strict``), wrong shapes and values
        that would overflow the dtype raise one ``ValueError`` naming every offending key; a value
        that is not a plain array of real numbers is a ``TypeError``. Nothing is loaded unless
        everything is right.
        """
        params = dict(self.named_parameters())
        arrays = self._checked_state_dict(state_dict, strict)
        for name, array in arrays.items():
            params[name].data[...] = array
            params[name].changed()
        return IncompatibleKeys(
            [name for name in params if name not in state_dict],
            [name for name in state_dict if name not in params],
        )

    def gradient_shape(self, result):
        """The shape of the gradient ``backward`` takes after a forward that returned ``result``:
        the shape of what it returned (its first element for a tuple), or None."""
        if isinstance(result, tuple):
            result = result[0] if result else None
        shape = getattr(result, "shape", None)
        return None if shape is None else tuple(shape)

    # --- the boundary: what @boundary(...) makes of a forward and a backward ---

    def _forward_at_the_boundary(self, body, signature, args, kwargs):
        """A forward: a body's call runs as it is; a user's is checked, copied and guarded.

        The record it leaves in ``self.forward_record`` says whether the forward finished: one
        that raised part-way leaves caches half from this run and half from the one before, so
        ``backward`` refuses rather than compute a wrong gradient.
        """
        user = user_call()
        if user and calls():
            calls()[-1].keep(self)  # run from a hook: the run around it gets its saved values back
        self.forward_record = RUNNING
        try:
            if user:
                arguments = self._checked_arguments(body, signature, args, kwargs)
                arrays = [value for value in arguments.values() if isinstance(value, np.ndarray)]
                result, call, _ = self._user_forward(body, arguments, arrays)
                tainted = call.tainted
            elif guarding():  # a body's call while every hook is guarded: named in messages
                call = Call(self, "forward", [], self._weights)
                result, tainted = self._guarded_forward(body, args, kwargs, call), False
            else:  # a body's call: what it passes was made inside, checked and ours
                result, tainted = body(self, *args, **kwargs), False
        except BaseException:
            self.forward_record = RAISED
            raise
        versions = [(p, p.version) for p in self.parameters()] if user else None
        # a forward that continued a key-value cache leaves nothing a backward could use
        state = "cached" if continues_a_cache(body, signature, args, kwargs) else "done"
        self.forward_record = ForwardRecord(state, self.gradient_shape(result), tainted, versions)
        return result

    def _checked_arguments(self, body, signature, args, kwargs):
        """{name: value} of a user's call, checked, each array a copy of the caller's."""
        arguments = bind(self, signature, args, kwargs)
        # start_at_layer: the input is a residual stream, not ids
        ids = "tokens" in arguments and arguments.get("start_at_layer") is None
        if ids and getattr(self, "takes_any_tokens", False):
            # the model's: nested lists too
            arguments["tokens"] = tokens_as_array(arguments["tokens"])
        check_arguments(self, body, arguments, np.ndarray)
        # the caller keeps its arrays: what the caches hold is ours alone
        return {
            name: np.array(value, copy=True) if isinstance(value, np.ndarray) else value
            for name, value in arguments.items()
        }

    def _guarded_forward(self, body, args, kwargs, call):
        """A forward with every hook point and every output guarded as it is made."""
        with entered(call):
            result = body(self, *args, **kwargs)
            for out in outputs(result):
                guard(out, "its output")
        return result

    def _backward_at_the_boundary(self, body, signature, args, kwargs):
        """A backward: a body's call runs as it is; a user's refuses without a finished forward
        (or after its weights changed), checks its gradient and guards what it returns."""
        user = user_call()
        if not user and not guarding():
            return body(self, *args, **kwargs)
        record = vars(self).get("forward_record")
        if user:
            check_backward_allowed(record, type(self).__name__)
            arguments = bind(self, signature, args, kwargs)
            check_arguments(self, body, arguments, np.ndarray)
            args, kwargs = tuple(arguments.values()), {}
        if guarding():
            return self._guarded_backward(body, args, kwargs, record)
        (gradient,) = args
        call = Call(
            self,
            "backward",
            [gradient] if isinstance(gradient, np.ndarray) else [],
            self._weights,
            record.tainted,
        )
        with entered(call):
            result = body(self, gradient)
        grads = [p.grad for p in self.parameters()]
        if (
            not self._finite(outputs(result) + grads)
            and not call.tainted
            and not nonfinite(np.asarray(gradient))
        ):
            saved = [(p, p.grad) for p in self.parameters()]
            # replayed into zeroed gradients, to name the component and tensor; the sums stay as
            # they are
            try:
                for p, grad in saved:
                    p.grad = np.zeros_like(grad)
                with guard_every_hook():
                    self._guarded_backward(body, (gradient,), {}, record)
            finally:
                for p, grad in saved:
                    p.grad = grad
        return result

    def _guarded_backward(self, body, args, kwargs, record):
        """A backward with every gradient at a hook point, its result and its weights' gradients
        guarded."""
        arrays = [a for a in (*args, *kwargs.values()) if isinstance(a, np.ndarray)]
        call = Call(self, "backward", arrays, self._weights, record is not None and record.tainted)
        with entered(call):
            result = body(self, *args, **kwargs)
            if isinstance(result, np.ndarray):
                guard(result, "the gradient it returns")
            for name, p in self.named_parameters():
                if "." not in name:  # its own weights; each module below guards its own
                    guard(p.grad, f"the gradient of {name}")
        return result

    def _weights(self):
        return [p.data for p in self.parameters()]

    @staticmethod
    def _finite(arrays):
        """Is every entry of these float arrays finite? One sum each, checked entry by entry only
        when a sum is not finite (a sum of large finite entries can overflow)."""
        with np.errstate(over="ignore", invalid="ignore"):
            for array in arrays:
                if (
                    array.dtype.kind == "f"
                    and not np.isfinite(array.sum())
                    and not np.isfinite(array).all()
                ):
                    return False
        return True


class HookPoint(Module, HookLists):
    """An identity placed at a named point of the forward pass, to read or replace it.

    ``forward`` hands each forward hook ``fn(activation, hook)`` a copy of the activation; a
    hook may edit it in place or return a replacement. ``backward`` runs each backward hook
    ``fn(grad, hook)`` on the gradient the hand-written backward computes here (the gradient
    with respect to the activation as the rest of the model used it), then applies the rule
    that both twins follow for edited activations:

        entries a forward hook changed are constants: no gradient flows past them;
        entries it left unchanged pass their gradient through untouched.

    For hooks that overwrite entries with values that do not depend on the activation (zero or mean
    ablation, patching in another run's activation) this is exactly what autograd gives; for any
    other hook it is the documented rule, so the twins agree whatever the hook does. The name is set
    by the model that owns it. With no hook on it, it passes its value on and looks at nothing,
    unless ``always`` (a LayerNorm's scale: see foundation/contract/boundary.py) or inside
    ``guard_every_hook()``.
    """

    def __init__(self, always=False):
        self._init_hooks()
        self.always = always  # looked at by the guard at every call, hooks or not
        self.changed = None  # bool array like the activation: where the forward hooks changed it

    def forward(self, x):
        self.changed = None
        if guarding():
            guard(x, lambda: hook_label(self))
        elif self.always:
            note_always_guarded(x)
        if not self.fwd_hooks:
            return x
        # hooks get a copy, so they may edit it in place; x stays as computed
        hooked = self._run(self.fwd_hooks, np.array(x, copy=True))
        # ours: the hook may keep what it returned
        hooked = np.array(as_numpy(hooked), dtype=x.dtype, copy=True)
        if nonfinite(hooked) and not nonfinite(x):
            # the hook put a NaN or an infinity in: what follows from it is not the formula's doing
            taint()
        changed = hooked != x  # like x: True where a hook changed the value
        if not changed.any():
            return x
        self.changed = changed
        return hooked

    def backward(self, dx):
        if guarding():
            guard(dx, lambda: f"the gradient at {hook_label(self)}")
        if self.bwd_hooks:
            # hooks get a copy: the backward may use this gradient array elsewhere (residual paths);
            # what they return is copied too, for the same reason
            hooked = np.array(
                as_numpy(self._run(self.bwd_hooks, dx.copy())), dtype=dx.dtype, copy=True
            )
            if nonfinite(hooked) and not nonfinite(dx):
                taint()  # the hook's NaN or infinity, as in the forward
            dx = hooked
        if self.changed is not None:
            # forward: hooked = where(changed, hook's value, x); the hook's values are constants
            dx = np.where(self.changed, 0.0, dx)  # like x
        return dx


class Projection(Module):
    """The hook points around one linear map inside a component: TransformerLens 4's ``attn.q``,
    ``attn.k``, ``attn.v``, ``attn.o``, ``mlp.in`` and ``mlp.out``.

    ``hook_in`` holds the map's input, ``hook_out`` its output. The weights stay in the component
    that multiplies by them (``W_Q``, ``W_in``, ...), under TransformerLens's parameter names.
    """

    def __init__(self):
        self.hook_in = HookPoint()
        self.hook_out = HookPoint()
