"""Write the reading page: one HTML file with its styles and its one small script inline.

Highlighting comes from Pygments' Python lexer and one of its styles; this module only adds
what a diff of two twins needs on top: marks on the tokens that differ between two facing
lines, shape comments drawn as badges, and hook calls drawn as hooks. Every line keeps its
exact text (a badge still reads ``# [batch, pos, d_model]``), so the page can be checked
against the source.
"""

from __future__ import annotations

import difflib
import html
import re
import textwrap
from pathlib import Path

from pygments.formatters import HtmlFormatter
from pygments.lexers import PythonLexer
from pygments.token import STANDARD_TYPES, Comment, Name, String, Text

from .source import SHAPE_COMMENT, Hook, Part, Section, Unit, read_hooks, read_sections

STYLE = "default"
LEXER = PythonLexer()


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
    return value.strip() != "" and ttype not in Comment and not (ttype in String.Doc)


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


def render_comment(ttype, value: str) -> str:
    """A shape comment becomes a badge (its text unchanged); any other comment stays a comment."""
    cls = css_class(ttype)
    match = SHAPE_COMMENT.match(value)
    if not match:
        return f'<span class="{cls}">{html.escape(value)}</span>'
    shape, rest = match.group(1), match.group(2)
    hash_part = value[: value.index("[")]
    out = f'<span class="{cls} hash">{html.escape(hash_part)}</span><span class="shape">{html.escape(shape)}</span>'
    if rest:
        out += f'<span class="{cls}">{html.escape(rest)}</span>'
    return out


def render_unit(unit: Unit | None, marked: set[int] = frozenset(), tokens=None) -> str:
    """The unit's lines as ``<span class="ln">`` elements, highlighted."""
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
            piece = render_comment(ttype, value)
        elif ttype in Name and value.startswith("hook_"):
            piece = f'<span class="{css_class(ttype)} hook">{html.escape(value)}</span>'
        else:
            piece = f'<span class="{css_class(ttype)}">{html.escape(value)}</span>' if value.strip() else html.escape(value)
        if k in marked:
            piece = f'<mark class="dx">{piece}</mark>'
        current.append(piece)
    lines.append(current)
    return "".join(f'<span class="ln">{"".join(line) or " "}</span>' for line in lines)


def line_numbers(unit: Unit | None) -> str:
    if unit is None:
        return ""
    return "".join(f'<span class="ln">{unit.first_line + k}</span>' for k in range(len(unit.lines)))


def dedented(unit: Unit) -> Unit:
    """The unit with its indentation taken off, for showing it outside its function."""
    return Unit(textwrap.dedent(unit.text).split("\n"), unit.first_line, unit.kind, unit.key, unit.assigns)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def cell_attrs(unit: Unit | None, side: str) -> str:
    classes = [side]
    if unit is None:
        classes.append("empty")
    elif unit.kind == "comment":
        classes.append("comment")
    if unit is not None and re.search(r"\bself\.hook_\w+\(", unit.text):
        classes.append("has-hook")
    return f'class="{" ".join(classes)}"'


def render_forward(section: Section, part: Part, ids: dict[int, str]) -> str:
    np_file = f"numpy_impl/{section.numpy_path.name}"
    torch_file = f"torch_impl/{section.torch_path.name}"
    head_name = f"{part.name}.forward" if part.kind == "class" else f"{part.name}()"
    out = [
        '<table class="code twins forward">',
        '<colgroup><col class="no"><col class="half"><col class="no"><col class="half"></colgroup>',
        f'<thead><tr><th colspan="2"><span class="lib np">NumPy</span> {head_name} <span class="file">{np_file}</span></th>',
        f'<th colspan="2"><span class="lib torch">torch</span> {head_name} <span class="file">{torch_file}</span></th></tr></thead>',
        "<tbody>",
    ]
    if part.torch_note:
        out.append(f'<tr class="note"><td colspan="2"></td><td colspan="2">{html.escape(part.torch_note)}</td></tr>')
    for k, row in enumerate(part.rows):
        row_id = f"{slug(section.stem)}-{slug(part.name)}-f{k}"
        for unit in (row.numpy, row.torch):
            if unit is not None:
                ids[id(unit)] = row_id
        np_marked = torch_marked = set()
        np_tokens = lex(row.numpy) if row.numpy else None
        torch_tokens = lex(row.torch) if row.torch else None
        if row.numpy and row.torch and row.numpy.code != row.torch.code:
            np_marked = differing(np_tokens, torch_tokens)
            torch_marked = differing(torch_tokens, np_tokens)
        out.append(
            f'<tr id="{row_id}">'
            f'<td class="no">{line_numbers(row.numpy)}</td>'
            f"<td {cell_attrs(row.numpy, 'np')}><pre>{render_unit(row.numpy, np_marked, np_tokens)}</pre></td>"
            f'<td class="no">{line_numbers(row.torch)}</td>'
            f"<td {cell_attrs(row.torch, 'torch')}><pre>{render_unit(row.torch, torch_marked, torch_tokens)}</pre></td>"
            "</tr>"
        )
    out.append("</tbody></table>")
    return "\n".join(out)


