"""Write a learner's copy of ``numpy_impl`` in which every marked backward body is a stub.

The reference marks each backward body it wants written by hand (``steps.py`` reads the marks):

        # EXERCISE BEGIN
        # EXERCISE STEP name: what it does    (optional: steps, each checked on its own)
        ... the hand-written backward ...
        # EXERCISE END
        return dx

The copy keeps every line outside the markers byte for byte (so its forward passes are the
reference's) and replaces the lines between them with a hint and ``raise NotImplementedError``
(one per step, under the step's own marker line). The hint is read off the reference itself,
so it never drifts from it:
  - the ``# forward: ...`` comments inside the body: the forward lines to undo, last first,
    grouped under the branch they sit in (the ReLU and the GELU branch, post-norm only, ...);
  - the backward's docstring: what it is given and what it must return, with shapes;
  - the parameters the class owns, with shapes, and the hook points and sub-modules whose
    ``backward`` the body calls; for a step, the names it is given and the names it must leave.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .catalog import BY_CLASS, EXERCISES

# MarkedBody: part of the API
from .steps import BEGIN, END, STEP, MarkedBody, find_marked_bodies  # noqa: F401

PROJECT = Path(__file__).resolve().parent.parent
REFERENCE_DIR = PROJECT / "numpy_impl"
# where init and check work when no folder is given (git-ignored in the project)
DEFAULT_DIR = "mywork"

# sizes chosen all different, so a parameter's shape can be read back as axis names
_NAMING = dict(d_vocab=11, d_model=6, n_heads=2, d_head=3, d_mlp=7, n_layers=1, n_ctx=13)
# attention's are read off grouped heads (kv_head != head), so the names say which heads an axis
# counts; kv_head is head where the key/value heads are not shared
_GROUPED_NAMING = dict(_NAMING, n_heads=8, n_key_value_heads=2)
_AXES = {
    11: "d_vocab",
    6: "d_model",
    2: "head",
    3: "d_head",
    7: "d_mlp",
    13: "n_ctx",
    4: "batch",
    5: "pos",
}
_GROUPED_AXES = {
    **{size: name for size, name in _AXES.items() if name != "head"},
    8: "head",
    2: "kv_head",
}
_BRANCHES = {  # an if's test -> (what its branch is called, what its else is called)
    'self.cfg.act_fn == "relu"': ("the ReLU branch", "the GELU branches"),
    'self.cfg.act_fn == "gelu"': (
        'the exact GELU branch (act_fn "gelu")',
        'the GELU branch (act_fn "gelu_new")',
    ),
}


def reference_exercises():
    """{class name: (MarkedBody, reference source)} for every marked backward; checks the catalog
    matches."""
    found = {}
    for path in sorted(REFERENCE_DIR.glob("*.py")):
        source = path.read_text()
        for body in find_marked_bodies(source, path.name):
            if body.cls not in BY_CLASS:
                raise ValueError(
                    f"{path.name}: {body.cls}.backward is marked as an exercise but is not in "
                    f"exercises/catalog.py"
                )
            exercise = BY_CLASS[body.cls]
            if exercise.file != path.name:
                raise ValueError(
                    f"catalog.py puts {body.cls} in {exercise.file}, but it is in {path.name}"
                )
            if tuple(step.name for step in body.steps) != exercise.steps:
                raise ValueError(
                    f"{path.name}: {body.cls}.backward's steps are {[s.name for s in body.steps]}, "
                    f"but catalog.py lists {list(exercise.steps)}"
                )
            found[body.cls] = (body, source)
    missing = [exercise.cls for exercise in EXERCISES if exercise.cls not in found]
    if missing:
        raise ValueError(
            f"catalog.py lists {', '.join(missing)}, but no backward there is marked with {BEGIN}"
        )
    return found


def _naming_module(cls):
    """(a module of class ``cls`` built at the naming sizes, {size: axis name} for them)."""
    import numpy_impl
    from foundation.contract.config import TransformerConfig

    if cls == "CrossEntropyLoss":
        return numpy_impl.CrossEntropyLoss(), _AXES
    if cls == "MultiHeadAttention":  # its backward serves GroupedQueryAttention too
        return numpy_impl.GroupedQueryAttention(TransformerConfig(**_GROUPED_NAMING)), _GROUPED_AXES
    return getattr(numpy_impl, cls)(TransformerConfig(**_NAMING)), _AXES


def _shape_words(shape, axes=_AXES):
    return "[" + ", ".join(axes.get(size, str(size)) for size in shape) + "]"


def _parameter_shapes(cls):
    """{name: "[axis, axis]"} for the parameters ``cls`` owns itself (not its sub-modules').

    A parameter stored under a leading underscore (GroupedQueryAttention's ``_W_K``) is named as
    the backward reads it, through its property (``W_K``).
    """
    from numpy_impl.module import Parameter

    module, axes = _naming_module(cls)
    return {
        name.lstrip("_"): _shape_words(value.shape, axes)
        for name, value in vars(module).items()
        if isinstance(value, Parameter)
    }


def _step_shapes(body, source):
    """{name: "[axes]"} of every name the steps of ``body`` are given or leave, from a run of the
    reference."""
    import numpy_impl

    from .steps import prologue_values, region_function

    module, axes = _naming_module(body.cls)
    # [batch, pos, d_model]
    x = np.random.default_rng(0).standard_normal((4, 5, _NAMING["d_model"]))
    out = module.forward(x)
    lines = source.splitlines()
    namespace = vars(__import__(type(module).__module__, fromlist=["_"]))
    values = prologue_values(body, lines, module, str(REFERENCE_DIR / body.file), namespace)
    values[body.argument] = np.zeros_like(out)
    for step in body.steps:
        function = region_function(
            lines, step.first, step.last, step.inputs, str(REFERENCE_DIR / body.file), namespace
        )
        values.update(function(module, **{name: values[name] for name in step.inputs}))
    del numpy_impl
    return {
        name: _shape_words(np.shape(value), axes)
        for name, value in values.items()
        if isinstance(value, np.ndarray)
    }


def _docstring_contract(source, cls):
    """(given, returns) from the first line of ``cls.backward``'s docstring: "dout [..] -> dx [..];
    ..."."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "backward":
                    first = (ast.get_docstring(item) or "").splitlines()[0]
                    given, _, rest = first.partition("->")
                    return given.strip(), rest.split(";")[0].strip().rstrip(".")
    raise ValueError(f"{cls}.backward has no docstring to read its contract from")


def _forward_lines(source, first, last):
    """The ``# forward:`` lines of source lines first..last (0-based), each with the branches it
    sits in, outermost first: a tuple of (if node, what its branch is called)."""
    lines = source.splitlines()
    ifs = [node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.If)]
    ifs.sort(key=lambda node: node.lineno)  # outer ifs start first
    found = []
    for number in range(first, last + 1):
        if "# forward:" not in lines[number]:
            continue
        branches = []
        for node in ifs:
            body_end = node.body[-1].end_lineno
            in_body = node.lineno < number + 1 <= body_end
            in_else = node.orelse and body_end < number + 1 <= node.orelse[-1].end_lineno
            if not (in_body or in_else):
                continue
            # the test's text read only here: each read splits the source
            test = ast.get_source_segment(source, node.test)
            names = _BRANCHES.get(test, (f"if {test}", f"else (not {test})"))
            if in_body:
                branches.append((node, names[0]))
            elif not _is_elif(node, lines):  # an elif's own branch names the line
                branches.append((node, names[1]))
        found.append((tuple(branches), lines[number].split("# forward:", 1)[1].strip()))
    return found


def _is_elif(node, lines):
    """Whether the else of ``node`` is an ``elif`` (one branch of a chain, not an if inside an
    else)."""
    chained = len(node.orelse) == 1 and isinstance(node.orelse[0], ast.If)
    return chained and lines[node.orelse[0].lineno - 1].lstrip().startswith("elif")


def _undo_lines(forward):
    """The hint's lines: each branch's heading where the line enters it, indented by depth, so an
    if inside an else reads as inside it."""
    out, current = [], ()
    for branches, line in forward:
        shared = 0
        while shared < min(len(branches), len(current)) and branches[shared] == current[shared]:
            shared += 1
        for depth in range(shared, len(branches)):
            out.append("  " + "    " * depth + f"{branches[depth][1]}:")
        current = branches
        out.append(("      " + "    " * (len(branches) - 1) if branches else "    ") + line)
    return out


def _listed(label, items, width=96):
    """``label item, item, ...`` on as many comment lines as it takes, continuation lines
    indented."""
    out, current = [], label
    for item in items:
        piece = f" {item}," if item is not items[-1] else f" {item}"
        if len(current) + len(piece) > width and current != label:
            out.append(current)
            current = " " * len(label) + piece
        else:
            current += piece
    return out + [current]


def _calls(text):
    hooks = list(dict.fromkeys(re.findall(r"self\.(hook_\w+)\.backward\(", text)))
    children = [
        name
        for name in dict.fromkeys(re.findall(r"(self\.\w+|\w+)\.backward\(", text))
        if not name.startswith("self.hook_")
    ]
    return hooks, children


def hint_lines(body: MarkedBody, source: str, directory: str = "DIR"):
    """The comment lines of the stub (for a body without steps): what to undo, given what, returning
    what."""
    exercise = BY_CLASS[body.cls]
    number = [e.cls for e in EXERCISES].index(body.cls) + 1
    text = "\n".join(source.splitlines()[body.begin + 1 : body.end])
    hooks, children = _calls(text)
    given, returns = _docstring_contract(source, body.cls)
    grads = _parameter_shapes(body.cls)
    out = [
        f"Exercise {number} of {len(EXERCISES)}: {body.cls}.backward ({exercise.what}).",
        f"Check it with: python demo.py exercises check {directory} {exercise.key}",
        f"Given {given}, undo these forward lines, last first:",
    ]
    out += _undo_lines(_forward_lines(source, body.begin + 1, body.end - 1))
    if grads:
        out.append("Add (+=, never =: gradients accumulate until zero_grad) into:")
        out += [f"    self.{name}.grad {shape}" for name, shape in grads.items()]
    if children:
        out.append(
            "Call the backward of: " + ", ".join(children) + " (each returns its input's gradient)."
        )
    if hooks:
        # the reference's own first hook line, so the example names the gradient it really passes
        example = next(
            line.strip() for line in text.splitlines() if f"self.{hooks[0]}.backward(" in line
        )
        out.append(
            "Pass each gradient through its hook point, as the forward passes each activation, e.g."
        )
        out.append(f"    {example}")
        out.append("  hook points here: " + ", ".join(hooks))
    out.append(f"Return: {returns}.")
    adds = (
        "; add into " + ", ".join(f"{name}.grad {shape}" for name, shape in grads.items())
        if grads
        else ""
    )
    message = (
        f"{body.cls}.backward is exercise {number} of {len(EXERCISES)}, not written yet: "
        f"given {given}, return {returns}{adds}. The hint above this line lists the forward lines "
        f"to undo."
    )
    return out, message


def step_hint_lines(body: MarkedBody, source: str, directory: str = "DIR"):
    """(the body's header comments, [(step, comments, message)]) for a body written in steps."""
    exercise = BY_CLASS[body.cls]
    number = [e.cls for e in EXERCISES].index(body.cls) + 1
    given, returns = _docstring_contract(source, body.cls)
    shapes = _step_shapes(body, source)
    lines = source.splitlines()
    header = [
        f"Exercise {number} of {len(EXERCISES)}: {body.cls}.backward ({exercise.what}).",
        f"Given {given}, return {returns}.",
        f"It comes in {len(body.steps)} steps, each checked on its own, and then the whole:",
        f"    python demo.py exercises check {directory} {exercise.key}.<step>   (one step)",
        f"    python demo.py exercises check {directory} {exercise.key}          (every step, then "
        f"the whole)",
        f"Each step starts from the names it is given (and self, and what {exercise.file}'s "
        f"backward unpacks",
        "from self.cache above) and must leave the names it makes for the steps below.",
    ]
    if any("kv_head" in shape for shape in shapes.values()):
        header.append(
            "kv_head counts the key/value heads: n_key_value_heads of them where heads are shared "
            "(GroupedQueryAttention), else kv_head is head."
        )
    grads_of = _parameter_shapes(body.cls)
    out = []
    for index, step in enumerate(body.steps, 1):
        text = "\n".join(lines[step.first : step.last + 1])
        hooks, _ = _calls(text)
        added = [name for name in grads_of if re.search(rf"self\.{name}\.grad\s*\+=", text)]
        comments = [
            f"Step {index} of {len(body.steps)}: {step.title}.",
            f"Check it with: python demo.py exercises check {directory} {exercise.key}.{step.name}",
        ]
        comments += _listed(
            "Given:", [f"{name} {shapes.get(name, '')}".strip() for name in step.inputs]
        )
        comments += _listed(
            "Make: ", [f"{name} {shapes.get(name, '')}".strip() for name in step.outputs]
        )
        forward = _forward_lines(source, step.first, step.last)
        if forward:
            comments.append("Undo these forward lines, last first:")
            comments += _undo_lines(forward)
        if added:
            comments += _listed(
                "Add (+=) into:", [f"self.{name}.grad {grads_of[name]}" for name in added]
            )
        if hooks:
            example = next(
                line.strip() for line in text.splitlines() if f"self.{hooks[0]}.backward(" in line
            )
            comments.append(
                f"Pass the gradient through its hook point{'s' if len(hooks) > 1 else ''}: "
                + ", ".join(hooks)
                + ", e.g."
            )
            comments.append(f"    {example}")
        message = (
            f"{body.cls}.backward, step {index} ({step.name}) of exercise {number}, not written "
            f"yet: given "
            f"{', '.join(step.inputs)}, make {', '.join(step.outputs)}. The hint above this line "
            f"says how."
        )
        out.append((step, comments, message))
    return header, out


def stub_source(source: str, file: str = "<source>", directory: str = "DIR") -> str:
    """``source`` with every marked body replaced by its hint and a NotImplementedError (one per
    step).

    ``directory`` is the folder the copy goes to, as the learner typed it (for the hint's check
    command).
    """
    lines = source.splitlines(keepends=True)
    for body in reversed(find_marked_bodies(source, file)):
        indent = body.indent
        stub = [f"{indent}{BEGIN}\n"]
        if body.steps:
            header, steps = step_hint_lines(body, source, directory)
            stub += [f"{indent}# {line}".rstrip() + "\n" for line in header]
            for step, comments, message in steps:
                stub.append(f"{indent}{STEP} {step.name}: {step.title}\n")
                stub += [f"{indent}# {line}".rstrip() + "\n" for line in comments]
                stub += _raise_lines(indent, message)
        else:
            comments, message = hint_lines(body, source, directory)
            stub += [f"{indent}# {line}".rstrip() + "\n" for line in comments]
            stub += _raise_lines(indent, message)
        stub.append(f"{indent}{END}\n")
        lines[body.begin : body.end + 1] = stub
    return "".join(lines)


def _raise_lines(indent, message):
    return (
        [f"{indent}raise NotImplementedError(\n"]
        + [f"{indent}    {chunk!r}\n" for chunk in _chunks(message, 80)]
        + [f"{indent})\n"]
    )


def _chunks(text, width):
    """Split ``text`` at spaces into pieces of about ``width`` characters (adjacent literals join
    up)."""
    pieces, current = [], ""
    for word in text.split(" "):
        if current and len(current) + len(word) + 1 > width:
            pieces.append(current + " ")
            current = word
        else:
            current = f"{current} {word}" if current else word
    return pieces + [current]


def project_packages():
    """The project's own packages: every folder directly in the project that holds an
    __init__.py."""
    return sorted(path for path in PROJECT.iterdir() if (path / "__init__.py").is_file())


def check_target(directory):
    """``directory/numpy_impl``, refused when it would be, or sit inside, one of the project's own
    packages."""
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f"directory must be a path, got {type(directory).__name__}")
    target = Path(directory) / "numpy_impl"
    resolved = target.resolve()
    for package in project_packages():
        if resolved == package.resolve() or resolved.is_relative_to(package.resolve()):
            what = (
                "the reference itself"
                if package.name == "numpy_impl"
                else f"inside the project's package {package.name}/"
            )
            raise PermissionError(
                f"{target} is {what}: init never writes into the project's own packages, with or "
                f"without --force; "
                f"choose a folder of your own, e.g. python demo.py exercises init {DEFAULT_DIR}"
            )
    return target


