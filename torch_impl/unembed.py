"""Unembedding: from the final residual stream to one logit per vocabulary entry ("Attention Is All
You Need", §3.4: the learned linear map before the softmax; not tied to W_E here).

Axes: batch, pos (sequence position), d_model (residual width), d_vocab (vocabulary).
Einsum letters: b batch, p pos, m d_model, v d_vocab.

    logits = x W_U + b_U

The product with W_U is an einsum that names the weight first, as the NumPy twin's
(docs/performance.md says why it matters there).
"""

import math

import torch
from torch import nn

from foundation.contract.checks import check_config

from .module import HookPoint, Module, boundary, default_rng


class Unembed(Module):
    """A linear map d_model -> d_vocab; softmax of its output is the next-token distribution."""

    def __init__(self, cfg, rng=None):
        super().__init__()
        rng = default_rng(rng)
        self.cfg = check_config(cfg, torch.Tensor)
        dtype = getattr(torch, cfg.dtype)
        W_U = torch.randn(cfg.d_model, cfg.d_vocab, generator=rng, dtype=dtype)
        self.W_U = nn.Parameter(W_U / math.sqrt(cfg.d_model))
        self.b_U = nn.Parameter(torch.zeros(cfg.d_vocab, dtype=dtype))
        self.hook_in = HookPoint()  # [batch, pos, d_model]
        self.hook_out = HookPoint()  # [batch, pos, d_vocab]

    @boundary(x="activation")
    def forward(self, x):
        """x [batch, pos, d_model] -> logits [batch, pos, d_vocab]"""
        x = self.hook_in(x)
        W_U, b_U = self.W_U, self.b_U
        logits = torch.einsum("mv,bpm->bpv", W_U, x) + b_U  # [batch, pos, d_vocab]
        logits = self.hook_out(logits)
        return logits
