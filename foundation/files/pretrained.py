"""A Hugging Face GPT-2 checkpoint, read into the twins' config and state_dict (written once).

A checkpoint is a folder as ``transformers``' ``save_pretrained`` writes it: ``config.json`` and
``model.safetensors``, read with the ``safetensors`` library (no torch, never a pickle). Both
twins' ``Transformer.from_pretrained(folder)`` call ``read_gpt2`` and load what it returns.

GPT-2 is the twins' pre-norm, learned-position, ``gelu_new``, causal configuration. What differs
is names and layouts. Hugging Face's ``Conv1D`` keeps its weight as [in, out], so it multiplies
on the right, as this project's weights do: only the attention weights change shape.

    Hugging Face (block i)                        this project                     how
    wte.weight         [d_vocab, d_model]         embed.W_E                        as it is
    wpe.weight         [n_ctx, d_model]           pos_embed.W_pos                  as it is
    h.i.ln_1.weight, .bias                        blocks.i.ln1.w, .b               as it is
    h.i.attn.c_attn.weight [d_model, 3 d_model]   blocks.i.attn.W_Q, W_K, W_V      Q | K | V, then
                                                  [n_heads, d_model, d_head]       head by head
    h.i.attn.c_attn.bias   [3 d_model]            blocks.i.attn.b_Q, b_K, b_V      the same split
                                                  [n_heads, d_head]
    h.i.attn.c_proj.weight [d_model, d_model]     blocks.i.attn.W_O                rows by head
                                                  [n_heads, d_head, d_model]
    h.i.attn.c_proj.bias                          blocks.i.attn.b_O                as it is
    h.i.ln_2.weight, .bias                        blocks.i.ln2.w, .b               as it is
    h.i.mlp.c_fc.weight, .bias                    blocks.i.mlp.W_in, b_in          as it is
    h.i.mlp.c_proj.weight, .bias                  blocks.i.mlp.W_out, b_out        as it is
    ln_f.weight, .bias                            ln_final.w, .b                   as it is
    wte.weight (tied)  [d_vocab, d_model]         unembed.W_U [d_model, d_vocab]   transposed
    lm_head.weight (untied only)                  unembed.W_U                      transposed
    (none: GPT-2's head has no bias)              unembed.b_U                      zeros

Names may start with ``transformer.`` (``GPT2LMHeadModel`` writes them so) or not (``GPT2Model``
and the first uploads of GPT-2). Older files also hold ``h.i.attn.bias`` and
``h.i.attn.masked_bias``: the causal mask and its fill value, fixed buffers, not parameters;
the twins build their own mask, so these are skipped.

The twins keep ``W_U`` as a parameter of its own. In a tied model the one matrix is used twice,
so its gradient is the sum of both uses: ``W_E.grad + W_U.grad.T``.

Whatever the twins cannot compute exactly is refused with one ``ValueError`` naming the field or
the tensor: another activation, another LayerNorm epsilon, cross-attention, attention scaled by
the layer index, and so on (``gpt2_config`` lists them).
"""

from __future__ import annotations

import json
import os
import re

import numpy as np
from safetensors import SafetensorError, safe_open

from foundation.contract.config import TransformerConfig
from foundation.files.regular import kind_of, read_bytes
from foundation.files.weights import MAX_CONFIG_BYTES, MAX_FIXED_BYTES, read_tensor

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
VOCAB_FILE, MERGES_FILE = "vocab.json", "merges.txt"
PREFIX = "transformer."  # GPT2LMHeadModel's names start with it; GPT2Model's do not
# the causal mask and its fill value in older files
SKIPPED = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")
# safetensors' dtype names -> the dtype the twins load them in: float16 and bfloat16 files by exact
# upcast (every float16 and bfloat16 value is a float32 value; docs/precision.md)
FILE_DTYPES = {"F32": "float32", "F64": "float64", "F16": "float32", "BF16": "float32"}

