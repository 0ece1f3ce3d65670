"""Input checks shared by both implementations (written once; torch_impl imports them).

The boundary (``foundation/boundary.py``, around every component call) and the other public
entry points call these before any math, so a bad argument fails with a ValueError or TypeError
that names it, never with a broadcasting error from deep inside.
The NumPy reference passes ``np.ndarray`` where a check asks for the array type, the torch
twin ``torch.Tensor``, so handing a tensor to a NumPy component (or an array to a torch one)
is a clear TypeError rather than a failure deep inside the math.
"""

from __future__ import annotations

import numbers

import numpy as np

from .config import TransformerConfig


def _is_torch(x):
    return type(x).__module__.startswith("torch")


def _is_float(x):
    if _is_torch(x):
        return x.is_floating_point()
    return x.dtype.kind == "f"


def _is_int(x):
    if _is_torch(x):
        return not x.is_floating_point() and not x.is_complex() and str(x.dtype) != "torch.bool"
    return x.dtype.kind in "iu"  # not np.issubdtype(..., np.integer): timedelta64 would count


def _dtype_name(x):
    return str(x.dtype).replace("torch.", "")


def check_config(cfg):
    """Every component is built from a TransformerConfig; returns it."""
    if not isinstance(cfg, TransformerConfig):
        raise TypeError(f"cfg must be a TransformerConfig, got {type(cfg).__name__}")
    return cfg


def check_seed(seed, generator_type):
    """A seed: None, a non-negative int, or an existing generator of the package's own kind."""
    if seed is None or isinstance(seed, generator_type):
        return
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, None or a {generator_type.__name__}, got {seed!r}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")


def tokens_as_array(tokens, name: str = "tokens"):
    """Nested lists or tuples of ids -> an ndarray; an ndarray subclass -> a plain ndarray; the rest as it is.

    A masked array is refused: its mask would be ignored, silently.
    """
    if isinstance(tokens, np.ma.MaskedArray):
        raise TypeError(f"{name} must be a plain array of ids, got a masked array (its mask would be ignored)")
    if isinstance(tokens, np.ndarray) and type(tokens) is not np.ndarray:
        return np.asarray(tokens)  # np.matrix and other subclasses: the same ids, read as a plain array
    if not isinstance(tokens, (list, tuple)):
        return tokens
    try:
        return np.asarray(tokens)
    except ValueError:
        raise ValueError(f"{name} must be a rectangular [batch, pos] array of ids; rows differ in length") from None


def check_tokens(tokens, cfg, array_type, name: str = "tokens"):
    """Token ids: an integer array_type, shape [batch, pos], 1 <= pos <= n_ctx, every id in [0, d_vocab)."""
    if not isinstance(tokens, array_type):
        raise TypeError(
            f"{name} must be an integer {_type_name(array_type)} of shape [batch, pos], got {type(tokens).__name__}"
        )
    if tokens.ndim != 2:
        raise ValueError(
            f"{name} must have shape [batch, pos] (rank 2), got shape {tuple(tokens.shape)}"
        )
    if not _is_int(tokens):
        raise TypeError(f"{name} must hold integer token ids, got dtype {tokens.dtype}")
    batch, pos = tokens.shape
    if batch == 0 or pos == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(tokens.shape)}")
    if pos > cfg.n_ctx:
        raise ValueError(f"{name} has {pos} positions but the model's n_ctx is {cfg.n_ctx}")
    low, high = _min_max(tokens)
    if low < 0 or high >= cfg.d_vocab:
        raise ValueError(
            f"{name} must lie in [0, d_vocab={cfg.d_vocab}), got values from {low} to {high}"
        )


def _min_max(ids):
    """The smallest and largest id as ints (torch has no min for its unsigned types beyond uint8)."""
    if _is_torch(ids) and str(ids.dtype) in ("torch.uint16", "torch.uint32", "torch.uint64"):
        ids = ids.long()  # a tensor method: foundation never imports torch
    return int(ids.min()), int(ids.max())


