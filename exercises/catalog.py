"""The exercises, easiest first: which class, which file, the settings each is checked under.

Every exercise is checked under two size sets. Within each, every size differs from every other
(but pos = n_ctx in the second), and no size of one set is the same axis's size in the other:

    first    batch 5, pos 6, n_ctx 7, heads 3, d_head 8, d_model 10, d_mlp 11, d_vocab 13
    second   batch 1, pos 9 = n_ctx 9, heads 5, d_head 6, d_model 15, d_mlp 7, d_vocab 11

none 2 or 4 (whose square roots and halves would read as the constants 2 and 1/2), so a wrong
constant factor, a transposed shape or a sum over the wrong axis names the one size that
explains it, and a size written into the code as a number (``W_pos.grad[:6]``, ``math.sqrt(8)``,
``x.reshape(30, 10)``) fails the second set: batch 1 (a lone sequence) and the longest input
the model takes (pos = n_ctx: the whole mask, every row of W_pos).

Grouped-query variants (``n_key_value_heads`` set) take their heads from the set's ``grouped``
sizes instead, so that a group is a real group (more than one head, fewer than all): 9 query heads
sharing 3 key/value heads in the first set, 10 sharing 5 in the second. With one shared head, or
one head per group, ``np.repeat`` and ``np.tile`` give the same heads, and a sum over the wrong
grouping could not be told from the right one.
"""

from __future__ import annotations

from dataclasses import dataclass

from gradcheck.factory import Variant


@dataclass(frozen=True)
class SizeSet:
    """The sizes of one checked run: the config's, and the input's batch and pos."""

    label: str
    config: dict
    batch: int
    pos: int
    grouped: dict = None  # n_heads and n_key_value_heads for a grouped-query variant

    @property
    def axis_names(self):
        """{size: axis name} (pos before n_ctx where they are equal)."""
        # a 1 is as often keepdims' as batch
        names = {self.batch: "batch"} if self.batch > 1 else {}
        names[self.pos] = "pos"
        for key, axis in (
            ("n_ctx", "n_ctx"),
            ("n_heads", "head"),
            ("d_head", "d_head"),
            ("d_model", "d_model"),
            ("d_mlp", "d_mlp"),
            ("d_vocab", "d_vocab"),
        ):
            names.setdefault(self.config[key], axis)
        if self.config.get("n_key_value_heads") is not None:  # grouped: the shared k/v heads
            names.setdefault(self.config["n_key_value_heads"], "kv_head")
        return names

    def words(self):
        """ "batch 5, pos 6, n_ctx 7, ..." for a message."""
        c = self.config
        return (
            f"batch {self.batch}, pos {self.pos}, n_ctx {c['n_ctx']}, heads {c['n_heads']}, "
            f"d_head {c['d_head']}, d_model {c['d_model']}, d_mlp {c['d_mlp']}, "
            f"d_vocab {c['d_vocab']}"
        )


SIZE_SETS = (
    SizeSet(
        "sizes 1",
        dict(d_vocab=13, d_model=10, n_heads=3, d_head=8, d_mlp=11, n_layers=2, n_ctx=7),
        batch=5,
        pos=6,
        grouped=dict(n_heads=9, n_key_value_heads=3),  # groups of 3
    ),
    SizeSet(
        "sizes 2",
        dict(d_vocab=11, d_model=15, n_heads=5, d_head=6, d_mlp=7, n_layers=2, n_ctx=9),
        batch=1,
        pos=9,
        grouped=dict(n_heads=10, n_key_value_heads=5),  # groups of 2
    ),
)
SIZES = SIZE_SETS[0].config
# the first set's [batch, pos]: pos one short of n_ctx
BATCH, POS = SIZE_SETS[0].batch, SIZE_SETS[0].pos
AXIS_NAMES = SIZE_SETS[0].axis_names  # {size: axis} of the first set, where most hints are made


# the Llama family's settings, for its components' exercises
LLAMA = {
    "normalization_type": "RMS",
    "eps": 1e-6,
    "positional_embedding_type": "rotary",
    "act_fn": "silu",
    "gated_mlp": True,
    "mlp_bias": False,
    "attn_bias": False,
}
# GPT-J's pairs, side by side, on part of each head (4 of d_head: the rest passes unturned)
ROTARY_PARTIAL = {
    "positional_embedding_type": "rotary",
    "rotary_adjacent_pairs": True,
    "rotary_dim": 4,
}
# GPT-NeoX's block: attention and the MLP side by side on the same input, partial rotary
NEOX = {
    "positional_embedding_type": "rotary",
    "rotary_dim": 4,
    "parallel_attn_mlp": True,
    "act_fn": "gelu",
}


# grouped-query attention: the set's grouped heads take the place of its heads (SizeSet.grouped)
GROUPED = {"n_key_value_heads": "grouped"}


def _grouped(overrides, sizes):
    """``overrides`` with a grouped variant's heads taken from ``sizes`` (a SizeSet)."""
    if "n_key_value_heads" not in overrides:
        return overrides
    return {**overrides, **sizes.grouped}


