"""Rotary position embedding (Su et al., "RoFormer", 2021), applied to queries and keys.

Axes: pos (sequence position), n_ctx (longest sequence), head, d_head (width of one head),
rotary_dim (the leading entries of each head that rotate; the rest pass unchanged), half
(rotary_dim / 2: the number of pairs).

Each pair of entries (first, second) of a head's vector turns by the angle pos * freq_i:
    first'  = first * cos - second * sin
    second' = second * cos + first * sin,       freq_i = 1 / rotary_base ** (2i / rotary_dim)
Pairs are the two halves, (i, i + rotary_dim / 2), as Llama and GPT-NeoX, or neighbours,
(2i, 2i + 1), as GPT-J (``cfg.rotary_adjacent_pairs``). Autograd gives the backward: the
rotation by the opposite angle.
"""

import torch


def rotary_tables(cfg):
    """cos and sin of every position's angles, [n_ctx, half] each: float64, then cfg.dtype."""
    two_i = torch.arange(0, cfg.rotary_dim, 2, dtype=torch.float64)  # [half]
    freq = 1.0 / cfg.rotary_base ** (two_i / cfg.rotary_dim)  # [half]
    position = torch.arange(cfg.n_ctx, dtype=torch.float64)  # [n_ctx]
    angle = torch.outer(position, freq)  # [n_ctx, half]
    dtype = getattr(torch, cfg.dtype)
    return torch.cos(angle).to(dtype), torch.sin(angle).to(dtype)


def rotate(x, cos, sin, adjacent_pairs):
    """x [batch, pos, head, d_head], cos, sin [pos, half] -> rotated [batch, pos, head, d_head]"""
    half = cos.shape[-1]
    turning = x[..., : 2 * half]  # [batch, pos, head, rotary_dim]
    passing = x[..., 2 * half :]  # [batch, pos, head, d_head - rotary_dim]
    if adjacent_pairs:
        first, second = turning[..., 0::2], turning[..., 1::2]  # [batch, pos, head, half] each
    else:
        first, second = turning[..., :half], turning[..., half:]  # [batch, pos, head, half] each
    cos = cos[:, None, :]  # [pos, 1, half]: every head turns by its position's angles
    sin = sin[:, None, :]  # [pos, 1, half]
    first_turned = first * cos - second * sin  # [batch, pos, head, half]
    second_turned = second * cos + first * sin  # [batch, pos, head, half]
    if adjacent_pairs:
        paired = torch.stack((first_turned, second_turned), dim=-1)  # [batch, pos, head, half, 2]
        turned = paired.reshape(turning.shape)  # [batch, pos, head, rotary_dim]; pairs side by side
    else:
        halves = (first_turned, second_turned)
        turned = torch.cat(halves, dim=-1)  # [batch, pos, head, rotary_dim]
    rotated = torch.cat((turned, passing), dim=-1)  # [batch, pos, head, d_head]
    return rotated
