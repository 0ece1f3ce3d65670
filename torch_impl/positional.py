"""Positional information added to the token embedding: fixed sinusoids or a learned table.

Axes: batch, pos (sequence position), n_ctx (longest sequence), d_model (residual width).

Sinusoidal ("Attention Is All You Need", §3.5), for i = 0 .. d_model/2 - 1:
    PE[pos, 2i]     = sin(pos / 10000^(2i / d_model))
    PE[pos, 2i + 1] = cos(pos / 10000^(2i / d_model))
Learned (GPT-2): pos_embed[b, p] = W_pos[p].
"""

import torch
from torch import nn

from foundation.contract.checks import check_config

from .module import HookPoint, Module, boundary, default_rng


def sinusoidal_table(n_ctx, d_model):
    """The fixed [n_ctx, d_model] table, computed in float64 (then cast to the model's dtype)."""
    position = torch.arange(n_ctx, dtype=torch.float64)[:, None]  # [n_ctx, 1]
    two_i = torch.arange(0, d_model, 2, dtype=torch.float64)  # [ceil(d_model / 2)]
    angle = position / 10000.0 ** (two_i / d_model)  # [n_ctx, ceil(d_model / 2)]
    table = torch.zeros((n_ctx, d_model), dtype=torch.float64)  # [n_ctx, d_model]
    table[:, 0::2] = torch.sin(angle)
    table[:, 1::2] = torch.cos(angle[:, : d_model // 2])
    return table


class SinusoidalPositionalEncoding(Module):
    """Fixed sinusoids: no parameters, so nothing to learn and no gradient to keep."""

    def __init__(self, cfg, rng=None):
        super().__init__()
        self.cfg = check_config(cfg, torch.Tensor)
        dtype = getattr(torch, cfg.dtype)
        # the table is a buffer, not a parameter, and not in state_dict (persistent=False)
        table = sinusoidal_table(cfg.n_ctx, cfg.d_model).to(dtype)  # [n_ctx, d_model]
        self.register_buffer("table", table, persistent=False)
        self.hook_in = HookPoint()  # [1, pos] position ids
        self.hook_out = HookPoint()  # [batch, pos, d_model]

    @boundary(tokens="tokens", past_kv_pos_offset="position offset")
    def forward(self, tokens, past_kv_pos_offset=0):
        """tokens [batch, pos] -> pos_embed [batch, pos, d_model] (only tokens' shape is used)

        ``past_kv_pos_offset``: the first token's position (what a key-value cache holds before it).
        """
        batch, pos = tokens.shape
        first = past_kv_pos_offset  # the first token's position
        positions = torch.arange(first, first + pos, device=tokens.device)[None, :]  # [1, pos]
        positions = self.hook_in(positions)
        rows = self.table[positions]  # [1, pos, d_model]
        pos_embed = rows.expand(batch, pos, self.cfg.d_model)  # [batch, pos, d_model]
        pos_embed = self.hook_out(pos_embed)
        return pos_embed


class LearnedPositionalEmbedding(Module):
    """A learned row per position (GPT-2's ``wpe``), shared by every sequence in the batch."""

    def __init__(self, cfg, rng=None):
        super().__init__()
        rng = default_rng(rng)
        self.cfg = check_config(cfg, torch.Tensor)
        dtype = getattr(torch, cfg.dtype)
        self.W_pos = nn.Parameter(torch.randn(cfg.n_ctx, cfg.d_model, generator=rng, dtype=dtype))
        self.hook_in = HookPoint()  # [1, pos] position ids
        self.hook_out = HookPoint()  # [batch, pos, d_model]

    @boundary(tokens="tokens", past_kv_pos_offset="position offset")
    def forward(self, tokens, past_kv_pos_offset=0):
        """tokens [batch, pos] -> pos_embed [batch, pos, d_model] (only tokens' shape is used)

        ``past_kv_pos_offset``: the first token's position (what a key-value cache holds before it).
        """
        batch, pos = tokens.shape
        first = past_kv_pos_offset  # the first token's position
        positions = torch.arange(first, first + pos, device=tokens.device)[None, :]  # [1, pos]
        positions = self.hook_in(positions)
        rows = self.W_pos[positions]  # [1, pos, d_model]
        pos_embed = rows.expand(batch, pos, self.cfg.d_model)  # [batch, pos, d_model]
        pos_embed = self.hook_out(pos_embed)
        return pos_embed
