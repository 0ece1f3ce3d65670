"""CPU time per test, for sizing the tiers: ``python -m pytest -p parity_tests.cpu_times``.

Each test's CPU (user + sys of the test's process and of the processes it started and waited
for, from ``resource.getrusage``) is measured around its setup, call and teardown; the end of the
run lists the 30 largest and the total. CPU time, unlike pytest's ``--durations``, changes little
when other work shares the machine, so it compares runs made at different loads. Not loaded by
default.
"""

import resource
import time

import pytest

_rows = []  # (cpu seconds, wall seconds, test id)


def _cpu():
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    cpu, wall = _cpu(), time.perf_counter()
    yield
    _rows.append((_cpu() - cpu, time.perf_counter() - wall, item.nodeid))


def pytest_terminal_summary(terminalreporter):
    rows = sorted(_rows, reverse=True)
    terminalreporter.section("CPU time per test (parity_tests/cpu_times.py)")
    for cpu, wall, name in rows[:30]:
        terminalreporter.write_line(f"{cpu:7.2f} s CPU {wall:7.2f} s wall  {name}")
    total = sum(cpu for cpu, _, _ in rows)
    terminalreporter.write_line(f"{total:7.1f} s CPU in {len(rows)} tests")
