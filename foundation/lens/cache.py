"""TransformerLens's residual-stream methods on the activation cache, written once for both twins.

Axes: component (one entry of a stack), batch, pos, head, d_model, d_head.

    cache.accumulated_resid()        [layer + 1, batch, pos, d_model]  resid_pre of each layer,
                                                                       then the final resid_post
    cache.decompose_resid()          [component, batch, pos, d_model]  embed, pos_embed, each
                                                                       attn_out and mlp_out
    cache.stack_head_results()       [layer * head, batch, pos, d_model]  each head's z_h W_O[h]
    cache.stack_activation("pattern")  [layer, ...]                    one activation of every layer
    cache.apply_ln_to_stack(stack)   the stack as the next LayerNorm sees it (its cached scale)
    cache.logit_attrs(stack, tokens) [component, batch, pos]           each component's direct
                                                                       effect on a logit

``pos_slice`` and ``batch_slice`` (TransformerLens's ``Slice`` inputs: an int, a tuple read as
``slice(*tuple)``, a slice, a list or array of indices, or None for everything) keep some positions
or sequences, on the methods that take them in TransformerLens: ``accumulated_resid``,
``decompose_resid``, ``stack_head_results`` (pos_slice), ``apply_ln_to_stack`` and ``logit_attrs``
(both; there pos_slice is already applied to the stack and picks the matching LayerNorm scales).

Sum rules (pre-norm and un-normalised models): the decomposition adds up to the residual stream
it decomposes, and the head results plus the remainder add up to it too; the last accumulated
residual is the final ``resid_post``. With ``ln_final``'s scale held at its cached value the
final LayerNorm is linear, so the logit attributions add up to the logit (difference) once the
constant terms are added: ``ln_final.b @ direction`` and ``b_U``. A post-norm model applies a
LayerNorm after every sum, so its residual stream is not a sum of component outputs; the
decompositions refuse it.

Per-head results: this model has no ``hook_result``; ``stack_head_results`` computes each head's
output from the cached ``hook_z`` and the model's ``W_O`` (TransformerLens does the same when
``use_attn_result`` is off). ``b_O`` is not part of any head: it stays in the remainder.

Each method works on what the cache holds (ndarrays or tensors) with operations both libraries
spell the same way; ``stack`` and the model's ``ln_final`` are the only calls into the library.
"""

from __future__ import annotations

import copy

import numpy as np

from foundation.contract.arrays import as_numpy
from foundation.contract.checks import tokens_as_array
from foundation.lens.views import stack

MODES = ("all", "mlp", "attn")


class Slice:
    """One axis's selection, as TransformerLens's ``utils.Slice``.

    ``Slice(3)`` takes index 3 (the axis goes away), ``Slice((1, 5))`` is ``slice(1, 5)`` (a tuple
    is ``slice(*tuple)``), ``Slice(slice(...))`` that slice, ``Slice([1, 4])`` (or an int array)
    those indices, ``Slice(None)`` everything. ``Slice.unwrap(3)`` keeps the axis (as ``[3]``).
    """

    def __init__(self, input_slice=None):
        if isinstance(input_slice, Slice):
            self.slice, self.mode = input_slice.slice, input_slice.mode
        elif input_slice is None:
            self.slice, self.mode = slice(None), "identity"
        elif isinstance(input_slice, tuple):
            self.slice, self.mode = slice(*input_slice), "slice"
        elif isinstance(input_slice, slice):
            self.slice, self.mode = input_slice, "slice"
        elif isinstance(input_slice, (int, np.integer)) and not isinstance(input_slice, bool):
            self.slice, self.mode = int(input_slice), "int"
        elif isinstance(input_slice, list) or hasattr(input_slice, "shape"):
            indices = as_numpy(input_slice)
            if indices.ndim != 1 or indices.dtype.kind not in "iub":
                raise ValueError(
                    f"a slice given as a list or array must hold indices (1-D ints), got "
                    f"{input_slice!r}"
                )
            self.slice, self.mode = indices, "array"
        else:
            raise ValueError(
                f"a slice must be None, an int, a tuple, a slice, or a list or array of indices, "
                f"got {input_slice!r}"
            )

    @classmethod
    def unwrap(cls, input_slice):
        """A Slice from a slice input; an int becomes ``[int]``, so the axis stays
        (TransformerLens's ``unwrap``)."""
        if isinstance(input_slice, (int, np.integer)) and not isinstance(input_slice, bool):
            input_slice = [int(input_slice)]
        return cls(input_slice)

    def apply(self, array, dim=0):
        """``array`` with this selection taken along axis ``dim``."""
        index = [slice(None)] * array.ndim
        index[dim] = self.slice
        return array[tuple(index)]

    def __repr__(self):
        return f"Slice({self.slice!r}, mode={self.mode!r})"


