"""Small GPT-2 checkpoints for the tests, made here: nothing is downloaded.

``make_checkpoint`` builds ``transformers``' ``GPT2LMHeadModel`` from a small ``GPT2Config``, gives
every parameter random values (LayerNorm weights near 1, never all ones; non-zero biases) and
writes it with ``save_pretrained``; ``train_tokenizer`` trains a tiny byte-level BPE with the
``tokenizers`` library and writes it as GPT-2 ships its own: ``vocab.json`` and ``merges.txt``.
"""

import numpy as np
import pytest
import torch
from tokenizers import ByteLevelBPETokenizer


def needs_transformers(what="a GPT-2 checkpoint"):
    """``transformers``, imported when a test first makes a checkpoint, not when the tests are
    collected (a second or more of each worker's start); a test skips without it."""
    return pytest.importorskip(
        "transformers",
        reason=f"transformers is needed to make {what} "
        "(pip install transformers, or the test extra)",
    )


END_OF_TEXT = "<|endoftext|>"
TEXT = [
    "The cat sat on the mat. The dog sat on the log.",
    "When Mary and John went to the store, John gave a drink to Mary.",
    "Hello world! A small model reads every line, and so do its readers.",
    "Attention is all you need; layer norm, residual stream, logits and tokens.",
]
D_VOCAB = 320  # at least the tiny tokenizer's size (it learns fewer merges than it may)
SMALL = dict(vocab_size=D_VOCAB, n_positions=24, n_embd=24, n_layer=2, n_head=3, n_inner=40)


def train_tokenizer(folder, vocab_size=D_VOCAB):
    """A byte-level BPE trained on TEXT, saved as vocab.json and merges.txt in ``folder``; its
    size."""
    tokenizer = ByteLevelBPETokenizer()
    tokenizer.train_from_iterator(
        TEXT * 4, vocab_size=vocab_size, min_frequency=1, special_tokens=[END_OF_TEXT]
    )
    tokenizer.save_model(str(folder))
    return tokenizer.get_vocab_size()


def random_hf_model(dtype="float64", seed=0, **overrides):
    """GPT2LMHeadModel with random weights (eager attention: the textbook path), in eval mode (no
    dropout)."""
    # the tiny tokenizer's <|endoftext|> is 0
    transformers = needs_transformers()
    fields = dict(SMALL, bos_token_id=0, eos_token_id=0, **overrides)
    config = transformers.GPT2Config(**fields, attn_implementation="eager")
    model = transformers.GPT2LMHeadModel(config).to(getattr(torch, dtype)).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator, dtype=torch.float64)
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                value = 1 + 0.2 * noise  # near 1, never all ones
            elif p.ndim == 1:
                value = 0.2 * noise  # biases: non-zero
            else:
                value = noise / np.sqrt(p.shape[0])  # [in, out] (Conv1D) or [rows, d_model] tables
            p.copy_(value.to(p.dtype))
    return model


def make_checkpoint(folder, dtype="float64", seed=0, tokenizer=True, **overrides):
    """Save a random GPT-2 (and, by default, the tiny tokenizer) in ``folder``; returns the HF
    model."""
    model = random_hf_model(dtype, seed, **overrides)
    model.save_pretrained(str(folder))
    if tokenizer:
        train_tokenizer(folder)
    return model


def hf_tokens(tokens):
    return torch.as_tensor(np.asarray(tokens), dtype=torch.int64)
