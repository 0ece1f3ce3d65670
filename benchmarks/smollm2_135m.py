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

The sides alternate in rounds, so load from elsewhere on the machine hits both; a time is the
median over rounds, the ratio the median of the per-round ratios. Peak memory is measured as
``fwd_bwd.py`` measures it (and with its functions): what one step allocates above the weights
and gradient buffers, NumPy by ``tracemalloc``, torch by ``torch.profiler``'s memory events.
"""

from __future__ import annotations

import argparse

# first: fwd_bwd sets --threads for the BLAS before NumPy and torch load, and puts the project on
# the path
import fwd_bwd
import numpy as np  # noqa: E402
import torch  # noqa: E402
from fwd_bwd import CLOCKS, blas_line
from gpt2_small import BATCH, POSITIONS, measure

import numpy_impl  # noqa: E402
from foundation.files.weights import parameter_shapes  # noqa: E402

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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads for NumPy's BLAS and torch (default: each library's own default)",
    )
    parser.add_argument(
        "--rounds", type=int, default=5, help="alternating rounds per dtype (default 5)"
    )
    parser.add_argument("--dtype", choices=("float32", "float64", "both"), default="float32")
    parser.add_argument(
        "--clock",
        choices=tuple(CLOCKS),
        default="wall",
        help="wall: elapsed time (default); cpu: this process's CPU time, steadier on a machine "
        "shared with other jobs (with --threads 1 only: it adds up the time of every thread)",
    )
    args = parser.parse_args()
    fwd_bwd.clock = CLOCKS[args.clock]  # the clock fwd_bwd.seconds reads
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    cfg = numpy_impl.TransformerConfig(**SMOLLM2_135M)
    tied_count = sum(
        np.prod(shape)
        for name, shape in parameter_shapes(cfg).items()
        if not name.startswith("unembed.")
    )
    print(
        f"SmolLM2-135M's shape: {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} query "
        f"heads of "
        f"{cfg.d_head} sharing {cfg.n_key_value_heads} key/value heads, SwiGLU d_mlp {cfg.d_mlp}, "
        f"d_vocab "
        f"{cfg.d_vocab}, n_ctx {cfg.n_ctx}; {tied_count / 1e6:.1f}M parameters counted tied; batch "
        f"{BATCH}, "
        f"{POSITIONS} positions; random weights"
    )
    print(
        f"threads: {'default' if args.threads is None else args.threads} (torch uses "
        f"{torch.get_num_threads()}); "
        f"numpy {np.__version__}, torch {torch.__version__}; {args.rounds} rounds; {args.clock} "
        f"clock"
    )
    print(blas_line())
    print(
        f"\n{'dtype':8} {'NumPy ms':>9} {'torch ms':>9} {'NumPy/torch':>12} {'NumPy MiB':>10} "
        f"{'torch MiB':>10}"
        "   per-round ratios"
    )
    for dtype in ("float32", "float64") if args.dtype == "both" else (args.dtype,):
        r = measure(dtype, args.rounds, SMOLLM2_135M)
        print(
            f"{dtype:8} {1e3 * r['numpy']:9.0f} {1e3 * r['torch']:9.0f} {r['ratio']:12.2f} "
            f"{r['numpy_mib']:10.1f} "
            f"{r['torch_mib']:10.1f}   " + " ".join(f"{x:.2f}" for x in r["ratios"])
        )
    print(
        "\n(times: medians over rounds; NumPy/torch: median of per-round ratios. Peak memory of "
        "one step above the "
        "weights and gradient buffers: NumPy by tracemalloc, torch by torch.profiler's memory "
        "events.)"
    )


if __name__ == "__main__":
    main()
