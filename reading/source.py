"""Read the two twins' component files and line them up: nothing here is a copy of the code.

Every function below works on whatever the files say today. A file is parsed with ``ast``
(which classes and functions it holds, where each one starts and ends, what a line assigns)
and ``tokenize`` (where one logical line ends, which lines are comments only).

Words used below:
- a *unit* is one logical line of code (a statement that may run over several physical
  lines), or one comment line;
- a unit's *key* says what it does: the names it assigns (``scale``, ``q, k, v``,
  ``self.W_O.grad +=``), or, for a line that assigns nothing, the call or statement it is;
- a *row* is a NumPy unit and a torch unit that do the same thing (either may be missing);
- a *step* of a backward is the run of lines that starts at a ``# forward: ...`` comment.
"""

from __future__ import annotations

import ast
import difflib
import functools
import importlib.util
import io
import re
import textwrap
import tokenize
from dataclasses import dataclass, field
from pathlib import Path

from foundation.files.regular import read_text

# (file name in both packages, section title); the order of the forward pass, then the model
SECTIONS = (
    ("embedding", "Token embedding"),
    ("positional", "Positional encodings"),
    ("layernorm", "LayerNorm"),
    ("rmsnorm", "RMSNorm"),
    ("rotary", "Rotary position embedding"),
    ("attention", "Multi-head and grouped-query attention"),
    ("feedforward", "Feed-forward (MLP)"),
    ("gated_feedforward", "SwiGLU feed-forward (gated MLP)"),
    ("block", "Transformer block"),
    ("unembed", "Unembedding"),
    ("loss", "Cross-entropy loss"),
    ("model", "The whole model"),
)
TWINS = ("numpy_impl", "torch_impl")
# classes shown by their __init__ beside the twin's: what they build differs, their forward and
# backward are their base's (the page shows those once, above)
BUILT_ONLY = ("GroupedQueryAttention",)
MAX_SOURCE_BYTES = 1 << 20  # a component file is a few KB: a longer one is no copy of one

# lines that mark the exercise region in a backward: for the exercise tools, not for a reader
EXERCISE_MARK = re.compile(r"^\s*#\s*EXERCISE (BEGIN|END\s*$|STEP )")
FORWARD_QUOTE = re.compile(r"^\s*#\s*forward:\s*(.*)$")
SHAPE_COMMENT = re.compile(r"^#\s*(\[[^\]]*\])(.*)$")
# a hook point of the component (self.hook_scale) or of one of its projections (self.q.hook_in)
HOOK_CALL = re.compile(r"\bself\.((?:\w+\.)?hook_\w+)\(")
HOOK_BACKWARD = re.compile(r"\bself\.((?:\w+\.)?hook_\w+)\.backward\(")
PARAMETER_GRAD = re.compile(r"\bself\.(\w+)\.grad\b")
# a hook point made here, or a second name for one (self.hook_q = self.q.hook_out)
HOOK_DEFINITION = re.compile(
    r"\bself\.(hook_\w+)\s*=\s*(?:HookPoint\([^)]*\)|self\.[\w.]+)\s*(#\s*(\[[^\]]*\]))?"
)


def hook_path(attribute: str) -> str:
    """A hook's path below its component as hook names spell it: ``in_.hook_in`` -> ``in.hook_in``
    (``in_`` is FeedForward's property for its ``in``, a Python keyword)."""
    return "in." + attribute[len("in_.") :] if attribute.startswith("in_.") else attribute


@dataclass
class Unit:
    """One logical line (or one comment line) of a function, as it stands in the file."""

    lines: list[str]  # physical lines, indented relative to the function's ``def``
    first_line: int  # line number in the file of lines[0]
    kind: str  # "code", "comment" or "header" (a line that opens a block: if, else, for ...)
    key: str
    assigns: tuple[str, ...] = ()  # names on the left of "=" (empty when it assigns nothing)
    # each assigned expression, whole: ``q``, ``self.W_pos.grad[:pos]``
    targets: tuple[str, ...] = ()
    reads: frozenset = frozenset()  # the plain names the line reads

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    @property
    def code(self) -> str:
        """The unit without its trailing comments, on one line: what the diff compares."""
        return " ".join(strip_comment(line).strip() for line in self.lines)


