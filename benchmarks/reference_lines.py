"""Where the NumPy reference's config-M step goes: its lines' time, grouped, beside plain torch.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/reference_lines.py --threads 1
    python benchmarks/reference_lines.py --threads 1 --clock cpu --dtype float64  # a busy machine

A benchmark, not a test: it prints numbers and asserts nothing. The step is fwd_bwd.py's (the
same weights, tokens and upstream gradient). Each round times plain torch's step, the floor (the
step's matrix products alone, as plain ``@`` on contiguous arrays), the reference's step, and the
reference's step once more with every line of its component bodies timed (``sys.settrace``), in
an order that turns each round. A line's time is its own: a line that calls another component
stops its clock until that component's body returns. The lines are grouped by what they compute;
"between the bodies" is the traced step less its lines: the boundary, the calls, the hook points'
dispatch and the tracing itself (a few microseconds a line). Each number is the median over the
rounds; "/ plain" divides it by plain torch's step, so the rows say what each part of the
reference costs in units of the step it is compared with.
"""

from __future__ import annotations

import argparse
import linecache
import os
import re
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# imported first: it sets the thread count from --threads before NumPy and torch load
from benchmarks import fwd_bwd  # noqa: E402

torch = fwd_bwd.torch  # loaded there, after the thread count

# (file, pattern of the line, group): the first that matches names a line's group
GROUPS = [
    ("attention.py", r" @ ", "attention: q k^T, pattern v and their backward (matmul)"),
    ("attention.py", r"np\.einsum", "attention: W_Q, W_K, W_V, W_O products (+ bias, grad +=)"),
    ("feedforward.py", r"np\.einsum", "MLP: W_in, W_out products (+ bias, grad +=)"),
    ("unembed.py", r"np\.einsum", "unembed: W_U products (+ bias, grad +=)"),
    ("attention.py", r"np\.where", "attention: causal mask, forward and backward (np.where)"),
    ("attention.py", r"scores_max =|exp =|probs =", "attention: softmax forward"),
    ("attention.py", r"dprobs_mean =|dscores = probs", "attention: softmax backward"),
    ("feedforward.py", r"inner =|tanh = |post = ", "MLP: GELU forward"),
    ("feedforward.py", r"dtanh =|dpre |dinner =", "MLP: GELU backward"),
    ("layernorm.py", r"", "LayerNorm: forward and backward"),
    (r"\w+\.py", r"\.sum\(axis=\(0, 1\)\)", "bias gradients (sums over batch and pos)"),
    (r"(embedding|positional)\.py", r"add\.at", "embedding gradients (np.add.at)"),
    (r"(block|model)\.py", r"\w+ = \w+ \+ \w+", "residual stream adds"),
    (r"\w+\.py", r"", "other lines (hook points, caches, names)"),
]
COMPONENT_FILES = (
    "attention.py",
    "feedforward.py",
    "layernorm.py",
    "unembed.py",
    "embedding.py",
    "positional.py",
    "block.py",
    "model.py",
)


class LineClock:
    """Each line's own time in the component bodies' forward and backward, summed over calls."""

    def __init__(self, clock):
        self.clock = clock
        self.seconds = {}  # (path, line number) -> seconds
        self.running = []  # [frame, line number, start] of each body being run, innermost last

    def _charge(self, entry, now):
        frame, line, start = entry
        key = (frame.f_code.co_filename, line)
        self.seconds[key] = self.seconds.get(key, 0.0) + now - start

    def on_call(self, frame, event, arg):
        code = frame.f_code
        if code.co_name not in ("forward", "backward"):
            return None
        if "numpy_impl" not in code.co_filename or not code.co_filename.endswith(COMPONENT_FILES):
            return None
        now = self.clock()
        if self.running:  # the caller's line stops while this body runs
            self._charge(self.running[-1], now)
        self.running.append([frame, frame.f_lineno, self.clock()])
        return self.on_line

    def on_line(self, frame, event, arg):
        now = self.clock()
        entry = self.running[-1]
        self._charge(entry, now)
        if event == "return":
            self.running.pop()
            if self.running:
                self.running[-1][2] = self.clock()  # the caller's line goes on
        else:
            entry[1], entry[2] = frame.f_lineno, self.clock()
        return self.on_line

    def run(self, step):
        sys.settrace(self.on_call)
        try:
            step()
        finally:
            sys.settrace(None)


def group_of(path, line_text):
    name = os.path.basename(path)
    for file_pattern, line_pattern, group in GROUPS:
        if re.fullmatch(file_pattern, name) and re.search(line_pattern, line_text):
            return group
    raise AssertionError(f"no group for {name}: {line_text}")


def grouped(seconds):
    """{group: seconds} from {(path, line number): seconds}."""
    groups = {}
    for (path, number), t in seconds.items():
        group = group_of(path, linecache.getline(path, number))
        groups[group] = groups.get(group, 0.0) + t
    return groups


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="NumPy's and torch's threads")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    parser.add_argument(
        "--clock",
        choices=tuple(fwd_bwd.CLOCKS),
        default="wall",
        help="wall (default) or cpu: this process's CPU time (one thread: steadier when busy)",
    )
    args = parser.parse_args()
    clock = fwd_bwd.CLOCKS[args.clock]
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    setup = fwd_bwd.Setup(args.dtype)
    rows = {}  # name -> [seconds per round]

    def timed(name, step):
        start = clock()
        step()
        rows.setdefault(name, []).append(clock() - start)

    def traced():
        lines = LineClock(clock)
        timed("traced step", lambda: lines.run(setup.numpy_step))
        for group, t in grouped(lines.seconds).items():
            rows.setdefault(group, []).append(t)
        between = rows["traced step"][-1] - sum(lines.seconds.values())
        rows.setdefault("between the bodies (boundary, calls, tracing)", []).append(between)

    sides = [
        lambda: timed("plain torch step", setup.plain_step),
        lambda: timed("floor (the products alone)", setup.floor_step),
        lambda: timed("NumPy reference step", setup.numpy_step),
        traced,
    ]
    for side in sides:  # warm-up
        side()
    rows.clear()
    for r in range(args.rounds):
        for side in sides[r % len(sides) :] + sides[: r % len(sides)]:
            side()
    median = {name: statistics.median(times) for name, times in rows.items()}
    plain = median["plain torch step"]
    steps = [
        "plain torch step",
        "NumPy reference step",
        "traced step",
        "floor (the products alone)",
    ]
    groups = sorted((name for name in rows if name not in steps), key=lambda name: -median[name])
    products = [name for name in groups if "products" in name or "matmul" in name]
    sums = {
        "the products' lines": sum(median[name] for name in products),
        "the other lines, between the bodies included": sum(
            median[name] for name in groups if name not in products
        ),
    }
    sums["the products' lines less the floor"] = (
        sums["the products' lines"] - median["floor (the products alone)"]
    )
    median.update(sums)
    print(
        f"config M, {args.dtype}, {torch.get_num_threads()} thread(s), {args.clock} clock, "
        f"{args.rounds} rounds (medians); "
        f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', 'unset')}, "
        f"OPENBLAS_L2_SIZE={os.environ.get('OPENBLAS_L2_SIZE', 'unset')}\n"
    )
    print("| | ms per step | / plain |\n| --- | --- | --- |")
    for name in steps + groups + list(sums):
        print(f"| {name} | {1e3 * median[name]:.1f} | {median[name] / plain:.3f} |")


if __name__ == "__main__":
    main()
