"""The weights file, .npz or .safetensors (chosen by the extension): either twin reads what the
other wrote, bit for bit; loads never unpickle; every malformed file is one ValueError naming the
file.

A file's claims (shapes, sizes, its config) are checked against what it holds before anything
large is allocated. Saving (atomic, through links, never over what is not a regular file) is in
``test_saving.py``.
"""

import io
import json
import os
import re
import struct
import time
import zipfile

import numpy as np
import pytest
import safetensors.numpy
import torch

import numpy_impl as npi
import torch_impl as pti
from foundation.files.weights import (
    CONFIG_KEY,
    load_weights,
    save_weights,
)
from parity_tests.helpers import (
    CFG,
    SMALL,
    make_cfg,
    randomize,
)

LOADERS = [npi.Transformer.load, pti.Transformer.load]


# ---------------------------------------------------------------- either twin reads the other's
# file


def test_numpy_to_torch_bit_exact(tmp_path):
    model = npi.Transformer(CFG, seed=3)
    randomize(model, 4)
    model.save(tmp_path / "w.npz")
    twin = pti.Transformer.load(tmp_path / "w.npz")
    assert twin.cfg == CFG
    twin_sd = twin.state_dict()
    for name, array in model.state_dict().items():
        assert twin_sd[name].dtype == torch.float64
        assert np.array_equal(twin_sd[name].numpy(), array), name


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_torch_to_numpy_bit_exact(tmp_path, dtype):
    cfg = make_cfg(dtype=dtype)
    twin = pti.Transformer(cfg, seed=5)
    twin.save(str(tmp_path / "w.npz"))
    model = npi.Transformer.load(str(tmp_path / "w.npz"))
    assert model.cfg == cfg
    for name, tensor in twin.state_dict().items():
        array = model.state_dict()[name]
        assert array.dtype == np.dtype(dtype)
        assert np.array_equal(array, tensor.numpy()), name


def test_file_layout_is_plain_npz(tmp_path):
    """One array per state_dict key plus __config__ JSON text; readable with allow_pickle=False."""
    model = npi.Transformer(CFG)
    model.save(tmp_path / "w.npz")
    with np.load(tmp_path / "w.npz", allow_pickle=False) as archive:
        assert set(archive.files) == set(model.state_dict()) | {"__config__"}
        assert npi.TransformerConfig.from_json(str(archive["__config__"])) == CFG


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_either_twin_reads_the_others_file_bit_for_bit(tmp_path, dtype):
    cfg = make_cfg(dtype=dtype)
    model = npi.Transformer(cfg, seed=3)
    randomize(model, 4)
    model.save(tmp_path / "numpy.safetensors")
    twin = pti.Transformer.load(tmp_path / "numpy.safetensors")
    assert twin.cfg == cfg
    for name, array in model.state_dict().items():
        assert twin.state_dict()[name].dtype == getattr(torch, dtype)
        assert np.array_equal(twin.state_dict()[name].numpy(), array), name
    twin.save(str(tmp_path / "torch.safetensors"))
    back = npi.Transformer.load(str(tmp_path / "torch.safetensors"))
    for name, array in model.state_dict().items():
        assert back.state_dict()[name].dtype == np.dtype(dtype)
        assert np.array_equal(back.state_dict()[name], array), name


def test_file_layout_is_plain_safetensors(tmp_path):
    """One tensor per state_dict key, named as the key; the config as JSON text under __config__ in
    the metadata."""
    model = npi.Transformer(CFG, seed=1)
    model.save(tmp_path / "w.safetensors")
    tensors = safetensors.numpy.load_file(tmp_path / "w.safetensors")
    assert set(tensors) == set(model.state_dict())
    for name, array in model.state_dict().items():
        assert np.array_equal(tensors[name], array), name
    with safetensors.safe_open(tmp_path / "w.safetensors", framework="numpy") as f:
        assert npi.TransformerConfig.from_json(f.metadata()[CONFIG_KEY]) == CFG


