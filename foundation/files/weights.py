"""The weights file both twins read and write (written once; torch_impl uses it too).

A ``.npz`` archive: one array per ``state_dict`` key, named exactly as the key, plus the
config as JSON text under ``__config__``. A path ending in ``.safetensors`` gets that format
instead, through the ``safetensors`` library: the same tensors, the config as JSON text under
``__config__`` in the header's metadata, read and checked the same way.

Saving never destroys what is there. Every format goes through one writer,
``write_atomically``: it writes a temporary file in the target's folder and renames it over
the target, so an interrupted save leaves the old file whole. A symlink is written through
(the file it points to is replaced, the link stays); a read-only file, and anything that is
not a regular file or a new path (a folder, a FIFO, a device, a socket), is refused before
anything is written. The file gets the permissions ``np.save`` would give it (an existing
file's, or the umask's).

Loading trusts nothing in the file. It never unpickles (a weights file holds numbers and text, never
code), and it checks the file's claims against what the file holds before reading any array: the
config must ask for exactly the arrays present, each array header must promise exactly the bytes its
member holds, and the fixed tensors the config would build must be of a sane size. Whatever is wrong
(the zip container, a member's compression, an array's header, the config's JSON) is one
``ValueError`` naming the file. The arrays are then checked and cast as ``load_state_dict`` checks
and casts them (``foundation.contract.checks.check_state_dict``), so both twins load the same values
from a file, or refuse it with the same message naming file and key.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import signal
import stat
import struct
import tempfile
import threading
import zipfile
import zlib

import numpy as np
import safetensors
import safetensors.numpy
from safetensors import SafetensorError

from foundation.contract.checks import check_state_dict, key_problems
from foundation.contract.config import TransformerConfig

CONFIG_KEY = "__config__"
MAX_CONFIG_BYTES = 1 << 20  # the config's JSON is a few hundred bytes; more is not a weights file
# causal masks and sinusoidal table the config would build, not held by the file
MAX_FIXED_BYTES = 1 << 30
# deflate can shrink data at most about 1032 times: more is a lie (a zip bomb)
MAX_DEFLATE_RATIO = 1100
NUMBER_KINDS = "fiu"  # float, signed and unsigned integer arrays; no bool, complex, text or objects
SAFETENSORS_EXTENSION = ".safetensors"
SAFETENSORS_DTYPES = {
    "F16": "float16",
    "F32": "float32",
    "F64": "float64",
    "I8": "int8",
    "I16": "int16",
    "I32": "int32",
    "I64": "int64",
    "U8": "uint8",
    "U16": "uint16",
    "U32": "uint32",
    "U64": "uint64",
    # NumPy has no bfloat16: read_tensor gives its values as float32, exactly; bool is not read
    "BF16": "float32",
}


def save_weights(path, state_dict: dict, cfg: TransformerConfig):
    """Atomically write ``state_dict`` (name -> ndarray) and ``cfg`` to ``path`` (.npz, or
    .safetensors by extension)."""
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
    if is_safetensors(path):
        write_atomically(path, lambda f: _write_safetensors(f, arrays, cfg))
    else:
        arrays[CONFIG_KEY] = np.array(cfg.to_json())
        write_atomically(path, lambda f: np.savez(f, **arrays))


def write_atomically(path, write):
    """Make the file at ``path`` by ``write(f)`` (``f``: a binary file open on a temporary file),
    never destroying.

    The temporary file sits in the target's folder and is renamed over the target once written
    and synced, so an interrupted save leaves the old file whole and no temporary file behind.
    The target is the end of ``path``'s symlinks: a link is written through and stays a link (a
    dangling link's target is created when its folder exists). An existing file keeps its mode
    (and owner, where the system allows); a new one gets 0o666 less the umask, as ``open`` gives.
    Refused before anything is written: a read-only file (``PermissionError``, even for root,
    who could write it), and anything that is not a regular file or a new path: a folder, FIFO,
    device, socket or a loop of symlinks (``ValueError``). Every format's save goes through here.
    """
    path = _check_path(path)
    target = _save_target(path)
    folder = os.path.dirname(target)
    existing = os.stat(target) if os.path.exists(target) else None
    with _terminate_as_exit():  # SIGTERM, as Ctrl-C, unwinds through the cleanup below
        _write_through_temporary(path, target, folder, existing, write)


def _write_through_temporary(path, target, folder, existing, write):
    try:
        fd, tmp_path = tempfile.mkstemp(
            prefix=".tmp-", suffix=os.path.splitext(target)[1], dir=folder
        )
    except OSError as error:
        raise type(error)(
            f"cannot save {path!r}: no file can be made in the folder {folder!r} ({error.strerror})"
        ) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if existing is not None:
                _keep_owner(f.fileno(), existing)
            os.fchmod(
                f.fileno(), _new_file_mode() if existing is None else stat.S_IMODE(existing.st_mode)
            )
            os.fsync(f.fileno())
        _save_target(path)  # again: what is at the path may have changed while the file was written
        os.replace(tmp_path, target)
    except BaseException as error:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        # a full disk, an immutable file: say which save failed
        if isinstance(error, OSError) and error.strerror:
            raise type(error)(
                f"cannot save {path!r}: {error.strerror} (what was there is unchanged)"
            ) from None
        raise


@contextlib.contextmanager
def _terminate_as_exit():
    """While a save runs, SIGTERM raises SystemExit(143) (where no handler of the program's own is
    set, and in the main thread, where Python runs handlers): the save's ``except`` removes its
    temporary file, and the process then ends with the status a SIGTERM gives."""
    own_handler = signal.getsignal(signal.SIGTERM) != signal.SIG_DFL
    if threading.current_thread() is not threading.main_thread() or own_handler:
        yield
        return

    def terminate(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _save_target(path):
    """The file a save to ``path`` replaces (the end of its symlinks), if it may be replaced."""
    if path == "":
        raise ValueError("path must name a file, got ''")
    if path.endswith(os.sep) or (os.altsep and path.endswith(os.altsep)):
        raise ValueError(
            f"cannot save to {path!r}: a path ending in {path[-1]!r} names a folder, not a file"
        )
    target = os.path.realpath(path)
    through = "" if target == os.path.abspath(path) else f" (a symlink to {target!r})"
    if os.path.islink(target):
        raise ValueError(
            f"cannot save to {path!r}: its symlinks form a loop, so it leads to no file"
        )
    try:
        status = os.stat(target)
    except FileNotFoundError:
        folder = os.path.dirname(target)
        if not os.path.isdir(folder):
            raise FileNotFoundError(
                f"cannot save {path!r}{through}: the folder {folder!r} does not exist"
            ) from None
        return target  # a new file
    except OSError as error:
        raise type(error)(f"cannot save {path!r}{through}: {error.strerror}") from None
    if not stat.S_ISREG(status.st_mode):
        raise ValueError(
            f"cannot save to {path!r}{through}: it is {_file_kind(status.st_mode)}, not a regular "
            "file, and a save never replaces one"
        )
    if not _writable(target, status):
        raise PermissionError(
            f"cannot save to {path!r}{through}: the file is read-only (mode "
            f"{stat.S_IMODE(status.st_mode):#o}); make it writable or save under another name"
        )
    return target


def _writable(target, status):
    """Writable by this user, and by someone: root passes ``os.access`` for any file, a read-only
    one included."""
    effective = {"effective_ids": True} if os.access in os.supports_effective_ids else {}
    anyone = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
    return os.access(target, os.W_OK, **effective) and bool(status.st_mode & anyone)


def _file_kind(mode):
    for test, kind in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return kind
    return "not a file"


def _keep_owner(fd, existing):
    """The new file gets the old one's owner and group where the system allows it (root; the group
    for its members)."""
    for uid, gid in ((existing.st_uid, existing.st_gid), (-1, existing.st_gid)):
        try:
            os.fchown(fd, uid, gid)
            return
        except OSError:
            continue


def _new_file_mode():
    """0o666 less the umask, as ``open`` (and so ``np.save``) gives a new file."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def parameter_shapes(cfg: TransformerConfig) -> dict:
    """{state_dict key: shape} of the model ``cfg`` describes, in the model's order (no model is
    built)."""
    shapes = {"embed.W_E": (cfg.d_vocab, cfg.d_model)}
    if cfg.positional == "learned":
        shapes["pos_embed.W_pos"] = (cfg.n_ctx, cfg.d_model)
    # "LNPre": no parameters
    norm = {"LN": ("w", "b"), "RMS": ("w",)}.get(cfg.normalization_type, ())
    grouped = cfg.n_key_value_heads is not None  # TransformerLens's _W_K, _W_V, _b_K, _b_V
    key_value_heads, prefix = (cfg.n_key_value_heads, "_") if grouped else (cfg.n_heads, "")
    for i in range(cfg.n_layers):
        block = f"blocks.{i}"
        shapes.update({f"{block}.ln1.{name}": (cfg.d_model,) for name in norm})
        shapes[f"{block}.attn.W_Q"] = (cfg.n_heads, cfg.d_model, cfg.d_head)
        for name in ("W_K", "W_V"):
            shapes[f"{block}.attn.{prefix}{name}"] = (key_value_heads, cfg.d_model, cfg.d_head)
        shapes[f"{block}.attn.W_O"] = (cfg.n_heads, cfg.d_head, cfg.d_model)
        if cfg.attn_bias:
            shapes[f"{block}.attn.b_Q"] = (cfg.n_heads, cfg.d_head)
            for name in ("b_K", "b_V"):
                shapes[f"{block}.attn.{prefix}{name}"] = (key_value_heads, cfg.d_head)
            shapes[f"{block}.attn.b_O"] = (cfg.d_model,)
        if not cfg.attn_only:
            shapes.update({f"{block}.ln2.{name}": (cfg.d_model,) for name in norm})
            if cfg.gated_mlp:
                shapes.update(
                    {
                        f"{block}.mlp.W_gate": (cfg.d_model, cfg.d_mlp),
                        f"{block}.mlp.W_in": (cfg.d_model, cfg.d_mlp),
                        f"{block}.mlp.W_out": (cfg.d_mlp, cfg.d_model),
                    }
                )
            else:
                shapes[f"{block}.mlp.W_in"] = (cfg.d_model, cfg.d_mlp)
                if cfg.mlp_bias:
                    shapes[f"{block}.mlp.b_in"] = (cfg.d_mlp,)
                shapes[f"{block}.mlp.W_out"] = (cfg.d_mlp, cfg.d_model)
                if cfg.mlp_bias:
                    shapes[f"{block}.mlp.b_out"] = (cfg.d_model,)
    if cfg.normalization == "pre":
        shapes.update({f"ln_final.{name}": (cfg.d_model,) for name in norm})
    if cfg.unembed:
        shapes.update({"unembed.W_U": (cfg.d_model, cfg.d_vocab), "unembed.b_U": (cfg.d_vocab,)})
    return shapes


