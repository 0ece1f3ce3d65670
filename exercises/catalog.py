"""The exercises, easiest first, and how to build each component with random weights and inputs.

Both the finite-difference tour (``python demo.py gradcheck``) and the exercise checker
build components through here, from whichever package they are given: the reference
``numpy_impl``, a learner's copy of it, or ``torch_impl``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from numpy_impl.config import TransformerConfig
from numpy_impl.gradcheck import randomize_parameters

# A small config: every size distinct enough to catch a swapped axis, d_vocab small so
# that tokens repeat in a batch (repeats must add up in W_E's gradient), and the checked
# sequences one shorter than n_ctx (so slicing the mask or W_pos to pos matters).
BASE = dict(d_vocab=7, d_model=8, n_heads=2, d_head=3, d_mlp=12, n_layers=2, n_ctx=6)
BATCH, POS = 3, 5


@dataclass(frozen=True)
class Variant:
    """One setting an exercise is checked under: config fields, and (loss only) weighted tokens."""

    label: str
    overrides: dict = field(default_factory=dict)
    weighted: bool = False

    def config(self, package=None):
        """The TransformerConfig of this variant, from ``package`` (a learner's copy has its own class)."""
        config_class = TransformerConfig if package is None else package.TransformerConfig
        return config_class(**{**BASE, **self.overrides})


@dataclass(frozen=True)
class Exercise:
    key: str          # the name on the command line: python demo.py exercises check DIR <key>
    cls: str          # the class, same name in numpy_impl and torch_impl
    file: str         # where its backward lives, inside the package
    what: str         # what makes it easy or hard, in a few words
    variants: tuple   # settings it is checked under (each must pass)


EXERCISES = (
    Exercise("embedding", "TokenEmbedding", "embedding.py", "a row lookup; repeated tokens add up",
             (Variant("default"),)),
    Exercise("positional", "LearnedPositionalEmbedding", "positional.py", "one row per position, shared by the batch",
             (Variant("default"),)),
    Exercise("unembed", "Unembed", "unembed.py", "one matrix product and a bias",
             (Variant("default"),)),
    Exercise("feedforward", "FeedForward", "feedforward.py", "two matrix products around ReLU or GELU",
             (Variant("relu", {"act_fn": "relu"}), Variant("gelu_new", {"act_fn": "gelu_new"}))),
    Exercise("loss", "CrossEntropyLoss", "loss.py", "log-softmax and a weighted mean",
             (Variant("unweighted"), Variant("weighted", weighted=True))),
    Exercise("layernorm", "LayerNorm", "layernorm.py", "x reaches the output three ways: directly, via the mean, via the variance",
             (Variant("default"),)),
    Exercise("attention", "MultiHeadAttention", "attention.py", "the softmax Jacobian, the causal mask, heads",
             (Variant("causal", {"causal": True}), Variant("bidirectional", {"causal": False}))),
    Exercise("block", "TransformerBlock", "block.py", "residual branches that add up; where the LayerNorms sit",
             (Variant("pre", {"normalization": "pre"}),
              Variant("post", {"normalization": "post", "act_fn": "relu"}),
              Variant("none", {"normalization": None}),
              Variant("pre, attn_only", {"normalization": "pre", "attn_only": True}),
              Variant("post, attn_only", {"normalization": "post", "attn_only": True}))),
    Exercise("model", "Transformer", "model.py", "the whole chain, embeddings to logits",
             (Variant("pre, learned, logits", {"normalization": "pre"}),
              Variant("post, sinusoidal, resid out", {"normalization": "post", "positional": "sinusoidal",
                                                      "causal": False, "unembed": False, "act_fn": "relu"}),
              Variant("none, attn_only", {"normalization": None, "attn_only": True}))),
)

BY_KEY = {exercise.key: exercise for exercise in EXERCISES}
BY_CLASS = {exercise.cls: exercise for exercise in EXERCISES}

TOKEN_INPUT = ("TokenEmbedding", "LearnedPositionalEmbedding", "SinusoidalPositionalEncoding", "Transformer")


def build(package, cls, cfg, seed=0):
    """A NumPy component of class ``cls`` from ``package`` (the reference or a learner's copy), all weights random."""
    if cls == "CrossEntropyLoss":
        return getattr(package, cls)()
    if cls == "Transformer":
        module = package.Transformer(cfg, seed=seed)
    else:
        module = getattr(package, cls)(cfg, seed)
    return randomize_parameters(module, seed + 1)


def make_inputs(cls, cfg, seed=0, weighted=False):
    """Random forward inputs for ``cls``: tokens, x [batch, pos, d_model], or (logits, targets[, weights])."""
    rng = np.random.default_rng(seed)
    if cls in TOKEN_INPUT:
        return (rng.integers(0, cfg.d_vocab, (BATCH, POS)),)  # [batch, pos]
    if cls == "CrossEntropyLoss":
        logits = rng.standard_normal((BATCH, POS, cfg.d_vocab))  # [batch, pos, d_vocab]
        targets = rng.integers(0, cfg.d_vocab, (BATCH, POS))  # [batch, pos]
        if not weighted:
            return logits, targets
        weights = rng.uniform(0.0, 2.0, (BATCH, POS))  # [batch, pos]
        return logits, targets, weights
    # each row gets its own offset and spread, so LayerNorm's mean and variance both matter
    offset = rng.standard_normal((BATCH, POS, 1))  # [batch, pos, 1]
    spread = rng.uniform(0.5, 2.0, (BATCH, POS, 1))  # [batch, pos, 1]
    return (offset + spread * rng.standard_normal((BATCH, POS, cfg.d_model)),)  # [batch, pos, d_model]
