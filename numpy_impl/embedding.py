"""Token embedding: a lookup table from token id to a d_model vector.

Axes: batch, pos (sequence position), d_vocab (token ids), d_model (residual stream width).

    embed[b, p] = W_E[tokens[b, p]]
"""

import numpy as np

from foundation.contract.checks import check_config

from .module import HookPoint, Module, Parameter, boundary


class TokenEmbedding(Module):
    """Row lookup in ``W_E`` ("Attention Is All You Need", §3.4; not scaled by sqrt(d_model))."""

    def __init__(self, cfg, rng=None):
        rng = np.random.default_rng(rng)
        self.cfg = check_config(cfg, np.ndarray)
        self.W_E = Parameter(rng.standard_normal((cfg.d_vocab, cfg.d_model)).astype(cfg.dtype))
        self.hook_in = HookPoint()  # [batch, pos] token ids
        self.hook_out = HookPoint()  # [batch, pos, d_model]
        self.cache = None

    @boundary(tokens="tokens")
    def forward(self, tokens):
        """tokens [batch, pos] int -> embed [batch, pos, d_model]"""
        tokens = self.hook_in(tokens)
        embed = self.W_E.data[tokens]  # [batch, pos, d_model]
        embed = self.hook_out(embed)
        self.cache = tokens
        return embed

    @boundary(dembed="gradient")
    def backward(self, dembed):
        """dembed [batch, pos, d_model] -> None (tokens are discrete: no input gradient).

        Each row of W_E gets the gradient of every position where its token appeared.
        """
        tokens = self.cache
        # EXERCISE BEGIN
        # forward: embed = hook_out(embed)   (a hook point: the gradient passes through it)
        dembed = self.hook_out.backward(dembed)
        # forward: embed = W_E[tokens]
        np.add.at(self.W_E.grad, tokens, dembed)  # [d_vocab, d_model], repeats add up
        # EXERCISE END
        return None
