"""``python demo.py train-parity``: the NumPy reference and the torch twin trained step for step.

The same initial weights, the same batches, the same Adam with warm-up: one side computes
every gradient by hand, the other by autograd. In float64 the two loss curves lie on top
of each other; the figure's lower panel shows how far apart they are (rounding only).
"""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np

from training import plots
from training.induction import INDUCTION_CONFIG, INDUCTION_TRAINING
from training.parity import train_twins
from training.trainer import OPTIMIZERS

from .progress import progress


def add_arguments(parser):
    parser.add_argument("--steps", type=int, default=200, help="training steps (default: 200)")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed for the initial weights and the data (default: 0)"
    )
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="adam", help="default: adam")
    parser.add_argument(
        "--dtype",
        choices=("float64", "float32"),
        default="float64",
        help="float64 (default) agrees to rounding; float32 drifts further apart",
    )


def run(args):
    if args.steps <= 0:
        raise SystemExit("--steps must be positive")
    cfg = replace(INDUCTION_CONFIG, dtype=args.dtype)
    train_cfg = replace(
        INDUCTION_TRAINING,
        steps=args.steps,
        optimizer=args.optimizer,
        data_seed=args.seed,
        warmup_steps=min(INDUCTION_TRAINING.warmup_steps, args.steps),
    )
    print(
        f"Training the induction model ({cfg.n_layers} layers, attention only, {cfg.dtype}) twice "
        f"for "
        f"{args.steps} steps: NumPy (hand-written backward) and torch (autograd), same weights, "
        f"same batches, "
        f"{args.optimizer} with {train_cfg.warmup_steps} warm-up steps."
    )
    result = train_twins(cfg, train_cfg, seed=args.seed, progress=progress)
    numpy_loss, torch_loss = result.numpy_history.loss, result.torch_history.loss
    worst = result.worst_loss_step
    print(f"\n{'step':>6} {'NumPy loss':>20} {'torch loss':>20} {'relative gap':>13}")
    for step in sorted({0, args.steps // 2, worst, args.steps - 1}):
        print(
            f"{step:>6} {numpy_loss[step]:>20.15f} {torch_loss[step]:>20.15f} "
            f"{result.loss_gaps[step]:>13.2e}"
        )
    print(f"\nLargest loss gap: {result.loss_gaps[worst]:.2e} (relative), at step {worst}.")
    name = max(result.weight_gaps, key=result.weight_gaps.get)
    print(
        f"Final weights: largest relative gap {result.weight_gaps[name]:.2e}, in {name} "
        f"(over {len(result.weight_gaps)} parameter tensors)."
    )
    print(
        f"Time per step: NumPy {1e3 * result.numpy_history.seconds / args.steps:.1f} ms, "
        f"torch {1e3 * result.torch_history.seconds / args.steps:.1f} ms."
    )
    path = plots.plot_parity(
        os.path.join(args.out, "train_parity.png"),
        numpy_loss,
        torch_loss,
        f"Training parity, {cfg.dtype}: largest gap {np.max(result.loss_gaps):.1e}",
    )
    print(f"Figure: {path}")
