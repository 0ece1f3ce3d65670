"""The exercises, easiest first: which class, which file, and the settings each is checked under.

Components are built by ``gradcheck.factory`` (random weights, random inputs), the same
factory the finite-difference tour uses.
"""

from __future__ import annotations

from dataclasses import dataclass

from gradcheck.factory import Variant


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
             (Variant("relu", {"act_fn": "relu"}), Variant("gelu_new", {"act_fn": "gelu_new"}),
              Variant("gelu", {"act_fn": "gelu"}))),
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
