"""The NumPy model's own steps of its TransformerLens surface: hooks, caches, the loss, folding.

Written once in ``foundation/lens/hooks.py`` and ``foundation/lens/running.py``:
``ActivationCache``, short names, ``run_with_cache``, ``run_with_hooks``, ``hooks()``, ``add_hook``,
``reset_hooks``, ``fold_layer_norm``, ``return_type`` and ``generate``. Only what the array library
changes lives here: which HookPoint class the model holds, how an activation is copied, how a
backward pass starts (``model.backward``, which also starts from the loss the last forward
returned), the default gradient (of the mean next-token cross-entropy), the parameter-free
LayerNorm that folding leaves, and the arrays of the key-value cache that generation keeps.
"""

import numpy as np

from foundation.contract.checks import tokens_as_array
from foundation.lens.hooks import HookedMixin as _HookedMixin
from foundation.lens.hooks import check_next_token_loss
from foundation.lens.kv_cache import KeyValueCache, KeyValueCacheEntry

from .layernorm import LayerNormPre
from .loss import CrossEntropyLoss
from .module import HookPoint


class HookedMixin(_HookedMixin):
    """``foundation.lens.hooks.HookedMixin`` with the hand-written backward."""

    hook_point_class = HookPoint

    def _snapshot(self, x, device=None):
        return np.array(x, copy=True)

    def _check_device(self, device):
        if device is not None and str(device) != "cpu":
            raise ValueError(
                f"device={device!r}: the NumPy model's activations live on the CPU ('cpu' or None)"
            )

    def _as_tokens(self, tokens):
        return tokens_as_array(tokens)

    def _backward_from(self, result, dout):
        self.backward(dout)

    def _default_dout(self, out, tokens):
        """Position p predicts ``tokens[:, p + 1]``; the last position predicts nothing (gradient
        0)."""
        check_next_token_loss(self.cfg, tokens)
        loss = CrossEntropyLoss()
        loss.forward(out[:, :-1], tokens[:, 1:])
        dout = np.zeros_like(out)  # [batch, pos, d_vocab]
        dout[:, :-1] = loss.backward()
        return dout

    def _named_modules_and_aliases(self):
        return self.named_modules()  # the NumPy Module lists a module under every name it has

    def _layer_norm_pre(self, cfg):
        return LayerNormPre(cfg)

    def _new_kv_cache(self, batch_size):
        return HookedTransformerKeyValueCache.init_cache(self.cfg, batch_size=batch_size)


class HookedTransformerKeyValueCacheEntry(KeyValueCacheEntry):
    """One layer's keys and values so far, as ndarrays (foundation/lens/kv_cache.py)."""

    @staticmethod
    def _empty(shape, dtype, device):
        if device is not None and str(device) != "cpu":
            raise ValueError(f"device={device!r}: the NumPy model's arrays live on the CPU")
        return np.zeros(shape, dtype=dtype)  # [batch, 0, kv_head, d_head]

    @staticmethod
    def _concatenate(past, new):
        return np.concatenate((past, new), axis=1)  # [batch, pos_so_far + pos, kv_head, d_head]


class HookedTransformerKeyValueCache(KeyValueCache):
    """Every layer's keys and values so far, as ndarrays (foundation/lens/kv_cache.py)."""

    entry_class = HookedTransformerKeyValueCacheEntry