def render_backward(section: Section, part: Part) -> str:
    if not part.steps:
        return ""
    np_file = f"numpy_impl/{section.numpy_path.name}"
    out = [
        '<table class="code backward">',
        '<colgroup><col class="undoes"><col class="no"><col class="wide"></colgroup>',
        "<thead><tr><th>the forward line it undoes</th>",
        f'<th colspan="2"><span class="lib np">NumPy</span> {part.name}.backward <span class="file">{np_file}</span></th></tr></thead>',
        "<tbody>",
    ]
    for step in part.steps:
        targets = [f"{slug(section.stem)}-{slug(part.name)}-f{k}" for k in step.undoes]
        if step.undoes:
            left = "".join(render_unit(dedented(part.rows[k].numpy)) for k in step.undoes)
            left = f"<pre>{left}</pre>"
        elif step.quote is not None:
            left = f'<p class="quote">forward: {html.escape(step.quote)}</p>'
        else:
            left = '<p class="quote">before the first step: the checks, and what the forward cached</p>'
        lines = "".join(line_numbers(unit) for unit in step.units)
        code = "".join(render_unit(unit) for unit in step.units)
        attrs = f' data-undoes="{" ".join(targets)}" tabindex="0"' if targets else ""
        out.append(
            f'<tr class="step"{attrs}><td class="undoes">{left}</td>'
            f'<td class="no">{lines}</td><td class="np"><pre>{code}</pre></td></tr>'
        )
    out.append("</tbody></table>")
    return "\n".join(out)


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

    indents = [len(line) - len(line.lstrip()) for line in text.split("\n") if line.strip() and line.startswith(" ")]
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


def render_section(section: Section, ids: dict[int, str]) -> str:
    out = [
        f'<section class="component" id="{slug(section.stem)}">',
        f'<h2>{html.escape(section.title)} <span class="classes">numpy_impl/{section.numpy_path.name} · '
        f"torch_impl/{section.torch_path.name}</span></h2>",
        f'<div class="doc">{render_docstring(section.docstring)}</div>',
    ]
    for part in section.parts:
        out.append(render_forward(section, part, ids))
        out.append(render_backward(section, part))
    out.append("</section>")
    return "\n".join(out)


def hook_call_cell(units: list[Unit], path: Path, ids: dict[int, str]) -> str:
    if not units:
        return '<td class="none">not called in the forward</td>'
    pieces = []
    for unit in units:
        where = f"{path.parent.name}/{path.name}:{unit.first_line}"
        pieces.append(f'<a href="#{ids.get(id(unit), "")}">{where}</a><pre>{render_unit(dedented(unit))}</pre>')
    return "<td>" + "".join(pieces) + "</td>"


def render_hooks(hooks: list[Hook], sections: list[Section], ids: dict[int, str]) -> str:
    paths = {part.name: (section.numpy_path, section.torch_path) for section in sections for part in section.parts}
    out = [
        '<section id="hooks"><h2>Every hook point</h2>',
        "<p>Each hook's name as the model names it (<code>{i}</code> is the block index), the shape of "
        "the tensor it sees, and the forward line in each twin that calls it. In the code above a hook "
        'call is marked <span class="hook">hook_…</span> and its row carries a bar on the left.</p>',
        '<table class="hooks"><colgroup><col class="names"><col class="shape"><col><col></colgroup><thead><tr><th>hook</th><th>shape</th><th>NumPy</th><th>torch</th></tr></thead><tbody>',
    ]
    for hook in hooks:
        np_path, torch_path = paths[hook.owner]
        names = "<br>".join(f"<code>{html.escape(name)}</code>" for name in hook.names)
        out.append(
            f'<tr><td class="names">{names}<div class="owner">{hook.owner}.{hook.attribute}</div></td>'
            f'<td><span class="shape">{html.escape(hook.shape)}</span></td>'
            f"{hook_call_cell(hook.numpy_calls, np_path, ids)}{hook_call_cell(hook.torch_calls, torch_path, ids)}</tr>"
        )
    out.append("</tbody></table></section>")
    return "\n".join(out)


