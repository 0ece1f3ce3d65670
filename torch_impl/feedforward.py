"""Position-wise feed-forward network ("Attention Is All You Need", §3.3).

Axes: batch, pos (sequence position), d_model (residual width), d_mlp (hidden width).
Einsum letters: b batch, p pos, m d_model, f d_mlp.

    pre = x W_in + b_in,   post = act(pre),   out = post W_out + b_out

Hook points, as TransformerLens 4 names them: ``hook_in`` (x), ``in.hook_in`` (x as W_in reads it),
``in.hook_out`` (pre, alias ``hook_pre``), ``out.hook_in`` (post, alias ``hook_post``),
``out.hook_out`` and ``hook_out`` (out).

act is ReLU, or GPT-2's GELU with the tanh approximation ("gelu_new", Hendrycks & Gimpel):
    gelu_new(u) = 0.5 u (1 + tanh(sqrt(2/pi) (u + 0.044715 u^3)))
or the exact GELU ("gelu", torch.nn.GELU()), u times the standard normal CDF:
    gelu(u) = u * 0.5 (1 + erf(u / sqrt(2)))

Here act is torch's own kernel (``torch.relu``, ``F.gelu``): the formula above in one pass
forward and one backward. Written out, each of its steps would be a tensor that autograd keeps
and reads back. The NumPy twin writes the formula out, since its backward reads the middle
values; parity checks that the two agree (docs/performance.md, "Torch's kernels"). The
products with W_in and W_out are einsums that name the weight first, as the NumPy twin's
(docs/performance.md says why it matters there).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from foundation.contract.checks import check_config

from .gated_feedforward import GatedFeedForward
from .module import Constant, HookPoint, Module, Projection, boundary, default_rng


class FeedForward(Module):
    """The same two-layer MLP applied to every position independently."""

    def __init__(self, cfg, rng=None):
        super().__init__()
        rng = default_rng(rng)
        self.cfg = check_config(cfg, torch.Tensor)
        dtype = getattr(torch, cfg.dtype)
        W_in = torch.randn(cfg.d_model, cfg.d_mlp, generator=rng, dtype=dtype)
        self.W_in = nn.Parameter(W_in / math.sqrt(cfg.d_model))
        bias = nn.Parameter if cfg.mlp_bias else Constant  # mlp_bias=False: fixed zeros
        self.b_in = bias(torch.zeros(cfg.d_mlp, dtype=dtype))
        W_out = torch.randn(cfg.d_mlp, cfg.d_model, generator=rng, dtype=dtype)
        self.W_out = nn.Parameter(W_out / math.sqrt(cfg.d_mlp))
        self.b_out = bias(torch.zeros(cfg.d_model, dtype=dtype))
        self.hook_in = HookPoint()  # [batch, pos, d_model]
        # in, out: the hook points around W_in and W_out (TransformerLens 4's mlp.in and mlp.out;
        # "in" is a Python keyword, so it is set by name and read as self.in_)
        setattr(self, "in", Projection())
        self.hook_pre = self.in_.hook_out  # [batch, pos, d_mlp]; an alias: one point, two names
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
        x_in = self.in_.hook_in(x)  # [batch, pos, d_model]
        W_in, b_in = self.W_in, self.b_in
        pre = torch.einsum("mf,bpm->bpf", W_in, x_in) + b_in  # [batch, pos, d_mlp]
        pre = self.hook_pre(pre)
        if self.cfg.act_fn == "relu":
            post = torch.relu(pre)  # [batch, pos, d_mlp]; gradient 0 at pre == 0, as NumPy's
        elif self.cfg.act_fn == "gelu":
            post = F.gelu(pre)  # [batch, pos, d_mlp]; pre * Phi(pre), torch's kernel
        else:
            post = F.gelu(pre, approximate="tanh")  # [batch, pos, d_mlp]; gelu_new, torch's kernel
        post = self.hook_post(post)
        W_out, b_out = self.W_out, self.b_out
        out = torch.einsum("fm,bpf->bpm", W_out, post) + b_out  # [batch, pos, d_model]
        out = self.hook_out(self.out.hook_out(out))  # [batch, pos, d_model]
        return out

    @staticmethod
    def for_config(cfg, rng=None):
        """The MLP ``cfg`` asks for: ``GatedFeedForward`` (SwiGLU) when ``gated_mlp``, else
        ``FeedForward``."""
        return GatedFeedForward(cfg, rng) if cfg.gated_mlp else FeedForward(cfg, rng)
