"""How long forward + backward of config M takes: the NumPy reference, the torch twin, the floor.

    python benchmarks/fwd_bwd.py              # the machine's default thread count
    python benchmarks/fwd_bwd.py --threads 1  # one thread on both sides

A benchmark, not a test: it prints numbers and asserts nothing. One step is: forward of a
batch of tokens, then backward of a random upstream gradient on the logits (the same weights,
tokens and gradient on both sides). The sides alternate in rounds, so a burst of load from
elsewhere on the machine hits both; a time is the median over rounds, a ratio the median of
the per-round ratios.

The floor is the same matrix products and nothing else, as plain ``@`` on contiguous arrays of
the same shapes: the time no implementation that does these products can beat. Its share of
the NumPy step says how much of the step is spent outside them (softmax, GELU, LayerNorm,
copies, Python).

Peak memory of one step, above what was held before it (weights and gradient buffers, no
activations): on the NumPy side from ``tracemalloc`` (NumPy reports its array buffers to it); on
the torch side from the memory events of ``torch.profiler`` (allocations minus frees, summed in
time order). Both count the activations kept for the backward and the temporaries, not the
weights, the interpreter or the libraries.
"""

from __future__ import annotations

import argparse
import os
import sys


def _threads_from_argv():
    """--threads must act before NumPy and torch load their thread pools: set it first."""
    for i, arg in enumerate(sys.argv):
        if arg == "--threads" and i + 1 < len(sys.argv):
            return sys.argv[i + 1]
        if arg.startswith("--threads="):
            return arg.split("=", 1)[1]
    return None


_THREADS = _threads_from_argv()
if _THREADS is not None:
    for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_name] = _THREADS

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import statistics  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import numpy_impl  # noqa: E402
import torch_impl  # noqa: E402

CONFIG_M = dict(d_vocab=512, d_model=256, n_heads=8, d_head=32, d_mlp=1024, n_layers=4, n_ctx=128,
                normalization="pre", act_fn="gelu_new", causal=True, positional="learned")
BATCH = 16


def matmul_shapes(cfg, batch):
    """(left shape, right shape) of every matrix product in one forward + backward of the model."""
    n, m, h, d, f, v, p = batch * cfg.n_ctx, cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp, cfg.d_vocab, cfg.n_ctx
    hd = h * d
    per_layer = [
        # forward: q, k, v; scores; z; attention out; MLP in; MLP out
        ((n, m), (m, hd)), ((n, m), (m, hd)), ((n, m), (m, hd)),
        ((batch, h, p, d), (batch, h, d, p)), ((batch, h, p, p), (batch, h, p, d)),
        ((n, hd), (hd, m)), ((n, m), (m, f)), ((n, f), (f, m)),
        # backward: MLP out (W grad, input grad); MLP in; attention out; z (dpattern, dv);
        # scores (dq, dk); q, k, v (three W grads, three input grads)
        ((f, n), (n, m)), ((n, m), (m, f)), ((m, n), (n, f)), ((n, f), (f, m)),
        ((hd, n), (n, m)), ((n, m), (m, hd)),
        ((batch, h, p, d), (batch, h, d, p)), ((batch, h, p, p), (batch, h, p, d)),
        ((batch, h, p, p), (batch, h, p, d)), ((batch, h, p, p), (batch, h, p, d)),
        ((m, n), (n, hd)), ((m, n), (n, hd)), ((m, n), (n, hd)),
        ((n, hd), (hd, m)), ((n, hd), (hd, m)), ((n, hd), (hd, m)),
    ]
    unembed = [((n, m), (m, v)), ((m, n), (n, v)), ((n, v), (v, m))]
    return per_layer * cfg.n_layers + unembed


class Setup:
    """Both twins on the same weights, tokens and upstream gradient, and the floor's operands."""

    def __init__(self, dtype):
        self.cfg = numpy_impl.TransformerConfig(**CONFIG_M, dtype=dtype)
        rng = np.random.default_rng(0)
        self.model = numpy_impl.Transformer(self.cfg, seed=0)
        for _, p in self.model.named_parameters():  # random LayerNorm weights and biases too
            p.data[...] = p.data + 0.1 * rng.standard_normal(p.shape).astype(dtype)
        self.twin = torch_impl.Transformer.from_twin(self.model)
        self.tokens = rng.integers(0, self.cfg.d_vocab, size=(BATCH, self.cfg.n_ctx))
        self.dout = rng.standard_normal((BATCH, self.cfg.n_ctx, self.cfg.d_vocab)).astype(dtype)
        self.tokens_t = torch.from_numpy(self.tokens)
        self.dout_t = torch.from_numpy(self.dout)
        self.operands = [(rng.standard_normal(a).astype(dtype), rng.standard_normal(b).astype(dtype))
                         for a, b in matmul_shapes(self.cfg, BATCH)]

    def numpy_step(self):
        self.model.zero_grad()
        self.model.forward(self.tokens)
        self.model.backward(self.dout)

    def torch_step(self):
        self.twin.zero_grad(set_to_none=False)
        self.twin(self.tokens_t).backward(self.dout_t)

    def floor_step(self):
        for a, b in self.operands:
            a @ b


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCKS["wall"]


