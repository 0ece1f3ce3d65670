"""Folding each LayerNorm's w and b into the weights that read its output (TransformerLens's ``fold_ln``).

Axes: head, d_model, d_head, d_mlp, d_vocab.

A pre-norm LayerNorm feeds only the matrices right after it, and each of them is linear, so

    (normalized * w + b) @ W + b_W  =  normalized @ (w[:, None] * W)  +  (b @ W + b_W)

The LayerNorm keeps its centring and scaling (``LayerNormPre``) and the folded matrix and bias
do the rest: ln1 into W_Q, W_K, W_V (each head's [d_model, d_head] slice) and b_Q, b_K, b_V; ln2
into W_in and b_in; ln_final into W_U and b_U.

Centring (``center_weights``, TransformerLens's default): ``normalized`` has mean zero over
d_model, so it is orthogonal to the all-ones vector and a folded matrix's mean over its d_model
axis contributes nothing; removing it leaves the same outputs (up to rounding) and the same
readings as a TransformerLens model loaded with ``fold_ln=True``.

Works on {state_dict key: ndarray}; the models' ``fold_layer_norm`` swaps the LayerNorms for
``LayerNormPre`` and loads the result.
"""

from __future__ import annotations

import numpy as np


def fold_layer_norm_weights(state_dict, cfg, center_weights=True):
    """{name: ndarray} of a pre-norm model -> a new dict with every LayerNorm's w and b folded in (and gone)."""
    folded = dict(state_dict)
    for i in range(cfg.n_layers):
        block = f"blocks.{i}."
        w, b = folded.pop(block + "ln1.w"), folded.pop(block + "ln1.b")  # [d_model]
        for name in ("Q", "K", "V"):
            W = folded[block + f"attn.W_{name}"]  # [head, d_model, d_head]
            folded[block + f"attn.b_{name}"] = folded[block + f"attn.b_{name}"] + np.einsum("m,hmd->hd", b, W)
            folded[block + f"attn.W_{name}"] = _centered(w[None, :, None] * W, -2, center_weights)
        if not cfg.attn_only:
            w, b = folded.pop(block + "ln2.w"), folded.pop(block + "ln2.b")  # [d_model]
            W_in = folded[block + "mlp.W_in"]  # [d_model, d_mlp]
            folded[block + "mlp.b_in"] = folded[block + "mlp.b_in"] + b @ W_in
            folded[block + "mlp.W_in"] = _centered(w[:, None] * W_in, 0, center_weights)
    w, b = folded.pop("ln_final.w"), folded.pop("ln_final.b")  # [d_model]
    W_U = folded["unembed.W_U"]  # [d_model, d_vocab]
    folded["unembed.b_U"] = folded["unembed.b_U"] + b @ W_U
    folded["unembed.W_U"] = _centered(w[:, None] * W_U, 0, center_weights)
    return folded


def _centered(W, d_model_axis, center):
    """W less its mean over the d_model axis (when ``center``): the part a mean-zero input can see."""
    return W - W.mean(axis=d_model_axis, keepdims=True) if center else W
