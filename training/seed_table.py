"""The per-seed table of the induction experiment in docs/training.md: ``python -m
training.seed_table 0 1 2 3 4``.

Each seed is ``python demo.py induction --seed N`` without the figures: the same training, the
same held-out data, one NumPy thread (set here before NumPy loads). It prints one Markdown row
per seed. Training time depends on the machine and its load; every other column depends only on
the seed, the code and the CPU's BLAS kernels (OpenBLAS picks them per processor family).
"""

from training import use_one_thread

use_one_thread()

import sys  # noqa: E402

from training.induction import run_induction  # noqa: E402

HEADER = (
    "| seed | loss, repeated tokens | loss, first occurrences | previous-token head | induction "
    "head "
    "| held-out loss < 1 nat from step | training time |\n| --- | --- | --- | --- | --- | --- | "
    "--- |"
)


def row(seed):
    """One table row: train seed ``seed`` (no files written) and read the result."""
    result = run_induction(seed=seed, out_dir=None)
    pl, ph = result.prev_token_head
    il, ih = result.induction_head
    formed = "never" if result.formed_at is None else str(result.formed_at)
    return (
        f"| {seed} | {result.repeated_loss:.3f} | {result.first_loss:.2f} | L{pl}H{ph} "
        f"{result.prev_token_scores[pl, ph]:.2f} | L{il}H{ih} "
        f"{result.induction_scores[il, ih]:.2f} | {formed} "
        f"| {result.seconds:.0f} s |"
    )


def main(seeds):
    print(HEADER)
    for seed in seeds:
        print(row(seed), flush=True)


if __name__ == "__main__":
    main([int(seed) for seed in sys.argv[1:]] or [0, 1, 2, 3, 4])
