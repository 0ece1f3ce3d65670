"""Hostile cases, by class: saving never destroys, the twins take the same files, nothing is converted unchecked.

1. saving: a symlink is written through to its target (still by a rename), a read-only file
   and anything that is not a regular file are refused before anything is written;
2. the twins take the same state dicts and files: what one accepts the other accepts with the
   same values; what one refuses both refuse with the same one-line message naming the key
   (and the file);
3. nothing is converted before it is checked: token lists, hook results;
4. the torch twin's own doors: dtype moves refused before anything moves; ``strict=False`` and
   ``assign=True`` keep the checks;
5. helpers and the command line: ``logit_attrs``'s tokens, loss weights, ``generate``'s
   temperature, plot paths, Ctrl-C while the checker's worker starts;
6. special files and sizes: every reader of a file the user names (``from_pretrained``'s
   config and tokenizer files, weights files, ``read --exercises``) takes only a regular file,
   bounded, checks a config against the weights before building anything, and turns deep
   nesting and bytes that are not UTF-8 into one line;
7. nothing left behind: SIGTERM during a save, bytes paths, ``generate``'s penalties, the
   command line's prompt and folder arguments, the seeds both twins take; a vocabulary that
   cannot spell a text refuses it.

The exercise checker's sandbox is in ``test_exercise_sandbox.py``.

Earlier rounds are in ``test_hardening.py`` and ``test_bad_input.py``.
"""

import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
import types
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

import numpy_impl as npi
import torch_impl as pti
import foundation.files.weights
from foundation.files.weights import load_weights, save_weights
from parity_tests.helpers import load_into_twin, randomize, rel_err

PROJECT = Path(__file__).resolve().parent.parent
SIDES = ["numpy", "torch"]
SMALL = npi.TransformerConfig(d_vocab=5, d_model=4, n_heads=2, n_layers=1, n_ctx=3, d_mlp=4)
CFG = npi.TransformerConfig(d_vocab=11, d_model=12, n_heads=3, n_layers=2, n_ctx=6)
CFG32 = npi.TransformerConfig(**{**CFG.to_dict(), "dtype": "float32"})
TOKENS = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])


def package(side):
    return npi if side == "numpy" else pti


def saved_by(side, seed, path):
    """Save a model of SMALL from ``side`` to ``path``; return its W_E (what a later load must find)."""
    model = package(side).Transformer(SMALL, seed=seed)
    model.save(path)
    return np.array(model.state_dict()["embed.W_E"], dtype=np.float64) if side == "numpy" else \
        model.state_dict()["embed.W_E"].numpy().astype(np.float64)


def stored_W_E(path):
    return load_weights(path)[1]["embed.W_E"]


def outcome(fn):
    """("accepted", result) or (exception type name, message)."""
    try:
        return "accepted", fn()
    except (TypeError, ValueError, OSError, RuntimeError, NotImplementedError) as error:
        return type(error).__name__, str(error)


def twins(cfg=CFG, seed=0):
    np_model = npi.Transformer(cfg, seed=seed)
    randomize(np_model, seed=seed)
    torch_model = pti.Transformer(cfg)
    load_into_twin(np_model, torch_model)
    return np_model, torch_model


def as_float64(x):
    """A float64 copy of an ndarray or a tensor."""
    return x.detach().cpu().numpy().astype(np.float64) if hasattr(x, "detach") else np.array(x, dtype=np.float64)


def state_of(model):
    return {name: as_float64(value) for name, value in model.state_dict().items()}


# ---------------------------------------------------------------- 1. saving never destroys

@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("how", ["absolute", "relative", "a chain of two"])
def test_saving_through_a_symlink_writes_its_target_by_a_rename(tmp_path, side, how):
    runs = tmp_path / "runs"
    runs.mkdir()
    target = runs / "run7.npz"
    saved_by("numpy", 1, target)
    os.chmod(target, 0o640)
    link = tmp_path / "latest.npz"
    if how == "absolute":
        link.symlink_to(target)
    elif how == "relative":
        link.symlink_to(os.path.join("runs", "run7.npz"))
    else:
        (tmp_path / "middle.npz").symlink_to(target)
        link.symlink_to("middle.npz")
    pointed = os.readlink(link)
    inode = os.stat(target).st_ino
    expected = saved_by(side, 2, link)
    assert link.is_symlink() and os.readlink(link) == pointed, "the link stays a link, pointing where it did"
    assert os.stat(target).st_ino != inode, "the target is replaced by a rename (atomic), not rewritten in place"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o640, "the target keeps its mode"
    assert rel_err(stored_W_E(target), expected) == 0
    assert sorted(os.listdir(runs)) == ["run7.npz"], "no temporary file left behind"


@pytest.mark.parametrize("side", SIDES)
def test_saving_through_a_dangling_symlink_creates_its_target(tmp_path, side):
    link = tmp_path / "latest.npz"
    link.symlink_to("run8.npz")
    expected = saved_by(side, 2, link)
    assert link.is_symlink() and os.readlink(link) == "run8.npz"
    assert (tmp_path / "run8.npz").is_file() and not (tmp_path / "run8.npz").is_symlink()
    assert rel_err(stored_W_E(link), expected) == 0


@pytest.mark.parametrize("side", SIDES)
def test_a_dangling_symlink_into_a_missing_folder_is_refused(tmp_path, side):
    link = tmp_path / "latest.npz"
    link.symlink_to(os.path.join("no", "such", "run.npz"))
    with pytest.raises(FileNotFoundError, match=re.escape(repr(str(link)))) as raised:
        saved_by(side, 2, link)
    assert "\n" not in str(raised.value)
    assert sorted(os.listdir(tmp_path)) == ["latest.npz"] and link.is_symlink()


@pytest.mark.parametrize("side", SIDES)
def test_a_symlink_loop_is_refused(tmp_path, side):
    (tmp_path / "a.npz").symlink_to("b.npz")
    (tmp_path / "b.npz").symlink_to("a.npz")
    with pytest.raises(ValueError, match="loop") as raised:
        saved_by(side, 2, tmp_path / "a.npz")
    assert "\n" not in str(raised.value)
    assert sorted(os.listdir(tmp_path)) == ["a.npz", "b.npz"]
    assert (tmp_path / "a.npz").is_symlink() and (tmp_path / "b.npz").is_symlink()


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("mode", [0o444, 0o400, 0o555, 0o044])
@pytest.mark.parametrize("through_a_link", [False, True], ids=["direct", "through a symlink"])
def test_a_read_only_file_is_refused_even_for_root(tmp_path, side, mode, through_a_link):
    """Root may write any file; a file nobody may write is still refused (np.savez refuses it for others)."""
    path = tmp_path / "w.npz"
    old = saved_by("numpy", 1, path)
    os.chmod(path, mode)
    before = path.read_bytes()
    target = path
    if through_a_link:
        target = tmp_path / "latest.npz"
        target.symlink_to("w.npz")
    try:
        with pytest.raises(PermissionError, match=re.escape(repr(str(target)))) as raised:
            saved_by(side, 2, target)
        assert "read-only" in str(raised.value) and "\n" not in str(raised.value)
        assert path.read_bytes() == before and stat.S_IMODE(os.stat(path).st_mode) == mode
        assert sorted(os.listdir(tmp_path)) == sorted(["w.npz"] + (["latest.npz"] if through_a_link else []))
    finally:
        os.chmod(path, 0o644)
    assert rel_err(stored_W_E(path), old) == 0


def make_fifo(path):
    os.mkfifo(path)


def make_folder(path):
    os.mkdir(path)


def make_socket(path):
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    return server  # kept open by the caller until the test ends


def make_character_device(path):
    """A twin of /dev/null (character device 1, 3) inside the test's folder, never the real one."""
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except (PermissionError, OSError) as error:
        pytest.skip(f"cannot make a device node here ({error.strerror})")