class ActivationCacheMethods:
    """Mixed into ``ActivationCache``: needs ``self.cfg``, ``self.model``, ``self.has_batch_dim``
    and ``self[key]``."""

    # --- checks and conversions ---

    def _model(self, method):
        if self.model is None:
            raise ValueError(
                f"{method} needs the model's weights: use the cache from model.run_with_cache "
                "(or ActivationCache(..., model=model))"
            )
        return self.model

    def _layer(self, layer, name="layer"):
        """None or -1 -> n_layers (the unembedding's input); otherwise an int in [0, n_layers]."""
        n_layers = self.cfg.n_layers
        if layer is None or (
            not isinstance(layer, bool) and isinstance(layer, (int, np.integer)) and layer == -1
        ):
            return n_layers
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
            raise TypeError(f"{name} must be an int or None, got {layer!r}")
        if not 0 <= layer <= n_layers:
            raise ValueError(
                f"{name} must lie in [0, n_layers={n_layers}] (or be -1 or None for n_layers), got "
                f"{layer}"
            )
        return int(layer)

    def _check_sum_of_components(self, method):
        if self.cfg.normalization == "post":
            raise ValueError(
                f"{method}: this model is post-norm (cfg.normalization='post'), so a LayerNorm "
                f"follows "
                "every sum and the residual stream is not a sum of component outputs"
            )

    def _like_cache(self, array):
        """A model weight in the kind of array the cache holds (ndarrays after ``to_numpy()``)."""
        if not self.cache_dict:
            raise ValueError("the cache is empty (names_filter kept no hook)")
        values_are_numpy = isinstance(next(iter(self.cache_dict.values())), np.ndarray)
        if values_are_numpy and not isinstance(array, np.ndarray):
            return as_numpy(array)
        return array

    # --- stacks of the residual stream ---

    def accumulated_resid(
        self,
        layer=None,
        incl_mid=False,
        apply_ln=False,
        pos_slice=None,
        mlp_input=False,
        return_labels=False,
    ):
        """The residual stream as it stood before each layer -> [component, batch, pos, d_model].

        Up to ``layer`` (None, -1 or n_layers: every layer and then the final ``resid_post``):
        ``resid_pre`` of layers 0 .. layer (labels ``"0_pre"``, ... , ``"final_post"``);
        ``incl_mid`` adds each earlier layer's ``resid_mid``, ``mlp_input`` adds this layer's.
        ``apply_ln`` puts every entry through the LayerNorm that reads it: for the final layer,
        ``ln_final`` recomputed on each entry (the logit lens); otherwise that layer's ln1 (ln2
        with ``mlp_input``) with its cached scale. ``pos_slice`` keeps those positions.
        """
        layer = self._layer(layer)
        pos_slice = Slice(pos_slice)
        n_layers = self.cfg.n_layers
        if mlp_input and layer == n_layers:
            raise ValueError(
                "mlp_input=True needs a layer below n_layers (the unembedding has no MLP)"
            )
        parts, labels = [], []
        for i in range(layer + 1):
            if i == n_layers:
                parts.append(self["resid_post", n_layers - 1])
                labels.append("final_post")
                continue
            parts.append(self["resid_pre", i])
            labels.append(f"{i}_pre")
            if (incl_mid and i < layer) or (mlp_input and i == layer):
                parts.append(self["resid_mid", i])
                labels.append(f"{i}_mid")
        # [component, batch, pos, d_model]
        components = stack([pos_slice.apply(part, dim=-2) for part in parts])
        if apply_ln:
            components = self.apply_ln_to_stack(
                components,
                layer,
                mlp_input=mlp_input,
                pos_slice=pos_slice,
                recompute_ln=layer == n_layers,
            )
        return (components, labels) if return_labels else components

    def decompose_resid(
        self,
        layer=None,
        mlp_input=False,
        mode="all",
        apply_ln=False,
        pos_slice=None,
        incl_embeds=True,
        return_labels=False,
    ):
        """The residual stream entering ``layer`` as the outputs that add up to it ->
        [component, batch, pos, d_model].

        ``embed``, ``pos_embed`` (when ``incl_embeds``), then ``{i}_attn_out`` and ``{i}_mlp_out``
        of each earlier layer (``mode`` "attn" or "mlp" keeps one kind), plus this layer's attn_out
        with ``mlp_input``. Summed over components: ``resid_pre`` of ``layer`` (``resid_mid`` with
        ``mlp_input``; the final ``resid_post`` for layer None). ``pos_slice`` keeps those
        positions.
        """
        self._check_sum_of_components("decompose_resid")
        layer = self._layer(layer)
        pos_slice = Slice(pos_slice)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mlp_input and layer == self.cfg.n_layers:
            raise ValueError(
                "mlp_input=True needs a layer below n_layers (the unembedding has no MLP)"
            )
        incl_attn = mode != "mlp"
        incl_mlp = mode != "attn" and not self.cfg.attn_only
        parts, labels = [], []
        if incl_embeds:
            parts.append(self["hook_embed"])
            labels.append("embed")
            # rotary positions live inside attention, not in the stream
            if self.cfg.positional != "rotary":
                parts.append(self["hook_pos_embed"])
                labels.append("pos_embed")
        for i in range(layer):
            if incl_attn:
                parts.append(self["attn_out", i])
                labels.append(f"{i}_attn_out")
            if incl_mlp:
                parts.append(self["mlp_out", i])
                labels.append(f"{i}_mlp_out")
        if mlp_input and incl_attn:
            parts.append(self["attn_out", layer])
            labels.append(f"{layer}_attn_out")
        parts = [pos_slice.apply(part, dim=-2) for part in parts]
        # [component, batch, pos, d_model]
        components = (
            stack(parts) if parts else pos_slice.apply(self["hook_embed"], dim=-2)[None][:0]
        )
        if apply_ln:
            components = self.apply_ln_to_stack(
                components, layer, mlp_input=mlp_input, pos_slice=pos_slice
            )
        return (components, labels) if return_labels else components

    def stack_head_results(
        self, layer=-1, return_labels=False, incl_remainder=False, pos_slice=None, apply_ln=False
    ):
        """Every head's output in the layers before ``layer`` ->
        [layer * head, batch, pos, d_model].

        Head h of layer i writes ``z[..., h, :] @ W_O[i, h]`` (labels ``"L{i}H{h}"``), computed here
        from ``hook_z``. ``incl_remainder`` adds the rest of the residual stream entering ``layer``
        (embeddings, ``b_O``, MLP outputs), so the stack adds up to it. ``pos_slice`` keeps those
        positions.
        """
        self._check_sum_of_components("stack_head_results")
        layer = self._layer(layer)
        pos_slice = Slice(pos_slice)
        # [layer, head, d_head, d_model]
        W_O = self._like_cache(self._model("stack_head_results").W_O)
        parts, labels = [], []
        for i in range(layer):
            z = pos_slice.apply(self["z", i], dim=-3)  # [batch, pos, head, d_head]
            for h in range(self.cfg.n_heads):
                parts.append(z[..., h, :] @ W_O[i, h])  # [batch, pos, d_model]
                labels.append(f"L{i}H{h}")
        if incl_remainder:
            resid = (
                self["resid_pre", layer]
                if layer < self.cfg.n_layers
                else self["resid_post", layer - 1]
            )
            resid = pos_slice.apply(resid, dim=-2)  # [batch, pos, d_model]
            parts.append(resid - stack(parts).sum(0) if parts else resid)  # [batch, pos, d_model]
            labels.append("remainder")
        # [component, batch, pos, d_model]
        components = (
            stack(parts) if parts else pos_slice.apply(self["hook_embed"], dim=-2)[None][:0]
        )
        if apply_ln:
            components = self.apply_ln_to_stack(components, layer, pos_slice=pos_slice)
        return (components, labels) if return_labels else components

    def stack_activation(self, activation_name, layer=-1, sublayer_type=None):
        """One activation of every layer before ``layer``, stacked -> [layer, *activation shape]."""
        layer = self._layer(layer)
        if layer == 0:
            raise ValueError("stack_activation needs layer >= 1 (layers before it are stacked)")
        return stack([self[activation_name, i, sublayer_type] for i in range(layer)])

    # --- LayerNorm and logits ---

    def apply_ln_to_stack(
        self,
        residual_stack,
        layer=None,
        mlp_input=False,
        pos_slice=None,
        batch_slice=None,
        has_batch_dim=True,
        recompute_ln=False,
    ):
        """A stack of residual-stream pieces as the LayerNorm entering ``layer`` treats them.

        With the cached scale (default): centre each piece and divide by the scale that LayerNorm
        computed on the whole stream, ``blocks.{layer}.ln1.hook_scale`` (ln2 with ``mlp_input``;
        ``ln_final`` for layer None or n_layers). That map is linear, so pieces that summed to the
        stream sum to the normalised stream; ``w`` and ``b`` are not applied (TransformerLens folds
        them into the next weights). ``recompute_ln`` (final layer only) instead puts each piece
        through ``ln_final`` itself, its own mean and scale, ``w`` and ``b`` included.
        An un-normalised model (cfg.normalization=None) returns the stack unchanged.

        As in TransformerLens: ``pos_slice`` is the selection already applied to the stack's
        positions (it picks the matching scales); ``batch_slice`` is applied here, to the stack's
        batch axis (when ``has_batch_dim``: the stack has one) and to the scales.
        """
        layer = self._layer(layer)
        if self.cfg.normalization is None:
            return residual_stack
        pos_slice, batch_slice = Slice(pos_slice), Slice(batch_slice)
        self._check_sum_of_components("apply_ln_to_stack")
        if residual_stack.ndim < 2 or residual_stack.shape[-1] != self.cfg.d_model:
            raise ValueError(
                f"residual_stack must have shape [component, ..., d_model={self.cfg.d_model}], "
                f"got {tuple(residual_stack.shape)}"
            )
        final = layer == self.cfg.n_layers
        if mlp_input and final:
            raise ValueError(
                "mlp_input=True needs a layer below n_layers (ln_final reads the unembedding's "
                "input)"
            )
        if has_batch_dim:
            # [component, batch, pos, d_model]
            residual_stack = batch_slice.apply(residual_stack, dim=1)
        if recompute_ln and final:
            return stack([self._ln_final(piece) for piece in residual_stack])
        name = (
            "ln_final.hook_scale"
            if final
            else f"blocks.{layer}.ln{2 if mlp_input else 1}.hook_scale"
        )
        scale = pos_slice.apply(self[name], dim=-2)  # [batch, pos, 1]
        if self.has_batch_dim:
            scale = batch_slice.apply(scale, dim=0)  # [batch, pos, 1]
        if self.cfg.normalization_type == "RMS":  # RMSNorm divides by its scale without centring
            return residual_stack / scale  # [component, batch, pos, d_model]
        # [component, batch, pos, d_model]
        centered = residual_stack - residual_stack.mean(-1)[..., None]
        return centered / scale  # [component, batch, pos, d_model]

    def _ln_final(self, resid):
        """The model's own ``ln_final`` on one piece [..., d_model] (each position on its own)."""
        model = self._model("apply_ln_to_stack(recompute_ln=True)")
        # a shallow copy: the NumPy LayerNorm keeps what its backward needs on itself, and the
        # model's own must keep the state of the model's last forward
        ln_copy = copy.copy(model.ln_final)
        W_E = model.W_E  # [d_vocab, d_model]: the model's own kind of array
        # [rows, 1, d_model]: a LayerNorm normalises row by row
        x = resid.reshape(-1, 1, resid.shape[-1])
        if isinstance(x, np.ndarray) and not isinstance(W_E, np.ndarray):
            x = W_E.new_tensor(x)  # a cache made NumPy by to_numpy(), from the torch twin
        out = ln_copy(x)  # [rows, 1, d_model]
        out = self._like_cache(out.detach() if hasattr(out, "detach") else out)
        return out.reshape(resid.shape)

    def logit_attrs(
        self,
        residual_stack,
        tokens,
        incorrect_tokens=None,
        pos_slice=None,
        batch_slice=None,
        has_batch_dim=True,
    ):
        """Each piece's direct effect on the logit of ``tokens`` (minus ``incorrect_tokens``') ->
        [component, batch, pos].

        ``tokens``: an int (every position), a one-token str (with ``model.tokenizer``), an int
        array [batch] (one per sequence, every position) or [batch, pos]. The pieces go through
        ``apply_ln_to_stack`` (the cached ``ln_final`` scale; ``pos_slice``, ``batch_slice`` and
        ``has_batch_dim`` as there) and are read along ``W_U[:, token] * ln_final.w``: unfolded,
        this model keeps ``ln_final.w`` apart from ``W_U``; after ``fold_layer_norm`` it is in
        ``W_U``, as on a TransformerLens model loaded with ``fold_ln=True``. Adding
        ``ln_final.b @ W_U[:, token] + b_U[token]`` (folded: ``b_U[token]``) to the sum over pieces
        gives the logit.
        """
        model = self._model("logit_attrs")
        if not model.cfg.unembed:
            raise ValueError("logit_attrs needs a model with an unembedding (cfg.unembed=True)")
        sliced = pos_slice is not None or batch_slice is not None or not has_batch_dim
        # (batch, pos), or (pos,) without a batch axis
        positions = None if sliced else self._positions(residual_stack)
        tokens = self._token_ids(tokens, "tokens", positions)
        # [*tokens.shape, d_model]
        direction = self._like_cache(model.tokens_to_residual_directions(tokens))
        if incorrect_tokens is not None:
            incorrect_tokens = self._token_ids(incorrect_tokens, "incorrect_tokens", positions)
            if incorrect_tokens.shape != tokens.shape:
                raise ValueError(
                    f"tokens and incorrect_tokens must have the same shape, got {tokens.shape} "
                    f"and {incorrect_tokens.shape}"
                )
            direction = direction - self._like_cache(
                model.tokens_to_residual_directions(incorrect_tokens)
            )
        if model.cfg.normalization == "pre" and model.cfg.normalization_type == "LN":
            # [..., d_model]
            direction = direction * self._like_cache(model._param_value(model.ln_final.w))
        # [component, batch, pos, d_model]
        scaled = self.apply_ln_to_stack(
            residual_stack,
            None,
            pos_slice=pos_slice,
            batch_slice=batch_slice,
            has_batch_dim=has_batch_dim,
        )
        if tokens.ndim == 1 and self.has_batch_dim and scaled.ndim == 4:
            # [batch, 1, d_model]: one token per sequence, every position
            direction = direction[:, None, :]
        return (scaled * direction).sum(-1)  # [component, batch, pos]

    def _positions(self, residual_stack):
        """(batch, pos) of the cache's run, or (pos,) without a batch axis; ``residual_stack`` must
        end in them."""
        if self.tokens is not None:
            batch, pos = self.tokens.shape
            positions = (batch, pos) if self.has_batch_dim else (pos,)
        else:  # a cache made by hand: the stack says
            positions = tuple(
                residual_stack.shape[-3:-1] if self.has_batch_dim else residual_stack.shape[-2:-1]
            )
        expected = (*positions, self.cfg.d_model)
        if tuple(residual_stack.shape[-len(expected) :]) != expected:
            axes = "[..., batch, pos, d_model]" if self.has_batch_dim else "[..., pos, d_model]"
            raise ValueError(
                f"residual_stack must have shape {axes} = [..., {', '.join(map(str, expected))}] "
                f"as the cache, got {tuple(residual_stack.shape)}"
            )
        return positions

    def _token_ids(self, tokens, name, positions):
        """An int ndarray of token ids in [0, d_vocab) that fits the cache's ``positions``.

        An int (every position), [batch] (one per sequence, every position) or [batch, pos];
        without a batch axis (after ``remove_batch_dim``) an int or [pos].
        """
        if isinstance(tokens, str):
            tokens = self._model("logit_attrs").to_single_token(tokens)
        tokens = tokens_as_array(tokens, name)  # lists entry by entry: True is no id
        array = as_numpy(tokens)
        if array.dtype.kind not in "iu" or isinstance(tokens, bool):
            raise TypeError(f"{name} must be token ids (ints), got {tokens!r}")
        if array.size and (array.min() < 0 or array.max() >= self.cfg.d_vocab):
            raise ValueError(f"{name} must lie in [0, d_vocab={self.cfg.d_vocab}), got {tokens!r}")
        if positions is None:  # a sliced stack: apply_ln_to_stack checks its shape
            return array
        if self.has_batch_dim:
            allowed = {
                (): "an int",
                positions[:1]: f"[batch] = {list(positions[:1])} (one per sequence)",
                positions: f"[batch, pos] = {list(positions)}",
            }
        else:
            allowed = {
                (): "an int",
                positions: f"[pos] = {list(positions)} (this cache has no batch axis)",
            }
        if array.shape not in allowed:
            raise ValueError(
                f"{name} must fit the cache: {', '.join(allowed.values())}; got shape {array.shape}"
            )
        return array

    # --- shape ---

    def apply_slice_to_batch_dim(self, batch_slice):
        """A new cache holding ``batch_slice`` of every entry's batch axis (an int removes the
        axis)."""
        batch_slice = Slice(batch_slice)
        if not self.has_batch_dim and batch_slice.mode != "identity":
            raise ValueError(
                "apply_slice_to_batch_dim: this cache has no batch axis (remove_batch_dim ran)"
            )
        batch = None if self.tokens is None else self.tokens.shape[0]

        def whole_batch(name, value):  # the position ids [1, pos] are one row for every sequence
            return value[[0] * batch] if name.endswith("pos_embed.hook_in") and batch else value

        entries = {
            name: batch_slice.apply(whole_batch(name, value), dim=0)
            for name, value in self.cache_dict.items()
        }
        tokens = None if self.tokens is None else batch_slice.apply(self.tokens, dim=0)
        return type(self)(
            entries,
            self.cfg,
            tokens,
            self.model,
            has_batch_dim=self.has_batch_dim and batch_slice.mode != "int",
        )

    def remove_batch_dim(self):
        """Drop the batch axis of every entry of a batch-1 cache (in place, as TransformerLens);
        returns the cache."""
        if not self.has_batch_dim:
            return self
        sizes = {value.shape[0] for value in self.cache_dict.values()}
        if sizes != {1}:
            raise ValueError(
                f"remove_batch_dim needs a cache of batch size 1, got batch sizes {sorted(sizes)}"
            )
        self.cache_dict = {name: value[0] for name, value in self.cache_dict.items()}
        self.has_batch_dim = False
        return self
