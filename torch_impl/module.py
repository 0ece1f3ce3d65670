"""The small machinery under every torch component: hook points and seeded generators.

``torch.nn`` already gives parameters, modules and state dicts, so the twin of
``numpy_impl/module.py`` holds only ``HookPoint`` and ``default_rng``.
"""

from __future__ import annotations

import torch
from torch import nn


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


class HookPoint(nn.Module):
    """An identity placed at a named point of the forward pass, to read or replace it.

    ``forward`` passes the activation through each forward hook ``fn(activation, hook)``;
    a hook that returns a tensor replaces the activation. Backward hooks ``fn(grad, hook)``
    are attached to the activation's gradient, so autograd calls them where the NumPy
    reference calls ``HookPoint.backward``. The name is set by the model that owns it.
    """

    def __init__(self):
        super().__init__()
        self.name = None
        self.fwd_hooks = []
        self.bwd_hooks = []

    def add_hook(self, fn, dir: str = "fwd"):
        if not callable(fn):
            raise TypeError(f"hook must be callable, got {type(fn).__name__}")
        if dir not in ("fwd", "bwd"):
            raise ValueError(f"dir must be 'fwd' or 'bwd', got {dir!r}")
        (self.fwd_hooks if dir == "fwd" else self.bwd_hooks).append(fn)

    def remove_hooks(self, dir: str = "both"):
        if dir in ("fwd", "both"):
            self.fwd_hooks = []
        if dir in ("bwd", "both"):
            self.bwd_hooks = []

    def forward(self, x):
        for fn in self.fwd_hooks:
            result = fn(x, self)
            if result is not None:
                x = result
        if self.bwd_hooks and x.requires_grad:
            x.register_hook(self._backward)
        return x

    def _backward(self, dx):
        for fn in self.bwd_hooks:
            result = fn(dx, self)
            if result is not None:
                dx = result
        return dx
