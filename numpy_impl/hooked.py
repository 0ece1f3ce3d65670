"""The NumPy model's own steps of its TransformerLens surface: hooks, caches, the loss, folding.

Written once in ``foundation/lens/hooks.py`` and ``foundation/lens/running.py``: ``ActivationCache``, short
names, ``run_with_cache``, ``run_with_hooks``, ``hooks()``, ``add_hook``, ``reset_hooks``,
``fold_layer_norm``, ``return_type`` and ``generate``. Only what the array library changes lives
here: which HookPoint class the model holds, how an activation is copied, the next-token loss
and how a backward pass starts from it, the default gradient (of the mean next-token
cross-entropy), and the parameter-free LayerNorm that folding leaves.

``model.backward()`` with no argument backpropagates the loss the last forward returned
(``return_type="loss"`` or "both"), as ``loss.backward()`` does in torch, through the
hand-written backward, so backward hooks fire inside it; after ``loss_per_token=True`` it takes
that loss's gradient, ``model.backward(dloss)`` with dloss [batch, pos - 1], as
``loss.backward(dloss)`` does.
"""

import numpy as np

from foundation.contract.checks import tokens_as_array
from foundation.lens.hooks import HookedMixin as _HookedMixin
from foundation.lens.hooks import check_next_token_loss, gradient_target

from .layernorm import LayerNormPre
from .loss import CrossEntropyLoss, log_softmax
from .module import HookPoint


class HookedMixin(_HookedMixin):
    """``foundation.lens.hooks.HookedMixin`` with the hand-written backward."""

    hook_point_class = HookPoint

    def _snapshot(self, x, device=None):
        return np.array(x, copy=True)

    def _check_device(self, device):
        if device is not None and str(device) != "cpu":
            raise ValueError(f"device={device!r}: the NumPy model's activations live on the CPU ('cpu' or None)")

    def _as_tokens(self, tokens):
        return tokens_as_array(tokens)

    def _backward_from(self, result, dout):
        self.backward(dout)

    def _default_dout(self, out, tokens):
        """Position p predicts ``tokens[:, p + 1]``; the last position predicts nothing (gradient 0)."""
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

    # --- the next-token loss, and the backward that starts from it ---

    def _with_return_type(self, out, tokens, return_type, loss_per_token=False):
        self.last_loss = None  # only the loss this very forward returns can start backward()
        return super()._with_return_type(out, tokens, return_type, loss_per_token)

    def _stopped(self, resid):
        self.last_loss = None
        return super()._stopped(resid)

    def _next_token_loss(self, out, tokens, per_token):
        loss_module = self.loss_class()
        mean = loss_module.forward(out[:, :-1], tokens[:, 1:])  # []
        if per_token:
            log_probs = log_softmax(out[:, :-1])  # [batch, pos - 1, d_vocab]
            loss = -np.take_along_axis(log_probs, tokens[:, 1:, None], axis=-1)[..., 0]  # [batch, pos - 1]
        else:
            loss = mean  # []
        self.last_loss = (loss_module, np.shape(loss))
        return loss

    def gradient_of_output(self, dout):
        """What ``backward`` was given -> the gradient of the logits, the model's output (the boundary asks).

        None: the gradient of the scalar loss the last forward returned; shaped like that
        forward's per-token loss: the gradient of sum(dout * loss); shaped like the logits: dout.
        """
        if self._output_shape is None:
            raise ValueError("backward after forward(..., stop_at_layer=k): the run returned an intermediate "
                             "residual stream, not the output; run the whole model to backpropagate")
        loss_module, loss_shape = self.last_loss or (None, None)
        target, grad = gradient_target(dout, self._output_shape, loss_shape, self.cfg.dtype)
        if target == "logits":
            return grad
        dlogits = np.zeros(self._output_shape, dtype=self.cfg.dtype)  # [batch, pos, d_vocab]; the last predicts nothing
        if loss_shape == ():
            # forward: loss = mean over the tokens of their cross-entropy
            dlogits[:, :-1] = loss_module.backward(grad)  # [batch, pos - 1, d_vocab]
        else:
            # forward: loss[b, p] = the cross-entropy of token p + 1 alone; each row of the mean's
            # gradient, times the number of tokens, is that row's own
            dlogits[:, :-1] = loss_module.backward(float(grad.size)) * grad[..., None]  # [batch, pos - 1, d_vocab]
        return dlogits