def parameter_count(cfg: TransformerConfig) -> int:
    """len(parameter_shapes(cfg)), by arithmetic: a config claiming 10^7 layers costs nothing to
    check."""
    norms = {"LN": 2, "RMS": 1}.get(cfg.normalization_type, 0)
    mlp = 3 if cfg.gated_mlp else 2 + 2 * cfg.mlp_bias
    per_block = norms + 4 + 4 * cfg.attn_bias + (0 if cfg.attn_only else norms + mlp)
    return (
        1
        + (cfg.positional == "learned")
        + cfg.n_layers * per_block
        + norms * (cfg.normalization == "pre")
        + 2 * cfg.unembed
    )


def load_weights(path):
    """Read a weights file -> (TransformerConfig, {name: ndarray of cfg.dtype}). Never unpickles."""
    path = _check_path(path)
    if not os.path.isfile(path):
        if os.path.exists(path):  # a FIFO would hang the reader, a device never end
            kind = _file_kind(os.stat(path).st_mode)
            raise ValueError(f"{path!r} is {kind}, not a regular file: not a weights file")
        raise FileNotFoundError(f"no weights file at {path!r}")
    try:
        cfg, arrays = _read_safetensors(path) if is_safetensors(path) else _read(path)
    except _NotAWeightsFile as error:
        raise ValueError(f"{path!r} is not a Transformer Twins weights file ({error})") from None
    except (
        ValueError,
        TypeError,
        OSError,
        EOFError,
        KeyError,
        RecursionError,
        MemoryError,
        OverflowError,
        NotImplementedError,
        zipfile.BadZipFile,
        zlib.error,
        SafetensorError,
    ) as error:
        reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        raise ValueError(
            f"{path!r} is not a readable Transformer Twins weights file ({reason})"
        ) from None
    # as load_state_dict would take them: the model's dtype, native byte order; what would overflow
    # it, refused
    return cfg, check_state_dict(arrays, parameter_shapes(cfg), cfg.dtype, where=repr(path))