SPECIAL_FILES = {"a FIFO": make_fifo, "a folder": make_folder, "a socket": make_socket,
                 "a character device": make_character_device}


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("kind", sorted(SPECIAL_FILES))
@pytest.mark.parametrize("through_a_link", [False, True], ids=["direct", "through a symlink"])
def test_what_is_not_a_regular_file_is_refused_before_anything_is_written(tmp_path, side, kind, through_a_link):
    folder = Path(os.path.relpath(tmp_path))  # a short path: a socket's name has a length limit
    path = folder / "w.npz"
    keep = SPECIAL_FILES[kind](path)
    target = path
    if through_a_link:
        target = folder / "latest.npz"
        target.symlink_to("w.npz")
    before = os.lstat(path)
    try:
        with pytest.raises(ValueError, match=re.escape(repr(str(target)))) as raised:
            saved_by(side, 2, target)
        assert "not a regular file" in str(raised.value) and "\n" not in str(raised.value)
        after = os.lstat(path)
        assert (after.st_mode, after.st_ino, after.st_rdev) == (before.st_mode, before.st_ino, before.st_rdev)
        assert sorted(os.listdir(folder)) == sorted(["w.npz"] + (["latest.npz"] if through_a_link else []))
    finally:
        if keep is not None:
            keep.close()


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("path", ["", "new/", "new" + os.sep + os.sep], ids=["empty", "trailing slash", "two slashes"])
def test_a_path_that_names_no_file_is_refused(tmp_path, monkeypatch, side, path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="path") as raised:
        saved_by(side, 2, path)
    assert "\n" not in str(raised.value)
    assert os.listdir(tmp_path) == []


def test_saving_over_a_hard_linked_file_leaves_the_other_name_whole(tmp_path):
    path, other = tmp_path / "w.npz", tmp_path / "backup.npz"
    old = saved_by("numpy", 1, path)
    os.link(path, other)
    new = saved_by("torch", 2, path)
    assert rel_err(stored_W_E(other), old) == 0, "the other name still holds the old weights, whole"
    assert rel_err(stored_W_E(path), new) == 0


@pytest.mark.parametrize("side", SIDES)
def test_a_save_that_fails_on_the_disk_names_the_path_and_keeps_the_old_file(tmp_path, monkeypatch, side):
    path = tmp_path / "w.npz"
    old = saved_by("numpy", 1, path)

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match=re.escape(repr(str(path))) + ".*No space left") as raised:
        saved_by(side, 2, path)
    monkeypatch.undo()
    assert "\n" not in str(raised.value)
    assert sorted(os.listdir(tmp_path)) == ["w.npz"] and rel_err(stored_W_E(path), old) == 0


def test_the_writer_refuses_for_any_format(tmp_path):
    """The rules live in the one writer every format goes through (npz here; any callback the same way)."""
    fifo = tmp_path / "w.safetensors"
    os.mkfifo(fifo)
    written = []
    with pytest.raises(ValueError, match="not a regular file"):
        foundation.files.weights.write_atomically(fifo, lambda f: written.append(f.write(b"data")))
    assert written == [] and stat.S_ISFIFO(os.lstat(fifo).st_mode)
    plain = tmp_path / "w.bin"
    foundation.files.weights.write_atomically(plain, lambda f: f.write(b"data"))
    assert plain.read_bytes() == b"data"
    with pytest.raises(TypeError, match="cfg"):
        save_weights(tmp_path / "x.npz", {}, cfg=None)


# ---------------------------------------------------------------- 2. the twins take the same state dicts and files

KEY = "blocks.0.mlp.W_in"  # [d_model, d_mlp] = [12, 48]


def _masked(v, mask_something=True):
    return np.ma.masked_array(v, mask=np.abs(v) > 0.5 if mask_something else False)


def _quantized(v, scale=0.01, dtype=torch.qint32):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # quantized tensors are deprecated: torch says so
        return torch.quantize_per_tensor(torch.from_numpy(np.asarray(v, dtype=np.float32)), scale, 0, dtype)


def _longdouble_too_large(v):
    big = v.astype(np.longdouble)
    big[0, 0] = np.longdouble(10) ** 400
    return big


def _too_large_for_float32(v):
    big = v.astype(">f8")
    big[0, 0] = 1e300
    return big


def _read_only(v):
    v = v.copy()
    v.flags.writeable = False
    return v


def _matrix(v):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        return np.asmatrix(v)


# name -> (make the value for KEY from the reference's float64 value, "accept" or "refuse")
VALUES = {
    "big-endian >f8": (lambda v: v.astype(">f8"), "accept"),
    "big-endian >f4": (lambda v: v.astype(">f4"), "accept"),
    "big-endian >i8": (lambda v: np.round(v * 100).astype(">i8"), "accept"),
    "longdouble": (lambda v: v.astype(np.longdouble) / 3, "accept"),
    "with inf and NaN": (lambda v: np.where(v > 1, np.inf, np.where(v < -1, np.nan, v)), "accept"),
    "longdouble too large for float64": (_longdouble_too_large, "refuse"),
    "float16 ndarray": (lambda v: v.astype(np.float16), "accept"),
    "float16 tensor": (lambda v: torch.from_numpy(v).half(), "accept"),
    "bfloat16 tensor": (lambda v: torch.from_numpy(v).bfloat16(), "accept"),
    "float8 tensor": (lambda v: torch.from_numpy(v).to(torch.float8_e4m3fn), "accept"),
    "a Parameter (requires grad)": (lambda v: torch.nn.Parameter(torch.from_numpy(v.copy())), "accept"),
    "non-contiguous tensor": (lambda v: torch.from_numpy(v.T.copy()).T, "accept"),
    "negative strides": (lambda v: v[::-1, ::-1].copy()[::-1, ::-1], "accept"),
    "fortran order": (np.asfortranarray, "accept"),
    "read-only ndarray": (_read_only, "accept"),
    "np.matrix": (_matrix, "accept"),
    "uint64 ndarray": (lambda v: np.round(np.abs(v) * 100).astype(np.uint64), "accept"),
    "uint8 tensor": (lambda v: torch.from_numpy(np.round(np.abs(v) * 10).astype(np.uint8)), "accept"),
    "meta tensor": (lambda v: torch.empty(v.shape, device="meta", dtype=torch.float64), "refuse"),
    "sparse tensor": (lambda v: torch.from_numpy(v).to_sparse(), "refuse"),
    "quantized tensor": (_quantized, "refuse"),
    "masked array": (_masked, "refuse"),
    "masked array, nothing masked": (lambda v: _masked(v, False), "refuse"),
    "bool ndarray": (lambda v: v > 0, "refuse"),
    "bool tensor": (lambda v: torch.from_numpy(v > 0), "refuse"),
    "complex ndarray": (lambda v: v.astype(complex), "refuse"),
    "complex tensor": (lambda v: torch.from_numpy(v.astype(complex)), "refuse"),
    "object ndarray": (lambda v: v.astype(object), "refuse"),
    "str ndarray": (lambda v: v.astype(str), "refuse"),
    "datetime ndarray": (lambda v: np.zeros(v.shape, dtype="datetime64[s]"), "refuse"),
    "a nested list": (lambda v: v.tolist(), "refuse"),
    "None": (lambda v: None, "refuse"),
    "a float": (lambda v: 1.0, "refuse"),
    "a wrong shape": (lambda v: v[:, :3], "refuse"),
    "transposed": (lambda v: v.T, "refuse"),
    "a wrong-shape tensor": (lambda v: torch.from_numpy(v[:3]), "refuse"),
}


def expected_values(value):
    """What loading ``value`` must give, computed with the libraries' own conversions."""
    if isinstance(value, torch.Tensor):
        return value.detach().to(torch.float64).numpy()
    return np.asarray(value).astype(np.float64)


def load_both(cfg, state_dict, **kwargs):
    """Load ``state_dict`` into fresh twins of ``cfg``: (numpy outcome, torch outcome, the two models, their state before)."""
    np_model, torch_model = npi.Transformer(cfg, seed=7), pti.Transformer(cfg, seed=8)
    before = (state_of(np_model), state_of(torch_model))
    results = [outcome(lambda: model.load_state_dict(state_dict, **kwargs)) for model in (np_model, torch_model)]
    return results, (np_model, torch_model), before


def assert_same_refusal(results, models, before, *names):
    (np_kind, np_message), (torch_kind, torch_message) = results
    assert np_kind in ("TypeError", "ValueError"), np_message
    assert (torch_kind, torch_message) == (np_kind, np_message), "both twins refuse with the same message"
    assert "\n" not in np_message
    for name in names:
        assert name in np_message, (name, np_message)
    for model, state in zip(models, before):
        assert all(np.array_equal(state_of(model)[k], v) for k, v in state.items()), "nothing was loaded"