# config.json may use transformers' generic names for four fields (GPT2Config.attribute_map)
ALIASES = {
    "hidden_size": "n_embd",
    "max_position_embeddings": "n_positions",
    "num_attention_heads": "n_head",
    "num_hidden_layers": "n_layer",
}
# GPT2Config's defaults, used (as transformers uses them) where config.json leaves a field out
DEFAULTS = {
    "vocab_size": 50257,
    "n_positions": 1024,
    "n_embd": 768,
    "n_layer": 12,
    "n_head": 12,
    "n_inner": None,
    "activation_function": "gelu_new",
    "layer_norm_epsilon": 1e-5,
    "scale_attn_weights": True,
    "scale_attn_by_inverse_layer_idx": False,
    "reorder_and_upcast_attn": False,
    "add_cross_attention": False,
    "tie_word_embeddings": True,
}
# activation_function -> the twins' act_fn. "gelu_pytorch_tanh" is torch's fused kernel of the
# same tanh formula as "gelu_new"; "gelu" (erf) and "gelu_fast" (a rounded constant) are not it.
ACTIVATIONS = {"gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_new", "relu": "relu"}
# fields the twins can take only at one value: (value the twins compute, what another value would
# mean)
FIXED = {
    "layer_norm_epsilon": (1e-5, "the twins' LayerNorm uses eps = 1e-5"),
    "scale_attn_weights": (True, "the twins scale attention scores by 1/sqrt(d_head)"),
    "scale_attn_by_inverse_layer_idx": (False, "the twins do not scale scores by 1/(layer + 1)"),
    "reorder_and_upcast_attn": (False, "the twins compute attention in the model's own dtype"),
    "add_cross_attention": (False, "the twins have no cross-attention"),
}


def read_pretrained(folder, n_ctx=None):
    """A Hugging Face checkpoint folder -> (TransformerConfig, state_dict, tokenizer or None), by
    its model_type.

    "gpt2" is read here; "llama" and "gpt_neox" by ``foundation.files.llama``. ``n_ctx`` (not GPT-2)
    caps the longest sequence below config.json's max_position_embeddings, which sets the causal
    mask's size.
    """
    folder = checkpoint_folder(folder)
    hf_config = read_config_json(os.path.join(folder, CONFIG_FILE))
    model_type = hf_config.get("model_type")
    if model_type == "gpt2":
        if n_ctx is not None:
            raise ValueError("n_ctx is read from a GPT-2 checkpoint's n_positions; leave it out")
        cfg, state_dict = read_gpt2(folder)
        return cfg, upcast(state_dict, cfg), read_gpt2_tokenizer(folder, cfg.d_vocab)
    if model_type in ("llama", "gpt_neox"):
        from foundation.files.llama import Refused, read_family

        try:
            cfg, state_dict = read_family(folder, hf_config, n_ctx)
        except Refused as error:
            raise ValueError(f"{folder!r}: {error}") from None
        return cfg, upcast(state_dict, cfg), read_json_tokenizer(folder, cfg.d_vocab, hf_config)
    raise ValueError(
        f"config.json: model_type is {model_type!r}; the twins read 'gpt2', 'llama' and 'gpt_neox' "
        "checkpoints"
    )


def upcast(state_dict, cfg):
    """The arrays in cfg.dtype: a float16 file's values as float32, exactly (FILE_DTYPES)."""
    return {name: value.astype(cfg.dtype, copy=False) for name, value in state_dict.items()}


def read_json_tokenizer(folder, d_vocab, hf_config):
    """The folder's tokenizer.json (any ``tokenizers`` model: Llama's BPE, SentencePiece's) as
    model.tokenizer, or None."""
    from foundation.lens.vocab import JsonTokenizer

    path = os.path.join(folder, "tokenizer.json")
    if not os.path.exists(path):
        return None
    tokenizer = JsonTokenizer(path, hf_config.get("bos_token_id"), hf_config.get("eos_token_id"))
    if len(tokenizer) > d_vocab:
        raise ValueError(
            f"{path!r} has {len(tokenizer)} tokens but the model's vocab_size is {d_vocab}"
        )
    return tokenizer