CSS = """
:root { --np: #1f5fa8; --torch: #c2410c; --line: #e5e7eb; --muted: #6b7280; --lit: #fff3b0;
        --mono: "DejaVu Sans Mono", "Cascadia Mono", Menlo, Consolas, "Liberation Mono", monospace; }
* { box-sizing: border-box; }
body { margin: 0; padding: 24px 32px 64px; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif;
       color: #1f2328; background: #fff; }
header, section { max-width: 1900px; margin: 0 auto; }
h1 { font-size: 26px; margin: 0 0 6px; }
h2 { font-size: 21px; margin: 44px 0 6px; padding-top: 10px; border-top: 2px solid #1f2328; }
h2 .classes { font-size: 14px; font-weight: normal; color: var(--muted); margin-left: 10px; font-family: var(--mono); }
p { max-width: 95ch; margin: 6px 0; }
code, pre { font-family: var(--mono); }
code { font-size: 13px; background: #f3f4f6; padding: 0 3px; border-radius: 3px; }
nav ol { columns: 3; max-width: 900px; padding-left: 20px; }
.legend { display: flex; gap: 22px; flex-wrap: wrap; font-size: 14px; color: #374151; margin: 10px 0; }
.doc { margin: 6px 0 14px; }
.doc pre.eq { margin: 8px 0; padding: 8px 14px; background: #f8f7f2; border-left: 3px solid #b9b29a; font-size: 13.5px;
              line-height: 1.5; white-space: pre-wrap; }
table.code { width: 100%; border-collapse: collapse; table-layout: fixed; margin: 12px 0 6px; }
table.code col.no { width: 3.6em; }
table.code col.half { width: calc(50% - 3.6em); }
table.code col.undoes { width: 36%; }
table.code th { text-align: left; font-weight: 600; font-size: 14px; padding: 4px 8px; border-bottom: 1px solid #9ca3af; }
table.code th .file { font-weight: normal; color: var(--muted); font-family: var(--mono); font-size: 12.5px; margin-left: 6px; }
.lib { display: inline-block; padding: 0 7px; border-radius: 9px; color: #fff; font-size: 12.5px; margin-right: 4px; }
.lib.np { background: var(--np); } .lib.torch { background: var(--torch); }
table.code td { vertical-align: top; padding: 1px 8px; border-bottom: 1px solid #f1f1f1; }
table.code pre { margin: 0; font-size: 13px; line-height: 1.5; white-space: pre-wrap; overflow-wrap: anywhere; }
table.code .ln { display: block; min-height: 1.5em; padding-left: 4ch; text-indent: -4ch; }
td.no { color: #9ca3af; text-align: right; font-family: var(--mono); font-size: 12px; line-height: 1.625; padding-top: 1px;
        user-select: none; border-right: 1px solid var(--line); }
td.no .ln { padding-left: 0; text-indent: 0; }
td.np + td.no { border-left: 2px solid var(--line); }
td.empty { background: repeating-linear-gradient(135deg, #fafafa 0 6px, #f3f3f3 6px 12px); }
td.has-hook { box-shadow: inset 3px 0 0 #7c3aed; }
tr.note td { font-size: 13px; color: var(--muted); font-style: italic; }
mark.dx { background: #ffe58f; border-radius: 2px; box-shadow: 0 0 0 1px #f0c000; color: inherit; }
.shape { display: inline-block; font-family: var(--mono); font-size: 11.5px; line-height: 1.35; padding: 0 6px;
         border-radius: 8px; background: #e8f0fe; color: #1e3a8a; border: 1px solid #c7d7fb; text-indent: 0; }
.hash { color: #b6bcc6 !important; font-style: normal !important; }
.hook { background: #f1eafe; color: #5b21b6 !important; border-radius: 3px; padding: 0 2px; }
table.backward { margin-top: 4px; }
table.backward thead th { border-bottom-color: #9ca3af; }
table.backward td.undoes { background: #fafaf7; border-right: 1px solid var(--line); }
table.backward td.undoes pre { opacity: 0.85; }
table.backward p.quote { margin: 0; font-size: 13px; color: var(--muted); font-style: italic; }
tr.step { cursor: default; }
tr.step td { border-bottom: 1px solid #d1d5db; padding-top: 3px; padding-bottom: 3px; }
tr.step.lit td, tr.step:focus td { background: var(--lit); }
tr.lit td { background: var(--lit) !important; transition: background 0.1s; }
table.hooks { border-collapse: collapse; width: 100%; font-size: 14px; table-layout: fixed; }
table.hooks col.names { width: 21%; } table.hooks col.shape { width: 15%; }
table.hooks .shape, table.hooks td.names code { white-space: nowrap; }
table.hooks th, table.hooks td { text-align: left; vertical-align: top; padding: 5px 8px; border-bottom: 1px solid var(--line); }
table.hooks pre { margin: 2px 0 6px; font-size: 12.5px; white-space: pre-wrap; overflow-wrap: anywhere; }
table.hooks td.names code { background: none; padding: 0; }
table.hooks .owner { color: var(--muted); font-size: 12.5px; }
table.hooks td.none { color: var(--muted); font-style: italic; }
footer { max-width: 1900px; margin: 40px auto 0; color: var(--muted); font-size: 13px; }
"""

