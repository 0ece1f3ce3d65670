"""CPU time per test and per test file, for sizing the tiers:
``python -m pytest -p parity_tests.cpu_times``.

Each test's CPU (user + sys of the test's process, of the processes it started and waited for,
from ``resource.getrusage``, and of the exercise checker's zygote with the learner's processes
it forked) is measured around its setup, call and teardown; the end of the run lists the 30
largest tests (``TWINS_CPU_TIMES_SHOWN=N``: the N largest), every test file's sum (largest
first) and the total. CPU time, unlike pytest's ``--durations``, changes little when other work
shares the machine, so it compares runs made at different loads. Not loaded by default. Under
pytest-xdist each worker measures its own tests and sends the rows to the controller, which
prints them.
"""

import collections
import os
import resource
import sys
import time

import pytest

_rows = []  # (cpu seconds, wall seconds, test id)


def _cpu():
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime + _zygote()


def _zygote():
    """CPU of the exercise checker's zygote while it runs, and of the learner's processes it
    forked and has waited for (``exercises/worker.py``): counted in RUSAGE_CHILDREN only once the
    zygote itself ends."""
    worker = sys.modules.get("exercises.worker")
    if not worker or not getattr(worker, "_zygote", None):
        return 0.0
    try:
        with open(f"/proc/{worker._zygote[0].process.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return sum(int(tick) for tick in fields[11:15]) / os.sysconf("SC_CLK_TCK")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    cpu, wall = _cpu(), time.perf_counter()
    yield
    _rows.append((_cpu() - cpu, time.perf_counter() - wall, item.nodeid))


def pytest_sessionfinish(session):
    """On an xdist worker: hand this worker's rows to the controller."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["cpu_times"] = list(_rows)


@pytest.hookimpl(optionalhook=True)  # an xdist hook: unknown without xdist
def pytest_testnodedown(node, error):
    """On the xdist controller: gather a finished worker's rows."""
    _rows.extend(tuple(row) for row in getattr(node, "workeroutput", {}).get("cpu_times", ()))


def pytest_terminal_summary(terminalreporter):
    rows = sorted(_rows, reverse=True)
    if not rows:
        return
    terminalreporter.section("CPU time per test (parity_tests/cpu_times.py)")
    for cpu, wall, name in rows[: int(os.environ.get("TWINS_CPU_TIMES_SHOWN", 30))]:
        terminalreporter.write_line(f"{cpu:7.2f} s CPU {wall:7.2f} s wall  {name}")
    files = collections.defaultdict(lambda: [0.0, 0.0, 0])
    for cpu, wall, name in rows:
        total = files[name.split("::")[0]]
        total[0] += cpu
        total[1] += wall
        total[2] += 1
    terminalreporter.section("CPU time per test file")
    for name, (cpu, wall, count) in sorted(files.items(), key=lambda kv: -kv[1][0]):
        terminalreporter.write_line(f"{cpu:7.2f} s CPU {wall:7.2f} s wall {count:5d} tests  {name}")
    own = resource.getrusage(resource.RUSAGE_SELF)
    total = sum(cpu for cpu, _, _ in rows)
    terminalreporter.write_line(f"{total:7.1f} s CPU in {len(rows)} tests")
    terminalreporter.write_line(
        f"{own.ru_utime + own.ru_stime:7.1f} s CPU in this process in all (collection included)"
    )
