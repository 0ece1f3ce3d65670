"""The checker never hangs and never dies with the learner's code.

A backward that never returns is stopped at the time limit ("timed out"); one that calls
``sys.exit`` or ``os._exit`` ends only the worker process ("exited", with how); either way the
checker goes on to the next exercise and says what happened. A copy that hangs or exits while
importing is an ImportError, as a copy with a syntax error is.
"""

import re
import time

import pytest

from exercises.check import check, format_results
from parity_tests.test_exercises import planted_copy

SAMPLE = 3
LIMIT = 3.0  # seconds per exercise where something hangs; importing the copy or checking unembed takes well under one
ROOMY = 300.0  # where nothing hangs: the model's check takes seconds on a busy machine
# Each hang costs LIMIT and each os._exit or kill a fresh worker (importing torch, seconds): the
# default run keeps one of each kind, pytest -m slow adds the rest.
FIRST_LINE = "dx = dcentered + dmean / d_model"  # in LayerNorm's backward body


def by_key(results):
    return {result.key: result for result in results}


def test_a_backward_that_never_returns_times_out_and_the_check_goes_on(solved, tmp_path):
    directory = planted_copy(solved, tmp_path, "layernorm.py", FIRST_LINE, "while True:\n            pass")
    started = time.monotonic()
    results = by_key(check(directory, keys=["layernorm", "unembed"], sample=SAMPLE, time_limit=LIMIT))
    elapsed = time.monotonic() - started
    assert results["layernorm"].status == "timed out"
    assert f"no answer within {LIMIT:g} s" in results["layernorm"].message
    assert results["unembed"].status == "done", "a fresh worker checks what follows"
    assert elapsed < LIMIT + 120, "stopped at the limit (the rest is starting a fresh worker)"
    table = format_results(list(results.values()), directory)
    assert re.search(rf"layernorm +timed out +no answer within {LIMIT:g} s", table), table


@pytest.mark.parametrize("exit_line, words", [
    ("import sys; sys.exit(3)", ["sys.exit(3) was called", "layernorm.py"]),
    pytest.param("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", ["the interpreter ended", "SIGKILL"],
                 marks=pytest.mark.slow),
], ids=["sys.exit", "killed"])
def test_a_backward_that_ends_the_interpreter_is_exited_and_the_check_goes_on(solved, tmp_path, exit_line, words):
    directory = planted_copy(solved, tmp_path, "layernorm.py", FIRST_LINE, exit_line)
    results = by_key(check(directory, keys=["layernorm", "unembed"], sample=SAMPLE, time_limit=ROOMY))
    assert results["layernorm"].status == "exited"
    for word in words:
        assert word in results["layernorm"].message, results["layernorm"].message
    assert results["unembed"].status == "done"


@pytest.mark.slow  # a fresh worker; the default run has the hang (a kill and a fresh worker) and sys.exit
def test_os_exit_ends_only_the_worker_and_all_together_is_not_run_after_it(solved, tmp_path):
    directory = planted_copy(solved, tmp_path, "layernorm.py", FIRST_LINE, "import os; os._exit(3)")
    results = by_key(check(directory, keys=["layernorm", "model"], sample=SAMPLE, time_limit=ROOMY))
    assert results["layernorm"].status == "exited"
    assert "the interpreter ended" in results["layernorm"].message and "exit code 3" in results["layernorm"].message
    assert results["model"].status == "done", "the model's own backward calls the reference's LayerNorm"
    assert results["all together"].status == "exited", "the whole model would run the learner's LayerNorm"
    assert "not run: layernorm exited first" in results["all together"].message


@pytest.mark.parametrize("top_line, words", [
    pytest.param("while True:\n    pass", "no answer within", marks=pytest.mark.slow),
    ("import sys\nsys.exit(2)", "sys.exit(2) was called"),
    pytest.param("import os\nos._exit(2)", "exit code 2", marks=pytest.mark.slow),
], ids=["hangs", "sys.exit", "os._exit"])
def test_a_copy_that_hangs_or_exits_while_importing_is_an_import_error(solved, tmp_path, top_line, words):
    directory = planted_copy(solved, tmp_path, "layernorm.py", "EPS = 1e-5\n", f"EPS = 1e-5\n{top_line}\n")
    with pytest.raises(ImportError, match="does not import") as raised:
        check(directory, keys=["unembed"], sample=SAMPLE, time_limit=LIMIT)
    assert words in str(raised.value)


def test_the_command_line_reports_an_exit_as_a_status(solved, tmp_path, capsys):
    from tours.exercises import run as run_exercises

    planted_copy(solved, tmp_path, "unembed.py",
                 'dx = np.einsum("mv,bpv->bpm", self.W_U.data, dlogits, optimize=True)', "raise SystemExit(0)")

    class Args:
        action, dir, component, sample, seed, time_limit = "check", str(tmp_path), "unembed", SAMPLE, 0, ROOMY

    run_exercises(Args)
    out = capsys.readouterr().out
    assert re.search(r"unembed +exited +sys.exit\(0\) was called at unembed.py:\d+", out), out
    assert "0 of 1 done" in out
    Args.time_limit = 0
    with pytest.raises(SystemExit, match="time_limit must be a positive number"):
        run_exercises(Args)


def test_bad_time_limit(solved):
    for bad in (0, -1, "5", True, float("nan")):
        with pytest.raises(ValueError, match="time_limit"):
            check(solved, keys=["unembed"], time_limit=bad)


@pytest.mark.slow  # two fresh workers (one started in the copy's folder): the default run has the other kinds
def test_a_copy_in_the_working_folder_never_stands_in_for_the_reference(solved, tmp_path, monkeypatch):
    """``exercises init .`` puts the learner's numpy_impl in the working folder: the worker must
    still import the reference as numpy_impl (the block's sub-modules run the reference's backward)."""
    from exercises import worker

    directory = planted_copy(solved, tmp_path, "layernorm.py", FIRST_LINE, "dx = dcentered")
    monkeypatch.chdir(directory)
    worker.stop()  # the next check starts a worker here
    results = by_key(check(".", keys=["layernorm", "block"], sample=SAMPLE, time_limit=ROOMY))
    assert results["layernorm"].status == "wrong"
    assert results["block"].status == "done", "the block's LayerNorms must run the reference's backward"
    worker.stop()  # leave no worker in a folder that is about to go
