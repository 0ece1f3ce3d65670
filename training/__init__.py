"""Training the NumPy reference and the torch twin: data, the two training loops, the induction experiment."""

import os

# Training amplifies rounding: a matrix product split over more threads adds in another order,
# and after 2000 float32 steps the trained model differs (seed 0's held-out loss moves in the
# fourth digit after 300 steps). The induction experiment therefore computes on one thread. The
# BLAS library reads these variables when NumPy loads, so they must be set before that.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def use_one_thread():
    """Set the BLAS thread variables to 1 (effective only before NumPy is first imported)."""
    os.environ.update(ONE_THREAD)
