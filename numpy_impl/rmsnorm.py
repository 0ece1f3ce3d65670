"""Root-mean-square normalisation over the residual axis (Zhang & Sennrich, 2019), as in Llama.

Axes: batch, pos (sequence position), d_model (residual width; the normalised axis).

    out = x / sqrt(mean(x**2) + eps) * w

No centring and no bias: only the size of each vector is normalised. eps is ``cfg.eps``
(Llama's ``rms_norm_eps``). The denominator is TransformerLens's ``hook_scale``;
``hook_normalized`` holds x / scale, before w, and ``hook_out`` the output, after it
(TransformerLens 4's meanings). ``hook_in`` holds x.
"""

import numpy as np

from foundation.contract.checks import check_config

from .module import HookPoint, Module, Parameter, boundary


class RMSNorm(Module):
    """Divide each position's vector by its root mean square, then scale by w."""

    def __init__(self, cfg, rng=None):
        self.cfg = check_config(cfg, np.ndarray)
        self.w = Parameter(np.ones(cfg.d_model, dtype=cfg.dtype))
        self.hook_in = HookPoint()  # [batch, pos, d_model]
        self.hook_scale = HookPoint(always=True)  # [batch, pos, 1]; always: x / inf = 0 is finite
        self.hook_normalized = HookPoint()  # [batch, pos, d_model]: x / scale, before w
        self.hook_out = HookPoint()  # [batch, pos, d_model]: after w
        self.cache = None

    @boundary(x="activation")
    def forward(self, x):
        """x [batch, pos, d_model] -> out [batch, pos, d_model]"""
        x = self.hook_in(x)
        mean_square = (x**2).mean(axis=-1, keepdims=True)  # [batch, pos, 1]
        scale = np.sqrt(mean_square + self.cfg.eps)  # [batch, pos, 1]
        scale = self.hook_scale(scale)
        normalized = x / scale  # [batch, pos, d_model]
        normalized = self.hook_normalized(normalized)
        out = normalized * self.w.data  # [batch, pos, d_model]
        out = self.hook_out(out)
        self.cache = (x, scale, normalized)
        return out

    @boundary(dout="gradient")
    def backward(self, dout):
        """dout [batch, pos, d_model] -> dx [batch, pos, d_model]; adds into w.grad."""
        x, scale, normalized = self.cache
        # EXERCISE BEGIN
        # forward: out = hook_out(out)   (a hook point: the gradient passes through it)
        dout = self.hook_out.backward(dout)
        d_model = x.shape[-1]
        # forward: out = normalized * w
        self.w.grad += (dout * normalized).sum(axis=(0, 1))  # [d_model]
        dnormalized = dout * self.w.data  # [batch, pos, d_model]
        # forward: normalized = hook_normalized(normalized)   (a hook point)
        dnormalized = self.hook_normalized.backward(dnormalized)
        # forward: normalized = x / scale
        dx = dnormalized / scale  # [batch, pos, d_model]
        dscale = -(dnormalized * x).sum(axis=-1, keepdims=True) / scale**2  # [batch, pos, 1]
        dscale = self.hook_scale.backward(dscale)
        # forward: scale = sqrt(mean_square + eps)
        dmean_square = dscale / (2 * scale)  # [batch, pos, 1]
        # forward: mean_square = mean(x**2)
        dx += 2 / d_model * dmean_square * x  # [batch, pos, d_model]
        # EXERCISE END
        return self.hook_in.backward(dx)
