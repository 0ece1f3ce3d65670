"""The checker never hangs, never dies with the learner's code, and is never confused by it.

Each exercise runs in a learner's process of its own. A backward that never returns is stopped
at the time limit ("timed out"); one that calls ``sys.exit`` or ``os._exit`` is "exited", with
how; one that forks is refused; one that raises anything (a BaseException subclass, a
KeyboardInterrupt, an exception whose ``__str__`` raises) is "wrong", with what it raised; one
that floods its output is checked as any other, the output abridged. Either way the checker
goes on with the next exercise, counts only what it checked, and leaves no process behind.
"""

import ast
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from exercises import worker
from exercises.check import check, format_results
from parity_tests.copies import planted_copy

PROJECT = Path(__file__).resolve().parent.parent

SAMPLE = 1
# seconds per exercise where something hangs (the hang waits it out); a correct unembed check takes
# a tenth of one, forked from the checker's zygote
LIMIT = 1.5
ROOMY = 300.0  # where nothing hangs
FIRST_LINE = "dx = dcentered + dmean / d_model"  # in LayerNorm's backward body


def by_key(results):
    return {result.key: result for result in results}


def learner_processes(directory):
    """Pids of learner's processes still running in ``directory`` (their working folder)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            command = open(f"/proc/{pid}/cmdline", "rb").read()
            folder = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if b"exercises.learner" in command and folder == str(directory):
            found.append(int(pid))
    return found


def checked(directory, keys, limit=ROOMY):
    results = check(directory, keys=keys, sample=SAMPLE, time_limit=limit)
    assert learner_processes(directory) == [], "a learner's process outlived the check"
    return by_key(results)


def test_a_backward_that_never_returns_times_out_and_the_check_goes_on(solved, tmp_path):
    # a loop that sleeps: the limit is wall-clock time, so it ends this hang as it ends one that
    # spins, and the hang leaves the machine's cores to the other tests while it waits
    hang = "while True:\n            __import__('time').sleep(0.1)"
    directory = planted_copy(solved, tmp_path, "layernorm.py", FIRST_LINE, hang)
    started = time.monotonic()
    results = checked(directory, ["layernorm", "unembed"], LIMIT)
    elapsed = time.monotonic() - started
    assert results["layernorm"].status == "timed out"
    assert f"no answer within {LIMIT:g} s" in results["layernorm"].message
    assert results["unembed"].status == "done", "a fresh process checks what follows"
    assert elapsed < LIMIT + 60, "stopped at the limit"
    table = format_results(list(results.values()), directory)
    assert re.search(rf"layernorm +timed out +no answer within {LIMIT:g} s", table), table
    assert "1 of 2 checked done" in table


@pytest.mark.parametrize(
    "exit_line, words",
    [
        ("import sys; sys.exit(3)", ["sys.exit(3) was called", "layernorm.py"]),
        pytest.param(
            "import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
            ["the interpreter ended", "SIGKILL"],
            marks=pytest.mark.slow,
        ),
        pytest.param(
            "import os; os._exit(3)",
            ["the interpreter ended", "exit code 3"],
            marks=pytest.mark.slow,
        ),
    ],
    ids=["sys.exit", "killed", "os._exit"],
)
def test_a_backward_that_ends_the_interpreter_is_exited_and_the_check_goes_on(
    solved, tmp_path, exit_line, words
):
    directory = planted_copy(solved, tmp_path, "layernorm.py", FIRST_LINE, exit_line)
    results = checked(directory, ["layernorm", "unembed"])
    assert results["layernorm"].status == "exited"
    for word in words:
        assert word in results["layernorm"].message, results["layernorm"].message
    assert results["unembed"].status == "done"


def test_os_exit_ends_only_its_process_and_all_together_is_not_run_after_it(solved, tmp_path):
    directory = planted_copy(solved, tmp_path, "layernorm.py", FIRST_LINE, "import os; os._exit(3)")
    results = checked(directory, ["layernorm", "model"])
    assert results["layernorm"].status == "exited"
    assert results["model"].status == "done", (
        "the model's own backward calls the reference's LayerNorm"
    )
    assert results["all together"].status == "exited", (
        "the whole model would run the learner's LayerNorm"
    )
    assert "not run: layernorm exited first" in results["all together"].message


RAISERS = {
    "a BaseException subclass": (
        "class Stop(BaseException):\n            pass\n        raise Stop('no')",
        "raised the BaseException Stop: no",
    ),
    "KeyboardInterrupt": ("raise KeyboardInterrupt", "raised the BaseException KeyboardInterrupt"),
    "an exception whose __str__ raises": (
        "class Odd(Exception):\n            def __str__(self):\n                raise "
        "RuntimeError('no words')\n"
        "        raise Odd()",
        "its message could not be made: str() raised RuntimeError",
    ),
    "GeneratorExit": ("raise GeneratorExit", "raised the BaseException GeneratorExit"),
}


@pytest.mark.parametrize(
    "what",
    [w if w == "KeyboardInterrupt" else pytest.param(w, marks=pytest.mark.slow) for w in RAISERS],
)
def test_a_backward_that_raises_anything_is_wrong_and_the_check_goes_on(solved, tmp_path, what):
    line, words = RAISERS[what]
    directory = planted_copy(solved, tmp_path, "layernorm.py", FIRST_LINE, line)
    results = checked(directory, ["layernorm", "unembed"])
    assert results["layernorm"].status == "wrong", results["layernorm"].message
    assert words in results["layernorm"].message and "layernorm.py:" in results["layernorm"].message
    assert results["unembed"].status == "done"


def test_a_process_forked_from_the_zygote_starts_as_a_fresh_one(solved, tmp_path):
    """Its own session, its scratch folder as TMPDIR, and no socket module left over from the
    zygote (so importing one is an import the audit hook sees); ``checked`` finds none left in
    its working folder afterwards."""
    probe = (
        "import os, sys, tempfile\n"
        "        print('SETUP', [n for n in ('socket', '_socket') if n in sys.modules], "
        "os.getsid(0) == os.getpid(), os.environ['TMPDIR'] == tempfile.gettempdir(), "
        "'twins-learner-' in os.environ['TMPDIR'], flush=True)\n"
        f"        {FIRST_LINE}"
    )
    directory = planted_copy(solved, tmp_path, "layernorm.py", FIRST_LINE, probe)
    results = checked(directory, ["layernorm"])
    assert results["layernorm"].status == "done", results["layernorm"].message
    line = next(x for x in results["layernorm"].output.splitlines() if x.startswith("SETUP"))
    assert line.startswith("SETUP [] True True True"), line


def test_the_zygote_preloads_the_foundation_modules_the_reference_imports():
    """What numpy_impl (and so a learner's copy) imports from foundation is imported once in the
    zygote (worker.PRELOADED), not again in each learner's process."""
    imported = {
        node.module
        for path in (PROJECT / "numpy_impl").glob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("foundation")
    }
    assert imported == set(worker.PRELOADED)


@pytest.mark.skipif(not worker.FORK, reason="TWINS_EXERCISE_FORK=0: no zygote")
def test_a_zygote_that_is_gone_is_started_again(solved):
    assert checked(solved, ["unembed"])["unembed"].status == "done"
    zygote = worker._zygote[0]
    zygote.process.kill()
    zygote.process.wait()
    assert checked(solved, ["unembed"])["unembed"].status == "done"
    assert worker._zygote[0] is not zygote and worker._zygote[0].alive()


def test_a_fresh_interpreter_per_exercise_gives_the_same_verdicts(solved, tmp_path, monkeypatch):
    """TWINS_EXERCISE_FORK=0: each exercise in an interpreter of its own (worker.BOOT)."""
    monkeypatch.setattr(worker, "FORK", False)
    directory = planted_copy(solved, tmp_path, "layernorm.py", FIRST_LINE, "import os; os._exit(3)")
    results = checked(directory, ["layernorm", "unembed"])
    assert results["layernorm"].status == "exited"
    assert "exit code 3" in results["layernorm"].message, results["layernorm"].message
    assert results["unembed"].status == "done"


def test_a_fork_is_refused_and_nothing_outlives_the_check(solved, tmp_path):
    directory = planted_copy(
        solved,
        tmp_path,
        "layernorm.py",
        FIRST_LINE,
        "import os\n        if os.fork() == 0:\n            import time; time.sleep(600)\n"
        f"        {FIRST_LINE}",
    )
    results = checked(directory, ["layernorm", "unembed"])
    assert results["layernorm"].status == "refused", results["layernorm"].message
    assert (
        "os.fork" in results["layernorm"].message
        and "layernorm.py:" in results["layernorm"].message
    )
    assert results["unembed"].status == "done"
    assert "1 of 2 checked done" in format_results(list(results.values()), directory)


def test_a_flood_of_output_is_abridged_and_the_exercise_still_checked(solved, tmp_path):
    directory = planted_copy(
        solved,
        tmp_path,
        "layernorm.py",
        FIRST_LINE,
        f"print('flood ' * 1_000_000)\n        {FIRST_LINE}",
    )
    results = checked(directory, ["layernorm", "unembed"])
    assert results["layernorm"].status == "done", results["layernorm"].message
    assert results["layernorm"].output.startswith("flood flood")
    assert "more bytes not shown" in results["layernorm"].output
    assert len(results["layernorm"].output) < 3000
    assert results["unembed"].output == ""
    table = format_results(list(results.values()), directory)
    assert "output: flood flood" in table and len(table) < 10_000


@pytest.mark.parametrize(
    "top_line, words",
    [
        pytest.param("while True:\n    pass", "no answer within", marks=pytest.mark.slow),
        ("import sys\nsys.exit(2)", "SystemExit: 2"),
        pytest.param("import os\nos._exit(2)", "exit code 2", marks=pytest.mark.slow),
    ],
    ids=["hangs", "sys.exit", "os._exit"],
)
def test_a_copy_that_hangs_or_exits_while_importing_is_an_import_error(
    solved, tmp_path, top_line, words
):
    directory = planted_copy(
        solved, tmp_path, "layernorm.py", "EPS = 1e-5\n", f"EPS = 1e-5\n{top_line}\n"
    )
    with pytest.raises(ImportError, match="does not import") as raised:
        check(directory, keys=["unembed"], sample=SAMPLE, time_limit=LIMIT)
    assert words in str(raised.value)
    assert learner_processes(directory) == []


def test_the_command_line_reports_an_exit_as_a_status(solved, tmp_path, capsys):
    from tours.exercises import run as run_exercises

    planted_copy(
        solved,
        tmp_path,
        "unembed.py",
        'dx = np.einsum("mv,bpv->bpm", W_U, dlogits, optimize=True)',
        "raise SystemExit(0)",
    )

    class Args:
        action, dir, component, sample, seed, time_limit = (
            "check",
            str(tmp_path),
            "unembed",
            SAMPLE,
            0,
            ROOMY,
        )

    with pytest.raises(SystemExit) as exit_info:  # not done: status 1, as a failed test
        run_exercises(Args)
    assert exit_info.value.code == 1
    out = capsys.readouterr().out
    assert re.search(r"unembed +exited +sys.exit\(0\) was called at unembed.py:\d+", out), out
    assert "0 of 1 checked done" in out
    # 1e300 is finite, but no clock waits that long: refused in one line, not an OverflowError
    for bad in (0, -5.0, 1e300, 86400.5, float("inf"), float("nan")):
        Args.time_limit = bad
        with pytest.raises(SystemExit, match="--time-limit must be a positive, finite number"):
            run_exercises(Args)


def test_bad_time_limit(solved):
    for bad in (0, -1, "5", True, float("nan"), float("inf"), 1e300, 86400.5):
        with pytest.raises(ValueError, match="time_limit"):
            check(solved, keys=["unembed"], time_limit=bad)


def test_a_copy_in_the_working_folder_never_stands_in_for_the_reference(
    solved, tmp_path, monkeypatch
):
    """``exercises init .`` puts the learner's numpy_impl in the working folder: the checker's
    reference is the project's all the same (the block's sub-modules run the reference's
    backward)."""
    directory = planted_copy(solved, tmp_path, "layernorm.py", FIRST_LINE, "dx = dcentered")
    monkeypatch.chdir(directory)
    results = by_key(check(".", keys=["layernorm", "block"], sample=SAMPLE, time_limit=ROOMY))
    assert results["layernorm"].status == "wrong"
    assert results["block"].status == "done", (
        "the block's LayerNorms must run the reference's backward"
    )


def test_list_and_check_work_from_a_read_only_folder(solved, tmp_path, monkeypatch, capsys):
    """Nothing is written to --out by list or check: a folder where nothing can be written is
    fine."""
    import tempfile

    import demo

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    demo.main(["exercises", "list"])
    demo.main(["exercises", "check", str(solved), "unembed"])
    out = capsys.readouterr().out
    assert "11. model" in out and "1 of 1 checked done" in out


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


# demo.py in a subprocess, as most of the command line's subprocess runs (test_cli.py)
@pytest.mark.slow
@pytest.mark.skipif(
    not os.path.isdir("/proc"), reason="finds the worker process through /proc (Linux)"
)
def test_ctrl_c_while_the_checker_s_worker_starts_prints_one_line_and_leaves_no_worker(tmp_path):
    from exercises.generate import write_copy

    write_copy(tmp_path / "copy")
    # as a terminal does: Ctrl-C sends SIGINT to the whole foreground process group
    process = subprocess.Popen(
        [sys.executable, "demo.py", "exercises", "check", str(tmp_path / "copy"), "unembed"],
        cwd=PROJECT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # Ctrl-C as a terminal delivers it: a run started in the background (`&`) hands its
        # children SIGINT ignored, and Python keeps an ignored SIGINT ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
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
    # a worker left behind would finish importing torch and write to a closed socket
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(_running(pid) for pid in workers):
        time.sleep(0.1)
    assert not any(_running(pid) for pid in workers), "the worker outlived the checker"
