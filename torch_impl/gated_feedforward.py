"""Llama's gated feed-forward network, SwiGLU (Shazeer, "GLU Variants Improve Transformer", 2020).

Axes: batch, pos (sequence position), d_model (residual width), d_mlp (hidden width).
Einsum letters: b batch, p pos, m d_model, f d_mlp.

    pre = x W_gate,   pre_linear = x W_in,   post = silu(pre) * pre_linear,   out = post W_out
    silu(u) = u * sigmoid(u) = u / (1 + exp(-u))

TransformerLens's ``GatedMLP`` names: ``W_gate`` is Llama's gate_proj, ``W_in`` its up_proj,
``W_out`` its down_proj; ``hook_pre`` holds x W_gate, ``hook_pre_linear`` x W_in. No biases.
"""

import math

import torch
from torch import nn

from foundation.contract.checks import check_config

from .module import HookPoint, Module, default_rng


class GatedFeedForward(Module):
    """An MLP whose hidden units are the product of a SiLU-gated branch and a linear one."""

    def __init__(self, cfg, rng=None):
        super().__init__()
        rng = default_rng(rng)
        self.cfg = check_config(cfg)
        d_model, d_mlp = cfg.d_model, cfg.d_mlp
        dtype = getattr(torch, cfg.dtype)
        self.W_gate = nn.Parameter(torch.randn(d_model, d_mlp, generator=rng, dtype=dtype) / math.sqrt(d_model))
        self.W_in = nn.Parameter(torch.randn(d_model, d_mlp, generator=rng, dtype=dtype) / math.sqrt(d_model))
        self.W_out = nn.Parameter(torch.randn(d_mlp, d_model, generator=rng, dtype=dtype) / math.sqrt(d_mlp))
        self.hook_pre = HookPoint()  # [batch, pos, d_mlp]
        self.hook_pre_linear = HookPoint()  # [batch, pos, d_mlp]
        self.hook_post = HookPoint()  # [batch, pos, d_mlp]

    def forward(self, x):
        """x [batch, pos, d_model] -> out [batch, pos, d_model]"""
        pre = torch.einsum("mf,bpm->bpf", self.W_gate, x)  # [batch, pos, d_mlp]
        pre = self.hook_pre(pre)
        pre_linear = torch.einsum("mf,bpm->bpf", self.W_in, x)  # [batch, pos, d_mlp]
        pre_linear = self.hook_pre_linear(pre_linear)
        sigmoid = 1 / (1 + torch.exp(-pre))  # [batch, pos, d_mlp]
        act = pre * sigmoid  # [batch, pos, d_mlp]; silu(pre)
        post = act * pre_linear  # [batch, pos, d_mlp]
        post = self.hook_post(post)
        out = torch.einsum("fm,bpf->bpm", self.W_out, post)  # [batch, pos, d_model]
        return out
