"""Every bad argument to demo.py gets one line of error and a non-zero exit, never a traceback."""

import os
import signal
import subprocess
import sys

import pytest

import demo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bad_arguments(tmp_path):
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("not a folder")
    bad_weights = tmp_path / "bad.npz"
    bad_weights.write_bytes(b"not a weights file")
    return {
        "--out is a file": ["basics", "--out", str(a_file)],
        "--out under a file": ["basics", "--out", str(a_file / "sub")],
        "--out not writable": ["basics", "--out", "/proc/transformer-twins-out"],
        "basics negative seed": ["basics", "--seed", "-1"],
        "basics seed not a number": ["basics", "--seed", "abc"],
        "parity negative seed": ["parity", "--seed", "-3"],
        "parity unknown device": ["parity", "--device", "tpu"],
        "gradcheck --sample 0": ["gradcheck", "--sample", "0"],
        "gradcheck negative sample": ["gradcheck", "--sample", "-5"],
        "gradcheck negative seed": ["gradcheck", "--seed", "-1"],
        "exercises check a missing folder": ["exercises", "check", str(tmp_path / "missing")],
        "exercises check --sample 0": ["exercises", "check", str(tmp_path), "--sample", "0"],
        "exercises check negative seed": ["exercises", "check", str(tmp_path), "--seed", "-1"],
        "exercises check unknown component": ["exercises", "check", str(tmp_path), "nonsense"],
        "exercises check --time-limit inf": [
            "exercises",
            "check",
            str(tmp_path),
            "--time-limit",
            "inf",
        ],
        "exercises check --time-limit 1e300": [
            "exercises",
            "check",
            str(tmp_path),
            "--time-limit",
            "1e300",
        ],
        "exercises check --time-limit 0": [
            "exercises",
            "check",
            str(tmp_path),
            "--time-limit",
            "0",
        ],
        "exercises init under a file": ["exercises", "init", str(a_file / "copy")],
        "train-parity --steps 0": ["train-parity", "--steps", "0"],
        "train-parity negative seed": ["train-parity", "--seed", "-1"],
        "train-parity unknown optimiser": ["train-parity", "--optimizer", "lbfgs"],
        "induction negative steps": ["induction", "--steps", "-1"],
        "induction negative seed": ["induction", "--seed", "-2"],
        "interp a missing weights file": ["interp", "--model", str(tmp_path / "missing.npz")],
        "interp a malformed weights file": ["interp", "--model", str(bad_weights)],
        "interp negative seed": ["interp", "--seed", "-1"],
        "gpt2 a missing checkpoint folder": ["gpt2", "--model", str(tmp_path / "missing")],
        "gpt2 a folder that is no checkpoint": ["gpt2", "--model", str(tmp_path)],
        "gpt2 a weights file for a folder": ["gpt2", "--model", str(bad_weights)],
        "precision a missing checkpoint folder": ["precision", "--model", str(tmp_path / "no")],
        "precision --pos 0": ["precision", "--pos", "0"],
        "precision negative seed": ["precision", "--seed", "-1"],
        "unknown command": ["nonsense"],
        "unknown option": ["basics", "--nonsense"],
    }


CASES = sorted(bad_arguments(__import__("pathlib").Path("/tmp")))


def run_main(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        demo.main(argv)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.err


@pytest.mark.parametrize("case", CASES)
def test_a_bad_argument_is_one_line_of_error(case, tmp_path, capsys):
    argv = bad_arguments(tmp_path)[case]
    code, err = run_main(argv, capsys)
    assert code not in (0, None), err
    assert "Traceback" not in err
    error_lines = [line for line in err.splitlines() if "error" in line]
    assert len(error_lines) == 1, err


# each case starts a Python, most of them one that imports torch: by default one that does not
# (its error comes from the checker, after the exercise modules' imports), the rest under
# pytest -m slow
@pytest.mark.parametrize(
    "case",
    ["exercises check a missing folder"]
    + [
        pytest.param(case, marks=pytest.mark.slow)
        for case in [
            "--out is a file",
            "gradcheck --sample 0",
            "interp a malformed weights file",
            "gpt2 a folder that is no checkpoint",
            "exercises check --time-limit inf",
        ]
    ],
)
def test_as_a_subprocess(case, tmp_path):
    argv = bad_arguments(tmp_path)[case]
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "demo.py"), *argv],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": ROOT, "MPLBACKEND": "Agg"},
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if "error" in line]) == 1, result.stderr


def test_ctrl_c_while_the_tour_imports_is_one_line(tmp_path):
    """Ctrl-C in demo.py's first second, while the chosen tour imports (torch with it), ends as a
    later Ctrl-C does. The tour here announces its import on stdout and then waits in it, so the
    signal arrives inside the import every time."""
    (tmp_path / "slow_tour.py").write_text(
        "import time\n\nprint('importing', flush=True)\ntime.sleep(60)\n"
    )
    # Python's own Ctrl-C handler, as in a terminal: a test run started in the background (`&`)
    # hands its children SIGINT ignored, and Python leaves an ignored SIGINT ignored
    start = (
        "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); import demo; "
        "demo.TOURS['basics'] = ('slow_tour', 'slow'); demo.main(['basics'])"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", start],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, str(tmp_path)])},
    )
    try:
        assert process.stdout.readline() == "importing\n"
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert (process.returncode, err) == (130, "demo.py basics: error: interrupted\n")


# --- exercises init: a folder name that is not UTF-8, a write that fails half-way ---

from pathlib import Path  # noqa: E402

PROJECT = Path(__file__).resolve().parent.parent


def _demo(*args, cwd=PROJECT):
    return subprocess.run(
        [os.fsencode(sys.executable), os.fsencode(PROJECT / "demo.py"), *args],
        capture_output=True,
        timeout=300,
        cwd=cwd,
    )


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
