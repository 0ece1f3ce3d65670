"""Write the reading page: one HTML file with its styles, its formulas and its small script inline.

Highlighting comes from Pygments' Python lexer and two of its styles (one light, one dark); this
module adds what a diff of two twins needs on top: marks on the tokens that differ between two
facing lines, shape comments drawn as badges, hook calls drawn as hooks, and, when the page is
made from a run (``reading.measure``), the numbers beside the lines. Every line keeps its exact
text inside its ``.src`` element (a badge still reads ``# [batch, pos, d_model]``); what the run
adds sits in elements of class ``run`` and ``tag``, outside the text a reader copies.

Each line is one element holding its number and its code (``.ln``: a two-column grid), so a
line that wraps takes its number along, at any width.
"""

from __future__ import annotations

import dataclasses
import difflib
import html
import inspect
import re
import textwrap
from pathlib import Path

from pygments.formatters import HtmlFormatter
from pygments.lexers import PythonLexer
from pygments.token import STANDARD_TYPES, Comment, Name, String, Text

from foundation.contract.agreement import TOL
from foundation.contract.boundary import KINDS

from .formulas import FORMULAS, to_mathml
from .source import (
    HOOK_BACKWARD,
    HOOK_CALL,
    SHAPE_COMMENT,
    Hook,
    Part,
    Section,
    Unit,
    read_hooks,
    read_sections,
)

STYLES = {"light": "default", "dark": "github-dark"}
LEXER = PythonLexer()
DTYPE_LABEL = {"float64": "f64", "float32": "f32"}
NAV_LABELS = {
    "embedding": "Embedding",
    "positional": "Positions",
    "layernorm": "LayerNorm",
    "rmsnorm": "RMSNorm",
    "rotary": "Rotary",
    "attention": "Attention",
    "feedforward": "MLP",
    "gated_feedforward": "SwiGLU",
    "block": "Block",
    "unembed": "Unembed",
    "loss": "Loss",
    "model": "Model",
}


def css_class(ttype) -> str:
    while ttype not in STANDARD_TYPES:
        ttype = ttype.parent
    return STANDARD_TYPES[ttype]


def lex(unit: Unit) -> list[tuple[object, str]]:
    """Pygments tokens of a unit, each cut at line ends so every line renders on its own."""
    tokens = []
    for ttype, value in LEXER.get_tokens(unit.text):
        for k, piece in enumerate(value.split("\n")):
            if k:
                tokens.append((Text, "\n"))
            if piece:
                tokens.append((ttype, piece))
    while tokens and tokens[-1][1] == "\n":
        tokens.pop()  # the lexer ends the text with a line end of its own
    return tokens


def is_code_token(ttype, value: str) -> bool:
    return value.strip() != "" and ttype not in Comment and ttype not in String.Doc


def differing(tokens: list, other: list) -> set[int]:
    """Indexes of the code tokens (not comments) of ``tokens`` that ``other`` does not share."""
    mine = [k for k, (ttype, value) in enumerate(tokens) if is_code_token(ttype, value)]
    theirs = [value for ttype, value in other if is_code_token(ttype, value)]
    matcher = difflib.SequenceMatcher(None, [tokens[k][1] for k in mine], theirs, autojunk=False)
    marked = set()
    for op, i1, i2, _, _ in matcher.get_opcodes():
        if op != "equal":
            marked.update(mine[i1:i2])
    return marked


def number(value: float) -> str:
    """A gap as the page prints it: 0, or two significant digits."""
    return "0" if value == 0 else f"{value:.1e}"


def shape_text(shapes) -> str:
    return " | ".join("×".join(map(str, shape)) if shape else "scalar" for shape in sorted(shapes))


def render_comment(ttype, value: str, shapes=None, problem: str | None = None) -> str:
    """A shape comment becomes a badge (its text unchanged), followed by the shape the run gave
    it."""
    cls = css_class(ttype)
    match = SHAPE_COMMENT.match(value)
    if not match:
        return f'<span class="{cls}">{html.escape(value)}</span>'
    shape, rest = match.group(1), match.group(2)
    hash_part = value[: value.index("[")]
    state = " wrong" if problem else ""
    title = f' title="{html.escape(problem)}"' if problem else ""
    out = (
        f'<span class="{cls} hash">{html.escape(hash_part)}</span>'
        f'<span class="shape{state}"{title}>{html.escape(shape)}</span>'
    )
    # the comment wraps as a whole, never after its '#'
    out = f'<span class="shapecomment">{out}</span>'
    if shapes:
        out += (
            f'<span class="run" title="the shape this line made in the '
            f'run">{html.escape(shape_text(shapes))}</span>'
        )
    if rest:
        out += f'<span class="{cls}">{html.escape(rest)}</span>'
    return out


def render_lines(
    unit: Unit | None, marked: set[int] = frozenset(), tokens=None, shapes=None, tags=None
) -> str:
    """The unit's lines, each a ``.ln`` element holding its number and its highlighted code.

    ``shapes``: the shapes the run gave the unit's value (shown after its shape badge);
    ``tags``: HTML put beside the unit's first line (hook names, gradient numbers).
    """
    if unit is None:
        return ""
    tokens = lex(unit) if tokens is None else tokens
    lines, current = [], []
    for k, (ttype, value) in enumerate(tokens):
        if value == "\n":
            lines.append(current)
            current = []
            continue
        if ttype in Comment:
            piece = render_comment(ttype, value, shapes)
        elif ttype in Name and value.startswith("hook_"):
            piece = f'<span class="{css_class(ttype)} hook">{html.escape(value)}</span>'
        else:
            piece = html.escape(value)
            if value.strip():
                piece = f'<span class="{css_class(ttype)}">{piece}</span>'
        if k in marked:
            piece = f'<mark class="dx">{piece}</mark>'
        current.append(piece)
    lines.append(current)
    out = []
    for k, line in enumerate(lines):
        tag = f'<span class="tag">{tags}</span>' if tags and k == 0 else ""
        out.append(
            f'<div class="ln{" tagged" if tag else ""}"><span '
            f'class="lnum">{unit.first_line + k}</span>'
            f'<span class="src">{"".join(line) or " "}</span>{tag}</div>'
        )
    return "".join(out)


