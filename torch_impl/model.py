"""The whole model: embeddings, a stack of blocks, an optional final LayerNorm and unembedding.

Axes: batch, pos (sequence position), d_model (residual width), d_vocab (vocabulary).

    resid = W_E[tokens] + pos_embed                     the residual stream starts here
    resid = block_i(resid)      for i = 0 .. n_layers - 1
    resid = ln_final(resid)     (pre-norm only: post-norm blocks already end in a LayerNorm)
    out   = resid W_U + b_U     (unembed=True: logits; unembed=False: out = resid)
"""

import numpy as np
import torch
from torch import nn

from foundation.checks import check_config, check_seed, check_tokens, tokens_as_array
from foundation.weights import load_weights, save_weights

from .block import TransformerBlock
from .embedding import TokenEmbedding
from .hooked import HookedMixin
from .layernorm import LayerNorm
from .module import HookPoint, Module, default_rng
from .positional import LearnedPositionalEmbedding, SinusoidalPositionalEncoding
from .unembed import Unembed


class Transformer(HookedMixin, Module):
    """A decoder-style (or, with causal=False and unembed=False, encoder-style) transformer."""

    def __init__(self, cfg, seed=0):
        super().__init__()
        check_seed(seed, torch.Generator)
        rng = default_rng(seed)
        self.cfg = check_config(cfg)
        self.embed = TokenEmbedding(cfg, rng)
        self.hook_embed = HookPoint()  # [batch, pos, d_model]
        if cfg.positional == "learned":
            self.pos_embed = LearnedPositionalEmbedding(cfg, rng)
        else:
            self.pos_embed = SinusoidalPositionalEncoding(cfg, rng)
        self.hook_pos_embed = HookPoint()  # [batch, pos, d_model]
        self.blocks = nn.ModuleList([TransformerBlock(cfg, rng) for _ in range(cfg.n_layers)])
        if cfg.normalization == "pre":
            self.ln_final = LayerNorm(cfg)
        if cfg.unembed:
            self.unembed = Unembed(cfg, rng)
        for name, module in self.named_modules():
            if isinstance(module, HookPoint):
                module.name = name

    def forward(self, tokens):
        """tokens [batch, pos] int -> logits [batch, pos, d_vocab] (or resid [batch, pos, d_model])"""
        tokens = tokens_as_array(tokens)  # nested lists become an ndarray
        if isinstance(tokens, np.ndarray):
            tokens = torch.as_tensor(tokens)
        check_tokens(tokens, self.cfg, torch.Tensor)
        embed = self.hook_embed(self.embed(tokens))  # [batch, pos, d_model]
        pos_embed = self.hook_pos_embed(self.pos_embed(tokens))  # [batch, pos, d_model]
        resid = embed + pos_embed  # [batch, pos, d_model]
        for block in self.blocks:
            resid = block(resid)  # [batch, pos, d_model]
        if self.cfg.normalization == "pre":
            resid = self.ln_final(resid)  # [batch, pos, d_model]
        out = self.unembed(resid) if self.cfg.unembed else resid  # [batch, pos, d_vocab or d_model]
        return out

    def save(self, path):
        """Write the weights file (.npz: one array per state_dict key plus the config as JSON)."""
        state_dict = {name: tensor.detach().cpu().numpy() for name, tensor in self.state_dict().items()}
        save_weights(path, state_dict, self.cfg)

    @classmethod
    def load(cls, path):
        """A new model with the config and weights of a weights file (saved by either twin)."""
        cfg, state_dict = load_weights(path)
        model = cls(cfg)
        model.load_state_dict(state_dict)
        return model
