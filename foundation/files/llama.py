"""Hugging Face Llama (``LlamaForCausalLM``) and GPT-NeoX (Pythia) checkpoints, read into the twins'
config and state_dict (written once; ``pretrained.read_pretrained`` sends a folder here by its
model_type).

A checkpoint is a folder as ``save_pretrained`` writes it: ``config.json`` and
``model.safetensors``, or the shards that ``model.safetensors.index.json`` names; the tokenizer is
``tokenizer.json``, read by the ``tokenizers`` library. Hugging Face's ``nn.Linear`` keeps its
weight as [out, in] and multiplies on the left; this project's weights multiply on the right, so
each is transposed.

    Llama (layer i)                                   this project (how)
    model.embed_tokens.weight [d_vocab, d_model]      embed.W_E (as it is)
    model.layers.i.input_layernorm.weight             blocks.i.ln1.w, RMSNorm (as it is)
    ...self_attn.q_proj.weight                        blocks.i.attn.W_Q [n_heads, d_model, d_head]
        [n_heads * d_head, d_model]                   (rows head by head, then transposed)
    ...self_attn.k_proj, v_proj                       attn._W_K, _W_V when grouped, else
        [n_kv * d_head, d_model]                      attn.W_K, W_V (n_kv = n_heads); the same
    ...self_attn.{q,k,v}_proj.bias (attention_bias)   attn.b_Q, _b_K, _b_V [heads, d_head]
                                                      (head by head)
    ...self_attn.o_proj.weight                        blocks.i.attn.W_O [n_heads, d_head, d_model]
        [d_model, n_heads * d_head]                   (transposed, rows head by head)
    ...post_attention_layernorm.weight                blocks.i.ln2.w                      as it is
    ...mlp.gate_proj / up_proj / down_proj.weight     blocks.i.mlp.W_gate / W_in / W_out  transposed
    model.norm.weight                                 ln_final.w                          as it is
    lm_head.weight, or embed_tokens.weight (tied)     unembed.W_U [d_model, d_vocab]      transposed
    (none)                                            unembed.b_U                         zeros

    GPT-NeoX (layer i)                                this project
    gpt_neox.embed_in.weight                          embed.W_E
    gpt_neox.layers.i.input_layernorm,                ln1, ln2 (LayerNorm: w, b)
        post_attention_layernorm
    ...attention.query_key_value                      W_Q, W_K, W_V
        [n_heads * 3 * d_head, d_model]               (rows: per head, q | k | v)
    ...attention.dense                                attn.W_O, b_O
    ...mlp.dense_h_to_4h, dense_4h_to_h               mlp.W_in, b_in, W_out, b_out
    gpt_neox.final_layer_norm                         ln_final
    embed_out.weight                                  unembed.W_U (transposed)

Rotary pairs: Hugging Face's Llama and GPT-NeoX rotate the two halves of each head (Meta's own
weights pair neighbours, and their conversion permutes q and k rows to halves), which is
``rotary_adjacent_pairs=False``. Whatever the twins do not compute is refused with one
``ValueError`` naming the field: a ``rope_scaling`` (or ``rope_parameters``) kind other than
"default", sliding-window attention, another activation, biases in the gated MLP, ...
"""

from __future__ import annotations

import json
import os
import re

import numpy as np
from safetensors import SafetensorError, safe_open

from foundation.contract.config import TransformerConfig
from foundation.files.weights import MAX_CONFIG_BYTES, MAX_FIXED_BYTES, read_tensor

INDEX_FILE = "model.safetensors.index.json"
# older GPT-NeoX files also hold each layer's causal mask, its fill value and the rotary
# frequencies: fixed buffers, not parameters; the twins build their own, so these are skipped
NEOX_BUFFERS = re.compile(
    r"gpt_neox\.layers\.\d+\.attention\.(bias|masked_bias|rotary_emb\.inv_freq)"
)
TOKENIZER_FILE = "tokenizer.json"

