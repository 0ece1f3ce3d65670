"""Training the NumPy reference and the torch twin: data, the two training loops, the induction
experiment."""

import os
import sys

# Training amplifies rounding: a matrix product split over more threads adds in another order,
# and after 2000 float32 steps the trained model differs (seed 0's held-out loss moves in the
# fourth digit after 300 steps). The induction experiment therefore computes on one thread (as
# every demo.py command and the test run do, for speed: docs/performance.md). The BLAS library
# reads these variables when NumPy loads, so they must be set before that.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def use_one_thread():
    """Compute on one thread: the BLAS variables (read when NumPy loads) and, if torch is loaded,
    torch's pool."""
    os.environ.update(ONE_THREAD)
    if "torch" in sys.modules:  # torch read OMP_NUM_THREADS when it loaded: set its pool directly
        sys.modules["torch"].set_num_threads(1)
