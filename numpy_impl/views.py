"""The model's TransformerLens weight views (W_Q, ..., QK, OV) and its FactoredMatrix.

Written once in ``foundation/lens/views.py`` and ``foundation/lens/factored.py``; only what NumPy
changes lives here: ``numpy.linalg``, and the arrays behind the parameters (``.data``) in the views,
which are new arrays: editing one does not edit the model.
"""

import numpy as np

from foundation.lens.factored import FactoredMatrix as _FactoredMatrix
from foundation.lens.views import WeightViewsMixin as _WeightViewsMixin


class FactoredMatrix(_FactoredMatrix):
    """``foundation.lens.factored.FactoredMatrix`` with ``numpy.linalg`` (the same svd and eigvals
    names)."""

    linalg = np.linalg


class WeightViewsMixin(_WeightViewsMixin):
    """``foundation.lens.views.WeightViewsMixin`` on NumPy parameters."""

    factored_matrix_class = FactoredMatrix

    def _param_value(self, parameter):
        return parameter.data
