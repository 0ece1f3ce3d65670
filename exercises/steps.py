"""The marked regions of a reference file, and how to run one of them on its own.

A backward body the learner writes is marked in the reference:

        x, q_h, k_h = self.cache                 <- the prologue: reference lines, never stubbed
        # EXERCISE BEGIN
        # EXERCISE STEP softmax: the softmax's backward, row by row     <- optional sub-steps
        ...
        # EXERCISE STEP scores: the mask and the 1/sqrt(d_head) scale
        ...
        # EXERCISE END
        return dx                                <- the epilogue

A body with steps is checked one step at a time as well as whole. A step is run on its own by
wrapping its lines in a function whose arguments are the names the step reads before it
writes them (``Region.inputs``), and whose result is every local it leaves behind; the names
later lines read (``Region.outputs``) are what the step must produce. The wrapper keeps the
file's line numbers, so a traceback points at the learner's own line.

This module imports only the standard library: the learner's process (``learner.py``) uses it.
"""

from __future__ import annotations

import ast
import builtins
import functools
from dataclasses import dataclass, field

BEGIN = "# EXERCISE BEGIN"
END = "# EXERCISE END"
STEP = "# EXERCISE STEP"


@dataclass(frozen=True)
class Region:
    """A run of lines of one backward (line numbers 0-based; ``first``..``last`` inclusive)."""

    name: str  # the step's name ("softmax"), or "" for the whole body
    title: str  # what the step does, from its marker line
    first: int  # its first line after the marker
    last: int  # its last line before the next marker
    # names read before written: gradients (d...) and the prologue's cached values
    inputs: tuple = ()
    outputs: tuple = ()  # names written here and read by a later step or the epilogue


@dataclass(frozen=True)
class MarkedBody:
    """One marked backward body in a reference file (line numbers are 0-based, markers included)."""

    file: str
    cls: str
    begin: int  # the line holding BEGIN
    end: int  # the line holding END
    indent: str  # the body's indentation
    prologue: tuple = ()  # (first, last) of the lines between the docstring and BEGIN, or ()
    epilogue: tuple = ()  # (first, last) of the lines after END, to the method's end
    argument: str = ""  # backward's gradient argument: dout, dlogits, dresid_post, ...
    # Region per ``# EXERCISE STEP``; empty: one whole body
    steps: tuple = field(default_factory=tuple)


@functools.lru_cache(maxsize=64)
def find_marked_bodies(source: str, file: str = "<source>"):
    """Every BEGIN/END pair in ``source``, with the class whose ``backward`` holds it, and its
    steps: a tuple of ``MarkedBody``.

    Raises ValueError for a marker that is unpaired, nested, misindented, outside a ``backward``
    method, or a step marker outside a body or after code in it, so a misplaced marker fails
    loudly instead of producing a bad copy. Remembered by source text: a check reads the same file
    once per step and variant (parsing it each time was most of a step's cost), and what it
    returns cannot be changed (frozen dataclasses, tuples).
    """
    lines = source.splitlines()
    tree = ast.parse(source)
    methods = {}  # line -> (class name, method node) for every line inside a method
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    for line in range(item.lineno - 1, item.end_lineno):
                        methods[line] = (node.name, item)
    module_names = _module_names(tree)
    bodies, open_at, step_at = [], None, []
    for number, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith(STEP):
            if open_at is None:
                raise ValueError(f"{file}:{number + 1}: {STEP} outside an exercise")
            step_at.append(number)
            continue
        if stripped not in (BEGIN, END):
            continue
        if stripped == BEGIN:
            if open_at is not None:
                raise ValueError(
                    f"{file}:{number + 1}: {BEGIN} inside another exercise (opened at line "
                    f"{open_at + 1})"
                )
            open_at, step_at = number, []
            continue
        if open_at is None:
            raise ValueError(f"{file}:{number + 1}: {END} without a {BEGIN}")
        indent = lines[open_at][: len(lines[open_at]) - len(lines[open_at].lstrip())]
        if not line.startswith(indent + END):
            raise ValueError(
                f"{file}:{number + 1}: {END} is not indented like its {BEGIN} (line {open_at + 1})"
            )
        where = methods.get(open_at)
        if where is None or where[1].name != "backward" or methods.get(number) != where:
            raise ValueError(
                f"{file}:{open_at + 1}: exercise markers must sit inside one backward method"
            )
        method = where[1]
        if step_at and any(
            lines[n].strip() and not lines[n].strip().startswith("#")
            for n in range(open_at + 1, step_at[0])
        ):
            raise ValueError(
                f"{file}:{open_at + 2}: code between {BEGIN} and the first {STEP}: every line "
                f"belongs to a step"
            )
        body_start = (
            method.body[1].lineno - 1
            if ast.get_docstring(method) and len(method.body) > 1
            else method.body[0].lineno - 1
        )
        prologue = (body_start, open_at - 1) if body_start < open_at else ()
        epilogue = (
            (number + 1, method.end_lineno - 1) if number + 1 <= method.end_lineno - 1 else ()
        )
        argument = method.args.args[1].arg if len(method.args.args) > 1 else ""
        regions = []
        for index, at in enumerate(step_at):
            name, _, title = lines[at].strip()[len(STEP) :].strip().partition(":")
            last = (step_at[index + 1] if index + 1 < len(step_at) else number) - 1
            regions.append(Region(name.strip(), title.strip(), at + 1, last))
        body = MarkedBody(file, where[0], open_at, number, indent, prologue, epilogue, argument)
        bodies.append(_with_interfaces(body, regions, lines, module_names))
        open_at = None
    if open_at is not None:
        raise ValueError(f"{file}:{open_at + 1}: {BEGIN} without an {END}")
    return tuple(bodies)