def read_gpt2(folder):
    """A Hugging Face GPT-2 checkpoint folder -> (TransformerConfig, state_dict {key: ndarray}).

    The dtype is the file's (float32 or float64), or float32 for a float16 or bfloat16 file, whose
    values it holds exactly. Everything is checked before any tensor is read.
    """
    folder = checkpoint_folder(folder)
    hf_config = read_config_json(os.path.join(folder, CONFIG_FILE))
    path = weights_path(folder)
    try:
        with safe_open(path, framework="numpy") as f:
            names = stored_names(f.keys())  # {name without "transformer.": name in the file}
            parameters = [name for name in names if not SKIPPED.fullmatch(name)]
            dtype = file_dtype({name: f.get_slice(names[name]).get_dtype() for name in parameters})
            cfg, tied = gpt2_config(hf_config, dtype)
            check_layer_count(cfg.n_layers, parameters)  # before any name is built for each layer
            expected = gpt2_shapes(cfg, tied)
            check_tensors(
                {name: tuple(f.get_slice(names[name]).get_shape()) for name in parameters},
                expected,
                tied,
            )
            tensors = {name: read_tensor(f, path, names[name]) for name in expected}
            # a tied file need not hold it; if it does, it must agree
            if tied and "lm_head.weight" in names:
                head = read_tensor(f, path, names["lm_head.weight"])
                if not np.array_equal(head, tensors["wte.weight"]):
                    raise _Refused(
                        "lm_head.weight differs from wte.weight, but config.json says "
                        "tie_word_embeddings is true"
                    )
    except _Refused as error:
        raise ValueError(f"{path!r}: {error}") from None
    except SafetensorError as error:
        raise ValueError(f"{path!r} is not a readable safetensors file ({error})") from None
    return cfg, gpt2_state_dict(tensors, cfg, tied)


class _Refused(Exception):
    """A reason the checkpoint cannot be read, to become one ValueError naming the file."""


def checkpoint_folder(folder):
    """The folder as a str; a missing folder, or a file, is a one-line error."""
    if not isinstance(folder, (str, os.PathLike)):
        raise TypeError(f"folder must be a str or os.PathLike, got {type(folder).__name__}")
    folder = os.fspath(folder)
    if not os.path.exists(folder):
        raise FileNotFoundError(f"no checkpoint folder at {folder!r}")
    if not os.path.isdir(folder):
        raise ValueError(
            f"{folder!r} is a file; a checkpoint is a folder holding {CONFIG_FILE} and "
            f"{WEIGHTS_FILE}"
        )
    return folder


def read_config_json(path):
    """config.json -> dict; missing, too large, not JSON or not an object is a one-line error."""
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"no {CONFIG_FILE} in {os.path.dirname(path)!r} (is it a Hugging Face checkpoint?)"
        )
    data = read_bytes(path, MAX_CONFIG_BYTES, "model config")  # a regular file, bounded
    try:
        fields = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, RecursionError, ValueError) as error:
        raise ValueError(f"{path!r} is not valid JSON ({type(error).__name__}: {error})") from None
    if not isinstance(fields, dict):
        raise ValueError(f"{path!r} must hold a JSON object, got {type(fields).__name__}")
    return fields


def weights_path(folder):
    """The folder's model.safetensors; a folder with only a pickled (or sharded) file is refused,
    saying why."""
    path = os.path.join(folder, WEIGHTS_FILE)
    if os.path.isfile(path):
        return path
    if os.path.exists(path):  # a FIFO would hang the reader, a device never end
        raise ValueError(f"{path!r} is {kind_of(os.stat(path).st_mode)}, not a regular file")
    if os.path.exists(path + ".index.json"):
        raise ValueError(
            f"{folder!r} holds a sharded checkpoint ({WEIGHTS_FILE}.index.json); "
            f"only a single {WEIGHTS_FILE} is read"
        )
    pickles = sorted(
        name
        for name in os.listdir(folder)
        if name.startswith("pytorch_model") and name.endswith(".bin")
    )
    if pickles:
        raise ValueError(
            f"{folder!r} holds {pickles[0]} but no {WEIGHTS_FILE}: a .bin checkpoint is a Python "
            "pickle, which can run code when loaded, and loading never unpickles; save the model "
            "with save_pretrained (safetensors is its default) and try again"
        )
    raise FileNotFoundError(f"no {WEIGHTS_FILE} in {folder!r}")


