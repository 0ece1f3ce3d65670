"""Logit lens, direct logit attribution and head ablation, written once for both twins.

Axes: batch, pos (sequence position), layer, head, d_head, d_model, d_vocab.

Each function takes a model of either twin and int tokens [batch, pos] (the logit lens and the
attribution also take a cache from ``run_with_cache``, and are built on its TransformerLens
methods ``accumulated_resid``, ``decompose_resid``, ``stack_head_results`` and ``logit_attrs``);
it reads activations through ``run_with_cache`` or edits them through ``run_with_hooks`` and does
the rest in NumPy.
"Next token" means what the model is trained on: position p predicts tokens[:, p + 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from foundation.lens.hooks import ActivationCache
from numpy_impl.loss import log_softmax

from .common import (
    check_model,
    check_token_array,
    native_like,
    next_token_loss,
    run_cache,
    run_hooked,
    view,
    weights,
)

# ---------------------------------------------------------------------------------------------
# Logit lens (nostalgebraist, 2020)
# ---------------------------------------------------------------------------------------------


@dataclass
class LogitLens:
    """What the unembedding reads from the residual stream after each layer.

    labels:          "embed", "after L0", ..., one per residual state (n_layers + 1)
    logits:          [n_layers + 1, batch, pos, d_vocab]; the last equals the model's output
    next_logprob:    [n_layers + 1, batch, pos - 1] log-probability of the true next token
    next_top1:       [n_layers + 1] fraction of positions whose top logit is the true next token
    """

    labels: list
    logits: np.ndarray
    next_logprob: np.ndarray
    next_top1: np.ndarray

    @property
    def mean_next_logprob(self):
        """[n_layers + 1]: next_logprob averaged over batch and positions."""
        return self.next_logprob.mean(axis=(1, 2))


def _cache_and_tokens(source, tokens, method):
    """(an all-ndarray cache holding its model, tokens [batch, pos]) from a model and tokens, or a
    cache.

    A cache must come from ``run_with_cache`` (it carries the model, whose weights the
    residual-stream methods read); its own tokens are used unless ``tokens`` are given.
    """
    if isinstance(source, ActivationCache):
        if source.model is None:
            raise ValueError(
                f"{method}: the cache has no model; use the cache from model.run_with_cache"
            )
        if not source.has_batch_dim:
            raise ValueError(
                f"{method}: the cache has no batch axis (remove_batch_dim); use one with it"
            )
        tokens = source.tokens if tokens is None else tokens
        if tokens is None:
            raise ValueError(f"{method}: pass tokens (the cache does not hold them)")
        return source.to_numpy(), check_token_array(tokens, source.cfg)
    check_model(source)
    tokens = check_token_array(tokens, source.cfg)
    _, cache = run_cache(source, tokens)
    return cache, tokens


def logit_lens(source, tokens=None):
    """Unembed the residual stream before every layer and at the end: resid -> ln_final -> W_U, b_U.

    ``source``: a model of either twin with ``tokens``, or a cache from ``run_with_cache``. The
    residual states are ``cache.accumulated_resid()``: ``resid_pre`` of each layer (the first is
    the embeddings) and the final ``resid_post``. In a pre-norm model each state goes through
    ``ln_final`` with its own mean and scale (``accumulated_resid(apply_ln=True)``, which
    recomputes the final LayerNorm on every state); post-norm and un-normalised models unembed
    directly. The last entry is the model's output.
    """
    cache, tokens = _cache_and_tokens(source, tokens, "logit_lens")
    cfg = cache.cfg
    if not cfg.unembed:
        raise ValueError("logit_lens needs a model with an unembedding (cfg.unembed=True)")
    if tokens.shape[1] < 2:
        raise ValueError("tokens need at least 2 positions (position p predicts token p + 1)")
    # [n_layers + 1, batch, pos, d_model]
    resid = cache.accumulated_resid(apply_ln=cfg.normalization == "pre")
    # [n_layers + 1, batch, pos, d_vocab]
    logits = resid @ view(cache.model, "W_U") + view(cache.model, "b_U")
    log_probs = log_softmax(logits[:, :, :-1])  # [n_layers + 1, batch, pos - 1, d_vocab]
    targets = tokens[:, 1:]  # [batch, pos - 1]
    next_logprob = np.take_along_axis(
        log_probs, np.broadcast_to(targets[None, ..., None], log_probs.shape[:-1] + (1,)), axis=-1
    )[..., 0]
    # top-1 only when the true token's log-prob beats every other token's: a tie (say, all logits 0)
    # is a miss
    target_logprob = next_logprob[..., None]  # [n_layers + 1, batch, pos - 1, 1]
    # [n_layers + 1, batch, pos - 1]: the target itself counts once
    beaten_or_tied = (log_probs >= target_logprob).sum(axis=-1)
    next_top1 = (beaten_or_tied == 1).mean(axis=(1, 2))  # [n_layers + 1]
    labels = ["embed"] + [f"after L{i}" for i in range(cfg.n_layers)]
    return LogitLens(labels, logits, next_logprob, next_top1)


# ---------------------------------------------------------------------------------------------
# Direct logit attribution
# ---------------------------------------------------------------------------------------------


@dataclass
class LogitAttribution:
    """How much each component writes, directly, into a logit (or a logit difference).

    components:        [n_components] mean direct effect of each labelled component
    component_labels:  "embed", "pos_embed", "0_attn_out", "0_mlp_out", ... (attn_out includes b_O)
    heads:             [n_layers, n_heads] mean direct effect of each head (z_h W_O[h])
    bias:              the constant part (ln_final.b and b_U), not written by any component
    logit:             the mean actual logit (difference); components.sum() + bias equals it
    """

    components: np.ndarray
    component_labels: list
    heads: np.ndarray
    bias: float
    logit: float


def _targets(tokens, d_vocab, answer, wrong):
    """(positions read, answer ids [batch, n], wrong ids [batch, n] or None) for a logit
    (difference)."""
    batch, pos = tokens.shape
    if answer is None:
        if wrong is not None:
            raise ValueError("wrong needs answer: pass the answer tokens too")
        if pos < 2:
            raise ValueError("tokens need at least 2 positions (position p predicts token p + 1)")
        return slice(0, pos - 1), tokens[:, 1:], None
    answer = _token_ids(answer, batch, d_vocab, "answer")[:, None]  # [batch, 1]
    if wrong is not None:
        wrong = _token_ids(wrong, batch, d_vocab, "wrong")[:, None]  # [batch, 1]
    return slice(pos - 1, pos), answer, wrong


def _read_logits(logits, answer, wrong):
    """logits [batch, n, d_vocab] -> logit[answer] (- logit[wrong]) [batch, n]."""
    value = np.take_along_axis(logits, answer[..., None], axis=-1)[..., 0]  # [batch, n]
    if wrong is not None:
        value = value - np.take_along_axis(logits, wrong[..., None], axis=-1)[..., 0]  # [batch, n]
    return value


def _token_ids(ids, batch, d_vocab, name):
    """An int or [batch] ints in [0, d_vocab) -> int ndarray [batch]."""
    ids = np.broadcast_to(np.asarray(ids), (batch,)) if np.ndim(ids) == 0 else np.asarray(ids)
    if not np.issubdtype(ids.dtype, np.integer) or ids.shape != (batch,):
        raise ValueError(
            f"{name} must be a token id or {batch} token ids (one per sequence), got {ids!r}"
        )
    if ids.min() < 0 or ids.max() >= d_vocab:
        raise ValueError(f"{name} must lie in [0, d_vocab={d_vocab}), got {ids!r}")
    return ids


def direct_logit_attribution(source, tokens=None, answer=None, wrong=None):
    """Split a logit into what each component writes directly into the residual stream.

    The final residual stream is a sum, ``cache.decompose_resid()``: embed + pos_embed + each
    layer's attn_out and mlp_out; and attn_out is each head's z_h W_O[h] plus b_O,
    ``cache.stack_head_results()``. ``cache.logit_attrs`` reads each piece along the unembedding
    direction W_U[:, answer] (minus W_U[:, wrong] for a logit difference). In a pre-norm model
    ln_final sits in between; with its cached scale held fixed it is linear (centre, divide by the
    scale, multiply by w), so the pieces plus the constant (ln_final.b and b_U) add up exactly to
    the logit.

    ``source``: a model of either twin with ``tokens``, or a cache from ``run_with_cache``. Default
    target: the true next token at every position. With ``answer`` (an id, or one per sequence) and
    optionally ``wrong``: that logit (difference) at the last position. Needs normalization "pre" or
    None (a post-norm stream is normalised after every block). Component labels are
    TransformerLens's: ``embed``, ``pos_embed``, ``0_attn_out``, ``0_mlp_out``, ...
    """
    source_cfg = source.cfg if isinstance(source, ActivationCache) else check_model(source).cfg
    if not source_cfg.unembed:
        raise ValueError(
            "direct_logit_attribution needs a model with an unembedding (cfg.unembed=True)"
        )
    if source_cfg.normalization == "post":
        raise ValueError(
            "direct_logit_attribution needs normalization 'pre' or None: a post-norm residual "
            "stream is re-normalised after every block, so it is not a sum of component outputs"
        )
    cache, tokens = _cache_and_tokens(source, tokens, "direct_logit_attribution")
    cfg, model = cache.cfg, cache.model
    # answer, wrong: [batch, n]
    positions, answer, wrong = _targets(tokens, cfg.d_vocab, answer, wrong)
    # logit_attrs reads every position; the positions not read get token 0
    right_all = np.zeros(tokens.shape, dtype=np.int64)  # [batch, pos]
    right_all[:, positions] = answer
    wrong_all = None
    if wrong is not None:
        wrong_all = np.zeros(tokens.shape, dtype=np.int64)  # [batch, pos]
        wrong_all[:, positions] = wrong
    pieces, labels = cache.decompose_resid(return_labels=True)  # [component, batch, pos, d_model]
    # [component, batch, n]
    components = cache.logit_attrs(pieces, right_all, wrong_all)[:, :, positions]
    head_pieces = cache.stack_head_results()  # [layer * head, batch, pos, d_model]
    # [layer * head, batch, n]
    heads = cache.logit_attrs(head_pieces, right_all, wrong_all)[:, :, positions]
    # the constant part, written by no component: b_U, and ln_final.b read along the direction
    W_U, b_U = view(model, "W_U"), view(model, "b_U")
    direction, constant = W_U.T[answer], b_U[answer]  # [batch, n, d_model], [batch, n]
    if wrong is not None:
        direction, constant = direction - W_U.T[wrong], constant - b_U[wrong]
    # folded: ln_final.b is in b_U
    if model.cfg.normalization_type == "LN" and model.cfg.normalization == "pre":
        constant = constant + direction @ weights(model)["ln_final.b"]  # [batch, n]
    # [batch, pos, d_model]
    final = cache.accumulated_resid(apply_ln=cfg.normalization == "pre")[-1]
    # [batch, n]: the model's output
    logit = _read_logits((final @ W_U + b_U)[:, positions], answer, wrong)
    return LogitAttribution(
        components.mean(axis=(1, 2)),
        labels,
        heads.mean(axis=(1, 2)).reshape(cfg.n_layers, cfg.n_heads),
        float(constant.mean()),
        float(logit.mean()),
    )


# ---------------------------------------------------------------------------------------------
# Head ablation
# ---------------------------------------------------------------------------------------------


def head_ablation(model, tokens, kind="zero", reference_tokens=None):
    """[n_layers, n_heads]: next-token loss with one head ablated, minus the clean loss.

    The head's output z_h (``hook_z``, before W_O) is replaced at every position by zero
    (``kind="zero"``) or by its mean over the batch and positions of ``reference_tokens``
    (``kind="mean"``; default: the same tokens). Positive = the model needs that head.
    """
    check_model(model)
    cfg = model.cfg
    if kind not in ("zero", "mean"):
        raise ValueError(f"kind must be 'zero' or 'mean', got {kind!r}")
    if not cfg.unembed:
        raise ValueError("head_ablation measures the next-token loss: it needs cfg.unembed=True")
    tokens = check_token_array(tokens, cfg)
    if tokens.shape[1] < 2:
        raise ValueError("tokens need at least 2 positions (position p predicts token p + 1)")
    logits, _ = run_cache(model, tokens, names_filter=[])
    clean = next_token_loss(logits, tokens)
    if kind == "mean":
        reference = (
            tokens
            if reference_tokens is None
            else check_token_array(reference_tokens, cfg, "reference_tokens")
        )
        _, cache = run_cache(model, reference, names_filter=lambda name: name.endswith("hook_z"))
        # each [head, d_head]
        means = [cache["z", layer].mean(axis=(0, 1)) for layer in range(cfg.n_layers)]
    change = np.zeros((cfg.n_layers, cfg.n_heads))  # [n_layers, n_heads]
    for layer in range(cfg.n_layers):
        for head in range(cfg.n_heads):
            value = 0.0 if kind == "zero" else means[layer][head]  # [d_head] or a scalar

            def ablate(z, hook, head=head, value=value):
                z[:, :, head] = native_like(value, z)
                return z

            ablated = run_hooked(model, tokens, [(f"blocks.{layer}.attn.hook_z", ablate)])
            change[layer, head] = next_token_loss(ablated, tokens) - clean
    return change
