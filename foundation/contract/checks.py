"""Input checks shared by both implementations (written once; torch_impl imports them).

The boundary (``foundation/contract/boundary.py``, around every component call) and the other public
entry points call these before any math, so a bad argument fails with a ValueError or TypeError
that names it, never with a broadcasting error from deep inside.
The NumPy reference passes ``np.ndarray`` where a check asks for the array type, the torch
twin ``torch.Tensor``, so handing a tensor to a NumPy component (or an array to a torch one)
is a clear TypeError rather than a failure deep inside the math.
"""

from __future__ import annotations

import numbers
from collections import namedtuple
from collections.abc import Mapping

import numpy as np

from foundation.contract.arrays import dtype_name as _dtype_name
from foundation.contract.arrays import is_float as _is_float
from foundation.contract.arrays import is_int as _is_int
from foundation.contract.arrays import is_tensor as _is_tensor
from foundation.contract.arrays import is_torch as _is_torch
from foundation.contract.config import TransformerConfig


def check_plain(x, name):
    """``x`` itself, if its values can be read as they are: not a masked array, and a tensor with
    plain values."""
    if isinstance(x, np.ma.MaskedArray):
        raise TypeError(
            f"{name} must be a plain array, got a masked array (its mask would be ignored: "
            "pass .filled(value))"
        )
    if _is_tensor(x):
        _check_plain_tensor(x, name)
    return x


def _check_plain_tensor(tensor, name):
    """A tensor whose values can be read as they are: not on the meta device, dense, not nested or
    quantized."""
    if tensor.is_meta:
        raise TypeError(f"{name} is a tensor on the meta device: it has a shape but no values")
    for odd, words in (
        (tensor.is_nested, "a nested tensor"),
        (tensor.is_quantized, "a quantized tensor"),
        (str(tensor.layout) != "torch.strided", f"a tensor of layout {tensor.layout}"),
    ):
        if odd:
            raise TypeError(
                f"{name} is {words}; pass a plain dense tensor (.to_dense(), .dequantize())"
            )


def is_integer(value):
    """A Python or NumPy int, not a bool (``True`` is not a layer, a count or an id)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_flags(**flags):
    """Each ``name=value`` must be True or False."""
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be a bool, got {value!r}")


def check_config(cfg, array_type=None):
    """Every component is built from a TransformerConfig; returns it.

    ``array_type`` (``np.ndarray`` for the NumPy twin) refuses a dtype that library does not have:
    NumPy has no bfloat16.
    """
    if not isinstance(cfg, TransformerConfig):
        raise TypeError(f"cfg must be a TransformerConfig, got {type(cfg).__name__}")
    if array_type is np.ndarray and cfg.dtype == "bfloat16":
        raise ValueError(
            "cfg.dtype='bfloat16': NumPy has no bfloat16 type, so the NumPy twin cannot compute "
            "in it; the torch twin can (torch_impl.Transformer), and the NumPy twin takes "
            "'float16', 'float32' and 'float64'"
        )
    return cfg


def check_reduction(reduction):
    """A loss's reduction: "mean" (one number) or "none" (one per token) -> itself."""
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    return reduction


def check_seed(seed, generator_type):
    """A seed: None, a non-negative int, or an existing generator of the package's own kind."""
    if seed is None or isinstance(seed, generator_type):
        return
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, None or a {generator_type.__name__}, got {seed!r}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    if seed >= 2**64:  # torch's generators take 64 bits: both twins take the same seeds
        raise ValueError(f"seed must be below 2**64, got {seed}")