# the kinds an @boundary(...) line declares: the quoted values of its keywords
BOUNDARY_KIND = re.compile(r"=\s*\"([^\"]+)\"")


def boundary_tag(unit: Unit | None) -> list[str]:
    """Beside an ``@boundary(...)`` line: a link to what each declared kind is checked for."""
    if unit is None or unit.kind != "decorator":
        return []
    kinds = dict.fromkeys(BOUNDARY_KIND.findall(unit.text))
    links = "".join(
        f'<a class="kind" href="#boundary-{slug(kind)}">{html.escape(kind)}</a>' for kind in kinds
    )
    return [f'<span class="checks"><a href="#boundary">checked at the door:</a> {links}</span>']


def boundary_section() -> str:
    """What each kind a ``@boundary(...)`` line names is checked for (``KINDS``), from the checks'
    own docstrings."""
    rows = []
    for kind, check in KINDS.items():
        doc = inspect.getdoc(check) or ""
        first = " ".join(doc.split("\n\n")[0].split()).replace("``", "")
        rows.append(
            f'<tr id="boundary-{slug(kind)}"><td><code>{html.escape(kind)}</code></td>'
            f"<td><code>{check.__name__}</code></td><td>{html.escape(first)}</td></tr>"
        )
    return (
        '<section id="boundary"><h2>What <code>@boundary(...)</code> checks</h2>'
        "<p>The line above a <code>forward</code> or <code>backward</code> declares the kind of "
        "each argument. At a user's call (a direct call, or one from a hook) the "
        "<code>Module</code> call machinery (<code>numpy_impl/module.py</code>, "
        "<code>torch_impl/module.py</code>) checks each argument against its kind before any "
        "math, and raises a "
        "<code>ValueError</code> or <code>TypeError</code> naming it; a NumPy call works on its "
        "own copies of the arrays it is given; a result that turns non-finite from finite inputs "
        "raises, naming the component and the tensor. So the body below the line is only the "
        "formula. The kinds and their checks (<code>KINDS</code>, "
        "<code>foundation/contract/boundary.py</code>; docs/parity-and-bad-input.md says what "
        "the boundary refuses):</p>"
        '<table class="kinds"><colgroup><col class="kind"><col class="check"><col></colgroup>'
        "<thead><tr><th>kind</th><th>check</th><th>what it requires</th>"
        "</tr></thead><tbody>" + "".join(rows) + "</tbody></table></section>"
    )


def dedented(unit: Unit) -> Unit:
    """The unit with its indentation taken off, for showing it outside its function."""
    return dataclasses.replace(unit, lines=textwrap.dedent(unit.text).split("\n"))


def breakable(name: str) -> str:
    """A dotted name that may wrap after a dot, and nowhere else."""
    return "<wbr>".join(html.escape(piece) for piece in re.split(r"(?<=\.)", name))


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def cell_classes(unit: Unit | None, side: str) -> str:
    classes = ["cell", side]
    if unit is None:
        classes.append("empty")
    elif unit.kind == "comment":
        classes.append("comment")
    elif unit.kind == "decorator":
        classes.append("decorator")
    if unit is not None and HOOK_CALL.search(unit.text):
        classes.append("has-hook")
    return " ".join(classes)


