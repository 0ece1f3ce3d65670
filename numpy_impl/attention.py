"""Multi-head self-attention ("Attention Is All You Need", §3.2.1-3.2.2).

Axes: batch, pos / q_pos / k_pos (query and key positions), head, d_head (width of one
head), d_model (residual width). Einsum letters: b batch, p pos, h head, d d_head, m d_model.

For each head h, with x the input [batch, pos, d_model]:
    q = x W_Q[h] + b_Q[h],  k = x W_K[h] + b_K[h],  v = x W_V[h] + b_V[h]
    pattern = softmax(q k^T / sqrt(d_head))          (causal: key_pos <= query_pos only)
    z = pattern v
    out = sum over heads of z W_O[h]  + b_O

Hook points, as TransformerLens 4 names them: ``hook_in`` (x); ``q.hook_in`` / ``q.hook_out`` (x as
the query projection reads it, and q; ``hook_q`` is another name for ``q.hook_out``), the same for
k and v; ``hook_attn_scores``, ``hook_pattern``; ``o.hook_in`` (z, alias ``hook_z``) and
``o.hook_out``; then ``hook_hidden_states`` and ``hook_out`` (out).

Each einsum that multiplies by a weight names the weight first, so NumPy returns its result in
the output's own axis order; W_O's gradient names dout first for the same reason (W_Q's, W_K's
and W_V's come back transposed in either order, and are small). docs/performance.md says why.
"""

import math

import numpy as np

from foundation.contract.checks import check_config
from .module import HookPoint, Module, Parameter, Projection


