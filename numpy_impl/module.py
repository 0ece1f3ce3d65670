"""The small machinery under every NumPy component: parameters, modules and hook points.

It copies just enough of ``torch.nn`` that the two implementations are used the same way:
``Parameter`` holds ``.data`` and ``.grad``; ``Module`` finds its parameters and children by
walking its attributes in the order they were set, so ``named_parameters()`` and
``state_dict()`` list the same names, in the same order, as the torch twin.
"""

from __future__ import annotations

import numpy as np

from foundation.checks import check_state_dict
from foundation.hooks import HookLists


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
    """Base class: parameter discovery, state dicts, ``from_twin``, ``zero_grad`` and ``__call__``."""

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
        params = dict(self.named_parameters())
        if isinstance(state_dict, dict):  # torch tensors are welcome: they become ndarrays
            state_dict = {name: _as_array(value) for name, value in state_dict.items()}
        check_state_dict(state_dict, {name: p.shape for name, p in params.items()})
        for name, array in state_dict.items():
            params[name].data[...] = array

    @classmethod
    def from_twin(cls, twin):
        """A module of this class holding ``twin``'s config and weights (``twin``: the same class from torch_impl)."""
        module = cls(twin.cfg) if hasattr(twin, "cfg") else cls()
        module.load_state_dict(twin.state_dict())
        return module


def _as_array(value):
    """A torch tensor becomes an ndarray (as a user moving weights would expect); the rest is checked as it is."""
    return value.detach().cpu().numpy() if hasattr(value, "detach") else value


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
        if self.bwd_hooks:
            # hooks get a copy: the backward may use this gradient array elsewhere (residual paths)
            dx = np.asarray(self._run(self.bwd_hooks, dx.copy()), dtype=dx.dtype)
        if self.changed is not None:
            # forward: hooked = where(changed, hook's value, x); the hook's values are constants
            dx = np.where(self.changed, 0.0, dx)  # like x
        return dx