LLAMA_DEFAULTS = {
    "vocab_size": 32000,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": None,
    "head_dim": None,
    "hidden_act": "silu",
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "attention_bias": False,
    "mlp_bias": False,
}
NEOX_DEFAULTS = {
    "vocab_size": 50432,
    "hidden_size": 6144,
    "intermediate_size": 24576,
    "num_hidden_layers": 44,
    "num_attention_heads": 64,
    "hidden_act": "gelu",
    "max_position_embeddings": 2048,
    "layer_norm_eps": 1e-5,
    "tie_word_embeddings": False,
    "use_parallel_residual": True,
    "attention_bias": True,
}
# fields whose other values change what the model computes, and the one value the twins read
FIXED = {
    "pretraining_tp": (1, "the twins compute each projection as one matrix product"),
    "sliding_window": (
        None,
        "the twins' attention sees every earlier position (no sliding window)",
    ),
    "use_sliding_window": (
        False,
        "the twins' attention sees every earlier position (no sliding window)",
    ),
    "rope_scaling": (
        None,
        "the twins compute plain rotary angles, pos / rope_theta ** (2i / rotary_dim)",
    ),
    "attn_logit_softcapping": (None, "the twins do not cap attention scores"),
    "final_logit_softcapping": (None, "the twins do not cap logits"),
}


class Refused(Exception):
    """A reason the checkpoint cannot be read, to become one ValueError naming the file."""


def read_family(folder, hf, n_ctx=None):
    """A Llama or GPT-NeoX folder and its config.json dict -> (TransformerConfig, state_dict {key:
    ndarray})."""
    headers = tensor_headers(folder)
    dtype = _file_dtype({name: kind for name, (_, _, kind) in headers.items()})
    found = {
        name: shape for name, (_, shape, _) in headers.items() if not NEOX_BUFFERS.fullmatch(name)
    }
    if hf.get("model_type") == "llama":
        cfg, tied = llama_config(hf, dtype, n_ctx)
        # before any name is built
        _check_layer_count(cfg.n_layers, found, r"model\.layers\.(\d+)\.")
        expected = llama_shapes(cfg, tied)
        convert = llama_state_dict
    else:
        cfg, tied = neox_config(hf, dtype, n_ctx)
        _check_layer_count(cfg.n_layers, found, r"gpt_neox\.layers\.(\d+)\.")
        # older and newer files
        head = "embed_out.weight" if "embed_out.weight" in found else "lm_head.weight"
        expected = neox_shapes(cfg, tied, head)
        convert = neox_state_dict
    embedding = (
        "model.embed_tokens.weight"
        if hf.get("model_type") == "llama"
        else "gpt_neox.embed_in.weight"
    )
    head = next((name for name in ("lm_head.weight", "embed_out.weight") if name in found), None)
    if tied and head is not None:  # a tied file may hold the head too: it must agree
        expected = dict(expected, **{head: expected[embedding]})
    _check_tensors(found, expected)
    tensors = read_tensors(headers, expected)
    if tied and head is not None:
        if not np.array_equal(tensors[head], tensors[embedding]):
            raise Refused(
                f"{head} differs from {embedding}, but config.json says tie_word_embeddings is true"
            )
    return cfg, convert(tensors, cfg, tied)


# --- the tensors: one file, or the shards an index names ---------------------------------------


def tensor_files(folder):
    """The safetensors files of the checkpoint: model.safetensors, or every shard
    model.safetensors.index.json names."""
    single = os.path.join(folder, "model.safetensors")
    index = os.path.join(folder, INDEX_FILE)
    if os.path.isfile(single):
        return [single], None
    if not os.path.isfile(index):
        pickles = sorted(name for name in os.listdir(folder) if name.endswith(".bin"))
        also = (
            (
                f"; {pickles[0]} is a Python pickle, which loading never unpickles: save the model "
                f"with "
                "save_pretrained (safetensors is its default)"
            )
            if pickles
            else ""
        )
        raise FileNotFoundError(f"no model.safetensors or {INDEX_FILE} in {folder!r}{also}")
    with open(index, "rb") as f:
        data = f.read(16 * MAX_CONFIG_BYTES + 1)
    try:
        weight_map = json.loads(data.decode("utf-8"))["weight_map"]
        assert isinstance(weight_map, dict) and weight_map
        assert all(
            isinstance(name, str) and isinstance(file, str) for name, file in weight_map.items()
        )
    except Exception:  # noqa: BLE001 - any malformed index is the same one-line refusal
        raise ValueError(
            f"{index!r} is not a safetensors index (a JSON object whose weight_map names, for "
            "each tensor, the shard holding it)"
        ) from None
    shards = sorted(set(weight_map.values()))
    for shard in shards:
        if (
            os.path.basename(shard) != shard
            or shard in (".", "..")
            or not shard.endswith(".safetensors")
        ):
            raise ValueError(
                f"{index!r} names the shard {shard!r}: a shard is a .safetensors file in the folder"
            )
        if not os.path.isfile(os.path.join(folder, shard)):
            raise FileNotFoundError(
                f"{index!r} names the shard {shard!r}, which is not in {folder!r}"
            )
    return [os.path.join(folder, shard) for shard in shards], weight_map


