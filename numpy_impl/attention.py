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

Each einsum that multiplies by a weight names the weight first, so NumPy returns its result in
the output's own axis order; W_O's gradient names dout first for the same reason (W_Q's, W_K's
and W_V's come back transposed in either order, and are small). docs/performance.md says why.
"""

import math

import numpy as np

from foundation.contract.checks import check_config

from .module import Constant, HookPoint, Module, Parameter, Projection, boundary
from .rotary import rotary_tables, rotate


class MultiHeadAttention(Module):
    """n_heads independent attention heads whose outputs add into the residual stream."""

    def __init__(self, cfg, rng=None):
        rng = np.random.default_rng(rng)
        self.cfg = check_config(cfg, np.ndarray)
        if cfg.n_key_value_heads is not None:
            raise ValueError(
                "cfg.n_key_value_heads is set: build GroupedQueryAttention(cfg), or "
                "MultiHeadAttention.for_config(cfg), which picks the class"
            )
        n_heads, d_model, d_head = cfg.n_heads, cfg.d_model, cfg.d_head
        W_Q = rng.standard_normal((n_heads, d_model, d_head))
        W_K = rng.standard_normal((n_heads, d_model, d_head))
        W_V = rng.standard_normal((n_heads, d_model, d_head))
        W_O = rng.standard_normal((n_heads, d_head, d_model))
        self.W_Q = Parameter((W_Q / np.sqrt(d_model)).astype(cfg.dtype))
        self.W_K = Parameter((W_K / np.sqrt(d_model)).astype(cfg.dtype))
        self.W_V = Parameter((W_V / np.sqrt(d_model)).astype(cfg.dtype))
        self.W_O = Parameter((W_O / np.sqrt(n_heads * d_head)).astype(cfg.dtype))
        bias = Parameter if cfg.attn_bias else Constant  # Llama's: no biases, fixed zeros
        self.b_Q = bias(np.zeros((n_heads, d_head), dtype=cfg.dtype))
        self.b_K = bias(np.zeros((n_heads, d_head), dtype=cfg.dtype))
        self.b_V = bias(np.zeros((n_heads, d_head), dtype=cfg.dtype))
        self.b_O = bias(np.zeros(d_model, dtype=cfg.dtype))
        # mask[q, k] is True where query q may look at key k (fixed: not a parameter)
        self.mask = np.tril(np.ones((cfg.n_ctx, cfg.n_ctx), dtype=bool))  # [n_ctx, n_ctx]
        if cfg.positional == "rotary":  # fixed tables, as the mask
            self.rotary_cos, self.rotary_sin = rotary_tables(cfg)  # [n_ctx, half] each
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
        self.cache = None

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
        W_Q, W_K, W_V = self.W_Q.data, self.W_K.data, self.W_V.data
        b_Q, b_K, b_V = self.b_Q.data, self.b_K.data, self.b_V.data
        q = np.einsum("hmd,bpm->bphd", W_Q, x_q, optimize=True) + b_Q  # [batch, pos, head, d_head]
        k = np.einsum("hmd,bpm->bphd", W_K, x_k, optimize=True) + b_K  # [batch, pos, head, d_head]
        v = np.einsum("hmd,bpm->bphd", W_V, x_v, optimize=True) + b_V  # [batch, pos, head, d_head]
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
            k = np.repeat(k, group, axis=2)  # [batch, pos, head, d_head]
            v = np.repeat(v, group, axis=2)  # [batch, pos, head, d_head]
        # each head attends on its own: put the head axis before the position axis
        q_h = q.transpose(0, 2, 1, 3)  # [batch, head, q_pos, d_head]
        k_h = k.transpose(0, 2, 1, 3)  # [batch, head, k_pos, d_head]
        v_h = v.transpose(0, 2, 1, 3)  # [batch, head, k_pos, d_head]
        scores = q_h @ k_h.swapaxes(-1, -2) / math.sqrt(d_head)  # [batch, head, q_pos, k_pos]
        if self.cfg.causal:
            mask = self.mask[past : past + pos, : past + pos]  # [q_pos, k_pos]: x's rows, every key
            scores = np.where(mask, scores, -np.inf)  # [batch, head, q_pos, k_pos]
        scores = self.hook_attn_scores(scores)
        # softmax over keys; subtracting the row max changes nothing but keeps exp finite
        scores_max = scores.max(axis=-1, keepdims=True)  # [batch, head, q_pos, 1]
        exp = np.exp(scores - scores_max)  # [batch, head, q_pos, k_pos]; masked: exp(-inf) = 0
        probs = exp / exp.sum(axis=-1, keepdims=True)  # [batch, head, q_pos, k_pos]
        pattern = self.hook_pattern(probs)  # [batch, head, q_pos, k_pos]; probs, or a hook's edit
        z = (pattern @ v_h).transpose(0, 2, 1, 3)  # [batch, pos, head, d_head]
        z = self.hook_z(z)
        W_O, b_O = self.W_O.data, self.b_O.data
        out = np.einsum("hdm,bphd->bpm", W_O, z, optimize=True) + b_O  # [batch, pos, d_model]
        out = self.hook_out(self.hook_hidden_states(self.o.hook_out(out)))  # [batch, pos, d_model]
        self.cache = (x_q, x_k, x_v, q_h, k_h, v_h, probs, pattern, z)
        return out

    @boundary(dout="gradient")
    def backward(self, dout):
        """dout [batch, pos, d_model] -> dx [batch, pos, d_model]; adds into each W_*, b_* grad."""
        x_q, x_k, x_v, q_h, k_h, v_h, probs, pattern, z = self.cache
        W_Q, W_K, W_V, W_O = self.W_Q.data, self.W_K.data, self.W_V.data, self.W_O.data
        # EXERCISE BEGIN
        # EXERCISE STEP output: the output's hook points and projection, then the sum over values
        # forward: out = hook_out(hook_hidden_states(o.hook_out(out)))   (three hook points)
        dout = self.hook_out.backward(dout)  # [batch, pos, d_model]
        dout = self.hook_hidden_states.backward(dout)  # [batch, pos, d_model]
        dout = self.o.hook_out.backward(dout)  # [batch, pos, d_model]
        # forward: out = einsum("hdm,bphd->bpm", W_O, z) + b_O
        dW_O = np.einsum("bpm,bphd->hdm", dout, z, optimize=True)  # [head, d_head, d_model]
        self.W_O.grad += dW_O  # [head, d_head, d_model]
        self.b_O.grad += dout.sum(axis=(0, 1))  # [d_model]
        dz = np.einsum("hdm,bpm->bphd", W_O, dout, optimize=True)  # [batch, pos, head, d_head]
        dz = self.hook_z.backward(dz)
        # forward: z = (pattern @ v_h).transpose(0, 2, 1, 3)
        dz_h = dz.transpose(0, 2, 1, 3)  # [batch, head, q_pos, d_head]
        dpattern = dz_h @ v_h.swapaxes(-1, -2)  # [batch, head, q_pos, k_pos]
        dv_h = pattern.swapaxes(-1, -2) @ dz_h  # [batch, head, k_pos, d_head]
        # EXERCISE STEP softmax: the pattern's hook point, then the softmax's backward, row by row
        # forward: pattern = hook_pattern(probs)
        dprobs = self.hook_pattern.backward(dpattern)  # [batch, head, q_pos, k_pos]
        # forward: probs = softmax(scores)  (its Jacobian-vector product, row by row)
        dprobs_mean = (dprobs * probs).sum(axis=-1, keepdims=True)  # [batch, head, q_pos, 1]
        dscores = probs * (dprobs - dprobs_mean)  # [batch, head, q_pos, k_pos]
        # EXERCISE STEP scores: the hook point, the causal mask, the 1/sqrt(d_head) scale and q k^T
        dscores = self.hook_attn_scores.backward(dscores)
        # forward: scores = where(mask, scores, -inf)
        if self.cfg.causal:
            pos = x_q.shape[1]
            dscores = np.where(self.mask[:pos, :pos], dscores, 0.0)  # [batch, head, q_pos, k_pos]
        # forward: scores = q_h @ k_h^T / sqrt(d_head)
        d_head = self.cfg.d_head
        dq_h = dscores @ k_h / math.sqrt(d_head)  # [batch, head, q_pos, d_head]
        dk_h = dscores.swapaxes(-1, -2) @ q_h / math.sqrt(d_head)  # [batch, head, k_pos, d_head]
        # EXERCISE STEP groups: the heads put back in place, then each shared head's group summed
        # forward: q_h, k_h, v_h = q, k, v with the head axis moved before pos
        dq = dq_h.transpose(0, 2, 1, 3)  # [batch, pos, head, d_head]
        dk = dk_h.transpose(0, 2, 1, 3)  # [batch, pos, head, d_head]
        dv = dv_h.transpose(0, 2, 1, 3)  # [batch, pos, head, d_head]
        if self.cfg.n_key_value_heads is not None:
            # forward: k = repeat(k, group, axis=2), and v   (shared heads: their group's sum)
            n_kv = self.cfg.n_key_value_heads
            grouped = (n_kv, self.cfg.n_heads // n_kv, self.cfg.d_head)  # head -> kv_head, group
            dk = dk.reshape(*dk.shape[:2], *grouped).sum(axis=3)  # [batch, pos, kv_head, d_head]
            dv = dv.reshape(*dv.shape[:2], *grouped).sum(axis=3)  # [batch, pos, kv_head, d_head]
        # EXERCISE STEP rotary: the rotation undone: q's and k's gradients turned back
        if self.cfg.positional == "rotary":
            # forward: q = hook_rot_q(rotate(q, cos, sin)), and k   (undone by the opposite angles)
            cos = self.rotary_cos[: x_q.shape[1]]  # [pos, half]
            sin = self.rotary_sin[: x_q.shape[1]]  # [pos, half]
            adjacent = self.cfg.rotary_adjacent_pairs
            dq = self.hook_rot_q.backward(dq)  # [batch, pos, head, d_head]; after the turn
            dq = rotate(dq, cos, -sin, adjacent)  # [batch, pos, head, d_head]
            dk = self.hook_rot_k.backward(dk)  # [batch, pos, kv_head, d_head]; after the turn
            dk = rotate(dk, cos, -sin, adjacent)  # [batch, pos, kv_head, d_head]
        # EXERCISE STEP projections: the q, k and v projections and their input hook points
        dq, dk, dv = self.hook_q.backward(dq), self.hook_k.backward(dk), self.hook_v.backward(dv)
        # forward: q = einsum("hmd,bpm->bphd", W_Q, x_q) + b_Q, and the same for k and v
        dW_Q = np.einsum("bpm,bphd->hmd", x_q, dq, optimize=True)  # [head, d_model, d_head]
        self.W_Q.grad += dW_Q  # [head, d_model, d_head]
        dW_K = np.einsum("bpm,bphd->hmd", x_k, dk, optimize=True)  # [kv_head, d_model, d_head]
        self.W_K.grad += dW_K  # [kv_head, d_model, d_head]
        dW_V = np.einsum("bpm,bphd->hmd", x_v, dv, optimize=True)  # [kv_head, d_model, d_head]
        self.W_V.grad += dW_V  # [kv_head, d_model, d_head]
        self.b_Q.grad += dq.sum(axis=(0, 1))  # [head, d_head]
        self.b_K.grad += dk.sum(axis=(0, 1))  # [kv_head, d_head]
        self.b_V.grad += dv.sum(axis=(0, 1))  # [kv_head, d_head]
        dx_q = np.einsum("hmd,bphd->bpm", W_Q, dq, optimize=True)  # [batch, pos, d_model]
        dx_k = np.einsum("hmd,bphd->bpm", W_K, dk, optimize=True)  # [batch, pos, d_model]
        dx_v = np.einsum("hmd,bphd->bpm", W_V, dv, optimize=True)  # [batch, pos, d_model]
        # forward: x_q = q.hook_in(x), and the same for k and v   (x goes to all three)
        dx = (
            self.q.hook_in.backward(dx_q)
            + self.k.hook_in.backward(dx_k)
            + self.v.hook_in.backward(dx_v)
        )  # [batch, pos, d_model]
        # EXERCISE END
        return self.hook_in.backward(dx)


class GroupedQueryAttention(MultiHeadAttention):
    """Attention whose n_key_value_heads key/value heads each serve a group of query heads (Ainslie
    et al., 2023).

    TransformerLens's names and shapes: the shared heads are ``_W_K``, ``_W_V``
    [n_key_value_heads, d_model, d_head] and ``_b_K``, ``_b_V`` [n_key_value_heads, d_head];
    ``W_K``, ``W_V``, ``b_K``, ``b_V`` read them (the shared heads, not repeated), so the forward
    and backward above serve both classes.
    """

    def __init__(self, cfg, rng=None):
        rng = np.random.default_rng(rng)
        self.cfg = check_config(cfg, np.ndarray)
        n_heads, d_model, d_head, n_kv = cfg.n_heads, cfg.d_model, cfg.d_head, cfg.n_key_value_heads
        W_Q = rng.standard_normal((n_heads, d_model, d_head))
        W_K = rng.standard_normal((n_kv, d_model, d_head))
        W_V = rng.standard_normal((n_kv, d_model, d_head))
        W_O = rng.standard_normal((n_heads, d_head, d_model))
        self.W_Q = Parameter((W_Q / np.sqrt(d_model)).astype(cfg.dtype))
        self._W_K = Parameter((W_K / np.sqrt(d_model)).astype(cfg.dtype))
        self._W_V = Parameter((W_V / np.sqrt(d_model)).astype(cfg.dtype))
        self.W_O = Parameter((W_O / np.sqrt(n_heads * d_head)).astype(cfg.dtype))
        bias = Parameter if cfg.attn_bias else Constant  # Llama's: no biases, fixed zeros
        self.b_Q = bias(np.zeros((n_heads, d_head), dtype=cfg.dtype))
        self._b_K = bias(np.zeros((n_kv, d_head), dtype=cfg.dtype))
        self._b_V = bias(np.zeros((n_kv, d_head), dtype=cfg.dtype))
        self.b_O = bias(np.zeros(d_model, dtype=cfg.dtype))
        # mask[q, k] is True where query q may look at key k (fixed: not a parameter)
        self.mask = np.tril(np.ones((cfg.n_ctx, cfg.n_ctx), dtype=bool))  # [n_ctx, n_ctx]
        if cfg.positional == "rotary":  # fixed tables, as the mask
            self.rotary_cos, self.rotary_sin = rotary_tables(cfg)  # [n_ctx, half] each
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
        self.cache = None

    W_K = property(lambda self: self._W_K)  # [kv_head, d_model, d_head]
    W_V = property(lambda self: self._W_V)  # [kv_head, d_model, d_head]
    b_K = property(lambda self: self._b_K)  # [kv_head, d_head]
    b_V = property(lambda self: self._b_V)  # [kv_head, d_head]
