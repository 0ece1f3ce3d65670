"""Training parity: the NumPy reference and the torch twin trained side by side, step for step.

Both start from the same weights (the NumPy model's, copied into the twin) and see the same
batches; both use the same optimiser, schedule and clipping (``TrainConfig``). In float64
they should agree to rounding at every step. The tour ``demo.py train-parity`` and the test
``parity_tests/test_training.py`` both call ``train_twins``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import numpy_impl
from foundation.contract.agreement import relative_errors

from .trainer import History, NumpyStepper, TorchStepper, TrainConfig, train


@dataclass
class ParityResult:
    numpy_history: History
    torch_history: History
    loss_gaps: np.ndarray  # [steps] |numpy - torch| / |torch| of the training loss
    weight_gaps: dict  # parameter name -> relative gap of the final weights (see weight_gaps)

    @property
    def worst_loss_step(self) -> int:
        return int(np.argmax(self.loss_gaps))


def train_twins(cfg, train_cfg: TrainConfig, seed: int = 0, progress=None) -> ParityResult:
    """Train a NumPy model and its torch twin from the same seed-``seed`` weights on the same
    batches."""
    import torch_impl

    model = numpy_impl.Transformer(cfg, seed=seed)
    twin = torch_impl.Transformer.from_twin(model)
    seq_len = cfg.n_ctx + 1
    numpy_stepper = NumpyStepper(model, train_cfg)
    torch_stepper = TorchStepper(twin, train_cfg)
    numpy_history = train(
        numpy_stepper, train_cfg, seq_len, cfg.d_vocab, progress=progress, label="NumPy"
    )
    torch_history = train(
        torch_stepper, train_cfg, seq_len, cfg.d_vocab, progress=progress, label="torch"
    )
    numpy_loss, torch_loss = np.array(numpy_history.loss), np.array(torch_history.loss)
    loss_gaps = np.abs(numpy_loss - torch_loss) / np.abs(torch_loss)  # [steps]
    gaps = weight_gaps(numpy_stepper.state_dict(), torch_stepper.state_dict())
    return ParityResult(numpy_history, torch_history, loss_gaps, gaps)


def weight_gaps(numpy_weights: dict, torch_weights: dict) -> dict:
    """name -> max |numpy - torch| / max |torch| for each parameter.

    Except ``b_K``: its exact gradient is zero (softmax ignores a shift shared by every key),
    so both sides update it with rounding noise only and it stays near 0. Its gap is
    measured against the largest weight in the whole model instead of its own size.
    """
    return relative_errors(numpy_weights, torch_weights)
