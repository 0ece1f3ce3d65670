"""Tiny random checkpoints (GPT-2, Llama, GPT-NeoX), written here with no download and no
``transformers``.

    write_checkpoint("tiny-gpt2")                       # config.json, model.safetensors,
                                                        # vocab.json, merges.txt
    Transformer.from_pretrained("tiny-gpt2")            # either twin reads it back

A checkpoint folder as ``save_pretrained`` writes one, small enough for a laptop: the same
``config.json`` fields, the same tensor names and layouts, and a byte-level BPE tokenizer trained
(with the ``tokenizers`` library) on a few sentences, saved as GPT-2 ships its own. The weights
are random, so the text it generates is noise; everything else (loading, the name map, the
twins' agreement, the figures) works as it does on GPT-2 itself.

``ARCHITECTURES`` maps a name to its writer; ``python demo.py checkpoint DIR --arch NAME``
offers every one.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile

import numpy as np

END_OF_TEXT = "<|endoftext|>"
# what the tokenizer learns its merges from: the gpt2 tour's default prompt among them, so that
# the prompt becomes whole-word tokens (14 of them)
TEXT = [
    "When Mary and John went to the store, John gave a drink to Mary.",
    "The cat sat on the mat. The dog sat on the log.",
    "Hello world! A small model reads every line, and so do its readers.",
    "Attention is all you need; layer norm, residual stream, logits and tokens.",
]
# at most this many tokens: 256 bytes, <|endoftext|>, the merges TEXT offers (373)
TOKENIZER_SIZE = 400

# the default sizes, by the names every architecture's writer takes (each maps them to its
# config.json's names)
SIZES = {"layers": 2, "heads": 4, "d_model": 32, "n_ctx": 64}
# the weights' dtype in the file: the twins load float16 and bfloat16 ones by exact upcast
DTYPES = ("float32", "float64", "float16", "bfloat16")


def write_checkpoint(folder, arch="gpt2", seed=0, dtype="float32", **sizes):
    """Write a tiny random checkpoint of ``arch`` into ``folder`` (made if missing); returns it.

    ``sizes`` override ``SIZES`` (layers, heads, d_model, n_ctx), the same names for every
    architecture. A folder that already holds a config.json is refused, so that no checkpoint
    is overwritten.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch must be one of {sorted(ARCHITECTURES)}, got {arch!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    folder = os.fspath(folder)
    if os.path.exists(os.path.join(folder, "config.json")):
        raise ValueError(f"{folder!r} already holds a config.json: choose an empty or new folder")
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ValueError(f"{folder!r} is a file, not a folder")
    os.makedirs(folder, exist_ok=True)
    # every file is written in a temporary folder inside, then moved in: no half-written checkpoint
    staging = tempfile.mkdtemp(prefix=".tiny-", dir=folder)
    try:
        ARCHITECTURES[arch](staging, seed, dtype, **sizes)
        for name in sorted(os.listdir(staging)):
            os.replace(os.path.join(staging, name), os.path.join(folder, name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def write_tokenizer(folder, as_json=False):
    """A byte-level BPE trained on TEXT, saved as vocab.json and merges.txt (``as_json``: as
    tokenizer.json, as Llama and GPT-NeoX ship theirs); returns its size."""
    from tokenizers import ByteLevelBPETokenizer

    tokenizer = ByteLevelBPETokenizer()
    tokenizer.train_from_iterator(
        TEXT * 4,
        vocab_size=TOKENIZER_SIZE,
        min_frequency=1,
        special_tokens=[END_OF_TEXT],
        show_progress=False,
    )
    if as_json:
        tokenizer.save(os.path.join(folder, "tokenizer.json"))
    else:
        tokenizer.save_model(folder)
    return tokenizer.get_vocab_size()


def checked_sizes(sizes):
    """SIZES with ``sizes`` over them; an unknown name, a size that is no positive int, or a d_model
    that the heads do not divide is a ValueError naming it."""
    unknown = sorted(set(sizes) - set(SIZES))
    if unknown:
        raise ValueError(f"unknown sizes {unknown}; the sizes are {sorted(SIZES)}")
    fields = {**SIZES, **sizes}
    for name, value in fields.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if fields["d_model"] % fields["heads"]:
        raise ValueError(
            f"d_model ({fields['d_model']}) must be divisible by heads ({fields['heads']})"
        )
    return fields


def write_gpt2(folder, seed, dtype, **sizes):
    """A random GPT-2 (tied embedding, gelu_new, pre-norm) with a tiny tokenizer, laid out as
    save_pretrained lays one out."""
    fields = checked_sizes(sizes)
    d_model, n_heads = fields["d_model"], fields["heads"]
    d_vocab = write_tokenizer(folder)  # <|endoftext|> is id 0: the BOS and EOS
    d_mlp = 4 * d_model
    shapes = {"wte.weight": (d_vocab, d_model), "wpe.weight": (fields["n_ctx"], d_model)}
    for i in range(fields["layers"]):
        shapes.update(
            {
                f"h.{i}.ln_1.weight": (d_model,),
                f"h.{i}.ln_1.bias": (d_model,),
                f"h.{i}.attn.c_attn.weight": (d_model, 3 * d_model),
                f"h.{i}.attn.c_attn.bias": (3 * d_model,),
                f"h.{i}.attn.c_proj.weight": (d_model, d_model),
                f"h.{i}.attn.c_proj.bias": (d_model,),
                f"h.{i}.ln_2.weight": (d_model,),
                f"h.{i}.ln_2.bias": (d_model,),
                f"h.{i}.mlp.c_fc.weight": (d_model, d_mlp),
                f"h.{i}.mlp.c_fc.bias": (d_mlp,),
                f"h.{i}.mlp.c_proj.weight": (d_mlp, d_model),
                f"h.{i}.mlp.c_proj.bias": (d_model,),
            }
        )
    shapes.update({"ln_f.weight": (d_model,), "ln_f.bias": (d_model,)})
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, shape in shapes.items():
        noise = rng.standard_normal(shape)
        if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            value = 1 + 0.2 * noise  # LayerNorm gains near 1, never all ones
        elif len(shape) == 1:
            value = 0.2 * noise  # biases: non-zero
        else:
            value = noise / np.sqrt(shape[-1] if name.startswith(("wte", "wpe")) else shape[0])
        tensors["transformer." + name] = value
    save_tensors(tensors, os.path.join(folder, "model.safetensors"), dtype)
    config = {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": d_vocab,
        "n_positions": fields["n_ctx"],
        "n_embd": d_model,
        "n_layer": fields["layers"],
        "n_head": n_heads,
        "n_inner": None,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "tie_word_embeddings": True,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "torch_dtype": dtype,
    }
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)


def write_rotary(folder, seed, dtype, arch, **sizes):
    """A random Llama (RMSNorm, rotary, SwiGLU, grouped queries, tied, as SmolLM2) or GPT-NeoX
    (Pythia's shape: LayerNorm, a quarter of each head rotated, parallel attention and MLP, exact
    GELU), with the tiny tokenizer as tokenizer.json; names and layouts as save_pretrained's."""
    from foundation.contract.config import TransformerConfig
    from foundation.files.llama import llama_shapes, neox_shapes

    fields = checked_sizes(sizes)
    d_model, n_heads, d_head = (
        fields["d_model"],
        fields["heads"],
        fields["d_model"] // fields["heads"],
    )
    d_vocab = write_tokenizer(folder, as_json=True)  # <|endoftext|> is id 0: the BOS and EOS
    llama = arch == "llama"
    # grouped: two query heads per key/value head
    n_kv = n_heads // 2 if llama and n_heads % 2 == 0 else n_heads
    # NeoX: a quarter of each head, even
    rotary_dim = d_head if llama else max(2, d_head // 4 // 2 * 2)
    if rotary_dim % 2:
        raise ValueError(f"d_model / heads ({d_head}) must be even: rotary turns pairs of entries")
    cfg = TransformerConfig(
        d_vocab=d_vocab,
        d_model=d_model,
        n_heads=n_heads,
        n_layers=fields["layers"],
        n_ctx=fields["n_ctx"],
        d_mlp=3 * d_model if llama else 4 * d_model,
        act_fn="silu" if llama else "gelu",
        gated_mlp=llama,
        mlp_bias=not llama,
        attn_bias=not llama,
        normalization_type="RMS" if llama else "LN",
        positional_embedding_type="rotary",
        rotary_dim=rotary_dim,
        parallel_attn_mlp=not llama,
        n_key_value_heads=n_kv if n_kv != n_heads else None,
    )
    shapes = llama_shapes(cfg, tied=True) if llama else neox_shapes(cfg, tied=False)
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, shape in shapes.items():
        noise = rng.standard_normal(shape)
        if name.endswith(("norm.weight", "layernorm.weight")):
            value = 1 + 0.2 * noise  # norm gains near 1, never all ones
        elif len(shape) == 1:
            value = 0.2 * noise  # biases: non-zero
        else:
            # nn.Linear's [out, in], and the [d_vocab, d_model] tables
            value = noise / np.sqrt(shape[1])
        tensors[name] = value
    save_tensors(tensors, os.path.join(folder, "model.safetensors"), dtype)
    common = {
        "vocab_size": d_vocab,
        "hidden_size": d_model,
        "intermediate_size": cfg.d_mlp,
        "num_hidden_layers": fields["layers"],
        "num_attention_heads": n_heads,
        "max_position_embeddings": fields["n_ctx"],
        "bos_token_id": 0,
        "eos_token_id": 0,
        "torch_dtype": dtype,
    }
    if llama:
        config = {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            **common,
            "num_key_value_heads": n_kv,
            "head_dim": d_head,
            "hidden_act": "silu",
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "rope_scaling": None,
            "attention_bias": False,
            "mlp_bias": False,
            "tie_word_embeddings": True,
        }
    else:
        config = {
            "architectures": ["GPTNeoXForCausalLM"],
            "model_type": "gpt_neox",
            **common,
            "hidden_act": "gelu",
            "rotary_pct": rotary_dim / d_head,
            "rotary_emb_base": 10000,
            "layer_norm_eps": 1e-5,
            "use_parallel_residual": True,
            "attention_bias": True,
            "tie_word_embeddings": False,
        }
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)


def save_tensors(tensors, path, dtype):
    """Write {name: ndarray} to the safetensors file ``path``, each rounded to ``dtype``.

    NumPy (and so ``safetensors.numpy``) has no bfloat16, so a bfloat16 file is written here, in
    the format's own layout: the header's length (8 bytes, little-endian), the JSON header (each
    tensor's dtype, shape and byte range), padded to 8 bytes, then the data.
    """
    if dtype != "bfloat16":
        from safetensors.numpy import save_file

        arrays = {name: value.astype(dtype) for name, value in tensors.items()}
        save_file(arrays, path, metadata={"format": "pt"})
        return
    header, chunks, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, value in tensors.items():
        data = bfloat16_bits(value).tobytes()
        header[name] = {
            "dtype": "BF16",
            "shape": list(value.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data begins 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(chunks))


def bfloat16_bits(values):
    """Finite values -> the bits of the nearest bfloat16 (ties to even), uint16, little-endian: the
    upper half of the float32's bits, rounded as torch rounds a float32."""
    bits = np.asarray(values, dtype=np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2")


def write_llama(folder, seed, dtype, **sizes):
    write_rotary(folder, seed, dtype, "llama", **sizes)


def write_gpt_neox(folder, seed, dtype, **sizes):
    write_rotary(folder, seed, dtype, "gpt_neox", **sizes)


# architecture name -> its writer(folder, seed, dtype, **sizes)
ARCHITECTURES = {"gpt2": write_gpt2, "llama": write_llama, "gpt_neox": write_gpt_neox}
