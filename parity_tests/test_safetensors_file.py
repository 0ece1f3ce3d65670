"""The weights file as .safetensors (chosen by the extension): the .npz file's guarantees, in that format.

Either twin reads what the other wrote, bit for bit; the config travels in the header's
metadata; saves are atomic; loads check every header against the config before reading a tensor.
"""

import json
import os

import numpy as np
import pytest
import safetensors.numpy
import torch

import numpy_impl as npi
import torch_impl as pti
from foundation.files.weights import CONFIG_KEY, load_weights, save_weights
from parity_tests.helpers import randomize

CFG = npi.TransformerConfig(d_vocab=11, d_model=12, n_heads=3, n_layers=2, n_ctx=6)
LOADERS = [npi.Transformer.load, pti.Transformer.load]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_either_twin_reads_the_others_file_bit_for_bit(tmp_path, dtype):
    cfg = npi.TransformerConfig(d_vocab=11, d_model=12, n_heads=3, n_layers=2, n_ctx=6, dtype=dtype)
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
    """One tensor per state_dict key, named as the key; the config as JSON text under __config__ in the metadata."""
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
    assert json.loads((tmp_path / "w.SafeTensors").read_bytes()[8:8 + header_size])["__metadata__"][CONFIG_KEY]
    os.rename(tmp_path / "w.npz", tmp_path / "npz_inside.safetensors")
    with pytest.raises(ValueError, match="not a readable Transformer Twins weights file"):
        load_weights(tmp_path / "npz_inside.safetensors")
    os.rename(tmp_path / "w.SafeTensors", tmp_path / "safetensors_inside.npz")
    with pytest.raises(ValueError, match="not an .npz"):
        load_weights(tmp_path / "safetensors_inside.npz")


def test_save_is_atomic(tmp_path, monkeypatch):
    """A save that fails half-way leaves the old file untouched and no temporary file behind."""
    path = tmp_path / "w.safetensors"
    npi.Transformer(CFG, seed=0).save(path)
    before = path.read_bytes()

    def broken_save(tensors, metadata=None):
        raise KeyboardInterrupt("interrupted")

    monkeypatch.setattr(safetensors.numpy, "save", broken_save)
    for model in (npi.Transformer(CFG, seed=1), pti.Transformer(CFG, seed=1)):
        with pytest.raises(KeyboardInterrupt):
            model.save(path)
        assert path.read_bytes() == before
        assert os.listdir(tmp_path) == ["w.safetensors"]


def hugging_face_style(path):
    """A .safetensors file as other programs write it: tensors, no __config__."""
    safetensors.numpy.save_file({"wte.weight": np.zeros((11, 12))}, path, metadata={"format": "pt"})


def wrong_config(path):
    tensors = npi.Transformer(CFG).state_dict()
    safetensors.numpy.save_file(tensors, path, metadata={CONFIG_KEY: '{"d_vocab": 11, "wings": 2}'})


def config_not_json(path):
    safetensors.numpy.save_file(npi.Transformer(CFG).state_dict(), path, metadata={CONFIG_KEY: "{not json"})


def with_tensors(change):
    def write(path):
        tensors = npi.Transformer(CFG).state_dict()
        change(tensors)
        safetensors.numpy.save_file(tensors, path, metadata={CONFIG_KEY: CFG.to_json()})
    return write


def bool_tensor(path):
    with_tensors(lambda t: t.update({"embed.W_E": np.ones((11, 12), dtype=bool)}))(path)


BAD_FILES = {
    "text": (lambda path: path.write_text("hello"), "not a readable Transformer Twins weights file"),
    "a Hugging Face file": (hugging_face_style, "no __config__ in its metadata"),
    "an unknown config field": (wrong_config, "wings"),
    "a config that is not JSON": (config_not_json, "not valid JSON"),
    "a missing tensor": (with_tensors(lambda t: t.pop("blocks.1.attn.W_Q")), "blocks.1.attn.W_Q"),
    "an extra tensor": (with_tensors(lambda t: t.update({"blocks.9.attn.W_Q": np.zeros((3, 12, 4))})),
                        "blocks.9.attn.W_Q"),
    "a misshaped tensor": (with_tensors(lambda t: t.update({"unembed.W_U": np.zeros((12, 10))})), "unembed.W_U"),
    "a bool tensor": (bool_tensor, "BOOL"),
}


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_bad_file_is_one_line_naming_it(tmp_path, case, loader):
    write, says = BAD_FILES[case]
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
