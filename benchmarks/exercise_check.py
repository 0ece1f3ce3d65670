"""How long one exercise takes to check: the whole command, as a learner runs it.

    python benchmarks/exercise_check.py [--rounds 3]

Writes a solved copy (the reference's bodies put back) into a temporary folder, then runs
``python demo.py exercises check DIR KEY`` for each exercise, ``rounds`` times, and prints the
best wall-clock time and the CPU time (user + system, the checker's and the learner's process
together) of each, with the load average before and after. On a busy machine the wall time
waits for other work; the CPU time is what the check itself spends, and on an idle machine
the wall time is close to it (the checker and the learner's process take turns, never run at
once). "model" also runs "all together", the whole model with the learner's backward
everywhere: two exercises in one command.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from exercises.catalog import EXERCISES  # noqa: E402
from exercises.generate import REFERENCE_DIR, write_copy  # noqa: E402
from exercises.steps import find_marked_bodies  # noqa: E402

KEYS = [e.key for e in EXERCISES] + ["attention.softmax"]


def solve(package_dir):
    """Put the reference's bodies back between the markers of every file of the copy."""
    for path in Path(package_dir).glob("*.py"):
        mine = path.read_text().splitlines(keepends=True)
        reference = (REFERENCE_DIR / path.name).read_text()
        theirs = reference.splitlines(keepends=True)
        pairs = zip(
            find_marked_bodies("".join(mine), path.name), find_marked_bodies(reference, path.name)
        )
        for body, answer in reversed(list(pairs)):
            mine[body.begin : body.end + 1] = theirs[answer.begin : answer.end + 1]
        path.write_text("".join(mine))


def timed(command):
    """(wall seconds, CPU seconds of the children) of one run of ``command``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(
        command, cwd=PROJECT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        write_copy(folder)
        solve(Path(folder) / "numpy_impl")
        print(
            f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())} "
            f"({os.cpu_count()} cores)"
        )
        print(f"{'exercise':<20} {'wall (best)':>12} {'CPU (best)':>12}")
        for key in KEYS:
            runs = [
                timed([sys.executable, "demo.py", "exercises", "check", folder, key])
                for _ in range(args.rounds)
            ]
            print(
                f"{key:<20} {min(w for w, _ in runs):>10.2f} s {min(c for _, c in runs):>10.2f} s"
            )
        print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