@pytest.mark.parametrize("cfg", [CFG, CFG32], ids=["float64 model", "float32 model"])
@pytest.mark.parametrize("case", sorted(VALUES))
def test_the_twins_take_and_refuse_the_same_state_dict_values(case, cfg):
    reference = npi.Transformer(cfg, seed=3)
    randomize(reference, seed=3)
    state = {name: np.asarray(value, dtype=np.float64) for name, value in reference.state_dict().items()}
    make, verdict = VALUES[case]
    value = make(state[KEY])
    results, models, before = load_both(cfg, {**state, KEY: value})
    if verdict == "refuse":
        assert_same_refusal(results, models, before, KEY)
        return
    assert [kind for kind, _ in results] == ["accepted", "accepted"], results
    expected = {**state, KEY: expected_values(value)}
    for model in models:
        loaded = state_of(model)
        for name, values in expected.items():
            assert np.array_equal(loaded[name], values.astype(cfg.dtype), equal_nan=True), name
            assert model.state_dict()[name].dtype == (np.dtype(cfg.dtype) if model is models[0] else
                                                     getattr(torch, cfg.dtype))


@pytest.mark.parametrize("side", SIDES)
def test_values_too_large_for_a_float32_model_are_refused_by_both(side):
    cfg = CFG32
    state = {name: np.asarray(v, dtype=np.float64) for name, v in npi.Transformer(cfg).state_dict().items()}
    results, models, before = load_both(cfg, {**state, KEY: _too_large_for_float32(state[KEY])})
    assert_same_refusal(results, models, before, KEY, "float32")


def test_the_twins_take_the_same_kinds_of_state_dict():
    reference = npi.Transformer(CFG, seed=3)
    randomize(reference, seed=3)
    state = reference.state_dict()
    for kind in (types.MappingProxyType(state), dict(state), reference.state_dict()):
        results, models, _ = load_both(CFG, kind)
        assert [k for k, _ in results] == ["accepted", "accepted"], results
        for model in models:
            assert all(np.array_equal(state_of(model)[k], v) for k, v in state.items())
    for bad, names in ((dict(state, **{"0": state[KEY]}), ["unexpected keys: 0"]),
                       ({**state, 0: state[KEY]}, ["keys must be str", "0"]),
                       ([(k, v) for k, v in state.items()], ["state_dict must be a dict"]),
                       (None, ["state_dict must be a dict"])):
        results, models, before = load_both(CFG, bad)
        assert_same_refusal(results, models, before, *names)


def write_npz(path, cfg, arrays):
    np.savez(path, __config__=np.array(cfg.to_json()), **arrays)


# name -> (make every array of the file from the reference's float64 arrays, config, "accept" or "refuse")
FILES = {
    "every array big-endian >f8": (lambda a: {k: v.astype(">f8") for k, v in a.items()}, CFG, "accept"),
    "every array big-endian >f4": (lambda a: {k: v.astype(">f4") for k, v in a.items()}, CFG, "accept"),
    "every array longdouble": (lambda a: {k: v.astype(np.longdouble) / 3 for k, v in a.items()}, CFG, "accept"),
    "every array float16": (lambda a: {k: v.astype(np.float16) for k, v in a.items()}, CFG, "accept"),
    "one array int16": (lambda a: {**a, KEY: np.round(a[KEY] * 100).astype(np.int16)}, CFG, "accept"),
    "float64 arrays, float32 config": (lambda a: a, CFG32, "accept"),
    "1e300 in a float32 config's file": (lambda a: {**a, KEY: _too_large_for_float32(a[KEY])}, CFG32, "refuse"),
    "longdouble 1e400 in a float64 file": (lambda a: {**a, KEY: _longdouble_too_large(a[KEY])}, CFG, "refuse"),
}


@pytest.mark.parametrize("case", sorted(FILES))
def test_the_twins_take_and_refuse_the_same_files(tmp_path, case):
    make, cfg, verdict = FILES[case]
    reference = npi.Transformer(CFG, seed=3)
    randomize(reference, seed=3)
    arrays = make({k: np.asarray(v, dtype=np.float64) for k, v in reference.state_dict().items()})
    path = tmp_path / "w.npz"
    write_npz(path, cfg, arrays)
    results = [outcome(lambda: side.Transformer.load(path)) for side in (npi, pti)]
    if verdict == "refuse":
        (np_kind, np_message), (torch_kind, torch_message) = results
        assert np_kind == "ValueError" and (torch_kind, torch_message) == (np_kind, np_message)
        assert repr(str(path)) in np_message and KEY in np_message and "\n" not in np_message
        return
    assert [kind for kind, _ in results] == ["accepted", "accepted"], results
    for _, model in results:
        assert model.cfg == cfg
        for name, values in arrays.items():
            assert np.array_equal(state_of(model)[name], np.asarray(values).astype(np.float64).astype(cfg.dtype)), name


@pytest.mark.parametrize("side", SIDES)
def test_strict_false_loads_what_is_there_and_still_checks_it(side):
    cfg = CFG32
    model = package(side).Transformer(cfg, seed=1)
    before = state_of(model)
    value = np.random.default_rng(0).standard_normal((12, 48))  # float64, for a float32 model
    result = model.load_state_dict({KEY: value, "extra.key": np.zeros(3)}, strict=False)
    assert sorted(result.missing_keys) == sorted(k for k in before if k != KEY)
    assert list(result.unexpected_keys) == ["extra.key"]
    after = state_of(model)
    assert np.array_equal(after[KEY], value.astype(np.float32))
    assert all(np.array_equal(after[k], v) for k, v in before.items() if k != KEY)
    assert model.state_dict()[KEY].dtype in (np.float32, torch.float32)
    for bad, words in ((_too_large_for_float32(value), [KEY, "float32"]), (value[:3], [KEY, "shape"]),
                       (torch.empty(12, 48, device="meta"), [KEY, "meta"]), (_masked(value), [KEY, "masked"])):
        kind, message = outcome(lambda: model.load_state_dict({KEY: bad}, strict=False))
        assert kind in ("TypeError", "ValueError") and all(w in message for w in words), (kind, message)
        assert np.array_equal(state_of(model)[KEY], value.astype(np.float32)), "nothing was loaded"


def test_strict_false_gives_the_same_result_in_both_twins():
    state = {KEY: np.random.default_rng(0).standard_normal((12, 48)), "extra.key": np.zeros(3)}
    results, models, _ = load_both(CFG, state, strict=False)
    (np_kind, np_result), (torch_kind, torch_result) = results
    assert np_kind == torch_kind == "accepted"
    assert (sorted(np_result.missing_keys), list(np_result.unexpected_keys)) == \
        (sorted(torch_result.missing_keys), list(torch_result.unexpected_keys))
    assert np.array_equal(state_of(models[0])[KEY], state_of(models[1])[KEY])


def test_assign_keeps_the_models_dtype_and_takes_a_copy():
    """assign=True: the new parameters hold the values cast to the model's dtype, never the caller's arrays."""
    np_model, _ = twins(CFG32)
    twin = pti.Transformer(CFG32, seed=5)
    state = {name: np.asarray(value, dtype=np.float64) for name, value in np_model.state_dict().items()}
    twin.load_state_dict(state, assign=True)
    assert {p.dtype for p in twin.parameters()} == {torch.float32} and twin.cfg.dtype == "float32"
    assert all(p.requires_grad for p in twin.parameters())
    state[KEY][...] = 0  # the caller's array changes afterwards: the model must not
    out = twin(TOKENS)
    assert out.dtype == torch.float32
    assert rel_err(out, np_model(TOKENS)) <= 1e-5  # float32 parity, as the parity tests state it
    float32_state = {name: torch.from_numpy(np.asarray(v)) for name, v in np_model.state_dict().items()}
    twin.load_state_dict(float32_state, assign=True)
    float32_state[KEY][...] = 0
    assert rel_err(twin(TOKENS), np_model(TOKENS)) <= 1e-5


# ---------------------------------------------------------------- 3. nothing converted before it is checked