class Page:
    """What every section needs: the hooks' full names, the run's numbers, and the ids handed
    out."""

    def __init__(self, sections, hooks, measured=None, learner=None, verdicts=None):
        self.sections = sections
        self.hooks = hooks
        self.measured = measured
        self.learner = learner  # the learner's numpy_impl folder, or None for the reference
        # the checker's verdicts on a learner's copy (exercises/marks.py):
        # {class: {"status", "words", "lines": {line: note}}}
        self.verdicts = verdicts or {}
        self.ids: dict[int, str] = {}
        self.hook_names = {(hook.owner, hook.attribute): hook.names for hook in hooks}

    # --- numbers from the run ---

    def shapes(self, twin, section, part, kind, unit):
        if self.measured is None or unit is None or (self.learner and kind == "backward"):
            return None
        return self.measured.shapes.get((twin, section.stem, part.name, kind, unit.code))

    def ran(self, twin, section, part, kind, unit) -> bool:
        return (
            self.measured is not None
            and (twin, section.stem, part.name, kind, unit.code) in self.measured.ran
        )

    def agreement(self, gap, what: str) -> str:
        """A small badge: the largest |NumPy - torch| in float64 and float32, green within the
        parity tolerance."""
        cells = []
        for dtype in ("float64", "float32"):
            if dtype not in gap.absolute:
                continue
            ok = gap.relative[dtype] <= TOL[dtype]
            cells.append(
                f'<span class="{"ok" if ok else "bad"}"><i>{DTYPE_LABEL[dtype]}</i> '
                f"{number(gap.absolute[dtype])}</span>"
            )
        title = (
            f"{what}: largest |NumPy - torch| over {gap.count} value(s) in the run "
            + "; ".join(
                f"{dtype} {gap.absolute[dtype]:.2e} (relative {gap.relative[dtype]:.1e}, "
                f"tolerance {TOL[dtype]:.0e}; values up to {gap.scale[dtype]:.3g})"
                for dtype in gap.absolute
            )
            + "; measured at "
            + ", ".join(gap.where[:8])
            + (" ..." if len(gap.where) > 8 else "")
        )
        return f'<span class="agree" title="{html.escape(title)}">{"".join(cells)}</span>'

    def data_attributes(self, gap, prefix: str) -> str:
        out = []
        for dtype in ("float64", "float32"):
            if dtype in gap.absolute:
                short = DTYPE_LABEL[dtype]
                out.append(
                    f'data-{prefix}-{short}="{gap.absolute[dtype]:.3e}" '
                    f'data-{prefix}-rel-{short}="{gap.relative[dtype]:.3e}"'
                )
        return " " + " ".join(out) if out else ""

    # --- the forward ---

    def hook_tags(self, part: Part, unit: Unit | None, backward=False) -> list[str]:
        if unit is None:
            return []
        pattern = HOOK_BACKWARD if backward else HOOK_CALL
        tags = []
        for attribute in dict.fromkeys(pattern.findall(unit.text)):
            suffix = "_grad" if backward else ""
            for name in self.hook_names.get((part.name, attribute), [attribute]):
                tags.append(f'<code class="hookname">{breakable(name + suffix)}</code>')
        return tags

    def forward(self, section: Section, part: Part) -> str:
        np_file = f"numpy_impl/{section.numpy_path.name}"
        torch_file = f"torch_impl/{section.torch_path.name}"
        head_name = {"class": f"{part.name}.forward", "init": f"{part.name}.__init__"}.get(
            part.kind, f"{part.name}()"
        )
        meta_head = "|NumPy − torch|" if self.measured else ""
        out = [
            f'<div class="twins code" data-part="{html.escape(part.name)}">',
            '<div class="thead">'
            f'<div class="np"><span class="lib np">NumPy</span> {head_name} <span '
            f'class="file">{np_file}</span></div>'
            f'<div class="torch"><span class="lib torch">torch</span> {head_name} <span '
            f'class="file">{torch_file}</span></div>'
            f'<div class="meta">{meta_head}</div></div>',
        ]
        if part.torch_note:
            out.append(f'<div class="note">{html.escape(part.torch_note)}</div>')
        for k, row in enumerate(part.rows):
            row_id = f"{slug(section.stem)}-{slug(part.name)}-f{k}"
            for unit in (row.numpy, row.torch):
                if unit is not None:
                    self.ids[id(unit)] = row_id
            np_marked = torch_marked = set()
            np_tokens = lex(row.numpy) if row.numpy else None
            torch_tokens = lex(row.torch) if row.torch else None
            if row.numpy and row.torch and row.numpy.code != row.torch.code:
                np_marked = differing(np_tokens, torch_tokens)
                torch_marked = differing(torch_tokens, np_tokens)
            meta, attributes = [], ""
            gap = None
            if self.measured and row.numpy and row.torch:
                gap = self.measured.forward.get(
                    (section.stem, part.name, row.numpy.code, row.torch.code)
                )
            if gap is not None:
                meta.append(self.agreement(gap, "this line's value"))
                attributes = self.data_attributes(gap, "agree")
            elif (
                self.measured
                and part.kind != "init"
                and row.numpy
                and row.numpy.targets
                and not self.ran("numpy", section, part, "forward", row.numpy)
            ):
                meta.append(
                    '<span class="notrun" title="neither model of the run takes this branch">not '
                    "run</span>"
                )
            meta += self.hook_tags(part, row.numpy or row.torch)
            meta += boundary_tag(row.numpy or row.torch)
            np_shapes = self.shapes("numpy", section, part, "forward", row.numpy)
            torch_shapes = self.shapes("torch", section, part, "forward", row.torch)
            out.append(
                f'<div class="row" id="{row_id}"{attributes}>'
                f'<div class="{cell_classes(row.numpy, "np")}">'
                f"{render_lines(row.numpy, np_marked, np_tokens, np_shapes)}</div>"
                f'<div class="{cell_classes(row.torch, "torch")}">'
                f"{render_lines(row.torch, torch_marked, torch_tokens, torch_shapes)}</div>"
                f'<div class="meta">{"".join(meta)}</div></div>'
            )
        out.append("</div>")
        return "\n".join(out)

    # --- the backward ---

    def gradient_tags(self, section: Section, part: Part, unit: Unit) -> tuple[list[str], list]:
        """(the tags of a backward line, its gaps): hook gradient names, and how far each gradient
        is from autograd."""
        gaps = []
        found = {} if self.measured is None or self.learner else self.measured.gradients
        here = found.get((section.stem, part.name, unit.code), [])
        measured = {(gradient.label, gradient.key): gradient for gradient in here}
        tags = []
        for attribute in dict.fromkeys(HOOK_BACKWARD.findall(unit.text)):
            names = [
                name + "_grad" for name in self.hook_names.get((part.name, attribute), [attribute])
            ]
            gradient = measured.pop(("hook", attribute), None)
            tag = "".join(f'<code class="hookname">{breakable(name)}</code>' for name in names)
            if gradient is not None:
                tag += self.agreement(gradient.gap, "this hook's gradient against autograd's")
                gaps.append(gradient.gap)
            tags.append(f'<span class="grad hookgrad">{tag}</span>')
        for gradient in measured.values():
            if gradient.label == "parameter":
                label = "".join(
                    f'<code class="param">{breakable(name)}.grad</code>' for name in gradient.names
                )
                what = "this parameter gradient against autograd's"
            else:
                label = '<span class="returned">returned, vs autograd</span>'
                what = (
                    "the gradient this backward returns, against autograd's through the same call"
                )
            tags.append(f'<span class="grad">{label}{self.agreement(gradient.gap, what)}</span>')
            gaps.append(gradient.gap)
        return tags, gaps

    def backward(self, section: Section, part: Part) -> str:
        if part.numpy_backward is None:
            return ""
        np_file = html.escape(f"{self.learner or 'numpy_impl'}/{section.numpy_path.name}")
        head = (
            '<div class="thead"><div>the forward line it undoes</div>'
            f'<div><span class="lib np">NumPy</span> {part.name}.backward <span '
            f'class="file">{np_file}</span>'
            f"{' (yours)' if self.learner else ''}</div></div>"
        )
        if part.stub:
            folder = html.escape(str(self.learner.parent))
            return (
                f'<div class="backward code stub">{head}<div class="notyet">Not written yet: '
                f"{part.name}.backward "
                f"still raises NotImplementedError. When you have written it, "
                f"<code>python demo.py exercises check {folder}</code> marks it, and "
                f"<code>python demo.py read --exercises {folder}</code> shows it here.</div></div>"
            )
        if not part.steps:
            return ""
        verdict = self.verdicts.get(part.name)
        out = [f'<div class="backward code">{head}']
        if verdict is not None:
            status = html.escape(verdict["status"])
            out.append(
                f'<div class="verdict {slug(verdict["status"])}"><b>exercises check: {status}</b> '
                f"{html.escape(verdict['words'])}</div>"
            )
        marks = (verdict or {}).get("lines", {})
        for step in part.steps:
            if step.unwritten is not None:
                name, _, what = step.unwritten.partition(": ")
                out.append(
                    '<div class="step stub"><div class="undoes"></div><div class="lines">'
                    f'<div class="notyet">Not written yet: step <code>{html.escape(name)}</code> '
                    f"({html.escape(what)}) still raises NotImplementedError.</div></div></div>"
                )
                continue
            targets = [f"{slug(section.stem)}-{slug(part.name)}-f{k}" for k in step.undoes]
            if step.undoes:
                left = "".join(render_lines(dedented(part.rows[k].numpy)) for k in step.undoes)
            elif step.quote is not None:
                left = f'<p class="quote">forward: {html.escape(step.quote)}</p>'
            else:
                left = '<p class="quote">before the first step: what the forward cached</p>'
            lines, step_gaps = [], []
            for unit in step.units:
                tags, gaps = (
                    self.gradient_tags(section, part, unit) if unit.kind != "comment" else ([], [])
                )
                tags += boundary_tag(unit)
                step_gaps += gaps
                shapes = self.shapes("numpy", section, part, "backward", unit)
                span = range(unit.first_line, unit.first_line + len(unit.lines))
                tags += [
                    f'<span class="parting">&#9664; {html.escape(marks[n])}</span>'
                    for n in span
                    if n in marks
                ]
                lines.append(render_lines(unit, shapes=shapes, tags="".join(tags)))
            attributes = f' data-undoes="{" ".join(targets)}" tabindex="0"' if targets else ""
            if step_gaps:
                worst = max(step_gaps, key=lambda gap: max(gap.relative.values()))
                attributes += self.data_attributes(worst, "grad")
            out.append(
                f'<div class="step"{attributes}><div class="undoes">{left}</div>'
                f'<div class="lines">{"".join(lines)}</div></div>'
            )
        out.append("</div>")
        return "\n".join(out)

    # --- sections, hooks, the page ---

    def section(self, section: Section) -> str:
        formula = FORMULAS.get(section.stem)
        out = [
            f'<section class="component" id="{slug(section.stem)}">',
            f"<h2>{html.escape(section.title)} <span "
            f'class="classes">numpy_impl/{section.numpy_path.name} · '
            f"torch_impl/{section.torch_path.name}</span></h2>",
            f'<div class="formula">{to_mathml(formula, section.title)}</div>' if formula else "",
            f'<div class="doc">{render_docstring(section.docstring)}</div>',
        ]
        for part in section.parts:
            out.append(self.forward(section, part))
            out.append(self.backward(section, part))
        out.append("</section>")
        return "\n".join(out)

    def hook_call_cell(self, units: list[Unit], path: Path) -> str:
        if not units:
            return f'<td class="none">{path.parent.name}: not called in the forward</td>'
        pieces = []
        for unit in units:
            where = f"{path.parent.name}/{path.name}:{unit.first_line}"
            pieces.append(
                f'<a href="#{self.ids.get(id(unit), "")}">{where}</a>{render_lines(dedented(unit))}'
            )
        return "<td>" + "".join(pieces) + "</td>"

    def hook_table(self) -> str:
        paths = {
            part.name: (section.numpy_path, section.torch_path)
            for section in self.sections
            for part in section.parts
        }
        out = [
            '<section id="hooks"><h2>Every hook point</h2>',
            "<p>Each hook's name as the model names it (<code>{i}</code> is the block index), the "
            "shape of "
            "the tensor it sees, and the forward line in each twin that calls it. Its gradient is "
            "<code>&lt;name&gt;_grad</code>, as in TransformerLens's <code>run_with_cache(..., "
            "incl_bwd=True)</code>. "
            'In the code above a hook call is marked <span class="hook">hook_…</span> and its row '
            "carries a bar on "
            "the left and the hook's full name on the right.</p>",
            '<table class="hooks code"><colgroup><col class="names"><col '
            'class="shapecol"><col><col></colgroup>'
            "<thead><tr><th>hook</th><th>shape</th><th>NumPy</th><th>torch</th></tr></thead>"
            "<tbody>",
        ]
        for hook in self.hooks:
            np_path, torch_path = paths[hook.owner]
            names = "<br>".join(f"<code>{html.escape(name)}</code>" for name in hook.names)
            out.append(
                f'<tr><td class="names">{names}<div '
                f'class="owner">{hook.owner}.{hook.attribute}</div></td>'
                f'<td><span class="shape">{html.escape(hook.shape)}</span></td>'
                f"{self.hook_call_cell(hook.numpy_calls, np_path)}"
                f"{self.hook_call_cell(hook.torch_calls, torch_path)}</tr>"
            )
        out.append("</tbody></table></section>")
        return "\n".join(out)

    def summary(self) -> str:
        """What the numbers on the page come from, in a sentence or two."""
        if self.measured is None:
            return ""
        m = self.measured
        gaps = list(m.forward.values())
        worst = {
            dtype: max((gap.relative.get(dtype, 0.0) for gap in gaps), default=0.0)
            for dtype in ("float64", "float32")
        }
        models = "; ".join(
            f"{name}: d_model {cfg.d_model}, {cfg.n_heads} heads of {cfg.d_head}, d_mlp "
            f"{cfg.d_mlp}, {cfg.n_layers} layers, "
            f"d_vocab {cfg.d_vocab}, n_ctx {cfg.n_ctx}"
            for name, cfg in m.models.items()
        )
        sentences = " and ".join(f"“{html.escape(s)}”" for s in m.sentences)
        problems = (
            (
                f'<p class="problems">{len(m.problems)} shape comment(s) disagree with the run: '
                + "; ".join(html.escape(p) for p in m.problems[:5])
                + "</p>"
            )
            if m.problems
            else ""
        )
        learner = (
            "Your backward passes are not in this run: <code>python demo.py exercises check</code> "
            "marked them when the page was written, and its verdict stands above each backward, "
            "with "
            "the line where your gradient first parts from the reference marked &#9664;. "
            if self.learner
            else ""
        )
        return (
            '<div class="runinfo"><p><b>The numbers beside the lines</b> come from one run of both '
            "twins, made when this "
            f"page was written: the sentences {sentences} (batch {len(m.tokens)}, pos "
            f"{len(m.tokens[0])}) through two models "
            f"with the same random weights in each twin ({html.escape(models)}), in float64 and in "
            f"float32. "
            f"Beside each forward row: the largest |NumPy − torch| of the value it assigns "
            f"({len(gaps)} rows; the worst "
            f"relative to the value's size: {worst['float64']:.1e} in float64, "
            f"{worst['float32']:.1e} in float32; "
            f"the parity tolerances are {TOL['float64']:.0e} and {TOL['float32']:.0e}). Beside "
            f"each shape badge: the shape "
            f"the run gave that value ({m.checked_shapes} shape comments checked, "
            f"{len(m.problems)} disagreeing). Beside a "
            f"backward line that fills a parameter's gradient, passes a hook point or returns: how "
            f"far that gradient is "
            f"from torch autograd's. {learner}Hover a number for details.</p>{problems}</div>"
        )


