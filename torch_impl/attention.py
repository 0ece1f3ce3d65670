"""Multi-head self-attention ("Attention Is All You Need", §3.2.1-3.2.2).

Axes: batch, pos / q_pos / k_pos (query and key positions), head, d_head (width of one head),
d_model (residual width); kv_head (grouped key/value heads), half (rotary_dim / 2). Einsum letters:
b batch, p pos, h head, d d_head, m d_model.

For each head h, with x the input [batch, pos, d_model]:
    q = x W_Q[h] + b_Q[h],  k = x W_K[h] + b_K[h],  v = x W_V[h] + b_V[h]
    pattern = softmax(q k^T / sqrt(d_head))          (causal: key_pos <= query_pos only)
    z = pattern v
    out = sum over heads of z W_O[h]  + b_O

Hook points, as TransformerLens 4 names them: ``hook_in`` (x); ``q.hook_in`` / ``q.hook_out`` (x as
the query projection reads it, and q; ``hook_q`` is another name for ``q.hook_out``), the same for
k and v; ``hook_rot_q`` and ``hook_rot_k`` (q and k turned, rotary only); ``hook_attn_scores``,
``hook_pattern``; ``o.hook_in`` (z, alias ``hook_z``) and ``o.hook_out``; then
``hook_hidden_states`` and ``hook_out`` (out).

The Llama family adds two steps between the projections and the scores. Rotary position
embedding (``cfg.positional == "rotary"``, rotary.py) turns q and k by angles that grow with the
position. Grouped-query attention (``GroupedQueryAttention``, below) keeps fewer key/value heads
than query heads: each serves a group of n_heads // n_key_value_heads query heads, so its k and
v are repeated across the group, and the backward sums the group's gradients into it.
With ``cfg.attn_bias`` False, the biases are fixed zeros, not parameters.

The softmax is torch's kernel (``torch.softmax``, which subtracts each row's max itself): one
pass forward and one backward, where the NumPy twin writes out the max, the exponential and the
row sum (docs/performance.md, "Torch's kernels"). Each einsum that multiplies by a weight names
the weight first, as the NumPy twin's does (docs/performance.md says why it matters there).
"""

import math

import torch
from torch import nn

from foundation.contract.checks import check_config

from .module import Constant, HookPoint, Module, Projection, boundary, default_rng
from .rotary import rotary_tables, rotate