def stored_names(names):
    """{name without the "transformer." prefix: name as stored}; a name stored both ways is
    refused."""
    result = {}
    for stored in names:
        name = stored.removeprefix(PREFIX)
        if name in result:
            raise _Refused(f"tensor {name!r} is stored twice (with and without {PREFIX!r})")
        result[name] = stored
    return result


def file_dtype(dtypes):
    """The one dtype the file's parameters load in (float32 or float64: FILE_DTYPES), from {name:
    safetensors dtype}."""
    found = sorted(set(dtypes.values()))
    if not found:
        raise _Refused("it holds no tensors")
    if len(found) > 1:
        examples = ", ".join(
            f"{next(n for n, d in dtypes.items() if d == kind)} is {kind}" for kind in found
        )
        raise _Refused(f"its tensors mix dtypes ({examples}); the twins compute in one dtype")
    if found[0] not in FILE_DTYPES:
        raise _Refused(
            f"its tensors are {found[0]}; the twins read float64 (F64), float32 (F32), float16 "
            "(F16) and bfloat16 (BF16) files: convert the model (model.float()) before "
            "save_pretrained"
        )
    return FILE_DTYPES[found[0]]


def gpt2_config(hf, dtype):
    """config.json's fields (a dict) and the file's dtype -> (TransformerConfig, tied).

    ``tied`` is ``tie_word_embeddings``: the unembedding is the token embedding, transposed.
    Fields that only matter for training with dropout, for other heads or for generation
    settings are not read. A field the twins cannot follow is a one-line ValueError naming it.
    """
    hf = dict(hf)
    for alias, name in ALIASES.items():
        if alias in hf:
            if name in hf and hf[name] != hf[alias]:
                raise ValueError(
                    f"config.json: {alias} ({hf[alias]!r}) and {name} ({hf[name]!r}) disagree"
                )
            hf[name] = hf.pop(alias)
    if hf.get("model_type") != "gpt2":
        raise ValueError(
            f"config.json: model_type is {hf.get('model_type')!r}; read_gpt2 reads GPT-2 ('gpt2') "
            f"checkpoints"
        )
    fields = {name: hf.get(name, default) for name, default in DEFAULTS.items()}
    for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
        _check_positive_int(name, fields[name])
    if fields["n_inner"] is not None:
        _check_positive_int("n_inner", fields["n_inner"])
    if fields["n_embd"] % fields["n_head"]:
        raise ValueError(
            f"config.json: n_embd ({fields['n_embd']}) must be divisible by n_head "
            f"({fields['n_head']})"
        )
    activation = fields["activation_function"]
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        raise ValueError(
            f"config.json: activation_function is {activation!r}; the twins compute 'gelu_new' "
            "(also named 'gelu_pytorch_tanh') or 'relu'"
        )
    for name, (value, meaning) in FIXED.items():
        given = fields[name]
        # JSON's 1 is not true
        if given != value or isinstance(given, bool) != isinstance(value, bool):
            raise ValueError(f"config.json: {name} is {given!r}; only {value!r} is read: {meaning}")
    if not isinstance(fields["tie_word_embeddings"], bool):
        raise ValueError(
            f"config.json: tie_word_embeddings must be a bool, got "
            f"{fields['tie_word_embeddings']!r}"
        )
    n_ctx, n_layers = fields["n_positions"], fields["n_layer"]
    if n_layers * n_ctx**2 > MAX_FIXED_BYTES:  # the causal masks, [n_ctx, n_ctx] per layer
        raise ValueError(
            f"config.json: n_positions ({n_ctx}) and n_layer ({n_layers}) would build "
            f"{n_layers * n_ctx**2 / 2**30:.1f} GiB of causal masks"
        )
    cfg = TransformerConfig(
        d_vocab=fields["vocab_size"],
        d_model=fields["n_embd"],
        n_heads=fields["n_head"],
        n_layers=n_layers,
        n_ctx=n_ctx,
        d_mlp=fields["n_inner"],
        act_fn=ACTIVATIONS[activation],
        normalization="pre",
        positional="learned",
        causal=True,
        attn_only=False,
        unembed=True,
        dtype=dtype,
    )
    return cfg, fields["tie_word_embeddings"]