TOKEN_LISTS_BAD = {
    "[[1, True, 2]]": lambda: [[1, True, 2]],
    "[[np.True_, 1]]": lambda: [[np.True_, 1]],
    "a tuple with False": lambda: [(1, False)],
    "a list of bool arrays": lambda: [np.array([True, False])],
    "a list of bool tensors": lambda: [torch.tensor([True, False])],
    "[[1, 2.0]]": lambda: [[1, 2.0]],
    "[[1, np.float64(2)]]": lambda: [[1, np.float64(2)]],
    "a list of float arrays": lambda: [np.array([1.0, 2.0])],
    "[[1, None]]": lambda: [[1, None]],
    "[[1, '2']]": lambda: [[1, "2"]],
    "[[1, 1j]]": lambda: [[1, 1j]],
    "[[1, Fraction(2)]]": lambda: [[1, Fraction(2)]],
    "[[2**70, 1]]": lambda: [[2**70, 1]],
    "[[-2**70, 1]]": lambda: [[-(2**70), 1]],
    "a uint64 id too large": lambda: [[np.uint64(2**63 + 5), 1]],
    "[[1, [2]]]": lambda: [[1, [2]]],
    "ragged": lambda: [[1, 2], [3]],
    "nested 100 deep": lambda: _nested(100),
    "a 0-d bool tensor": lambda: [[torch.tensor(True), 1]],
    "a 0-d float array": lambda: [[np.array(1.0), 1]],
    "a 0-d meta tensor": lambda: [[torch.tensor(1, device="meta"), 1]],
}


def _nested(depth):
    x = [1, 2]
    for _ in range(depth):
        x = [x]
    return x


@pytest.mark.parametrize("case", sorted(TOKEN_LISTS_BAD))
def test_token_lists_are_checked_before_they_are_converted(case):
    np_model, torch_model = twins()
    results = [outcome(lambda: model(TOKEN_LISTS_BAD[case]())) for model in (np_model, torch_model)]
    results += [outcome(lambda: model.run_with_cache(TOKEN_LISTS_BAD[case]())) for model in (np_model, torch_model)]
    results += [outcome(lambda: model.generate(TOKEN_LISTS_BAD[case](), max_new_tokens=1))
                for model in (np_model, torch_model)]
    kinds = {kind for kind, _ in results}
    assert len(kinds) == 1 and kinds <= {"TypeError", "ValueError"}, results
    assert all("tokens" in message for _, message in results), results
    if "True" in case or "bool" in case or "False" in case:
        assert all("bool" in message for _, message in results), results


TOKEN_LISTS_GOOD = {
    "NumPy ints with a uint64": lambda: [[np.int64(1), np.uint64(2), 3, np.uint8(4)], [5, 6, np.int8(7), 8]],
    "uint64 only": lambda: [[np.uint64(t) for t in row] for row in TOKENS.tolist()],
    "a list of int arrays": lambda: [row for row in TOKENS],
    "a list of uint64 arrays": lambda: [row.astype(np.uint64) for row in TOKENS],
    "a list of int tensors": lambda: [torch.from_numpy(row) for row in TOKENS],
    "a tuple of tuples": lambda: tuple(tuple(row) for row in TOKENS.tolist()),
    "0-d int tensors and arrays": lambda: [[torch.tensor(t) if t % 2 else np.array(t) for t in row] for row in TOKENS],
}


@pytest.mark.parametrize("case", sorted(TOKEN_LISTS_GOOD))
def test_token_lists_of_any_integer_kind_are_ids(case):
    np_model, torch_model = twins()
    expected = np_model(TOKENS)
    assert rel_err(np_model(TOKEN_LISTS_GOOD[case]()), expected) == 0
    assert rel_err(torch_model(TOKEN_LISTS_GOOD[case]()), expected) <= 1e-12


def _meta_tokens():
    return torch.tensor([[1, 2]], device="meta")


def _sparse_csr(rows):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # sparse CSR is in beta: torch says so
        return torch.tensor(rows).to_sparse_csr()


def _nested_tokens():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # nested tensors are a prototype: torch says so
        return torch.nested.nested_tensor([torch.tensor([1, 2]), torch.tensor([3])])


TORCH_TOKENS_BAD = {
    "sparse": lambda: torch.tensor([[1, 0, 2]]).to_sparse(),
    "sparse csr": lambda: _sparse_csr([[1, 0, 2]]),
    "meta": _meta_tokens,
    "nested": _nested_tokens,
    "quantized": lambda: _quantized([[1.0, 2.0]], 1.0, torch.quint8),
}


@pytest.mark.parametrize("case", sorted(TORCH_TOKENS_BAD))
def test_unusual_token_tensors_are_refused_naming_the_argument(case):
    np_model, torch_model = twins()
    for call in (lambda: torch_model(TORCH_TOKENS_BAD[case]()),
                 lambda: torch_model.run_with_cache(TORCH_TOKENS_BAD[case]()),
                 lambda: torch_model.generate(TORCH_TOKENS_BAD[case](), max_new_tokens=1),
                 lambda: pti.TokenEmbedding(CFG)(TORCH_TOKENS_BAD[case]()),
                 lambda: np_model(TORCH_TOKENS_BAD[case]())):
        kind, message = outcome(call)
        assert kind in ("TypeError", "ValueError") and "tokens" in message and "\n" not in message, (kind, message)


def _np(x):
    return x.detach().numpy() if hasattr(x, "detach") else x


def _as_tensor(x):
    return x if hasattr(x, "detach") else torch.from_numpy(x)


SCALE = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)  # a leaf that requires grad (a steering scale)

HOOK_RESULTS_BAD = {  # name -> (the hook's result from its argument, words of the refusal, directions)
    "a masked array": (lambda x: np.ma.masked_array(_np(x).copy(), mask=_np(x) > 0), "masked", ["fwd", "bwd"]),
    "a masked array, nothing masked": (lambda x: np.ma.masked_array(_np(x).copy()), "masked", ["fwd", "bwd"]),
    "a tensor that requires grad": (lambda x: torch.tensor(_np(x) * 0.5, requires_grad=True), "requires grad",
                                    ["fwd"]),
    "a tensor computed from a parameter": (lambda x: _as_tensor(x) * SCALE, "requires grad", ["fwd"]),
}
HOOK_CASES = [(case, direction) for case, (_, _, directions) in sorted(HOOK_RESULTS_BAD.items())
              for direction in directions]


@pytest.mark.parametrize("case, direction", HOOK_CASES, ids=[f"{d}-{c}" for c, d in HOOK_CASES])
def test_hook_results_that_would_be_read_wrongly_are_refused(case, direction):
    """A forward hook's result is a constant: one that requires grad would lose its gradient without a word."""
    make, words, _ = HOOK_RESULTS_BAD[case]
    kinds = []
    for model in twins():
        hooks = [("blocks.0.hook_resid_mid", lambda x, hook: make(x))]
        kind, message = outcome(lambda: model.run_with_hooks(
            TOKENS, dout=np.random.default_rng(1).standard_normal((2, 4, 11)),
            **({"fwd_hooks": hooks} if direction == "fwd" else {"bwd_hooks": hooks})))
        assert kind in ("TypeError", "ValueError"), (kind, message)
        assert "blocks.0.hook_resid_mid" in message and words in message and "\n" not in message, message
        kinds.append(kind)
    assert kinds[0] == kinds[1]


def test_backward_hooks_may_return_tensors_that_require_grad():
    """A backward hook's result is the gradient from there on (torch computes it with grad off): both twins use its values."""
    np_model, torch_model = twins()
    dout = np.random.default_rng(1).standard_normal((2, 4, 11))
    np_model.zero_grad()
    np_model.run_with_hooks(TOKENS, dout=dout)
    plain = {name: as_float64(p.grad) for name, p in np_model.named_parameters()}
    results = []
    for model in (np_model, torch_model):
        model.zero_grad()
        model.run_with_hooks(TOKENS, bwd_hooks=[("blocks.0.hook_resid_mid", lambda g, hook: _as_tensor(g) * SCALE)],
                             dout=dout)
        results.append({name: as_float64(p.grad) for name, p in model.named_parameters()})
    largest = max(np.abs(g).max() for g in results[0].values())
    for name in results[0]:
        assert rel_err(results[0][name], results[1][name], scale=largest) <= 1e-12, name
    assert rel_err(results[0]["embed.W_E"], 0.5 * plain["embed.W_E"]) <= 1e-12, "the hook's halving reached W_E"
    assert rel_err(results[0]["unembed.W_U"], plain["unembed.W_U"]) <= 1e-12, "above the hook: untouched"


