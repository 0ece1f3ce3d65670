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

    ``forward`` passes the activation through each forward hook ``fn(activation, hook)``;
    a hook that returns a tensor replaces the activation. Backward hooks ``fn(grad, hook)``
    are attached to the activation's gradient, so autograd calls them where the NumPy
    reference calls ``HookPoint.backward``. The name is set by the model that owns it.
    """

    def __init__(self):
        super().__init__()
        self._init_hooks()

    def forward(self, x):
        x = self._run(self.fwd_hooks, x)
        if self.bwd_hooks and x.requires_grad:
            x.register_hook(self.backward)
        return x

    def backward(self, dx):
        return self._run(self.bwd_hooks, dx)