def tokens_as_array(tokens, name: str = "tokens"):
    """Nested lists or tuples of ids -> an ndarray; an ndarray subclass -> a plain ndarray; the rest
    as it is.

    Nothing is converted before it is checked: every entry of a list must be a Python or NumPy
    integer (``True`` is not an id, nor is ``2.0``), so a list never turns a bool into an id or a
    uint64 into a float. A masked array is refused (its mask would be ignored, silently), and so
    is a tensor without plain values (on the meta device, sparse, nested, quantized).
    """
    if _is_tensor(check_plain(tokens, name)):
        return tokens
    if isinstance(tokens, np.ndarray) and type(tokens) is not np.ndarray:
        # np.matrix and other subclasses: the same ids, read as a plain array
        return np.asarray(tokens)
    if not isinstance(tokens, (list, tuple)):
        return tokens
    return _ids_of_lists(tokens, name)


def _ids_of_lists(tokens, name):
    """Nested lists of ids -> an int64 ndarray (uint64 when an id needs it), each entry checked as
    given."""
    rectangular = f"{name} must be a rectangular [batch, pos] array of ids; rows differ in length"
    try:
        # each entry as given: a bool stays a bool, a uint64 a uint64
        cells = np.array(tokens, dtype=object)
    except ValueError:
        raise ValueError(rectangular) from None
    # an entry NumPy cannot read (a meta tensor ...)
    except (TypeError, RuntimeError, NotImplementedError) as error:
        raise TypeError(
            f"{name} must be nested lists of integer ids; an entry cannot be read ({error})"
        ) from None
    if cells.ndim > 2:  # no caller takes more than [batch, pos]
        raise ValueError(f"{name} must have shape [batch, pos] (rank 2), got shape {cells.shape}")
    ids = []
    for cell in cells.flat:
        if isinstance(cell, (list, tuple)):
            raise ValueError(rectangular)
        if isinstance(cell, np.ndarray) or _is_tensor(cell):  # a 0-d array or tensor: its one value
            if check_plain(cell, name).ndim != 0:
                raise ValueError(rectangular)
            cell = cell.item()
        if isinstance(cell, (bool, np.bool_)):
            raise TypeError(
                f"{name} must hold integer token ids, got the bool {cell!r} (True and False are "
                f"not ids)"
            )
        if not isinstance(cell, (int, np.integer)):
            raise TypeError(
                f"{name} must hold integer token ids, got {cell!r} of type {type(cell).__name__}"
            )
        ids.append(int(cell))
    low, high = min(ids, default=0), max(ids, default=0)
    for dtype in (np.int64, np.uint64):
        if np.iinfo(dtype).min <= low and high <= np.iinfo(dtype).max:
            return np.array(ids, dtype=dtype).reshape(cells.shape)
    raise ValueError(f"{name} must be token ids in [0, d_vocab), got values from {low} to {high}")


def check_tokens(tokens, cfg, array_type, name: str = "tokens"):
    """Token ids: an integer array_type, shape [batch, pos], 1 <= pos <= n_ctx, every id in [0,
    d_vocab)."""
    if not isinstance(tokens, array_type):
        raise TypeError(
            f"{name} must be an integer {_type_name(array_type)} of shape [batch, pos], got "
            f"{type(tokens).__name__}"
        )
    check_plain(tokens, name)
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
    """The smallest and largest id as ints (torch has no min for its unsigned types beyond
    uint8)."""
    if _is_torch(ids) and str(ids.dtype) in ("torch.uint16", "torch.uint32", "torch.uint64"):
        ids = ids.long()  # a tensor method: foundation never imports torch
    return int(ids.min()), int(ids.max())


def check_activation(x, name: str, cfg, array_type):
    """A float array_type of the model's dtype, shape [batch, pos, d_model], pos <= n_ctx: what
    every component takes."""
    if not isinstance(x, array_type):
        raise TypeError(f"{name} must be a {_type_name(array_type)}, got {type(x).__name__}")
    # (a tensor on the meta device passes: torch runs it for shapes)
    if isinstance(x, np.ma.MaskedArray):
        check_plain(x, name)
    if not _is_float(x):
        raise TypeError(f"{name} must be a float array, got dtype {x.dtype}")
    if _dtype_name(x) != cfg.dtype:
        raise TypeError(f"{name} must have the model's dtype {cfg.dtype}, got {_dtype_name(x)}")
    if x.ndim != 3 or x.shape[-1] != cfg.d_model or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(
            f"{name} must have shape [batch, pos, {cfg.d_model}] with batch, pos >= 1, "
            f"got {tuple(x.shape)}"
        )
    if x.shape[1] > cfg.n_ctx:
        raise ValueError(f"{name} has {x.shape[1]} positions but n_ctx is {cfg.n_ctx}")


