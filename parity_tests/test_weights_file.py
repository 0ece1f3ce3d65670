"""The weights file: either twin reads what the other wrote, bit for bit; saves are atomic; loads never unpickle."""

import os
import zipfile

import numpy as np
import pytest
import torch

import numpy_impl as npi
import torch_impl as pti
from foundation.files.weights import load_weights, save_weights
from parity_tests.helpers import randomize

CFG = npi.TransformerConfig(d_vocab=11, d_model=12, n_heads=3, n_layers=2, n_ctx=6)


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
    cfg = npi.TransformerConfig(d_vocab=11, d_model=12, n_heads=3, n_layers=2, n_ctx=6, dtype=dtype)
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


def test_save_is_atomic(tmp_path, monkeypatch):
    """A save that fails half-way leaves the old file untouched and no temporary file behind."""
    model = npi.Transformer(CFG, seed=0)
    path = tmp_path / "w.npz"
    model.save(path)
    before = path.read_bytes()

    def broken_savez(f, **arrays):
        f.write(b"half a file")
        raise KeyboardInterrupt("interrupted")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(KeyboardInterrupt):
        npi.Transformer(CFG, seed=1).save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["w.npz"]


def test_load_never_unpickles(tmp_path):
    """An object array (which needs pickle) is refused, not executed."""
    path = tmp_path / "evil.npz"
    np.savez(path, **{"__config__": np.array(CFG.to_json()), "embed.W_E": np.array([object()], dtype=object)})
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
    cases = [(missing, "blocks.1.attn.W_Q"), (extra, "blocks.9.attn.W_Q"), (misshaped, "unembed.W_U")]
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


def test_save_into_a_missing_folder_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        npi.Transformer(CFG).save(tmp_path / "no" / "such" / "w.npz")


def test_save_checks_its_arguments(tmp_path):
    with pytest.raises(TypeError, match="cfg"):
        save_weights(tmp_path / "w.npz", {}, cfg={"d_model": 3})
    with pytest.raises(TypeError, match="embed.W_E"):
        save_weights(tmp_path / "w.npz", {"embed.W_E": [1, 2]}, CFG)