def _masked_like(shape, mask_something=True):
    values = np.random.default_rng(2).standard_normal(shape)
    return np.ma.masked_array(values, mask=values > 0 if mask_something else False)


DOUT_BAD = {
    "a masked array": lambda: _masked_like((2, 4, 11)),
    "a masked array, nothing masked": lambda: _masked_like((2, 4, 11), False),
    "a meta tensor": lambda: torch.empty(2, 4, 11, dtype=torch.float64, device="meta"),
    "a sparse tensor": lambda: torch.zeros(2, 4, 11, dtype=torch.float64).to_sparse(),
}


@pytest.mark.parametrize("case", sorted(DOUT_BAD))
def test_a_dout_that_would_be_read_wrongly_is_refused(case):
    results = []
    for model in twins():
        results.append(outcome(lambda: model.run_with_hooks(TOKENS, dout=DOUT_BAD[case]())))
        results.append(outcome(lambda: model.run_with_cache(TOKENS, incl_bwd=True, dout=DOUT_BAD[case]())))
    if isinstance(DOUT_BAD[case](), np.ndarray):
        np_model = twins()[0]
        np_model(TOKENS)
        results.append(outcome(lambda: np_model.backward(DOUT_BAD[case]())))
    assert {kind for kind, _ in results} == {"TypeError"}, results
    assert all("dout" in message and "\n" not in message for _, message in results), results


def test_a_masked_activation_is_refused_by_a_component():
    layer_norm = npi.LayerNorm(CFG)
    kind, message = outcome(lambda: layer_norm(_masked_like((2, 4, 12))))
    assert kind == "TypeError" and "x" in message and "masked" in message, (kind, message)


@pytest.mark.parametrize("tokens", [[[1, True, 2]], [[np.True_, 2]], _masked_like((1, 3)).astype(np.int64)],
                         ids=["a list with True", "a list with np.True_", "a masked array"])
def test_the_analyses_check_tokens_before_converting_them(tokens):
    from interp.common import check_token_array

    kind, message = outcome(lambda: check_token_array(tokens, CFG))
    assert kind == "TypeError" and "tokens" in message, (kind, message)


def test_ml_dtypes_bfloat16_arrays_are_read_as_their_values():
    ml_dtypes = pytest.importorskip("ml_dtypes", reason="ml_dtypes is not installed (NumPy's bfloat16 comes from it)")
    reference = npi.Transformer(CFG, seed=3)
    randomize(reference, seed=3)
    state = reference.state_dict()
    value = state[KEY].astype(ml_dtypes.bfloat16)
    results, models, _ = load_both(CFG, {**state, KEY: value})
    assert [kind for kind, _ in results] == ["accepted", "accepted"], results
    for model in models:
        assert np.array_equal(state_of(model)[KEY], value.astype(np.float64))


HOOK_RESULTS_GOOD = {  # what both twins take from a hook, with the same values
    "big-endian >f8": lambda x: _np(x).astype(">f8") * 0.5,
    "longdouble": lambda x: _np(x).astype(np.longdouble) * 0.5,
    "negative strides": lambda x: np.flip(np.flip(_np(x) * 0.5, 0).copy(), 0),
    "fortran order": lambda x: np.asfortranarray(_np(x) * 0.5),
    "float16 ndarray": lambda x: (_np(x) * 0.5).astype(np.float16),
    "uint64 ndarray": lambda x: np.abs(np.round(_np(x) * 4)).astype(np.uint64),
    "bfloat16 tensor": lambda x: (_as_tensor(x) * 0.5).bfloat16(),
    "float16 tensor": lambda x: (_as_tensor(x) * 0.5).half(),
    "non-contiguous tensor": lambda x: (_as_tensor(x) * 0.5).transpose(0, 1).contiguous().transpose(0, 1),
    "an ndarray subclass": lambda x: (_np(x) * 0.5).view(type("Sub", (np.ndarray,), {})),
}


@pytest.mark.parametrize("direction", ["fwd", "bwd"])
@pytest.mark.parametrize("case", sorted(HOOK_RESULTS_GOOD))
def test_the_twins_take_the_same_hook_results(case, direction):
    dout = np.random.default_rng(1).standard_normal((2, 4, 11))
    outs, gradients = [], []
    for model in twins():
        model.zero_grad()
        hooks = [("blocks.0.hook_resid_mid", lambda x, hook: HOOK_RESULTS_GOOD[case](x))]
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            out = model.run_with_hooks(TOKENS, dout=dout, **{f"{direction}_hooks": hooks})
        outs.append(as_float64(out))
        gradients.append({name: as_float64(p.grad) for name, p in model.named_parameters()})
    assert rel_err(outs[1], outs[0]) <= 1e-12
    largest = max(np.abs(g).max() for g in gradients[0].values())
    for name in gradients[0]:
        assert rel_err(gradients[1][name], gradients[0][name], scale=largest) <= 1e-12, name


# ---------------------------------------------------------------- 4. the torch twin's own doors

DTYPE_MOVES = {
    ".type(torch.float16)": lambda m: m.type(torch.float16),
    ".type(torch.bfloat16)": lambda m: m.type(torch.bfloat16),
    ".type(torch.int64)": lambda m: m.type(torch.int64),
    ".type(torch.complex128)": lambda m: m.type(torch.complex128),
    ".type('torch.HalfTensor')": lambda m: m.type("torch.HalfTensor"),
    ".half()": lambda m: m.half(),
    ".bfloat16()": lambda m: m.bfloat16(),
    ".to(torch.float16)": lambda m: m.to(torch.float16),
    ".to(dtype=torch.float16)": lambda m: m.to(dtype=torch.float16),
    ".to('cpu', torch.bfloat16)": lambda m: m.to("cpu", torch.bfloat16),
    ".to(torch.complex128)": lambda m: m.to(torch.complex128),
    ".to(a float16 tensor)": lambda m: m.to(torch.zeros(1, dtype=torch.float16)),
    "._apply(half)": lambda m: m._apply(lambda t: t.half()),
}


@pytest.mark.parametrize("cfg", [CFG, CFG32], ids=["float64", "float32"])
@pytest.mark.parametrize("move", sorted(DTYPE_MOVES))
def test_a_dtype_move_the_model_cannot_compute_in_changes_nothing(move, cfg):
    _, twin = twins(cfg)
    before = state_of(twin)
    out = twin(TOKENS).detach().clone()
    with pytest.raises(TypeError, match="float32 or float64"):
        DTYPE_MOVES[move](twin)
    assert {str(p.dtype) for p in twin.parameters()} == {f"torch.{cfg.dtype}"}
    assert twin.cfg == cfg and all(m.cfg == cfg for m in twin.modules() if hasattr(m, "cfg"))
    assert all(np.array_equal(state_of(twin)[k], v) for k, v in before.items())
    assert torch.equal(twin(TOKENS), out), "the model still runs, as before"


MOVES_THAT_FOLLOW = {".float()": ("float32", lambda m: m.float()), ".double()": ("float64", lambda m: m.double()),
                     ".to(torch.float32)": ("float32", lambda m: m.to(torch.float32)),
                     ".type(torch.float64)": ("float64", lambda m: m.type(torch.float64))}


@pytest.mark.parametrize("cfg", [CFG, CFG32], ids=["from float64", "from float32"])
@pytest.mark.parametrize("move", sorted(MOVES_THAT_FOLLOW))
def test_a_move_to_float32_or_float64_takes_the_config_along(move, cfg):
    np_model, twin = twins(cfg)
    dtype, do = MOVES_THAT_FOLLOW[move]
    do(twin)
    assert twin.cfg.dtype == dtype and all(m.cfg.dtype == dtype for m in twin.modules() if hasattr(m, "cfg"))
    assert {str(p.dtype) for p in twin.parameters()} == {f"torch.{dtype}"}
    assert rel_err(twin(TOKENS), np_model(TOKENS)) <= 1e-5  # float32 parity, as the parity tests state it


