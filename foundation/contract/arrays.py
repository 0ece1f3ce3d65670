"""What NumPy and torch spell differently, in one place (foundation never imports torch).

Foundation serves both twins, so where it must tell an ndarray from a tensor, or read either
one's values, it asks here; everything else in foundation reads arrays through these names.
"""

from __future__ import annotations

import numpy as np

TORCH_INT_DTYPES = {f"torch.{kind}{bits}" for kind in ("int", "uint") for bits in (8, 16, 32, 64)}


def is_torch(x):
    """Anything from torch (a tensor, a dtype, a generator)."""
    return type(x).__module__.startswith("torch")


def is_tensor(x):
    """A torch.Tensor, or a subclass of it defined anywhere."""
    return any(c.__name__ == "Tensor" and c.__module__ == "torch" for c in type(x).__mro__)


def is_float(x):
    """An array or tensor of floating-point numbers."""
    return x.is_floating_point() if is_torch(x) else x.dtype.kind == "f"


def is_int(x):
    """An array or tensor of integers (not bool, not timedelta64, not torch's quantized qint8)."""
    if is_torch(x):
        return str(x.dtype) in TORCH_INT_DTYPES
    return x.dtype.kind in "iu"


def size(x):
    """The number of entries."""
    return x.numel() if is_torch(x) else x.size


def dtype_name(x):
    """ "float32", "int64", ...: the same word for an ndarray and a tensor."""
    return str(x.dtype).replace("torch.", "")


def device_name(x):
    """ "cpu", "cuda:0", ...: where an array's values are (an ndarray's are on the CPU)."""
    return str(x.device) if is_torch(x) else "cpu"


def as_numpy(x):
    """An ndarray from an ndarray or a torch tensor (detached, on the CPU); a bfloat16 tensor's
    values come as float32, exactly (NumPy has no bfloat16)."""
    if is_tensor(x):
        x = x.detach().cpu()
        return (x.float() if str(x.dtype) == "torch.bfloat16" else x).numpy()
    return np.asarray(x)
