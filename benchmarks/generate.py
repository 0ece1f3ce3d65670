"""Generation on GPT-2 small's shape, with and without the key-value cache, NumPy and torch.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/generate.py  # default, 1 thread
    python benchmarks/generate.py --threads 1 --prompt 16 --new 16              # one setting

A benchmark, not a test: it prints numbers and asserts nothing beyond the four runs drawing the same
tokens. GPT-2 small's shape (12 layers, d_model 768, 12 heads of 64, d_mlp 3072, vocabulary
50,257, n_ctx 1024; 124M parameters) with random weights, float32 by default. One run is
``model.generate(prompt, max_new_tokens=new, do_sample=False)`` on a batch of one prompt: with the
cache (``use_past_kv_cache=True``, the default) the prompt runs once and each new token runs alone;
without it every step runs the whole sequence again. The four runs (NumPy and the torch twin, each
with and without the cache) go in rounds whose order turns each round, so load from elsewhere
hits each alike, and each timed run follows an untimed one-token run of its own (so a torch run
never starts on cores NumPy's spinning BLAS threads still hold); tokens per second is ``new``
over the median run, a ratio the median of the per-round ratios. Without ``--threads`` the
script runs itself at the default thread count and at one thread and prints one markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

# first: fwd_bwd sets --threads for the BLAS before NumPy and torch load, and puts the project on
# the path
import fwd_bwd
import numpy as np  # noqa: E402
import torch  # noqa: E402
from fwd_bwd import CLOCKS, blas_line, ratio, runs_per_setting, seconds
from gpt2_small import GPT2_SMALL

import numpy_impl  # noqa: E402
import torch_impl  # noqa: E402

RUNS = ("numpy cached", "numpy uncached", "torch cached", "torch uncached")


class Setup:
    """Both twins on the same random weights and the same prompt."""

    def __init__(self, dtype, prompt, new):
        self.cfg = numpy_impl.TransformerConfig(**GPT2_SMALL, dtype=dtype)
        rng = np.random.default_rng(0)
        self.model = numpy_impl.Transformer(self.cfg, seed=0)
        for _, p in self.model.named_parameters():  # random norm weights and biases too
            p.data += (0.1 * rng.standard_normal(p.shape)).astype(dtype)
        self.twin = torch_impl.Transformer.from_twin(self.model)
        self.prompt = rng.integers(0, self.cfg.d_vocab, size=(1, prompt))
        self.new = new
        self.tokens = {}  # what each run generated

    def run(self, name, new=None):
        """One ``generate`` call of the run named ``name`` (one of RUNS), of ``new`` tokens (None:
        the benchmark's count)."""
        side, cache = name.split()
        model = self.model if side == "numpy" else self.twin
        out = model.generate(
            self.prompt,
            max_new_tokens=new or self.new,
            do_sample=False,
            stop_at_eos=False,
            verbose=False,
            use_past_kv_cache=cache == "cached",
        )
        if new is None:
            self.tokens[name] = np.asarray(out)


def measure(dtype, rounds, prompt, new):
    """{run: [seconds per round]}, the order of the runs turning each round."""
    setup = Setup(dtype, prompt, new)
    times = {name: [] for name in RUNS}
    for r in range(rounds):
        for name in RUNS[r % len(RUNS) :] + RUNS[: r % len(RUNS)]:
            setup.run(name, new=1)  # settle: the same side runs just before (fwd_bwd.py says why)
            times[name].append(seconds(lambda: setup.run(name)))  # noqa: B023
    same = all(np.array_equal(setup.tokens[name], setup.tokens[RUNS[0]]) for name in RUNS)
    return dict(times=times, same_tokens=same)


def child(args):
    """One thread setting, as one JSON line."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    result = dict(
        threads=torch.get_num_threads(),
        blas=blas_line(),
        **measure(args.dtype, args.rounds, args.prompt, args.new),
    )
    print(json.dumps(result))


def table(runs, new):
    """A markdown table: a column per thread setting, a row per tokens per second and ratio."""
    header = "| | " + " | ".join(f"{run['threads']} thread(s) ({label})" for label, run in runs)
    lines = [header + " |", "| --- |" + " --- |" * len(runs)]
    for name in RUNS:
        cells = [f"{new / statistics.median(run['times'][name]):.1f}" for _, run in runs]
        lines.append(f"| tokens/s, {name} | " + " | ".join(cells) + " |")
    for a, b, label in (
        ("numpy uncached", "numpy cached", "NumPy: uncached / cached time"),
        ("torch uncached", "torch cached", "torch: uncached / cached time"),
        ("numpy cached", "torch cached", "cached: NumPy / torch time"),
        ("numpy uncached", "torch uncached", "uncached: NumPy / torch time"),
    ):
        cells = [f"{ratio(run['times'], a, b):.2f}" for _, run in runs]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="one thread count for NumPy's BLAS and torch (default: the default count, then 1)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--prompt", type=int, default=16, help="prompt tokens (default 16)")
    parser.add_argument("--new", type=int, default=16, help="tokens generated (default 16)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument(
        "--clock",
        choices=tuple(CLOCKS),
        default="wall",
        help="wall: elapsed time (default); cpu: this process's CPU time (with one thread only)",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    fwd_bwd.clock = CLOCKS[args.clock]  # the clock fwd_bwd.seconds reads
    if args.child:
        return child(args)
    settings = (
        [("default", None), ("1", 1)]
        if args.threads is None
        else [(str(args.threads), args.threads)]
    )
    arguments = ["--rounds", str(args.rounds), "--prompt", str(args.prompt), "--new", str(args.new)]
    runs = runs_per_setting(
        __file__, arguments + ["--dtype", args.dtype, "--clock", args.clock], settings
    )
    cfg = numpy_impl.TransformerConfig(**GPT2_SMALL)
    print(
        f"GPT-2 small's shape: {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads, "
        f"d_mlp {cfg.d_mlp}, d_vocab {cfg.d_vocab}, n_ctx {cfg.n_ctx}; random weights, "
        f"{args.dtype}; batch 1, a prompt of {args.prompt} tokens, {args.new} new tokens, greedy"
    )
    print(
        f"numpy {np.__version__}, torch {torch.__version__}; {args.rounds} rounds, order turning; "
        f"{args.clock} clock; OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', 'unset')}, "
        f"OPENBLAS_L2_SIZE={os.environ.get('OPENBLAS_L2_SIZE', 'unset')}"
    )
    for label, run in runs:
        print(f"threads {label} ({run['threads']}): {run['blas']}")
        print(f"  the four runs drew the same tokens: {run['same_tokens']}")
        for name, times in run["times"].items():
            print(f"  {name:15} s per run: " + " ".join(f"{t:.2f}" for t in times))
    print("\n(tokens/s: new tokens over the median run; ratios: median of the per-round ratios)\n")
    print(table(runs, args.new))


if __name__ == "__main__":
    main()
