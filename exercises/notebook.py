"""The exercises as a Jupyter notebook: ``python demo.py exercises notebook DIR``.

``write_notebook(DIR)`` writes ``DIR/exercises.ipynb`` (and the learner's copy ``DIR/numpy_impl``
if there is none yet). For each exercise, and each step of one written in steps, the notebook
holds:

    a text cell     the formula and shapes, the forward lines to undo (the stub's own hint)
    a code cell     ``%%backward KEY`` and the body: running it writes the body into the copy,
                    between the exercise's markers (this module's cell magic)
    a code cell     ``check("KEY")``: the command-line checker, the same statuses and hints

The notebook is plain JSON in nbformat 4.5, written without nbformat itself; opening it needs
Jupyter (``pip install notebook``). The checker runs in the kernel exactly as the command line
runs it: each exercise in a learner's process of its own, never in the kernel.
"""

from __future__ import annotations

import ast
import json
import os
import re
import textwrap
from pathlib import Path

from .catalog import EXERCISES, number_of
from .generate import DEFAULT_DIR, PROJECT, REFERENCE_DIR, write_copy
from .steps import BEGIN, END, STEP, find_marked_bodies

_work = [os.path.abspath(DEFAULT_DIR)]


# --- in the kernel ---


def use(directory):
    """The folder the notebook's cells work on (the one holding numpy_impl/)."""
    _work[0] = os.path.abspath(directory)


def load_ipython_extension(ipython):
    """``%load_ext exercises.notebook``: registers the ``%%backward KEY`` cell magic."""
    ipython.register_magic_function(_backward_magic, magic_kind="cell", magic_name="backward")


def _backward_magic(line, cell):
    key = line.strip()
    try:
        path, count = write_body(key, cell)
    except CellError as error:
        print(f"not written: {error}")
        return
    print(f"wrote {count} lines into {path} ({key}); run the next cell to check them")


class CellError(ValueError):
    """A cell's body that does not compile where it would go: nothing is written."""


_cells = {}  # {key: blank lines above the cell's first line}: to say a copy's line as the cell's


def cell_line(key, lineno, directory=None):
    """The line of key's cell (its %%backward line is 1) that is line ``lineno`` (1-based) of the
    copy's file, or None when that line is not in the body the cell wrote."""
    if key not in _cells:
        return None
    exercise, step = _exercise(key)
    path = Path(directory or _work[0]) / "numpy_impl" / exercise.file
    try:
        bodies = find_marked_bodies(path.read_text(), path.name)
        marked = next(b for b in bodies if b.cls == exercise.cls)
    except (OSError, SyntaxError, ValueError, StopIteration):
        return None
    if step is None:
        first, last = marked.begin + 1, marked.end - 1
    else:
        region = next((r for r in marked.steps if r.name == step), None)
        if region is None:
            return None
        first, last = region.first, region.last
    if not first <= lineno - 1 <= last:
        return None
    return lineno - 1 - first + 2 + _cells[key]


def in_cell_lines(text, directory=None):
    """``text`` with each "file.py:N" that a cell wrote followed by "(cell KEY, line K)"."""
    by_file = {}
    for key in _cells:
        by_file.setdefault(_exercise(key)[0].file, []).append(key)

    def say(match):
        for key in by_file.get(match.group(1), []):
            line = cell_line(key, int(match.group(2)), directory)
            if line is not None:
                return f"{match.group(0)} (cell %%backward {key}, line {line})"
        return match.group(0)

    return re.sub(r"\b(\w+\.py):(\d+)\b", say, text)