def tensor_headers(folder):
    """{name: (file, shape, safetensors dtype)} of every tensor; an index must say truly where each
    one is."""
    paths, weight_map = tensor_files(folder)
    headers = {}
    for path in paths:
        try:
            with safe_open(path, framework="numpy") as f:
                for name in f.keys():
                    if name in headers:
                        raise Refused(
                            f"tensor {name!r} is stored twice "
                            f"({os.path.basename(headers[name][0])} and "
                            f"{os.path.basename(path)})"
                        )
                    piece = f.get_slice(name)
                    headers[name] = (path, tuple(piece.get_shape()), piece.get_dtype())
        except SafetensorError as error:
            raise ValueError(f"{path!r} is not a readable safetensors file ({error})") from None
    if weight_map is not None:
        wrong = sorted(
            name
            for name in set(weight_map) | set(headers)
            if os.path.basename(headers.get(name, ("",))[0]) != weight_map.get(name)
        )
        if wrong:
            raise Refused(
                f"{INDEX_FILE} does not match its shards: {', '.join(wrong[:4])}"
                f"{' ...' if len(wrong) > 4 else ''}"
            )
    return headers


def _check_layer_count(n_layers, names, pattern):
    """config.json's num_hidden_layers against the layers the files hold, before anything is
    built."""
    held = {int(match.group(1)) for name in names if (match := re.match(pattern, name))}
    if len(held) != n_layers:
        raise Refused(
            f"config.json says num_hidden_layers is {n_layers} but the files hold "
            f"{len(held)} layers of tensors"
        )


def read_tensors(headers, names):
    """{name: ndarray} of ``names``, each read from its file."""
    tensors = {}
    for path in sorted({headers[name][0] for name in names}):
        with safe_open(path, framework="numpy") as f:
            for name in names:
                if headers[name][0] == path:
                    tensors[name] = read_tensor(f, path, name)
    return tensors


def _file_dtype(dtypes):
    from foundation.files.pretrained import file_dtype

    return file_dtype(dtypes)


def _check_tensors(found, expected):
    from foundation.files.pretrained import check_tensors

    check_tensors(found, expected, tied=False)


# --- Llama ---------------------------------------------------------------------------------------


def rope_fields(hf):
    """(rope_theta, partial_rotary_factor) from config.json: top-level (older files) or
    rope_parameters (newer)."""
    parameters = hf.get("rope_parameters") or {}
    if not isinstance(parameters, dict):
        raise ValueError(f"config.json: rope_parameters must be an object, got {parameters!r}")
    kind = parameters.get("rope_type", parameters.get("type", "default"))
    if kind != "default":
        raise ValueError(
            f"config.json: rope_parameters.rope_type is {kind!r}; the twins compute plain rotary "
            "angles ('default') only"
        )
    unknown = sorted(set(parameters) - {"rope_type", "type", "rope_theta", "partial_rotary_factor"})
    if unknown:
        raise ValueError(f"config.json: rope_parameters.{unknown[0]} is not modelled by the twins")
    theta = parameters.get("rope_theta", hf.get("rope_theta", hf.get("rotary_emb_base", 10000.0)))
    factor = parameters.get(
        "partial_rotary_factor", hf.get("partial_rotary_factor", hf.get("rotary_pct", 1.0))
    )
    return theta, factor