class MultiHeadAttention(Module):
    """n_heads independent attention heads whose outputs add into the residual stream."""

    def __init__(self, cfg, rng=None):
        super().__init__()
        rng = default_rng(rng)
        self.cfg = check_config(cfg, torch.Tensor)
        if cfg.n_key_value_heads is not None:
            raise ValueError(
                "cfg.n_key_value_heads is set: build GroupedQueryAttention(cfg), or "
                "MultiHeadAttention.for_config(cfg), which picks the class"
            )
        n_heads, d_model, d_head = cfg.n_heads, cfg.d_model, cfg.d_head
        dtype = getattr(torch, cfg.dtype)
        W_Q = torch.randn(n_heads, d_model, d_head, generator=rng, dtype=dtype)
        W_K = torch.randn(n_heads, d_model, d_head, generator=rng, dtype=dtype)
        W_V = torch.randn(n_heads, d_model, d_head, generator=rng, dtype=dtype)
        W_O = torch.randn(n_heads, d_head, d_model, generator=rng, dtype=dtype)
        self.W_Q = nn.Parameter(W_Q / math.sqrt(d_model))
        self.W_K = nn.Parameter(W_K / math.sqrt(d_model))
        self.W_V = nn.Parameter(W_V / math.sqrt(d_model))
        self.W_O = nn.Parameter(W_O / math.sqrt(n_heads * d_head))
        bias = nn.Parameter if cfg.attn_bias else Constant  # Llama's: no biases, fixed zeros
        self.b_Q = bias(torch.zeros(n_heads, d_head, dtype=dtype))
        self.b_K = bias(torch.zeros(n_heads, d_head, dtype=dtype))
        self.b_V = bias(torch.zeros(n_heads, d_head, dtype=dtype))
        self.b_O = bias(torch.zeros(d_model, dtype=dtype))
        # mask[q, k] is True where query q may look at key k (a buffer: not a parameter, not saved)
        mask = torch.tril(torch.ones(cfg.n_ctx, cfg.n_ctx, dtype=torch.bool))  # [n_ctx, n_ctx]
        self.register_buffer("mask", mask, persistent=False)
        if cfg.positional == "rotary":  # fixed tables, as the mask
            rotary_cos, rotary_sin = rotary_tables(cfg)  # [n_ctx, half] each
            self.register_buffer("rotary_cos", rotary_cos, persistent=False)
            self.register_buffer("rotary_sin", rotary_sin, persistent=False)
        self.hook_in = HookPoint()  # [batch, pos, d_model]
        # q, k, v, o: the hook points around each projection (TransformerLens 4's attn.q, ...)
        self.q, self.k, self.v = Projection(), Projection(), Projection()
        self.hook_q = self.q.hook_out  # [batch, pos, head, d_head]; an alias: one point, two names
        self.hook_k = self.k.hook_out  # [batch, pos, head, d_head]
        self.hook_v = self.v.hook_out  # [batch, pos, head, d_head]
        if cfg.positional == "rotary":
            self.hook_rot_q = HookPoint()  # [batch, pos, head, d_head]
            self.hook_rot_k = HookPoint()  # [batch, pos, head, d_head]
        self.hook_attn_scores = HookPoint()  # [batch, head, q_pos, k_pos]
        self.hook_pattern = HookPoint()  # [batch, head, q_pos, k_pos]
        self.o = Projection()
        self.hook_z = self.o.hook_in  # [batch, pos, head, d_head]
        self.hook_hidden_states = HookPoint()  # [batch, pos, d_model]
        self.hook_out = HookPoint()  # [batch, pos, d_model]

    @staticmethod
    def for_config(cfg, rng=None):
        """The attention ``cfg`` asks for: grouped when ``n_key_value_heads`` is set, else
        ``MultiHeadAttention``."""
        if cfg.n_key_value_heads is None:
            return MultiHeadAttention(cfg, rng)
        return GroupedQueryAttention(cfg, rng)

    @boundary(x="activation", past_kv_cache_entry="kv cache entry")
    def forward(self, x, past_kv_cache_entry=None):
        """x [batch, pos, d_model] -> out [batch, pos, d_model]

        ``past_kv_cache_entry`` (generation, foundation/lens/kv_cache.py): the keys and values of
        the positions before x's; x's join them, and x's positions are counted after them.
        """
        x = self.hook_in(x)
        pos, d_head = x.shape[1], self.cfg.d_head
        # the positions before x's, whose keys and values the cache holds (generation)
        past = 0 if past_kv_cache_entry is None else past_kv_cache_entry.pos_so_far
        x_q = self.q.hook_in(x)  # [batch, pos, d_model]: x as the query projection reads it
        x_k = self.k.hook_in(x)  # [batch, pos, d_model]
        x_v = self.v.hook_in(x)  # [batch, pos, d_model]
        W_Q, W_K, W_V = self.W_Q, self.W_K, self.W_V
        b_Q, b_K, b_V = self.b_Q, self.b_K, self.b_V
        q = torch.einsum("hmd,bpm->bphd", W_Q, x_q) + b_Q  # [batch, pos, head, d_head]
        k = torch.einsum("hmd,bpm->bphd", W_K, x_k) + b_K  # [batch, pos, head, d_head]
        v = torch.einsum("hmd,bpm->bphd", W_V, x_v) + b_V  # [batch, pos, head, d_head]
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        if self.cfg.positional == "rotary":  # turn q and k by their positions' angles
            cos = self.rotary_cos[past : past + pos]  # [pos, half]: the angles of x's positions
            sin = self.rotary_sin[past : past + pos]  # [pos, half]
            adjacent = self.cfg.rotary_adjacent_pairs  # GPT-J's pairs; Llama's, NeoX's halves
            q = self.hook_rot_q(rotate(q, cos, sin, adjacent))  # [batch, pos, head, d_head]
            k = self.hook_rot_k(rotate(k, cos, sin, adjacent))  # [batch, pos, kv_head, d_head]
        if past_kv_cache_entry is not None:  # the earlier positions' keys and values come first
            k, v = past_kv_cache_entry.append(k, v)  # [batch, k_pos, kv_head, d_head] each
        if self.cfg.n_key_value_heads is not None:  # grouped: a key/value head serves its group
            group = self.cfg.n_heads // self.cfg.n_key_value_heads
            k = torch.repeat_interleave(k, group, dim=2)  # [batch, pos, head, d_head]
            v = torch.repeat_interleave(v, group, dim=2)  # [batch, pos, head, d_head]
        # each head attends on its own: put the head axis before the position axis
        q_h = q.permute(0, 2, 1, 3)  # [batch, head, q_pos, d_head]
        k_h = k.permute(0, 2, 1, 3)  # [batch, head, k_pos, d_head]
        v_h = v.permute(0, 2, 1, 3)  # [batch, head, k_pos, d_head]
        scores = q_h @ k_h.swapaxes(-1, -2) / math.sqrt(d_head)  # [batch, head, q_pos, k_pos]
        if self.cfg.causal:
            mask = self.mask[past : past + pos, : past + pos]  # [q_pos, k_pos]: x's rows, every key
            scores = torch.where(mask, scores, -torch.inf)  # [batch, head, q_pos, k_pos]
        scores = self.hook_attn_scores(scores)
        # softmax over keys: torch's kernel, one pass each way (the NumPy twin spells it out)
        probs = torch.softmax(scores, dim=-1)  # [batch, head, q_pos, k_pos]; masked keys: 0
        pattern = self.hook_pattern(probs)  # [batch, head, q_pos, k_pos]; probs, or a hook's edit
        z = (pattern @ v_h).permute(0, 2, 1, 3)  # [batch, pos, head, d_head]
        z = self.hook_z(z)
        W_O, b_O = self.W_O, self.b_O
        out = torch.einsum("hdm,bphd->bpm", W_O, z) + b_O  # [batch, pos, d_model]
        out = self.hook_out(self.hook_hidden_states(self.o.hook_out(out)))  # [batch, pos, d_model]
        return out