def _components(cfg):
    """(name, a torch component of cfg, its input) for each component that holds cfg."""
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 4, 12))).to(getattr(torch, cfg.dtype))
    tokens = torch.from_numpy(TOKENS)
    return [("LayerNorm", pti.LayerNorm(cfg), x), ("MultiHeadAttention", pti.MultiHeadAttention(cfg), x),
            ("FeedForward", pti.FeedForward(cfg), x), ("TransformerBlock", pti.TransformerBlock(cfg), x),
            ("Unembed", pti.Unembed(cfg), x), ("TokenEmbedding", pti.TokenEmbedding(cfg), tokens),
            ("SinusoidalPositionalEncoding", pti.SinusoidalPositionalEncoding(cfg), tokens)]


@pytest.mark.parametrize("move", [".half()", ".type(torch.float16)", ".to(torch.bfloat16)", "._apply(double, masks too)"])
@pytest.mark.parametrize("index", range(7), ids=[name for name, _, _ in _components(CFG)])
def test_a_component_refuses_a_dtype_move_before_anything_moves(index, move):
    _, component, x = _components(CFG32)[index]
    before = {name: t.clone() for name, t in chain_tensors(component)}
    out = component(x).detach().clone()
    do = {".half()": lambda m: m.half(), ".type(torch.float16)": lambda m: m.type(torch.float16),
          ".to(torch.bfloat16)": lambda m: m.to(torch.bfloat16),
          "._apply(double, masks too)": lambda m: m._apply(lambda t: t.double())}[move]
    with pytest.raises(TypeError, match="float32 or float64"):
        do(component)
    assert all(torch.equal(t, before[name]) and t.dtype == before[name].dtype for name, t in chain_tensors(component))
    assert component.cfg == CFG32 and torch.equal(component(x), out)


@pytest.mark.parametrize("index", range(7), ids=[name for name, _, _ in _components(CFG)])
def test_a_component_moved_to_float64_takes_its_config_along(index):
    _, component, x = _components(CFG32)[index]
    component.double()
    assert component.cfg.dtype == "float64" and all(m.cfg.dtype == "float64" for m in component.modules()
                                                    if hasattr(m, "cfg"))
    assert {t.dtype for _, t in chain_tensors(component) if t.is_floating_point()} <= {torch.float64}
    out = component(x.double() if x.is_floating_point() else x)
    assert out.dtype == torch.float64


def chain_tensors(module):
    return [*module.named_parameters(), *module.named_buffers()]


# ---------------------------------------------------------------- 5. helpers and the command line

def _cache(model, tokens, remove_batch_dim=False):
    _, cache = model.run_with_cache(tokens)
    return cache.remove_batch_dim() if remove_batch_dim else cache


LOGIT_ATTR_TOKENS_BAD = {  # (tokens the cache was run on, remove_batch_dim, tokens given to logit_attrs)
    "batch 1, four 1-D tokens": (TOKENS[:1], False, np.array([1, 2, 3, 4])),
    "batch 2, three 1-D tokens": (TOKENS, False, np.array([1, 2, 3])),
    "batch 2, one 1-D token": (TOKENS, False, np.array([1])),
    "[batch, pos] of the wrong pos": (TOKENS, False, TOKENS[:, :3]),
    "[batch, pos] of the wrong batch": (TOKENS, False, TOKENS[:1]),
    "rank 3": (TOKENS, False, TOKENS[None]),
    "no batch axis, [pos] too long": (TOKENS[:1], True, np.array([1, 2, 3, 4, 5])),
    "no batch axis, [batch, pos]": (TOKENS[:1], True, TOKENS[:1]),
    "a list with a bool": (TOKENS, False, [1, True]),
    "a float": (TOKENS, False, 1.0),
}


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("case", sorted(LOGIT_ATTR_TOKENS_BAD))
def test_logit_attrs_checks_tokens_against_the_cache(side, case):
    model = twins()[SIDES.index(side)]
    run_on, no_batch, tokens = LOGIT_ATTR_TOKENS_BAD[case]
    cache = _cache(model, run_on, no_batch)
    stack = cache.accumulated_resid()
    kind, message = outcome(lambda: cache.logit_attrs(stack, tokens))
    assert kind in ("TypeError", "ValueError") and "tokens" in message and "\n" not in message, (kind, message)
    kind, message = outcome(lambda: cache.logit_attrs(stack, 1, incorrect_tokens=tokens))
    assert kind in ("TypeError", "ValueError") and "tokens" in message, (kind, message)


@pytest.mark.parametrize("side", SIDES)
def test_logit_attrs_takes_the_forms_transformer_lens_takes(side):
    """int (every position), [batch] (one per sequence, every position), [batch, pos]; without a batch axis, [pos]."""
    model = twins()[SIDES.index(side)]
    cache = _cache(model, TOKENS)
    stack = cache.accumulated_resid()
    full = as_float64(cache.logit_attrs(stack, TOKENS))  # [component, batch, pos]
    assert full.shape == (3, 2, 4)
    per_sequence = as_float64(cache.logit_attrs(stack, np.array([3, 9])))
    assert rel_err(per_sequence, as_float64(cache.logit_attrs(stack, np.array([[3] * 4, [9] * 4])))) == 0
    one = as_float64(cache.logit_attrs(stack, np.int64(5)))
    assert rel_err(one, as_float64(cache.logit_attrs(stack, np.full((2, 4), 5)))) == 0
    single = _cache(model, TOKENS[:1], remove_batch_dim=True)
    by_pos = as_float64(single.logit_attrs(single.accumulated_resid(), TOKENS[0]))  # [component, pos]
    assert rel_err(by_pos, full[:, 0]) <= 1e-12


LOSS_WEIGHTS_BAD = {
    "inf": lambda w: np.where(np.arange(w.size).reshape(w.shape) == 0, np.inf, w),
    "-inf": lambda w: np.where(np.arange(w.size).reshape(w.shape) == 0, -np.inf, w),
    "nan": lambda w: np.where(np.arange(w.size).reshape(w.shape) == 0, np.nan, w),
    "all inf": lambda w: np.full_like(w, np.inf),
    "float32 max": lambda w: np.full_like(w, np.finfo(np.float32).max).astype(np.float32).astype(w.dtype),
}


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("case", sorted(LOSS_WEIGHTS_BAD))
def test_loss_weights_that_are_not_finite_are_refused(side, case):
    rng = np.random.default_rng(0)
    logits, targets = rng.standard_normal((2, 3, 5)), np.array([[0, 1, 2], [3, 4, 0]])
    weights = LOSS_WEIGHTS_BAD[case](rng.uniform(0.5, 1.5, (2, 3)))
    convert = (lambda a: a) if side == "numpy" else torch.from_numpy
    loss = package(side).CrossEntropyLoss()
    kind, message = outcome(lambda: loss(convert(logits), convert(targets), convert(weights)))
    if case == "float32 max":  # finite: a weighted mean that the loss computes without overflow
        assert kind == "accepted" and np.isfinite(float(message)), (kind, message)
        return
    assert kind == "ValueError" and "weights" in message, (kind, message)