def render_docstring(text: str) -> str:
    """Prose paragraphs, and the indented lines (the equations) as a block of their own."""
    out, prose, maths = [], [], []

    def flush():
        if prose:
            words = html.escape(" ".join(prose))
            out.append("<p>" + re.sub(r"``(.+?)``", r"<code>\1</code>", words) + "</p>")
            prose.clear()
        if maths:
            out.append('<pre class="eq">' + html.escape("\n".join(maths)) + "</pre>")
            maths.clear()

    indents = [
        len(line) - len(line.lstrip())
        for line in text.split("\n")
        if line.strip() and line.startswith(" ")
    ]
    strip = min(indents) if indents else 0
    for line in text.split("\n"):
        if not line.strip():
            flush()
        elif line.startswith(" "):
            if prose:
                flush()
            maths.append(line[strip:])
        else:
            if maths:
                flush()
            prose.append(line.strip())
    flush()
    return "\n".join(out)


# light and dark, as CSS custom properties; the page follows prefers-color-scheme unless the toggle
# chose one
THEMES = {
    "light": dict(
        bg="#ffffff",
        fg="#1f2328",
        muted="#6b7280",
        line="#e5e7eb",
        rowline="#f0f1f3",
        panel="#fafaf7",
        eqbg="#f8f7f2",
        eqborder="#b9b29a",
        lit="#fff3b0",
        mark="#ffe58f",
        markring="#f0c000",
        shapebg="#e8f0fe",
        shapefg="#1e3a8a",
        shapeborder="#c7d7fb",
        hookbg="#f1eafe",
        hookfg="#5b21b6",
        hash="#b6bcc6",
        empty1="#fafafa",
        empty2="#f1f1f1",
        ok="#15803d",
        bad="#b91c1c",
        navbg="#ffffffee",
        no="#9ca3af",
        codebg="#f3f4f6",
        np="#1f5fa8",
        torch="#c2410c",
        run="#6b7280",
        head="#1f2328",
    ),
    "dark": dict(
        bg="#0f1117",
        fg="#e3e6eb",
        muted="#9aa4b2",
        line="#2b303b",
        rowline="#1b1f27",
        panel="#151922",
        eqbg="#161a22",
        eqborder="#4b5563",
        lit="#3d3512",
        mark="#5a4700",
        markring="#a88500",
        shapebg="#1b2744",
        shapefg="#bfd2ff",
        shapeborder="#2f4678",
        hookbg="#2a2046",
        hookfg="#d2c0ff",
        hash="#596070",
        empty1="#13161d",
        empty2="#181c24",
        ok="#86efac",
        bad="#fca5a5",
        navbg="#0f1117ee",
        no="#6b7280",
        codebg="#1c212b",
        np="#5b9be6",
        torch="#f08a4b",
        run="#9aa4b2",
        head="#e3e6eb",
    ),
}