def test_the_extension_chooses_the_format(tmp_path):
    model = npi.Transformer(CFG, seed=2)
    model.save(tmp_path / "w.npz")
    model.save(tmp_path / "w.SafeTensors")  # any case
    assert (tmp_path / "w.npz").read_bytes()[:2] == b"PK"  # a zip archive
    header_size = int.from_bytes((tmp_path / "w.SafeTensors").read_bytes()[:8], "little")
    assert json.loads((tmp_path / "w.SafeTensors").read_bytes()[8 : 8 + header_size])[
        "__metadata__"
    ][CONFIG_KEY]
    os.rename(tmp_path / "w.npz", tmp_path / "npz_inside.safetensors")
    with pytest.raises(ValueError, match="not a readable Transformer Twins weights file"):
        load_weights(tmp_path / "npz_inside.safetensors")
    os.rename(tmp_path / "w.SafeTensors", tmp_path / "safetensors_inside.npz")
    with pytest.raises(ValueError, match="not an .npz"):
        load_weights(tmp_path / "safetensors_inside.npz")


# ---------------------------------------------------------------- .npz: refused files


def test_load_never_unpickles(tmp_path):
    """An object array (which needs pickle) is refused, not executed."""
    path = tmp_path / "evil.npz"
    np.savez(
        path,
        **{"__config__": np.array(CFG.to_json()), "embed.W_E": np.array([object()], dtype=object)},
    )
    with pytest.raises(ValueError, match="not a Transformer Twins weights file"):
        load_weights(path)


@pytest.mark.parametrize("loader", [npi.Transformer.load, pti.Transformer.load])
def test_not_a_weights_file(tmp_path, loader):
    text = tmp_path / "notes.npz"
    text.write_text("hello")
    with pytest.raises(ValueError, match="not a Transformer Twins weights file"):
        loader(text)
    plain = tmp_path / "plain.npz"
    np.savez(plain, a=np.zeros(3))
    with pytest.raises(ValueError, match="no __config__"):
        loader(plain)
    single = tmp_path / "single.npy"
    np.save(single, np.zeros(3))
    with pytest.raises(ValueError, match="not a Transformer Twins weights file"):
        loader(single)
    with pytest.raises(FileNotFoundError):
        loader(tmp_path / "missing.npz")
    with pytest.raises(TypeError, match="path"):
        loader(42)


@pytest.mark.parametrize("loader", [npi.Transformer.load, pti.Transformer.load])
def test_missing_extra_and_misshaped_entries(tmp_path, loader):
    sd = npi.Transformer(CFG).state_dict()
    missing = dict(sd)
    del missing["blocks.1.attn.W_Q"]
    extra = dict(sd, **{"blocks.9.attn.W_Q": np.zeros((3, 12, 4))})
    misshaped = dict(sd, **{"unembed.W_U": np.zeros((12, 10))})
    cases = [
        (missing, "blocks.1.attn.W_Q"),
        (extra, "blocks.9.attn.W_Q"),
        (misshaped, "unembed.W_U"),
    ]
    for i, (state_dict, culprit) in enumerate(cases):
        path = tmp_path / f"bad{i}.npz"
        save_weights(path, state_dict, CFG)
        with pytest.raises(ValueError, match=culprit.replace(".", r"\.")):
            loader(path)


def test_bad_config_in_file(tmp_path):
    path = tmp_path / "w.npz"
    with zipfile.ZipFile(path, "w"):
        pass
    np.savez(path, __config__=np.array('{"d_vocab": 11, "wings": 2}'))
    with pytest.raises(ValueError, match="wings"):
        load_weights(path)
    np.savez(path, __config__=np.array("{not json"))
    with pytest.raises(ValueError, match="JSON"):
        load_weights(path)