class GroupedQueryAttention(MultiHeadAttention):
    """Attention whose n_key_value_heads key/value heads each serve a group of query heads (Ainslie
    et al., 2023).

    TransformerLens's names and shapes: the shared heads are ``_W_K``, ``_W_V``
    [n_key_value_heads, d_model, d_head] and ``_b_K``, ``_b_V`` [n_key_value_heads, d_head];
    ``W_K``, ``W_V``, ``b_K``, ``b_V`` read them (the shared heads, not repeated), so the forward
    above serves both classes.
    """

    def __init__(self, cfg, rng=None):
        Module.__init__(self)
        rng = default_rng(rng)
        self.cfg = check_config(cfg, torch.Tensor)
        n_heads, d_model, d_head, n_kv = cfg.n_heads, cfg.d_model, cfg.d_head, cfg.n_key_value_heads
        dtype = getattr(torch, cfg.dtype)
        W_Q = torch.randn(n_heads, d_model, d_head, generator=rng, dtype=dtype)
        W_K = torch.randn(n_kv, d_model, d_head, generator=rng, dtype=dtype)
        W_V = torch.randn(n_kv, d_model, d_head, generator=rng, dtype=dtype)
        W_O = torch.randn(n_heads, d_head, d_model, generator=rng, dtype=dtype)
        self.W_Q = nn.Parameter(W_Q / math.sqrt(d_model))
        self._W_K = nn.Parameter(W_K / math.sqrt(d_model))
        self._W_V = nn.Parameter(W_V / math.sqrt(d_model))
        self.W_O = nn.Parameter(W_O / math.sqrt(n_heads * d_head))
        bias = nn.Parameter if cfg.attn_bias else Constant  # Llama's: no biases, fixed zeros
        self.b_Q = bias(torch.zeros(n_heads, d_head, dtype=dtype))
        self._b_K = bias(torch.zeros(n_kv, d_head, dtype=dtype))
        self._b_V = bias(torch.zeros(n_kv, d_head, dtype=dtype))
        self.b_O = bias(torch.zeros(d_model, dtype=dtype))
        # mask[q, k] is True where query q may look at key k (a buffer: not a parameter, not saved)
        mask = torch.tril(torch.ones(cfg.n_ctx, cfg.n_ctx, dtype=torch.bool))  # [n_ctx, n_ctx]
        self.register_buffer("mask", mask, persistent=False)
        if cfg.positional == "rotary":  # fixed tables, as the mask
            rotary_cos, rotary_sin = rotary_tables(cfg)  # [n_ctx, half] each
            self.register_buffer("rotary_cos", rotary_cos, persistent=False)
            self.register_buffer("rotary_sin", rotary_sin, persistent=False)
        self.hook_in = HookPoint()  # [batch, pos, d_model]
        # q, k, v, o: the hook points around each projection (TransformerLens 4's attn.q, ...)
        self.q, self.k, self.v = Projection(), Projection(), Projection()
        self.hook_q = self.q.hook_out  # [batch, pos, head, d_head]; an alias: one point, two names
        self.hook_k = self.k.hook_out  # [batch, pos, kv_head, d_head]
        self.hook_v = self.v.hook_out  # [batch, pos, kv_head, d_head]
        if cfg.positional == "rotary":
            self.hook_rot_q = HookPoint()  # [batch, pos, head, d_head]
            self.hook_rot_k = HookPoint()  # [batch, pos, kv_head, d_head]
        self.hook_attn_scores = HookPoint()  # [batch, head, q_pos, k_pos]
        self.hook_pattern = HookPoint()  # [batch, head, q_pos, k_pos]
        self.o = Projection()
        self.hook_z = self.o.hook_in  # [batch, pos, head, d_head]
        self.hook_hidden_states = HookPoint()  # [batch, pos, d_model]
        self.hook_out = HookPoint()  # [batch, pos, d_model]

    W_K = property(lambda self: self._W_K)  # [kv_head, d_model, d_head]
    W_V = property(lambda self: self._W_V)  # [kv_head, d_model, d_head]
    b_K = property(lambda self: self._b_K)  # [kv_head, d_head]
    b_V = property(lambda self: self._b_V)  # [kv_head, d_head]
