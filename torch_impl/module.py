"""The small machinery under every torch component: modules, hook points and seeded generators.

``torch.nn`` already gives parameters, modules and state dicts. ``Module`` adds what the NumPy
reference's ``Module`` also has: ``load_state_dict`` that takes either library's arrays and
names every bad key in one ``ValueError``, and ``from_twin``. ``HookPoint`` is the twin of the
reference's (its hook lists are ``foundation.hooks.HookLists``, written once).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from foundation.checks import check_seed, check_state_dict, check_tokens, tokens_as_array
from foundation.hooks import HookLists


def default_rng(rng=None):
    """A ``torch.Generator`` from a seed, an existing generator, or None (a random seed)."""
    check_seed(rng, torch.Generator)
    if isinstance(rng, torch.Generator):
        return rng
    generator = torch.Generator()
    if rng is None:
        generator.seed()
    else:
        generator.manual_seed(int(rng))
    return generator


class Module(nn.Module):
    """``nn.Module`` with the reference's loading: either library's arrays, one clear error, ``from_twin``."""

    def load_state_dict(self, state_dict, strict=True, assign=False):
        """Copy arrays into the parameters, in place. Strict: missing, unexpected or mis-shaped keys raise ValueError."""
        if isinstance(state_dict, dict):  # ndarrays are welcome: they become tensors
            state_dict = {name: _as_tensor(value) for name, value in state_dict.items()}
        if strict:
            params = dict(self.named_parameters())
            dtype = str(next(iter(params.values())).dtype).replace("torch.", "") if params else None
            check_state_dict(state_dict, {name: tuple(p.shape) for name, p in params.items()}, dtype)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @classmethod
    def from_twin(cls, twin):
        """A module of this class holding ``twin``'s config and weights (``twin``: the same class from numpy_impl)."""
        module = cls(twin.cfg) if hasattr(twin, "cfg") else cls()
        module.load_state_dict(twin.state_dict())
        return module


def token_tensor(tokens, cfg):
    """Token ids as an int64 tensor: lists and ndarrays of any integer dtype are checked, then converted.

    Checking the ndarray first gives the reference's messages; converting to int64 copies it (so
    negative strides and read-only arrays are fine) and reads a uint8 array as ids, never as a mask.
    """
    tokens = tokens_as_array(tokens)
    if isinstance(tokens, np.ndarray):
        check_tokens(tokens, cfg, np.ndarray)
        return torch.from_numpy(tokens.astype(np.int64))
    check_tokens(tokens, cfg, torch.Tensor)
    return tokens.to(torch.int64)


def _as_tensor(value):
    """An ndarray becomes a tensor (as a user moving weights would expect); the rest is checked as it is."""
    return torch.from_numpy(value) if type(value).__module__ == "numpy" and hasattr(value, "shape") else value


class HookPoint(nn.Module, HookLists):
    """An identity placed at a named point of the forward pass, to read or replace it.

    ``forward`` hands each forward hook ``fn(activation, hook)`` a detached copy of the
    activation; a hook may edit it in place or return a replacement. Backward hooks
    ``fn(grad, hook)`` are attached to the activation the rest of the model uses, so autograd
    calls them where the NumPy reference calls ``HookPoint.backward``. Edited activations follow
    one rule in both twins:

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
            hooked = self._run(self.fwd_hooks, x.detach().clone())
            hooked = torch.as_tensor(hooked, dtype=x.dtype, device=x.device).detach()
            changed = hooked != x.detach()  # like x: True where a hook changed the value
            if changed.any():
                x = torch.where(changed, hooked, x)  # the hook's values are constants: no gradient reaches x there
        if self.bwd_hooks and torch.is_grad_enabled():
            if not x.requires_grad:
                x = x.detach().requires_grad_()  # a constant (the sinusoidal table): a leaf, so it has a gradient
            x.register_hook(self.backward)
        return x

    def backward(self, dx):
        # hooks get a copy, as in the reference
        return torch.as_tensor(self._run(self.bwd_hooks, dx.clone()), dtype=dx.dtype, device=dx.device)
