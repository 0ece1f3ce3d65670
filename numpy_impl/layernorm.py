"""Layer normalisation over the residual-stream axis (Ba, Kiros & Hinton, 2016).

Axes: batch, pos (sequence position), d_model (residual width; the normalised axis).

    out = (x - mean(x)) / sqrt(var(x) + eps) * w + b

with the biased variance and eps = 1e-5 inside the square root, as ``torch.nn.LayerNorm``.
The denominator is TransformerLens's ``hook_scale``; ``hook_normalized`` holds
``(x - mean) / scale``, before w and b, and ``hook_out`` the output, after them (TransformerLens
4's meanings; in 2.x ``hook_normalized`` was the output). ``hook_in`` holds x.
"""

import numpy as np

from foundation.contract.checks import check_config

from .module import Constant, HookPoint, Module, Parameter, boundary
from .rmsnorm import RMSNorm

EPS = 1e-5


class LayerNorm(Module):
    """Normalise each position's vector to mean 0 and variance 1, then scale by w and shift by b."""

    def __init__(self, cfg, rng=None):
        self.cfg = check_config(cfg, np.ndarray)
        self.w = Parameter(np.ones(cfg.d_model, dtype=cfg.dtype))
        self.b = Parameter(np.zeros(cfg.d_model, dtype=cfg.dtype))
        self.hook_in = HookPoint()  # [batch, pos, d_model]
        self.hook_scale = HookPoint(always=True)  # [batch, pos, 1]; always: x / inf = 0 is finite
        self.hook_normalized = HookPoint()  # [batch, pos, d_model]: before w and b
        self.hook_out = HookPoint()  # [batch, pos, d_model]: after w and b
        self.cache = None

    @boundary(x="activation")
    def forward(self, x):
        """x [batch, pos, d_model] -> out [batch, pos, d_model]"""
        x = self.hook_in(x)
        mean = x.mean(axis=-1, keepdims=True)  # [batch, pos, 1]
        centered = x - mean  # [batch, pos, d_model]
        var = (centered**2).mean(axis=-1, keepdims=True)  # [batch, pos, 1]
        scale = np.sqrt(var + EPS)  # [batch, pos, 1]
        scale = self.hook_scale(scale)
        normalized = centered / scale  # [batch, pos, d_model]
        normalized = self.hook_normalized(normalized)
        out = normalized * self.w.data + self.b.data  # [batch, pos, d_model]
        out = self.hook_out(out)
        self.cache = (centered, scale, normalized)
        return out

    @boundary(dout="gradient")
    def backward(self, dout):
        """dout [batch, pos, d_model] -> dx [batch, pos, d_model]; adds into w.grad and b.grad.

        Every position is normalised on its own, so each line below works row by row.
        """
        centered, scale, normalized = self.cache
        # EXERCISE BEGIN
        # forward: out = hook_out(out)   (a hook point: the gradient passes through it)
        dout = self.hook_out.backward(dout)
        d_model = centered.shape[-1]
        # forward: out = normalized * w + b
        self.w.grad += (dout * normalized).sum(axis=(0, 1))  # [d_model]
        self.b.grad += dout.sum(axis=(0, 1))  # [d_model]
        dnormalized = dout * self.w.data  # [batch, pos, d_model]
        # forward: normalized = hook_normalized(normalized)   (a hook point)
        dnormalized = self.hook_normalized.backward(dnormalized)
        # forward: normalized = centered / scale
        dcentered = dnormalized / scale  # [batch, pos, d_model]
        dscale = -(dnormalized * centered).sum(axis=-1, keepdims=True) / scale**2  # [batch, pos, 1]
        dscale = self.hook_scale.backward(dscale)
        # forward: scale = sqrt(var + EPS)
        dvar = dscale / (2 * scale)  # [batch, pos, 1]
        # forward: var = mean(centered**2)
        dcentered += 2 / d_model * dvar * centered  # [batch, pos, d_model]
        # forward: centered = x - mean   (x reaches centered directly, and through mean)
        dmean = -dcentered.sum(axis=-1, keepdims=True)  # [batch, pos, 1]
        # forward: mean = x.mean(-1)
        dx = dcentered + dmean / d_model  # [batch, pos, d_model]
        # EXERCISE END
        return self.hook_in.backward(dx)

    @staticmethod
    def for_config(cfg):
        """The norm ``cfg.normalization_type`` asks for: ``LayerNorm`` ("LN"), ``LayerNormPre``
        ("LNPre") or ``RMSNorm`` ("RMS")."""
        if cfg.normalization_type == "RMS":
            return RMSNorm(cfg)
        return LayerNormPre(cfg) if cfg.normalization_type == "LNPre" else LayerNorm(cfg)


class LayerNormPre(LayerNorm):
    """LayerNorm without w and b (TransformerLens's ``LayerNormPre``): (x - mean) / sqrt(var + eps).

    What ``fold_layer_norm`` leaves once w and b live in the weights that read the output. The
    forward and backward are LayerNorm's with w fixed at ones and b at zeros: constants, not
    parameters (no state_dict entries, nothing trained), and ``normalized * 1 + 0`` is
    ``normalized`` exactly, so hook_out holds centered / scale, as hook_normalized does.
    """

    def __init__(self, cfg, rng=None):
        super().__init__(cfg, rng)
        self.w = Constant(np.ones(cfg.d_model, dtype=cfg.dtype))  # [d_model]
        self.b = Constant(np.zeros(cfg.d_model, dtype=cfg.dtype))  # [d_model]
