"""Token embedding: a lookup table from token id to a d_model vector.

Axes: batch, pos (sequence position), d_vocab (token ids), d_model (residual stream width).

    embed[b, p] = W_E[tokens[b, p]]
"""

import torch
from torch import nn

from foundation.contract.checks import check_config

from .module import HookPoint, Module, boundary, default_rng


class TokenEmbedding(Module):
    """Row lookup in ``W_E`` ("Attention Is All You Need", §3.4; not scaled by sqrt(d_model))."""

    def __init__(self, cfg, rng=None):
        super().__init__()
        rng = default_rng(rng)
        self.cfg = check_config(cfg, torch.Tensor)
        dtype = getattr(torch, cfg.dtype)
        self.W_E = nn.Parameter(torch.randn(cfg.d_vocab, cfg.d_model, generator=rng, dtype=dtype))
        self.hook_in = HookPoint()  # [batch, pos] token ids
        self.hook_out = HookPoint()  # [batch, pos, d_model]

    @boundary(tokens="tokens")
    def forward(self, tokens):
        """tokens [batch, pos] int -> embed [batch, pos, d_model]"""
        tokens = self.hook_in(tokens)
        embed = self.W_E[tokens]  # [batch, pos, d_model]
        embed = self.hook_out(embed)
        return embed