def _type_name(array_type):
    return "torch.Tensor" if array_type.__module__.startswith("torch") else "numpy.ndarray"


def check_grad(dout, name: str, expected_shape, dtype=None):
    """An upstream gradient (NumPy side only): a float ndarray of the model's dtype, shaped like the
    forward's output."""
    if not isinstance(dout, np.ndarray):
        raise TypeError(f"{name} must be a float numpy.ndarray, got {type(dout).__name__}")
    check_plain(dout, name)
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
    if (
        isinstance(dloss, bool)
        or not isinstance(dloss, (numbers.Real, np.floating))
        and not (
            isinstance(dloss, np.ndarray)
            and dloss.ndim == 0
            and np.issubdtype(dloss.dtype, np.floating)
        )
    ):
        raise TypeError(f"dloss must be a real number, got {dloss!r}")


def check_forward_done(state, component: str):
    """``backward`` needs what the last ``forward`` saved, complete; say which forward is missing.

    ``state`` is the boundary's record of that forward: None (never run), "raised", "cached" (it
    continued a key-value cache), "running" or "done".
    """
    if state is None:
        raise ValueError(f"{component}.backward() called before {component}.forward()")
    if state == "raised":
        raise ValueError(
            f"{component}.backward(): the last {component}.forward() raised before it finished, so "
            f"what it saved is incomplete; run {component}.forward() again first"
        )
    if state == "cached":
        raise ValueError(
            f"{component}.backward(): the last {component}.forward() continued a key-value cache "
            "(past_kv_cache), and the hand-written backward does not support one (generation runs "
            f"no backward); run {component}.forward() without a cache first"
        )
    if state == "running":
        raise ValueError(
            f"{component}.backward() called while {component}.forward() is still running (from a "
            "hook inside it?); call backward after that forward returns"
        )


def check_hook_result(result, expected_shape, hook_name, direction="fwd"):
    """What a hook returns replaces the activation (or gradient), so it must have its shape -> the
    result to use.

    A forward hook's result is a constant in both twins, so a tensor that requires grad is refused
    (its gradient would be dropped without a word); a backward hook's is a gradient, used detached.
    Whatever one twin reads, the other reads too: a bfloat16 tensor and a longdouble or
    negative-strided ndarray come back as arrays both twins take, with the same values.
    """
    if not hasattr(result, "shape"):
        raise TypeError(
            f"hook on {hook_name!r} must return None or an array shaped {tuple(expected_shape)}, "
            f"got {type(result).__name__}"
        )
    check_plain(result, f"what the hook on {hook_name!r} returned")
    if _is_tensor(result):
        if result.requires_grad and direction == "fwd":
            raise TypeError(
                f"hook on {hook_name!r} returned a tensor that requires grad: what a hook returns "
                "is a constant in both twins (no gradient flows into it); return result.detach()"
            )
        result = result.detach()
        if result.is_floating_point() and _dtype_name(result) not in ("float32", "float64"):
            result = result.double()  # bfloat16, float16: exact in float64, which both twins read
    elif isinstance(result, np.ndarray):
        # longdouble: torch has no such type
        wide = result.dtype.kind == "f" and result.dtype.itemsize > 8
        # no negative strides: torch has none
        result = np.ascontiguousarray(result, dtype=np.float64 if wide else None)
    if not hasattr(result, "dtype") or not (_is_float(result) or _is_int(result)):
        raise TypeError(
            f"hook on {hook_name!r} must return None or an array of real numbers, "
            f"got {type(result).__name__} of dtype {getattr(result, 'dtype', None)}"
        )
    if tuple(result.shape) != tuple(expected_shape):
        raise ValueError(
            f"hook on {hook_name!r} returned shape {tuple(result.shape)}; the activation's shape "
            f"is {tuple(expected_shape)}"
        )
    return result