def theme_variables(theme: str) -> str:
    return (
        " ".join(f"--{name}: {value};" for name, value in THEMES[theme].items())
        + f" color-scheme: {theme};"
    )


CSS = """
:root { --mono: "DejaVu Sans Mono", "Cascadia Mono", Menlo, Consolas, "Liberation Mono", monospace;
        --lnum-width: 3.4em; }
* { box-sizing: border-box; }
html { scroll-padding-top: 56px; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif;
       color: var(--fg);
       background: var(--bg); }
main, header.top, footer { max-width: 1900px; margin: 0 auto; padding: 0 28px; }
h1 { font-size: 26px; margin: 18px 0 6px; }
h2 { font-size: 21px; margin: 40px 0 6px; padding-top: 10px; border-top: 2px solid var(--head); }
h2 .classes { font-size: 14px; font-weight: normal; color: var(--muted); margin-left: 10px;
              font-family: var(--mono); }
p { max-width: 100ch; margin: 6px 0; }
a { color: var(--np); }
code, pre { font-family: var(--mono); }
code { font-size: 13px; background: var(--codebg); padding: 0 3px; border-radius: 3px; }
nav.bar { position: sticky; top: 0; z-index: 20; display: flex; align-items: center; gap: 14px;
          padding: 6px 28px;
          background: var(--navbg); border-bottom: 1px solid var(--line);
          backdrop-filter: blur(4px); font-size: 13.5px; }
nav.bar ol { display: flex; gap: 4px 14px; list-style: none; margin: 0; padding: 0;
             flex-wrap: wrap; flex: 1; }
nav.bar a { color: var(--fg); text-decoration: none; padding: 2px 4px; border-radius: 4px;
            white-space: nowrap; }
nav.bar a:hover, nav.bar a.here { background: var(--codebg); color: var(--np); }
nav.bar .home { font-weight: 700; }
button.theme { font: inherit; font-size: 13px; color: var(--fg); background: var(--codebg);
               border: 1px solid var(--line);
               border-radius: 6px; padding: 2px 10px; cursor: pointer; white-space: nowrap; }
.legend { display: flex; gap: 8px 22px; flex-wrap: wrap; font-size: 14px; color: var(--muted);
          margin: 10px 0; }
.runinfo, .learner { font-size: 14px; border-left: 3px solid var(--np); padding: 4px 12px;
                     background: var(--panel); margin: 10px 0; }
.learner { border-left-color: var(--torch); }
.verdict { font-size: 13px; padding: 4px 12px; border-left: 3px solid var(--torch); margin: 4px 0; }
.verdict.done { border-left-color: var(--np); }
.parting { color: #c0392b; font-weight: 600; white-space: normal; }
.problems { color: var(--bad); }
.formula { margin: 10px 0 4px; padding: 6px 14px; background: var(--eqbg);
           border-left: 3px solid var(--eqborder);
           overflow-x: auto; }
.formula .eqline { margin: 4px 0; }
.formula math { font-size: 19px;
                font-family: "STIX Two Math", "Cambria Math", "Latin Modern Math",
                             "DejaVu Math TeX Gyre", math; }
.doc { margin: 6px 0 14px; }
.doc pre.eq { margin: 8px 0; padding: 6px 14px; background: var(--eqbg);
              border-left: 3px solid var(--eqborder);
              font-size: 13px; line-height: 1.5; white-space: pre-wrap; }

/* a line: its number and its code in one grid row, so the number stays with the line when
   it wraps */
.ln { display: grid; grid-template-columns: var(--lnum-width) minmax(0, 1fr); column-gap: 8px;
      align-items: start;
      min-height: 1.5em; }
.ln .lnum { color: var(--no); text-align: right; font-family: var(--mono); font-size: 12px;
            line-height: 19.5px;
          user-select: none; }
.ln .src { font-family: var(--mono); font-size: 13px; line-height: 19.5px; white-space: pre-wrap;
           overflow-wrap: anywhere;
           padding-left: 4ch; text-indent: -4ch; min-width: 0; }
.ln.tagged { grid-template-columns: var(--lnum-width) minmax(0, 1fr) auto; }
.ln .tag { display: flex; flex-direction: column; align-items: flex-end; gap: 2px;
           font-size: 11.5px; max-width: 22em;
           padding-top: 1px; }

.code { margin: 12px 0 6px; }
.thead { display: grid; font-weight: 600; font-size: 14px; border-bottom: 1px solid var(--muted); }
.thead > div { padding: 4px 8px; }
.thead .file { font-weight: normal; color: var(--muted); font-family: var(--mono);
               font-size: 12.5px; margin-left: 6px; }
.thead .meta { font-weight: normal; color: var(--muted); font-size: 12px; text-align: right; }
.lib { display: inline-block; padding: 0 7px; border-radius: 9px; color: #fff; font-size: 12.5px;
       margin-right: 4px; }
.lib.np { background: var(--np); } .lib.torch { background: var(--torch); }
.twins .thead, .twins .row { grid-template-columns: minmax(0, 1fr) minmax(0, 1fr) 15em; }
.twins .row { display: grid; border-bottom: 1px solid var(--rowline); }
.cell { padding: 1px 8px 1px 0; min-width: 0; }
.cell.np { border-right: 1px solid var(--line); }
.cell.torch { border-right: 1px solid var(--line); }
.cell.empty { background: repeating-linear-gradient(135deg, var(--empty1) 0 6px,
                                                    var(--empty2) 6px 12px); }
.cell.has-hook { box-shadow: inset 3px 0 0 #7c3aed; }
.row .meta { padding: 2px 6px; display: flex; flex-direction: column; align-items: flex-end;
             gap: 2px; font-size: 11.5px;
             min-width: 0; }
.note { font-size: 13px; color: var(--muted); font-style: italic; padding: 2px 8px; }
.agree { display: inline-flex; gap: 6px; font-family: var(--mono); font-size: 11px;
         line-height: 16px; padding: 0 5px;
         border-radius: 7px; border: 1px solid var(--line); background: var(--panel);
         white-space: nowrap; }
.agree i { font-style: normal; color: var(--muted); }
.agree .ok { color: var(--ok); } .agree .bad { color: var(--bad); font-weight: 700; }
.notrun { color: var(--muted); font-style: italic; }
.cell.decorator { box-shadow: inset 3px 0 0 var(--ok); }
.checks { font-size: 11px; color: var(--muted); text-align: right; }
.checks a { color: inherit; } .checks a.kind { font-family: var(--mono); margin-left: 3px; }
table.kinds { border-collapse: collapse; width: 100%; font-size: 14px; table-layout: fixed;
              overflow-wrap: anywhere; }
table.kinds col.kind { width: 20%; } table.kinds col.check { width: 28%; }
table.kinds td, table.kinds th { border-bottom: 1px solid var(--line); padding: 3px 6px;
                                 text-align: left; vertical-align: top; }
code.hookname, code.param { font-size: 11px; line-height: 15px; background: var(--hookbg);
                            color: var(--hookfg);
                            padding: 0 4px; text-align: right; }
.shapecomment { white-space: nowrap; }
code.param { background: var(--codebg); color: var(--fg); }
.grad { display: flex; flex-wrap: wrap; justify-content: flex-end; gap: 2px 4px; }
.returned { color: var(--muted); font-style: italic; }
mark.dx { background: var(--mark); border-radius: 2px; box-shadow: 0 0 0 1px var(--markring);
          color: inherit; }
.shape { display: inline-block; font-family: var(--mono); font-size: 11.5px; line-height: 1.35;
         padding: 0 6px;
         border-radius: 8px; background: var(--shapebg); color: var(--shapefg);
         border: 1px solid var(--shapeborder);
         text-indent: 0; }
.shape.wrong { background: var(--bad); color: var(--bg); }
.run { font-family: var(--mono); font-size: 10.5px; color: var(--run); margin-left: 4px;
       user-select: none; text-indent: 0; }
.hash { color: var(--hash) !important; font-style: normal !important; }
.hook { background: var(--hookbg); color: var(--hookfg) !important; border-radius: 3px;
        padding: 0 2px; }
.backward .thead, .step { grid-template-columns: 34% minmax(0, 1fr); }
.step { display: grid; border-bottom: 1px solid var(--line); cursor: default; }
.step > div { padding: 3px 8px 3px 0; min-width: 0; }
.step .undoes { background: var(--panel); border-right: 1px solid var(--line); opacity: 0.9; }
.step p.quote { margin: 0 0 0 8px; font-size: 13px; color: var(--muted); font-style: italic; }
.step.lit > div, .step:focus > div { background: var(--lit); }
.row.lit > .cell, .row.lit > .meta { background: var(--lit) !important;
                                     transition: background 0.1s; }
.stub .notyet { padding: 10px 12px; font-style: italic; color: var(--muted);
                border-bottom: 1px solid var(--line); }
table.hooks { border-collapse: collapse; width: 100%; font-size: 14px; table-layout: fixed; }
table.hooks col.names { width: 21%; } table.hooks col.shapecol { width: 15%; }
table.hooks td.names code { white-space: nowrap; }
/* a long shape badge wraps inside its column (after a comma), never over the next column's links */
table.hooks .shape { white-space: normal; max-width: 100%; box-sizing: border-box; }
table.hooks td { overflow-wrap: anywhere; }
table.hooks th, table.hooks td { text-align: left; vertical-align: top; padding: 5px 8px;
                                 border-bottom: 1px solid var(--line); }
table.hooks td.names code { background: none; padding: 0; }
table.hooks .owner { color: var(--muted); font-size: 12.5px; }
table.hooks td.none { color: var(--muted); font-style: italic; }
footer { margin-top: 40px; padding-bottom: 48px; color: var(--muted); font-size: 13px; }

/* narrow screens: the twins' panes stack (NumPy above torch, row by row), the numbers below them */
@media (max-width: 760px) {
  main, header.top, footer { padding: 0 10px; }
  nav.bar { padding: 6px 10px; }
  /* every section link in sight: the links wrap onto a second and third row, none hidden
     off-screen */
  nav.bar { align-items: flex-start; }
  nav.bar ol { gap: 2px 8px; min-width: 0; font-size: 12.5px; }
  :root { --lnum-width: 2.6em; }
  .twins .thead, .twins .row, .backward .thead, .step { grid-template-columns: minmax(0, 1fr); }
  .twins .thead .meta { display: none; }
  .cell { border-right: 0 !important; border-left: 3px solid var(--np); }
  .cell.torch { border-left-color: var(--torch); }
  .cell.empty { display: none; }
  .row .meta { flex-direction: row; flex-wrap: wrap; justify-content: flex-end; }
  .step .undoes { border-right: 0; border-bottom: 1px dashed var(--line); }
  .ln.tagged { grid-template-columns: var(--lnum-width) minmax(0, 1fr); }
  .ln .tag { grid-column: 2; align-items: flex-start; max-width: none; }
  table.hooks, table.hooks tbody, table.hooks tr, table.hooks td { display: block; width: auto; }
  table.hooks colgroup, table.hooks thead { display: none; }
  table.hooks tr { border-bottom: 2px solid var(--line); padding: 4px 0; }
  table.hooks td { border: 0; padding: 2px 0; }
}
"""


