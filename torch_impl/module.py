"""The small machinery under every torch component: hook points and seeded generators.

``torch.nn`` already gives parameters, modules and state dicts, so the twin of
``numpy_impl/module.py`` holds only ``HookPoint`` (its hook lists are the reference's
``HookLists``, written once) and ``default_rng``.
"""

from __future__ import annotations

import torch
from torch import nn

from numpy_impl.module import HookLists


def default_rng(rng=None):
    """A ``torch.Generator`` from a seed, an existing generator, or None (a random seed)."""
    if isinstance(rng, torch.Generator):
        return rng
    generator = torch.Generator()
    if rng is None:
        generator.seed()
    else:
        generator.manual_seed(int(rng))
    return generator


class HookPoint(nn.Module, HookLists):
    """An identity placed at a named point of the forward pass, to read or replace it.

    ``forward`` hands each forward hook ``fn(activation, hook)`` a detached copy of the
    activation; a hook may edit it in place or return a replacement. Backward hooks
    ``fn(grad, hook)`` are attached to the activation the rest of the model uses, so autograd
    calls them where the NumPy reference calls ``HookPoint.backward``. Edited activations follow
    the reference's rule (see ``numpy_impl/module.py``):

        entries a forward hook changed are constants: no gradient flows past them;
        entries it left unchanged pass their gradient through untouched.

    The name is set by the model that owns it.
    """

    def __init__(self):
        super().__init__()
        self._init_hooks()

    def forward(self, x):
        if self.fwd_hooks:
            # hooks get a detached copy, so they may edit it in place; x keeps its autograd history
            hooked = torch.as_tensor(self._run(self.fwd_hooks, x.detach().clone()), dtype=x.dtype).detach()
            changed = hooked != x.detach()  # like x: True where a hook changed the value
            if changed.any():
                x = torch.where(changed, hooked, x)  # the hook's values are constants: no gradient reaches x there
        if self.bwd_hooks and torch.is_grad_enabled():
            if not x.requires_grad:
                x = x.detach().requires_grad_()  # a constant (the sinusoidal table): a leaf, so it has a gradient
            x.register_hook(self.backward)
        return x

    def backward(self, dx):
        return torch.as_tensor(self._run(self.bwd_hooks, dx), dtype=dx.dtype)
