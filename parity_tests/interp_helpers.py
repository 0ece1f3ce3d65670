"""Models for the interpretability tests: a random pair of twins and the hand-set induction circuit."""

import numpy as np

import numpy_impl as npi
import torch_impl as pti
from interp.handmade import induction_circuit_model
from parity_tests.helpers import randomize


def twin_of(model):
    """The torch twin holding the NumPy model's weights."""
    return pti.Transformer.from_twin(model)


def random_pair(seed=1, **overrides):
    """(NumPy model, torch twin) with random weights, LayerNorm and biases included: 2 layers, 3 heads."""
    fields = dict(d_vocab=13, d_model=12, n_heads=3, d_mlp=16, n_layers=2, n_ctx=10)
    fields.update(overrides)
    model = npi.Transformer(npi.TransformerConfig(**fields), seed=0)
    randomize(model, seed)
    return model, twin_of(model)


def handmade_pair():
    model = induction_circuit_model()
    return model, twin_of(model)


def max_abs_diff(a, b):
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))
