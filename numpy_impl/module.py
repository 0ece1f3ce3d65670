"""The small machinery under every NumPy component: parameters, modules and hook points.

It copies just enough of ``torch.nn`` that the two implementations are used the same way:
``Parameter`` holds ``.data`` and ``.grad``; ``Module`` finds its parameters and children by
walking its attributes in the order they were set, so ``named_parameters()`` and
``state_dict()`` list the same names, in the same order, as the torch twin.

``Module`` is also the boundary: every subclass's ``forward`` and ``backward`` is wrapped (see
``_forward_at_the_boundary`` and ``_backward_at_the_boundary`` below, and ``foundation/contract/boundary.py``
for what they guarantee), so the bodies in the component files hold only the formulas.
"""

from __future__ import annotations

import functools
import inspect

import numpy as np

from foundation.contract.boundary import (
    Call,
    ForwardRecord,
    calls,
    check_arguments,
    check_backward_allowed,
    check_gradient_argument,
    entered,
    guard,
    hook_label,
    nonfinite,
    output_shape,
    taint,
)
from foundation.contract.checks import IncompatibleKeys, check_state_dict, tokens_as_array
from foundation.lens.hooks import HookLists, as_numpy


class Parameter:
    """A trainable array and its gradient (same shape, accumulated by ``backward``)."""

    def __init__(self, data: np.ndarray):
        self.data = data
        self.grad = np.zeros_like(data)

    @property
    def shape(self):
        return self.data.shape

    def __repr__(self):
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


class Module:
    """Base class: parameter discovery, state dicts, ``from_twin``, ``zero_grad`` and ``__call__``.

    Every subclass's ``forward`` and ``backward`` pass the boundary (below): arguments checked,
    the caller's arrays copied, the non-finite guard, and ``backward`` only ever sees what one
    finished forward saved in ``self.cache``.
    """

    at_the_boundary = True  # HookPoint says False: it is part of the boundary itself

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not cls.at_the_boundary:
            return
        if "forward" in vars(cls):
            cls.forward = _forward_at_the_boundary(vars(cls)["forward"])
        if "backward" in vars(cls):
            cls.backward = _backward_at_the_boundary(vars(cls)["backward"])

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def saved_state(self):
        """What the last forward left for backward, in this module and every one below it (references)."""
        return [(module, {name: vars(module)[name] for name in ("cache", "changed", "forward_record")
                          if name in vars(module)})
                for _, module in self.named_modules()]

    @staticmethod
    def restore_state(saved):
        """Put back what ``saved_state`` recorded."""
        for module, attributes in saved:
            for name, value in attributes.items():
                setattr(module, name, value)

    def named_children(self):
        """Direct sub-modules, in the order they were set; a list ``blocks`` gives ``blocks.0`` ..."""
        for name, value in vars(self).items():
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
        """Copy arrays into the parameters, in place -> (missing_keys, unexpected_keys). Strict, as torch's default.

        ``foundation.contract.checks.check_state_dict`` checks everything first and casts to the model's
        dtype, so the torch twin takes the same state dicts with the same values: ndarrays of
        any float width, byte order or integer type, and torch tensors (bfloat16 included).
        Missing keys (when ``strict``), unexpected keys (when ``strict``), wrong shapes and
        values that would overflow the dtype raise one ``ValueError`` naming every offending
        key; a value that is not a plain array of real numbers is a ``TypeError``. Nothing is
        loaded unless everything is right.
        """
        params = dict(self.named_parameters())
        dtype = next(iter(params.values())).data.dtype.name if params else None
        arrays = check_state_dict(state_dict, {name: p.shape for name, p in params.items()}, dtype, strict)
        for name, array in arrays.items():
            params[name].data[...] = array
        return IncompatibleKeys([name for name in params if name not in state_dict],
                                [name for name in state_dict if name not in params])

    @classmethod
    def from_twin(cls, twin):
        """A module of this class holding ``twin``'s config and weights (``twin``: the same class from torch_impl)."""
        module = cls(twin.cfg) if hasattr(twin, "cfg") else cls()
        module.load_state_dict(twin.state_dict())
        return module

    def gradient_shape(self, result):
        """The shape of the gradient ``backward`` takes after a forward that returned ``result``."""
        return output_shape(result)

    def gradient_of_output(self, gradient):
        """What ``backward`` was given, as the gradient of the forward's output: itself, for a component."""
        return gradient


