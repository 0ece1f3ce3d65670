"""Input checks shared by both implementations (written once; torch_impl imports them).

Every public entry point calls one of these before any math, so a bad argument fails with
a ValueError or TypeError that names it, never with a broadcasting error from deep inside.
They accept NumPy arrays and torch tensors alike (anything with ``shape``, ``ndim``, ``dtype``).
"""

from __future__ import annotations

import numpy as np


def _is_torch(x):
    return type(x).__module__.startswith("torch")


def _is_float(x):
    if _is_torch(x):
        return x.is_floating_point()
    return np.issubdtype(x.dtype, np.floating)


def _is_int(x):
    if _is_torch(x):
        return not x.is_floating_point() and not x.is_complex() and str(x.dtype) != "torch.bool"
    return np.issubdtype(x.dtype, np.integer)


def check_tokens(tokens, cfg, name: str = "tokens"):
    """Token ids: integer, shape [batch, pos], 1 <= pos <= n_ctx, every id in [0, d_vocab)."""
    if not hasattr(tokens, "shape") or not hasattr(tokens, "dtype"):
        raise TypeError(
            f"{name} must be an integer array of shape [batch, pos], got {type(tokens).__name__}"
        )
    if not _is_int(tokens):
        raise TypeError(f"{name} must hold integer token ids, got dtype {tokens.dtype}")
    if tokens.ndim != 2:
        raise ValueError(
            f"{name} must have shape [batch, pos] (rank 2), got shape {tuple(tokens.shape)}"
        )
    batch, pos = tokens.shape
    if batch == 0 or pos == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(tokens.shape)}")
    if pos > cfg.n_ctx:
        raise ValueError(f"{name} has {pos} positions but the model's n_ctx is {cfg.n_ctx}")
    low, high = int(tokens.min()), int(tokens.max())
    if low < 0 or high >= cfg.d_vocab:
        raise ValueError(
            f"{name} must lie in [0, d_vocab={cfg.d_vocab}), got values from {low} to {high}"
        )


def check_activation(x, name: str, last_dim: int):
    """A float array of shape [batch, pos, last_dim], as every component takes and returns."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{name} must be a float array, got {type(x).__name__}")
    if not _is_float(x):
        raise TypeError(f"{name} must be a float array, got dtype {x.dtype}")
    if x.ndim != 3 or x.shape[-1] != last_dim or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(
            f"{name} must have shape [batch, pos, {last_dim}] with batch, pos >= 1, "
            f"got {tuple(x.shape)}"
        )


def check_grad(dout, name: str, expected_shape):
    """An upstream gradient: a float array shaped exactly like the forward's output."""
    if not hasattr(dout, "shape") or not hasattr(dout, "dtype"):
        raise TypeError(f"{name} must be a float array, got {type(dout).__name__}")
    if not _is_float(dout):
        raise TypeError(f"{name} must be a float array, got dtype {dout.dtype}")
    if tuple(dout.shape) != tuple(expected_shape):
        raise ValueError(
            f"{name} must have the forward output's shape {tuple(expected_shape)}, "
            f"got {tuple(dout.shape)}"
        )


def check_forward_done(cache, component: str):
    """``backward`` needs what ``forward`` saved; say so instead of failing on ``None``."""
    if cache is None:
        raise ValueError(f"{component}.backward() called before {component}.forward()")


def check_hook_result(result, expected_shape, hook_name):
    """What a hook returns replaces the activation (or gradient), so it must have its shape."""
    if not hasattr(result, "shape"):
        raise TypeError(
            f"hook on {hook_name!r} must return None or an array shaped {tuple(expected_shape)}, "
            f"got {type(result).__name__}"
        )
    if tuple(result.shape) != tuple(expected_shape):
        raise ValueError(
            f"hook on {hook_name!r} returned shape {tuple(result.shape)}; the activation's shape is "
            f"{tuple(expected_shape)}"
        )


def check_loss_inputs(logits, targets, weights):
    """logits [batch, pos, d_vocab] float; targets [batch, pos] ids in [0, d_vocab); weights like targets, >= 0."""
    if not hasattr(logits, "shape") or not hasattr(logits, "dtype") or not _is_float(logits):
        raise TypeError(f"logits must be a float array of shape [batch, pos, d_vocab], got {_describe(logits)}")
    if logits.ndim != 3 or 0 in tuple(logits.shape):
        raise ValueError(f"logits must have shape [batch, pos, d_vocab], none of them 0, got {tuple(logits.shape)}")
    if not hasattr(targets, "shape") or not hasattr(targets, "dtype") or not _is_int(targets):
        raise TypeError(f"targets must be an integer array of shape [batch, pos], got {_describe(targets)}")
    if tuple(targets.shape) != tuple(logits.shape[:2]):
        raise ValueError(
            f"targets must have shape {tuple(logits.shape[:2])} (logits' batch and pos), got {tuple(targets.shape)}"
        )
    d_vocab = logits.shape[-1]
    low, high = int(targets.min()), int(targets.max())
    if low < 0 or high >= d_vocab:
        raise ValueError(f"targets must lie in [0, d_vocab={d_vocab}), got values from {low} to {high}")
    if weights is None:
        return
    if not hasattr(weights, "shape") or not hasattr(weights, "dtype") or not _is_float(weights):
        raise TypeError(f"weights must be a float array of shape [batch, pos], got {_describe(weights)}")
    if tuple(weights.shape) != tuple(targets.shape):
        raise ValueError(f"weights must have the targets' shape {tuple(targets.shape)}, got {tuple(weights.shape)}")
    if float(weights.min()) < 0 or not float(weights.sum()) > 0:
        raise ValueError("weights must be non-negative with a positive sum")


def _describe(x):
    if hasattr(x, "dtype"):
        return f"{type(x).__name__} of dtype {x.dtype}"
    return type(x).__name__
