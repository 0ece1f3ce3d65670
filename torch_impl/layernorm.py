"""Layer normalisation over the residual-stream axis (Ba, Kiros & Hinton, 2016).

Axes: batch, pos (sequence position), d_model (residual width; the normalised axis).

    out = (x - mean(x)) / sqrt(var(x) + eps) * w + b

with the biased variance and eps = 1e-5 inside the square root, as ``torch.nn.LayerNorm``.
The denominator is TransformerLens's ``hook_scale``; ``hook_normalized`` holds
``(x - mean) / scale``, before w and b, and ``hook_out`` the output, after them (TransformerLens
4's meanings; in 2.x ``hook_normalized`` was the output). ``hook_in`` holds x.
"""

import torch
from torch import nn

from foundation.contract.checks import check_config

from .module import HookPoint, Module, boundary
from .rmsnorm import RMSNorm

EPS = 1e-5


class LayerNorm(Module):
    """Normalise each position's vector to mean 0 and variance 1, then scale by w and shift by b."""

    def __init__(self, cfg, rng=None):
        super().__init__()
        self.cfg = check_config(cfg, torch.Tensor)
        dtype = getattr(torch, cfg.dtype)
        self.w = nn.Parameter(torch.ones(cfg.d_model, dtype=dtype))
        self.b = nn.Parameter(torch.zeros(cfg.d_model, dtype=dtype))
        self.hook_in = HookPoint()  # [batch, pos, d_model]
        self.hook_scale = HookPoint(always=True)  # [batch, pos, 1]; always: x / inf = 0 is finite
        self.hook_normalized = HookPoint()  # [batch, pos, d_model]: before w and b
        self.hook_out = HookPoint()  # [batch, pos, d_model]: after w and b

    @boundary(x="activation")
    def forward(self, x):
        """x [batch, pos, d_model] -> out [batch, pos, d_model]"""
        x = self.hook_in(x)
        mean = x.mean(dim=-1, keepdim=True)  # [batch, pos, 1]
        centered = x - mean  # [batch, pos, d_model]
        var = (centered**2).mean(dim=-1, keepdim=True)  # [batch, pos, 1]
        scale = torch.sqrt(var + EPS)  # [batch, pos, 1]
        scale = self.hook_scale(scale)
        normalized = centered / scale  # [batch, pos, d_model]
        normalized = self.hook_normalized(normalized)
        out = normalized * self.w + self.b  # [batch, pos, d_model]
        out = self.hook_out(out)
        return out

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
    forward is LayerNorm's with w fixed at ones and b at zeros: buffers, not parameters (no
    state_dict entries, nothing trained), and ``normalized * 1 + 0`` is ``normalized`` exactly,
    so hook_out holds centered / scale, as hook_normalized does.
    """

    def __init__(self, cfg, rng=None):
        super().__init__(cfg, rng)
        dtype = getattr(torch, cfg.dtype)
        del self.w, self.b
        w = torch.ones(cfg.d_model, dtype=dtype)  # [d_model]
        b = torch.zeros(cfg.d_model, dtype=dtype)  # [d_model]
        self.register_buffer("w", w, persistent=False)
        self.register_buffer("b", b, persistent=False)