def check_loss_inputs(logits, targets, weights, array_type):
    """logits [batch, pos, d_vocab] float; targets [batch, pos] ids in [0, d_vocab); weights like
    targets, >= 0."""
    for name, value in (("logits", logits), ("targets", targets), ("weights", weights)):
        if value is not None and not isinstance(value, array_type):
            raise TypeError(
                f"{name} must be a {_type_name(array_type)}, got {type(value).__name__}"
            )
    if not _is_float(logits):
        raise TypeError(
            f"logits must be a float array of shape [batch, pos, d_vocab], got {_describe(logits)}"
        )
    if logits.ndim != 3 or 0 in tuple(logits.shape):
        raise ValueError(
            f"logits must have shape [batch, pos, d_vocab], none of them 0, got "
            f"{tuple(logits.shape)}"
        )
    if not _is_int(targets):
        raise TypeError(
            f"targets must be an integer array of shape [batch, pos], got {_describe(targets)}"
        )
    if tuple(targets.shape) != tuple(logits.shape[:2]):
        raise ValueError(
            f"targets must have shape {tuple(logits.shape[:2])} (logits' batch and pos), got "
            f"{tuple(targets.shape)}"
        )
    d_vocab = logits.shape[-1]
    low, high = _min_max(targets)
    if low < 0 or high >= d_vocab:
        raise ValueError(
            f"targets must lie in [0, d_vocab={d_vocab}), got values from {low} to {high}"
        )
    if weights is None:
        return
    if not _is_float(weights):
        raise TypeError(
            f"weights must be a float array of shape [batch, pos], got {_describe(weights)}"
        )
    if tuple(weights.shape) != tuple(targets.shape):
        raise ValueError(
            f"weights must have the targets' shape {tuple(targets.shape)}, got "
            f"{tuple(weights.shape)}"
        )
    low, high = float(weights.min()), float(weights.max())
    if not (0 <= low and high < float("inf")) or not high > 0:  # NaN fails every comparison
        raise ValueError(
            f"weights must be non-negative and finite with a positive sum, "
            f"got values from {low} to {high}"
        )


def _describe(x):
    return f"{type(x).__name__} of dtype {x.dtype}"  # an array: check_loss_inputs checked its type


