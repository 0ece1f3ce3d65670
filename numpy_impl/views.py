"""The model's TransformerLens weight views (W_Q, ..., QK, OV) and its FactoredMatrix.

Written once in ``foundation/views.py`` and ``foundation/factored.py``; the NumPy model uses them
as they are (``numpy.linalg`` inside, ``.data`` of each parameter). ``torch_impl/views.py`` swaps
in ``torch.linalg`` and the parameters themselves.
"""

from foundation.factored import FactoredMatrix
from foundation.views import WeightViewsMixin

__all__ = ["FactoredMatrix", "WeightViewsMixin"]
