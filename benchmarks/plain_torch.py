"""The twins' model as plain torch would write it (nanoGPT's way): the yardstick of fwd_bwd.py.

The same math as ``torch_impl.Transformer`` for a pre-norm, causal, learned-position model with
gelu_new: ``F.layer_norm``, one fused q/k/v product, ``F.scaled_dot_product_attention``,
``F.gelu(approximate="tanh")``; no hook points, no checks, no guard. It loads the twins' weights
(``from_state_dict``), so both compute the same logits from the same tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PlainBlock(nn.Module):
    def __init__(self, sd, prefix, n_heads):
        super().__init__()
        take = lambda name: nn.Parameter(sd[prefix + name].clone())  # noqa: E731
        self.n_heads = n_heads
        self.ln1_w, self.ln1_b, self.ln2_w, self.ln2_b = (
            take("ln1.w"),
            take("ln1.b"),
            take("ln2.w"),
            take("ln2.b"),
        )
        # [head, d_model, d_head] x3 -> one [d_model, 3 * head * d_head] weight, as nanoGPT's c_attn
        w_qkv = [
            sd[f"{prefix}attn.W_{n}"].permute(1, 0, 2).reshape(sd[f"{prefix}attn.W_Q"].shape[1], -1)
            for n in "QKV"
        ]
        self.W_qkv = nn.Parameter(torch.cat(w_qkv, dim=1).contiguous())
        self.b_qkv = nn.Parameter(
            torch.cat([sd[f"{prefix}attn.b_{n}"].reshape(-1) for n in "QKV"]).clone()
        )
        self.W_O = nn.Parameter(
            sd[prefix + "attn.W_O"].reshape(-1, sd[prefix + "attn.W_O"].shape[-1]).clone()
        )
        self.b_O = take("attn.b_O")
        self.W_in, self.b_in, self.W_out, self.b_out = (
            take("mlp.W_in"),
            take("mlp.b_in"),
            take("mlp.W_out"),
            take("mlp.b_out"),
        )

    def forward(self, x):
        batch, pos, d_model = x.shape
        h = F.layer_norm(x, (d_model,), self.ln1_w, self.ln1_b, eps=1e-5)
        q, k, v = (h @ self.W_qkv + self.b_qkv).split(self.W_O.shape[0], dim=-1)
        q, k, v = (t.view(batch, pos, self.n_heads, -1).transpose(1, 2) for t in (q, k, v))
        z = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + z.transpose(1, 2).reshape(batch, pos, -1) @ self.W_O + self.b_O
        h = F.layer_norm(x, (d_model,), self.ln2_w, self.ln2_b, eps=1e-5)
        return x + F.gelu(h @ self.W_in + self.b_in, approximate="tanh") @ self.W_out + self.b_out


class PlainTransformer(nn.Module):
    def __init__(self, cfg, sd):
        super().__init__()
        self.W_E, self.W_pos = (
            nn.Parameter(sd["embed.W_E"].clone()),
            nn.Parameter(sd["pos_embed.W_pos"].clone()),
        )
        self.blocks = nn.ModuleList(
            [PlainBlock(sd, f"blocks.{i}.", cfg.n_heads) for i in range(cfg.n_layers)]
        )
        self.ln_w, self.ln_b = (
            nn.Parameter(sd["ln_final.w"].clone()),
            nn.Parameter(sd["ln_final.b"].clone()),
        )
        self.W_U, self.b_U = (
            nn.Parameter(sd["unembed.W_U"].clone()),
            nn.Parameter(sd["unembed.b_U"].clone()),
        )

    @classmethod
    def from_state_dict(cls, cfg, state_dict):
        """The twins' state dict (ndarrays or tensors) -> a plain model of the same weights."""
        return cls(cfg, {name: torch.as_tensor(value) for name, value in state_dict.items()})

    def forward(self, tokens):
        x = self.W_E[tokens] + self.W_pos[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        x = F.layer_norm(x, (x.shape[-1],), self.ln_w, self.ln_b, eps=1e-5)
        return x @ self.W_U + self.b_U
