"""Root-mean-square normalisation over the residual axis (Zhang & Sennrich, 2019), as in Llama.

Axes: batch, pos (sequence position), d_model (residual width; the normalised axis).

    out = x / sqrt(mean(x**2) + eps) * w

No centring and no bias: only the size of each vector is normalised. eps is ``cfg.eps``
(Llama's ``rms_norm_eps``). The denominator is TransformerLens's ``hook_scale``;
``hook_normalized`` holds x / scale, before w.
"""

import torch
from torch import nn

from foundation.contract.checks import check_config

from .module import HookPoint, Module


class RMSNorm(Module):
    """Divide each position's vector by its root mean square, then scale by w."""

    def __init__(self, cfg, rng=None):
        super().__init__()
        self.cfg = check_config(cfg)
        dtype = getattr(torch, cfg.dtype)
        self.w = nn.Parameter(torch.ones(cfg.d_model, dtype=dtype))
        self.hook_scale = HookPoint()  # [batch, pos, 1]
        self.hook_normalized = HookPoint()  # [batch, pos, d_model]: x / scale, before w

    def forward(self, x):
        """x [batch, pos, d_model] -> out [batch, pos, d_model]"""
        mean_square = (x**2).mean(dim=-1, keepdim=True)  # [batch, pos, 1]
        scale = torch.sqrt(mean_square + self.cfg.eps)  # [batch, pos, 1]
        scale = self.hook_scale(scale)
        normalized = x / scale  # [batch, pos, d_model]
        normalized = self.hook_normalized(normalized)
        out = normalized * self.w  # [batch, pos, d_model]
        return out
