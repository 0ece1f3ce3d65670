"""The first walk-through a newcomer runs: it prints the promised lines and writes the figure."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import demo

EXPECTED_LINES = [
    "Model Architecture:",
    "- Embedding dimension: 16",
    "- Number of heads: 4",
    "- Feed-forward dimension: 64",
    "- Number of layers: 2",
    "Input shape: (1, 5)",
    "Output shape: (1, 5, 16)",
    "Visualizing attention patterns...",
]


def test_basics_prints_the_seed_lines_and_saves_the_png(tmp_path, capsys):
    demo.main(["--out", str(tmp_path)])
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    positions = [lines.index(line) for line in EXPECTED_LINES]
    assert positions == sorted(positions), "the seed lines are out of order"
    png = tmp_path / "attention_patterns.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(png) in printed
    worst = float(printed.split("worst relative difference: ")[1].split()[0])
    assert worst <= 1e-12


def test_help_lists_the_walk_throughs():
    root = Path(demo.__file__).parent
    result = subprocess.run(
        [sys.executable, "demo.py", "--help"], capture_output=True, text=True, check=True, cwd=root
    )
    for command in demo.TOURS:
        assert command in result.stdout


THREAD_PROBE = """
import os, sys
import demo
try:
    demo.main([sys.argv[1], "--help"])  # the thread count is chosen before the command runs
except SystemExit:
    pass
import numpy, torch
print(torch.get_num_threads(), os.environ.get("OPENBLAS_NUM_THREADS", "unset"))
"""


@pytest.mark.slow  # two fresh interpreters that import torch
@pytest.mark.parametrize(
    "omp, command, expected",
    [
        (None, "train-parity", "1 1"),  # one thread by default
        ("2", "train-parity", "2 unset"),  # OMP_NUM_THREADS chooses when it is set
        ("2", "induction", "1 1"),  # except for induction
    ],
)
def test_each_command_runs_on_one_thread_unless_omp_num_threads_says(omp, command, expected):
    root = Path(demo.__file__).parent
    thread_variables = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    env = {k: v for k, v in os.environ.items() if k not in thread_variables}
    if omp is not None:
        env["OMP_NUM_THREADS"] = omp
    result = subprocess.run(
        [sys.executable, "-c", THREAD_PROBE, command],
        capture_output=True,
        text=True,
        check=True,
        cwd=root,
        env=env,
        timeout=300,
    )
    assert result.stdout.split("\n")[-2] == expected, result.stdout
