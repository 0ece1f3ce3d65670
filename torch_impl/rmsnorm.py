"""Root-mean-square normalisation over the residual axis (Zhang & Sennrich, 2019), as in Llama.

Axes: batch, pos (sequence position), d_model (residual width; the normalised axis).

    out = x / sqrt(mean(x**2) + eps) * w

No centring and no bias: only the size of each vector is normalised. eps is ``cfg.eps``
(Llama's ``rms_norm_eps``). The denominator is TransformerLens's ``hook_scale``;
``hook_normalized`` holds x / scale, before w, and ``hook_out`` the output, after it
(TransformerLens 4's meanings). ``hook_in`` holds x.
"""

import torch
from torch import nn

from foundation.contract.checks import check_config

from .module import HookPoint, Module, boundary


class RMSNorm(Module):
    """Divide each position's vector by its root mean square, then scale by w."""

    def __init__(self, cfg, rng=None):
        super().__init__()
        self.cfg = check_config(cfg, torch.Tensor)
        dtype = getattr(torch, cfg.dtype)
        self.w = nn.Parameter(torch.ones(cfg.d_model, dtype=dtype))
        self.hook_in = HookPoint()  # [batch, pos, d_model]
        self.hook_scale = HookPoint(always=True)  # [batch, pos, 1]; always: x / inf = 0 is finite
        self.hook_normalized = HookPoint()  # [batch, pos, d_model]: x / scale, before w
        self.hook_out = HookPoint()  # [batch, pos, d_model]: after w

    @boundary(x="activation")
    def forward(self, x):
        """x [batch, pos, d_model] -> out [batch, pos, d_model]"""
        x = self.hook_in(x)
        mean_square = (x**2).mean(dim=-1, keepdim=True)  # [batch, pos, 1]
        scale = torch.sqrt(mean_square + self.cfg.eps)  # [batch, pos, 1]
        scale = self.hook_scale(scale)
        normalized = x / scale  # [batch, pos, d_model]
        normalized = self.hook_normalized(normalized)
        out = normalized * self.w  # [batch, pos, d_model]
        out = self.hook_out(out)
        return out