def write_body(key, body, directory=None):
    """Put ``body`` (unindented Python) between the markers of exercise or step ``key`` in the copy.

    Returns (the file written, the number of lines). The markers stay; everything outside them
    stays byte for byte.
    """
    exercise, step = _exercise(key)
    path = Path(directory or _work[0]) / "numpy_impl" / exercise.file
    source = path.read_text()
    lines = source.splitlines(keepends=True)
    try:
        marked = next(b for b in find_marked_bodies(source, path.name) if b.cls == exercise.cls)
    except StopIteration:
        raise ValueError(
            f"{path} has no '{BEGIN}' ... '{END}' around {exercise.cls}.backward any more"
        ) from None
    if step is None:
        first, last = marked.begin + 1, marked.end - 1
        if marked.steps:
            raise ValueError(
                f"{exercise.key} is written in steps: write each with %%backward "
                f"{exercise.key}.<step>"
            )
    else:
        region = next((r for r in marked.steps if r.name == step), None)
        if region is None:
            raise ValueError(f"{path} has no '{STEP} {step}: ...' line any more")
        first, last = region.first, region.last
    dedented = textwrap.dedent(body)
    leading = len(dedented) - len(dedented.lstrip("\n"))  # blank lines above the cell's first line
    text = dedented.strip("\n")
    new = [
        (marked.indent + line).rstrip() + "\n" if line.strip() else "\n"
        for line in text.splitlines()
    ]
    lines[first : last + 1] = new
    written = "".join(lines)
    try:
        compile(written, str(path), "exec", dont_inherit=True)
    except SyntaxError as error:
        where = error.lineno or 0
        inside = first < where <= first + len(new)
        said = (
            f"line {where - first + 1 + leading} of the cell"
            if inside
            else f"{path.name}:{where}, outside the cell's body (a block the cell left open?)"
        )
        raise CellError(
            f"SyntaxError: {error.msg} at {said}"
            + (f": `{(error.text or '').strip()}`" if error.text else "")
            + f"; {path.name} keeps its last version"
        ) from None
    path.write_text(written)
    _cells[key] = leading
    return path, len(new)


def check(key=None, directory=None, time_limit=None):
    """Run the checker on exercise or step ``key`` (default: all) and print its table."""
    from .check import TIME_LIMIT, format_results
    from .check import check as run_check

    directory = directory or _work[0]
    results = run_check(
        directory, keys=None if key is None else [key], time_limit=time_limit or TIME_LIMIT
    )
    print(in_cell_lines(format_results(results, directory), directory))


def _exercise(key):
    name, _, step = key.partition(".")
    exercise = next((e for e in EXERCISES if e.key == name), None)
    if exercise is None or (step and step not in exercise.steps):
        keys = [k for e in EXERCISES for k in [e.key] + e.step_keys()]
        raise ValueError(f"unknown exercise {key!r}; choose from: {', '.join(keys)}")
    return exercise, step or None


# --- writing the notebook ---


def write_notebook(directory=DEFAULT_DIR, force=False):
    """Write ``directory/exercises.ipynb`` (and ``directory/numpy_impl`` when missing); returns
    (path, copy or None)."""
    path = Path(directory) / "exercises.ipynb"
    if path.exists() and not force:
        raise FileExistsError(f"{path} already exists (your work?); pass --force to overwrite it")
    copy = None
    if not (Path(directory) / "numpy_impl" / "__init__.py").is_file():
        copy = write_copy(directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    notebook = build_notebook(Path(directory), copy_source=Path(directory) / "numpy_impl")
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(notebook, indent=1) + "\n")
    os.replace(temporary, path)
    return path, copy