def theme_css() -> str:
    """Both themes: the system's choice by default, the toggle's when it made one (``data-theme`` on
    <html>)."""
    light, dark = theme_variables("light"), theme_variables("dark")
    pygments_light = HtmlFormatter(style=STYLES["light"]).get_style_defs(".code")
    selectors_dark = [':root[data-theme="dark"] .code']
    pygments_dark = HtmlFormatter(style=STYLES["dark"]).get_style_defs(selectors_dark)
    pygments_auto = HtmlFormatter(style=STYLES["dark"]).get_style_defs(
        ':root:not([data-theme="light"]) .code'
    )
    return "\n".join(
        [
            f":root {{ {light} }}",
            pygments_light,
            f':root[data-theme="dark"] {{ {dark} }}',
            pygments_dark,
            f'@media (prefers-color-scheme: dark) {{ :root:not([data-theme="light"]) {{ {dark} '
            f"}}\n{pygments_auto}\n}}",
            ".code, .code pre { background: transparent !important; } .code .hll { background: "
            "var(--lit); }",
        ]
    )


EARLY_SCRIPT = """
// the theme the toggle chose last time on this page, before anything is drawn
try {
  const t = localStorage.getItem("twins-theme");
  if (t) document.documentElement.dataset.theme = t;
} catch (e) {}
"""