def write_copy(directory=DEFAULT_DIR, force: bool = False) -> Path:
    """Write the learner's package to ``directory/numpy_impl``; returns that path.

    Refuses to overwrite an existing copy (a learner's work) unless ``force``, and refuses, even
    with ``force``, a target inside the project's own packages (``init .`` from the project root
    would otherwise replace the reference with stubs).
    """
    target = check_target(directory)
    try:
        os.fsdecode(os.fspath(directory)).encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsdecode(os.fspath(directory))
        raise ValueError(
            f"directory {shown!a} is not a UTF-8 name: the copy's hints name their "
            "folder in UTF-8 source; choose a folder whose name is"
        ) from None
    if target.exists() and not force:
        raise FileExistsError(f"{target} already exists (your work?); pass --force to overwrite it")
    reference_exercises()  # fails early if markers and catalog disagree
    stubs = {
        path.name: stub_source(path.read_text(), path.name, os.fspath(directory))
        for path in sorted(REFERENCE_DIR.glob("*.py"))
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".numpy_impl-", dir=target.parent))  # whole, or nothing
    try:
        for name, text in stubs.items():
            (staging / name).write_text(text)
        if target.is_symlink():
            target.unlink()
        elif target.exists():
            shutil.rmtree(target)
        staging.chmod(0o777 & ~_umask())
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask
