"""Mechanistic interpretability on either twin, written once (NumPy inside, torch at the boundary).

    from interp import induction_scores, plot_head_scores
    scores = induction_scores(model)            # model: numpy_impl or torch_impl Transformer
    plot_head_scores(scores, "induction.png", title="Induction scores")
"""

from .common import repeated_random_tokens, weights
from .plots import plot_attention_grid, plot_attention_head, plot_head_scores
from .scores import (
    all_head_scores,
    duplicate_token_scores,
    head_scores,
    induction_scores,
    pattern_scores,
    previous_token_scores,
)

__all__ = [
    "all_head_scores",
    "duplicate_token_scores",
    "head_scores",
    "induction_scores",
    "pattern_scores",
    "plot_attention_grid",
    "plot_attention_head",
    "plot_head_scores",
    "previous_token_scores",
    "repeated_random_tokens",
    "weights",
]
