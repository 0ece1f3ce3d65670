"""Folding each LayerNorm's w and b into the weights that read its output (TransformerLens's
``fold_ln``).

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
    """{name: ndarray} of a pre-norm model -> a new dict with every LayerNorm's w and b folded in
    (and gone)."""
    folded = dict(state_dict)
    for i in range(cfg.n_layers):
        block = f"blocks.{i}."
        w, b = folded.pop(block + "ln1.w"), folded.pop(block + "ln1.b")  # [d_model]
        for name in ("Q", "K", "V"):
            W = folded[block + f"attn.W_{name}"]  # [head, d_model, d_head]
            folded[block + f"attn.b_{name}"] = folded[block + f"attn.b_{name}"] + np.einsum(
                "m,hmd->hd", b, W
            )
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
    """W less its mean over the d_model axis (when ``center``): the part a mean-zero input can
    see."""
    return W - W.mean(axis=d_model_axis, keepdims=True) if center else W


def center_writing_weights(state_dict, cfg):
    """{name: ndarray} -> a new dict whose weights that write to the residual stream have mean zero
    over d_model (TransformerLens's ``center_writing_weights``): W_E, W_pos, each W_O and b_O, each
    W_out and b_out.

    Every LayerNorm that reads the residual stream removes its mean first, so a part of each write
    along the all-ones direction changes no LayerNorm's output: the logits stay the same (up to
    rounding), and the residual stream holds only the part the model can see.
    """
    centered = dict(state_dict)
    names = ["embed.W_E"] + (["pos_embed.W_pos"] if "pos_embed.W_pos" in state_dict else [])
    for i in range(cfg.n_layers):
        names += [f"blocks.{i}.attn.W_O", f"blocks.{i}.attn.b_O"]
        if not cfg.attn_only:
            names += [f"blocks.{i}.mlp.W_out", f"blocks.{i}.mlp.b_out"]
    for name in names:
        centered[name] = _centered(centered[name], -1, True)  # d_model is the last axis of each
    return centered


def center_unembed(state_dict):
    """{name: ndarray} -> a new dict with W_U and b_U less their mean over the vocabulary
    (TransformerLens's ``center_unembed``): softmax does not change when every logit moves alike."""
    centered = dict(state_dict)
    centered["unembed.W_U"] = _centered(centered["unembed.W_U"], -1, True)  # [d_model, d_vocab]
    centered["unembed.b_U"] = _centered(centered["unembed.b_U"], -1, True)  # [d_vocab]
    return centered


def fold_value_biases(state_dict, cfg):
    """{name: ndarray} -> a new dict with each b_V folded into b_O (TransformerLens's
    ``fold_value_biases``).

    Each pattern row sums to 1, so b_V[h] reaches the output as b_V[h] @ W_O[h] at every position:
        b_O += sum over heads of b_V[h] @ W_O[h],   b_V = 0
    The attention output stays the same (up to rounding); hook_v and hook_z lose the bias.
    """
    folded = dict(state_dict)
    for i in range(cfg.n_layers):
        block = f"blocks.{i}.attn."
        b_V = folded[block + "b_V"]  # [head, d_head]
        W_O = folded[block + "W_O"]  # [head, d_head, d_model]
        # [d_model]
        folded[block + "b_O"] = folded[block + "b_O"] + np.einsum("hd,hdm->m", b_V, W_O)
        folded[block + "b_V"] = np.zeros_like(b_V)  # [head, d_head]
    return folded