def build_notebook(directory, copy_source):
    """The notebook as a dict (nbformat 4.5); the cells' bodies come from the copy in
    ``copy_source``."""
    cells = [
        _markdown("intro", INTRO.format(directory=directory)),
        _code(
            "setup", SETUP.format(project=str(PROJECT), directory=str(Path(directory).resolve()))
        ),
    ]
    for exercise in EXERCISES:
        copy_text = (copy_source / exercise.file).read_text()
        reference_text = (REFERENCE_DIR / exercise.file).read_text()
        body = next(
            b for b in find_marked_bodies(copy_text, exercise.file) if b.cls == exercise.cls
        )
        lines = copy_text.splitlines()
        number = number_of(exercise.key)
        cells.append(
            _markdown(
                f"md-{exercise.key}", _exercise_text(exercise, number, reference_text, body, lines)
            )
        )
        if body.steps:
            for step in body.steps:
                key = f"{exercise.key}.{step.name}"
                cells.append(
                    _markdown(
                        f"md-{exercise.key}-{step.name}",
                        f"### {number_of(key)} `{key}`: {step.title}\n\nEdit the body below "
                        "(its comments are the hint), run it, then run the check under it.",
                    )
                )
                cells.append(
                    _code(
                        f"write-{exercise.key}-{step.name}",
                        f"%%backward {key}\n" + _dedented(lines[step.first : step.last + 1]),
                    )
                )
                cells.append(_code(f"check-{exercise.key}-{step.name}", f'check("{key}")'))
            cells.append(
                _markdown(
                    f"md-{exercise.key}-whole",
                    f"All {len(body.steps)} steps of `{exercise.key}` together:",
                )
            )
        else:
            cells.append(
                _code(
                    f"write-{exercise.key}",
                    f"%%backward {exercise.key}\n" + _dedented(lines[body.begin + 1 : body.end]),
                )
            )
        cells.append(_code(f"check-{exercise.key}", f'check("{exercise.key}")'))
    cells.append(_markdown("md-all", "## Everything, and all of yours together in the whole model"))
    cells.append(_code("check-all", "check()"))
    return {
        "cells": cells,
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


INTRO = """# Backprop exercises: write every backward pass yourself

Each exercise below is one backward pass of the NumPy reference, with its formula, its shapes and
the forward lines to undo. Edit the body in the `%%backward` cell (it starts as the stub: hints in
comments and `raise NotImplementedError`), run the cell to write it into your copy
(`{directory}/numpy_impl/`), then run the `check(...)` cell under it: the same checker as
`python demo.py exercises check {directory} KEY`, with the same statuses (done, not started, wrong,
borrowed, ...) and hints. Run the setup cell first. Your code runs in a process of its own, never
in this kernel."""

SETUP = """import sys
sys.path.insert(0, r"{project}")  # the project first: its exercises/ and its reference numpy_impl/
%load_ext exercises.notebook
from exercises.notebook import check, use
use(r"{directory}")"""


def _exercise_text(exercise, number, reference_text, body, lines):
    formula = _formula(reference_text, exercise.cls)
    hint = [
        line.strip()[2:] if line.strip().startswith("# ") else line.strip().lstrip("#")
        for line in lines[body.begin + 1 : body.end]
        if line.strip().startswith("#") and not line.strip().startswith((STEP, BEGIN, END))
    ]
    parts = [
        f"## {number}. `{exercise.key}`: `{exercise.cls}.backward` in `{exercise.file}`",
        f"*{exercise.what}*",
        "",
        "The forward:",
        "",
        "```",
        formula,
        "```",
        "",
        "What to write (the hint in your copy):",
        "",
        "```",
        "\n".join(hint),
        "```",
    ]
    return "\n".join(parts)


def _formula(source, cls=None):
    """The formula of ``cls`` from its file's docstring: the indented lines, unless they never name
    one of the class's parameters while other lines do (positional.py: the sinusoids are indented,
    "Learned (GPT-2): pos_embed[b, p] = W_pos[p]" is not)."""
    docstring = ast.get_docstring(ast.parse(source)) or ""
    block = [line for line in docstring.splitlines() if line.startswith("    ")]
    formula = textwrap.dedent("\n".join(block)).strip() or docstring.splitlines()[0]
    names = _parameter_names(source, cls) if cls else []
    if names and not any(re.search(rf"\b{name}\b", formula) for name in names):
        lines = [
            line.strip()
            for line in docstring.splitlines()
            if any(re.search(rf"\b{name}\b", line) for name in names)
        ]
        formula = "\n".join(lines) or formula
    return formula


def _parameter_names(source, cls):
    """The names ``cls`` gives its parameters: self.NAME = Parameter(...) in its __init__."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for item in ast.walk(node):
                if (
                    isinstance(item, ast.Assign)
                    and isinstance(item.value, ast.Call)
                    and getattr(item.value.func, "id", "") == "Parameter"
                ):
                    names += [t.attr for t in item.targets if isinstance(t, ast.Attribute)]
    return names


def _dedented(lines):
    return textwrap.dedent("\n".join(lines)).strip("\n")


def _markdown(cell_id, text):
    return {"cell_type": "markdown", "id": _id(cell_id), "metadata": {}, "source": text}


def _code(cell_id, text):
    return {
        "cell_type": "code",
        "id": _id(cell_id),
        "metadata": {},
        "source": text,
        "execution_count": None,
        "outputs": [],
    }


def _id(text):
    return re.sub(r"[^a-zA-Z0-9_-]", "-", text)[:64]
