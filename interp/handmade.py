"""A two-layer induction circuit set by hand: every analysis has a known answer on it.

Axes: d_vocab (tokens), n_ctx (positions), d_model (residual width), d_head (one head's width).

The residual stream is cut into four blocks of one-hot coordinates,

    [ token (d_vocab) | position (n_ctx) | previous token (d_vocab) | answer (d_vocab) ]

and the weights move one-hots between them (``strength`` sets how sharp each softmax is):

    L0H0  previous-token head: query position p matches key position p - 1; it copies the key's
          token into the "previous token" block.
    L0H1  dead: W_Q = W_K = 0 (uniform attention) and W_O = 0 (writes nothing).
    L1H0  induction head: the query's token matches a key's "previous token" (K-composition with
          L0H0); it copies the key's token into the "answer" block, which W_U reads. A query
          with no match rests on position 0 (half the match strength, through b_Q), whose
          token, BOS (the last id), it does not copy: no match, no prediction.
    L1H1  duplicate-token head: the query's token matches the key's token, minus the key at the
          query's own position; it writes nothing (W_O = 0).

On ``[BOS, r, r]`` with r distinct and never BOS, L0H0's previous-token score, L1H0's induction
score and L1H1's duplicate-token score are 1 up to about exp(-strength / 2).
"""

from __future__ import annotations

import numpy as np

from numpy_impl import Transformer, TransformerConfig


def induction_circuit_model(d_vocab=8, n_ctx=13, strength=60.0):
    """A NumPy Transformer (attn_only, no LayerNorm, learned positions) wired as above."""
    V, C = d_vocab, n_ctx
    token, position, previous, answer = 0, V, V + C, 2 * V + C  # first coordinate of each block
    d_model, d_head = 3 * V + C, V + C
    cfg = TransformerConfig(
        d_vocab=V,
        d_model=d_model,
        n_heads=2,
        d_head=d_head,
        n_layers=2,
        n_ctx=C,
        attn_only=True,
        normalization=None,
        positional="learned",
    )
    model = Transformer(cfg, seed=0)
    s = strength * np.sqrt(d_head)  # scores are divided by sqrt(d_head)
    sd = {name: np.zeros_like(value) for name, value in model.state_dict().items()}
    sd["embed.W_E"][np.arange(V), token + np.arange(V)] = 1.0
    sd["pos_embed.W_pos"][np.arange(C), position + np.arange(C)] = 1.0
    # L0H0: q(p) . k(p') = s [p == p' + 1]; OV copies token -> previous-token block
    Q, K, Vw, O = (sd[f"blocks.0.attn.{w}"] for w in ("W_Q", "W_K", "W_V", "W_O"))
    Q[0, position + np.arange(1, C), np.arange(1, C)] = s
    K[0, position + np.arange(C - 1), np.arange(1, C)] = 1.0
    Vw[0, token + np.arange(V), np.arange(V)] = 1.0
    O[0, np.arange(V), previous + np.arange(V)] = 1.0
    # L1H0: q(token t) . k(previous token t') = s [t == t']; OV copies token -> answer block
    Q, K, Vw, O = (sd[f"blocks.1.attn.{w}"] for w in ("W_Q", "W_K", "W_V", "W_O"))
    Q[0, token + np.arange(V), np.arange(V)] = s
    K[0, previous + np.arange(V), np.arange(V)] = 1.0
    sd["blocks.1.attn.b_Q"][0, V] = s / 2  # every query's score for key position 0: s / 2
    K[0, position + 0, V] = 1.0
    Vw[0, token + np.arange(V - 1), np.arange(V - 1)] = 1.0  # BOS (id V - 1) is not copied
    O[0, np.arange(V), answer + np.arange(V)] = 1.0
    # L1H1: q . k = s ([same token] - [same position]); writes nothing
    Q[1, token + np.arange(V), np.arange(V)] = s
    K[1, token + np.arange(V), np.arange(V)] = 1.0
    Q[1, position + np.arange(C), V + np.arange(C)] = -s
    K[1, position + np.arange(C), V + np.arange(C)] = 1.0
    sd["unembed.W_U"][answer + np.arange(V), np.arange(V)] = 10.0
    model.load_state_dict(sd)
    return model


def bos_repeated_tokens(d_vocab=8, half=6, batch=4, seed=0):
    """[batch, 1 + 2 * half]: BOS (the last token id), then r and r again, r distinct and never
    BOS."""
    rng = np.random.default_rng(seed)
    first = np.stack([rng.permutation(d_vocab - 1)[:half] for _ in range(batch)])  # [batch, half]
    bos = np.full((batch, 1), d_vocab - 1)  # [batch, 1]
    return np.concatenate([bos, first, first], axis=1).astype(np.int64)  # [batch, 1 + 2 * half]
