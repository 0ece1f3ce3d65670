"""Forward + backward of config M: the NumPy reference, the torch twin and plain torch, in one run.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/fwd_bwd.py  # threads: default, 1
    python benchmarks/fwd_bwd.py --threads 1 --dtype float32                    # one setting
    python benchmarks/fwd_bwd.py --device cuda                                  # on a GPU

A benchmark, not a test: it prints numbers and asserts nothing. One step is: forward of a batch
of tokens, then backward of a random upstream gradient on the logits (the same weights, tokens
and gradient everywhere). **Plain torch** is ``benchmarks/plain_torch.py``: the same math as
nanoGPT writes it (``F.layer_norm``, ``scaled_dot_product_attention``, no hooks, no checks),
loading the same weights. The three (and the floor, below) run in rounds whose order turns each
round, so a burst of load from elsewhere hits each of them alike; a ratio is the median of the
per-round ratios (robust to load), a time the median round, and the spread of a side (max - min)
/ median of its steps. Each timed step follows an untimed step of the same side, as in a training
loop: NumPy's BLAS threads spin for a while after its last product, and a torch step that starts
then shares the cores with them. A turning order keeps each side's neighbour (the twin always
came right after NumPy), so without that settling step the twin paid for NumPy's spin in every
round and plain torch never did (measured in float32 at two threads: a step after NumPy's took
50 to 90 ms more than one after a torch step, of about 450). Without ``--threads`` the script
runs itself twice, at the default thread count and at one thread (a thread pool is fixed when
NumPy loads), and prints one markdown table of both.
NumPy runs on its native BLAS kernels only when the development machines' OPENBLAS_CORETYPE and
OPENBLAS_L2_SIZE are unset in the command (the line above); the script prints what it ran with.

glibc's malloc gives memory back to the system when a free leaves more than a threshold at the
top of its heap, and the next step maps it again, one page fault per 4 KiB (the row "page faults
per step"). Whether a step crosses it depends on where its tensors landed, so one side may pay
it and another not, by luck of layout. ``--malloc keep`` raises that threshold and the one above
which glibc maps each block on its own (MALLOC_TRIM_THRESHOLD_, MALLOC_MMAP_THRESHOLD_) in the
measuring processes, so every side keeps its memory: the code's own cost.

The floor is the same matrix products and nothing else, as plain ``@`` on contiguous arrays of
the same shapes: the time no implementation that does these products can beat. Its share of
the NumPy step says how much of the step is spent outside them (softmax, GELU, LayerNorm,
copies, Python).
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

# torch's profiler (the peak-memory measure) logs "profiler_start" and "profiler_stop" lines on
# stderr at every use, between the printed table's rows; level 6 keeps its log quiet
os.environ.setdefault("KINETO_LOG_LEVEL", "6")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import json  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import numpy_impl  # noqa: E402
import torch_impl  # noqa: E402
from benchmarks.plain_torch import PlainTransformer  # noqa: E402

CONFIG_M = dict(
    d_vocab=512,
    d_model=256,
    n_heads=8,
    d_head=32,
    d_mlp=1024,
    n_layers=4,
    n_ctx=128,
    normalization="pre",
    act_fn="gelu_new",
    causal=True,
    positional="learned",
)
BATCH = 16


def matmul_shapes(cfg, batch):
    """(left shape, right shape) of every matrix product in one forward + backward of the model."""
    n, m, h, d, f, v, p = (
        batch * cfg.n_ctx,
        cfg.d_model,
        cfg.n_heads,
        cfg.d_head,
        cfg.d_mlp,
        cfg.d_vocab,
        cfg.n_ctx,
    )
    hd = h * d
    per_layer = [
        # forward: q, k, v; scores; z; attention out; MLP in; MLP out
        ((n, m), (m, hd)),
        ((n, m), (m, hd)),
        ((n, m), (m, hd)),
        ((batch, h, p, d), (batch, h, d, p)),
        ((batch, h, p, p), (batch, h, p, d)),
        ((n, hd), (hd, m)),
        ((n, m), (m, f)),
        ((n, f), (f, m)),
        # backward: MLP out (W grad, input grad); MLP in; attention out; z (dpattern, dv);
        # scores (dq, dk); q, k, v (three W grads, three input grads)
        ((f, n), (n, m)),
        ((n, m), (m, f)),
        ((m, n), (n, f)),
        ((n, f), (f, m)),
        ((hd, n), (n, m)),
        ((n, m), (m, hd)),
        ((batch, h, p, d), (batch, h, d, p)),
        ((batch, h, p, p), (batch, h, p, d)),
        ((batch, h, p, p), (batch, h, p, d)),
        ((batch, h, p, p), (batch, h, p, d)),
        ((m, n), (n, hd)),
        ((m, n), (n, hd)),
        ((m, n), (n, hd)),
        ((n, hd), (hd, m)),
        ((n, hd), (hd, m)),
        ((n, hd), (hd, m)),
    ]
    unembed = [((n, m), (m, v)), ((m, n), (n, v)), ((n, v), (v, m))]
    return per_layer * cfg.n_layers + unembed


class Setup:
    """The twins and plain torch on the same weights, tokens and upstream gradient, and the floor's
    operands."""

    def __init__(self, dtype, device="cpu"):
        self.cfg = numpy_impl.TransformerConfig(**CONFIG_M, dtype=dtype)
        rng = np.random.default_rng(0)
        self.model = numpy_impl.Transformer(self.cfg, seed=0)
        for _, p in self.model.named_parameters():  # random LayerNorm weights and biases too
            p.data[...] = p.data + 0.1 * rng.standard_normal(p.shape).astype(dtype)
        self.device = torch.device(device)
        self.twin = torch_impl.Transformer.from_twin(self.model).to(self.device)
        self.plain = PlainTransformer.from_state_dict(self.cfg, self.model.state_dict()).to(
            self.device
        )
        self.tokens = rng.integers(0, self.cfg.d_vocab, size=(BATCH, self.cfg.n_ctx))
        self.dout = rng.standard_normal((BATCH, self.cfg.n_ctx, self.cfg.d_vocab)).astype(dtype)
        self.tokens_t = torch.from_numpy(self.tokens).to(self.device)
        self.dout_t = torch.from_numpy(self.dout).to(self.device)
        self.operands = [
            (rng.standard_normal(a).astype(dtype), rng.standard_normal(b).astype(dtype))
            for a, b in matmul_shapes(self.cfg, BATCH)
        ]

    def plain_gap(self):
        """The largest difference of plain torch's logits from the twin's, relative to the largest
        logit."""
        with torch.no_grad():
            twin, plain = self.twin(self.tokens_t), self.plain(self.tokens_t)
        return float((twin - plain).abs().max() / twin.abs().max())

    def numpy_step(self):
        self.model.zero_grad()
        self.model.forward(self.tokens)
        self.model.backward(self.dout)

    def twin_step(self):
        self.twin.zero_grad(set_to_none=False)
        self.twin(self.tokens_t).backward(self.dout_t)
        self._sync()

    def plain_step(self):
        self.plain.zero_grad(set_to_none=False)
        self.plain(self.tokens_t).backward(self.dout_t)
        self._sync()

    def floor_step(self):
        for a, b in self.operands:
            a @ b

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
# --malloc keep: glibc never gives freed memory back, and serves every size from its heap (setting
# the trim threshold alone would fix the mmap threshold at its 128 KiB start)
KEEP_FREED_MEMORY = {"MALLOC_TRIM_THRESHOLD_": "4000000000", "MALLOC_MMAP_THRESHOLD_": "4000000000"}
clock = CLOCKS["wall"]


def seconds(fn):
    start = clock()
    fn()
    return clock() - start


def spread(times):
    return (max(times) - min(times)) / statistics.median(times)


def measure(dtype, rounds, device):
    """{side: [seconds per round]}, the order of the sides turning each round; and plain torch's
    gap."""
    setup = Setup(dtype, device)
    sides = {"twin": setup.twin_step, "plain": setup.plain_step}
    if device == "cpu":
        sides = {"numpy": setup.numpy_step, **sides, "floor": setup.floor_step}
    for step in sides.values():  # warm-up
        step()
    times = {name: [] for name in sides}
    faults = {name: [] for name in sides}
    names = list(sides)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            sides[name]()  # settle: the step before a timed one is the same side's (see above)
            before = page_faults()
            times[name].append(seconds(sides[name]))
            faults[name].append(page_faults() - before)
    return dict(times=times, faults=faults, plain_gap=setup.plain_gap())


def page_faults():
    """This process's minor page faults so far: memory the C allocator gave back to the system and
    took again (each fault maps one fresh 4 KiB page)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def ratio(times, a, b):
    return statistics.median(x / y for x, y in zip(times[a], times[b]))