class _NotAWeightsFile(Exception):
    """A reason, to be turned into the one ValueError naming the file."""


def _read(path):
    if not zipfile.is_zipfile(path):
        raise _NotAWeightsFile("not an .npz (zip) archive")
    with zipfile.ZipFile(path) as archive:
        members = _check_members(archive)
        if CONFIG_KEY not in members:
            raise _NotAWeightsFile(f"no {CONFIG_KEY} entry")
        cfg = _read_config(archive, members.pop(CONFIG_KEY))
        expected_count = parameter_count(cfg)
        # too many to list: say so before building any name
        if expected_count > 2 * len(members) + 64:
            raise _NotAWeightsFile(
                f"its config asks for {expected_count} arrays but it holds {len(members)}"
            )
        _check_fixed_tensors(cfg)
        shapes = parameter_shapes(cfg)
        headers = {name: _read_header(archive, info, name) for name, info in members.items()}
        _check_against_config(headers, shapes)
        arrays = {}
        for name in shapes:
            with archive.open(members[name]) as f:
                arrays[name] = np.lib.format.read_array(f, allow_pickle=False)
    return cfg, arrays


def _check_members(archive):
    """{array name: ZipInfo}; every member an .npy, stored or deflated, its size consistent."""
    members = {}
    for info in archive.infolist():
        if not info.filename.endswith(".npy"):
            raise _NotAWeightsFile(f"member {info.filename!r} is not an .npy array")
        name = info.filename[: -len(".npy")]
        if name in members:
            raise _NotAWeightsFile(f"member {info.filename!r} appears twice")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise _NotAWeightsFile(
                f"member {info.filename!r} uses compression method {info.compress_type}; "
                "expected stored or deflated"
            )
        if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
            raise _NotAWeightsFile(
                f"member {info.filename!r} claims {info.file_size} bytes but holds "
                f"{info.compress_size}"
            )
        if info.file_size > MAX_DEFLATE_RATIO * info.compress_size + 1024:
            raise _NotAWeightsFile(
                f"member {info.filename!r} claims {info.file_size} bytes from {info.compress_size} "
                "compressed: more than deflate can give"
            )
        members[name] = info
    return members


