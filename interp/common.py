"""What every analysis needs, written once for both twins: weights, caches and tokens as ndarrays.

An analysis takes a model of either kind (``numpy_impl.Transformer`` or ``torch_impl.Transformer``)
or an ``ActivationCache`` from either, and converts torch tensors to NumPy here, at the boundary.
Everything after that is plain NumPy, so both twins give the same numbers by construction of the
inputs, not by two copies of the analysis.
"""

from __future__ import annotations

import numpy as np

from foundation.lens.hooks import ActivationCache, as_numpy


def is_model(source):
    """True for either twin's Transformer (anything with run_with_cache and a cfg)."""
    return hasattr(source, "run_with_cache") and hasattr(source, "cfg")


def is_torch_model(model):
    return type(model).__module__.startswith("torch_impl")


def check_model(model, name="model"):
    if not is_model(model):
        raise TypeError(
            f"{name} must be a numpy_impl or torch_impl Transformer, got {type(model).__name__}"
        )
    return model


def weights(model):
    """{state_dict key: ndarray} of either twin (TransformerLens's names: embed.W_E,
    blocks.0.attn.W_Q, ...)."""
    check_model(model)
    return {name: as_numpy(value).copy() for name, value in model.state_dict().items()}


def view(model, name):
    """One of the model's TransformerLens weight views (``model.W_Q``, ``model.W_pos``, ...) as an
    ndarray."""
    check_model(model)
    return as_numpy(getattr(model, name)).copy()


def factored(model, name):
    """``model.QK`` or ``model.OV`` [layer, head, d_model, d_model] as a FactoredMatrix of
    ndarrays."""
    from foundation.lens.factored import FactoredMatrix

    check_model(model)
    matrix = getattr(model, name)
    return FactoredMatrix(as_numpy(matrix.A).copy(), as_numpy(matrix.B).copy())


def native_tokens(model, tokens):
    """Tokens as the model takes them: an ndarray for NumPy, a tensor for the torch twin."""
    tokens = as_numpy(tokens)
    if is_torch_model(model):
        import torch

        return torch.from_numpy(np.ascontiguousarray(tokens))
    return tokens


def native_like(value, like):
    """``value`` (an ndarray or number) in the type of ``like`` (an ndarray or a torch tensor)."""
    if hasattr(like, "detach"):
        import torch

        return torch.as_tensor(np.asarray(value), dtype=like.dtype)
    return np.asarray(value, dtype=like.dtype)


def run_cache(model, tokens, names_filter=None):
    """(logits as an ndarray, cache as ndarrays) from either twin."""
    check_model(model)
    out, cache = model.run_with_cache(native_tokens(model, tokens), names_filter=names_filter)
    return as_numpy(out), cache.to_numpy()


def run_hooked(model, tokens, fwd_hooks):
    """Output of ``model.run_with_hooks`` as an ndarray (hooks get the model's own array type)."""
    return as_numpy(model.run_with_hooks(native_tokens(model, tokens), fwd_hooks=fwd_hooks))


def check_token_array(tokens, cfg, name="tokens"):
    """tokens -> int ndarray [batch, pos] within the model's vocabulary and context."""
    from foundation.contract.checks import check_tokens, tokens_as_array

    # checked before converted: a bool in a list is no id
    tokens = as_numpy(tokens_as_array(tokens, name))
    check_tokens(tokens, cfg, np.ndarray, name)
    return tokens


def next_token_loss(logits, tokens):
    """Mean cross-entropy of predicting tokens[:, p + 1] from position p (the reference's loss)."""
    from numpy_impl.loss import CrossEntropyLoss

    logits, tokens = as_numpy(logits), as_numpy(tokens)
    return float(CrossEntropyLoss().forward(logits[:, :-1], tokens[:, 1:]))


def repeated_random_tokens(d_vocab, half, batch=16, seed=0, bos=None):
    """[batch, 2 * half] (or 1 + 2 * half with a ``bos`` id first): a random sequence, then it
    again.

    Each half is drawn without replacement when ``half <= d_vocab``, so the only repeats are
    across the halves, as in TransformerLens's induction demos; with more positions than
    tokens it is drawn with replacement.
    """
    for name, value in (("d_vocab", d_vocab), ("half", half), ("batch", batch)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    rng = np.random.default_rng(seed)
    if half <= d_vocab:
        first = np.stack([rng.permutation(d_vocab)[:half] for _ in range(batch)])  # [batch, half]
    else:
        first = rng.integers(0, d_vocab, (batch, half))  # [batch, half]
    parts = [first, first]
    if bos is not None:
        parts.insert(0, np.full((batch, 1), bos))
    return np.concatenate(parts, axis=1).astype(np.int64)  # [batch, (1 +) 2 * half]


def default_repeated_tokens(cfg, batch=16, seed=0, bos=None):
    """Repeated random tokens that fill the model's context: half = (n_ctx - [bos]) // 2."""
    half = (cfg.n_ctx - (bos is not None)) // 2
    if half < 2:
        raise ValueError(
            f"n_ctx={cfg.n_ctx} is too short for repeated random tokens (need 2 * 2 positions)"
        )
    return repeated_random_tokens(cfg.d_vocab, half, batch=batch, seed=seed, bos=bos)


def head_patterns(cache):
    """[n_layers, batch, head, q_pos, k_pos] ndarray of every layer's attention pattern."""
    if not isinstance(cache, ActivationCache):
        raise TypeError(f"cache must be an ActivationCache, got {type(cache).__name__}")
    return np.stack([as_numpy(cache["pattern", layer]) for layer in range(cache.cfg.n_layers)])