@dataclass
class Function:
    """A function or method of one twin: its name, file, line numbers and units."""

    name: str
    path: Path
    first_line: int
    units: list[Unit]
    code_line: int = 0  # where Python says it starts: its first decorator (@boundary), else its def


@dataclass
class Row:
    numpy: Unit | None
    torch: Unit | None


@dataclass
class Step:
    """A run of backward lines; ``undoes`` are indexes of the forward rows it undoes."""

    units: list[Unit]
    quote: str | None  # the text after "# forward:", None for the lines before the first one
    undoes: list[int] = field(default_factory=list)
    # a learner's exercise step still to write: "name: what it does" (the step then has no units)
    unwritten: str | None = None


@dataclass
class Part:
    """One class (or one module-level function) of a section, with both twins lined up."""

    name: str
    # "class", "function", or "init": a class that only builds (GroupedQueryAttention: its
    # __init__ shown, its forward and backward its base's), not in the run
    kind: str
    rows: list[Row]
    steps: list[Step]  # the NumPy backward, empty when there is none
    numpy_forward: Function | None
    torch_forward: Function | None
    numpy_backward: Function | None
    torch_note: str | None = None  # e.g. where torch_impl imports this function from
    stub: bool = False  # the NumPy backward still raises NotImplementedError (a learner's copy)


@dataclass
class Hook:
    owner: str  # class name, e.g. "LayerNorm"
    attribute: str  # e.g. "hook_scale"
    shape: str  # e.g. "[batch, pos, 1]"
    names: list[str]  # full names in a model, e.g. ["blocks.{i}.ln1.hook_scale", ...]
    numpy_calls: list[Unit]  # the forward lines that call it
    torch_calls: list[Unit]


@dataclass
class Section:
    stem: str
    title: str
    docstring: str
    numpy_path: Path
    torch_path: Path
    parts: list[Part]


def package_dir(package: str) -> Path:
    """Where a package lives, found without importing it (so the page needs no torch)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not importable from here")
    return Path(list(spec.submodule_search_locations)[0])


@functools.cache
def strip_comment(line: str) -> str:
    """The line without a trailing ``# ...`` comment (a '#' inside a string is kept)."""
    if "#" not in line:
        return line
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(line.lstrip() + "\n").readline))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return line
    for tok in tokens:
        if tok.type == tokenize.COMMENT:
            return line[: len(line) - len(line.lstrip()) + tok.start[1]].rstrip()
    return line


def split_units(source_lines: list[str], first_line: int) -> list[Unit]:
    """Group a function's physical lines into logical lines and comment lines (blank lines go)."""
    text = "\n".join(source_lines) + "\n"
    spans = []  # (first row, last row), 1-based within source_lines
    start, has_code = None, False
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type in (tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER):
            continue
        if tok.type == tokenize.NL and start is None:
            continue  # a blank line
        if start is None:
            start, has_code = tok.start[0], False
        if tok.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE):
            has_code = True
        if tok.type == tokenize.NEWLINE or (tok.type == tokenize.NL and not has_code):
            spans.append((start, tok.start[0]))
            start = None
    units = []
    for first, last in spans:
        lines = source_lines[first - 1 : last]
        if len(lines) == 1 and EXERCISE_MARK.match(lines[0]):
            continue
        units.append(make_unit(lines, first_line + first - 1))
    return units


