"""Write a learner's copy of ``numpy_impl`` in which every marked backward body is a stub.

The reference marks each backward body it wants written by hand:

        # EXERCISE BEGIN
        ... the hand-written backward ...
        # EXERCISE END
        return dx

The copy keeps every line outside the markers byte for byte (so its forward passes are the
reference's) and replaces the lines between them with a hint and ``raise NotImplementedError``.
The hint is read off the reference itself, so it never drifts from it:
  - the ``# forward: ...`` comments inside the body: the forward lines to undo, last first;
  - the backward's docstring: what it is given and what it must return, with shapes;
  - the parameters the class owns, with shapes, and the hook points and sub-modules whose
    ``backward`` the body calls.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from .catalog import BY_CLASS, EXERCISES

BEGIN = "# EXERCISE BEGIN"
END = "# EXERCISE END"
REFERENCE_DIR = Path(__file__).resolve().parent.parent / "numpy_impl"

# sizes chosen all different, so a parameter's shape can be read back as axis names
_NAMING = dict(d_vocab=11, d_model=6, n_heads=2, d_head=3, d_mlp=7, n_layers=1, n_ctx=13)
_AXES = {11: "d_vocab", 6: "d_model", 2: "head", 3: "d_head", 7: "d_mlp", 13: "n_ctx"}


@dataclass(frozen=True)
class MarkedBody:
    """One marked backward body in a reference file (line numbers are 0-based, markers included)."""

    file: str
    cls: str
    begin: int     # the line holding BEGIN
    end: int       # the line holding END
    indent: str    # the body's indentation


def find_marked_bodies(source: str, file: str = "<source>"):
    """Every BEGIN/END pair in ``source``, with the class whose ``backward`` holds it.

    Raises ValueError for a marker that is unpaired, nested, misindented, or outside a
    ``backward`` method, so a misplaced marker fails loudly instead of producing a bad copy.
    """
    lines = source.splitlines()
    methods = {}  # line -> (class name, method name) for every line inside a method
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    for line in range(item.lineno - 1, item.end_lineno):
                        methods[line] = (node.name, item.name)
    bodies, open_at = [], None
    for number, line in enumerate(lines):
        stripped = line.strip()
        if stripped not in (BEGIN, END):
            continue
        if stripped == BEGIN:
            if open_at is not None:
                raise ValueError(f"{file}:{number + 1}: {BEGIN} inside another exercise (opened at line {open_at + 1})")
            open_at = number
            continue
        if open_at is None:
            raise ValueError(f"{file}:{number + 1}: {END} without a {BEGIN}")
        indent = lines[open_at][: len(lines[open_at]) - len(lines[open_at].lstrip())]
        if not line.startswith(indent + END):
            raise ValueError(f"{file}:{number + 1}: {END} is not indented like its {BEGIN} (line {open_at + 1})")
        where = methods.get(open_at)
        if where is None or where[1] != "backward" or methods.get(number) != where:
            raise ValueError(f"{file}:{open_at + 1}: exercise markers must sit inside one backward method")
        bodies.append(MarkedBody(file, where[0], open_at, number, indent))
        open_at = None
    if open_at is not None:
        raise ValueError(f"{file}:{open_at + 1}: {BEGIN} without an {END}")
    return bodies


def reference_exercises():
    """{class name: (MarkedBody, reference source)} for every marked backward; checks the catalog matches."""
    found = {}
    for path in sorted(REFERENCE_DIR.glob("*.py")):
        source = path.read_text()
        for body in find_marked_bodies(source, path.name):
            if body.cls not in BY_CLASS:
                raise ValueError(f"{path.name}: {body.cls}.backward is marked as an exercise but is not in exercises/catalog.py")
            if BY_CLASS[body.cls].file != path.name:
                raise ValueError(f"catalog.py puts {body.cls} in {BY_CLASS[body.cls].file}, but it is in {path.name}")
            found[body.cls] = (body, source)
    missing = [exercise.cls for exercise in EXERCISES if exercise.cls not in found]
    if missing:
        raise ValueError(f"catalog.py lists {', '.join(missing)}, but no backward there is marked with {BEGIN}")
    return found


def _parameter_shapes(cls):
    """{name: "[axis, axis]"} for the parameters ``cls`` owns itself (not its sub-modules')."""
    import numpy_impl
    from foundation.config import TransformerConfig
    from numpy_impl.module import Parameter

    cfg = TransformerConfig(**_NAMING)
    module = getattr(numpy_impl, cls)() if cls == "CrossEntropyLoss" else getattr(numpy_impl, cls)(cfg)
    return {
        name: "[" + ", ".join(_AXES.get(size, str(size)) for size in value.shape) + "]"
        for name, value in vars(module).items()
        if isinstance(value, Parameter)
    }


def _docstring_contract(source, cls):
    """(given, returns) from the first line of ``cls.backward``'s docstring: "dout [..] -> dx [..]; ..."."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "backward":
                    first = (ast.get_docstring(item) or "").splitlines()[0]
                    given, _, rest = first.partition("->")
                    return given.strip(), rest.split(";")[0].strip().rstrip(".")
    raise ValueError(f"{cls}.backward has no docstring to read its contract from")


def hint_lines(body: MarkedBody, source: str, directory: str = "DIR"):
    """The comment lines of the stub: what to undo, given what, returning what, adding into what."""
    exercise = BY_CLASS[body.cls]
    number = [e.cls for e in EXERCISES].index(body.cls) + 1
    text = source.splitlines()[body.begin + 1 : body.end]
    forward_lines = [line.split("# forward:", 1)[1].strip() for line in text if "# forward:" in line]
    hooks = list(dict.fromkeys(re.findall(r"self\.(hook_\w+)\.backward\(", "\n".join(text))))
    children = [name for name in dict.fromkeys(re.findall(r"(self\.\w+|\w+)\.backward\(", "\n".join(text)))
                if not name.startswith("self.hook_")]
    given, returns = _docstring_contract(source, body.cls)
    grads = _parameter_shapes(body.cls)
    out = [f"Exercise {number} of {len(EXERCISES)}: {body.cls}.backward ({exercise.what}).",
           f"Check it with: python demo.py exercises check {directory} {exercise.key}",
           f"Given {given}, undo these forward lines, last first:"]
    out += [f"    {line}" for line in forward_lines]
    if grads:
        out.append("Add (+=, never =: gradients accumulate until zero_grad) into:")
        out += [f"    self.{name}.grad {shape}" for name, shape in grads.items()]
    if children:
        out.append("Call the backward of: " + ", ".join(children) + " (each returns its input's gradient).")
    if hooks:
        # the reference's own first hook line, so the example names the gradient it really passes
        example = next(line.strip() for line in text if f"self.{hooks[0]}.backward(" in line)
        out.append("Pass each gradient through its hook point, as the forward passes each activation, e.g.")
        out.append(f"    {example}")
        out.append("  hook points here: " + ", ".join(hooks))
    out.append(f"Return: {returns}.")
    adds = "; add into " + ", ".join(f"{name}.grad {shape}" for name, shape in grads.items()) if grads else ""
    message = (f"{body.cls}.backward is exercise {number} of {len(EXERCISES)}, not written yet: "
               f"given {given}, return {returns}{adds}. The hint above this line lists the forward lines to undo.")
    return out, message


def stub_source(source: str, file: str = "<source>", directory: str = "DIR") -> str:
    """``source`` with every marked body replaced by its hint and a NotImplementedError.

    ``directory`` is the folder the copy goes to, as the learner typed it (for the hint's check command).
    """
    lines = source.splitlines(keepends=True)
    for body in reversed(find_marked_bodies(source, file)):
        comments, message = hint_lines(body, source, directory)
        stub = [f"{body.indent}{BEGIN}\n"]
        stub += [f"{body.indent}# {line}".rstrip() + "\n" for line in comments]
        stub.append(f"{body.indent}raise NotImplementedError(\n")
        stub += [f"{body.indent}    {chunk!r}\n" for chunk in _chunks(message, 80)]
        stub.append(f"{body.indent})\n")
        stub.append(f"{body.indent}{END}\n")
        lines[body.begin : body.end + 1] = stub
    return "".join(lines)


def _chunks(text, width):
    """Split ``text`` at spaces into pieces of about ``width`` characters (adjacent literals join up)."""
    pieces, current = [], ""
    for word in text.split(" "):
        if current and len(current) + len(word) + 1 > width:
            pieces.append(current + " ")
            current = word
        else:
            current = f"{current} {word}" if current else word
    return pieces + [current]


def write_copy(directory, force: bool = False) -> Path:
    """Write the learner's package to ``directory/numpy_impl``; returns that path.

    Refuses to overwrite an existing copy (a learner's work) unless ``force``.
    """
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f"directory must be a path, got {type(directory).__name__}")
    target = Path(directory) / "numpy_impl"
    if target.exists() and not force:
        raise FileExistsError(f"{target} already exists (your work?); pass --force to overwrite it")
    reference_exercises()  # fails early if markers and catalog disagree
    stubs = {path.name: stub_source(path.read_text(), path.name, os.fspath(directory))
             for path in sorted(REFERENCE_DIR.glob("*.py"))}
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for name, text in stubs.items():
        (target / name).write_text(text)
    return target
