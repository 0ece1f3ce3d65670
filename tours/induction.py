"""``python demo.py induction``: grow induction heads from scratch in the NumPy reference.

Trains a 2-layer attention-only transformer on random tokens with repeated segments
(``training/data.py``), then checks on data of a shape it never saw that it predicts
repeated tokens, and finds the previous-token head and the induction head that do it.
"""

from __future__ import annotations

from training.induction import INDUCTION_CONFIG, INDUCTION_TRAINING, reading, run_induction

from .progress import progress


def add_arguments(parser):
    parser.add_argument(
        "--seed", type=int, default=0, help="seed for the initial weights and the data (default: 0)"
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=INDUCTION_TRAINING.steps,
        help=f"training steps (default: {INDUCTION_TRAINING.steps})",
    )


def run(args):
    if args.seed < 0 or args.steps <= 0:
        raise SystemExit("--seed must be >= 0 and --steps positive")
    cfg = INDUCTION_CONFIG
    print(
        f"Training a {cfg.n_layers}-layer attention-only transformer (d_model {cfg.d_model}, "
        f"{cfg.n_heads} heads of {cfg.d_head}, {cfg.dtype}) in NumPy for {args.steps} steps, "
        f"batches of {INDUCTION_TRAINING.batch_size} random sequences with repeated segments."
    )
    result = run_induction(seed=args.seed, out_dir=args.out, steps=args.steps, progress=progress)
    print(reading(result, cfg.d_vocab))