def _read_config(archive, info):
    if info.file_size > MAX_CONFIG_BYTES:
        raise _NotAWeightsFile(f"its {CONFIG_KEY} entry claims {info.file_size} bytes")
    with archive.open(info) as f:
        data = f.read(MAX_CONFIG_BYTES + 1)
    array = np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
    if array.dtype.kind != "U" or array.shape != ():
        raise _NotAWeightsFile(
            f"its {CONFIG_KEY} entry must be one string, got {array.dtype} of shape {array.shape}"
        )
    return _config_from_json(str(array))


def _config_from_json(text):
    if len(text) > MAX_CONFIG_BYTES:
        raise _NotAWeightsFile(f"its {CONFIG_KEY} entry holds {len(text)} characters")
    try:
        fields = json.loads(text)
    except RecursionError:
        raise _NotAWeightsFile("the config's JSON is nested too deeply") from None
    except ValueError as error:
        raise _NotAWeightsFile(f"the config is not valid JSON: {error}") from None
    try:
        return TransformerConfig.from_dict(fields)
    except (TypeError, ValueError) as error:
        raise _NotAWeightsFile(f"its config is invalid: {error}") from None


def _check_fixed_tensors(cfg):
    """Causal masks ([n_ctx, n_ctx] per layer) and the sinusoidal table come from the config
    alone."""
    size = cfg.n_layers * cfg.n_ctx**2 + cfg.n_ctx * cfg.d_model * 8
    if size > MAX_FIXED_BYTES:
        raise _NotAWeightsFile(
            f"its config (n_ctx={cfg.n_ctx}, n_layers={cfg.n_layers}) would build "
            f"{size / 2**30:.1f} GiB of fixed tensors that the file does not hold"
        )