def check_fixed(hf):
    for name, (value, meaning) in FIXED.items():
        if name not in hf:
            continue
        given = hf[name]
        if (
            name == "rope_scaling"
            and isinstance(given, dict)
            and given.get("rope_type", given.get("type")) == "default"
        ):
            continue
        if given != value or isinstance(given, bool) != isinstance(value, bool):
            kind = (
                f" ({given.get('rope_type', given.get('type'))!r})"
                if isinstance(given, dict)
                else ""
            )
            raise ValueError(
                f"config.json: {name} is {given!r}{kind}; only {value!r} is read: {meaning}"
            )


def _n_ctx(fields, n_layers, n_ctx):
    longest = fields["max_position_embeddings"]
    _check_positive_int("max_position_embeddings", longest)
    if n_ctx is None:
        n_ctx = longest
    elif isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or not 0 < n_ctx <= longest:
        raise ValueError(
            f"n_ctx must be an int from 1 to max_position_embeddings ({longest}), got {n_ctx!r}"
        )
    if n_layers * n_ctx**2 > MAX_FIXED_BYTES:  # the causal masks, [n_ctx, n_ctx] per layer
        raise ValueError(
            f"config.json: max_position_embeddings ({longest}) and {n_layers} layers would build "
            f"{n_layers * n_ctx**2 / 2**30:.1f} GiB of causal masks; pass a shorter "
            "n_ctx (from_pretrained(folder, n_ctx=...))"
        )
    return n_ctx


def llama_config(hf, dtype, n_ctx=None):
    """config.json's fields and the file's dtype -> (TransformerConfig, tied)."""
    check_fixed(hf)
    fields = {name: hf.get(name, default) for name, default in LLAMA_DEFAULTS.items()}
    for name in (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
    ):
        _check_positive_int(name, fields[name])
    n_heads = fields["num_attention_heads"]
    n_kv = fields["num_key_value_heads"] if fields["num_key_value_heads"] is not None else n_heads
    _check_positive_int("num_key_value_heads", n_kv)
    d_head = (
        fields["head_dim"] if fields["head_dim"] is not None else fields["hidden_size"] // n_heads
    )
    _check_positive_int("head_dim", d_head)
    if fields["hidden_act"] != "silu":
        raise ValueError(
            f"config.json: hidden_act is {fields['hidden_act']!r}; the twins' gated MLP computes "
            f"'silu'"
        )
    if fields["mlp_bias"] is not False:
        raise ValueError(
            f"config.json: mlp_bias is {fields['mlp_bias']!r}; the twins' gated MLP has no biases"
        )
    for name in ("tie_word_embeddings", "attention_bias"):
        if not isinstance(fields[name], bool):
            raise ValueError(f"config.json: {name} must be a bool, got {fields[name]!r}")
    theta, factor = rope_fields(hf)
    if factor != 1.0:
        raise ValueError(
            f"config.json: partial_rotary_factor is {factor!r}; Llama rotates all of each head"
        )
    try:
        cfg = TransformerConfig(
            d_vocab=fields["vocab_size"],
            d_model=fields["hidden_size"],
            n_heads=n_heads,
            d_head=d_head,
            n_layers=fields["num_hidden_layers"],
            n_ctx=_n_ctx(hf | fields, fields["num_hidden_layers"], n_ctx),
            d_mlp=fields["intermediate_size"],
            act_fn="silu",
            gated_mlp=True,
            mlp_bias=False,
            normalization="pre",
            normalization_type="RMS",
            eps=fields["rms_norm_eps"],
            positional_embedding_type="rotary",
            rotary_base=theta,
            rotary_adjacent_pairs=False,
            n_key_value_heads=None if n_kv == n_heads else n_kv,
            attn_bias=fields["attention_bias"],
            causal=True,
            unembed=True,
            dtype=dtype,
        )
    except (TypeError, ValueError) as error:
        raise ValueError(f"config.json describes a model the twins cannot build: {error}") from None
    return cfg, fields["tie_word_embeddings"]


