"""The golden file: both twins reproduce the stored numbers, and a change that moves both is caught.

Parity tests compare the twins with each other; a change made on both sides at once (LayerNorm's
eps, a shared helper) keeps them in agreement and passes every parity test. The golden file
(``gradcheck/golden.npz``, made by ``python -m gradcheck.golden --write``) does not move with
the code, so the same change fails here: a test below plants such a change and require both
that the twins still agree with each other and that the golden comparison fails.
Tolerance: ``gradcheck.golden.TOLERANCE`` (1e-10 relative to each tensor's largest entry;
another machine or library version moves float64 results by about 1e-15).
"""

import json

import numpy as np
import pytest

import numpy_impl
import torch_impl
from foundation.contract.agreement import TOL
from gradcheck import golden


def worst(errors):
    return max(
        ((name, key, error) for name, keys in errors.items() for key, error in keys.items()),
        key=lambda item: item[2],
    )


@pytest.mark.parametrize("package", [numpy_impl, torch_impl], ids=["numpy", "torch"])
def test_both_twins_reproduce_the_golden_file(package):
    errors = golden.compare(package)
    assert set(errors) == set(golden.CONFIGS)
    for name, keys in errors.items():
        assert any(key.startswith("act_grad/") for key in keys) and any(
            key.startswith("grad/") for key in keys
        )
        for key, error in keys.items():
            assert error <= golden.TOLERANCE, (
                f"{package.__name__} [{name}] {key}: {error:.1e} > {golden.TOLERANCE:g}"
            )


def test_the_golden_file_is_small_and_says_what_made_it():
    assert golden.GOLDEN.stat().st_size < 1_000_000
    meta, configs = golden.load()
    assert meta["made_by"].startswith("python -m gradcheck.golden --write")
    assert meta["seed"] == golden.SEED and meta["versions"]["numpy"] and meta["versions"]["torch"]
    for name, stored in configs.items():
        assert stored["input/dout"].dtype == np.float64 and stored["output"].dtype == np.float64
        assert len(np.unique(stored["input/dout"])) > 1, (
            "a random upstream gradient, never all ones"
        )
        assert json.dumps(meta["configs"][name])


def test_a_change_that_moves_both_twins_fails_the_golden_file(monkeypatch):
    for package in (numpy_impl, torch_impl):  # LayerNorm's eps, changed on both sides
        monkeypatch.setattr(package.layernorm, "EPS", 1e-3)
    # the twins still agree with each other: a parity test would pass
    _, configs = golden.load()
    stored = configs["pre"]
    weights = {key[len("weight/") :]: v for key, v in stored.items() if key.startswith("weight/")}
    cfg = golden.config("pre")
    mine = golden.run(numpy_impl, cfg, weights, stored["input/tokens"], stored["input/dout"])
    theirs = golden.run(torch_impl, cfg, weights, stored["input/tokens"], stored["input/dout"])
    largest = max(np.abs(v).max() for key, v in theirs.items() if key.startswith("grad/"))
    for key in mine:
        scale = largest if key.endswith("b_K") else None
        assert golden.tensor_error(mine[key], theirs[key], scale) <= 1e3 * TOL["float64"], key
    # the golden file does not move with them
    for package in (numpy_impl, torch_impl):
        _, _, error = worst(golden.compare(package))
        assert error > 1e3 * golden.TOLERANCE, (
            f"{package.__name__}: the planted change went unnoticed"
        )


def test_regenerating_is_deliberate(tmp_path):
    path = tmp_path / "golden.npz"
    path.write_bytes(b"someone's file")
    with pytest.raises(FileExistsError, match="--force"):
        golden.write(path)
    assert path.read_bytes() == b"someone's file"
    golden.write(path, force=True)
    meta, configs = golden.load(path)
    committed_meta, committed = golden.load()
    assert set(configs) == set(committed) and meta["configs"] == committed_meta["configs"]
    assert golden.main(["--path", str(path)]) == 0
    assert golden.main(["--write", "--path", str(path)]) == 2, "the command refuses too"


def test_a_missing_golden_file_says_how_to_make_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="--write"):
        golden.load(tmp_path / "nowhere.npz")