def seconds(fn):
    start = clock()
    fn()
    return clock() - start


def numpy_peak_bytes(setup):
    tracemalloc.start()
    setup.numpy_step()
    for _, module in setup.model.named_modules():  # start, as torch does, without the last step's activations
        if hasattr(module, "cache"):
            module.cache = None
    before = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    setup.numpy_step()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak - before


def torch_peak_bytes(setup):
    setup.torch_step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        setup.torch_step()
    # every allocation and free is a "[memory]" event carrying its size (negative for a free)
    events = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    held = peak = 0
    for _, change in sorted(events):
        held += change
        peak = max(peak, held)
    return peak


def measure(dtype, rounds):
    setup = Setup(dtype)
    for step in (setup.numpy_step, setup.torch_step, setup.floor_step):  # warm-up
        step()
    numpy_s, torch_s, floor_s = [], [], []
    for _ in range(rounds):
        numpy_s.append(seconds(setup.numpy_step))
        torch_s.append(seconds(setup.torch_step))
        floor_s.append(seconds(setup.floor_step))
    return dict(
        numpy=statistics.median(numpy_s), torch=statistics.median(torch_s), floor=statistics.median(floor_s),
        ratio=statistics.median(n / t for n, t in zip(numpy_s, torch_s)),
        ratios=[n / t for n, t in zip(numpy_s, torch_s)],
        floor_share=statistics.median(f / n for f, n in zip(floor_s, numpy_s)),
        numpy_mib=numpy_peak_bytes(setup) / 2**20, torch_mib=torch_peak_bytes(setup) / 2**20,
    )


def blas_line():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "numpy BLAS: (install threadpoolctl to see its kernel and threads)"
    pools = [f"{p.get('internal_api')} {p.get('version')} {p.get('architecture')} x{p.get('num_threads')}"
             for p in threadpool_info()]
    return "thread pools: " + "; ".join(pools)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for NumPy's BLAS and torch (default: each library's own default)")
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds per dtype (default 7)")
    parser.add_argument("--dtype", choices=("float32", "float64", "both"), default="both")
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="wall",
                        help="wall: elapsed time (default); cpu: this process's CPU time, steadier on a machine "
                             "shared with other jobs (with --threads 1 only: it adds up the time of every thread)")
    args = parser.parse_args()
    global clock
    clock = CLOCKS[args.clock]
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    cfg = numpy_impl.TransformerConfig(**CONFIG_M)
    print(f"config M: d_vocab {cfg.d_vocab}, d_model {cfg.d_model}, {cfg.n_heads} heads of {cfg.d_head}, "
          f"d_mlp {cfg.d_mlp}, {cfg.n_layers} layers, {cfg.n_ctx} positions, batch {BATCH}, pre-norm, "
          f"{cfg.act_fn}, causal, learned positions")
    print(f"threads: {'default' if args.threads is None else args.threads} "
          f"(torch uses {torch.get_num_threads()}; OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}, "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', 'unset')}); numpy {np.__version__}, "
          f"torch {torch.__version__}; {args.rounds} rounds; {args.clock} clock")
    print(blas_line())
    print(f"\n{'dtype':8} {'NumPy ms':>9} {'torch ms':>9} {'NumPy/torch':>12} {'floor ms':>9} {'floor share':>12} "
          f"{'NumPy MiB':>10} {'torch MiB':>10}   per-round ratios")
    for dtype in (("float32", "float64") if args.dtype == "both" else (args.dtype,)):
        r = measure(dtype, args.rounds)
        print(f"{dtype:8} {1e3 * r['numpy']:9.1f} {1e3 * r['torch']:9.1f} {r['ratio']:12.2f} {1e3 * r['floor']:9.1f} "
              f"{r['floor_share']:12.0%} {r['numpy_mib']:10.1f} {r['torch_mib']:10.1f}   "
              + " ".join(f"{x:.2f}" for x in r["ratios"]))
    print("\n(times: medians over rounds; NumPy/torch: median of per-round ratios; floor share: the floor's time "
          "over the NumPy step's, median per round. Peak memory of one step above what it started with: "
          "NumPy by tracemalloc, torch by torch.profiler's memory events.)")


if __name__ == "__main__":
    main()