def llama_shapes(cfg, tied):
    """{Hugging Face name: shape} of the tensors a LlamaForCausalLM of ``cfg`` holds."""
    d_model, q_rows = cfg.d_model, cfg.n_heads * cfg.d_head
    kv_rows = (cfg.n_key_value_heads or cfg.n_heads) * cfg.d_head
    shapes = {"model.embed_tokens.weight": (cfg.d_vocab, d_model)}
    for i in range(cfg.n_layers):
        layer = f"model.layers.{i}."
        shapes.update(
            {
                layer + "input_layernorm.weight": (d_model,),
                layer + "self_attn.q_proj.weight": (q_rows, d_model),
                layer + "self_attn.k_proj.weight": (kv_rows, d_model),
                layer + "self_attn.v_proj.weight": (kv_rows, d_model),
                layer + "self_attn.o_proj.weight": (d_model, q_rows),
                layer + "post_attention_layernorm.weight": (d_model,),
                layer + "mlp.gate_proj.weight": (cfg.d_mlp, d_model),
                layer + "mlp.up_proj.weight": (cfg.d_mlp, d_model),
                layer + "mlp.down_proj.weight": (d_model, cfg.d_mlp),
            }
        )
        if cfg.attn_bias:
            shapes.update(
                {
                    layer + "self_attn.q_proj.bias": (q_rows,),
                    layer + "self_attn.k_proj.bias": (kv_rows,),
                    layer + "self_attn.v_proj.bias": (kv_rows,),
                    layer + "self_attn.o_proj.bias": (d_model,),
                }
            )
    shapes["model.norm.weight"] = (d_model,)
    if not tied:
        shapes["lm_head.weight"] = (cfg.d_vocab, d_model)
    return shapes


def heads_in(weight, n_heads, d_head):
    """An nn.Linear weight whose rows are heads, [heads * d_head, d_model] ->
    [heads, d_model, d_head]."""
    return weight.reshape(n_heads, d_head, -1).transpose(0, 2, 1)


def llama_state_dict(tensors, cfg, tied):
    """Hugging Face Llama tensors {name: ndarray} -> this project's state_dict (the table above)."""
    n_heads, d_head, d_model = cfg.n_heads, cfg.d_head, cfg.d_model
    n_kv = cfg.n_key_value_heads or n_heads
    # TransformerLens's names for grouped heads
    kv = "_" if cfg.n_key_value_heads is not None else ""
    state_dict = {"embed.W_E": tensors["model.embed_tokens.weight"]}
    for i in range(cfg.n_layers):
        hf, ours = f"model.layers.{i}.", f"blocks.{i}."
        state_dict[ours + "ln1.w"] = tensors[hf + "input_layernorm.weight"]
        state_dict[ours + "attn.W_Q"] = heads_in(
            tensors[hf + "self_attn.q_proj.weight"], n_heads, d_head
        )
        state_dict[ours + f"attn.{kv}W_K"] = heads_in(
            tensors[hf + "self_attn.k_proj.weight"], n_kv, d_head
        )
        state_dict[ours + f"attn.{kv}W_V"] = heads_in(
            tensors[hf + "self_attn.v_proj.weight"], n_kv, d_head
        )
        # o_proj [d_model, n_heads * d_head]: its columns are the heads' z ->
        # [n_heads, d_head, d_model]
        state_dict[ours + "attn.W_O"] = tensors[hf + "self_attn.o_proj.weight"].T.reshape(
            n_heads, d_head, d_model
        )
        if cfg.attn_bias:
            state_dict[ours + "attn.b_Q"] = tensors[hf + "self_attn.q_proj.bias"].reshape(
                n_heads, d_head
            )
            state_dict[ours + f"attn.{kv}b_K"] = tensors[hf + "self_attn.k_proj.bias"].reshape(
                n_kv, d_head
            )
            state_dict[ours + f"attn.{kv}b_V"] = tensors[hf + "self_attn.v_proj.bias"].reshape(
                n_kv, d_head
            )
            state_dict[ours + "attn.b_O"] = tensors[hf + "self_attn.o_proj.bias"]
        state_dict[ours + "ln2.w"] = tensors[hf + "post_attention_layernorm.weight"]
        state_dict[ours + "mlp.W_gate"] = tensors[hf + "mlp.gate_proj.weight"].T  # [d_model, d_mlp]
        state_dict[ours + "mlp.W_in"] = tensors[hf + "mlp.up_proj.weight"].T  # [d_model, d_mlp]
        state_dict[ours + "mlp.W_out"] = tensors[hf + "mlp.down_proj.weight"].T  # [d_mlp, d_model]
    state_dict["ln_final.w"] = tensors["model.norm.weight"]
    # [d_vocab, d_model]
    unembedding = tensors["model.embed_tokens.weight"] if tied else tensors["lm_head.weight"]
    state_dict["unembed.W_U"] = unembedding.T  # [d_model, d_vocab]
    # [d_vocab]: Llama's head has no bias
    state_dict["unembed.b_U"] = np.zeros(cfg.d_vocab, dtype=cfg.dtype)
    return state_dict


