"""Llama's gated feed-forward network, SwiGLU (Shazeer, "GLU Variants Improve Transformer", 2020).

Axes: batch, pos (sequence position), d_model (residual width), d_mlp (hidden width).
Einsum letters: b batch, p pos, m d_model, f d_mlp.

    pre = x W_gate,   pre_linear = x W_in,   post = silu(pre) * pre_linear,   out = post W_out
    silu(u) = u * sigmoid(u) = u / (1 + exp(-u))

TransformerLens's ``GatedMLP`` names: ``W_gate`` is Llama's gate_proj, ``W_in`` its up_proj,
``W_out`` its down_proj; ``hook_pre`` holds x W_gate, ``hook_pre_linear`` x W_in. No biases.

Hook points, as TransformerLens 4 names them: ``hook_in`` (x); ``gate.hook_in`` and ``in.hook_in``
(x as W_gate and W_in read it); ``gate.hook_out`` (pre, alias ``hook_pre``), ``in.hook_out``
(pre_linear, alias ``hook_pre_linear``), ``out.hook_in`` (post, alias ``hook_post``),
``out.hook_out`` and ``hook_out`` (out).

silu is torch's kernel (``F.silu``): one pass forward and one backward, where the NumPy twin
writes the sigmoid out for its backward to read (docs/performance.md, "Torch's kernels").
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from foundation.contract.checks import check_config

from .module import HookPoint, Module, Projection, boundary, default_rng


class GatedFeedForward(Module):
    """An MLP whose hidden units are the product of a SiLU-gated branch and a linear one."""

    def __init__(self, cfg, rng=None):
        super().__init__()
        rng = default_rng(rng)
        self.cfg = check_config(cfg, torch.Tensor)
        d_model, d_mlp = cfg.d_model, cfg.d_mlp
        dtype = getattr(torch, cfg.dtype)
        W_gate = torch.randn(d_model, d_mlp, generator=rng, dtype=dtype)
        W_in = torch.randn(d_model, d_mlp, generator=rng, dtype=dtype)
        W_out = torch.randn(d_mlp, d_model, generator=rng, dtype=dtype)
        self.W_gate = nn.Parameter(W_gate / math.sqrt(d_model))
        self.W_in = nn.Parameter(W_in / math.sqrt(d_model))
        self.W_out = nn.Parameter(W_out / math.sqrt(d_mlp))
        self.hook_in = HookPoint()  # [batch, pos, d_model]
        # gate, in, out: the hook points around W_gate, W_in and W_out (TransformerLens 4's
        # mlp.gate, mlp.in, mlp.out; "in" is a Python keyword: set by name, read as self.in_)
        self.gate = Projection()
        self.hook_pre = self.gate.hook_out  # [batch, pos, d_mlp]; an alias: one point, two names
        setattr(self, "in", Projection())
        self.hook_pre_linear = self.in_.hook_out  # [batch, pos, d_mlp]
        self.out = Projection()
        self.hook_post = self.out.hook_in  # [batch, pos, d_mlp]
        self.hook_out = HookPoint()  # [batch, pos, d_model]

    @property
    def in_(self):
        """``mlp.in``, the hook points around W_in (``self.in`` would be a syntax error)."""
        return getattr(self, "in")

    @boundary(x="activation")
    def forward(self, x):
        """x [batch, pos, d_model] -> out [batch, pos, d_model]"""
        x = self.hook_in(x)
        x_gate = self.gate.hook_in(x)  # [batch, pos, d_model]: x as W_gate reads it
        x_in = self.in_.hook_in(x)  # [batch, pos, d_model]: x as W_in reads it
        W_gate, W_in, W_out = self.W_gate, self.W_in, self.W_out
        pre = torch.einsum("mf,bpm->bpf", W_gate, x_gate)  # [batch, pos, d_mlp]
        pre = self.hook_pre(pre)
        pre_linear = torch.einsum("mf,bpm->bpf", W_in, x_in)  # [batch, pos, d_mlp]
        pre_linear = self.hook_pre_linear(pre_linear)
        act = F.silu(pre)  # [batch, pos, d_mlp]; pre * sigmoid(pre), torch's kernel
        post = act * pre_linear  # [batch, pos, d_mlp]
        post = self.hook_post(post)
        out = torch.einsum("fm,bpf->bpm", W_out, post)  # [batch, pos, d_model]
        out = self.hook_out(self.out.hook_out(out))  # [batch, pos, d_model]
        return out
