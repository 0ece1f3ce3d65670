"""The small machinery under every NumPy component: parameters, modules and hook points.

It copies just enough of ``torch.nn`` that the two implementations are used the same way:
``Parameter`` holds ``.data`` and ``.grad``; ``Module`` finds its parameters and children by
walking its attributes in the order they were set, so ``named_parameters()`` and
``state_dict()`` list the same names, in the same order, as the torch twin.
"""

from __future__ import annotations

import numpy as np

from .checks import check_hook_result


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
    """Base class: parameter discovery, state dicts, ``zero_grad`` and ``__call__``."""

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

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

    def load_state_dict(self, state_dict: dict):
        """Copy arrays into the parameters, in place. Strict, as torch's default.

        Missing keys, unexpected keys and wrong shapes raise ``ValueError`` naming every
        offending key; values are cast to each parameter's dtype.
        """
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict of arrays, got {type(state_dict).__name__}")
        params = dict(self.named_parameters())
        missing = sorted(set(params) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(params))
        problems = []
        if missing:
            problems.append(f"missing keys: {', '.join(missing)}")
        if unexpected:
            problems.append(f"unexpected keys: {', '.join(unexpected)}")
        arrays = {}
        for name in sorted(set(params) & set(state_dict)):
            array = _as_array(state_dict[name], name)
            if array.shape != params[name].shape:
                problems.append(
                    f"{name}: shape {tuple(array.shape)} does not match the model's "
                    f"{tuple(params[name].shape)}"
                )
            arrays[name] = array
        if problems:
            raise ValueError("load_state_dict: " + "; ".join(problems))
        for name, array in arrays.items():
            params[name].data[...] = array


def _as_array(value, name):
    if hasattr(value, "detach"):  # a torch tensor: accept it, as a user moving weights would
        value = value.detach().cpu().numpy()
    if not isinstance(value, np.ndarray):
        raise TypeError(f"state_dict[{name!r}] must be an ndarray, got {type(value).__name__}")
    if not (np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)):
        raise TypeError(f"state_dict[{name!r}] must hold numbers, got dtype {value.dtype}")
    return value


class HookLists:
    """Forward and backward hook lists, shared by the NumPy ``HookPoint`` and its torch twin."""

    def _init_hooks(self):
        self.name = None
        self.fwd_hooks = []
        self.bwd_hooks = []

    def add_hook(self, fn, dir: str = "fwd"):
        """Call ``fn(activation, hook)`` in the forward pass ("fwd") or ``fn(grad, hook)`` in the backward ("bwd")."""
        if not callable(fn):
            raise TypeError(f"hook must be callable, got {type(fn).__name__}")
        if dir not in ("fwd", "bwd"):
            raise ValueError(f"dir must be 'fwd' or 'bwd', got {dir!r}")
        (self.fwd_hooks if dir == "fwd" else self.bwd_hooks).append(fn)

    def remove_hooks(self, dir: str = "both"):
        if dir not in ("fwd", "bwd", "both"):
            raise ValueError(f"dir must be 'fwd', 'bwd' or 'both', got {dir!r}")
        if dir in ("fwd", "both"):
            self.fwd_hooks = []
        if dir in ("bwd", "both"):
            self.bwd_hooks = []

    def _run(self, hooks, x):
        """Pass x through each hook in turn; a hook that returns something (of x's shape) replaces x."""
        for fn in hooks:
            result = fn(x, self)
            if result is not None:
                check_hook_result(result, x.shape, self.name)
                x = result
        return x


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

    def __init__(self):
        self._init_hooks()
        self.changed = None  # bool array like the activation: where the forward hooks changed it

    def forward(self, x):
        self.changed = None
        if not self.fwd_hooks:
            return x
        # hooks get a copy, so they may edit it in place; x stays as computed
        hooked = np.asarray(self._run(self.fwd_hooks, np.array(x, copy=True)), dtype=x.dtype)
        changed = hooked != x  # like x: True where a hook changed the value
        if not changed.any():
            return x
        self.changed = changed
        return hooked

    def backward(self, dx):
        dx = np.asarray(self._run(self.bwd_hooks, dx), dtype=dx.dtype)
        if self.changed is not None:
            # forward: hooked = where(changed, hook's value, x); the hook's values are constants
            dx = np.where(self.changed, 0.0, dx)  # like x
        return dx