SCRIPT = """
// pointing at a backward step lights the forward rows it undoes
for (const step of document.querySelectorAll("tr.step[data-undoes]")) {
  const rows = step.dataset.undoes.split(" ").map((id) => document.getElementById(id)).filter(Boolean);
  const light = (on) => { step.classList.toggle("lit", on); rows.forEach((row) => row.classList.toggle("lit", on)); };
  step.addEventListener("mouseenter", () => light(true));
  step.addEventListener("mouseleave", () => light(false));
  step.addEventListener("focus", () => light(true));
  step.addEventListener("blur", () => light(false));
}
"""

INTRO = """
<p>The NumPy reference and its torch twin, read side by side. Each section is one component, in the
order of the forward pass: its equation, then the two forwards lined up so that the same variable
is assigned on the same row (a line one twin has and the other has not faces a hatched blank), then
the NumPy backward, each step beside the forward line it undoes. This page is generated from the
source files by <code>python demo.py read</code>; it holds no copy of the code of its own.</p>
"""


def legend() -> str:
    return (
        '<div class="legend">'
        '<span><mark class="dx">axis</mark> a token that differs between the twins on that row</span>'
        '<span><span class="shape">[batch, pos, d_model]</span> the shape of the tensor the line makes</span>'
        '<span><span class="hook">hook_scale</span> a hook point (see the table at the end)</span>'
        "<span>point at a backward step to light its forward line</span>"
        "</div>"
    )


def build_page(sections: list[Section] | None = None, hooks: list[Hook] | None = None) -> str:
    """The whole page as one string, read from the source files now (unless they were just read)."""
    sections = read_sections() if sections is None else sections
    hooks = read_hooks(sections) if hooks is None else hooks
    ids: dict[int, str] = {}
    body = [render_section(section, ids) for section in sections]
    toc = "".join(f'<li><a href="#{slug(s.stem)}">{html.escape(s.title)}</a></li>' for s in sections)
    toc += '<li><a href="#hooks">Every hook point</a></li>'
    pygments_css = HtmlFormatter(style=STYLE).get_style_defs(".code")
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            "<title>Transformer Twins: the two twins side by side</title>",
            f"<style>{pygments_css}\n{CSS}</style></head><body>",
            "<header><h1>Transformer Twins: NumPy and torch, line by line</h1>",
            INTRO,
            legend(),
            f"<nav><ol>{toc}</ol></nav></header>",
            *body,
            render_hooks(hooks, sections, ids),
            "<footer>Generated from numpy_impl/ and torch_impl/ by <code>python demo.py read</code>; "
            "highlighting by Pygments.</footer>",
            f"<script>{SCRIPT}</script>",
            "</body></html>",
        ]
    )


def write_page(out_dir, sections: list[Section] | None = None, hooks: list[Hook] | None = None) -> Path:
    """Write ``read.html`` into ``out_dir`` (made if missing) and return its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "read.html"
    path.write_text(build_page(sections, hooks), encoding="utf-8")
    return path