def _read_header(archive, info, name):
    """(shape, dtype) from an .npy member's header, checked against the member's size; no data is
    read."""
    with archive.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise _NotAWeightsFile(f"array {name!r} has .npy format version {version}")
        header_size = f.tell()
    if dtype.kind not in NUMBER_KINDS or dtype.fields is not None:
        raise _NotAWeightsFile(f"array {name!r} holds {dtype}, not real numbers")
    data_size = math.prod(shape) * dtype.itemsize
    if header_size + data_size != info.file_size:
        raise _NotAWeightsFile(
            f"array {name!r} claims shape {shape} of {dtype} ({data_size} bytes) "
            f"but its member holds {info.file_size - header_size}"
        )
    return shape, dtype


def _check_against_config(headers, shapes):
    problems = key_problems(headers, shapes, "arrays")
    for name in sorted(set(shapes) & set(headers)):
        if tuple(headers[name][0]) != shapes[name]:
            problems.append(
                f"{name} has shape {tuple(headers[name][0])}, its config asks for {shapes[name]}"
            )
    if problems:
        raise _NotAWeightsFile("; ".join(problems))


def is_safetensors(path):
    """True when ``path`` names a .safetensors file (the extension chooses the format)."""
    return os.fspath(path).lower().endswith(SAFETENSORS_EXTENSION)


def _write_safetensors(f, arrays, cfg):
    """One tensor per state_dict key, the config as JSON text in the header's metadata."""
    f.write(safetensors.numpy.save(arrays, metadata={CONFIG_KEY: cfg.to_json()}))


def _read_safetensors(path):
    """The .safetensors twin of ``_read``: the config from the metadata, every header checked before
    any tensor."""
    with safetensors.safe_open(path, framework="numpy") as f:
        metadata = f.metadata() or {}
        if CONFIG_KEY not in metadata:
            raise _NotAWeightsFile(
                f"no {CONFIG_KEY} in its metadata (a Hugging Face checkpoint folder "
                "loads with Transformer.from_pretrained)"
            )
        cfg = _config_from_json(metadata[CONFIG_KEY])
        names = list(f.keys())
        expected_count = parameter_count(cfg)
        if expected_count > 2 * len(names) + 64:
            raise _NotAWeightsFile(
                f"its config asks for {expected_count} arrays but it holds {len(names)}"
            )
        _check_fixed_tensors(cfg)
        shapes = parameter_shapes(cfg)
        headers = {}
        for name in names:
            kind = f.get_slice(name).get_dtype()
            if kind not in SAFETENSORS_DTYPES:
                raise _NotAWeightsFile(f"array {name!r} holds {kind}, not real numbers NumPy reads")
            headers[name] = (
                tuple(f.get_slice(name).get_shape()),
                np.dtype(SAFETENSORS_DTYPES[kind]),
            )
        _check_against_config(headers, shapes)
        arrays = {name: read_tensor(f, path, name) for name in shapes}
    return cfg, arrays


def read_tensor(f, path, name):
    """One tensor of the safetensors file ``f`` (open on ``path``) -> a fresh ndarray (nothing stays
    mapped to the file).

    Every dtype comes as NumPy reads it (F16 as float16, ...) except BF16, which NumPy lacks: its
    16 bits are the upper half of a float32's, so shifting them up gives the same values as float32,
    exactly (infinities, NaNs and subnormals included). ``f`` has already read and checked the
    header; the header's offsets say where the bits lie.
    """
    if f.get_slice(name).get_dtype() != "BF16":
        return np.array(f.get_tensor(name))
    shape = tuple(f.get_slice(name).get_shape())
    with open(path, "rb") as file:
        (header_size,) = struct.unpack("<Q", file.read(8))  # little-endian u64, then the JSON
        begin, end = json.loads(file.read(header_size))[name]["data_offsets"]
        file.seek(8 + header_size + begin)
        bits = np.frombuffer(file.read(end - begin), dtype="<u2")  # [count] little-endian
    return (bits.astype(np.uint32) << 16).view(np.float32).reshape(shape)  # exact upcast


def _check_path(path):
    """``path`` as a str, from a str, bytes or os.PathLike (whose ``__fspath__`` may give bytes)."""
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"path must be a str, bytes or os.PathLike, got {type(path).__name__}")
    try:
        path = os.fspath(path)
    except TypeError as error:
        raise TypeError(f"path: {error}") from None
    return os.fsdecode(path)