def child(args):
    """One thread setting: every dtype, as one JSON line."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    dtypes = ("float32", "float64") if args.dtype == "both" else (args.dtype,)
    result = dict(
        threads=torch.get_num_threads(),
        blas=blas_line(),
        dtypes={dtype: measure(dtype, args.rounds, args.device) for dtype in dtypes},
    )
    print(json.dumps(result))


def runs_per_setting(script, arguments, settings):
    """``script --child ARGUMENTS`` once per thread setting ([(label, threads or None)]), each in a
    fresh process (a BLAS thread pool is fixed when NumPy loads) -> [(label, its JSON line)]."""
    runs = []
    for label, threads in settings:
        command = [sys.executable, os.path.abspath(script), "--child", *arguments]
        command += [] if threads is None else ["--threads", str(threads)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        runs.append((label, json.loads(output.strip().splitlines()[-1])))
    return runs


def blas_line():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "numpy BLAS: (install threadpoolctl to see its kernel and threads)"
    pools = [
        f"{p.get('internal_api')} {p.get('version')} {p.get('architecture')} "
        f"x{p.get('num_threads')}"
        for p in threadpool_info()
    ]
    return "thread pools: " + "; ".join(pools)


def table(runs, device):
    """A markdown table: a column per (dtype, threads), a row per ratio, spread, time and page
    faults."""
    columns = [
        (
            f"{dtype.replace('float', 'f')}, {run['threads']} "
            f"thread{'s' if run['threads'] > 1 else ''}"
            + (" (default)" if label == "default" else ""),
            r,
        )
        for label, run in runs
        for dtype, r in run["dtypes"].items()
    ]
    sides = ("numpy", "twin", "plain") if device == "cpu" else ("twin", "plain")
    names = ", ".join({"numpy": "NumPy", "twin": "twin", "plain": "plain"}[s] for s in sides)
    digits = 0 if device == "cpu" else 1  # a GPU's step takes milliseconds
    rows = [("torch twin / plain torch", lambda r: f"{ratio(r['times'], 'twin', 'plain'):.2f}")]
    if device == "cpu":
        rows.append(
            (
                "NumPy reference / plain torch",
                lambda r: f"{ratio(r['times'], 'numpy', 'plain'):.2f}",
            )
        )
        rows.append(
            (
                "floor (NumPy's products alone) / plain torch",
                lambda r: f"{ratio(r['times'], 'floor', 'plain'):.2f}",
            )
        )
    rows.append(
        (f"spread: {names}", lambda r: ", ".join(f"{spread(r['times'][s]):.0%}" for s in sides))
    )
    rows.append(
        (
            f"ms: {names}",
            lambda r: ", ".join(
                f"{1e3 * statistics.median(r['times'][s]):.{digits}f}" for s in sides
            ),
        )
    )
    rows.append(
        (
            f"page faults per step: {names}",
            lambda r: ", ".join(f"{statistics.median(r['faults'][s]):.0f}" for s in sides),
        )
    )
    lines = [
        "| | " + " | ".join(name for name, _ in columns) + " |",
        "| --- |" + " --- |" * len(columns),
    ]
    for label, cell in rows:
        lines.append(f"| {label} | " + " | ".join(cell(r) for _, r in columns) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="one thread count for NumPy's BLAS and torch (default: the default count, then 1)",
    )
    parser.add_argument("--rounds", type=int, default=9, help="rounds per dtype (default 9)")
    parser.add_argument("--dtype", choices=("float32", "float64", "both"), default="both")
    parser.add_argument(
        "--device",
        default="cpu",
        help="where the twin and plain torch run: cpu (default) or cuda "
        "(then the NumPy reference is left out)",
    )
    parser.add_argument(
        "--clock",
        choices=tuple(CLOCKS),
        default="wall",
        help="wall: elapsed time (default); cpu: this process's CPU time, steadier on a machine "
        "shared with other jobs (with one thread: it adds up the time of every thread)",
    )
    parser.add_argument(
        "--malloc",
        choices=("default", "keep"),
        default="default",
        help="default: glibc's malloc as a user's process has it; keep: freed memory stays in the "
        "process (MALLOC_TRIM_THRESHOLD_ and MALLOC_MMAP_THRESHOLD_ raised), so no step pays "
        "page faults for memory an earlier step gave back",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    global clock
    clock = CLOCKS[args.clock]
    if args.child:
        return child(args)
    settings = (
        [("default", None), ("1", 1)]
        if args.threads is None and args.device == "cpu"
        else [(str(args.threads or "default"), args.threads)]
    )
    arguments = ["--rounds", str(args.rounds), "--dtype", args.dtype, "--device", args.device]
    if args.malloc == "keep":  # glibc reads them when a process starts: the children's environment
        os.environ.update(KEEP_FREED_MEMORY)
    runs = runs_per_setting(__file__, arguments + ["--clock", args.clock], settings)
    cfg = numpy_impl.TransformerConfig(**CONFIG_M)
    print(
        f"config M: d_vocab {cfg.d_vocab}, d_model {cfg.d_model}, {cfg.n_heads} heads of "
        f"{cfg.d_head}, "
        f"d_mlp {cfg.d_mlp}, {cfg.n_layers} layers, {cfg.n_ctx} positions, batch {BATCH}, "
        f"pre-norm, "
        f"{cfg.act_fn}, causal, learned positions; device {args.device}"
    )
    print(
        f"numpy {np.__version__}, torch {torch.__version__}; {args.rounds} rounds, order turning; "
        f"{args.clock} clock; malloc {args.malloc} ("
        + ", ".join(f"{name}={os.environ.get(name, 'unset')}" for name in KEEP_FREED_MEMORY)
        + "); "
        f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', 'unset')}, "
        f"OPENBLAS_L2_SIZE={os.environ.get('OPENBLAS_L2_SIZE', 'unset')}"
    )
    for label, run in runs:
        gaps = ", ".join(f"{dtype} {r['plain_gap']:.0e}" for dtype, r in run["dtypes"].items())
        print(
            f"threads {label} ({run['threads']}): {run['blas']}; plain torch's logits against the "
            f"twin's: {gaps}"
        )
        for dtype, r in run["dtypes"].items():
            for side, times in r["times"].items():
                print(
                    f"  {dtype} {side:6} ms per round: " + " ".join(f"{1e3 * t:.0f}" for t in times)
                )
    print(
        "\n(ratios: median of the per-round ratios; spread: (max - min) / median of a side's "
        "steps; ms: median step; page faults: median of a side's steps)\n"
    )
    print(table(runs, args.device))


if __name__ == "__main__":
    main()
