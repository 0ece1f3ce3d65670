"""SmolLM2-135M's shape, forward + backward: the NumPy reference against the torch twin, time and
memory.

    python benchmarks/smollm2_135m.py                   # float32, 5 rounds, default threads
    python benchmarks/smollm2_135m.py --dtype both --threads 1 --clock cpu  # steadier when shared

SmolLM2-135M, a Llama: 30 layers, d_model 576, 9 query heads of 64 sharing 3 key/value heads, SwiGLU
with d_mlp 1536, RMSNorm (eps 1e-5), rotary (base 1e5), vocabulary 49,152, tied embeddings: 135M
parameters (the twins hold the unembedding as a matrix of its own: 163M numbers). n_ctx is 2048 here
(the checkpoint's 8192 would build 30 causal masks of 64 MiB; a step of 128 positions reads only
their corner). Random weights, no checkpoint needed. One step is the same as in ``fwd_bwd.py``: zero
the gradients, forward a batch of 1 sequence of 128 tokens, backward a random upstream gradient on
the logits, the same weights, tokens and gradient on both sides. A benchmark, not a test: it prints
and asserts nothing.

The sides alternate in rounds, each timed step after an untimed step of its side, as in
``gpt2_small.py``, whose ``main`` and ``measure`` this script runs with its own config; a time is
the median over rounds, the ratio the median of the per-round ratios. Peak memory is measured as
``fwd_bwd.py`` measures it (and with its functions): what one step allocates above the weights
and gradient buffers, NumPy by ``tracemalloc``, torch by ``torch.profiler``'s memory events.
"""

from __future__ import annotations

# first: gpt2_small imports fwd_bwd, which sets --threads for the BLAS before NumPy and torch load,
# and puts the project on the path
import gpt2_small
from gpt2_small import BATCH, POSITIONS, tied_count

SMOLLM2_135M = dict(
    d_vocab=49152,
    d_model=576,
    n_heads=9,
    d_head=64,
    d_mlp=1536,
    n_layers=30,
    n_ctx=2048,
    normalization="pre",
    normalization_type="RMS",
    eps=1e-5,
    positional_embedding_type="rotary",
    rotary_base=100000.0,
    act_fn="silu",
    gated_mlp=True,
    mlp_bias=False,
    attn_bias=False,
    n_key_value_heads=3,
    causal=True,
)


def describe(cfg):
    return (
        f"SmolLM2-135M's shape: {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} query "
        f"heads of {cfg.d_head} sharing {cfg.n_key_value_heads} key/value heads, SwiGLU d_mlp "
        f"{cfg.d_mlp}, d_vocab {cfg.d_vocab}, n_ctx {cfg.n_ctx}; {tied_count(cfg) / 1e6:.1f}M "
        f"parameters counted tied; batch {BATCH}, {POSITIONS} positions; random weights"
    )


if __name__ == "__main__":
    gpt2_small.main(SMOLLM2_135M, describe, __doc__)
