"""The torch twin's three hook-and-cache steps; everything else is ``numpy_impl/hooked.py``.

Written once there: ``ActivationCache``, short names, ``run_with_cache``, ``run_with_hooks``
and ``hooks()``. Only what autograd changes lives here: which HookPoint class the model holds,
how an activation is copied (detached from the graph) and how the backward pass is started.
"""

import torch

from numpy_impl.hooked import HookedMixin as _HookedMixin

from .module import HookPoint


class HookedMixin(_HookedMixin):
    """``numpy_impl.hooked.HookedMixin`` with autograd in place of the hand-written backward."""

    hook_point_class = HookPoint

    def _snapshot(self, x):
        return x.detach().clone()

    def _as_tokens(self, tokens):
        return torch.as_tensor(tokens) if not isinstance(tokens, torch.Tensor) else tokens

    def _run_backward(self, out, dout):
        out.backward(torch.as_tensor(dout, dtype=out.dtype))
