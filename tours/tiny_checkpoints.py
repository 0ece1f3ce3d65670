"""Tiny random Llama and GPT-NeoX checkpoints, made offline: ``python demo.py gpt2 --make-tiny llama --model DIR``.

``make_llama_checkpoint`` builds ``transformers``' ``LlamaForCausalLM`` (or ``GPTNeoXForCausalLM``,
Pythia's shape) from a small config with random weights (norm weights near 1, never all ones;
biases non-zero where the config has them), writes it with ``save_pretrained`` (sharded when
asked), and a tiny BPE ``tokenizer.json`` trained with the ``tokenizers`` library on a few
sentences. The folder is what ``Transformer.from_pretrained`` reads; nothing is downloaded.
The parity tests build theirs here too.
"""

import os

import numpy as np

TEXT = ["the cat sat on the mat", "the dog sat on the log", "a small model reads every line"] * 4
SPECIALS = ["<unk>", "<s>", "</s>"]
SMALL = dict(vocab_size=64, hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=6, max_position_embeddings=16, rms_norm_eps=1e-6,
             rope_theta=500.0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)


def train_tokenizer(folder, vocab_size=SMALL["vocab_size"]):
    """A BPE over whitespace-split words, trained on TEXT, saved as tokenizer.json; its size."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS)
    tokenizer.train_from_iterator(TEXT, trainer)
    tokenizer.save(os.path.join(str(folder), "tokenizer.json"))
    return tokenizer.get_vocab_size()


# Pythia's shape, small: partial rotary (a quarter of each head), parallel attention and MLP, exact GELU
NEOX = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=16, rotary_pct=0.25, rotary_emb_base=500, hidden_act="gelu",
            use_parallel_residual=True, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)


def random_llama(dtype="float64", seed=0, family="llama", **overrides):
    """LlamaForCausalLM (or GPTNeoXForCausalLM) with random weights, SDPA attention, in eval mode."""
    import torch
    import transformers

    if family == "llama":
        config = transformers.LlamaConfig(**{**SMALL, **overrides}, attn_implementation="sdpa")
        model = transformers.LlamaForCausalLM(config)
    else:
        fields = {**NEOX, **overrides}
        factor, theta = fields.pop("rotary_pct"), fields.pop("rotary_emb_base")
        config = transformers.GPTNeoXConfig(**fields, attn_implementation="sdpa",
                                            rope_parameters={"rope_type": "default", "rope_theta": theta,
                                                             "partial_rotary_factor": factor})
        model = transformers.GPTNeoXForCausalLM(config)
    model = model.to(getattr(torch, dtype)).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator, dtype=torch.float64)
            if name.endswith(("layernorm.weight", "norm.weight")):
                value = 1 + 0.2 * noise  # near 1, never all ones
            elif p.ndim == 1:
                value = 0.2 * noise  # biases: non-zero
            elif "embed_tokens" in name or "embed_in" in name:
                value = noise
            else:
                value = noise / np.sqrt(p.shape[1])  # nn.Linear's [out, in]
            p.copy_(value.to(p.dtype))
    return model


def make_llama_checkpoint(folder, dtype="float64", seed=0, tokenizer=True, max_shard_size=None, family="llama",
                          **overrides):
    """Save a random Llama or GPT-NeoX (and, by default, the tiny tokenizer) in ``folder``; returns the HF model."""
    model = random_llama(dtype, seed, family, **overrides)
    if max_shard_size is None:
        model.save_pretrained(str(folder))
    else:
        model.save_pretrained(str(folder), max_shard_size=max_shard_size)
    if tokenizer:
        train_tokenizer(folder)
    return model
