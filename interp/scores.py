"""Attention-head scores per [layer, head]: previous-token, duplicate-token and induction.

Axes: batch, layer, head, q_pos / k_pos (query and key positions).

Each score uses the 0/1 "detection patterns" of TransformerLens's head detector, which mark, for
every query position, the key positions a head of that kind attends to, and measures the
attention mass a head puts there the way TransformerLens's induction demo measures its stripe
(the mean of the diagonal over the queries that have one). For query q with tokens t:

    previous-token:   key q - 1
    duplicate-token:  every earlier key k < q with t[k] == t[q]
    induction:        every key k < q whose predecessor matches, t[k - 1] == t[q]

    score = mean over (batch, queries with at least one such key)
            of sum_k pattern[q, k] * target[q, k]

so a head that always attends to its targets scores 1 and one that never does scores 0.
On repeated random tokens ``[r_1 .. r_n, r_1 .. r_n]`` (no repeats inside a half) the duplicate
and induction targets are the single stripes k = q - n and k = q - n + 1 of TransformerLens's
induction demo, averaged over the second half; queries without a target (the first half, and
query 0 for previous-token) are left out instead of counting as zero. (The head detector's own
"mul" score divides by the attention of every query instead, so there a perfect induction
head on ``[r, r]`` scores about 0.5, not 1; the induction detection pattern here also leaves
out the diagonal k == q, which cannot be an earlier copy's successor.)
"""

from __future__ import annotations

import numpy as np

from foundation.lens.hooks import ActivationCache

from .common import check_token_array, default_repeated_tokens, head_patterns, is_model, run_cache

KINDS = ("previous_token", "duplicate_token", "induction")


def previous_token_targets(tokens):
    """[batch, q_pos, k_pos] bool: key q - 1 for every query q >= 1."""
    batch, pos = tokens.shape
    q, k = np.arange(pos)[:, None], np.arange(pos)[None, :]  # [pos, 1], [1, pos]
    return np.broadcast_to(k == q - 1, (batch, pos, pos))  # [batch, q_pos, k_pos]


def duplicate_token_targets(tokens):
    """[batch, q_pos, k_pos] bool: earlier keys holding the query's token."""
    pos = tokens.shape[1]
    same = tokens[:, :, None] == tokens[:, None, :]  # [batch, q_pos, k_pos]
    earlier = np.tril(np.ones((pos, pos), dtype=bool), k=-1)  # [q_pos, k_pos]: k < q
    return same & earlier  # [batch, q_pos, k_pos]


def induction_targets(tokens):
    """[batch, q_pos, k_pos] bool: earlier keys whose previous token is the query's token."""
    duplicate = duplicate_token_targets(tokens)  # [batch, q_pos, k_pos]: t[k] == t[q], k < q
    shifted = np.zeros_like(duplicate)  # [batch, q_pos, k_pos]
    shifted[:, :, 1:] = duplicate[:, :, :-1]  # target k when t[k - 1] == t[q], k - 1 < q
    earlier = np.tril(np.ones(duplicate.shape[1:], dtype=bool), k=-1)  # [q_pos, k_pos]: k < q
    return shifted & earlier  # [batch, q_pos, k_pos]


TARGETS = {
    "previous_token": previous_token_targets,
    "duplicate_token": duplicate_token_targets,
    "induction": induction_targets,
}


def pattern_scores(patterns, targets):
    """patterns [..., batch, head, q_pos, k_pos], targets [batch, q_pos, k_pos] bool -> [..., head].

    The attention mass on the targets, averaged over (batch, queries that have a target).
    """
    patterns, targets = np.asarray(patterns), np.asarray(targets, dtype=bool)
    if (
        patterns.ndim < 4
        or patterns.shape[-4] != targets.shape[0]
        or patterns.shape[-2:] != targets.shape[1:]
    ):
        raise ValueError(
            f"patterns [..., batch, head, q_pos, k_pos] {patterns.shape} do not match "
            f"targets [batch, q_pos, k_pos] {targets.shape}"
        )
    has_target = targets.any(axis=-1)  # [batch, q_pos]
    if not has_target.any():
        raise ValueError(
            "tokens: no query position has a target key (e.g. no token repeats); "
            "use repeated random tokens"
        )
    mass = (patterns * targets[:, None]).sum(axis=-1)  # [..., batch, head, q_pos]
    return (mass * has_target[:, None]).sum(axis=(-3, -1)) / has_target.sum()  # [..., head]