def check_layer_count(n_layers, names):
    """config.json's n_layer against the blocks the file holds (h.0. ...), before any is built."""
    held = {int(match.group(1)) for name in names if (match := re.match(r"h\.(\d+)\.", name))}
    if len(held) != n_layers:
        raise _Refused(
            f"config.json says n_layer is {n_layers} but the file holds {len(held)} "
            "blocks of tensors (h.0. ...)"
        )


def gpt2_shapes(cfg, tied):
    """{Hugging Face name (no prefix): shape} of the tensors a GPT-2 checkpoint of ``cfg`` holds."""
    d_vocab, d_model, d_mlp = cfg.d_vocab, cfg.d_model, cfg.d_mlp
    shapes = {"wte.weight": (d_vocab, d_model), "wpe.weight": (cfg.n_ctx, d_model)}
    for i in range(cfg.n_layers):
        block = f"h.{i}."
        shapes.update(
            {
                block + "ln_1.weight": (d_model,),
                block + "ln_1.bias": (d_model,),
                block + "attn.c_attn.weight": (d_model, 3 * d_model),
                block + "attn.c_attn.bias": (3 * d_model,),
                block + "attn.c_proj.weight": (d_model, d_model),
                block + "attn.c_proj.bias": (d_model,),
                block + "ln_2.weight": (d_model,),
                block + "ln_2.bias": (d_model,),
                block + "mlp.c_fc.weight": (d_model, d_mlp),
                block + "mlp.c_fc.bias": (d_mlp,),
                block + "mlp.c_proj.weight": (d_mlp, d_model),
                block + "mlp.c_proj.bias": (d_model,),
            }
        )
    shapes.update({"ln_f.weight": (d_model,), "ln_f.bias": (d_model,)})
    if not tied:
        shapes["lm_head.weight"] = (d_vocab, d_model)
    return shapes


def check_tensors(found, expected, tied):
    """Every expected tensor present with its shape, nothing else (lm_head.weight may come along
    when tied)."""
    if tied and "lm_head.weight" in found:
        expected = dict(expected, **{"lm_head.weight": expected["wte.weight"]})
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    problems = []
    if missing:
        problems.append(
            f"missing tensors: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}"
        )
    if unexpected:
        problems.append(
            f"unexpected tensors: "
            f"{', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}"
        )
    misshaped = [
        name for name in sorted(set(expected) & set(found)) if found[name] != expected[name]
    ]
    for name in misshaped[:4]:
        problems.append(
            f"{name} has shape {list(found[name])}, config.json asks for {list(expected[name])}"
        )
    if len(misshaped) > 4:
        problems.append(f"and {len(misshaped) - 4} more misshaped")
    if problems:
        raise _Refused("; ".join(problems))


