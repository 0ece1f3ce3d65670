"""Learners' copies for the exercise tests: bodies put back and mistakes planted by the tests' own
text surgery (``marked_regions``), not with the generator's helpers."""

import shutil

from exercises.generate import REFERENCE_DIR

BEGIN, END = "# EXERCISE BEGIN", "# EXERCISE END"


def marked_regions(lines):
    """[(begin, end)] line indices of each BEGIN ... END pair, markers included."""
    regions, begin = [], None
    for number, line in enumerate(lines):
        if line.strip() == BEGIN:
            begin = number
        elif line.strip() == END:
            regions.append((begin, number))
    return regions


def outside(lines):
    """The lines outside every marked body (the markers themselves kept)."""
    inside = set()
    for begin, end in marked_regions(lines):
        inside.update(range(begin + 1, end))
    return [line for number, line in enumerate(lines) if number not in inside]


def put_back_reference_bodies(package_dir):
    """Replace each stub in the copy with the reference's body for the same file."""
    for path in package_dir.glob("*.py"):
        mine = path.read_text().splitlines(keepends=True)
        reference = (REFERENCE_DIR / path.name).read_text().splitlines(keepends=True)
        mine_regions, reference_regions = marked_regions(mine), marked_regions(reference)
        assert len(mine_regions) == len(reference_regions), path.name
        for (b, e), (rb, re_) in reversed(list(zip(mine_regions, reference_regions))):
            mine[b : e + 1] = reference[rb : re_ + 1]
        path.write_text("".join(mine))


def plant(package_dir, file, old, new):
    path = package_dir / file
    text = path.read_text()
    assert text.count(old) == 1, f"{file} no longer contains {old!r}; update the planted mistake"
    path.write_text(text.replace(old, new))


def copy_of(solved, tmp_path):
    """A copy of the solved exercises in tmp_path."""
    shutil.copytree(solved / "numpy_impl", tmp_path / "numpy_impl")
    return tmp_path


def planted_copy(solved, tmp_path, file, old, new):
    """A copy of the solved exercises in tmp_path with one line of ``file`` replaced."""
    plant(copy_of(solved, tmp_path) / "numpy_impl", file, old, new)
    return tmp_path