TEMPERATURES_GOOD = {"np.float32(0.5)": np.float32(0.5), "np.float64(0.5)": np.float64(0.5),
                     "Fraction(1, 2)": Fraction(1, 2), "a 0-d array": np.array(0.5)}


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("case", sorted(TEMPERATURES_GOOD))
def test_generate_takes_any_real_number_type_as_temperature(side, case):
    model = twins()[SIDES.index(side)]
    expected = as_float64(model.generate(TOKENS[:, :2], max_new_tokens=3, temperature=0.5, seed=4))
    got = as_float64(model.generate(TOKENS[:, :2], max_new_tokens=3, temperature=TEMPERATURES_GOOD[case], seed=4))
    assert np.array_equal(got, expected)
    one = as_float64(model.generate(TOKENS[:, :2], max_new_tokens=3, temperature=np.int64(1), seed=4))
    assert np.array_equal(one, as_float64(model.generate(TOKENS[:, :2], max_new_tokens=3, temperature=1, seed=4)))


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("temperature", [1e-320, 5e-324, 1e-300, 1e-30, np.float32(1e-45)])
def test_a_tiny_temperature_samples_the_most_likely_token(side, temperature):
    """softmax(logits / T) as T -> 0 puts all its mass on the largest logit: no overflow, no NaN."""
    model = twins()[SIDES.index(side)]
    greedy = as_float64(model.generate(TOKENS[:, :2], max_new_tokens=3, temperature=0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warning either
        tiny = as_float64(model.generate(TOKENS[:, :2], max_new_tokens=3, temperature=temperature, seed=1))
    assert np.array_equal(tiny, greedy)


TEMPERATURES_BAD = {"inf": float("inf"), "nan": float("nan"), "-1": -1.0, "np.float32(-0.5)": np.float32(-0.5),
                    "'0.5'": "0.5", "True": True, "np.True_": np.True_, "None": None, "1j": 1j,
                    "an array of two": np.array([0.5, 0.5]), "np.float64 inf": np.float64("inf")}


@pytest.mark.parametrize("case", sorted(TEMPERATURES_BAD))
def test_a_temperature_that_cannot_be_sampled_is_refused(case):
    results = [outcome(lambda: model.generate(TOKENS[:, :2], max_new_tokens=1, temperature=TEMPERATURES_BAD[case]))
               for model in twins()]
    assert results[0][0] in ("TypeError", "ValueError") and results[0][0] == results[1][0], results
    assert all("temperature" in message and "\n" not in message for _, message in results), results


def _plot_head(path):
    from interp.plots import plot_attention_head
    return plot_attention_head(np.tril(np.full((3, 3), 1 / 3)), path)


def _plot_scores(path):
    from interp.plots import plot_head_scores
    return plot_head_scores(np.random.default_rng(0).uniform(size=(2, 3)), path)


@pytest.mark.parametrize("plot", [_plot_head, _plot_scores], ids=["attention head", "head scores"])
@pytest.mark.parametrize("name", ["figure", "figure.png", "run.v2/figure", "figure.svg"])
@pytest.mark.parametrize("as_path", [False, True], ids=["str", "Path"])
def test_a_plot_returns_the_path_it_wrote(tmp_path, plot, name, as_path):
    given = tmp_path / name if as_path else str(tmp_path / name)
    written = plot(given)
    assert os.path.isfile(written), f"returned {written!r}, which is not a file"
    assert isinstance(written, type(given))
    assert os.path.splitext(os.fspath(written))[1] in (".png", ".svg")
    files = [os.path.join(folder, f) for folder, _, names in os.walk(tmp_path) for f in names]
    assert files == [os.fspath(written)]


def _children(pid):
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                children.append(int(entry))
    return children


def _running(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the worker process through /proc (Linux)")
def test_ctrl_c_while_the_checker_s_worker_starts_prints_one_line_and_leaves_no_worker(tmp_path):
    from exercises.generate import write_copy

    write_copy(tmp_path / "copy")
    # as a terminal does: Ctrl-C sends SIGINT to the whole foreground process group
    process = subprocess.Popen([sys.executable, "demo.py", "exercises", "check", str(tmp_path / "copy"), "unembed"],
                               cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    deadline = time.monotonic() + 120
    workers = []
    while not workers and time.monotonic() < deadline and process.poll() is None:
        workers = _children(process.pid)
        time.sleep(0.02)
    assert workers, "the checker started no worker"
    os.killpg(process.pid, signal.SIGINT)
    try:
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == ["demo.py exercises: error: interrupted"], err
    assert process.returncode == 130
    deadline = time.monotonic() + 20  # a worker left behind would finish importing torch and write to a closed socket
    while time.monotonic() < deadline and any(_running(pid) for pid in workers):
        time.sleep(0.1)
    assert not any(_running(pid) for pid in workers), "the worker outlived the checker"



# --- 6. special files and sizes ---

def _checkpoint(folder, **overrides):
    from parity_tests.gpt2_checkpoints import make_checkpoint

    make_checkpoint(folder, **{"n_layer": 1, **overrides})
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return _checkpoint(tmp_path_factory.mktemp("checkpoint"))


def _special(path, kind):
    """Put a FIFO, a character device (a link to /dev/zero) or a folder at ``path``."""
    if path.exists() or path.is_symlink():
        path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        path.symlink_to("/dev/zero")
    else:
        path.mkdir()


def _without_hanging(function, seconds=30):
    """What ``function()`` raised, or None; one still running after ``seconds`` fails the test."""
    import threading

    caught = []

    def run():
        try:
            function()
        except BaseException as error:  # noqa: B036
            caught.append(error)
        else:
            caught.append(None)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert caught, f"still running after {seconds} s: it hangs"
    return caught[0]


SPECIAL = ["fifo", "device", "folder"]
HAS_SPECIAL_FILES = hasattr(os, "mkfifo") and os.path.exists("/dev/zero")
NEEDS_SPECIAL_FILES = pytest.mark.skipif(not HAS_SPECIAL_FILES, reason="needs FIFOs and /dev/zero")
SPECIAL_WORDS = {"fifo": "a FIFO", "device": "a character device", "folder": "a folder"}


@NEEDS_SPECIAL_FILES
@pytest.mark.parametrize("kind", SPECIAL)
@pytest.mark.parametrize("name", ["vocab.json", "merges.txt", "config.json"])
def test_from_pretrained_takes_only_regular_files(checkpoint, tmp_path, name, kind):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(checkpoint, folder)
    _special(folder / name, kind)
    error = _without_hanging(lambda: npi.Transformer.from_pretrained(folder))
    assert isinstance(error, ValueError), repr(error)
    assert name in str(error) and SPECIAL_WORDS[kind] in str(error), str(error)
    assert "\n" not in str(error)


@NEEDS_SPECIAL_FILES
@pytest.mark.parametrize("kind", SPECIAL)
@pytest.mark.parametrize("name", ["weights.npz", "model.safetensors"])
def test_a_weights_file_must_be_a_regular_file(checkpoint, tmp_path, name, kind):
    path = tmp_path / name
    if name == "model.safetensors":
        import shutil

        shutil.copytree(checkpoint, tmp_path / "copy")
        path = tmp_path / "copy" / name
        load = lambda: npi.Transformer.from_pretrained(path.parent)  # noqa: E731
    else:
        load = lambda: load_weights(path)  # noqa: E731
        path.touch()
    _special(path, kind)
    error = _without_hanging(load)
    assert isinstance(error, ValueError) and SPECIAL_WORDS[kind] in str(error), repr(error)


@pytest.mark.parametrize("side", SIDES)
def test_a_config_claiming_two_million_layers_is_refused_before_building_them(checkpoint, tmp_path,
                                                                              side):
    import json
    import shutil
    import tracemalloc

    folder = tmp_path / "copy"
    shutil.copytree(checkpoint, folder)
    fields = json.loads((folder / "config.json").read_text())
    claim = {**fields, "n_layer": 2_000_000, "n_positions": 4}
    (folder / "config.json").write_text(json.dumps(claim))
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"n_layer is 2000000 but the file holds 1 blocks"):
            {"numpy": npi, "torch": pti}[side].Transformer.from_pretrained(folder)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, f"{peak / 2**20:.0f} MiB allocated before the refusal"


@pytest.mark.parametrize("content, words", [
    (b"[" * 200_000 + b"]" * 200_000, "RecursionError"),
    (b"\xff\xfe{}", "not UTF-8"),
    (b'{"a": "b"}', "map each token to an int"),
], ids=["deep JSON", "not UTF-8", "ids not ints"])
def test_a_malformed_vocab_json_is_one_line(checkpoint, tmp_path, content, words):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(checkpoint, folder)
    (folder / "vocab.json").write_bytes(content)
    with pytest.raises(ValueError, match=words) as raised:
        npi.Transformer.from_pretrained(folder)
    assert "\n" not in str(raised.value)


def test_a_tokenizer_file_over_its_limit_is_refused_unread(checkpoint, tmp_path, monkeypatch):
    import shutil

    from foundation.lens.vocab import BytePairTokenizer

    folder = tmp_path / "copy"
    shutil.copytree(checkpoint, folder)
    monkeypatch.setattr(BytePairTokenizer, "MAX_FILE_BYTES", 1000)
    with pytest.raises(ValueError, match=r"vocab.json' is [\d,]+ bytes, over the 1,000"):
        npi.Transformer.from_pretrained(folder)


@pytest.fixture
def learner_copy(tmp_path):
    from exercises.generate import write_copy

    return write_copy(tmp_path / "mine")


def _read_exercises(folder):
    from tours.read import make_page

    return _without_hanging(lambda: make_page(folder.parent / "out", folder, measured=object()), 60)


@NEEDS_SPECIAL_FILES
@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_read_exercises_takes_only_regular_files(learner_copy, kind):
    _special(learner_copy / "layernorm.py", kind)
    error = _read_exercises(learner_copy)
    assert isinstance(error, SystemExit) and SPECIAL_WORDS[kind] in str(error.code), repr(error)


@pytest.mark.parametrize("tail, words", [
    ("\nx = " + "1 + " * 200_000 + "1\n", "nests too deeply"),
    ("\n# \udcff\n", "not UTF-8"),
], ids=["200,000 terms", "not UTF-8"])
def test_read_exercises_turns_deep_nesting_and_bad_bytes_into_one_line(learner_copy, tail, words):
    path = learner_copy / "layernorm.py"
    path.write_bytes(path.read_bytes() + tail.encode("utf-8", "surrogateescape"))
    error = _read_exercises(learner_copy)
    assert isinstance(error, SystemExit) and words in str(error.code), repr(error)
    assert "\n" not in str(error.code)


# --- 7. nothing left behind ---

SAVE_THEN_TERMINATE = """
import os, signal, sys
from foundation.files.weights import write_atomically
def write(f):
    f.write(b"half a file")
    f.flush()
    os.kill(os.getpid(), signal.SIGTERM)
    f.write(b"never")
write_atomically(sys.argv[1], write)
"""


def test_sigterm_during_a_save_leaves_the_old_file_and_no_temporary_file(tmp_path):
    path = tmp_path / "model.npz"
    path.write_bytes(b"the old file")
    ran = subprocess.run([sys.executable, "-c", SAVE_THEN_TERMINATE, str(path)], cwd=PROJECT,
                         capture_output=True, timeout=120)
    assert ran.returncode == 128 + signal.SIGTERM, ran.stderr
    assert path.read_bytes() == b"the old file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"]


class _BytesPath:
    def __init__(self, path):
        self.path = os.fsencode(path)

    def __fspath__(self):
        return self.path


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
@pytest.mark.parametrize("wrap", [_BytesPath, os.fsencode], ids=["PathLike giving bytes", "bytes"])
def test_a_bytes_path_saves_and_loads(tmp_path, side, suffix, wrap):
    model = {"numpy": npi, "torch": pti}[side].Transformer(SMALL, seed=3)
    path = tmp_path / f"model{suffix}"
    model.save(wrap(path))
    again = type(model).load(wrap(path))
    for name, p in model.named_parameters():
        got = dict(again.named_parameters())[name]
        assert rel_err(np.asarray(got.data if side == "numpy" else got.detach()),
                       np.asarray(p.data if side == "numpy" else p.detach())) == 0.0


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("value", [float("inf"), 1e308, np.float64(7e307)],
                         ids=["inf", "1e308", "7e307 times n_ctx 3"])
def test_generate_refuses_a_penalty_that_would_make_probabilities_non_finite(side, value):
    model = {"numpy": npi, "torch": pti}[side].Transformer(SMALL, seed=0)
    with pytest.raises(ValueError, match="freq_penalty must be finite"):
        model.generate([[1, 2]], max_new_tokens=1, freq_penalty=value, seed=0)


@pytest.mark.parametrize("side", SIDES)
def test_generate_takes_a_large_finite_penalty(side):
    model = {"numpy": npi, "torch": pti}[side].Transformer(SMALL, seed=0)
    out = model.generate([[1, 2]], max_new_tokens=1, freq_penalty=1e300, seed=0)
    assert np.asarray(out).shape == (1, 3)


@pytest.mark.parametrize("seed, accepted",
                         [(0, True), (2**64 - 1, True), (2**64, False), (2**70, False)])
def test_the_twins_take_and_refuse_the_same_seeds(seed, accepted):
    outcomes = []
    for package in (npi, pti):
        try:
            package.Transformer(SMALL, seed=seed)
            outcomes.append("built")
        except ValueError as error:
            assert "seed" in str(error), str(error)
            outcomes.append("refused")
    assert outcomes == (["built", "built"] if accepted else ["refused", "refused"])


def _demo(*args, cwd=PROJECT):
    return subprocess.run([os.fsencode(sys.executable), os.fsencode(PROJECT / "demo.py"), *args],
                          capture_output=True, timeout=300, cwd=cwd)


@pytest.fixture(scope="module")
def checkpoint_without_tokenizer(tmp_path_factory):
    return _checkpoint(tmp_path_factory.mktemp("ids"), tokenizer=False)


@pytest.mark.parametrize("prompt, words", [
    (b"1 99999999999999999999999", b"token id 99999999999999999999999 is not in [0, "),
    (b"1 2 \xff", b"--prompt is not UTF-8 text"),
    (b"1 \xd9\xa1", b"--prompt must be token ids"),
], ids=["a huge id", "not UTF-8", "a non-ASCII digit"])
def test_demo_gpt2_prompt_errors_are_one_line(checkpoint_without_tokenizer, tmp_path, prompt,
                                              words):
    ran = _demo(b"gpt2", b"--model", os.fsencode(checkpoint_without_tokenizer), b"--prompt", prompt,
                b"--out", os.fsencode(tmp_path / "out"))
    assert ran.returncode == 1 and words in ran.stderr, ran.stderr
    assert ran.stderr.count(b"\n") == 1 and b"Traceback" not in ran.stderr, ran.stderr


def test_demo_gpt2_text_prompt_that_is_not_utf8_is_one_line(checkpoint, tmp_path):
    ran = _demo(b"gpt2", b"--model", os.fsencode(checkpoint), b"--prompt", b"hello \xff",
                b"--out", os.fsencode(tmp_path / "out"))
    assert ran.returncode == 1 and b"--prompt is not UTF-8 text" in ran.stderr, ran.stderr
    assert ran.stderr.count(b"\n") == 1, ran.stderr


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS refuses file names that are not UTF-8")
def test_exercises_init_into_a_non_utf8_folder_is_one_line_and_leaves_nothing(tmp_path):
    folder = os.fsencode(tmp_path) + b"/mine\xff"
    ran = _demo(b"exercises", b"init", folder)
    assert ran.returncode == 1 and b"is not a UTF-8 name" in ran.stderr, ran.stderr
    assert ran.stderr.count(b"\n") == 1, ran.stderr
    assert os.listdir(tmp_path) == []


def test_exercises_init_that_fails_half_way_leaves_nothing(tmp_path, monkeypatch):
    from pathlib import Path as _Path

    from exercises.generate import write_copy

    written = []
    real = _Path.write_text

    def fail_on_the_third(self, text, *args, **kwargs):
        written.append(self)
        if len(written) == 3:
            raise OSError(28, "No space left on device")
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(_Path, "write_text", fail_on_the_third)
    with pytest.raises(OSError, match="No space left"):
        write_copy(tmp_path / "mine")
    monkeypatch.undo()
    assert os.listdir(tmp_path / "mine") == []
    assert (write_copy(tmp_path / "mine") / "layernorm.py").is_file()  # the next init goes ahead


@pytest.fixture(scope="module")
def short_alphabet(tmp_path_factory):
    """A byte-level BPE that knows only the bytes of 'abc ', as a hand-made vocabulary might."""
    import json

    from foundation.lens.vocab import BytePairTokenizer

    folder = tmp_path_factory.mktemp("alphabet")
    (folder / "vocab.json").write_text(json.dumps({"a": 0, "b": 1, "c": 2, "\u0120": 3, "ab": 4}))
    (folder / "merges.txt").write_text("#version: 0.2\na b\n")
    return BytePairTokenizer(folder / "vocab.json", folder / "merges.txt")


def test_a_vocabulary_missing_byte_symbols_refuses_what_it_cannot_spell(short_alphabet):
    assert short_alphabet.encode("ab c") == [4, 3, 2]
    with pytest.raises(ValueError, match=r"cannot spell 'xz'"):
        short_alphabet.encode("abx cz")
