"""Layer normalisation over the residual-stream axis (Ba, Kiros & Hinton, 2016).

Axes: batch, pos (sequence position), d_model (residual width; the normalised axis).

    out = (x - mean(x)) / sqrt(var(x) + eps) * w + b

with the biased variance and eps = 1e-5 inside the square root, as ``torch.nn.LayerNorm``.
The denominator is TransformerLens's ``hook_scale``; ``hook_normalized`` holds the output, after
w and b, as TransformerLens's hook of that name does.

The variance is taken of ``centered / size``, size being the row's largest |centered| (at least
1), and multiplied back: the same number, but no square can overflow, so a row of huge entries
(1e30 in float32) is normalised like any other. ``torch.nn.functional.layer_norm`` returns zeros
or NaN for such a row; both twins here return the normalised row.
"""

import torch
from torch import nn

from foundation.checks import check_activation, check_config

from .module import HookPoint, Module

EPS = 1e-5


class LayerNorm(Module):
    """Normalise each position's vector to mean 0 and variance 1, then scale by w and shift by b."""

    def __init__(self, cfg, rng=None):
        super().__init__()
        self.cfg = check_config(cfg)
        dtype = getattr(torch, cfg.dtype)
        self.w = nn.Parameter(torch.ones(cfg.d_model, dtype=dtype))
        self.b = nn.Parameter(torch.zeros(cfg.d_model, dtype=dtype))
        self.hook_scale = HookPoint()  # [batch, pos, 1]
        self.hook_normalized = HookPoint()  # [batch, pos, d_model]: the output, after w and b

    def forward(self, x):
        """x [batch, pos, d_model] -> out [batch, pos, d_model]"""
        check_activation(x, "x", self.cfg, torch.Tensor)
        mean = x.mean(dim=-1, keepdim=True)  # [batch, pos, 1]
        centered = x - mean  # [batch, pos, d_model]
        size = torch.clamp(centered.abs().amax(dim=-1, keepdim=True), min=1.0).detach()  # [batch, pos, 1]; a constant that cancels
        var = ((centered / size) ** 2).mean(dim=-1, keepdim=True)  # [batch, pos, 1]; var(x) / size**2
        scale = size * torch.sqrt(var + EPS / size / size)  # [batch, pos, 1]; sqrt(var(x) + eps)
        scale = self.hook_scale(scale)
        normalized = centered / scale  # [batch, pos, d_model]
        out = normalized * self.w + self.b  # [batch, pos, d_model]
        out = self.hook_normalized(out)
        return out
