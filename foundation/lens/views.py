"""TransformerLens's weight views on the whole model, written once for both twins.

Axes: layer, head, d_model, d_head, d_mlp, d_vocab, n_ctx.

    model.W_E  [d_vocab, d_model]     model.W_pos [n_ctx, d_model]     model.W_U [d_model, d_vocab]
    model.W_Q, W_K, W_V  [layer, head, d_model, d_head]
    model.b_Q, b_K, b_V  [layer, head, d_head]
    model.W_O  [layer, head, d_head, d_model]                model.b_O  [layer, d_model]
    model.W_in [layer, d_model, d_mlp]   model.W_out [layer, d_mlp, d_model]   b_in, b_out likewise
    model.QK = FactoredMatrix(W_Q, W_K^T)   [layer, head, d_model, d_model]
    model.OV = FactoredMatrix(W_V, W_O)     [layer, head, d_model, d_model]

Each view is built from the parameters when it is read: the NumPy model's views are new arrays
(editing one does not edit the model), the torch twin's are ``torch.stack`` of its parameters,
so gradients flow through them as through TransformerLens's.
"""

from __future__ import annotations

import numpy as np

from foundation.lens.factored import FactoredMatrix


def stack(arrays):
    """``np.stack(arrays)`` for ndarrays, ``torch.stack(arrays)`` for tensors (no torch import
    here).

    A tensor's ``new_empty`` makes the result on its device and dtype; filling it row by row
    keeps autograd's history, as ``torch.stack`` would.
    """
    arrays = list(arrays)
    if not arrays:
        raise ValueError("stack needs at least one array")
    first = arrays[0]
    if isinstance(first, np.ndarray):
        return np.stack(arrays)
    out = first.new_empty((len(arrays), *first.shape))
    for i, array in enumerate(arrays):
        out[i] = array
    return out


class WeightViewsMixin:
    """W_E, W_pos, W_U, b_U and the per-layer weights stacked over layers, as TransformerLens names
    them."""

    # torch_impl's model uses torch_impl's (torch.linalg inside)
    factored_matrix_class = FactoredMatrix

    def _param_value(self, parameter):
        """The array behind a parameter: ``.data`` for NumPy (torch_impl returns the parameter
        itself)."""
        return parameter.data

    def _stacked(self, part, name):
        """One parameter of every block's ``part`` ("attn" or "mlp"), stacked over layers."""
        if part == "mlp" and self.cfg.attn_only:
            raise AttributeError(
                f"{name}: this model is attention-only (cfg.attn_only=True) and has no MLP weights"
            )
        return stack(
            [self._param_value(getattr(getattr(block, part), name)) for block in self.blocks]
        )

    @property
    def W_E(self):
        return self._param_value(self.embed.W_E)  # [d_vocab, d_model]

    @property
    def W_pos(self):
        """The learned table, or for sinusoidal positions the fixed table the model adds
        [n_ctx, d_model]."""
        if self.cfg.positional == "learned":
            return self._param_value(self.pos_embed.W_pos)  # [n_ctx, d_model]
        return self.pos_embed.table  # [n_ctx, d_model]

    @property
    def W_U(self):
        if not self.cfg.unembed:
            raise AttributeError("W_U: this model has no unembedding (cfg.unembed=False)")
        return self._param_value(self.unembed.W_U)  # [d_model, d_vocab]

    @property
    def b_U(self):
        if not self.cfg.unembed:
            raise AttributeError("b_U: this model has no unembedding (cfg.unembed=False)")
        return self._param_value(self.unembed.b_U)  # [d_vocab]

    @property
    def W_Q(self):
        return self._stacked("attn", "W_Q")  # [layer, head, d_model, d_head]

    @property
    def W_K(self):
        return self._stacked("attn", "W_K")  # [layer, head, d_model, d_head]

    @property
    def W_V(self):
        return self._stacked("attn", "W_V")  # [layer, head, d_model, d_head]

    @property
    def W_O(self):
        return self._stacked("attn", "W_O")  # [layer, head, d_head, d_model]

    @property
    def b_Q(self):
        return self._stacked("attn", "b_Q")  # [layer, head, d_head]

    @property
    def b_K(self):
        return self._stacked("attn", "b_K")  # [layer, head, d_head]

    @property
    def b_V(self):
        return self._stacked("attn", "b_V")  # [layer, head, d_head]

    @property
    def b_O(self):
        return self._stacked("attn", "b_O")  # [layer, d_model]

    @property
    def W_in(self):
        return self._stacked("mlp", "W_in")  # [layer, d_model, d_mlp]

    @property
    def W_out(self):
        return self._stacked("mlp", "W_out")  # [layer, d_mlp, d_model]

    @property
    def b_in(self):
        return self._stacked("mlp", "b_in")  # [layer, d_mlp]

    @property
    def b_out(self):
        return self._stacked("mlp", "b_out")  # [layer, d_model]

    @property
    def QK(self):
        """W_Q[l, h] W_K[l, h]^T as a FactoredMatrix [layer, head, d_model, d_model].

        score(q, k) = x_q QK x_k^T / sqrt(d_head), for the LayerNorm's outputs x (biases left out).
        """
        return self.factored_matrix_class(self.W_Q, self.W_K.swapaxes(-1, -2))

    @property
    def OV(self):
        """W_V[l, h] W_O[l, h] as a FactoredMatrix [layer, head, d_model, d_model].

        What a head writes into the residual stream per unit of attention (biases left out).
        """
        return self.factored_matrix_class(self.W_V, self.W_O)

    def tokens_to_residual_directions(self, tokens):
        """The unembedding direction of each token, W_U[:, token] -> [*tokens.shape, d_model] (as
        TransformerLens)."""
        W_U = self.W_U  # [d_model, d_vocab]
        return W_U.swapaxes(0, 1)[tokens]  # [*tokens.shape, d_model]