SCRIPT = """
// pointing at a backward step lights every forward row it undoes (and pointing at a row, its steps)
const steps = [...document.querySelectorAll(".step[data-undoes]")];
const stepsOf = new Map();
for (const step of steps) {
  const ids = step.dataset.undoes.split(" ");
  const rows = ids.map((id) => document.getElementById(id)).filter(Boolean);
  rows.forEach((row) => stepsOf.set(row, [...(stepsOf.get(row) || []), step]));
  const light = (on) => {
    step.classList.toggle("lit", on);
    rows.forEach((row) => row.classList.toggle("lit", on));
  };
  step.addEventListener("mouseenter", () => light(true));
  step.addEventListener("mouseleave", () => light(false));
  step.addEventListener("focus", () => light(true));
  step.addEventListener("blur", () => light(false));
}
for (const [row, its] of stepsOf) {
  row.addEventListener("mouseenter", () => its.forEach((step) => step.classList.add("lit")));
  row.addEventListener("mouseleave", () => its.forEach((step) => step.classList.remove("lit")));
}
// the theme toggle: flips between light and dark; back at the system's choice, it follows the
// system again
const root = document.documentElement, button = document.getElementById("theme");
const system = () => (matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light");
const shown = () => root.dataset.theme || system();
const label = () => {
  button.textContent = shown() === "dark" ? "Light" : "Dark";
  button.title = "switch to the " + button.textContent.toLowerCase() + " theme";
};
button.addEventListener("click", () => {
  const next = shown() === "dark" ? "light" : "dark";
  if (next === system()) delete root.dataset.theme; else root.dataset.theme = next;
  try {
    if (root.dataset.theme) localStorage.setItem("twins-theme", next);
    else localStorage.removeItem("twins-theme");
  } catch (e) {}
  label();
});
matchMedia("(prefers-color-scheme: dark)").addEventListener("change", label);
label();
// the navigation marks the section on screen
const anchors = [...document.querySelectorAll("nav.bar ol a")];
const links = new Map(anchors.map((a) => [a.getAttribute("href").slice(1), a]));
const spy = new IntersectionObserver((entries) => {
  for (const entry of entries) if (entry.isIntersecting) {
    links.forEach((a) => a.classList.remove("here"));
    const a = links.get(entry.target.id); if (a) a.classList.add("here");
  }
}, { rootMargin: "-60px 0px -70% 0px" });
document.querySelectorAll("section[id]").forEach((section) => spy.observe(section));
"""

