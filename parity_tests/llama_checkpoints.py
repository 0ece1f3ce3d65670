"""Small Llama and GPT-NeoX checkpoints for the tests, made here: nothing is downloaded.

``make_llama_checkpoint`` builds ``transformers``' ``LlamaForCausalLM`` (or ``GPTNeoXForCausalLM``,
Pythia's shape) from a small config with random weights (norm weights near 1, never all ones;
biases non-zero where the config has them), writes it with ``save_pretrained`` (sharded when
asked), and a tiny BPE ``tokenizer.json`` trained with the ``tokenizers`` library.

``exact_float64`` patches ``transformers`` for the comparison, test-side only: its rotary angles
(cos and sin) and its RMSNorm compute in float32 even in a float64 model, which leaves its logits
about 1e-8 away from the exact float64 values; patched, they compute in the model's dtype.
"""

import contextlib
import os

import numpy as np
import torch

from parity_tests.gpt2_checkpoints import needs_transformers

TEXT = ["the cat sat on the mat", "the dog sat on the log", "a small model reads every line"] * 4
SPECIALS = ["<unk>", "<s>", "</s>"]
SMALL = dict(
    vocab_size=64,
    hidden_size=24,
    intermediate_size=40,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=6,
    max_position_embeddings=16,
    rms_norm_eps=1e-6,
    rope_theta=500.0,
    bos_token_id=1,
    eos_token_id=2,
    tie_word_embeddings=False,
)


def train_tokenizer(folder, vocab_size=SMALL["vocab_size"]):
    """A BPE over whitespace-split words, trained on TEXT, saved as tokenizer.json; its size."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS)
    tokenizer.train_from_iterator(TEXT, trainer)
    tokenizer.save(os.path.join(str(folder), "tokenizer.json"))
    return tokenizer.get_vocab_size()


# Pythia's shape, small: partial rotary (a quarter of each head), parallel attention and MLP, exact
# GELU
NEOX = dict(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=16,
    rotary_pct=0.25,
    rotary_emb_base=500,
    hidden_act="gelu",
    use_parallel_residual=True,
    bos_token_id=1,
    eos_token_id=2,
    tie_word_embeddings=False,
)


def random_llama(dtype="float64", seed=0, family="llama", **overrides):
    """LlamaForCausalLM (or GPTNeoXForCausalLM) with random weights, SDPA attention, in eval
    mode."""
    transformers = needs_transformers("a Llama checkpoint")
    if family == "llama":
        config = transformers.LlamaConfig(**{**SMALL, **overrides}, attn_implementation="sdpa")
        model = transformers.LlamaForCausalLM(config)
    else:
        fields = {**NEOX, **overrides}
        factor, theta = fields.pop("rotary_pct"), fields.pop("rotary_emb_base")
        config = transformers.GPTNeoXConfig(
            **fields,
            attn_implementation="sdpa",
            rope_parameters={
                "rope_type": "default",
                "rope_theta": theta,
                "partial_rotary_factor": factor,
            },
        )
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


def make_llama_checkpoint(
    folder,
    dtype="float64",
    seed=0,
    tokenizer=True,
    max_shard_size=None,
    family="llama",
    **overrides,
):
    """Save a random Llama or GPT-NeoX (and, by default, the tiny tokenizer) in ``folder``; returns
    the HF model."""
    model = random_llama(dtype, seed, family, **overrides)
    if max_shard_size is None:
        model.save_pretrained(str(folder))
    else:
        model.save_pretrained(str(folder), max_shard_size=max_shard_size)
    if tokenizer:
        train_tokenizer(folder)
    return model


def _rotary_forward(self, x, position_ids):
    """cos and sin of the rotary angles, computed in float64 from rope_theta, in x's dtype."""
    dim = 2 * self.inv_freq.shape[-1]
    base = self.config.rope_parameters["rope_theta"]
    inv_freq = 1.0 / base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)  # [dim / 2]
    freqs = position_ids[..., None].to(torch.float64) * inv_freq  # [batch, pos, dim / 2]
    emb = torch.cat((freqs, freqs), dim=-1)  # [batch, pos, dim]
    return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def _rms_norm_forward(self, hidden_states):
    """LlamaRMSNorm in the model's own dtype."""
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


@contextlib.contextmanager
def exact_float64():
    """transformers' Llama and GPT-NeoX with rotary angles and RMSNorm in the model's dtype (float32
    otherwise)."""
    # imported here, not at the top: the modeling modules take seconds to import, and every test
    # worker collects this file (pyproject.toml: pytest-xdist)
    needs_transformers("a Llama checkpoint")
    from transformers.models.gpt_neox import modeling_gpt_neox
    from transformers.models.llama import modeling_llama

    saved = (
        modeling_llama.LlamaRotaryEmbedding.forward,
        modeling_llama.LlamaRMSNorm.forward,
        modeling_gpt_neox.GPTNeoXRotaryEmbedding.forward,
    )
    modeling_llama.LlamaRotaryEmbedding.forward = _rotary_forward
    modeling_llama.LlamaRMSNorm.forward = _rms_norm_forward
    modeling_gpt_neox.GPTNeoXRotaryEmbedding.forward = _rotary_forward
    try:
        yield
    finally:
        (
            modeling_llama.LlamaRotaryEmbedding.forward,
            modeling_llama.LlamaRMSNorm.forward,
            modeling_gpt_neox.GPTNeoXRotaryEmbedding.forward,
        ) = saved