def gpt2_state_dict(tensors, cfg, tied):
    """Hugging Face GPT-2 tensors {name without prefix: ndarray} -> this project's state_dict (the
    table above)."""
    n_heads, d_head, d_model = cfg.n_heads, cfg.d_head, cfg.d_model
    state_dict = {"embed.W_E": tensors["wte.weight"], "pos_embed.W_pos": tensors["wpe.weight"]}
    for i in range(cfg.n_layers):
        hf, ours = f"h.{i}.", f"blocks.{i}."
        state_dict[ours + "ln1.w"] = tensors[hf + "ln_1.weight"]
        state_dict[ours + "ln1.b"] = tensors[hf + "ln_1.bias"]
        # c_attn's columns are Q | K | V, each d_model wide: split them, then each into its heads
        # 3 x [d_model, n_heads * d_head]
        W_Q, W_K, W_V = np.split(tensors[hf + "attn.c_attn.weight"], 3, axis=1)
        b_Q, b_K, b_V = np.split(tensors[hf + "attn.c_attn.bias"], 3)  # 3 x [n_heads * d_head]
        for name, W, b in (("Q", W_Q, b_Q), ("K", W_K, b_K), ("V", W_V, b_V)):
            # [d_model, n_heads * d_head] -> [d_model, n_heads, d_head] ->
            # [n_heads, d_model, d_head]
            state_dict[ours + f"attn.W_{name}"] = W.reshape(d_model, n_heads, d_head).transpose(
                1, 0, 2
            )
            # [n_heads * d_head] -> [n_heads, d_head]
            state_dict[ours + f"attn.b_{name}"] = b.reshape(n_heads, d_head)
        # c_proj's rows are the heads' z, concatenated: [n_heads * d_head, d_model] ->
        # [n_heads, d_head, d_model]
        state_dict[ours + "attn.W_O"] = tensors[hf + "attn.c_proj.weight"].reshape(
            n_heads, d_head, d_model
        )
        state_dict[ours + "attn.b_O"] = tensors[hf + "attn.c_proj.bias"]
        state_dict[ours + "ln2.w"] = tensors[hf + "ln_2.weight"]
        state_dict[ours + "ln2.b"] = tensors[hf + "ln_2.bias"]
        # [d_model, d_mlp]: Conv1D is [in, out]
        state_dict[ours + "mlp.W_in"] = tensors[hf + "mlp.c_fc.weight"]
        state_dict[ours + "mlp.b_in"] = tensors[hf + "mlp.c_fc.bias"]
        state_dict[ours + "mlp.W_out"] = tensors[hf + "mlp.c_proj.weight"]  # [d_mlp, d_model]
        state_dict[ours + "mlp.b_out"] = tensors[hf + "mlp.c_proj.bias"]
    state_dict["ln_final.w"] = tensors["ln_f.weight"]
    state_dict["ln_final.b"] = tensors["ln_f.bias"]
    unembedding = tensors["wte.weight"] if tied else tensors["lm_head.weight"]  # [d_vocab, d_model]
    state_dict["unembed.W_U"] = unembedding.T  # [d_model, d_vocab]
    # [d_vocab]: GPT-2's head has no bias
    state_dict["unembed.b_U"] = np.zeros(cfg.d_vocab, dtype=cfg.dtype)
    return state_dict


def read_gpt2_tokenizer(folder, d_vocab):
    """The folder's byte-level BPE (vocab.json + merges.txt) as a model.tokenizer, or None when it
    has neither."""
    from foundation.lens.vocab import BytePairTokenizer

    folder = os.fspath(folder)
    vocab, merges = os.path.join(folder, VOCAB_FILE), os.path.join(folder, MERGES_FILE)
    present = [os.path.exists(vocab), os.path.exists(merges)]
    if not any(present):
        return None
    if not all(present):
        raise FileNotFoundError(
            f"{folder!r} holds {VOCAB_FILE if present[0] else MERGES_FILE} without "
            f"{MERGES_FILE if present[0] else VOCAB_FILE}; a GPT-2 tokenizer needs both"
        )
    tokenizer = BytePairTokenizer(vocab, merges)
    if len(tokenizer) > d_vocab:
        raise ValueError(
            f"{vocab!r} has {len(tokenizer)} tokens but the model's vocab_size is {d_vocab}"
        )
    return tokenizer


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"config.json: {name} must be a positive int, got {value!r}")