def checked(label, overrides=None, weighted=False):
    """A Variant with the first set's sizes and ``overrides`` on top (``resized``: another
    set's)."""
    return Variant(label, _grouped({**SIZES, **(overrides or {})}, SIZE_SETS[0]), weighted)


def resized(variant, sizes):
    """``variant`` with the config sizes of ``sizes`` (a SizeSet) in place of the first set's."""
    overrides = _grouped({**variant.overrides, **sizes.config}, sizes)
    return Variant(variant.label, overrides, variant.weighted)


@dataclass(frozen=True)
class Exercise:
    key: str  # the name on the command line: python demo.py exercises check DIR <key>
    cls: str  # the class, same name in numpy_impl and torch_impl
    file: str  # where its backward lives, inside the package
    what: str  # what makes it easy or hard, in a few words
    variants: tuple  # settings it is checked under (each must pass)
    steps: tuple = ()  # names of its ``# EXERCISE STEP`` regions, each also checked on its own

    def step_keys(self):
        return [f"{self.key}.{step}" for step in self.steps]


EXERCISES = (
    Exercise(
        "embedding",
        "TokenEmbedding",
        "embedding.py",
        "a row lookup; repeated tokens add up",
        (checked("default"),),
    ),
    Exercise(
        "positional",
        "LearnedPositionalEmbedding",
        "positional.py",
        "one row per position, shared by the batch",
        (checked("default"),),
    ),
    Exercise(
        "unembed", "Unembed", "unembed.py", "one matrix product and a bias", (checked("default"),)
    ),
    Exercise(
        "feedforward",
        "FeedForward",
        "feedforward.py",
        "two matrix products around ReLU or GELU",
        (
            checked("relu", {"act_fn": "relu"}),
            checked("gelu_new", {"act_fn": "gelu_new"}),
            checked("gelu", {"act_fn": "gelu"}),
        ),
    ),
    Exercise(
        "loss",
        "CrossEntropyLoss",
        "loss.py",
        "log-softmax and a weighted mean",
        (checked("unweighted"), checked("weighted", weighted=True)),
    ),
    Exercise(
        "layernorm",
        "LayerNorm",
        "layernorm.py",
        "x reaches the output three ways: directly, via the mean, via the variance",
        (checked("default"),),
    ),
    Exercise(
        "rmsnorm",
        "RMSNorm",
        "rmsnorm.py",
        "Llama's norm: x reaches the output directly and via the mean square",
        (checked("default", LLAMA),),
    ),
    Exercise(
        "swiglu",
        "GatedFeedForward",
        "gated_feedforward.py",
        "Llama's MLP: two branches multiplied; silu's derivative has two terms",
        (checked("default", LLAMA),),
    ),
    Exercise(
        "attention",
        "MultiHeadAttention",
        "attention.py",
        "the softmax Jacobian, the causal mask, heads; Llama's rotation and shared heads",
        (
            checked("causal", {"causal": True}),
            checked("bidirectional", {"causal": False}),
            checked("rotary halves, grouped (Llama)", {**LLAMA, **GROUPED}),
            checked("rotary adjacent pairs, partial (GPT-J)", ROTARY_PARTIAL),
        ),
        ("output", "softmax", "scores", "groups", "rotary", "projections"),
    ),
    Exercise(
        "block",
        "TransformerBlock",
        "block.py",
        "residual branches that add up; where the LayerNorms sit",
        (
            checked("pre", {"normalization": "pre"}),
            checked("post", {"normalization": "post", "act_fn": "relu"}),
            checked("none", {"normalization": None}),
            checked("pre, attn_only", {"normalization": "pre", "attn_only": True}),
            checked("post, attn_only", {"normalization": "post", "attn_only": True}),
            checked("RMS, rotary, SwiGLU, grouped (Llama)", {**LLAMA, **GROUPED}),
            checked("parallel, partial rotary (GPT-NeoX)", NEOX),
        ),
    ),
    Exercise(
        "model",
        "Transformer",
        "model.py",
        "the whole chain, embeddings to logits",
        (
            checked("pre, learned, logits", {"normalization": "pre"}),
            checked(
                "post, sinusoidal, resid out",
                {
                    "normalization": "post",
                    "positional": "sinusoidal",
                    "causal": False,
                    "unembed": False,
                    "act_fn": "relu",
                },
            ),
            checked("none, attn_only", {"normalization": None, "attn_only": True}),
            checked("RMS, rotary, SwiGLU, grouped (Llama)", {**LLAMA, **GROUPED}),
        ),
    ),
)

BY_KEY = {exercise.key: exercise for exercise in EXERCISES}
BY_CLASS = {exercise.cls: exercise for exercise in EXERCISES}
# "attention.softmax" -> attention
STEP_KEYS = {key: exercise for exercise in EXERCISES for key in exercise.step_keys()}
TOGETHER = "all together"  # the last row: the learner's backward everywhere in the whole model


def number_of(key):
    """ "7" for attention, "7.2" for attention.softmax, "" for anything else."""
    if key in BY_KEY:
        return str([e.key for e in EXERCISES].index(key) + 1)
    if key in STEP_KEYS:
        exercise = STEP_KEYS[key]
        return f"{number_of(exercise.key)}.{exercise.step_keys().index(key) + 1}"
    return ""
