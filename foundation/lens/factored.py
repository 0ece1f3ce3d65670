"""A matrix kept as the product of two factors, M = A B, as TransformerLens's ``FactoredMatrix``.

Axes: ldim (rows of M), mdim (the inner width: d_head for a head's circuits), rdim (columns
of M); any axes before the last two are leading axes (layer, head) that the factors share.

    model.QK = FactoredMatrix(W_Q, W_K^T)    [n_layers, n_heads, d_model, d_model], rank <= d_head
    model.OV = FactoredMatrix(W_V, W_O)      [n_layers, n_heads, d_model, d_model], rank <= d_head

Most questions about a head's circuit (its singular values, eigenvalues, Frobenius norm) can be
answered from the small factors without ever forming the d_model x d_model product:

    A = Ua diag(Sa) Vha,  B = Ub diag(Sb) Vhb               (thin SVDs of each factor)
    M = Ua [diag(Sa) Vha Ub diag(Sb)] Vhb = Ua (Um diag(S) Vhm) Vhb  (the mdim x mdim middle's SVD)
    U = Ua Um,  V = (Vhm Vhb)^T                              so M = U diag(S) V^T

The same class serves both twins: every operation here is spelled the same in NumPy and torch
(``@``, ``swapaxes``, indexing), except the linear-algebra module, which ``torch_impl`` swaps in.
"""

from __future__ import annotations

import numpy as np


class FactoredMatrix:
    """M = A @ B for A [..., ldim, mdim] and B [..., mdim, rdim] with the same leading axes."""

    linalg = np.linalg  # torch_impl.factored.FactoredMatrix uses torch.linalg (same function names)
    __array_ufunc__ = None  # ``ndarray @ FactoredMatrix`` calls our __rmatmul__

    def __init__(self, A, B):
        if A.ndim < 2 or B.ndim < 2:
            raise ValueError(
                f"A and B must be matrices (or stacks of them), got shapes {tuple(A.shape)} and "
                f"{tuple(B.shape)}"
            )
        if A.shape[-1] != B.shape[-2]:
            raise ValueError(
                f"A [..., ldim, mdim] and B [..., mdim, rdim] must share mdim, got shapes "
                f"{tuple(A.shape)} and {tuple(B.shape)}"
            )
        if tuple(A.shape[:-2]) != tuple(B.shape[:-2]):
            raise ValueError(
                f"A and B must have the same leading axes, got shapes {tuple(A.shape)} and "
                f"{tuple(B.shape)}"
            )
        self.A = A  # [..., ldim, mdim]
        self.B = B  # [..., mdim, rdim]
        self.ldim, self.mdim, self.rdim = A.shape[-2], A.shape[-1], B.shape[-1]
        self.shape = (*A.shape[:-2], self.ldim, self.rdim)
        self._svd = None

    def _like(self, A, B):
        """A new factored matrix of this one's class (so the torch twin's stays torch's)."""
        return type(self)(A, B)

    @property
    def ndim(self):
        return len(self.shape)

    @property
    def pair(self):
        return self.A, self.B

    @property
    def AB(self):
        """The product itself [..., ldim, rdim]."""
        return self.A @ self.B

    @property
    def BA(self):
        """The reversed product [..., mdim, mdim] (needs ldim == rdim): same nonzero eigenvalues as
        AB."""
        if self.ldim != self.rdim:
            raise ValueError(f"BA needs a square matrix (ldim == rdim), got shape {self.shape}")
        return self.B @ self.A

    @property
    def T(self):
        """The transpose, M^T = B^T A^T, still factored."""
        return self._like(self.B.swapaxes(-1, -2), self.A.swapaxes(-1, -2))

    def svd(self):
        """(U [..., ldim, mdim], S [..., mdim], Vh [..., rdim, mdim]) with M = U diag(S) Vh^T.

        As TransformerLens's: ``Vh`` holds the right singular vectors as columns (the transpose of
        what ``numpy.linalg.svd`` calls Vh). Singular values come largest first.
        """
        if self._svd is None:
            Ua, Sa, Vha = self.linalg.svd(self.A, full_matrices=False)  # A = Ua diag(Sa) Vha
            Ub, Sb, Vhb = self.linalg.svd(self.B, full_matrices=False)  # B = Ub diag(Sb) Vhb
            middle = Sa[..., :, None] * (Vha @ Ub) * Sb[..., None, :]  # [..., mdim, mdim]
            Um, S, Vhm = self.linalg.svd(middle, full_matrices=False)  # middle = Um diag(S) Vhm
            U = Ua @ Um  # [..., ldim, mdim]
            V = (Vhm @ Vhb).swapaxes(-1, -2)  # [..., mdim, rdim] -> [..., rdim, mdim]
            self._svd = (U, S, V)
        return self._svd

    @property
    def U(self):
        return self.svd()[0]

    @property
    def S(self):
        return self.svd()[1]

    @property
    def Vh(self):
        return self.svd()[2]

    @property
    def eigenvalues(self):
        """Eigenvalues [..., mdim] (complex) of BA: the nonzero eigenvalues of AB, without forming
        it."""
        return self.linalg.eigvals(self.BA)

    def norm(self):
        """Frobenius norm [...]: sqrt(sum of squared singular values)."""
        return (self.S**2).sum(-1) ** 0.5

    def __matmul__(self, other):
        if isinstance(other, FactoredMatrix):
            return self._like(self.A, (self.B @ other.A) @ other.B)
        if other.ndim == 1:  # a vector: the result is a vector [..., ldim]
            return self.A @ (self.B @ other)
        return self._like(self.A, self.B @ other)

    def __rmatmul__(self, other):
        if other.ndim == 1:  # a vector: the result is a vector [..., rdim]
            return (other @ self.A) @ self.B
        return self._like(other @ self.A, self.B)

    def __mul__(self, scalar):
        return self._like(self.A * scalar, self.B)

    __rmul__ = __mul__

    def __getitem__(self, index):
        """Index the leading axes only: ``model.OV[1, 3]`` is layer 1, head 3's [d_model, d_model]
        circuit."""
        index = index if isinstance(index, tuple) else (index,)
        if len(index) > self.ndim - 2:
            raise IndexError(
                f"a FactoredMatrix of shape {self.shape} takes at most {self.ndim - 2} leading "
                f"indices, "
                f"got {len(index)}; index .AB for entries of the product"
            )
        return self._like(self.A[index], self.B[index])

    def __repr__(self):
        return f"FactoredMatrix(shape={tuple(self.shape)}, mdim={self.mdim})"
