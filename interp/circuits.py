"""Reading heads from their weights alone: QK and OV circuits, copying and composition scores.

Axes: d_vocab, n_ctx, d_model, head, d_head.

Following "A Mathematical Framework for Transformer Circuits" (Elhage et al., 2021), with this
project's right-multiplying weights (x @ W), a head is two low-rank matrices on the residual stream:

    QK circuit  W_QK = W_Q[h] W_K[h]^T   [d_model, d_model]
                score(q, k) = x_q W_QK x_k^T / sqrt(d_head)
    OV circuit  W_OV = W_V[h] W_O[h]     [d_model, d_model]
                what the head writes, per unit attention

Composed with the embedding and unembedding, they become token-to-token tables:

    full QK  W_E W_QK W_E^T        [d_vocab (query token), d_vocab (key token)]
    pos QK   W_pos W_QK W_pos^T    [n_ctx (query position), n_ctx (key position)]
    full OV  W_E W_OV W_U          [d_vocab (attended token), d_vocab (logit)]

LayerNorm and biases are left out (as in the paper, and TransformerLens's unfolded ``OV`` / ``QK``):
these read the weights, not a run, so they are exact for a model without LayerNorm and an
approximation for one with it. Every matrix comes from the model's own views (``model.QK``,
``model.OV`` as FactoredMatrix, ``model.W_E``, ``model.W_pos``, ``model.W_U``), so the
low-rank questions (eigenvalues, norms) are answered from the d_head-wide factors.
"""

from __future__ import annotations

import numpy as np

from foundation.lens.factored import FactoredMatrix

from .common import check_model, factored, view, weights


def _check_head(cfg, layer, head):
    for name, value, limit in (("layer", layer, cfg.n_layers), ("head", head, cfg.n_heads)):
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, np.integer))
            or not 0 <= value < limit
        ):
            raise ValueError(f"{name} must be an int in [0, {limit}), got {value!r}")


def _head_circuit(model, name, layer, head):
    """``model.QK[layer, head]`` or ``model.OV[layer, head]``: a FactoredMatrix [d_model, d_model]
    of ndarrays."""
    check_model(model)
    _check_head(model.cfg, layer, head)
    return factored(model, name)[layer, head]


def qk_matrix(model, layer, head):
    """W_Q[h] W_K[h]^T [d_model, d_model] (``model.QK[layer, head].AB``)."""
    return _head_circuit(model, "QK", layer, head).AB  # [d_model, d_model]


def ov_matrix(model, layer, head):
    """W_V[h] W_O[h] [d_model, d_model] (``model.OV[layer, head].AB``)."""
    return _head_circuit(model, "OV", layer, head).AB  # [d_model, d_model]


def full_qk_circuit(model, layer, head):
    """W_E W_QK W_E^T [d_vocab, d_vocab]: how much a query token wants to attend to a key token."""
    W_E = view(model, "W_E")  # [d_vocab, d_model]
    return (W_E @ _head_circuit(model, "QK", layer, head) @ W_E.T).AB  # [d_vocab, d_vocab]


def positional_qk_circuit(model, layer, head):
    """W_pos W_QK W_pos^T [n_ctx, n_ctx] (``model.W_pos`` is the sinusoidal table when positions are
    fixed)."""
    W_pos = view(model, "W_pos")  # [n_ctx, d_model]
    return (W_pos @ _head_circuit(model, "QK", layer, head) @ W_pos.T).AB  # [n_ctx, n_ctx]


def full_ov_factored(model, layer, head):
    """W_E W_V[h] W_O[h] W_U as a FactoredMatrix [d_vocab, d_vocab] (rank <= d_head)."""
    check_model(model)
    if not model.cfg.unembed:
        raise ValueError("full_ov_circuit needs an unembedding (cfg.unembed=True)")
    return view(model, "W_E") @ _head_circuit(model, "OV", layer, head) @ view(model, "W_U")


def full_ov_circuit(model, layer, head):
    """W_E W_V[h] W_O[h] W_U [d_vocab, d_vocab]: row t = the logits the head adds when it attends to
    token t."""
    return full_ov_factored(model, layer, head).AB  # [d_vocab, d_vocab]


def copying_score(matrix):
    """sum(eigenvalues) / sum(|eigenvalues|) of a square matrix (or FactoredMatrix): +1 copies, -1
    suppresses.

    Elhage et al. (2021) read copying off the full OV circuit's eigenvalues: a head that raises
    the logit of the token it attends to has positive ones. A zero matrix scores 0. A
    FactoredMatrix gives its eigenvalues from the small BA (the nonzero ones of AB, the same sums).
    """
    if isinstance(matrix, FactoredMatrix):
        eigenvalues = matrix.eigenvalues
    else:
        matrix = np.asarray(matrix)
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"matrix must be square, got shape {matrix.shape}")
        eigenvalues = np.linalg.eigvals(matrix)
    total = np.abs(eigenvalues).sum()
    return 0.0 if total == 0 else float(eigenvalues.sum().real / total)


def copying_scores(model):
    """[n_layers, n_heads]: copying_score of every head's full OV circuit (from its factors)."""
    cfg = check_model(model).cfg
    return np.array(
        [
            [copying_score(full_ov_factored(model, layer, head)) for head in range(cfg.n_heads)]
            for layer in range(cfg.n_layers)
        ]
    )