def check_activation(x, name: str, cfg, array_type):
    """A float array_type of the model's dtype, shape [batch, pos, d_model]: what every component takes."""
    if not isinstance(x, array_type):
        raise TypeError(f"{name} must be a {_type_name(array_type)}, got {type(x).__name__}")
    if not _is_float(x):
        raise TypeError(f"{name} must be a float array, got dtype {x.dtype}")
    if _dtype_name(x) != cfg.dtype:
        raise TypeError(f"{name} must have the model's dtype {cfg.dtype}, got {_dtype_name(x)}")
    if x.ndim != 3 or x.shape[-1] != cfg.d_model or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(
            f"{name} must have shape [batch, pos, {cfg.d_model}] with batch, pos >= 1, "
            f"got {tuple(x.shape)}"
        )


def _type_name(array_type):
    return "torch.Tensor" if array_type.__module__.startswith("torch") else "numpy.ndarray"


def check_grad(dout, name: str, expected_shape, dtype=None):
    """An upstream gradient (NumPy side only): a float ndarray of the model's dtype, shaped like the forward's output."""
    if not isinstance(dout, np.ndarray):
        raise TypeError(f"{name} must be a float numpy.ndarray, got {type(dout).__name__}")
    if not _is_float(dout):
        raise TypeError(f"{name} must be a float array, got dtype {dout.dtype}")
    if dtype is not None and _dtype_name(dout) != dtype:
        raise TypeError(f"{name} must have the model's dtype {dtype}, got {_dtype_name(dout)}")
    if tuple(dout.shape) != tuple(expected_shape):
        raise ValueError(
            f"{name} must have the forward output's shape {tuple(expected_shape)}, "
            f"got {tuple(dout.shape)}"
        )


def check_dloss(dloss):
    """The loss's upstream gradient: a real number (1 by default)."""
    if isinstance(dloss, bool) or not isinstance(dloss, (numbers.Real, np.floating)) and not (
        isinstance(dloss, np.ndarray) and dloss.ndim == 0 and np.issubdtype(dloss.dtype, np.floating)
    ):
        raise TypeError(f"dloss must be a real number, got {dloss!r}")


def check_forward_done(state, component: str):
    """``backward`` needs what the last ``forward`` saved, complete; say which forward is missing.

    ``state`` is the boundary's record of that forward: None (never run), "raised", "running" or "done".
    """
    if state is None:
        raise ValueError(f"{component}.backward() called before {component}.forward()")
    if state == "raised":
        raise ValueError(
            f"{component}.backward(): the last {component}.forward() raised before it finished, so what it "
            f"saved is incomplete; run {component}.forward() again first"
        )
    if state == "running":
        raise ValueError(
            f"{component}.backward() called while {component}.forward() is still running (from a hook "
            f"inside it?); call backward after that forward returns"
        )


def check_hook_result(result, expected_shape, hook_name):
    """What a hook returns replaces the activation (or gradient), so it must have its shape."""
    if not hasattr(result, "shape"):
        raise TypeError(
            f"hook on {hook_name!r} must return None or an array shaped {tuple(expected_shape)}, "
            f"got {type(result).__name__}"
        )
    if not hasattr(result, "dtype") or not (_is_float(result) or _is_int(result)):
        raise TypeError(
            f"hook on {hook_name!r} must return None or an array of real numbers, "
            f"got {type(result).__name__} of dtype {getattr(result, 'dtype', None)}"
        )
    if tuple(result.shape) != tuple(expected_shape):
        raise ValueError(
            f"hook on {hook_name!r} returned shape {tuple(result.shape)}; the activation's shape is "
            f"{tuple(expected_shape)}"
        )


