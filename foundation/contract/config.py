"""The one configuration both implementations share.

Field names follow TransformerLens's ``HookedTransformerConfig`` where it has them, so a
config reads the same here as there. The dataclass is frozen: a model's shape never changes
after it is built. Bad values fail at construction with a message naming the field.

A config written with TransformerLens's own field names and values (``normalization_type="LN"``,
``positional_embedding_type="standard"``, ``attention_dir``, ...) maps onto these fields with
``TransformerConfig.from_transformer_lens(**fields)``; a TransformerLens field this project does
not model is refused with its name.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import numpy as np

ACT_FNS = ("relu", "gelu_new", "gelu", "silu")
NORMALIZATIONS = ("post", "pre", None)
NORMALIZATION_TYPES = ("LN", "LNPre", "RMS", None)
POSITIONALS = ("sinusoidal", "learned", "rotary")
# TransformerLens's positional_embedding_type -> this project's positional
POSITIONAL_EMBEDDING_TYPES = {"standard": "learned", "sinusoidal": "sinusoidal", "rotary": "rotary"}
LAYER_NORM_EPS = 1e-5  # LayerNorm's eps is fixed (numpy_impl/layernorm.py); RMSNorm's is cfg.eps
# the twins compute in these; NumPy has no bfloat16, so only the torch twin takes it
# (foundation.contract.checks.check_config)
DTYPES = ("float64", "float32", "float16", "bfloat16")


@dataclass(frozen=True)
class TransformerConfig:
    """The shape and choices of one transformer, shared by both twins (frozen; checked when built).

    ``help(TransformerConfig)`` lists every field with the reason written beside it in the source.
    """

    d_vocab: int  # vocabulary size: token ids are 0 .. d_vocab - 1
    d_model: int  # width of the residual stream
    n_heads: int  # attention heads per layer
    n_layers: int  # number of transformer blocks
    n_ctx: int  # longest sequence the model accepts
    d_mlp: int | None = None  # hidden width of the MLP; None means 4 * d_model
    d_head: int | None = None  # width of one head; None means d_model // n_heads
    act_fn: str = "gelu_new"  # "relu", "gelu_new" (GPT-2's tanh approximation), "gelu" (exact, erf)
    normalization: str | None = "pre"  # "pre" (GPT-2), "post" (Vaswani et al.) or None
    normalization_type: str | None = "LN"  # "LN" (w, b), "LNPre" (no w, b: folded) or None
    positional: str = "learned"  # "learned" (W_pos) or "sinusoidal" (fixed, no parameters)
    causal: bool = True  # each position attends only to itself and earlier ones
    attn_only: bool = False  # blocks without an MLP (and without ln2)
    unembed: bool = True  # True: output logits; False: the final residual stream
    dtype: str = "float64"  # "float64" (checking), "float32", "float16", "bfloat16" (torch only)
    # the Llama family (TransformerLens's names); the defaults are GPT-2's, so older configs read
    # the same
    eps: float = 1e-5  # added under the norm's square root (LayerNorm's is always 1e-5)
    # "standard", "sinusoidal" or "rotary"; None: from positional
    positional_embedding_type: str | None = None
    # leading entries of each head that rotate; None: all d_head (rotary only)
    rotary_dim: int | None = None
    # rotary wavelengths grow as rotary_base ** (2i / rotary_dim) (rope_theta)
    rotary_base: float = 10000.0
    # rotate pairs (0, 1), (2, 3), ... as GPT-J; False: halves, as Llama and NeoX
    rotary_adjacent_pairs: bool = False
    gated_mlp: bool = False  # SwiGLU's MLP: post = act(x W_gate) * (x W_in), out = post W_out
    # grouped-query attention: key/value heads, each shared by a group
    n_key_value_heads: int | None = None
    attn_bias: bool = True  # b_Q, b_K, b_V, b_O are parameters; False: fixed zeros (Llama)
    mlp_bias: bool = True  # b_in, b_out are parameters; False: none (the gated MLP has none)
    # GPT-NeoX, GPT-J: attention and MLP both read resid_pre, their sum is added
    parallel_attn_mlp: bool = False

    def __post_init__(self):
        # NumPy scalars become the Python values they stand for
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, (np.bool_, np.integer)):
                object.__setattr__(self, field.name, value.item())
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
        _check_choice("normalization_type", self.normalization_type, NORMALIZATION_TYPES)
        if self.normalization is None and self.normalization_type == "LN":
            # the default: there is no LayerNorm to describe
            object.__setattr__(self, "normalization_type", None)
        if (self.normalization is None) != (self.normalization_type is None):
            raise ValueError(
                f"normalization_type={self.normalization_type!r} does not fit normalization="
                f"{self.normalization!r}: None goes with None, 'LN' or 'LNPre' with 'pre' or 'post'"
            )
        _check_choice("positional", self.positional, POSITIONALS)
        _check_choice("dtype", self.dtype, DTYPES)
        for name in (
            "causal",
            "attn_only",
            "unembed",
            "rotary_adjacent_pairs",
            "gated_mlp",
            "attn_bias",
            "mlp_bias",
            "parallel_attn_mlp",
        ):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        self._check_llama_family()

    def _check_llama_family(self):
        """The fields TransformerLens uses for Llama, GPT-NeoX and their kin: each checked, each
        named."""
        _check_positive_number("eps", self.eps)
        object.__setattr__(self, "eps", float(self.eps))
        if self.normalization_type in ("LN", "LNPre") and self.eps != LAYER_NORM_EPS:
            raise ValueError(
                f"eps must be {LAYER_NORM_EPS} with normalization_type={self.normalization_type!r} "
                f"(LayerNorm's eps is fixed), got {self.eps!r}; RMSNorm ('RMS') takes any eps"
            )
        kind = self.positional_embedding_type
        if kind is not None:
            _check_choice("positional_embedding_type", kind, tuple(POSITIONAL_EMBEDDING_TYPES))
            # "learned" is the default
            if self.positional not in ("learned", POSITIONAL_EMBEDDING_TYPES[kind]):
                raise ValueError(
                    f"positional_embedding_type={kind!r} does not fit "
                    f"positional={self.positional!r}"
                )
            object.__setattr__(self, "positional", POSITIONAL_EMBEDDING_TYPES[kind])
        object.__setattr__(
            self,
            "positional_embedding_type",
            {ours: theirs for theirs, ours in POSITIONAL_EMBEDDING_TYPES.items()}[self.positional],
        )
        if self.positional == "rotary":
            if self.rotary_dim is None:
                object.__setattr__(self, "rotary_dim", self.d_head)
            _check_positive_int("rotary_dim", self.rotary_dim)
            if self.rotary_dim % 2 or self.rotary_dim > self.d_head:
                raise ValueError(
                    f"rotary_dim must be even and at most d_head ({self.d_head}), got "
                    f"{self.rotary_dim}"
                )
        elif self.rotary_dim is not None:
            raise ValueError(
                f"rotary_dim={self.rotary_dim!r} needs positional_embedding_type='rotary'"
            )
        _check_positive_number("rotary_base", self.rotary_base)
        object.__setattr__(self, "rotary_base", float(self.rotary_base))
        if self.gated_mlp and self.attn_only:
            raise ValueError("gated_mlp=True needs an MLP, but attn_only=True has none")
        if self.gated_mlp and self.act_fn != "silu":
            raise ValueError(
                f"gated_mlp=True is SwiGLU here: act_fn must be 'silu', got {self.act_fn!r}"
            )
        if self.act_fn == "silu" and not self.gated_mlp and not self.attn_only:
            raise ValueError("act_fn='silu' is for the gated MLP here: set gated_mlp=True (SwiGLU)")
        if self.gated_mlp and self.mlp_bias:
            raise ValueError(
                "gated_mlp=True has no biases here (W_gate, W_in, W_out, as Llama's): set "
                "mlp_bias=False"
            )
        if self.parallel_attn_mlp and (self.attn_only or self.normalization == "post"):
            raise ValueError(
                "parallel_attn_mlp=True needs an MLP beside attention, with normalization 'pre' or "
                "None "
                f"(got attn_only={self.attn_only}, normalization={self.normalization!r})"
            )
        if self.n_key_value_heads is not None:
            _check_positive_int("n_key_value_heads", self.n_key_value_heads)
            if self.n_heads % self.n_key_value_heads:
                raise ValueError(
                    f"n_key_value_heads ({self.n_key_value_heads}) must divide n_heads "
                    f"({self.n_heads}): "
                    "each key/value head serves a group of query heads of one size"
                )

    def to_dict(self) -> dict:
        """The fields as a plain dict (JSON-ready)."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, fields: dict) -> TransformerConfig:
        """Build a config from a dict; unknown keys are an error, not silently dropped."""
        if not isinstance(fields, dict):
            raise TypeError(f"fields must be a dict, got {type(fields).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(f"unknown TransformerConfig field(s): {', '.join(unknown)}")
        return cls(**fields)

    @classmethod
    def from_json(cls, text: str) -> TransformerConfig:
        try:
            fields = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"config is not valid JSON: {error}") from None
        return cls.from_dict(fields)

    @classmethod
    def from_transformer_lens(cls, **fields) -> TransformerConfig:
        """A config from TransformerLens's ``HookedTransformerConfig`` field names and values.

            TransformerConfig.from_transformer_lens(
                n_layers=2, d_model=64, n_ctx=32, d_head=16, d_vocab=100, act_fn="gelu",
                normalization_type="LN", dtype="float64")

        The ``to_dict()`` of a TransformerLens config works too, when it describes a model this
        project can build. The names map as follows:

            normalization_type "LN" / "LNPre" / None   normalization "pre" (TransformerLens has no
                                                       post-norm) and that normalization_type / None
            positional_embedding_type "standard"       positional "learned"
            attention_dir "causal" / "bidirectional"   causal True / False
            n_heads -1 or left out                     d_model // d_head (TransformerLens's default)
            dtype                                      "float32" (TransformerLens's default),
                                                       "float64", "float16" or "bfloat16"; a torch
                                                       dtype is read by its name
            d_vocab, d_model, n_ctx, n_layers, d_head, d_mlp, act_fn, attn_only   the same

        ``eps`` must be 1e-5 with LayerNorm and ``d_vocab_out`` -1 or d_vocab (this project's
        values). Fields that describe where the weights come from or where they live
        (``model_name``, ``seed``, ``init_mode``, ``device``, ``n_params``, ...) change nothing the
        model computes; they are accepted and not kept (the weights come from
        ``Transformer(cfg, seed=...)`` or a weights file). The Llama family's fields map to the
        fields of the same names (``normalization_type`` "RMS", ``positional_embedding_type``
        "rotary", ``rotary_dim``, ``rotary_base``, ``rotary_adjacent_pairs``, ``gated_mlp``,
        ``n_key_value_heads``, ``eps``). Every other TransformerLens field is accepted at its
        TransformerLens default (the feature off) and refused otherwise, with its name: this project
        has no attention-result hooks, local attention, ...
        """
        unknown = sorted(set(fields) - set(TL_MAPPED) - set(TL_BOOKKEEPING) - set(TL_DEFAULTS))
        if unknown:
            ours = [name for name in unknown if name in {f.name for f in dataclasses.fields(cls)}]
            if ours:
                raise ValueError(
                    f"from_transformer_lens takes TransformerLens's field names; {', '.join(ours)} "
                    "is this project's name (build TransformerConfig(...) directly for those)"
                )
            raise ValueError(f"unknown TransformerLens config field(s): {', '.join(unknown)}")
        for name, default in TL_DEFAULTS.items():
            value = fields.get(name, default)
            if name == "attn_scale" and value in (-1.0, float(fields.get("d_head", 0)) ** 0.5):
                continue  # TransformerLens fills in sqrt(d_head), this project's scale
            if value != default:
                raise ValueError(
                    f"TransformerLens field {name}={value!r} is not modelled here "
                    f"(only its default {default!r} is)"
                )
        mapped = {
            name: fields[name]
            for name in (
                "d_vocab",
                "d_model",
                "n_ctx",
                "n_layers",
                "d_head",
                "d_mlp",
                "attn_only",
                "gated_mlp",
                "n_key_value_heads",
                "rotary_base",
                "rotary_adjacent_pairs",
                "parallel_attn_mlp",
            )
            if name in fields
        }
        if mapped.get("d_vocab", -1) == -1:
            raise ValueError(
                "d_vocab must be given (TransformerLens reads it off a tokenizer; here there is "
                "none)"
            )
        if fields.get("n_heads", -1) == -1:
            d_model, d_head = fields.get("d_model"), fields.get("d_head")
            if (
                not isinstance(d_model, int)
                or not isinstance(d_head, int)
                or d_head <= 0
                or d_model % d_head
            ):
                raise ValueError(
                    f"n_heads is not set, and d_model ({d_model!r}) is not a multiple of d_head "
                    f"({d_head!r}) to infer it from"
                )
            mapped["n_heads"] = d_model // d_head
        else:
            mapped["n_heads"] = fields["n_heads"]
        act_fn = fields.get("act_fn")
        if act_fn is not None:
            mapped["act_fn"] = act_fn
        elif not fields.get("attn_only", False):
            raise ValueError(
                "act_fn must be given for a model with MLPs (TransformerLens requires it too)"
            )
        normalization_type = fields.get("normalization_type", "LN")
        if normalization_type not in NORMALIZATION_TYPES:
            raise ValueError(
                f"normalization_type must be one of {NORMALIZATION_TYPES} here, "
                f"got {normalization_type!r}"
            )
        mapped["normalization"] = None if normalization_type is None else "pre"
        mapped["normalization_type"] = normalization_type
        positional = fields.get("positional_embedding_type", "standard")
        if positional not in ("standard", "rotary"):
            also = (
                "; this project's fixed table is TransformerConfig(positional='sinusoidal')"
                if positional == "sinusoidal"
                else ""
            )
            raise ValueError(
                f"positional_embedding_type must be 'standard' (learned W_pos) or 'rotary' here, "
                f"got {positional!r}{also}"
            )
        mapped["positional"] = POSITIONAL_EMBEDDING_TYPES[positional]
        if positional == "rotary":
            mapped["rotary_dim"] = fields.get("rotary_dim") or fields.get("d_head")
        attention_dir = fields.get("attention_dir", "causal")
        if attention_dir not in ("causal", "bidirectional"):
            raise ValueError(
                f"attention_dir must be 'causal' or 'bidirectional', got {attention_dir!r}"
            )
        mapped["causal"] = attention_dir == "causal"
        dtype = fields.get("dtype", "float32")
        mapped["dtype"] = dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")
        if "eps" in fields:
            mapped["eps"] = fields["eps"]  # the config checks it: LayerNorm's must be 1e-5
        if mapped.get("gated_mlp"):
            # this project's gated MLP has no biases (TransformerLens's keeps zeros)
            mapped["mlp_bias"] = False
        if fields.get("d_vocab_out", -1) not in (-1, mapped["d_vocab"]):
            raise ValueError(
                f"d_vocab_out={fields['d_vocab_out']!r}: this project's output vocabulary is "
                f"d_vocab"
            )
        return cls(**mapped)


