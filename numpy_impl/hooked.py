"""The NumPy model's own steps of ``run_with_cache`` and ``run_with_hooks``.

Written once in ``foundation/hooks.py``: ``ActivationCache``, short names, ``run_with_cache``,
``run_with_hooks`` and ``hooks()``. Only what the array library changes lives here: which
HookPoint class the model holds, how an activation is copied, how the backward pass is
started, and the default gradient (of the mean next-token cross-entropy).
"""

import numpy as np

from foundation.checks import tokens_as_array
from foundation.hooks import HookedMixin as _HookedMixin
from foundation.hooks import check_next_token_loss

from .loss import CrossEntropyLoss
from .module import HookPoint


class HookedMixin(_HookedMixin):
    """``foundation.hooks.HookedMixin`` with the hand-written backward."""

    hook_point_class = HookPoint

    def _snapshot(self, x):
        return np.array(x, copy=True)

    def _as_tokens(self, tokens):
        return tokens_as_array(tokens)

    def _run_backward(self, out, dout):
        self.backward(np.asarray(dout, dtype=out.dtype))

    def _default_dout(self, out, tokens):
        """Position p predicts ``tokens[:, p + 1]``; the last position predicts nothing (gradient 0)."""
        check_next_token_loss(self.cfg, tokens)
        loss = CrossEntropyLoss()
        loss.forward(out[:, :-1], tokens[:, 1:])
        dout = np.zeros_like(out)  # [batch, pos, d_vocab]
        dout[:, :-1] = loss.backward()
        return dout
