"""Position-wise feed-forward network ("Attention Is All You Need", §3.3).

Axes: batch, pos (sequence position), d_model (residual width), d_mlp (hidden width).
Einsum letters: b batch, p pos, m d_model, f d_mlp.

    pre = x W_in + b_in,   post = act(pre),   out = post W_out + b_out

Hook points, as TransformerLens 4 names them: ``hook_in`` (x), ``in.hook_in`` (x as W_in reads it),
``in.hook_out`` (pre, alias ``hook_pre``), ``out.hook_in`` (post, alias ``hook_post``),
``out.hook_out`` and ``hook_out`` (out).

act is ReLU, or GPT-2's GELU with the tanh approximation ("gelu_new", Hendrycks & Gimpel):
    gelu_new(u) = 0.5 u (1 + tanh(sqrt(2/pi) (u + 0.044715 u^3)))
or the exact GELU ("gelu", torch.nn.GELU()), u times the standard normal CDF, with erf from SciPy:
    gelu(u) = u * 0.5 (1 + erf(u / sqrt(2)))

The products with W_in and W_out are einsums that name the weight first: one matrix product
over all batch * pos rows; the weight gradients name first the operand holding the gradient's
last axis, so they come back in order for ``+=`` (docs/performance.md says why).
"""

import math

import numpy as np
from scipy.special import erf

from foundation.contract.checks import check_config

from .gated_feedforward import GatedFeedForward
from .module import Constant, HookPoint, Module, Parameter, Projection, boundary

GELU_C = math.sqrt(2.0 / math.pi)
SQRT_2 = math.sqrt(2.0)
SQRT_2PI = math.sqrt(2.0 * math.pi)