def _with_field_docs(cls):
    """Append "Fields:" to ``cls``'s docstring: each field with the comment beside it in this
    file."""
    import inspect
    import re

    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):  # no source (a frozen build): the docstring stays as it is
        return cls
    comments = dict(re.findall(r"^    (\w+): [^#\n]*#\s*(.+)$", source, flags=re.MULTILINE))
    lines = [
        f"    {f.name}: {comments[f.name]}" for f in dataclasses.fields(cls) if f.name in comments
    ]
    cls.__doc__ = f"{cls.__doc__.rstrip()}\n\n    Fields:\n" + "\n".join(lines) + "\n"
    return cls


_with_field_docs(TransformerConfig)


# TransformerLens's HookedTransformerConfig fields: mapped onto this project's (see
# from_transformer_lens) ...
TL_MAPPED = (
    "d_vocab",
    "d_model",
    "n_ctx",
    "n_layers",
    "d_head",
    "n_heads",
    "d_mlp",
    "act_fn",
    "attn_only",
    "normalization_type",
    "positional_embedding_type",
    "attention_dir",
    "dtype",
    "eps",
    "d_vocab_out",
    "gated_mlp",
    "n_key_value_heads",
    "rotary_base",
    "rotary_adjacent_pairs",
    "parallel_attn_mlp",
)
# ... where the weights come from or live, or what only rotary embeddings read: nothing this model
# computes ...
TL_BOOKKEEPING = (
    "model_name",
    "original_architecture",
    "from_checkpoint",
    "checkpoint_index",
    "checkpoint_label_type",
    "checkpoint_value",
    "tokenizer_name",
    "device",
    "n_devices",
    "n_params",
    "seed",
    "init_mode",
    "initializer_range",
    "init_weights",
    "default_prepend_bos",
    "tokenizer_prepends_bos",
    "trust_remote_code",
    "rotary_dim",
    "NTK_by_parts_low_freq_factor",
    "NTK_by_parts_high_freq_factor",
    "NTK_by_parts_factor",
)
# ... and features this project does not have: accepted only at TransformerLens's default (off)
TL_DEFAULTS = {
    "use_attn_result": False,
    "use_split_qkv_input": False,
    "use_hook_mlp_in": False,
    "use_attn_in": False,
    "use_local_attn": False,
    "window_size": None,
    "attn_types": None,
    "ungroup_grouped_query_attention": False,
    "use_attn_scale": True,
    "attn_scale": -1.0,
    "scale_attn_by_inverse_layer_idx": False,
    "final_rms": False,
    "use_hook_tokens": False,
    "post_embedding_ln": False,
    "load_in_4bit": False,
    "num_experts": None,
    "experts_per_token": None,
    "relative_attention_max_distance": None,
    "relative_attention_num_buckets": None,
    "decoder_start_token_id": None,
    "tie_word_embeddings": False,
    "use_normalization_before_and_after": False,
    "attn_scores_soft_cap": -1.0,
    "output_logits_soft_cap": -1.0,
    "use_NTK_by_parts_rope": False,
}


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")


def _check_positive_number(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def _check_choice(name, value, choices):
    # an array or a dtype object may compare equal to a str
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{name} must be one of {choices}, got {type(value).__name__} {value!r}")
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
