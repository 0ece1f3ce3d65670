"""GPT-2 small's shape, forward + backward: the NumPy reference against the torch twin, time and
memory.

    python benchmarks/gpt2_small.py                    # float32, 5 rounds, the default thread count
    python benchmarks/gpt2_small.py --dtype both --threads 1 --clock cpu   # steadier when shared

GPT-2 small: 12 layers, d_model 768, 12 heads of 64, d_mlp 3072, vocabulary 50,257, n_ctx 1024,
124M parameters (the twins hold the unembedding as a matrix of its own: 163M numbers). Random
weights, no checkpoint needed. One step is the same as in ``fwd_bwd.py``: zero the gradients,
forward a batch of 1 sequence of 128 tokens, backward a random upstream gradient on the logits,
the same weights, tokens and gradient on both sides. A benchmark, not a test: it prints and
asserts nothing.

The sides alternate in rounds, so load from elsewhere on the machine hits both; each timed step
follows an untimed step of the same side (``fwd_bwd.py`` says why: NumPy's BLAS threads spin for a
while after its last product); a time is the median over rounds, the ratio the median of the
per-round ratios. Peak memory is measured as
``fwd_bwd.py`` measures it (and with its functions): what one step allocates above the weights
and gradient buffers, NumPy by ``tracemalloc``, torch by ``torch.profiler``'s memory events.
"""

from __future__ import annotations

import argparse
import statistics
import tracemalloc

# first: fwd_bwd sets --threads for the BLAS before NumPy and torch load, and puts the project on
# the path
import fwd_bwd
import numpy as np  # noqa: E402
import torch  # noqa: E402
from fwd_bwd import CLOCKS, blas_line, seconds

import numpy_impl  # noqa: E402
import torch_impl  # noqa: E402
from foundation.files.weights import parameter_shapes  # noqa: E402

GPT2_SMALL = dict(
    d_vocab=50257,
    d_model=768,
    n_heads=12,
    d_head=64,
    d_mlp=3072,
    n_layers=12,
    n_ctx=1024,
    normalization="pre",
    act_fn="gelu_new",
    causal=True,
    positional="learned",
)
BATCH, POSITIONS = 1, 128


class Setup:
    """Both twins on the same random weights, tokens and upstream gradient (``fields``: the
    config's fields; benchmarks/smollm2_135m.py passes its own)."""

    def __init__(self, dtype, fields=GPT2_SMALL):
        self.cfg = numpy_impl.TransformerConfig(**fields, dtype=dtype)
        rng = np.random.default_rng(0)
        self.model = numpy_impl.Transformer(self.cfg, seed=0)
        for _, p in self.model.named_parameters():  # random norm weights and biases too
            p.data += (0.1 * rng.standard_normal(p.shape)).astype(dtype)
        self.twin = torch_impl.Transformer.from_twin(self.model)
        self.tokens = rng.integers(0, self.cfg.d_vocab, size=(BATCH, POSITIONS))
        self.dout = rng.standard_normal((BATCH, POSITIONS, self.cfg.d_vocab)).astype(dtype)
        self.tokens_t = torch.from_numpy(self.tokens)
        self.dout_t = torch.from_numpy(self.dout)

    def numpy_step(self):
        self.model.zero_grad()
        self.model.forward(self.tokens)
        self.model.backward(self.dout)

    def torch_step(self):
        self.twin.zero_grad(set_to_none=False)
        self.twin(self.tokens_t).backward(self.dout_t)


def numpy_peak_bytes(setup):
    """The most memory one NumPy step holds above what it started with (tracemalloc)."""
    tracemalloc.start()
    setup.numpy_step()
    for _, module in setup.model.named_modules():  # start, as torch does, without saved values
        if hasattr(module, "cache"):
            module.cache = None
    before = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    setup.numpy_step()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak - before


def torch_peak_bytes(setup):
    """The most memory one torch step holds: torch's profiler's allocation events, added up."""
    setup.torch_step()
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities, profile_memory=True) as prof:
        setup.torch_step()
    # every allocation and free is a "[memory]" event carrying its size (negative for a free)
    events = [
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]"
    ]
    held = peak = 0
    for _, change in sorted(events):
        held += change
        peak = max(peak, held)
    return peak


def measure(dtype, rounds, fields=GPT2_SMALL):
    """Alternating NumPy and torch steps: median times, their ratio, and each side's peak memory."""
    setup = Setup(dtype, fields)
    setup.numpy_step()  # warm-up
    setup.torch_step()
    numpy_s, torch_s = [], []
    for _ in range(rounds):
        setup.numpy_step()  # settle: the step before a timed one is the same side's
        numpy_s.append(seconds(setup.numpy_step))
        setup.torch_step()
        torch_s.append(seconds(setup.torch_step))
    ratios = [n / t for n, t in zip(numpy_s, torch_s)]
    return dict(
        numpy=statistics.median(numpy_s),
        torch=statistics.median(torch_s),
        ratio=statistics.median(ratios),
        ratios=ratios,
        numpy_mib=numpy_peak_bytes(setup) / 2**20,
        torch_mib=torch_peak_bytes(setup) / 2**20,
    )


def main(fields=GPT2_SMALL, describe=None, doc=__doc__):
    """Parse the command line, print what runs, then a row per dtype (benchmarks/smollm2_135m.py
    calls this with its own config's ``fields``, ``describe(cfg)`` line and docstring)."""
    parser = argparse.ArgumentParser(description=" ".join(doc.split("\n\n")[0].split()))
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
    print((describe or describe_gpt2_small)(numpy_impl.TransformerConfig(**fields)))
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
        r = measure(dtype, args.rounds, fields)
        print(
            f"{dtype:8} {1e3 * r['numpy']:9.0f} {1e3 * r['torch']:9.0f} {r['ratio']:12.2f} "
            f"{r['numpy_mib']:10.1f} "
            f"{r['torch_mib']:10.1f}   " + " ".join(f"{x:.2f}" for x in r["ratios"])
        )
    print(
        "\n(times: medians over rounds, each timed step after an untimed step of its side; "
        "NumPy/torch: median of per-round ratios. Peak memory of one step above the weights and "
        "gradient buffers: NumPy by tracemalloc, torch by torch.profiler's memory events.)"
    )


def tied_count(cfg):
    """How many numbers the model holds with the unembedding tied to the embedding (as GPT-2 and
    SmolLM2 count their parameters); the twins hold ``W_U`` apart."""
    return sum(
        np.prod(shape)
        for name, shape in parameter_shapes(cfg).items()
        if not name.startswith("unembed.")
    )


def describe_gpt2_small(cfg):
    return (
        f"GPT-2 small's shape: {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads "
        f"of {cfg.d_head}, d_mlp {cfg.d_mlp}, d_vocab {cfg.d_vocab}, n_ctx {cfg.n_ctx}; "
        f"{tied_count(cfg) / 1e6:.1f}M parameters as GPT-2 counts them; batch {BATCH}, {POSITIONS} "
        f"positions; random weights"
    )


if __name__ == "__main__":
    main()