# --- GPT-NeoX (Pythia) ---------------------------------------------------------------------------

NEOX_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_new",
    "gelu_pytorch_tanh": "gelu_new",
    "relu": "relu",
}


def neox_config(hf, dtype, n_ctx=None):
    """config.json's fields and the file's dtype -> (TransformerConfig, tied)."""
    check_fixed(hf)
    fields = {name: hf.get(name, default) for name, default in NEOX_DEFAULTS.items()}
    for name in (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
    ):
        _check_positive_int(name, fields[name])
    n_heads, d_model = fields["num_attention_heads"], fields["hidden_size"]
    if d_model % n_heads:
        raise ValueError(
            f"config.json: hidden_size ({d_model}) must be divisible by num_attention_heads "
            f"({n_heads})"
        )
    activation = fields["hidden_act"]
    if not isinstance(activation, str) or activation not in NEOX_ACTIVATIONS:
        raise ValueError(
            f"config.json: hidden_act is {activation!r}; the twins compute "
            f"{sorted(NEOX_ACTIVATIONS)}"
        )
    if fields["layer_norm_eps"] != 1e-5:
        raise ValueError(
            f"config.json: layer_norm_eps is {fields['layer_norm_eps']!r}; the twins' LayerNorm "
            "uses eps = 1e-5"
        )
    for name in ("tie_word_embeddings", "use_parallel_residual", "attention_bias"):
        if not isinstance(fields[name], bool):
            raise ValueError(f"config.json: {name} must be a bool, got {fields[name]!r}")
    theta, factor = rope_fields(hf)
    d_head = d_model // n_heads
    rotary_dim = int(d_head * factor)  # transformers' own rounding of the rotated width
    if rotary_dim < 2 or rotary_dim % 2:
        raise ValueError(
            f"config.json: partial_rotary_factor {factor!r} of head_dim {d_head} rotates "
            f"{rotary_dim} "
            "entries; the twins rotate an even number, at least 2"
        )
    try:
        cfg = TransformerConfig(
            d_vocab=fields["vocab_size"],
            d_model=d_model,
            n_heads=n_heads,
            n_layers=fields["num_hidden_layers"],
            n_ctx=_n_ctx(hf | fields, fields["num_hidden_layers"], n_ctx),
            d_mlp=fields["intermediate_size"],
            act_fn=NEOX_ACTIVATIONS[activation],
            normalization="pre",
            normalization_type="LN",
            positional_embedding_type="rotary",
            rotary_dim=rotary_dim,
            rotary_base=theta,
            rotary_adjacent_pairs=False,
            parallel_attn_mlp=fields["use_parallel_residual"],
            attn_bias=fields["attention_bias"],
            causal=True,
            unembed=True,
            dtype=dtype,
        )
    except (TypeError, ValueError) as error:
        raise ValueError(f"config.json describes a model the twins cannot build: {error}") from None
    return cfg, fields["tie_word_embeddings"]


