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
"""

import numpy as np

from foundation.contract.checks import check_config

from .module import HookPoint, Module, Parameter, Projection, boundary


class GatedFeedForward(Module):
    """An MLP whose hidden units are the product of a SiLU-gated branch and a linear one."""

    def __init__(self, cfg, rng=None):
        rng = np.random.default_rng(rng)
        self.cfg = check_config(cfg, np.ndarray)
        d_model, d_mlp = cfg.d_model, cfg.d_mlp
        W_gate = rng.standard_normal((d_model, d_mlp))
        W_in = rng.standard_normal((d_model, d_mlp))
        W_out = rng.standard_normal((d_mlp, d_model))
        self.W_gate = Parameter((W_gate / np.sqrt(d_model)).astype(cfg.dtype))
        self.W_in = Parameter((W_in / np.sqrt(d_model)).astype(cfg.dtype))
        self.W_out = Parameter((W_out / np.sqrt(d_mlp)).astype(cfg.dtype))
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
        self.cache = None

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
        W_gate, W_in, W_out = self.W_gate.data, self.W_in.data, self.W_out.data
        pre = np.einsum("mf,bpm->bpf", W_gate, x_gate, optimize=True)  # [batch, pos, d_mlp]
        pre = self.hook_pre(pre)
        pre_linear = np.einsum("mf,bpm->bpf", W_in, x_in, optimize=True)  # [batch, pos, d_mlp]
        pre_linear = self.hook_pre_linear(pre_linear)
        sigmoid = 1 / (1 + np.exp(-pre))  # [batch, pos, d_mlp]
        act = pre * sigmoid  # [batch, pos, d_mlp]; silu(pre)
        post = act * pre_linear  # [batch, pos, d_mlp]
        post = self.hook_post(post)
        out = np.einsum("fm,bpf->bpm", W_out, post, optimize=True)  # [batch, pos, d_model]
        out = self.hook_out(self.out.hook_out(out))  # [batch, pos, d_model]
        self.cache = (x_gate, x_in, pre, pre_linear, sigmoid, act, post)
        return out

    @boundary(dout="gradient")
    def backward(self, dout):
        """dout [batch, pos, d_model] -> dx [batch, pos, d_model]; adds into W_gate, W_in, W_out."""
        x_gate, x_in, pre, pre_linear, sigmoid, act, post = self.cache
        W_gate, W_in, W_out = self.W_gate.data, self.W_in.data, self.W_out.data
        # EXERCISE BEGIN
        # forward: out = hook_out(out.hook_out(out))   (hook points: the gradient passes through)
        dout = self.out.hook_out.backward(self.hook_out.backward(dout))
        # forward: out = einsum("fm,bpf->bpm", W_out, post)
        self.W_out.grad += np.einsum("bpm,bpf->fm", dout, post, optimize=True)  # [d_mlp, d_model]
        dpost = np.einsum("fm,bpm->bpf", W_out, dout, optimize=True)  # [batch, pos, d_mlp]
        dpost = self.hook_post.backward(dpost)
        # forward: post = act * pre_linear
        dact = dpost * pre_linear  # [batch, pos, d_mlp]
        dpre_linear = dpost * act  # [batch, pos, d_mlp]
        # forward: act = pre * sigmoid   (pre reaches act directly, and through sigmoid)
        dpre = dact * sigmoid  # [batch, pos, d_mlp]
        dsigmoid = dact * pre  # [batch, pos, d_mlp]
        # forward: sigmoid = 1 / (1 + exp(-pre));  d sigmoid / d pre = sigmoid * (1 - sigmoid)
        dpre += dsigmoid * sigmoid * (1 - sigmoid)  # [batch, pos, d_mlp]
        # forward: pre_linear = hook_pre_linear(pre_linear), pre = hook_pre(pre)   (hook points)
        dpre_linear = self.hook_pre_linear.backward(dpre_linear)
        dpre = self.hook_pre.backward(dpre)
        # forward: pre_linear = einsum("mf,bpm->bpf", W_in, x)
        dW_in = np.einsum("bpf,bpm->mf", dpre_linear, x_in, optimize=True)  # [d_model, d_mlp]
        self.W_in.grad += dW_in  # [d_model, d_mlp]
        # forward: pre = einsum("mf,bpm->bpf", W_gate, x)
        dW_gate = np.einsum("bpf,bpm->mf", dpre, x_gate, optimize=True)  # [d_model, d_mlp]
        self.W_gate.grad += dW_gate  # [d_model, d_mlp]
        dx_gate = np.einsum("mf,bpf->bpm", W_gate, dpre, optimize=True)  # [batch, pos, d_model]
        dx_in = np.einsum("mf,bpf->bpm", W_in, dpre_linear, optimize=True)  # [batch, pos, d_model]
        # forward: x_gate = gate.hook_in(x), x_in = in.hook_in(x)   (x goes to both)
        dx_gate = self.gate.hook_in.backward(dx_gate)  # [batch, pos, d_model]
        dx_in = self.in_.hook_in.backward(dx_in)  # [batch, pos, d_model]
        dx = dx_gate + dx_in  # [batch, pos, d_model]
        # EXERCISE END
        return self.hook_in.backward(dx)
