"""Positional information added to the token embedding: fixed sinusoids or a learned table.

Axes: batch, pos (sequence position), n_ctx (longest sequence), d_model (residual width).

Sinusoidal ("Attention Is All You Need", §3.5), for i = 0 .. d_model/2 - 1:
    PE[pos, 2i]     = sin(pos / 10000^(2i / d_model))
    PE[pos, 2i + 1] = cos(pos / 10000^(2i / d_model))
Learned (GPT-2): pos_embed[b, p] = W_pos[p].
"""

import torch
from torch import nn

from numpy_impl.checks import check_config, check_tokens
from numpy_impl.positional import sinusoidal_table

from .module import default_rng


class SinusoidalPositionalEncoding(nn.Module):
    """Fixed sinusoids: no parameters, so nothing to learn and no gradient to keep."""

    def __init__(self, cfg, rng=None):
        super().__init__()
        self.cfg = check_config(cfg)
        dtype = getattr(torch, cfg.dtype)
        # the table is a buffer, not a parameter, and not in state_dict (persistent=False)
        table = torch.from_numpy(sinusoidal_table(cfg.n_ctx, cfg.d_model)).to(dtype)  # [n_ctx, d_model]
        self.register_buffer("table", table, persistent=False)

    def forward(self, tokens):
        """tokens [batch, pos] -> pos_embed [batch, pos, d_model] (only the shape of tokens is used)"""
        check_tokens(tokens, self.cfg, torch.Tensor)
        batch, pos = tokens.shape
        pos_embed = self.table[:pos].expand(batch, pos, self.cfg.d_model)  # [batch, pos, d_model]
        return pos_embed


class LearnedPositionalEmbedding(nn.Module):
    """A learned row per position (GPT-2's ``wpe``), shared by every sequence in the batch."""

    def __init__(self, cfg, rng=None):
        super().__init__()
        rng = default_rng(rng)
        self.cfg = check_config(cfg)
        dtype = getattr(torch, cfg.dtype)
        self.W_pos = nn.Parameter(torch.randn(cfg.n_ctx, cfg.d_model, generator=rng, dtype=dtype))

    def forward(self, tokens):
        """tokens [batch, pos] -> pos_embed [batch, pos, d_model] (only the shape of tokens is used)"""
        check_tokens(tokens, self.cfg, torch.Tensor)
        batch, pos = tokens.shape
        pos_embed = self.W_pos[:pos].expand(batch, pos, self.cfg.d_model)  # [batch, pos, d_model]
        return pos_embed
