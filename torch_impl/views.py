"""The model's TransformerLens weight views (W_Q, ..., QK, OV) and its FactoredMatrix.

Written once in ``foundation/lens/views.py`` and ``foundation/lens/factored.py``; only what torch
changes lives here: ``torch.linalg`` in place of ``numpy.linalg``, and the parameters themselves
(not a detached copy) in the views, so gradients flow through ``model.W_Q`` as through
TransformerLens's.
"""

import torch

from foundation.lens.factored import FactoredMatrix as _FactoredMatrix
from foundation.lens.views import WeightViewsMixin as _WeightViewsMixin


class FactoredMatrix(_FactoredMatrix):
    """``foundation.lens.factored.FactoredMatrix`` with ``torch.linalg`` (the same svd and eigvals
    names)."""

    linalg = torch.linalg


class WeightViewsMixin(_WeightViewsMixin):
    """``foundation.lens.views.WeightViewsMixin`` on torch parameters."""

    factored_matrix_class = FactoredMatrix

    def _param_value(self, parameter):
        return parameter