def composition_score(left, right):
    """||left @ right||_F / (||left||_F ||right||_F), 0 when either is zero (Elhage et al. 2021).

    ``left`` and ``right`` are [d_model, d_model] arrays or FactoredMatrix (norms from the factors).
    """
    norm = lambda m: m.norm() if isinstance(m, FactoredMatrix) else np.linalg.norm(m)  # noqa: E731
    denominator = norm(left) * norm(right)
    return 0.0 if denominator == 0 else float(norm(left @ right) / denominator)


COMPOSITION_KINDS = ("q", "k", "v")


def composition_scores(model, kind, layer_from=0, layer_to=1):
    """[n_heads (earlier head A), n_heads (later head B)]: how much B reads what A writes.

    kind "q": A's output feeds B's queries     score(W_OV^A, W_QK^B)
    kind "k": A's output feeds B's keys        score(W_OV^A, (W_QK^B)^T)
    kind "v": A's output feeds B's values      score(W_OV^A, W_OV^B)
    Random matrices already score about 1/sqrt(d_model); read the numbers against that baseline.
    """
    cfg = check_model(model).cfg
    if kind not in COMPOSITION_KINDS:
        raise ValueError(f"kind must be one of {COMPOSITION_KINDS}, got {kind!r}")
    if not (
        isinstance(layer_from, int)
        and isinstance(layer_to, int)
        and 0 <= layer_from < layer_to < cfg.n_layers
    ):
        raise ValueError(
            f"layer_from and layer_to must satisfy 0 <= layer_from < layer_to < "
            f"n_layers={cfg.n_layers}, "
            f"got {layer_from!r} and {layer_to!r}"
        )
    scores = np.zeros((cfg.n_heads, cfg.n_heads))  # [head A, head B]
    for a in range(cfg.n_heads):
        left = _head_circuit(model, "OV", layer_from, a)  # [d_model, d_model], factored
        for b in range(cfg.n_heads):
            if kind == "q":
                right = _head_circuit(model, "QK", layer_to, b)
            elif kind == "k":
                right = _head_circuit(model, "QK", layer_to, b).T
            else:
                right = _head_circuit(model, "OV", layer_to, b)
            scores[a, b] = composition_score(left, right)
    return scores


def full_ov_logits(model, layer, head, cache):
    """The full OV circuit in logits as the model computes them [d_vocab (attended token), d_vocab
    (logit)].

    ``full_ov_circuit`` leaves the LayerNorms out, so its entries are as large as the raw
    residual stream is wide (hundreds, where the model's logits are a few units). Here, in a
    pre-norm model, both LayerNorms are put back with the scales measured in ``cache`` (a run of
    the model): the attended token's embedding goes through ``ln1`` of ``layer`` (centred, divided
    by the residual stream's typical scale there, times ln1.w), and what the head writes through
    ``ln_final`` (divided by the final residual's typical scale, times ln_final.w):

        row t = LN1(W_E[t]) W_V[h] W_O[h] diag(ln_final.w) W_U / sigma_final

    Biases are left out; the result is the logit added when the head attends fully to token t.
    Returns (matrix, whether LayerNorm was put back); a model that is not pre-norm gets
    ``full_ov_circuit`` and False.
    """
    cfg = check_model(model).cfg
    if cfg.normalization != "pre":
        return full_ov_circuit(model, layer, head), False
    params = weights(model)
    W_E, W_U = view(model, "W_E"), view(model, "W_U")  # [d_vocab, d_model], [d_model, d_vocab]
    W_OV = ov_matrix(model, layer, head)  # [d_model, d_model]
    sigma_in = _typical_scale(cache["resid_pre", layer])  # []
    sigma_final = _typical_scale(cache["resid_post", cfg.n_layers - 1])  # []
    centred = W_E - W_E.mean(axis=-1, keepdims=True)  # [d_vocab, d_model]
    read = centred / sigma_in * params[f"blocks.{layer}.ln1.w"]  # [d_vocab, d_model]
    written = read @ W_OV / sigma_final * params["ln_final.w"]  # [d_vocab, d_model]
    return written @ W_U, True  # [d_vocab, d_vocab]


def _typical_scale(resid):
    """The mean over batch and positions of what LayerNorm divides by: sqrt(var + eps) over
    d_model."""
    from foundation.lens.hooks import as_numpy

    resid = as_numpy(resid)  # [batch, pos, d_model]
    return float(np.sqrt(resid.var(axis=-1) + 1e-5).mean())


def copying_baseline(model, samples=64, seed=0, quantile=0.95):
    """What a head with no copying structure scores here: the ``quantile`` of copying scores over
    heads whose W_V and W_O are random (Gaussian, each head's own shapes and norms), read through
    this model's own W_E and W_U. A head's copying score means copying only above this."""
    check_model(model)
    W_E, W_U = view(model, "W_E"), view(model, "W_U")  # [d_vocab, d_model], [d_model, d_vocab]
    # [layer, head, d_model, d_head], [layer, head, d_head, d_model]
    W_V, W_O = view(model, "W_V"), view(model, "W_O")
    # [d_model, d_model]: the nonzero eigenvalues of W_E A B W_U are those of B W_U W_E A
    loop = W_U @ W_E
    rng = np.random.default_rng(seed)
    found = []
    for _ in range(samples):
        A = rng.standard_normal(W_V.shape[-2:]) * W_V.std()  # [d_model, d_head]
        B = rng.standard_normal(W_O.shape[-2:]) * W_O.std()  # [d_head, d_model]
        eigenvalues = np.linalg.eigvals(B @ loop @ A)  # [d_head]
        total = np.abs(eigenvalues).sum()
        found.append(0.0 if total == 0 else eigenvalues.sum().real / total)
    return float(np.quantile(found, quantile))
