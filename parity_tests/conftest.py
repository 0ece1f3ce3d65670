"""The test run's thread count, the ``TWINS_CI`` rule for skips, and the fixtures tests share.

What the tests share as plain functions (the small models, ``twins``, parity's measure) is in
``parity_tests/helpers.py``; learners' copies for the exercise tests in ``parity_tests/copies.py``.
"""

import os

from training import use_one_thread

# One thread, set before any test module imports NumPy: the tests multiply small matrices, where a
# second thread saves nothing and, beside a busy program, waits (docs/performance.md, "Threads").
use_one_thread()

import pytest  # noqa: E402

from exercises.generate import write_copy  # noqa: E402
from parity_tests.copies import copy_of, put_back_reference_bodies  # noqa: E402

# In CI (TWINS_CI=1) every package of requirements.txt is installed, so a test that skips for a
# missing one is a failure there. Only a GPU test may skip (CI has no GPU), and the test of
# ml_dtypes' bfloat16 arrays: ml_dtypes is an optional array type, not one of the requirements;
# and a test of the exercise sandbox, where the kernel truly offers no Landlock.
SKIPS_ALLOWED_IN_CI = ("torch sees no GPU here", "ml_dtypes is not installed")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not hasattr(report, "wasxfail"):
        _fail_a_skip_in_ci(report)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """A whole file skipped as it is collected (a module-level ``pytest.importorskip``) is held to
    the same rule as a test that skips."""
    outcome = yield
    _fail_a_skip_in_ci(outcome.get_result())


def _fail_a_skip_in_ci(report):
    if os.environ.get("TWINS_CI") == "1" and report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        allowed = any(allowed in reason for allowed in SKIPS_ALLOWED_IN_CI) or _no_landlock(reason)
        if not allowed:
            report.outcome = "failed"
            report.longrepr = (
                f"TWINS_CI=1: skipped ({reason}), but in CI every dependency is installed"
            )


def _no_landlock(reason):
    """A sandbox test may skip where the kernel truly has no Landlock (an old kernel, macOS)."""
    from exercises import sandbox

    return "no Landlock" in reason and sandbox.wall()[0] == 0


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: unknown without it
def pytest_xdist_auto_num_workers(config):
    """``-n auto`` (pyproject.toml's addopts) gives the tiers a worker per core; a run of one to
    three files named on the command line stays in this process (a worker's start, a few seconds
    of imports, costs more than it saves there). ``-n 2`` still asks for workers."""
    named = [arg for arg in config.args if ".py" in arg]
    if 0 < len(named) == len(config.args) <= 3:
        return 0
    return None  # pytest-xdist's own count: one per core


# The files that take longest (python -m pytest -p parity_tests.cpu_times), longest first.
# pytest-xdist hands each worker a whole file at a time (--dist loadfile) in the collected order
# (--no-loadscope-reorder in pyproject.toml: its own order puts the files with the most tests
# first, whatever they cost, and may leave a long file for last); the long files first and the
# many short ones after them keep both workers busy to the end. The order inside each file is kept.
LONGEST_FIRST = (
    "test_read_page.py",
    "test_interp_figures.py",
    "test_diagnose.py",
    "test_gpt2_demo.py",
    "test_figures.py",
    "test_exercises.py",
    "test_exercise_worker.py",
    "test_transformer_bridge.py",
    "test_transformer_lens.py",
    "test_attribution.py",
    "test_gradcheck.py",
    "test_exercise_round_two.py",
    "test_golden.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FIRST)))


@pytest.fixture(scope="session")
def fresh(tmp_path_factory):
    """A learner's copy as ``exercises init`` writes it: no exercise started. One for the whole run
    (writing it takes half a second): a test that changes a copy changes its own
    (``copies.copy_of``), never this one."""
    directory = tmp_path_factory.mktemp("fresh")
    write_copy(directory)
    return directory


@pytest.fixture(scope="session")
def solved(fresh, tmp_path_factory):
    """A learner's copy with every reference body put back: every exercise done. One for the whole
    run, like ``fresh``."""
    directory = copy_of(fresh, tmp_path_factory.mktemp("solved"))
    put_back_reference_bodies(directory / "numpy_impl")
    return directory
