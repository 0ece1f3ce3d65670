"""The one configuration both implementations share.

Field names follow TransformerLens's ``HookedTransformerConfig`` where it has them, so a
config reads the same here as there. The dataclass is frozen: a model's shape never changes
after it is built. Bad values fail at construction with a message naming the field.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Optional

ACT_FNS = ("relu", "gelu_new")
NORMALIZATIONS = ("post", "pre", None)
POSITIONALS = ("sinusoidal", "learned")
DTYPES = ("float64", "float32")


@dataclass(frozen=True)
class TransformerConfig:
    d_vocab: int                          # vocabulary size: token ids are 0 .. d_vocab - 1
    d_model: int                          # width of the residual stream
    n_heads: int                          # attention heads per layer
    n_layers: int                         # number of transformer blocks
    n_ctx: int                            # longest sequence the model accepts
    d_mlp: Optional[int] = None           # hidden width of the MLP; None means 4 * d_model
    d_head: Optional[int] = None          # width of one head; None means d_model // n_heads
    act_fn: str = "gelu_new"              # "relu" or "gelu_new" (GPT-2's tanh-approximated GELU)
    normalization: Optional[str] = "pre"  # "pre" (GPT-2), "post" (Vaswani et al.) or None
    positional: str = "learned"           # "learned" (W_pos) or "sinusoidal" (fixed, no parameters)
    causal: bool = True                   # each position attends only to itself and earlier ones
    attn_only: bool = False               # blocks without an MLP (and without ln2)
    unembed: bool = True                  # True: output logits; False: the final residual stream
    dtype: str = "float64"                # "float64" (checking) or "float32"

    def __post_init__(self):
        for name in ("d_vocab", "d_model", "n_heads", "n_layers", "n_ctx"):
            _check_positive_int(name, getattr(self, name))
        if self.d_head is None:
            if self.d_model % self.n_heads != 0:
                raise ValueError(
                    f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads}) "
                    "when d_head is not given; pass d_head explicitly otherwise"
                )
            object.__setattr__(self, "d_head", self.d_model // self.n_heads)
        _check_positive_int("d_head", self.d_head)
        if self.d_mlp is None:
            object.__setattr__(self, "d_mlp", 4 * self.d_model)
        _check_positive_int("d_mlp", self.d_mlp)
        _check_choice("act_fn", self.act_fn, ACT_FNS)
        _check_choice("normalization", self.normalization, NORMALIZATIONS)
        _check_choice("positional", self.positional, POSITIONALS)
        _check_choice("dtype", self.dtype, DTYPES)
        for name in ("causal", "attn_only", "unembed"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")

    def to_dict(self) -> dict:
        """The fields as a plain dict (JSON-ready)."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, fields: dict) -> "TransformerConfig":
        """Build a config from a dict; unknown keys are an error, not silently dropped."""
        if not isinstance(fields, dict):
            raise TypeError(f"fields must be a dict, got {type(fields).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(f"unknown TransformerConfig field(s): {', '.join(unknown)}")
        return cls(**fields)

    @classmethod
    def from_json(cls, text: str) -> "TransformerConfig":
        try:
            fields = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"config is not valid JSON: {error}") from None
        return cls.from_dict(fields)


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