def make_unit(lines: list[str], first_line: int) -> Unit:
    stripped = "\n".join(lines).strip()
    if stripped.startswith("#"):
        return Unit(lines, first_line, "comment", "# " + stripped.lstrip("#").strip())
    if stripped.startswith("@"):  # @boundary(x="activation"): what the boundary checks
        code = " ".join(strip_comment(line).strip() for line in lines)
        return Unit(lines, first_line, "decorator", "decorator: " + code)
    code = " ".join(strip_comment(line).strip() for line in lines)
    if code.endswith(":") and not code.startswith(("def ", "async def ")):
        return Unit(lines, first_line, "header", "block: " + re.sub(r"\s+", " ", code))
    try:
        tree = ast.parse(
            textwrap.dedent("\n".join(lines)) + ("\n    pass" if code.endswith(":") else "")
        )
    except SyntaxError:
        return Unit(lines, first_line, "code", "stmt: " + code)
    node = tree.body[0]
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return Unit(lines, first_line, "code", "def " + node.name)
    reads = frozenset(
        sub.id
        for sub in ast.walk(node)
        if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Load)
    )
    if isinstance(node, ast.Assign):
        targets = [ast.unparse(target) for target in node.targets]
        names = tuple(name.strip() for target in targets for name in target.split(","))
        whole = tuple(
            ast.unparse(element)
            for target in node.targets
            for element in (target.elts if isinstance(target, ast.Tuple) else [target])
        )
        return Unit(lines, first_line, "code", " = ".join(targets) + " =", names, whole, reads)
    if isinstance(node, (ast.AugAssign, ast.AnnAssign)):
        target = ast.unparse(node.target)
        op = "+=" if isinstance(node, ast.AugAssign) else ":"
        return Unit(lines, first_line, "code", f"{target} {op}", (target,), (target,), reads)
    if (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    ):
        return Unit(lines, first_line, "code", "docstring")
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
        return Unit(lines, first_line, "code", "call: " + ast.unparse(node.value.func), reads=reads)
    if isinstance(node, ast.Return):
        return Unit(lines, first_line, "code", "return", reads=reads)
    return Unit(lines, first_line, "code", "stmt: " + code, reads=reads)