def check_loss_inputs(logits, targets, weights, array_type):
    """logits [batch, pos, d_vocab] float; targets [batch, pos] ids in [0, d_vocab); weights like targets, >= 0."""
    for name, value in (("logits", logits), ("targets", targets), ("weights", weights)):
        if value is not None and not isinstance(value, array_type):
            raise TypeError(f"{name} must be a {_type_name(array_type)}, got {type(value).__name__}")
    if not _is_float(logits):
        raise TypeError(f"logits must be a float array of shape [batch, pos, d_vocab], got {_describe(logits)}")
    if logits.ndim != 3 or 0 in tuple(logits.shape):
        raise ValueError(f"logits must have shape [batch, pos, d_vocab], none of them 0, got {tuple(logits.shape)}")
    if not _is_int(targets):
        raise TypeError(f"targets must be an integer array of shape [batch, pos], got {_describe(targets)}")
    if tuple(targets.shape) != tuple(logits.shape[:2]):
        raise ValueError(
            f"targets must have shape {tuple(logits.shape[:2])} (logits' batch and pos), got {tuple(targets.shape)}"
        )
    d_vocab = logits.shape[-1]
    low, high = _min_max(targets)
    if low < 0 or high >= d_vocab:
        raise ValueError(f"targets must lie in [0, d_vocab={d_vocab}), got values from {low} to {high}")
    if weights is None:
        return
    if not _is_float(weights):
        raise TypeError(f"weights must be a float array of shape [batch, pos], got {_describe(weights)}")
    if tuple(weights.shape) != tuple(targets.shape):
        raise ValueError(f"weights must have the targets' shape {tuple(targets.shape)}, got {tuple(weights.shape)}")
    if float(weights.min()) < 0 or not float(weights.sum()) > 0:
        raise ValueError("weights must be non-negative with a positive sum")


def _describe(x):
    if hasattr(x, "dtype"):
        return f"{type(x).__name__} of dtype {x.dtype}"
    return type(x).__name__


def key_problems(found, expected, noun: str) -> list:
    """["missing <noun>: a, b", "unexpected <noun>: c"]: what ``found`` lacks of ``expected``, and what it adds."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    problems = []
    if missing:
        problems.append(f"missing {noun}: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected {noun}: {', '.join(unexpected)}")
    return problems


def check_state_dict(state_dict, expected_shapes: dict, dtype=None):
    """Strict key and shape check of a state dict against {name: shape}; one ValueError lists every problem.

    With ``dtype`` (the model's, e.g. "float32"), finite values that would overflow to inf in it are a problem too.
    """
    if not isinstance(state_dict, dict):
        raise TypeError(f"state_dict must be a dict of arrays, got {type(state_dict).__name__}")
    problems = key_problems(state_dict, expected_shapes, "keys")
    for name in sorted(set(expected_shapes) & set(state_dict)):
        value = state_dict[name]
        if not hasattr(value, "shape") or not hasattr(value, "dtype"):
            raise TypeError(f"state_dict[{name!r}] must be an ndarray, got {type(value).__name__}")
        if not (_is_float(value) or _is_int(value)):
            raise TypeError(f"state_dict[{name!r}] must hold numbers, got dtype {value.dtype}")
        if tuple(value.shape) != tuple(expected_shapes[name]):
            problems.append(
                f"{name}: shape {tuple(value.shape)} does not match the model's {tuple(expected_shapes[name])}"
            )
        elif dtype is not None and _overflows(value, dtype):
            problems.append(f"{name}: holds finite values too large for the model's dtype {dtype}")
    if problems:
        raise ValueError("load_state_dict: " + "; ".join(problems))


def _overflows(value, dtype):
    """True where a finite float value becomes inf when cast to dtype."""
    array = value.detach().cpu().numpy() if _is_torch(value) else np.asarray(value)
    if array.dtype.kind != "f" or array.dtype.itemsize <= np.dtype(dtype).itemsize or array.size == 0:
        return False
    largest = np.abs(array[np.isfinite(array)]).max(initial=0)
    return bool(largest > np.finfo(dtype).max)
