"""How long one training step takes: the NumPy reference over the torch twin.

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/train_step.py

A benchmark, not a test: it prints numbers and asserts nothing. It times the induction
experiment's step (``training.induction``: 2 layers, attention only, batch 32, 48 positions,
Adam) on both sides: forward, weighted cross-entropy, backward, optimiser update. The two
sides alternate in short rounds, so a burst of load from elsewhere on the machine hits both,
and the median round is reported. Data generation is not timed (both sides share it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import replace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import numpy_impl  # noqa: E402
import torch_impl  # noqa: E402
from training.data import induction_batch  # noqa: E402
from training.induction import INDUCTION_CONFIG, INDUCTION_TRAINING, SEQ_LEN  # noqa: E402
from training.trainer import NumpyStepper, TorchStepper  # noqa: E402


def time_steps(stepper, batches):
    start = time.perf_counter()
    for batch in batches:
        stepper.step(batch)
    return (time.perf_counter() - start) / len(batches)


def measure(dtype, rounds, steps_per_round):
    cfg = replace(INDUCTION_CONFIG, dtype=dtype)
    model = numpy_impl.Transformer(cfg, seed=0)
    twin = torch_impl.Transformer.from_twin(model)
    numpy_stepper = NumpyStepper(model, INDUCTION_TRAINING)
    torch_stepper = TorchStepper(twin, INDUCTION_TRAINING)
    rng = np.random.default_rng(0)
    batches = [
        induction_batch(rng, INDUCTION_TRAINING.batch_size, SEQ_LEN, cfg.d_vocab)
        for _ in range(steps_per_round)
    ]
    time_steps(numpy_stepper, batches[:5])  # warm-up: first calls allocate and fill caches
    time_steps(torch_stepper, batches[:5])
    numpy_times, torch_times = [], []
    for _ in range(rounds):
        numpy_times.append(time_steps(numpy_stepper, batches))
        torch_times.append(time_steps(torch_stepper, batches))
    ratios = [n / t for n, t in zip(numpy_times, torch_times)]
    return (
        statistics.median(numpy_times),
        statistics.median(torch_times),
        statistics.median(ratios),
        ratios,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rounds", type=int, default=7, help="alternating rounds per dtype (default 7)"
    )
    parser.add_argument(
        "--steps", type=int, default=20, help="training steps per round and side (default 20)"
    )
    parser.add_argument("--dtype", choices=("float32", "float64", "both"), default="both")
    args = parser.parse_args()
    threads = {
        name: os.environ.get(name, "unset") for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    }
    print(
        f"threads: {', '.join(f'{k}={v}' for k, v in threads.items())}, torch uses "
        f"{torch.get_num_threads()}; "
        f"numpy {np.__version__}, torch {torch.__version__}"
    )
    if any(v != "1" for v in threads.values()):
        print("(for comparable figures set OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1)")
    cfg = INDUCTION_CONFIG
    print(
        f"model: {cfg.n_layers} layers, attention only, d_model {cfg.d_model}, {cfg.n_heads} heads "
        f"of "
        f"{cfg.d_head}, d_vocab {cfg.d_vocab}; batch {INDUCTION_TRAINING.batch_size} x "
        f"{SEQ_LEN - 1} positions, "
        f"{INDUCTION_TRAINING.optimizer}; {args.rounds} rounds of {args.steps} steps per side\n"
    )
    print(
        f"{'dtype':8} {'NumPy ms/step':>14} {'torch ms/step':>14} {'NumPy / torch':>14}   "
        f"per-round ratios"
    )
    for dtype in ("float32", "float64") if args.dtype == "both" else (args.dtype,):
        numpy_s, torch_s, ratio, ratios = measure(dtype, args.rounds, args.steps)
        print(
            f"{dtype:8} {1e3 * numpy_s:14.1f} {1e3 * torch_s:14.1f} {ratio:14.2f}   "
            + " ".join(f"{r:.2f}" for r in ratios)
        )
    print(
        "\n(times are medians over rounds; the ratio is the median of the per-round ratios; target "
        "<= 1.0)"
    )


if __name__ == "__main__":
    main()
