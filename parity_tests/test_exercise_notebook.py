"""The exercises as a notebook: written, valid, and run end to end with nbclient and ipykernel.

The stub notebook must run and report "not started" for every exercise; the same notebook with
the reference's bodies in its ``%%backward`` cells must reach "done" everywhere, through the
same checker as the command line. Running them needs nbformat, nbclient and ipykernel (the
test extra); without them those tests skip and say so.
"""

import importlib.util
import re
import textwrap

import pytest

from exercises.catalog import EXERCISES
from exercises.generate import REFERENCE_DIR
from exercises.notebook import write_body, write_notebook
from exercises.steps import find_marked_bodies
from parity_tests.copies import outside

MISSING = [
    name for name in ("nbformat", "nbclient", "ipykernel") if importlib.util.find_spec(name) is None
]
needs_jupyter = pytest.mark.skipif(
    bool(MISSING),
    reason=f"running a notebook needs {', '.join(MISSING)} (pip install -r requirements.txt)",
)
KEYS = [key for exercise in EXERCISES for key in exercise.step_keys() + [exercise.key]]


def reference_bodies():
    """{key: the reference's body for exercise or step key, unindented}."""
    bodies = {}
    for exercise in EXERCISES:
        source = (REFERENCE_DIR / exercise.file).read_text()
        lines = source.splitlines()
        body = next(b for b in find_marked_bodies(source, exercise.file) if b.cls == exercise.cls)
        if body.steps:
            for step in body.steps:
                bodies[f"{exercise.key}.{step.name}"] = textwrap.dedent(
                    "\n".join(lines[step.first : step.last + 1])
                )
        else:
            bodies[exercise.key] = textwrap.dedent("\n".join(lines[body.begin + 1 : body.end]))
    return bodies


def test_the_notebook_has_a_writing_and_a_checking_cell_per_exercise_and_step(tmp_path):
    path, copy = write_notebook(tmp_path)
    assert copy == tmp_path / "numpy_impl" and (copy / "attention.py").is_file()
    import json

    notebook = json.loads(path.read_text())
    sources = [cell["source"] for cell in notebook["cells"]]
    for key in reference_bodies():
        assert any(source.startswith(f"%%backward {key}\n") for source in sources), key
    for key in KEYS:
        assert f'check("{key}")' in sources, key
    assert "check()" in sources
    text = "\n".join(sources)
    assert "normalized = centered / scale" in text, "the forward lines to undo are in the notebook"
    assert "(x - mean(x)) / sqrt(var(x) + eps) * w + b" in text, "and the formula"
    with pytest.raises(FileExistsError, match="--force"):
        write_notebook(tmp_path)


@pytest.mark.skipif(
    importlib.util.find_spec("nbformat") is None, reason="validating a notebook needs nbformat"
)
def test_the_notebook_is_valid_nbformat(tmp_path):
    import nbformat

    path, _ = write_notebook(tmp_path)
    nbformat.validate(nbformat.read(path, as_version=4))


def test_a_cells_body_goes_between_the_markers_and_nowhere_else(tmp_path):
    from exercises.check import check

    write_notebook(tmp_path)
    before = {
        path.name: path.read_text().splitlines() for path in (tmp_path / "numpy_impl").glob("*.py")
    }
    bodies = reference_bodies()
    for key in ("layernorm", "attention.softmax"):
        write_body(key, bodies[key], tmp_path)
    for path in (tmp_path / "numpy_impl").glob("*.py"):
        assert outside(path.read_text().splitlines()) == outside(before[path.name]), path.name
    results = {
        r.key: r.status
        for r in check(tmp_path, keys=["layernorm", "attention.softmax", "attention.output"])
    }
    assert results == {
        "layernorm": "done",
        "attention.softmax": "done",
        "attention.output": "not started",
    }
    with pytest.raises(ValueError, match="written in steps"):
        write_body("attention", "pass", tmp_path)
    with pytest.raises(ValueError, match="unknown exercise"):
        write_body("softmax", "pass", tmp_path)