def key_problems(found, expected, noun: str) -> list:
    """["missing <noun>: a, b", "unexpected <noun>: c"]: what ``found`` lacks of ``expected``, and
    what it adds."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    problems = []
    if missing:
        problems.append(f"missing {noun}: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected {noun}: {', '.join(unexpected)}")
    return problems


# what load_state_dict returns, as torch's does
IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


def check_state_dict(
    state_dict, expected_shapes: dict, dtype=None, strict=True, where="load_state_dict"
):
    """Check a state dict against {name: shape} -> {name: ndarray}, the values as the model takes
    them.

    Both twins' ``load_state_dict`` and the weights file go through here, so they take the same
    values and refuse the same ones with the same message. Each expected key present becomes a
    fresh C-contiguous ndarray of ``dtype`` (the model's, e.g. "float32"; for "bfloat16", which
    NumPy lacks, float32, rounded to bfloat16 by the torch twin as it copies), whatever it came as:
    an ndarray of any byte order, float width (float16 to longdouble) or integer type, or a
    tensor (bfloat16, float16, float8 ... on any device, requiring grad or not). Refused before
    anything is converted, with ``where`` and the key in one line: a TypeError for the first value
    that is not a plain array of real numbers (a masked array, a meta, sparse, nested or quantized
    tensor, bool, complex, text); one ValueError listing every missing or unexpected key (when
    ``strict``), every wrong shape and every finite value that would overflow to inf in ``dtype``.
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(
            f"{where}: state_dict must be a dict of arrays, got {type(state_dict).__name__}"
        )
    odd = [key for key in state_dict if not isinstance(key, str)]
    if odd:
        raise TypeError(f"{where}: state_dict keys must be str (parameter names), got {odd[0]!r}")
    problems = key_problems(state_dict, expected_shapes, "keys") if strict else []
    arrays = {}
    for name in [name for name in expected_shapes if name in state_dict]:
        value = state_dict[name]
        _check_real_values(value, f"state_dict[{name!r}]", where)
        if tuple(value.shape) != tuple(expected_shapes[name]):
            problems.append(
                f"{name}: shape {tuple(value.shape)} does not match the model's "
                f"{tuple(expected_shapes[name])}"
            )
            continue
        array = _as_plain_array(value)
        with np.errstate(over="ignore"):  # an overflow is reported below, by name
            arrays[name] = np.array(array, dtype=_numpy_dtype(dtype), order="C", copy=True)
        too_large = np.isinf(arrays[name])
        if dtype == "bfloat16":
            too_large |= np.abs(arrays[name]) >= BFLOAT16_OVERFLOW  # infinite once rounded
        if array.dtype.kind == "f" and np.any(too_large & np.isfinite(array)):
            problems.append(f"{name}: holds finite values too large for the model's dtype {dtype}")
    if problems:
        raise ValueError(f"{where}: " + "; ".join(problems))
    return arrays


# the smallest magnitude that rounds to infinity in bfloat16: halfway from its largest finite value,
# (2 - 2**-7) * 2**127, to 2**128 (a tie rounds to the even neighbour, infinity)
BFLOAT16_OVERFLOW = (2 - 2**-8) * 2.0**127


def _numpy_dtype(dtype):
    """The NumPy dtype that holds a model dtype's values: bfloat16's in float32 (the same exponent
    range; NumPy has no bfloat16), the others as themselves."""
    return "float32" if dtype == "bfloat16" else dtype


def _check_real_values(value, label, where):
    """A state dict's value must be a plain array or tensor of real numbers (floats of any width, or
    integers)."""
    check_plain(value, f"{where}: {label}")
    if _is_tensor(value):
        if not (value.is_floating_point() or _is_int(value)):
            raise TypeError(
                f"{where}: {label} must hold real numbers, got dtype {_dtype_name(value)}"
            )
        return
    if not (hasattr(value, "shape") and hasattr(value, "dtype") and hasattr(value, "__array__")):
        raise TypeError(
            f"{where}: {label} must be an ndarray or a tensor of real numbers, got "
            f"{type(value).__name__}"
        )
    dtype = np.dtype(value.dtype)
    # ml_dtypes' bfloat16
    ml_float = dtype.kind == "V" and dtype.fields is None and np.can_cast(dtype, np.float64)
    if not (dtype.kind in "fiu" and dtype.fields is None or ml_float):
        raise TypeError(f"{where}: {label} must hold real numbers, got dtype {dtype}")


def _as_plain_array(value):
    """A checked value -> a plain ndarray holding the same numbers (a float64 one where NumPy has no
    such float)."""
    if _is_tensor(value):
        if value.is_floating_point():
            # exact from bfloat16, float16, float8 and float32: NumPy has no bfloat16
            value = value.double()
        return value.numpy(force=True)  # detached, on the CPU
    # np.matrix, a memmap, another library's array: the same numbers, as a plain ndarray
    array = np.asarray(value)
    # ml_dtypes' floats cast exactly
    return array.astype(np.float64) if array.dtype.kind == "V" else array