def _with_interfaces(body, regions, lines, module_names):
    """``body`` with each step's inputs and outputs read off the code (which names each reads and
    writes)."""
    if not regions:
        return body
    known = set(module_names) | set(dir(builtins)) | {"self"}
    later_reads = []  # for each step, the names read by every later step and the epilogue
    epilogue_reads = _reads_writes(_text(lines, *body.epilogue))[0] if body.epilogue else set()
    reads_writes = [_reads_writes(_text(lines, region.first, region.last)) for region in regions]
    for index in range(len(regions)):
        later = set(epilogue_reads)
        for reads, _ in reads_writes[index + 1 :]:
            later |= reads
        later_reads.append(later)
    filled = []
    for index, region in enumerate(regions):
        ordered_inputs = _ordered_first_reads(_text(lines, region.first, region.last))
        inputs = tuple(name for name in ordered_inputs if name not in known)
        outputs = tuple(
            name
            for name in _ordered_writes(_text(lines, region.first, region.last))
            if name in later_reads[index]
        )
        filled.append(Region(region.name, region.title, region.first, region.last, inputs, outputs))
    return MarkedBody(
        body.file,
        body.cls,
        body.begin,
        body.end,
        body.indent,
        body.prologue,
        body.epilogue,
        body.argument,
        tuple(filled),
    )


def _text(lines, first, last):
    return "\n".join(lines[first : last + 1])


def _parse_block(text):
    """The statements of an indented run of lines (wrapped, so its indentation parses)."""
    return ast.parse("if True:\n" + (text if text.strip() else "    pass")).body[0].body


def _reads_writes(text):
    """(names read, names written) anywhere in ``text``."""
    reads, writes = set(), set()
    for node in ast.walk(ast.Module(_parse_block(text), [])):
        if isinstance(node, ast.Name):
            (writes if isinstance(node.ctx, ast.Store) else reads).add(node.id)
        elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
            reads.add(node.target.id)
    return reads, writes


def _ordered_first_reads(text):
    """Names read before the block writes them, in the order they are first read (statement by
    statement)."""
    written, out = set(), []

    def visit(statements):
        for statement in statements:
            if isinstance(statement, (ast.If, ast.While)):
                note(statement.test, [])
                visit(statement.body)
                visit(statement.orelse)
            elif isinstance(statement, ast.For):
                note(statement.iter, [statement.target])
                visit(statement.body)
                visit(statement.orelse)
            else:
                note(statement, [])

    def note(node, targets):
        reads, writes = [], []
        for child in ast.walk(node):
            if isinstance(child, ast.Name):
                (writes if isinstance(child.ctx, ast.Store) else reads).append(child.id)
            elif isinstance(child, ast.AugAssign) and isinstance(child.target, ast.Name):
                reads.append(child.target.id)
        for target in targets:
            writes += [n.id for n in ast.walk(target) if isinstance(n, ast.Name)]
        for name in reads:
            if name not in written and name not in out:
                out.append(name)
        written.update(writes)

    visit(_parse_block(text))
    return out


def _ordered_writes(text):
    out = []
    for node in ast.walk(ast.Module(_parse_block(text), [])):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store) and node.id not in out:
            out.append(node.id)
    return out


def _module_names(tree):
    """Names bound at a file's top level (imports, constants, functions, classes)."""
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
    return names


# --- running one region on its own ---


def region_function(source_lines, first, last, arguments, filename, namespace):
    """A function ``f(self, **arguments)`` running lines ``first``..``last`` and returning its
    locals.

    The lines keep their numbers and indentation in ``filename``, so a traceback points at them.
    ``namespace``: the globals the lines see (the module's own: np, math, ...).
    """
    region = source_lines[first : last + 1]
    code = [line for line in region if line.strip() and not line.strip().startswith("#")]
    indent = min((len(line) - len(line.lstrip()) for line in code), default=4) or 4
    body = "\n".join(line if line.strip() else "" for line in region)
    if not code:
        body += "\n" + " " * indent + "pass"
    signature = ", ".join(["self"] + list(arguments))
    # padding puts the def line just above the region, so line numbers match the file
    text = (
        "\n" * max(first - 1, 0)
        + f"def __exercise_region__({signature}):\n{body}\n"
        + " " * indent
        + "return locals()\n"
    )
    scope = dict(namespace)
    exec(_compiled(text, filename), scope)
    return scope["__exercise_region__"]


@functools.lru_cache(maxsize=64)
def _compiled(text, filename):
    """``text`` compiled, once per text: a step's region runs under every variant and size set,
    in the checker and in the learner's process (a code object cannot be changed)."""
    return compile(text, filename, "exec")


def prologue_values(body: MarkedBody, source_lines, module, filename, namespace):
    """{name: value} the prologue (the lines before BEGIN, such as ``x, q_h = self.cache``)
    leaves."""
    if not body.prologue:
        return {}
    function = region_function(source_lines, *body.prologue, [], filename, namespace)
    values = function(module)
    values.pop("self", None)
    return values
