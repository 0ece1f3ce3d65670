"""Build any component with random weights and random inputs: the one factory for every checker.

The finite-difference tour (``python demo.py gradcheck``), the exercise checker and the tests
build components through here, from whichever package they are given: the reference
``numpy_impl``, a learner's copy of it, or ``torch_impl``.

Axes: batch, pos (sequence position), d_model (residual width), d_vocab (vocabulary).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from foundation.contract.config import TransformerConfig

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
        """The TransformerConfig of this variant, from ``package`` (a learner's copy has its own
        class)."""
        config_class = TransformerConfig if package is None else package.TransformerConfig
        return config_class(**{**BASE, **self.overrides})


TOKEN_INPUT = (
    "TokenEmbedding",
    "LearnedPositionalEmbedding",
    "SinusoidalPositionalEncoding",
    "Transformer",
)


def build(package, cls, cfg, seed=0):
    """A NumPy component of class ``cls`` from ``package`` (the reference or a learner's copy), all
    weights random."""
    if cls == "CrossEntropyLoss":
        return getattr(package, cls)()
    if cls == "Transformer":
        module = package.Transformer(cfg, seed=seed)
    elif cls == "MultiHeadAttention":  # grouped-query when cfg.n_key_value_heads is set
        module = package.MultiHeadAttention.for_config(cfg, seed)
    else:
        module = getattr(package, cls)(cfg, seed)
    return randomize_parameters(module, seed + 1)


def make_inputs(cls, cfg, seed=0, weighted=False, batch=BATCH, pos=POS):
    """Random forward inputs for ``cls``: tokens, x [batch, pos, d_model], or (logits,
    targets[, weights])."""
    rng = np.random.default_rng(seed)
    if cls in TOKEN_INPUT:
        return (rng.integers(0, cfg.d_vocab, (batch, pos)),)  # [batch, pos]
    if cls == "CrossEntropyLoss":
        logits = rng.standard_normal((batch, pos, cfg.d_vocab))  # [batch, pos, d_vocab]
        targets = rng.integers(0, cfg.d_vocab, (batch, pos))  # [batch, pos]
        if not weighted:
            return logits, targets
        weights = rng.uniform(0.0, 2.0, (batch, pos))  # [batch, pos]
        return logits, targets, weights
    # each row gets its own offset and spread, so LayerNorm's mean and variance both matter
    offset = rng.standard_normal((batch, pos, 1))  # [batch, pos, 1]
    spread = rng.uniform(0.5, 2.0, (batch, pos, 1))  # [batch, pos, 1]
    # [batch, pos, d_model]
    return (offset + spread * rng.standard_normal((batch, pos, cfg.d_model)),)


def randomize_parameters(module, seed=0):
    """Give every parameter a random value, as a trained model might have: never ones, never zeros.

    LayerNorm w = 1 + 0.3 N(0, 1), biases 0.3 N(0, 1), embeddings N(0, 1), weight matrices
    N(0, 1 / fan_in). All-ones LayerNorm weights and zero biases hide real bugs in a backward.
    """
    if not callable(getattr(module, "named_parameters", None)):
        raise TypeError(f"module must be a numpy_impl Module, got {type(module).__name__}")
    rng = np.random.default_rng(seed)
    for param_name, p in module.named_parameters():
        # grouped-query attention's _W_K, _b_K, ...: as W_K, b_K
        kind = param_name.split(".")[-1].lstrip("_")
        noise = rng.standard_normal(p.shape)  # [same shape as the parameter]
        if kind == "w":
            value = 1.0 + 0.3 * noise
        elif kind.startswith("b"):
            value = 0.3 * noise
        elif kind in ("W_E", "W_pos"):
            value = noise
        else:
            value = noise / np.sqrt(p.shape[-2])
        p.data[...] = value
    return module