def _forward_at_the_boundary(forward):
    """``forward`` with its arguments checked (and copied, in a user's call) and its results guarded.

    The record it leaves in ``self.forward_record`` says whether the forward finished: one that
    raised part-way leaves caches half from this run and half from the one before, so ``backward``
    refuses rather than compute a wrong gradient. A forward called again while it is still running
    (a hook that runs the same model) keeps the outer run's saved values: every cache below this
    module is put back when the inner run returns, so the outer backward stays right.
    """
    signature = inspect.signature(forward)

    @functools.wraps(forward)
    def forward_at_the_boundary(self, *args, **kwargs):
        record = vars(self).get("forward_record")
        outer = self.saved_state() if record is not None and record.state == "running" else None
        self.forward_record = ForwardRecord("running")
        call = Call(self, "forward", [], lambda: [p.data for p in self.parameters()])
        try:
            arguments = _checked_arguments(self, signature, args, kwargs, outermost=not calls())
            call.arrays = [value for value in arguments.values() if isinstance(value, np.ndarray)]
            with entered(call):
                result = forward(self, **arguments)
                for out in result if isinstance(result, tuple) else (result,):
                    if isinstance(out, (np.ndarray, np.generic)):  # the loss is a NumPy scalar
                        guard(out, "its output")
        except BaseException:
            if outer is None:
                self.forward_record = ForwardRecord("raised")
            raise
        finally:
            if outer is not None:
                self.restore_state(outer)
        if outer is None:
            self.forward_record = ForwardRecord("done", self.gradient_shape(result), call.tainted)
        return result

    return forward_at_the_boundary


def _checked_arguments(module, signature, args, kwargs, outermost):
    """{name: value} of a forward call, checked; in a user's (outermost) call, every array copied."""
    bound = signature.bind(module, *args, **kwargs)
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    del arguments[next(iter(signature.parameters))]  # self
    if "tokens" in arguments and getattr(module, "takes_any_tokens", False):
        arguments["tokens"] = tokens_as_array(arguments["tokens"])  # the model's: nested lists become an ndarray
    check_arguments(module, arguments, np.ndarray)
    if outermost:  # the caller keeps its arrays: what the caches hold is ours alone
        arguments = {name: np.array(value, copy=True) if isinstance(value, np.ndarray) else value
                     for name, value in arguments.items()}
    return arguments


def _backward_at_the_boundary(backward):
    """``backward`` that refuses without a finished forward, checks its gradient and guards what it returns."""
    gradient_name = list(inspect.signature(backward).parameters)[1]  # dout, dlogits, dresid_post, ...

    @functools.wraps(backward)
    def backward_at_the_boundary(self, *args, **kwargs):
        bound = inspect.signature(backward).bind(self, *args, **kwargs)
        bound.apply_defaults()
        gradient = bound.arguments[gradient_name]
        record = vars(self).get("forward_record")
        check_backward_allowed(record, type(self).__name__)
        gradient = self.gradient_of_output(gradient)  # the model's backward may start from its loss (hooked.py)
        check_gradient_argument(record, gradient_name, gradient, getattr(getattr(self, "cfg", None), "dtype", None))
        arrays = [gradient] if isinstance(gradient, np.ndarray) else []
        call = Call(self, "backward", arrays, lambda: [p.data for p in self.parameters()], record.tainted)
        with entered(call):
            result = backward(self, gradient)
            if isinstance(result, np.ndarray):
                guard(result, "the gradient it returns")
        return result

    return backward_at_the_boundary


class HookPoint(Module, HookLists):
    """An identity placed at a named point of the forward pass, to read or replace it.

    ``forward`` hands each forward hook ``fn(activation, hook)`` a copy of the activation; a
    hook may edit it in place or return a replacement. ``backward`` runs each backward hook
    ``fn(grad, hook)`` on the gradient the hand-written backward computes here (the gradient
    with respect to the activation as the rest of the model used it), then applies the rule
    that both twins follow for edited activations:

        entries a forward hook changed are constants: no gradient flows past them;
        entries it left unchanged pass their gradient through untouched.

    For hooks that overwrite entries with values that do not depend on the activation (zero
    or mean ablation, patching in another run's activation) this is exactly what autograd
    gives; for any other hook it is the documented rule, so the twins agree whatever the hook
    does. The name is set by the model that owns it.
    """

    at_the_boundary = False  # it is part of the boundary: it guards and copies what passes it

    def __init__(self):
        self._init_hooks()
        self.changed = None  # bool array like the activation: where the forward hooks changed it

    def forward(self, x):
        self.changed = None
        guard(x, lambda: hook_label(self))
        if not self.fwd_hooks:
            return x
        # hooks get a copy, so they may edit it in place; x stays as computed
        hooked = self._run(self.fwd_hooks, np.array(x, copy=True))
        hooked = np.array(as_numpy(hooked), dtype=x.dtype, copy=True)  # ours: the hook may keep what it returned and reuse it
        if nonfinite(hooked):
            taint()  # the hook put a NaN or an infinity in: what follows from it is not the formula's doing
        changed = hooked != x  # like x: True where a hook changed the value
        if not changed.any():
            return x
        self.changed = changed
        return hooked

    def backward(self, dx):
        guard(dx, lambda: f"the gradient at {hook_label(self)}")
        if self.bwd_hooks:
            # hooks get a copy: the backward may use this gradient array elsewhere (residual paths);
            # what they return is copied too, for the same reason
            dx = np.array(as_numpy(self._run(self.bwd_hooks, dx.copy())), dtype=dx.dtype, copy=True)
            if nonfinite(dx):
                taint()
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