def test_the_command_writes_the_notebook(tmp_path, capsys):
    import demo

    demo.main(["exercises", "notebook", str(tmp_path / "work")])
    out = capsys.readouterr().out
    assert (tmp_path / "work" / "exercises.ipynb").is_file() and "Open it in Jupyter" in out


def execute(path):
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    ).execute()
    outputs = {}
    for cell in notebook.cells:
        if cell.cell_type == "code":
            texts = [
                output.get("text", "") for output in cell.outputs if output.output_type == "stream"
            ]
            errors = [output for output in cell.outputs if output.output_type == "error"]
            assert not errors, f"{cell.id}: {errors}"
            outputs[cell.source.splitlines()[0]] = "".join(texts)
    return outputs


@pytest.mark.slow
@needs_jupyter
def test_the_stub_notebook_runs_and_reports_not_started(tmp_path):
    path, _ = write_notebook(tmp_path)
    outputs = execute(path)
    for key in KEYS:
        assert re.search(rf"\b{re.escape(key)} +not started", outputs[f'check("{key}")']), outputs[
            f'check("{key}")'
        ]
    assert "0 of 17 checked done" in outputs["check()"]


@pytest.mark.slow
@needs_jupyter
def test_a_solved_notebook_reaches_all_done(tmp_path):
    import nbformat

    path, _ = write_notebook(tmp_path)
    notebook = nbformat.read(path, as_version=4)
    bodies = reference_bodies()
    for cell in notebook.cells:
        if cell.cell_type == "code" and cell.source.startswith("%%backward "):
            key = cell.source.splitlines()[0].split()[1]
            cell.source = f"%%backward {key}\n{bodies[key]}"
    nbformat.write(notebook, path)
    outputs = execute(path)
    for key in KEYS:
        assert re.search(rf"\b{re.escape(key)} +done", outputs[f'check("{key}")']), outputs[
            f'check("{key}")'
        ]
    assert "17 of 17 checked done" in outputs["check()"] and re.search(
        r"all together +done", outputs["check()"]
    )


def test_each_exercise_shows_its_own_formula(tmp_path):
    """The positional exercise is the learned table: its formula is W_pos's, not the sinusoids'."""
    import json

    path, _ = write_notebook(tmp_path)
    cells = {cell["id"]: cell["source"] for cell in json.loads(path.read_text())["cells"]}
    positional = cells["md-positional"].split("What to write")[0]
    assert "W_pos[p]" in positional and "sin(" not in positional, positional
    assert "W_E[tokens[b, p]]" in cells["md-embedding"]


def test_a_cell_that_does_not_compile_is_not_written_and_says_its_line(tmp_path):
    from exercises.notebook import CellError

    write_notebook(tmp_path)
    target = tmp_path / "numpy_impl" / "unembed.py"
    before = target.read_text()
    body = "\nx = self.cache\nself.W_U.grad += (dlogits\ndx = 0\n"
    with pytest.raises(
        CellError, match=r"at line (3|4|5) of the cell.*unembed.py keeps its last version"
    ):
        write_body("unembed", body, tmp_path)
    assert target.read_text() == before, "a body that does not compile never reaches the copy"


def test_the_checkers_lines_are_said_as_the_cells(tmp_path):
    from exercises.check import check, format_results
    from exercises.notebook import in_cell_lines

    write_notebook(tmp_path)
    body = reference_bodies()["unembed"].replace("dlogits.sum(axis=(0, 1))", "dlogits.sum(axis=0)")
    write_body("unembed", "\n" + body, tmp_path)
    text = in_cell_lines(format_results(check(tmp_path, keys=["unembed"]), tmp_path), tmp_path)
    line = next(
        n for n, text_line in enumerate(("\n" + body).splitlines(), 2) if "axis=0" in text_line
    )
    assert f"(cell %%backward unembed, line {line})" in text, text