def test_text_file_error_does_not_suggest_pickle(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("just some notes")
    with pytest.raises(ValueError) as error:
        load_weights(path)
    assert "allow_pickle" not in str(error.value)


def npz_bytes(arrays, compressed=False):
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    return buffer.getvalue()


def valid_arrays(cfg=SMALL):
    arrays = dict(npi.Transformer(cfg).state_dict())
    arrays["__config__"] = np.array(cfg.to_json())
    return arrays


def with_config(text, cfg=SMALL):
    arrays = valid_arrays(cfg)
    arrays["__config__"] = np.array(text)
    return npz_bytes(arrays)


def with_fields(**fields):
    d = SMALL.to_dict()
    d.update(fields)
    return with_config(json.dumps(d))


def zip_of(members, compression=zipfile.ZIP_STORED):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def npy_bytes(array):
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def valid_members(cfg=SMALL):
    return {f"{name}.npy": npy_bytes(a) for name, a in valid_arrays(cfg).items()}


def replace_member(name, data, cfg=SMALL, compression=zipfile.ZIP_STORED):
    members = valid_members(cfg)
    members[name] = data
    return zip_of(members, compression)


def npy_header(descr, shape, fortran=False):
    header = repr({"descr": descr, "fortran_order": fortran, "shape": shape}).encode("latin1")
    header += b" " * ((64 - (10 + len(header) + 1) % 64) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


def corrupt_deflate():
    data = bytearray(zip_of(valid_members(), zipfile.ZIP_DEFLATED))
    # the first member's compressed data starts after its 30-byte local header and name
    name_len = struct.unpack("<H", data[26:28])[0]
    start = 30 + name_len
    data[start : start + 8] = b"\xff" * 8
    return bytes(data)


def unknown_compression():
    data = bytearray(zip_of(valid_members()))
    # method field, in every local header and central directory entry: 99 is not a zip method
    for signature, offset in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
        start = 0
        while (i := data.find(signature, start)) >= 0:
            data[i + offset : i + offset + 2] = struct.pack("<H", 99)
            start = i + 4
    return bytes(data)


def nested_json(depth):
    return "[" * depth + "]" * depth


TINY_HUGE = {
    "n_layers 10^7": dict(n_layers=10**7),
    "d_vocab 10^9": dict(d_vocab=10**9),
    "d_model 10^6": dict(d_model=10**6, n_heads=1),
    "n_ctx 10^7 sinusoidal": dict(n_ctx=10**7, positional="sinusoidal"),
    "n_ctx 10^5 sinusoidal": dict(n_ctx=10**5, positional="sinusoidal"),
    "d_mlp 10^9": dict(d_mlp=10**9),
    "n_heads 10^7": dict(n_heads=10**7, d_head=1),
}


NPZ_BAD_FILES = {
    "empty": b"",
    "random bytes": bytes(np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8)),
    "text": b"hello, I am not a weights file\n",
    "truncated zip": npz_bytes(valid_arrays())[:-100],
    "half a zip": npz_bytes(valid_arrays())[: len(npz_bytes(valid_arrays())) // 2],
    "a single .npy": npy_bytes(np.zeros(3)),
    "a pickle": b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00K\x01.",
    "corrupt deflate data": corrupt_deflate(),
    "unknown compression": unknown_compression(),
    "bad npy magic": replace_member("embed.W_E.npy", b"NOTNUMPY" + b"\x00" * 100),
    "garbage npy header": replace_member(
        "embed.W_E.npy", b"\x93NUMPY\x01\x00\x10\x00{garbage!!!!!!}\n"
    ),
    "npy version 9": replace_member(
        "embed.W_E.npy", b"\x93NUMPY\x09\x00" + npy_bytes(np.zeros((5, 4)))[8:]
    ),
    "object dtype": replace_member("embed.W_E.npy", npy_header("|O", (5, 4)) + b"\x80\x04N." * 4),
    "complex weights": replace_member("embed.W_E.npy", npy_bytes(np.zeros((5, 4), dtype=complex))),
    "string weights": replace_member("embed.W_E.npy", npy_bytes(np.full((5, 4), "a"))),
    "bool weights": replace_member("embed.W_E.npy", npy_bytes(np.zeros((5, 4), dtype=bool))),
    "structured weights": replace_member(
        "embed.W_E.npy", npy_bytes(np.zeros((5, 4), dtype=[("a", "f8")]))
    ),
    "huge claimed shape": replace_member(
        "embed.W_E.npy", npy_header("<f8", (10**12, 4)) + b"\x00" * 64
    ),
    "data shorter than header": replace_member(
        "embed.W_E.npy", npy_header("<f8", (5, 4)) + b"\x00" * 16
    ),
    "data longer than header": replace_member(
        "embed.W_E.npy", npy_bytes(np.zeros((5, 4))) + b"\x00" * 64
    ),
    "wrong shape": replace_member("embed.W_E.npy", npy_bytes(np.zeros((4, 5)))),
    "negative shape": replace_member("embed.W_E.npy", npy_header("<f8", (-5, 4)) + b"\x00" * 64),
    "member not .npy": zip_of({**valid_members(), "readme.txt": b"hi"}),
    "extra array": zip_of({**valid_members(), "blocks.7.attn.W_Q.npy": npy_bytes(np.zeros(1))}),
    "missing array": zip_of({k: v for k, v in valid_members().items() if k != "embed.W_E.npy"}),
    "duplicate member": zip_of(valid_members()),  # replaced below: zipfile warns on duplicates
    "no config": zip_of({k: v for k, v in valid_members().items() if k != "__config__.npy"}),
    "config not JSON": with_config("{not json"),
    "config a list": with_config("[1, 2]"),
    "config a number": with_config("3"),
    "config nested 10^5 deep": with_config(nested_json(100_000)),
    "config dict nested deep": with_config('{"a":' * 50_000 + "1" + "}" * 50_000),
    "config unknown field": with_fields(colour="blue"),
    "config bad value": with_fields(n_layers=0),
    "config float field": with_fields(d_model=4.5),
    "config string field": with_fields(d_model="4"),
    "config bool field": with_fields(n_layers=True),
    "config wrong act_fn": with_fields(act_fn="tanh"),
    "config huge int": with_fields(n_layers=10**400),
    "config NaN": with_config(SMALL.to_json().replace('"d_model": 4', '"d_model": NaN')),
    "config not a str array": replace_member("__config__.npy", npy_bytes(np.zeros(3))),
    "config 2-D str array": replace_member(
        "__config__.npy", npy_bytes(np.array([[SMALL.to_json()]]))
    ),
    "config huge string": replace_member(
        "__config__.npy", npy_header("<U100000000", ()) + b"\x00" * 64
    ),
    **{f"tiny file claims {k}": with_fields(**v) for k, v in TINY_HUGE.items()},
}


def duplicate_member_zip():
    buffer = io.BytesIO()
    members = valid_members()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        with pytest.warns(UserWarning):
            archive.writestr("embed.W_E.npy", npy_bytes(np.zeros((5, 4))))
    return buffer.getvalue()


NPZ_BAD_FILES["duplicate member"] = duplicate_member_zip()


@pytest.mark.parametrize("side", ["numpy", "torch"])
@pytest.mark.parametrize("case", sorted(NPZ_BAD_FILES))
def test_a_malformed_weights_file_is_one_ValueError_naming_it(tmp_path, case, side):
    path = tmp_path / "weights.npz"
    path.write_bytes(NPZ_BAD_FILES[case])
    model_class = npi.Transformer if side == "numpy" else pti.Transformer
    start = time.perf_counter()
    with pytest.raises(ValueError, match=re.escape(repr(str(path)))):
        model_class.load(path)
    assert time.perf_counter() - start < 2.0, "the file's claims must be checked before allocating"


def test_a_valid_file_still_loads_from_either_compression(tmp_path):
    for compressed in (False, True):
        path = tmp_path / f"w{compressed}.npz"
        path.write_bytes(npz_bytes(valid_arrays(), compressed))
        for model_class in (npi.Transformer, pti.Transformer):
            model = model_class.load(path)
            assert model.cfg == SMALL


def test_a_folder_or_missing_file_is_named(tmp_path):
    for model_class in (npi.Transformer, pti.Transformer):
        with pytest.raises(FileNotFoundError, match="no weights file"):
            model_class.load(tmp_path / "missing.npz")
        with pytest.raises((FileNotFoundError, ValueError), match=re.escape(str(tmp_path))):
            model_class.load(tmp_path)


# ---------------------------------------------------------------- .safetensors: refused files


def hugging_face_style(path):
    """A .safetensors file as other programs write it: tensors, no __config__."""
    safetensors.numpy.save_file({"wte.weight": np.zeros((11, 12))}, path, metadata={"format": "pt"})


def wrong_config(path):
    tensors = npi.Transformer(CFG).state_dict()
    safetensors.numpy.save_file(tensors, path, metadata={CONFIG_KEY: '{"d_vocab": 11, "wings": 2}'})


def config_not_json(path):
    safetensors.numpy.save_file(
        npi.Transformer(CFG).state_dict(), path, metadata={CONFIG_KEY: "{not json"}
    )


def with_tensors(change):
    def write(path):
        tensors = npi.Transformer(CFG).state_dict()
        change(tensors)
        safetensors.numpy.save_file(tensors, path, metadata={CONFIG_KEY: CFG.to_json()})

    return write


def bool_tensor(path):
    with_tensors(lambda t: t.update({"embed.W_E": np.ones((11, 12), dtype=bool)}))(path)


SAFETENSORS_BAD_FILES = {
    "text": (
        lambda path: path.write_text("hello"),
        "not a readable Transformer Twins weights file",
    ),
    "a Hugging Face file": (hugging_face_style, "no __config__ in its metadata"),
    "an unknown config field": (wrong_config, "wings"),
    "a config that is not JSON": (config_not_json, "not valid JSON"),
    "a missing tensor": (with_tensors(lambda t: t.pop("blocks.1.attn.W_Q")), "blocks.1.attn.W_Q"),
    "an extra tensor": (
        with_tensors(lambda t: t.update({"blocks.9.attn.W_Q": np.zeros((3, 12, 4))})),
        "blocks.9.attn.W_Q",
    ),
    "a misshaped tensor": (
        with_tensors(lambda t: t.update({"unembed.W_U": np.zeros((12, 10))})),
        "unembed.W_U",
    ),
    "a bool tensor": (bool_tensor, "BOOL"),
}


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("case", sorted(SAFETENSORS_BAD_FILES))
def test_a_bad_file_is_one_line_naming_it(tmp_path, case, loader):
    write, says = SAFETENSORS_BAD_FILES[case]
    path = tmp_path / "bad.safetensors"
    write(path)
    with pytest.raises(ValueError) as refused:
        loader(path)
    message = str(refused.value)
    assert "\n" not in message and says in message and str(path) in message, message


def test_missing_file_and_bad_path():
    with pytest.raises(FileNotFoundError):
        load_weights("/nonexistent/w.safetensors")
    with pytest.raises(TypeError, match="path"):
        save_weights(3, {}, CFG)


# ---------------------------------------------------------------- the writer's arguments


def test_save_checks_its_arguments(tmp_path):
    with pytest.raises(TypeError, match="cfg"):
        save_weights(tmp_path / "w.npz", {}, cfg={"d_model": 3})
    with pytest.raises(TypeError, match="embed.W_E"):
        save_weights(tmp_path / "w.npz", {"embed.W_E": [1, 2]}, CFG)


# --- a weights file that is no regular file ---

from parity_tests.helpers import (  # noqa: E402  # noqa: E402
    NEEDS_SPECIAL_FILES,
    SPECIAL,
    SPECIAL_WORDS,
    special_file,
    without_hanging,
)


@NEEDS_SPECIAL_FILES
@pytest.mark.parametrize("kind", SPECIAL)
def test_a_weights_file_must_be_a_regular_file(tmp_path, kind):
    path = tmp_path / "weights.npz"
    path.touch()
    special_file(path, kind)
    error = without_hanging(lambda: load_weights(path))
    assert isinstance(error, ValueError) and SPECIAL_WORDS[kind] in str(error), repr(error)
