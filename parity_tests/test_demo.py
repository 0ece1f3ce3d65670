"""The first walk-through a newcomer runs: it prints the promised lines and writes the figure."""

import subprocess
import sys
from pathlib import Path

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
    result = subprocess.run([sys.executable, "demo.py", "--help"], capture_output=True, text=True, check=True, cwd=root)
    for command in demo.TOURS:
        assert command in result.stdout
