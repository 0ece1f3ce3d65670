"""Llama's gated feed-forward network, SwiGLU (Shazeer, "GLU Variants Improve Transformer", 2020).

Axes: batch, pos (sequence position), d_model (residual width), d_mlp (hidden width).
Einsum letters: b batch, p pos, m d_model, f d_mlp.

    pre = x W_gate,   pre_linear = x W_in,   post = silu(pre) * pre_linear,   out = post W_out
    silu(u) = u * sigmoid(u) = u / (1 + exp(-u))

TransformerLens's ``GatedMLP`` names: ``W_gate`` is Llama's gate_proj, ``W_in`` its up_proj,
``W_out`` its down_proj; ``hook_pre`` holds x W_gate, ``hook_pre_linear`` x W_in. No biases.
"""

import numpy as np

from foundation.contract.checks import check_config

from .module import HookPoint, Module, Parameter


class GatedFeedForward(Module):
    """An MLP whose hidden units are the product of a SiLU-gated branch and a linear one."""

    def __init__(self, cfg, rng=None):
        rng = np.random.default_rng(rng)
        self.cfg = check_config(cfg)
        d_model, d_mlp = cfg.d_model, cfg.d_mlp
        self.W_gate = Parameter((rng.standard_normal((d_model, d_mlp)) / np.sqrt(d_model)).astype(cfg.dtype))
        self.W_in = Parameter((rng.standard_normal((d_model, d_mlp)) / np.sqrt(d_model)).astype(cfg.dtype))
        self.W_out = Parameter((rng.standard_normal((d_mlp, d_model)) / np.sqrt(d_mlp)).astype(cfg.dtype))
        self.hook_pre = HookPoint()  # [batch, pos, d_mlp]
        self.hook_pre_linear = HookPoint()  # [batch, pos, d_mlp]
        self.hook_post = HookPoint()  # [batch, pos, d_mlp]
        self.cache = None

    def forward(self, x):
        """x [batch, pos, d_model] -> out [batch, pos, d_model]"""
        pre = np.einsum("mf,bpm->bpf", self.W_gate.data, x, optimize=True)  # [batch, pos, d_mlp]
        pre = self.hook_pre(pre)
        pre_linear = np.einsum("mf,bpm->bpf", self.W_in.data, x, optimize=True)  # [batch, pos, d_mlp]
        pre_linear = self.hook_pre_linear(pre_linear)
        sigmoid = 1 / (1 + np.exp(-pre))  # [batch, pos, d_mlp]
        act = pre * sigmoid  # [batch, pos, d_mlp]; silu(pre)
        post = act * pre_linear  # [batch, pos, d_mlp]
        post = self.hook_post(post)
        out = np.einsum("fm,bpf->bpm", self.W_out.data, post, optimize=True)  # [batch, pos, d_model]
        self.cache = (x, pre, pre_linear, sigmoid, act, post)
        return out

    def backward(self, dout):
        """dout [batch, pos, d_model] -> dx [batch, pos, d_model]; adds into W_gate, W_in, W_out grads."""
        x, pre, pre_linear, sigmoid, act, post = self.cache
        # EXERCISE BEGIN
        # forward: out = einsum("fm,bpf->bpm", W_out, post)
        self.W_out.grad += np.einsum("bpm,bpf->fm", dout, post, optimize=True)  # [d_mlp, d_model]
        dpost = np.einsum("fm,bpm->bpf", self.W_out.data, dout, optimize=True)  # [batch, pos, d_mlp]
        dpost = self.hook_post.backward(dpost)
        # forward: post = act * pre_linear
        dact = dpost * pre_linear  # [batch, pos, d_mlp]
        dpre_linear = dpost * act  # [batch, pos, d_mlp]
        # forward: act = pre * sigmoid   (pre reaches act directly, and through sigmoid)
        dpre = dact * sigmoid  # [batch, pos, d_mlp]
        dsigmoid = dact * pre  # [batch, pos, d_mlp]
        # forward: sigmoid = 1 / (1 + exp(-pre));  d sigmoid / d pre = sigmoid * (1 - sigmoid)
        dpre += dsigmoid * sigmoid * (1 - sigmoid)  # [batch, pos, d_mlp]
        dpre_linear = self.hook_pre_linear.backward(dpre_linear)
        dpre = self.hook_pre.backward(dpre)
        # forward: pre_linear = einsum("mf,bpm->bpf", W_in, x)
        self.W_in.grad += np.einsum("bpf,bpm->mf", dpre_linear, x, optimize=True)  # [d_model, d_mlp]
        # forward: pre = einsum("mf,bpm->bpf", W_gate, x)
        self.W_gate.grad += np.einsum("bpf,bpm->mf", dpre, x, optimize=True)  # [d_model, d_mlp]
        dx = (
            np.einsum("mf,bpf->bpm", self.W_gate.data, dpre, optimize=True)
            + np.einsum("mf,bpf->bpm", self.W_in.data, dpre_linear, optimize=True)
        )  # [batch, pos, d_model]
        # EXERCISE END
        return dx
