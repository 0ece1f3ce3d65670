"""Unembedding: from the final residual stream to one logit per vocabulary entry ("Attention Is All
You Need", §3.4: the learned linear map before the softmax; not tied to W_E here).

Axes: batch, pos (sequence position), d_model (residual width), d_vocab (vocabulary).
Einsum letters: b batch, p pos, m d_model, v d_vocab.

    logits = x W_U + b_U

The products with W_U are einsums that name the weight first: one matrix product over all
batch * pos rows; W_U's gradient names dlogits first, so it comes back in order for ``+=``
(docs/performance.md says why).
"""

import numpy as np

from foundation.contract.checks import check_config

from .module import HookPoint, Module, Parameter, boundary


class Unembed(Module):
    """A linear map d_model -> d_vocab; softmax of its output is the next-token distribution."""

    def __init__(self, cfg, rng=None):
        rng = np.random.default_rng(rng)
        self.cfg = check_config(cfg, np.ndarray)
        W_U = rng.standard_normal((cfg.d_model, cfg.d_vocab))
        self.W_U = Parameter((W_U / np.sqrt(cfg.d_model)).astype(cfg.dtype))
        self.b_U = Parameter(np.zeros(cfg.d_vocab, dtype=cfg.dtype))
        self.hook_in = HookPoint()  # [batch, pos, d_model]
        self.hook_out = HookPoint()  # [batch, pos, d_vocab]
        self.cache = None

    @boundary(x="activation")
    def forward(self, x):
        """x [batch, pos, d_model] -> logits [batch, pos, d_vocab]"""
        x = self.hook_in(x)
        W_U, b_U = self.W_U.data, self.b_U.data
        logits = np.einsum("mv,bpm->bpv", W_U, x, optimize=True) + b_U  # [batch, pos, d_vocab]
        logits = self.hook_out(logits)
        self.cache = x
        return logits

    @boundary(dlogits="gradient")
    def backward(self, dlogits):
        """dlogits [batch, pos, d_vocab] -> dx [batch, pos, d_model]; adds into W_U, b_U grads."""
        x = self.cache
        W_U = self.W_U.data
        # EXERCISE BEGIN
        # forward: logits = hook_out(logits)   (a hook point: the gradient passes through it)
        dlogits = self.hook_out.backward(dlogits)
        # forward: logits = einsum("mv,bpm->bpv", W_U, x) + b_U
        self.W_U.grad += np.einsum("bpv,bpm->mv", dlogits, x, optimize=True)  # [d_model, d_vocab]
        self.b_U.grad += dlogits.sum(axis=(0, 1))  # [d_vocab]
        dx = np.einsum("mv,bpv->bpm", W_U, dlogits, optimize=True)  # [batch, pos, d_model]
        # EXERCISE END
        return self.hook_in.backward(dx)
