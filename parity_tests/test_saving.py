"""Saving never destroys: atomic in either format, through symlinks, never over what is not a
regular file.

A save writes a temporary file beside the target and renames it over the target, so a save that
fails half-way (interrupted, the disk full) leaves the old file whole and nothing behind; the
saved file gets the permissions ``np.save`` would give (or keeps the mode of the file it
replaces). A symlink is written through to its target, still by a rename; a read-only file,
a FIFO, a folder, a socket or a device is refused before anything is written.
"""

import os
import re
import socket
import stat
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

import foundation.files.weights
import numpy_impl as npi
import torch_impl as pti
from foundation.files.weights import load_weights, save_weights
from parity_tests.helpers import CFG, SIDES, SMALL, as_float64, package, rel_err

FORMATS = [".npz", ".safetensors"]


def saved_by(side, seed, path):
    """Save a model of SMALL from ``side`` to ``path``; return its W_E (what a later load must
    find)."""
    model = package(side).Transformer(SMALL, seed=seed)
    model.save(path)
    return (
        np.array(model.state_dict()["embed.W_E"], dtype=np.float64)
        if side == "numpy"
        else model.state_dict()["embed.W_E"].numpy().astype(np.float64)
    )


def stored_W_E(path):
    return load_weights(path)[1]["embed.W_E"]


# ---------------------------------------------------------------- atomic, in either format


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("suffix", FORMATS)
def test_saving_over_a_file_replaces_it_by_a_rename_and_keeps_its_mode(tmp_path, side, suffix):
    path = tmp_path / f"w{suffix}"
    npi.Transformer(SMALL, seed=1).save(path)
    os.chmod(path, 0o640)
    inode = os.stat(path).st_ino
    model = package(side).Transformer(SMALL, seed=2)
    model.save(path)
    assert os.stat(path).st_ino != inode  # a rename, not a rewrite in place
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640  # as np.save over an existing file
    assert sorted(os.listdir(tmp_path)) == [f"w{suffix}"]  # no temporary file left behind
    assert np.array_equal(
        npi.Transformer.load(path).embed.W_E.data, as_float64(model.embed.W_E.data)
    )


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("suffix", FORMATS)
def test_an_interrupted_save_leaves_the_old_file_whole(tmp_path, monkeypatch, side, suffix):
    """A save interrupted half-way (the writer wrote part of the file) leaves the old file and
    nothing else."""
    path = tmp_path / f"w{suffix}"
    npi.Transformer(SMALL, seed=1).save(path)
    before = path.read_bytes()

    def interrupted(*args, **kwargs):
        if args and hasattr(args[0], "write"):
            args[0].write(b"half a file")
        raise KeyboardInterrupt("interrupted")

    monkeypatch.setattr(
        *((np, "savez") if suffix == ".npz" else (safetensors.numpy, "save")), interrupted
    )
    with pytest.raises(KeyboardInterrupt):
        package(side).Transformer(SMALL, seed=2).save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == [f"w{suffix}"]


@pytest.mark.parametrize("side", SIDES)
def test_a_save_that_fails_on_the_disk_names_the_path_and_keeps_the_old_file(
    tmp_path, monkeypatch, side
):
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


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
@pytest.mark.parametrize("side", ["numpy", "torch"])
def test_a_saved_file_gets_the_permissions_np_save_gives(tmp_path, umask, side):
    model = npi.Transformer(SMALL) if side == "numpy" else pti.Transformer(SMALL)
    old = os.umask(umask)
    try:
        np.save(tmp_path / "reference.npy", np.zeros(1))
        model.save(tmp_path / "w.npz")
    finally:
        os.umask(old)
    expected = stat.S_IMODE(os.stat(tmp_path / "reference.npy").st_mode)
    assert stat.S_IMODE(os.stat(tmp_path / "w.npz").st_mode) == expected


# ---------------------------------------------------------------- links


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
    assert link.is_symlink() and os.readlink(link) == pointed, (
        "the link stays a link, pointing where it did"
    )
    assert os.stat(target).st_ino != inode, (
        "the target is replaced by a rename (atomic), not rewritten in place"
    )
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


def test_saving_over_a_hard_linked_file_leaves_the_other_name_whole(tmp_path):
    path, other = tmp_path / "w.npz", tmp_path / "backup.npz"
    old = saved_by("numpy", 1, path)
    os.link(path, other)
    new = saved_by("torch", 2, path)
    assert rel_err(stored_W_E(other), old) == 0, "the other name still holds the old weights, whole"
    assert rel_err(stored_W_E(path), new) == 0


# ---------------------------------------------------------------- what is refused before anything
# is written


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("mode", [0o444, 0o400, 0o555, 0o044])
@pytest.mark.parametrize("through_a_link", [False, True], ids=["direct", "through a symlink"])
def test_a_read_only_file_is_refused_even_for_root(tmp_path, side, mode, through_a_link):
    """Root may write any file; a file nobody may write is still refused (np.savez refuses it for
    others)."""
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
        assert sorted(os.listdir(tmp_path)) == sorted(
            ["w.npz"] + (["latest.npz"] if through_a_link else [])
        )
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


SPECIAL_FILES = {
    "a FIFO": make_fifo,
    "a folder": make_folder,
    "a socket": make_socket,
    "a character device": make_character_device,
}


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("kind", sorted(SPECIAL_FILES))
@pytest.mark.parametrize("through_a_link", [False, True], ids=["direct", "through a symlink"])
def test_what_is_not_a_regular_file_is_refused_before_anything_is_written(
    tmp_path, side, kind, through_a_link
):
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
        assert (after.st_mode, after.st_ino, after.st_rdev) == (
            before.st_mode,
            before.st_ino,
            before.st_rdev,
        )
        assert sorted(os.listdir(folder)) == sorted(
            ["w.npz"] + (["latest.npz"] if through_a_link else [])
        )
    finally:
        if keep is not None:
            keep.close()


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize(
    "path", ["", "new/", "new" + os.sep + os.sep], ids=["empty", "trailing slash", "two slashes"]
)
def test_a_path_that_names_no_file_is_refused(tmp_path, monkeypatch, side, path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="path") as raised:
        saved_by(side, 2, path)
    assert "\n" not in str(raised.value)
    assert os.listdir(tmp_path) == []


def test_save_into_a_missing_folder_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        npi.Transformer(CFG).save(tmp_path / "no" / "such" / "w.npz")


def test_the_writer_refuses_for_any_format(tmp_path):
    """The rules live in the one writer every format goes through (npz here; any callback the same
    way)."""
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


# --- SIGTERM during a save; bytes paths ---

import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

PROJECT = Path(__file__).resolve().parent.parent


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
    ran = subprocess.run(
        [sys.executable, "-c", SAVE_THEN_TERMINATE, str(path)],
        cwd=PROJECT,
        capture_output=True,
        timeout=120,
    )
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
        assert (
            rel_err(
                np.asarray(got.data if side == "numpy" else got.detach()),
                np.asarray(p.data if side == "numpy" else p.detach()),
            )
            == 0.0
        )