INTRO = """
<p>The NumPy reference and its torch twin, read side by side. Each section is one component, in the
order of the forward pass: its formula, then the two forwards lined up so that the same variable
is assigned on the same row (a line one twin has and the other has not faces a hatched blank), then
the NumPy backward, each step beside the forward lines it undoes. This page is generated from the
source files by <code>python demo.py read</code>; it holds no copy of the code of its own.</p>
"""

REFERENCE_NOTE = """
<p class="learner">This page shows the reference's backward passes, which are also the answers to
the exercises (<code>python demo.py exercises</code>). To read the page without them, with your
own backward passes in their place: <code>python demo.py read --exercises DIR</code>, DIR being
the folder you gave to
<code>exercises init</code>.</p>
"""


def learner_note(learner: Path) -> str:
    return (
        f'<p class="learner">A learner\'s copy: the NumPy backward passes below are read from '
        f"<code>{html.escape(str(learner))}</code>, yours as they stand now; where one still "
        f"raises "
        "<code>NotImplementedError</code> the page says so. Forwards are the reference's, which "
        "your copy keeps. "
        "No reference backward is on this page.</p>"
    )


def legend(measured) -> str:
    items = [
        '<span><mark class="dx">axis</mark> a token that differs between the twins on that '
        "row</span>",
        '<span><span class="shape">[batch, pos, d_model]</span><span class="run">2×5×24</span> the '
        "shape comment, "
        "and the shape the run made</span>",
        '<span><span class="hook">hook_scale</span> <code '
        'class="hookname">blocks.{i}.ln1.hook_scale</code> '
        "a hook point and its full name (see the table at the end)</span>",
    ]
    if measured:
        items.append(
            '<span><span class="agree"><span class="ok"><i>f64</i> 4.4e-16</span><span '
            'class="ok"><i>f32</i> 2.4e-07'
            "</span></span> largest |NumPy − torch| of the line's value (green: within the parity "
            "tolerance)</span>"
        )
    items.append("<span>point at a backward step to light the forward lines it undoes</span>")
    return '<div class="legend">' + "".join(items) + "</div>"


def build_page(
    sections: list[Section] | None = None,
    hooks: list[Hook] | None = None,
    measured=None,
    learner: Path | None = None,
    verdicts=None,
) -> str:
    """The whole page as one string, read from the source files now (unless they were just read).

    ``measured``: a ``reading.measure.Measurements`` for the numbers beside the lines (None: no
    numbers); ``learner``: the learner's numpy_impl folder whose backward passes ``sections`` were
    read from.
    """
    sections = read_sections() if sections is None else sections
    hooks = read_hooks(sections) if hooks is None else hooks
    page = Page(sections, hooks, measured, learner, verdicts)
    body = [page.section(section) for section in sections]
    toc = "".join(
        f'<li><a href="#{slug(s.stem)}" '
        f'title="{html.escape(s.title)}">{NAV_LABELS.get(s.stem, s.title)}</a></li>'
        for s in sections
    )
    toc += '<li><a href="#hooks" title="Every hook point">Hooks</a></li>'
    toc += '<li><a href="#boundary" title="What @boundary checks">Boundary</a></li>'
    title = "a learner's copy" if learner else "the two twins side by side"
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            '<meta name="color-scheme" content="light dark">',
            f"<title>Transformer Twins: {title}</title>",
            f"<script>{EARLY_SCRIPT}</script>",
            f"<style>{theme_css()}\n{CSS}</style></head><body>",
            f'<nav class="bar" aria-label="sections"><a class="home" '
            f'href="#top">Twins</a><ol>{toc}</ol>'
            '<button class="theme" id="theme" type="button">Dark</button></nav>',
            '<header class="top" id="top"><h1>Transformer Twins: NumPy and torch, line by '
            "line</h1>",
            INTRO,
            learner_note(learner) if learner else REFERENCE_NOTE,
            page.summary(),
            legend(measured),
            "</header><main>",
            *body,
            page.hook_table(),
            boundary_section(),
            "</main>",
            "<footer>Generated from numpy_impl/ and torch_impl/ by <code>python demo.py read</code>"
            f"{' --exercises' if learner else ''}; highlighting by Pygments; formulas in "
            f"MathML.</footer>",
            f"<script>{SCRIPT}</script>",
            "</body></html>",
        ]
    )


def write_page(
    out_dir,
    sections: list[Section] | None = None,
    hooks: list[Hook] | None = None,
    measured=None,
    learner: Path | None = None,
    name: str = "read.html",
    verdicts=None,
) -> Path:
    """Write the page into ``out_dir`` (made if missing) and return its path.

    ``verdicts``: the checker's marks on a learner's copy ({class: {"status", "words", "lines"}}),
    shown above each backward and beside the lines they point at.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / name
    path.write_text(build_page(sections, hooks, measured, learner, verdicts), encoding="utf-8")
    return path
