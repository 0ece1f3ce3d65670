"""Mechanistic interpretability on either twin, written once (NumPy inside, torch at the boundary).

from interp import induction_scores, plot_head_scores
scores = induction_scores(model)            # model: numpy_impl or torch_impl Transformer
plot_head_scores(scores, "induction.png", title="Induction scores")
"""

from .analyses import (
    LogitAttribution,
    LogitLens,
    direct_logit_attribution,
    head_ablation,
    logit_lens,
)
from .attribution import (
    EdgeAttribution,
    NodeAttribution,
    attribution_patching,
    edge_attribution_patching,
)
from .circuits import (
    composition_score,
    composition_scores,
    copying_score,
    copying_scores,
    full_ov_circuit,
    full_qk_circuit,
    ov_matrix,
    positional_qk_circuit,
    qk_matrix,
)
from .common import repeated_random_tokens, weights
from .patching import (
    logit_diff,
    patch_head_positions,
    patch_heads,
    patch_positions,
    patching_setup,
)
from .plots import (
    plot_attention_grid,
    plot_attention_head,
    plot_attribution,
    plot_attribution_patching,
    plot_composition,
    plot_head_scores,
    plot_logit_lens,
    plot_matrix,
    plot_patching,
)
from .scores import (
    all_head_scores,
    duplicate_token_scores,
    head_scores,
    induction_scores,
    pattern_scores,
    previous_token_scores,
)

__all__ = [
    "EdgeAttribution",
    "LogitAttribution",
    "NodeAttribution",
    "LogitLens",
    "all_head_scores",
    "attribution_patching",
    "composition_score",
    "composition_scores",
    "copying_score",
    "copying_scores",
    "direct_logit_attribution",
    "duplicate_token_scores",
    "edge_attribution_patching",
    "full_ov_circuit",
    "full_qk_circuit",
    "head_ablation",
    "head_scores",
    "induction_scores",
    "logit_diff",
    "logit_lens",
    "ov_matrix",
    "patch_head_positions",
    "patch_heads",
    "patch_positions",
    "patching_setup",
    "pattern_scores",
    "plot_attention_grid",
    "plot_attention_head",
    "plot_attribution",
    "plot_attribution_patching",
    "plot_composition",
    "plot_head_scores",
    "plot_logit_lens",
    "plot_matrix",
    "plot_patching",
    "positional_qk_circuit",
    "previous_token_scores",
    "qk_matrix",
    "repeated_random_tokens",
    "weights",
]
