"""The torch twin's own steps of its TransformerLens surface: hooks, caches, the loss, folding.

Written once in ``foundation/lens/hooks.py`` and ``foundation/lens/running.py``:
``ActivationCache``, short names, ``run_with_cache``, ``run_with_hooks``, ``hooks()``, ``add_hook``,
``reset_hooks``, ``fold_layer_norm``, ``return_type`` and ``generate``. Only what the array library
changes lives here: which HookPoint class the model holds, how an activation is copied (detached
from the graph), how a backward pass starts (autograd, from the logits or the loss), the default
gradient (of the mean next-token cross-entropy), the parameter-free LayerNorm that folding
leaves, and the tensors of the key-value cache that generation keeps.
"""

import torch

from foundation.contract.arrays import as_numpy
from foundation.contract.boundary import gradient_target
from foundation.contract.checks import check_plain
from foundation.lens.hooks import HookedMixin as _HookedMixin
from foundation.lens.hooks import check_next_token_loss, split_outputs
from foundation.lens.kv_cache import KeyValueCache, KeyValueCacheEntry

from .layernorm import LayerNormPre
from .loss import CrossEntropyLoss
from .module import HookPoint, token_tensor


class HookedMixin(_HookedMixin):
    """``foundation.lens.hooks.HookedMixin`` with autograd in place of the hand-written backward."""

    hook_point_class = HookPoint

    def _snapshot(self, x, device=None):
        x = x.detach().clone()
        return x if device is None else x.to(device)

    def _check_device(self, device):
        if device is not None:
            torch.device(device)  # a RuntimeError naming it, for a device torch does not know

    def _as_tokens(self, tokens):
        return token_tensor(tokens, self.cfg)

    def _backward_from(self, result, dout):
        logits, loss = split_outputs(result)
        shape = lambda tensor: None if tensor is None else tuple(tensor.shape)  # noqa: E731
        # checked as the NumPy model checks it
        dout = None if dout is None else as_numpy(check_plain(dout, "dout"))
        target, grad = gradient_target(dout, shape(logits), shape(loss), self.cfg.dtype)
        tensor = loss if target == "loss" else logits
        tensor.backward(torch.as_tensor(grad, dtype=tensor.dtype, device=tensor.device))

    def _default_dout(self, out, tokens):
        """Position p predicts ``tokens[:, p + 1]``; the last position predicts nothing (gradient
        0)."""
        check_next_token_loss(self.cfg, tokens)
        logits = out.detach().requires_grad_()  # [batch, pos, d_vocab]
        CrossEntropyLoss()(logits[:, :-1], tokens[:, 1:].to(logits.device)).backward()
        return logits.grad.cpu().numpy()  # [batch, pos, d_vocab]

    def _named_modules_and_aliases(self):
        return self.named_modules(remove_duplicate=False)

    def _layer_norm_pre(self, cfg):
        return LayerNormPre(cfg).to(self.device)

    def _new_kv_cache(self, batch_size):
        return HookedTransformerKeyValueCache.init_cache(self.cfg, self.device, batch_size)


class HookedTransformerKeyValueCacheEntry(KeyValueCacheEntry):
    """One layer's keys and values so far, as tensors (foundation/lens/kv_cache.py)."""

    @staticmethod
    def _empty(shape, dtype, device):
        dtype = getattr(torch, dtype)
        return torch.zeros(shape, dtype=dtype, device=device)  # [batch, 0, kv_head, d_head]

    @staticmethod
    def _concatenate(past, new):
        return torch.cat((past, new), dim=1)  # [batch, pos_so_far + pos, kv_head, d_head]


class HookedTransformerKeyValueCache(KeyValueCache):
    """Every layer's keys and values so far, as tensors (foundation/lens/kv_cache.py)."""

    entry_class = HookedTransformerKeyValueCacheEntry