class FeedForward(Module):
    """The same two-layer MLP applied to every position independently."""

    def __init__(self, cfg, rng=None):
        rng = np.random.default_rng(rng)
        self.cfg = check_config(cfg, np.ndarray)
        W_in = rng.standard_normal((cfg.d_model, cfg.d_mlp))
        self.W_in = Parameter((W_in / np.sqrt(cfg.d_model)).astype(cfg.dtype))
        bias = Parameter if cfg.mlp_bias else Constant  # mlp_bias=False: fixed zeros
        self.b_in = bias(np.zeros(cfg.d_mlp, dtype=cfg.dtype))
        W_out = rng.standard_normal((cfg.d_mlp, cfg.d_model))
        self.W_out = Parameter((W_out / np.sqrt(cfg.d_mlp)).astype(cfg.dtype))
        self.b_out = bias(np.zeros(cfg.d_model, dtype=cfg.dtype))
        self.hook_in = HookPoint()  # [batch, pos, d_model]
        # in, out: the hook points around W_in and W_out (TransformerLens 4's mlp.in and mlp.out;
        # "in" is a Python keyword, so it is set by name and read as self.in_)
        setattr(self, "in", Projection())
        self.hook_pre = self.in_.hook_out  # [batch, pos, d_mlp]; an alias: one point, two names
        self.out = Projection()
        self.hook_post = self.out.hook_in  # [batch, pos, d_mlp]
        self.hook_out = HookPoint()  # [batch, pos, d_model]
        self.cache = None

    @property
    def in_(self):
        """``mlp.in``, the hook points around W_in (``self.in`` would be a syntax error)."""
        return getattr(self, "in")

    @boundary(x="activation")
    def forward(self, x):
        """x [batch, pos, d_model] -> out [batch, pos, d_model]"""
        x = self.hook_in(x)
        x_in = self.in_.hook_in(x)  # [batch, pos, d_model]
        W_in, b_in = self.W_in.data, self.b_in.data
        pre = np.einsum("mf,bpm->bpf", W_in, x_in, optimize=True) + b_in  # [batch, pos, d_mlp]
        pre = self.hook_pre(pre)
        tanh = None  # GELU's, kept for the backward
        if self.cfg.act_fn == "relu":
            post = np.maximum(pre, 0)  # [batch, pos, d_mlp]
        elif self.cfg.act_fn == "gelu":
            cdf = 0.5 * (1 + erf(pre / SQRT_2))  # [batch, pos, d_mlp]; Phi(pre), normal CDF
            post = pre * cdf  # [batch, pos, d_mlp]
        else:
            inner = GELU_C * (pre + 0.044715 * pre * pre * pre)  # [batch, pos, d_mlp]
            tanh = np.tanh(inner)  # [batch, pos, d_mlp]
            post = 0.5 * pre * (1 + tanh)  # [batch, pos, d_mlp]
        post = self.hook_post(post)
        W_out, b_out = self.W_out.data, self.b_out.data
        out = np.einsum("fm,bpf->bpm", W_out, post, optimize=True) + b_out  # [batch, pos, d_model]
        out = self.hook_out(self.out.hook_out(out))  # [batch, pos, d_model]
        self.cache = (x_in, pre, tanh, post)
        return out

    @boundary(dout="gradient")
    def backward(self, dout):
        """dout [batch, pos, d_model] -> dx [batch, pos, d_model]; adds into each W_*, b_* grad."""
        x_in, pre, tanh, post = self.cache
        W_in, W_out = self.W_in.data, self.W_out.data
        # EXERCISE BEGIN
        # forward: out = hook_out(out.hook_out(out))   (hook points: the gradient passes through)
        dout = self.out.hook_out.backward(self.hook_out.backward(dout))
        # forward: out = einsum("fm,bpf->bpm", W_out, post) + b_out
        self.W_out.grad += np.einsum("bpm,bpf->fm", dout, post, optimize=True)  # [d_mlp, d_model]
        self.b_out.grad += dout.sum(axis=(0, 1))  # [d_model]
        dpost = np.einsum("fm,bpm->bpf", W_out, dout, optimize=True)  # [batch, pos, d_mlp]
        dpost = self.hook_post.backward(dpost)
        if self.cfg.act_fn == "relu":
            # forward: post = max(pre, 0)
            dpre = dpost * (pre > 0)  # [batch, pos, d_mlp]
        elif self.cfg.act_fn == "gelu":
            cdf = 0.5 * (1 + erf(pre / SQRT_2))  # [batch, pos, d_mlp]; the forward's, from pre
            # forward: post = pre * cdf
            dcdf = dpost * pre  # [batch, pos, d_mlp]
            dpre = dpost * cdf  # [batch, pos, d_mlp]
            # forward: cdf = 0.5 * (1 + erf(pre / sqrt(2)));  slope: exp(-pre**2 / 2) / sqrt(2 pi)
            dpre += dcdf * np.exp(-0.5 * pre * pre) / SQRT_2PI  # [batch, pos, d_mlp]
        else:
            # forward: post = 0.5 * pre * (1 + tanh)
            dtanh = dpost * 0.5 * pre  # [batch, pos, d_mlp]
            dpre = dpost * 0.5 * (1 + tanh)  # [batch, pos, d_mlp]
            # forward: tanh = np.tanh(inner)
            dinner = dtanh * (1 - tanh * tanh)  # [batch, pos, d_mlp]
            # forward: inner = GELU_C * (pre + 0.044715 * pre * pre * pre)
            dpre += dinner * GELU_C * (1 + 3 * 0.044715 * pre * pre)  # [batch, pos, d_mlp]
        dpre = self.hook_pre.backward(dpre)
        # forward: pre = einsum("mf,bpm->bpf", W_in, x) + b_in
        self.W_in.grad += np.einsum("bpf,bpm->mf", dpre, x_in, optimize=True)  # [d_model, d_mlp]
        self.b_in.grad += dpre.sum(axis=(0, 1))  # [d_mlp]
        dx = np.einsum("mf,bpf->bpm", W_in, dpre, optimize=True)  # [batch, pos, d_model]
        # EXERCISE END
        return self.hook_in.backward(self.in_.hook_in.backward(dx))

    @staticmethod
    def for_config(cfg, rng=None):
        """The MLP ``cfg`` asks for: ``GatedFeedForward`` (SwiGLU) when ``gated_mlp``, else
        ``FeedForward``."""
        return GatedFeedForward(cfg, rng) if cfg.gated_mlp else FeedForward(cfg, rng)