def head_scores(source, kind, tokens=None, batch=16, seed=0):
    """[n_layers, n_heads] score of ``kind`` ("previous_token", "duplicate_token" or "induction").

    ``source`` is a model of either twin, or an ``ActivationCache`` holding every layer's
    ``hook_pattern``. With a model and no ``tokens``, it runs on ``batch`` sequences of repeated
    random tokens filling the context (``interp.common.default_repeated_tokens``, ``seed``).
    With a cache, ``tokens`` default to the ones the cache was made from.
    """
    return all_head_scores(source, tokens, batch=batch, seed=seed, kinds=(kind,))[kind]


def all_head_scores(source, tokens=None, batch=16, seed=0, kinds=KINDS):
    """{kind: [n_layers, n_heads]} for several kinds from one run (see ``head_scores``)."""
    unknown = [kind for kind in kinds if kind not in TARGETS]
    if unknown:
        raise ValueError(f"kind must be one of {KINDS}, got {unknown[0]!r}")
    if is_model(source):
        if tokens is None:
            tokens = default_repeated_tokens(source.cfg, batch=batch, seed=seed)
        tokens = check_token_array(tokens, source.cfg)
        _, cache = run_cache(
            source, tokens, names_filter=lambda name: name.endswith("hook_pattern")
        )
    elif isinstance(source, ActivationCache):
        cache = source
        if tokens is None:
            if cache.tokens is None:
                raise ValueError("tokens: this cache does not record its tokens; pass tokens")
            tokens = cache.tokens
        tokens = check_token_array(tokens, cache.cfg)
    else:
        raise TypeError(
            f"source must be a Transformer of either twin or an ActivationCache, got "
            f"{type(source).__name__}"
        )
    patterns = head_patterns(cache)  # [layer, batch, head, q_pos, k_pos]
    if patterns.shape[1] != tokens.shape[0] or patterns.shape[-1] != tokens.shape[1]:
        raise ValueError(
            f"tokens {tokens.shape} do not match the cached patterns' [batch, pos] "
            f"{patterns.shape[1:4:2]}"
        )
    return {kind: pattern_scores(patterns, TARGETS[kind](tokens)) for kind in kinds}


def previous_token_scores(source, tokens=None, batch=16, seed=0):
    """[n_layers, n_heads]: attention to the previous position (1 = a perfect previous-token
    head)."""
    return head_scores(source, "previous_token", tokens, batch, seed)


def duplicate_token_scores(source, tokens=None, batch=16, seed=0):
    """[n_layers, n_heads]: attention to earlier copies of the current token."""
    return head_scores(source, "duplicate_token", tokens, batch, seed)


def induction_scores(source, tokens=None, batch=16, seed=0):
    """[n_layers, n_heads]: attention to the token after an earlier copy of the current token."""
    return head_scores(source, "induction", tokens, batch, seed)


# What the tours and their figures share, so that a score is computed once and worded one way.
# a head scoring above this puts most of its attention on its targets: "a clear head"
CLEAR_HEAD = 0.5
SCORE_BATCH = 128  # sequences the tours score heads on
KIND_NAMES = {
    "previous_token": "previous-token",
    "duplicate_token": "duplicate-token",
    "induction": "induction",
}
KIND_TARGETS = {
    "previous_token": "attention on the position just before",
    "duplicate_token": "attention on earlier copies of the token",
    "induction": "attention on the token after the earlier copy",
}


def scoring_tokens(cfg, seed=0):
    """The tokens the tours (induction, interp) score heads on: SCORE_BATCH sequences of random
    tokens, then the same tokens again, filling n_ctx (drawn with ``seed + 1``, a stream apart
    from the training data's ``seed``)."""
    return default_repeated_tokens(cfg, batch=SCORE_BATCH, seed=seed + 1)


def scoring_data(half, batch=SCORE_BATCH):
    """How a figure's title names the scoring tokens."""
    return f"{batch} sequences of {half} random tokens, then the same {half} again"


def best_head(grid, first_layer=0):
    """(layer, head, score) of the highest entry of a [n_layers, n_heads] grid, from ``first_layer``
    up."""
    grid = np.asarray(grid)[first_layer:]
    layer, head = np.unravel_index(np.argmax(grid), grid.shape)
    return int(layer) + first_layer, int(head), float(grid[layer, head])


def head_verdict(kind, grid, first_layer=0):
    """One sentence on the best head of ``kind``: a clear head (score above CLEAR_HEAD) or none."""
    layer, head, value = best_head(grid, first_layer)
    name = KIND_NAMES[kind]
    if value > CLEAR_HEAD:
        return f"layer {layer}, head {head} is a clear {name} head (score {value:.2f}; 1 = always)"
    return (
        f"no clear {name} head: the highest {name} score is {value:.2f} (layer {layer}, head "
        f"{head}); "
        f"a clear one scores above {CLEAR_HEAD}"
    )