class MultiHeadAttention(Module):
    """n_heads independent attention heads whose outputs add into the residual stream."""

    def __init__(self, cfg, rng=None):
        rng = np.random.default_rng(rng)
        self.cfg = check_config(cfg)
        n_heads, d_model, d_head = cfg.n_heads, cfg.d_model, cfg.d_head
        self.W_Q = Parameter((rng.standard_normal((n_heads, d_model, d_head)) / np.sqrt(d_model)).astype(cfg.dtype))
        self.W_K = Parameter((rng.standard_normal((n_heads, d_model, d_head)) / np.sqrt(d_model)).astype(cfg.dtype))
        self.W_V = Parameter((rng.standard_normal((n_heads, d_model, d_head)) / np.sqrt(d_model)).astype(cfg.dtype))
        self.W_O = Parameter((rng.standard_normal((n_heads, d_head, d_model)) / np.sqrt(n_heads * d_head)).astype(cfg.dtype))
        self.b_Q = Parameter(np.zeros((n_heads, d_head), dtype=cfg.dtype))
        self.b_K = Parameter(np.zeros((n_heads, d_head), dtype=cfg.dtype))
        self.b_V = Parameter(np.zeros((n_heads, d_head), dtype=cfg.dtype))
        self.b_O = Parameter(np.zeros(d_model, dtype=cfg.dtype))
        # mask[q, k] is True where query q may look at key k (fixed: not a parameter)
        self.mask = np.tril(np.ones((cfg.n_ctx, cfg.n_ctx), dtype=bool))  # [n_ctx, n_ctx]
        self.hook_in = HookPoint()  # [batch, pos, d_model]
        # q, k, v, o: the hook points around each projection (TransformerLens 4's attn.q, ...)
        self.q, self.k, self.v = Projection(), Projection(), Projection()
        self.hook_q = self.q.hook_out  # [batch, pos, head, d_head]; an alias: one point, two names
        self.hook_k = self.k.hook_out  # [batch, pos, head, d_head]
        self.hook_v = self.v.hook_out  # [batch, pos, head, d_head]
        self.hook_attn_scores = HookPoint()  # [batch, head, q_pos, k_pos]
        self.hook_pattern = HookPoint()  # [batch, head, q_pos, k_pos]
        self.o = Projection()
        self.hook_z = self.o.hook_in  # [batch, pos, head, d_head]
        self.hook_hidden_states = HookPoint()  # [batch, pos, d_model]
        self.hook_out = HookPoint()  # [batch, pos, d_model]
        self.cache = None

    def forward(self, x):
        """x [batch, pos, d_model] -> out [batch, pos, d_model]"""
        x = self.hook_in(x)
        pos = x.shape[1]
        x_q = self.q.hook_in(x)  # [batch, pos, d_model]: x as the query projection reads it
        x_k = self.k.hook_in(x)  # [batch, pos, d_model]
        x_v = self.v.hook_in(x)  # [batch, pos, d_model]
        q = np.einsum("hmd,bpm->bphd", self.W_Q.data, x_q, optimize=True) + self.b_Q.data  # [batch, pos, head, d_head]
        k = np.einsum("hmd,bpm->bphd", self.W_K.data, x_k, optimize=True) + self.b_K.data  # [batch, pos, head, d_head]
        v = np.einsum("hmd,bpm->bphd", self.W_V.data, x_v, optimize=True) + self.b_V.data  # [batch, pos, head, d_head]
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        # each head attends on its own: put the head axis before the position axis
        q_h = q.transpose(0, 2, 1, 3)  # [batch, head, q_pos, d_head]
        k_h = k.transpose(0, 2, 1, 3)  # [batch, head, k_pos, d_head]
        v_h = v.transpose(0, 2, 1, 3)  # [batch, head, k_pos, d_head]
        scores = q_h @ k_h.swapaxes(-1, -2) / math.sqrt(self.cfg.d_head)  # [batch, head, q_pos, k_pos]
        if self.cfg.causal:
            scores = np.where(self.mask[:pos, :pos], scores, -np.inf)  # [batch, head, q_pos, k_pos]
        scores = self.hook_attn_scores(scores)
        # softmax over keys; subtracting the row max changes nothing but keeps exp finite
        scores_max = scores.max(axis=-1, keepdims=True)  # [batch, head, q_pos, 1]
        exp = np.exp(scores - scores_max)  # [batch, head, q_pos, k_pos]; masked keys give exp(-inf) = 0
        probs = exp / exp.sum(axis=-1, keepdims=True)  # [batch, head, q_pos, k_pos]
        pattern = self.hook_pattern(probs)  # [batch, head, q_pos, k_pos]; probs, unless a hook edits it
        z = (pattern @ v_h).transpose(0, 2, 1, 3)  # [batch, pos, head, d_head]
        z = self.hook_z(z)
        out = np.einsum("hdm,bphd->bpm", self.W_O.data, z, optimize=True) + self.b_O.data  # [batch, pos, d_model]
        out = self.hook_out(self.hook_hidden_states(self.o.hook_out(out)))  # [batch, pos, d_model]
        self.cache = (x_q, x_k, x_v, q_h, k_h, v_h, probs, pattern, z)
        return out

    def backward(self, dout):
        """dout [batch, pos, d_model] -> dx [batch, pos, d_model]; adds into every W_* and b_* grad."""
        x_q, x_k, x_v, q_h, k_h, v_h, probs, pattern, z = self.cache
        # EXERCISE BEGIN
        # EXERCISE STEP output: the output's hook points and projection, then the sum over values
        # forward: out = hook_out(hook_hidden_states(o.hook_out(out)))   (three hook points)
        dout = self.hook_out.backward(dout)  # [batch, pos, d_model]
        dout = self.hook_hidden_states.backward(dout)  # [batch, pos, d_model]
        dout = self.o.hook_out.backward(dout)  # [batch, pos, d_model]
        # forward: out = einsum("hdm,bphd->bpm", W_O, z) + b_O
        self.W_O.grad += np.einsum("bpm,bphd->hdm", dout, z, optimize=True)  # [head, d_head, d_model]
        self.b_O.grad += dout.sum(axis=(0, 1))  # [d_model]
        dz = np.einsum("hdm,bpm->bphd", self.W_O.data, dout, optimize=True)  # [batch, pos, head, d_head]
        dz = self.hook_z.backward(dz)
        # forward: z = (pattern @ v_h).transpose(0, 2, 1, 3)
        dz_h = dz.transpose(0, 2, 1, 3)  # [batch, head, q_pos, d_head]
        dpattern = dz_h @ v_h.swapaxes(-1, -2)  # [batch, head, q_pos, k_pos]
        dv_h = pattern.swapaxes(-1, -2) @ dz_h  # [batch, head, k_pos, d_head]
        # EXERCISE STEP softmax: the pattern's hook point, then the softmax's backward, row by row
        # forward: pattern = hook_pattern(probs)
        dprobs = self.hook_pattern.backward(dpattern)  # [batch, head, q_pos, k_pos]
        # forward: probs = softmax(scores)  (its Jacobian-vector product, row by row)
        dscores = probs * (dprobs - (dprobs * probs).sum(axis=-1, keepdims=True))  # [batch, head, q_pos, k_pos]
        # EXERCISE STEP scores: the scores' hook point, the causal mask, the 1/sqrt(d_head) scale and q k^T
        dscores = self.hook_attn_scores.backward(dscores)
        # forward: scores = where(mask, scores, -inf)
        if self.cfg.causal:
            pos = x_q.shape[1]
            dscores = np.where(self.mask[:pos, :pos], dscores, 0.0)  # [batch, head, q_pos, k_pos]
        # forward: scores = q_h @ k_h^T / sqrt(d_head)
        dq_h = dscores @ k_h / math.sqrt(self.cfg.d_head)  # [batch, head, q_pos, d_head]
        dk_h = dscores.swapaxes(-1, -2) @ q_h / math.sqrt(self.cfg.d_head)  # [batch, head, k_pos, d_head]
        # EXERCISE STEP projections: the heads put back in place, then the q, k and v projections
        # forward: q_h, k_h, v_h = q, k, v with the head axis moved before pos
        dq = dq_h.transpose(0, 2, 1, 3)  # [batch, pos, head, d_head]
        dk = dk_h.transpose(0, 2, 1, 3)  # [batch, pos, head, d_head]
        dv = dv_h.transpose(0, 2, 1, 3)  # [batch, pos, head, d_head]
        dq, dk, dv = self.hook_q.backward(dq), self.hook_k.backward(dk), self.hook_v.backward(dv)
        # forward: q = einsum("hmd,bpm->bphd", W_Q, x_q) + b_Q, and the same for k and v
        self.W_Q.grad += np.einsum("bpm,bphd->hmd", x_q, dq, optimize=True)  # [head, d_model, d_head]
        self.W_K.grad += np.einsum("bpm,bphd->hmd", x_k, dk, optimize=True)  # [head, d_model, d_head]
        self.W_V.grad += np.einsum("bpm,bphd->hmd", x_v, dv, optimize=True)  # [head, d_model, d_head]
        self.b_Q.grad += dq.sum(axis=(0, 1))  # [head, d_head]
        self.b_K.grad += dk.sum(axis=(0, 1))  # [head, d_head]
        self.b_V.grad += dv.sum(axis=(0, 1))  # [head, d_head]
        dx_q = np.einsum("hmd,bphd->bpm", self.W_Q.data, dq, optimize=True)  # [batch, pos, d_model]
        dx_k = np.einsum("hmd,bphd->bpm", self.W_K.data, dk, optimize=True)  # [batch, pos, d_model]
        dx_v = np.einsum("hmd,bphd->bpm", self.W_V.data, dv, optimize=True)  # [batch, pos, d_model]
        # forward: x_q = q.hook_in(x), and the same for k and v   (x goes to all three)
        dx = (self.q.hook_in.backward(dx_q) + self.k.hook_in.backward(dx_k)
              + self.v.hook_in.backward(dx_v))  # [batch, pos, d_model]
        # EXERCISE END
        return self.hook_in.backward(dx)
