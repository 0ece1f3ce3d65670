"""Positional information added to the token embedding: fixed sinusoids or a learned table.

Axes: batch, pos (sequence position), n_ctx (longest sequence), d_model (residual width).

Sinusoidal ("Attention Is All You Need", §3.5), for i = 0 .. d_model/2 - 1:
    PE[pos, 2i]     = sin(pos / 10000^(2i / d_model))
    PE[pos, 2i + 1] = cos(pos / 10000^(2i / d_model))
Learned (GPT-2): pos_embed[b, p] = W_pos[p].

Hook points, as TransformerLens 4 names them: ``hook_in`` holds the position ids [1, pos]
(0, 1, ..., pos - 1; a hook may change which rows are read) and ``hook_out`` the result.
"""

import numpy as np

from foundation.contract.checks import check_config

from .module import HookPoint, Module, Parameter, boundary


def sinusoidal_table(n_ctx, d_model):
    """The fixed [n_ctx, d_model] table, computed in float64 (then cast to the model's dtype)."""
    position = np.arange(n_ctx, dtype=np.float64)[:, None]  # [n_ctx, 1]
    two_i = np.arange(0, d_model, 2, dtype=np.float64)  # [ceil(d_model / 2)]
    angle = position / 10000.0 ** (two_i / d_model)  # [n_ctx, ceil(d_model / 2)]
    table = np.zeros((n_ctx, d_model))  # [n_ctx, d_model]
    table[:, 0::2] = np.sin(angle)
    table[:, 1::2] = np.cos(angle[:, : d_model // 2])
    return table


class SinusoidalPositionalEncoding(Module):
    """Fixed sinusoids: no parameters, so nothing to learn and no gradient to keep."""

    def __init__(self, cfg, rng=None):
        self.cfg = check_config(cfg, np.ndarray)
        self.table = sinusoidal_table(cfg.n_ctx, cfg.d_model).astype(cfg.dtype)  # [n_ctx, d_model]
        self.hook_in = HookPoint()  # [1, pos] position ids
        self.hook_out = HookPoint()  # [batch, pos, d_model]

    @boundary(tokens="tokens", past_kv_pos_offset="position offset")
    def forward(self, tokens, past_kv_pos_offset=0):
        """tokens [batch, pos] -> pos_embed [batch, pos, d_model] (only tokens' shape is used)

        ``past_kv_pos_offset``: the first token's position (what a key-value cache holds before it).
        """
        batch, pos = tokens.shape
        first = past_kv_pos_offset  # the first token's position
        positions = np.arange(first, first + pos)[None, :]  # [1, pos]
        positions = self.hook_in(positions)
        rows = self.table[positions]  # [1, pos, d_model]
        pos_embed = np.broadcast_to(rows, (batch, pos, self.cfg.d_model))  # [batch, pos, d_model]
        pos_embed = self.hook_out(pos_embed)
        return pos_embed

    @boundary(dpos_embed="gradient")
    def backward(self, dpos_embed):
        """dpos_embed [batch, pos, d_model] -> None (the table is fixed; tokens are discrete)."""
        self.hook_out.backward(dpos_embed)  # its hooks see the gradient; nothing below needs it
        return None


class LearnedPositionalEmbedding(Module):
    """A learned row per position (GPT-2's ``wpe``), shared by every sequence in the batch."""

    def __init__(self, cfg, rng=None):
        rng = np.random.default_rng(rng)
        self.cfg = check_config(cfg, np.ndarray)
        self.W_pos = Parameter(rng.standard_normal((cfg.n_ctx, cfg.d_model)).astype(cfg.dtype))
        self.hook_in = HookPoint()  # [1, pos] position ids
        self.hook_out = HookPoint()  # [batch, pos, d_model]
        self.cache = None

    @boundary(tokens="tokens", past_kv_pos_offset="position offset")
    def forward(self, tokens, past_kv_pos_offset=0):
        """tokens [batch, pos] -> pos_embed [batch, pos, d_model] (only tokens' shape is used)

        ``past_kv_pos_offset``: the first token's position (what a key-value cache holds before it).
        """
        batch, pos = tokens.shape
        first = past_kv_pos_offset  # the first token's position
        positions = np.arange(first, first + pos)[None, :]  # [1, pos]
        positions = self.hook_in(positions)
        rows = self.W_pos.data[positions]  # [1, pos, d_model]
        pos_embed = np.broadcast_to(rows, (batch, pos, self.cfg.d_model))  # [batch, pos, d_model]
        pos_embed = self.hook_out(pos_embed)
        self.cache = positions
        return pos_embed

    @boundary(dpos_embed="gradient")
    def backward(self, dpos_embed):
        """dpos_embed [batch, pos, d_model] -> None; W_pos[p] adds up every sequence's gradient."""
        positions = self.cache
        # EXERCISE BEGIN
        # forward: pos_embed = hook_out(pos_embed)   (a hook point: the gradient passes through it)
        dpos_embed = self.hook_out.backward(dpos_embed)
        # forward: pos_embed = broadcast W_pos[positions] over batch   (repeated positions add up)
        np.add.at(self.W_pos.grad, positions[0], dpos_embed.sum(axis=0))  # [n_ctx, d_model]
        # EXERCISE END
        return None