def neox_shapes(cfg, tied, head="embed_out.weight"):
    """{Hugging Face name: shape} of the tensors a GPTNeoXForCausalLM of ``cfg`` holds."""
    d_model, d_mlp = cfg.d_model, cfg.d_mlp
    shapes = {"gpt_neox.embed_in.weight": (cfg.d_vocab, d_model)}
    for i in range(cfg.n_layers):
        layer = f"gpt_neox.layers.{i}."
        shapes.update(
            {
                layer + "input_layernorm.weight": (d_model,),
                layer + "input_layernorm.bias": (d_model,),
                layer + "post_attention_layernorm.weight": (d_model,),
                layer + "post_attention_layernorm.bias": (d_model,),
                layer + "attention.query_key_value.weight": (3 * d_model, d_model),
                layer + "attention.dense.weight": (d_model, d_model),
                layer + "mlp.dense_h_to_4h.weight": (d_mlp, d_model),
                layer + "mlp.dense_h_to_4h.bias": (d_mlp,),
                layer + "mlp.dense_4h_to_h.weight": (d_model, d_mlp),
                layer + "mlp.dense_4h_to_h.bias": (d_model,),
            }
        )
        if cfg.attn_bias:
            shapes.update(
                {
                    layer + "attention.query_key_value.bias": (3 * d_model,),
                    layer + "attention.dense.bias": (d_model,),
                }
            )
    shapes.update(
        {
            "gpt_neox.final_layer_norm.weight": (d_model,),
            "gpt_neox.final_layer_norm.bias": (d_model,),
        }
    )
    if not tied:
        shapes[head] = (cfg.d_vocab, d_model)
    return shapes


def neox_state_dict(tensors, cfg, tied):
    """Hugging Face GPT-NeoX tensors {name: ndarray} -> this project's state_dict (the table
    above)."""
    n_heads, d_head, d_model = cfg.n_heads, cfg.d_head, cfg.d_model
    state_dict = {"embed.W_E": tensors["gpt_neox.embed_in.weight"]}
    for i in range(cfg.n_layers):
        hf, ours = f"gpt_neox.layers.{i}.", f"blocks.{i}."
        state_dict[ours + "ln1.w"] = tensors[hf + "input_layernorm.weight"]
        state_dict[ours + "ln1.b"] = tensors[hf + "input_layernorm.bias"]
        # query_key_value's rows are head by head, each q | k | v: [n_heads * 3 * d_head, d_model]
        qkv = tensors[hf + "attention.query_key_value.weight"].reshape(n_heads, 3, d_head, d_model)
        for j, name in enumerate("QKV"):
            # [n_heads, d_model, d_head]
            state_dict[ours + f"attn.W_{name}"] = qkv[:, j].transpose(0, 2, 1)
        # dense [d_model, n_heads * d_head]: its columns are the heads' z ->
        # [n_heads, d_head, d_model]
        state_dict[ours + "attn.W_O"] = tensors[hf + "attention.dense.weight"].T.reshape(
            n_heads, d_head, d_model
        )
        if cfg.attn_bias:
            qkv_bias = tensors[hf + "attention.query_key_value.bias"].reshape(n_heads, 3, d_head)
            for j, name in enumerate("QKV"):
                state_dict[ours + f"attn.b_{name}"] = qkv_bias[:, j]  # [n_heads, d_head]
            state_dict[ours + "attn.b_O"] = tensors[hf + "attention.dense.bias"]
        state_dict[ours + "ln2.w"] = tensors[hf + "post_attention_layernorm.weight"]
        state_dict[ours + "ln2.b"] = tensors[hf + "post_attention_layernorm.bias"]
        # [d_model, d_mlp]
        state_dict[ours + "mlp.W_in"] = tensors[hf + "mlp.dense_h_to_4h.weight"].T
        state_dict[ours + "mlp.b_in"] = tensors[hf + "mlp.dense_h_to_4h.bias"]
        # [d_mlp, d_model]
        state_dict[ours + "mlp.W_out"] = tensors[hf + "mlp.dense_4h_to_h.weight"].T
        state_dict[ours + "mlp.b_out"] = tensors[hf + "mlp.dense_4h_to_h.bias"]
    state_dict["ln_final.w"] = tensors["gpt_neox.final_layer_norm.weight"]
    state_dict["ln_final.b"] = tensors["gpt_neox.final_layer_norm.bias"]
    head = next(
        name
        for name in ("embed_out.weight", "lm_head.weight", "gpt_neox.embed_in.weight")
        if name in tensors
    )
    state_dict["unembed.W_U"] = tensors[head].T  # [d_model, d_vocab]
    state_dict["unembed.b_U"] = np.zeros(cfg.d_vocab, dtype=cfg.dtype)  # [d_vocab]: no bias
    return state_dict


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"config.json: {name} must be a positive int, got {value!r}")
