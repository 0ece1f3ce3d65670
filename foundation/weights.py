"""The weights file both twins read and write (written once; torch_impl uses it too).

A ``.npz`` archive: one array per ``state_dict`` key, named exactly as the key, plus the
config as JSON text under ``__config__``. Saving writes a temporary file in the same folder
and renames it over the target, so an interrupted save never leaves a half-written file.
Loading uses ``allow_pickle=False``: a weights file can hold numbers and text, never code.
"""

from __future__ import annotations

import os
import tempfile
import zipfile

import numpy as np

from .config import TransformerConfig

CONFIG_KEY = "__config__"


def save_weights(path, state_dict: dict, cfg: TransformerConfig):
    """Atomically write ``state_dict`` (name -> ndarray) and ``cfg`` to ``path``."""
    path = _check_path(path)
    if not isinstance(cfg, TransformerConfig):
        raise TypeError(f"cfg must be a TransformerConfig, got {type(cfg).__name__}")
    arrays = {}
    for name, value in state_dict.items():
        if name == CONFIG_KEY:
            raise ValueError(f"state_dict may not use the reserved key {CONFIG_KEY!r}")
        if not isinstance(value, np.ndarray):
            raise TypeError(f"state_dict[{name!r}] must be an ndarray, got {type(value).__name__}")
        arrays[name] = value
    arrays[CONFIG_KEY] = np.array(cfg.to_json())
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot save {path!r}: the folder {folder!r} does not exist")
    fd, tmp_path = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


def load_weights(path):
    """Read a weights file -> (TransformerConfig, {name: ndarray}). Never unpickles."""
    path = _check_path(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no weights file at {path!r}")
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ValueError("it is a single .npy array, not an .npz archive")
        with archive:
            contents = {name: archive[name] for name in archive.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as error:
        # numpy's own message would suggest allow_pickle=True, which this project never uses
        reason = "not an .npz archive of plain arrays" if "pickle" in str(error) else str(error)
        raise ValueError(f"{path!r} is not a Transformer Twins weights file ({reason})") from None
    if CONFIG_KEY not in contents:
        raise ValueError(f"{path!r} is not a Transformer Twins weights file (no {CONFIG_KEY} entry)")
    cfg = TransformerConfig.from_json(str(contents.pop(CONFIG_KEY)))
    return cfg, contents


def _check_path(path):
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    return os.fspath(path)