def similarity(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def pair_score(np_unit: Unit, torch_unit: Unit) -> float:
    """How well two units face each other; 0 means they must not share a row.

    The same key (the same names assigned, the same call) always may; two lines that assign
    different names never may; two other lines of a kind (comments, block openers, calls)
    may when their text is close.
    """
    if np_unit.key == torch_unit.key:
        return 2.0 + similarity(np_unit.code, torch_unit.code)
    if np_unit.assigns or torch_unit.assigns or np_unit.kind != torch_unit.kind:
        return 0.0
    ratio = similarity(np_unit.text.strip(), torch_unit.text.strip())
    return ratio if ratio >= 0.6 else 0.0


def align(left: list[Unit], right: list[Unit]) -> list[Row]:
    """Line up two lists of units, keeping each side's order, with the best total score."""
    n, m = len(left), len(right)
    best = [[0.0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            score = pair_score(left[i], right[j])
            take = best[i + 1][j + 1] + score if score > 0 else -1.0
            best[i][j] = max(take, best[i + 1][j], best[i][j + 1])
    rows, i, j = [], 0, 0
    pending_left, pending_right = [], []

    def flush():
        rows.extend(Row(unit, None) for unit in pending_left)
        rows.extend(Row(None, unit) for unit in pending_right)
        pending_left.clear()
        pending_right.clear()

    while i < n and j < m:
        score = pair_score(left[i], right[j])
        if score > 0 and best[i][j] == best[i + 1][j + 1] + score:
            flush()
            rows.append(Row(left[i], right[j]))
            i, j = i + 1, j + 1
        elif best[i][j] == best[i + 1][j]:
            pending_left.append(left[i])
            i += 1
        else:
            pending_right.append(right[j])
            j += 1
    pending_left.extend(left[i:])
    pending_right.extend(right[j:])
    flush()
    return rows


def split_steps(units: list[Unit]) -> list[Step]:
    """Cut a backward at its ``# forward:`` comments; a block opener just before one joins it."""
    steps = [Step([], None)]
    for unit in units:
        quote = FORWARD_QUOTE.match(unit.text) if unit.kind == "comment" else None
        if quote:
            carried = []
            while steps[-1].units and steps[-1].units[-1].kind == "header":
                carried.insert(0, steps[-1].units.pop())
            steps.append(Step(carried + [unit], quote.group(1).strip()))
        else:
            steps[-1].units.append(unit)
    return [step for step in steps if step.units]


def quoted_names(quote: str) -> tuple[list[str], set[str], ast.AST | None]:
    """(names on the left, names read on the right, the right side) of a ``# forward:`` quote.

    A quote may go on in words (``q_h, k_h, v_h = q, k, v with the head axis moved``): its right
    side is the longest run of its words that reads as a Python expression.
    """
    lhs, sep, rhs = quote.partition(" = ")
    if not sep:
        return [], set(), None
    names = [name.strip() for name in lhs.split(",")]
    words = re.split(r"(?<=\S)\s+", rhs.split(";")[0].strip())
    for end in range(len(words), 0, -1):
        try:
            tree = ast.parse(" ".join(words[:end]).rstrip(","), mode="eval").body
        except SyntaxError:
            continue
        return names, {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}, tree
    return names, set(), None


def assigned_value(unit: Unit) -> ast.AST | None:
    """The right side of an assignment unit, parsed."""
    try:
        node = ast.parse(textwrap.dedent(unit.text)).body[0]
    except (SyntaxError, IndexError):
        return None
    return getattr(node, "value", None)


def link_steps(steps: list[Step], rows: list[Row]) -> None:
    """Find, for each step, the forward rows it undoes: every one of them, not only the quoted one.

    - the quote ``names = expression``: for each name, the NumPy forward line that assigns it and
      reads most like the quote;
    - a quote whose right side the forward spells in several lines (``probs = softmax(scores)``):
      the lines between, on the way from what the quote reads to what it assigns;
    - each hook point the step passes a gradient through (``self.hook_scale.backward``): the line
      that calls that hook in the forward;
    - each parameter the step adds a gradient into (``self.W_K.grad``): the lines that read it.

    A quote that names nothing the forward assigns, in a step with no hook and no parameter,
    links to no row (the page then shows the quote alone).
    """
    numpy_rows = [
        (k, row.numpy)
        for k, row in enumerate(rows)
        if row.numpy is not None and row.numpy.kind == "code"
    ]
    for step in steps:
        found = set()
        text = "\n".join(unit.text for unit in step.units if unit.kind != "comment")
        if step.quote is not None:
            names, inputs, value = quoted_names(step.quote)
            for name in names:
                candidates = [k for k, unit in numpy_rows if name in unit.assigns]
                # a quote that only renames (``resid_post = resid_mid``): no computation
                if isinstance(value, ast.Name):
                    candidates = [
                        k for k in candidates if isinstance(assigned_value(rows[k].numpy), ast.Name)
                    ]
                if candidates:
                    best = max(candidates, key=lambda k: similarity(step.quote, rows[k].numpy.code))
                    found.add(best)
                    found |= lines_between(numpy_rows, inputs, best)
        for hook in HOOK_BACKWARD.findall(text):
            found |= {
                k for k, unit in numpy_rows if re.search(rf"\bself\.{re.escape(hook)}\(", unit.code)
            }
        for parameter in PARAMETER_GRAD.findall(text):
            found |= lines_reading(numpy_rows, parameter)
        step.undoes = sorted(found)


def lines_reading(numpy_rows: list[tuple[int, Unit]], parameter: str) -> set[int]:
    """The rows that read ``self.<parameter>.data``, or the local that only names it
    (``W_Q = self.W_Q.data``)."""
    found, aliases = set(), set()
    for k, unit in numpy_rows:
        if re.search(rf"\bself\.{parameter}\.data\b", unit.code):
            alias = alias_of(unit, parameter)
            if alias is None:
                found.add(k)
            else:
                aliases.add(alias)
        elif unit.reads & aliases:
            found.add(k)
    return found


def alias_of(unit: Unit, parameter: str) -> str | None:
    """The local name a line gives ``self.<parameter>.data`` when that is all it does, else None."""
    try:
        node = ast.parse(textwrap.dedent(unit.text)).body[0]
    except (SyntaxError, IndexError):
        return None
    if not isinstance(node, ast.Assign) or len(node.targets) != 1:
        return None
    target, value = node.targets[0], node.value
    pairs = (
        zip(target.elts, value.elts)
        if isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple)
        else [(target, value)]
    )
    for name, read in pairs:
        if isinstance(name, ast.Name) and ast.unparse(read) == f"self.{parameter}.data":
            return name.id
    return None


def lines_between(numpy_rows: list[tuple[int, Unit]], inputs: set[str], target: int) -> set[int]:
    """Rows after the last one that assigns a quoted input and before ``target``, on the way from
    one to the other."""
    before = [(k, unit) for k, unit in numpy_rows if k < target]
    starts = [k for k, unit in before if set(unit.assigns) & inputs]
    if not starts:
        return set()
    window = [(k, unit) for k, unit in before if k > max(starts)]
    reached = set(inputs)  # names that depend on the inputs
    for _, unit in window:
        if unit.reads & reached:
            reached |= set(unit.assigns)
    needed = set(dict(numpy_rows)[target].reads)  # names the target depends on
    on_the_way = set()
    for k, unit in reversed(window):
        if set(unit.assigns) & needed and set(unit.assigns) & reached:
            on_the_way.add(k)
            needed |= unit.reads
    return on_the_way


def find_functions(tree: ast.Module) -> dict[str, ast.AST]:
    """Top-level classes and functions of a module, by name, in file order."""
    return {
        node.name: node for node in tree.body if isinstance(node, (ast.ClassDef, ast.FunctionDef))
    }


def method(cls: ast.ClassDef, name: str) -> ast.FunctionDef | None:
    for node in cls.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    return None


def read_function(
    node: ast.FunctionDef | None, path: Path, file_lines: list[str]
) -> Function | None:
    """The function's lines, its decorators (``@boundary(...)``) first, dedented to its ``def``."""
    if node is None:
        return None
    first, last = node.lineno, node.end_lineno
    code_line = min([first] + [decorator.lineno for decorator in node.decorator_list])
    lines = textwrap.dedent("\n".join(file_lines[code_line - 1 : last])).split("\n")
    return Function(node.name, path, first, split_units(lines, code_line), code_line)


def imported_from(tree: ast.Module, name: str) -> str | None:
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and any(alias.name == name for alias in node.names):
            return "." * node.level + (node.module or "")
    return None


def raises_not_implemented(node: ast.FunctionDef | None) -> bool:
    """True when a function still holds ``raise NotImplementedError`` (an exercise not written
    yet)."""
    for sub in ast.walk(node) if node is not None else ():
        if isinstance(sub, ast.Raise) and sub.exc is not None:
            exc = sub.exc.func if isinstance(sub.exc, ast.Call) else sub.exc
            if isinstance(exc, ast.Name) and exc.id == "NotImplementedError":
                return True
    return False


EXERCISE_STEP_MARK = re.compile(r"^\s*#\s*EXERCISE STEP (\w+):\s*(.*)$")
EXERCISE_END_MARK = re.compile(r"^\s*#\s*EXERCISE END\s*$")


def exercise_steps(
    node: ast.FunctionDef | None, file_lines: list[str]
) -> list[tuple[str, range, bool]]:
    """(name: what it does, its file lines, written?) of each ``# EXERCISE STEP`` of a backward; in
    a learner's copy a step that still raises NotImplementedError is not written."""
    if node is None:
        return []
    raised = {
        sub.lineno
        for sub in ast.walk(node)
        if isinstance(sub, ast.Raise) and raises_not_implemented(sub)
    }
    steps, current, start = [], None, 0
    for number in range(node.lineno, node.end_lineno + 2):  # 1-based, one past the end
        line = file_lines[number - 1] if number <= len(file_lines) else ""
        mark = EXERCISE_STEP_MARK.match(line)
        if current and (mark or EXERCISE_END_MARK.match(line) or number > node.end_lineno):
            span = range(start, number)
            steps.append((current, span, not any(n in span for n in raised)))
            current = None
        if mark:
            current, start = f"{mark.group(1)}: {mark.group(2).strip()}", number
    return steps


def backward_steps(units: list[Unit], unwritten: dict[str, range]) -> list[Step]:
    """The backward's steps, each step still to write in its place as one step saying so."""
    steps, written = [], []
    for unit in units:
        region = next((name for name, span in unwritten.items() if unit.first_line in span), None)
        if region is None:
            written.append(unit)
        elif not steps or steps[-1].unwritten != region:
            steps += split_steps(written) + [Step([], None, unwritten=region)]
            written = []
    return steps + split_steps(written)


def read_section(stem: str, title: str, numpy_dir: Path | None = None) -> Section:
    """One component file of each twin, lined up; ``numpy_dir``: read the NumPy file from there (a
    learner's copy)."""
    paths = [Path(numpy_dir) if numpy_dir else package_dir(TWINS[0]), package_dir(TWINS[1])]
    paths = [folder / f"{stem}.py" for folder in paths]
    texts = [read_text(path, MAX_SOURCE_BYTES, "Python source file") for path in paths]  # no FIFO
    trees = [ast.parse(text) for text in texts]
    lines = [text.split("\n") for text in texts]
    np_defs, torch_defs = find_functions(trees[0]), find_functions(trees[1])
    parts = []
    for name, np_node in np_defs.items():
        torch_node = torch_defs.get(name)
        if isinstance(np_node, ast.ClassDef) and method(np_node, "forward") is None:
            if name not in BUILT_ONLY:
                continue
            # a subclass that changes only what is built: its __init__, beside the twin's
            np_init = read_function(method(np_node, "__init__"), paths[0], lines[0])
            torch_init = (
                read_function(method(torch_node, "__init__"), paths[1], lines[1])
                if torch_node
                else None
            )
            if np_init is None:
                continue
            rows = align(np_init.units, torch_init.units if torch_init else [])
            base = ", ".join(ast.unparse(b) for b in np_node.bases)
            note = (
                f"{name} only builds other weights; its forward and backward are {base}'s, "
                "above, and the lines there that run only for it are measured in the run's "
                "grouped model"
            )
            parts.append(Part(name, "init", rows, [], np_init, torch_init, None, note))
            continue
        if isinstance(np_node, ast.ClassDef):
            np_forward = read_function(method(np_node, "forward"), paths[0], lines[0])
            if np_forward is None:
                continue
            torch_forward = (
                read_function(method(torch_node, "forward"), paths[1], lines[1])
                if torch_node
                else None
            )
            np_backward = read_function(method(np_node, "backward"), paths[0], lines[0])
            stub = raises_not_implemented(method(np_node, "backward"))
            marked = exercise_steps(method(np_node, "backward"), lines[0])
            unwritten = {name: span for name, span, written in marked if not written}
            # a backward written in steps, some of them done: shown, the rest marked not written
            stub = stub and not 0 < len(unwritten) < len(marked)
            unwritten = {} if stub else unwritten
            kind = "class"
        else:
            np_forward = read_function(np_node, paths[0], lines[0])
            torch_forward = read_function(torch_node, paths[1], lines[1]) if torch_node else None
            np_backward = None
            stub, unwritten = False, {}
            kind = "function"
        rows = align(np_forward.units, torch_forward.units if torch_forward else [])
        steps = backward_steps(np_backward.units, unwritten) if np_backward else []
        link_steps(steps, rows)
        note = None
        if torch_forward is None:
            source = imported_from(trees[1], name)
            note = (
                f"torch_impl imports this one from {source}"
                if source
                else "torch_impl has no twin of this"
            )
        parts.append(
            Part(name, kind, rows, steps, np_forward, torch_forward, np_backward, note, stub)
        )
    docstring = ast.get_docstring(trees[0]) or ""
    return Section(stem, title, docstring, paths[0], paths[1], parts)


def read_sections(numpy_dir: Path | None = None) -> list[Section]:
    """Every section; ``numpy_dir``: a learner's copy of numpy_impl to read the NumPy side from."""
    return [read_section(stem, title, numpy_dir) for stem, title in SECTIONS]


def hook_definitions(cls: ast.ClassDef, file_lines: list[str]) -> list[tuple[str, str]]:
    """(attribute, shape) of each ``self.hook_x = HookPoint()  # [shape]`` in a class's __init__."""
    init = method(cls, "__init__")
    if init is None:
        return []
    found = []
    for line in file_lines[init.lineno - 1 : init.end_lineno]:
        match = HOOK_DEFINITION.search(line)
        if match:
            found.append((match.group(1), match.group(3) or ""))
    return found


def children(cls: ast.ClassDef, known: set[str]) -> list[tuple[str, str]]:
    """(attribute path, class name) of each sub-module ``self.name = Class(...)`` (or
    ``Class.for_config(...)``) in __init__.

    An attribute built from a list comprehension (``self.blocks = [Block(...) for ...]``)
    holds one per index: its path is ``blocks.{i}``.
    """
    init = method(cls, "__init__")
    if init is None:
        return []
    found = []
    for node in ast.walk(init):
        if not isinstance(node, ast.Assign) or len(node.targets) != 1:
            continue
        target = node.targets[0]
        if not (
            isinstance(target, ast.Attribute)
            and isinstance(target.value, ast.Name)
            and target.value.id == "self"
        ):
            continue
        listed = any(
            isinstance(sub, (ast.ListComp, ast.GeneratorExp)) for sub in ast.walk(node.value)
        )
        for sub in ast.walk(node.value):
            if isinstance(sub, ast.Call):
                func = (
                    sub.func.id
                    if isinstance(sub.func, ast.Name)
                    else getattr(sub.func, "attr", None)
                )
                # LayerNorm.for_config(cfg)
                if func == "for_config" and isinstance(sub.func.value, ast.Name):
                    func = sub.func.value.id
                if func in known:
                    found.append((target.attr + (".{i}" if listed else ""), func))
    return found


def read_hooks(sections: list[Section]) -> list[Hook]:
    """Every hook point of every component, with its full names in a model and its call lines."""
    classes = {}  # class name -> (ast.ClassDef, file lines) of the NumPy twin
    for section in sections:
        text = section.numpy_path.read_text()
        for node in ast.parse(text).body:
            if isinstance(node, ast.ClassDef):
                classes[node.name] = (node, text.split("\n"))
    known = set(classes)
    paths: dict[str, list[str]] = {}

    def visit(name: str, prefix: str, seen: tuple[str, ...]):
        paths.setdefault(name, []).append(prefix)
        for attribute, child in children(classes[name][0], known):
            if child not in seen:
                visit(child, prefix + attribute + ".", seen + (child,))

    in_order = [part.name for section in sections for part in section.parts if part.name in known]
    inside = {child for node, _ in classes.values() for _, child in children(node, known)}
    for root in in_order:
        if root not in inside:
            visit(root, "", (root,))
    calls = {}  # (twin, class, hook) -> the units that call it
    for section in sections:
        for part in section.parts:
            for twin, function in (("numpy", part.numpy_forward), ("torch", part.torch_forward)):
                for unit in function.units if function else []:
                    for hook in HOOK_CALL.findall(unit.text):
                        calls.setdefault((twin, part.name, hook), []).append(unit)
    hooks = []
    for section in sections:
        for part in section.parts:
            if part.kind != "class":
                continue
            node, file_lines = classes[part.name]
            for attribute, shape in hook_definitions(node, file_lines):
                names = [prefix + attribute for prefix in paths.get(part.name, [""])]
                hooks.append(
                    Hook(
                        part.name,
                        attribute,
                        shape,
                        names,
                        calls.get(("numpy", part.name, attribute), []),
                        calls.get(("torch", part.name, attribute), []),
                    )
                )
    return hooks
