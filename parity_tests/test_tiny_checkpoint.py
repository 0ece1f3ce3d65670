"""``python demo.py checkpoint DIR``: a tiny random GPT-2 written offline, read by both twins and by
``transformers``. (The ``gpt2`` tour on one whose n_ctx is short: ``test_figures.py``.)"""

import json

import numpy as np
import pytest

import demo
import numpy_impl as npi
import torch_impl as pti
from foundation.files.tiny import ARCHITECTURES, write_checkpoint


def test_checkpoint_command_writes_a_folder_both_twins_read(tmp_path, capsys):
    folder = tmp_path / "tiny"
    demo.main(
        [
            "checkpoint",
            str(folder),
            "--layers",
            "3",
            "--heads",
            "2",
            "--d-model",
            "16",
            "--n-ctx",
            "40",
        ]
    )
    assert "python demo.py gpt2 --model" in capsys.readouterr().out
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json",
        "merges.txt",
        "model.safetensors",
        "vocab.json",
    ]
    model, twin = npi.Transformer.from_pretrained(folder), pti.Transformer.from_pretrained(folder)
    cfg = model.cfg
    assert (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.n_ctx, cfg.dtype) == (
        3,
        2,
        16,
        40,
        "float32",
    )
    tokens = model.to_tokens("When Mary and John went to the store")
    assert model.to_string(tokens[0]) == "<|endoftext|>When Mary and John went to the store"
    import torch

    gap = np.abs(model(tokens) - twin(torch.from_numpy(np.asarray(tokens))).detach().numpy()).max()
    assert gap <= 1e-5 * np.abs(model(tokens)).max()


def test_checkpoint_refuses_to_overwrite_and_bad_sizes(tmp_path):
    write_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="already holds a config.json"):
        write_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="divisible"):
        write_checkpoint(tmp_path / "b", d_model=10, heads=4)
    with pytest.raises(ValueError, match="arch"):
        write_checkpoint(tmp_path / "c", arch="no-such")
    assert "gpt2" in ARCHITECTURES


def test_tiny_checkpoint_reads_in_transformers(tmp_path):
    transformers = pytest.importorskip(
        "transformers", reason="transformers (the test extra) reads the folder here"
    )
    import torch

    folder = write_checkpoint(tmp_path, dtype="float64", seed=3)
    reference = transformers.GPT2LMHeadModel.from_pretrained(
        folder, attn_implementation="eager", dtype=torch.float64
    ).eval()
    model = npi.Transformer.from_pretrained(folder)
    tokens = np.random.default_rng(0).integers(0, model.cfg.d_vocab, (2, 12))
    with torch.no_grad():
        expected = reference(torch.from_numpy(tokens)).logits.numpy()
    assert np.abs(model(tokens) - expected).max() <= 1e-12 * np.abs(expected).max()
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "gpt2"
