"""The torch twin's own steps of ``run_with_cache`` and ``run_with_hooks``.

Written once in ``foundation/hooks.py``: ``ActivationCache``, short names, ``run_with_cache``,
``run_with_hooks`` and ``hooks()``. Only what the array library changes lives here: which
HookPoint class the model holds, how an activation is copied (detached from the graph), how
the backward pass is started (autograd), and the default gradient (of the mean next-token
cross-entropy).
"""

import torch

from foundation.hooks import HookedMixin as _HookedMixin
from foundation.hooks import check_next_token_loss

from .loss import CrossEntropyLoss
from .module import HookPoint, token_tensor


class HookedMixin(_HookedMixin):
    """``foundation.hooks.HookedMixin`` with autograd in place of the hand-written backward."""

    hook_point_class = HookPoint

    def _snapshot(self, x):
        return x.detach().clone()

    def _as_tokens(self, tokens):
        return token_tensor(tokens, self.cfg)

    def _run_backward(self, out, dout):
        out.backward(torch.as_tensor(dout, dtype=out.dtype, device=out.device))

    def _default_dout(self, out, tokens):
        """Position p predicts ``tokens[:, p + 1]``; the last position predicts nothing (gradient 0)."""
        check_next_token_loss(self.cfg, tokens)
        logits = out.detach().requires_grad_()  # [batch, pos, d_vocab]
        CrossEntropyLoss()(logits[:, :-1], tokens[:, 1:].to(logits.device)).backward()
        return logits.grad.cpu().numpy()  # [batch, pos, d_vocab]
