"""Each section's formula, typeset as MathML (browsers draw it with no script and no font download).

The formulas are written below in a small subset of TeX, one equation per line (``&`` marks the
sign, as TeX would align on it), and turned into MathML Core by ``to_mathml``. What the subset
knows:

    \\frac{a}{b}  \\sqrt{a}  a^{b}  a_{b}  {group}  \\text{words}  \\mathrm{name}
    \\operatorname{name}  Greek letters and a few symbols (\\mu \\sigma \\epsilon \\pi
    \\odot \\cdot \\top \\le \\sum \\log \\exp \\max \\tanh \\sin \\cos \\quad)
    digits  letters  + - = / ( ) [ ] , < > |

A run of letters is one identifier (``pattern``), as in code; ``\\_`` writes an underscore
inside ``\\mathrm{resid\\_mid}``. The test of the page checks that every formula converts, and
that the names it uses appear in its component's file, so a renamed tensor shows up here too.
"""

from __future__ import annotations

import html
import re

# one formula per section, in the order of SECTIONS; each line is one equation
FORMULAS = {
    "embedding": [r"\mathrm{embed}_{b,p} &= W_E[\,\mathrm{tokens}_{b,p}\,]"],
    "positional": [
        r"PE_{p,\,2i} &= \sin\!\left(p / 10000^{2i / d_{model}}\right)",
        r"PE_{p,\,2i+1} &= \cos\!\left(p / 10000^{2i / d_{model}}\right)",
        r"\mathrm{pos\_embed}_{b,p} &= W_{pos}[p] \quad \text{(learned)}",
    ],
    "layernorm": [
        r"\mathrm{out} &= \frac{x - \mathrm{mean}(x)}{\sqrt{\mathrm{var}(x) + \epsilon}} \odot w + "
        r"b",
    ],
    "rmsnorm": [
        r"\mathrm{out} &= \frac{x}{\sqrt{\mathrm{mean}(x^{2}) + \mathrm{eps}}} \odot w",
    ],
    "rotary": [
        r"\mathrm{first\_turned} &= \mathrm{first} \cdot \cos - \mathrm{second} \cdot \sin",
        r"\mathrm{second\_turned} &= \mathrm{second} \cdot \cos + \mathrm{first} \cdot \sin",
        r"\mathrm{angle}_{p,\,i} &= p \cdot \mathrm{freq}_{i}, \quad \mathrm{freq}_{i} = "
        r"1 / \mathrm{rotary\_base}^{2i / \mathrm{rotary\_dim}}",
    ],
    "attention": [
        r"q^{h} &= x\, W_Q^{h} + b_Q^{h}, \quad k^{h} = x\, W_K^{h} + b_K^{h}, \quad v^{h} = x\, "
        r"W_V^{h} + b_V^{h}",
        r"\mathrm{pattern}^{h} &= \operatorname{softmax}\!\left(\frac{q^{h} "
        r"{k^{h}}^{\top}}{\sqrt{d_{head}}}\right)",
        r"z^{h} &= \mathrm{pattern}^{h}\, v^{h}",
        r"\mathrm{out} &= \sum_{h} z^{h} W_O^{h} + b_O",
        r"k^{h} &= x\, W_K^{j} + b_K^{j} \quad \text{(grouped: j = h / group, rounded down)}",
    ],
    "gated_feedforward": [
        r"\mathrm{pre} &= x\, W_{gate}, \quad \mathrm{pre\_linear} = x\, W_{in}",
        r"\mathrm{post} &= \operatorname{silu}(\mathrm{pre}) \odot \mathrm{pre\_linear}, \quad "
        r"\mathrm{out} = \mathrm{post}\, W_{out}",
        r"\operatorname{silu}(u) &= u \cdot \operatorname{sigmoid}(u) = \frac{u}{1 + \exp(-u)}",
    ],
    "feedforward": [
        r"\mathrm{pre} &= x\, W_{in} + b_{in}, \quad \mathrm{post} = "
        r"\operatorname{act}(\mathrm{pre}), "
        r"\quad \mathrm{out} = \mathrm{post}\, W_{out} + b_{out}",
        r"\operatorname{gelu\_new}(u) &= \frac{u}{2} \left(1 + \tanh\!\left(\sqrt{2/\pi}\,(u + "
        r"0.044715\, u^{3})\right)\right)",
    ],
    "block": [
        r"\mathrm{resid\_mid} &= \mathrm{resid\_pre} + "
        r"\operatorname{attn}(\operatorname{ln1}(\mathrm{resid\_pre}))"
        r"\quad \text{(pre-norm)}",
        r"\mathrm{resid\_post} &= \mathrm{resid\_mid} + "
        r"\operatorname{mlp}(\operatorname{ln2}(\mathrm{resid\_mid}))",
    ],
    "unembed": [r"\mathrm{logits} &= x\, W_U + b_U"],
    "loss": [
        r"\mathrm{log\_probs} &= \mathrm{logits} - \log \sum_{v} \exp(\mathrm{logits}_{v})",
        r"\mathrm{loss} &= \frac{\sum_{b,p} \mathrm{weights}_{b,p} \cdot "
        r"(-\mathrm{log\_probs}_{b,p,\,\mathrm{targets}_{b,p}})}"
        r"{\sum_{b,p} \mathrm{weights}_{b,p}}",
    ],
    "model": [
        r"\mathrm{resid} &= W_E[\mathrm{tokens}] + \mathrm{pos\_embed}",
        r"\mathrm{resid} &= \operatorname{block}_{i}(\mathrm{resid}) \quad \text{for } i = 0 "
        r"\ldots n_{layers} - 1",
        r"\mathrm{out} &= \operatorname{ln\_final}(\mathrm{resid})\, W_U + b_U",
    ],
}

SYMBOLS = {
    "mu": ("mi", "\u03bc"),
    "sigma": ("mi", "\u03c3"),
    "epsilon": ("mi", "\u03b5"),
    "pi": ("mi", "\u03c0"),
    "odot": ("mo", "\u2299"),
    "cdot": ("mo", "\u22c5"),
    "top": ("mi", "\u22a4"),
    "le": ("mo", "\u2264"),
    "ldots": ("mo", "\u2026"),
    "sum": ("mo", "\u2211"),
    "log": ("mi", "log"),
    "exp": ("mi", "exp"),
    "max": ("mi", "max"),
    "tanh": ("mi", "tanh"),
    "sin": ("mi", "sin"),
    "cos": ("mi", "cos"),
}
MINUS = "\u2212"
SPACES = {",": "0.17em", "!": "-0.17em", "quad": "1em"}
TOKEN = re.compile(r"\\[A-Za-z]+|\\[,!_ ]|[A-Za-z]+|[0-9]+(?:\.[0-9]+)?|\S")


class FormulaError(ValueError):
    pass


def tokens(text: str) -> list[str]:
    return TOKEN.findall(text)


class Parser:
    """TeX subset -> MathML Core, one recursive-descent pass."""

    def __init__(self, text: str):
        self.text = text
        self.items = tokens(text)
        self.k = 0

    def peek(self):
        return self.items[self.k] if self.k < len(self.items) else None

    def take(self):
        token = self.peek()
        if token is None:
            raise FormulaError(f"{self.text!r}: ends too early")
        self.k += 1
        return token

    def group(self) -> str:
        """``{...}`` or a single atom, as one MathML element."""
        if self.peek() == "{":
            self.take()
            inner = self.sequence(until="}")
            self.take()
            return f"<mrow>{inner}</mrow>"
        return self.atom()

    def raw_group(self) -> str:
        """The text of ``{...}``, unparsed (for \\text and \\mathrm)."""
        if self.take() != "{":
            raise FormulaError(f"{self.text!r}: expected '{{'")
        out = []
        while self.peek() != "}":
            token = self.take()
            out.append("_" if token == "\\_" else " " if token == "\\ " else token)
        self.take()
        return "".join(out)

    def atom(self) -> str:
        token = self.take()
        if token.startswith("\\"):
            name = token[1:]
            if name == "frac":
                return f"<mfrac>{self.group()}{self.group()}</mfrac>"
            if name == "sqrt":
                return f"<msqrt>{self.group()}</msqrt>"
            if name == "text":
                return f"<mtext>{html.escape(self.raw_group().replace(' ', chr(160)))}</mtext>"
            if name in ("mathrm", "operatorname"):
                word = html.escape(self.raw_group())
                return (
                    f'<mi mathvariant="normal">{word}</mi>'
                    if len(word) == 1
                    else f"<mi>{word}</mi>"
                )
            if name in ("left", "right"):
                fence = self.take()
                return f'<mo stretchy="true">{html.escape(fence)}</mo>'
            if name in SPACES:
                return f'<mspace width="{SPACES[name]}"></mspace>'
            if name in SYMBOLS:
                tag, char = SYMBOLS[name]
                return f"<{tag}>{char}</{tag}>"
            raise FormulaError(f"{self.text!r}: unknown command {token}")
        if token[0].isdigit():
            return f"<mn>{token}</mn>"
        if token[0].isalpha():
            return f"<mi>{html.escape(token)}</mi>"
        if token in "{}^_&":
            raise FormulaError(f"{self.text!r}: {token!r} out of place")
        stretchy = ' stretchy="false"' if token in "()[]|" else ""
        return f"<mo{stretchy}>{html.escape(MINUS if token == '-' else token)}</mo>"

    def scripted(self) -> str:
        """An atom with its sub- and superscripts."""
        base = self.group()
        sub = sup = None
        while self.peek() in ("_", "^"):
            if self.take() == "_":
                sub = self.group()
            else:
                sup = self.group()
        # limits under and over the sign, as TeX sets a displayed sum
        if base == f"<mo>{SYMBOLS['sum'][1]}</mo>":
            if sub and sup:
                return f"<munderover>{base}{sub}{sup}</munderover>"
            if sub:
                return f"<munder>{base}{sub}</munder>"
        if sub and sup:
            return f"<msubsup>{base}{sub}{sup}</msubsup>"
        if sub:
            return f"<msub>{base}{sub}</msub>"
        if sup:
            return f"<msup>{base}{sup}</msup>"
        return base

    def sequence(self, until=None) -> str:
        out = []
        while self.peek() is not None and self.peek() != until and self.peek() != "&":
            out.append(self.scripted())
        return "".join(out)

    def line(self) -> tuple[str, str]:
        """(left of '&', right of it)."""
        left = self.sequence()
        right = ""
        if self.peek() == "&":
            self.take()
            right = self.sequence()
        if self.peek() is not None:
            raise FormulaError(f"{self.text!r}: unexpected {self.peek()!r}")
        return left, right


def to_mathml(lines: list[str], label: str) -> str:
    """Each line as a ``<math displaystyle="true">`` of its own, in a ``<div class="eqline">``
    (left-aligned)."""
    out = []
    for k, text in enumerate(lines):
        left, right = Parser(text).line()
        out.append(
            f'<div class="eqline"><math displaystyle="true" aria-label="{html.escape(label)}, line '
            f'{k + 1}">'
            f"<mrow>{left}{right}</mrow></math></div>"
        )
    return "".join(out)


def identifiers(lines: list[str]) -> set[str]:
    """Every name a formula writes: identifiers, \\mathrm words and subscripted names such as
    ``W_Q``."""
    names = set()
    for text in lines:
        for word in re.findall(r"\\(?:mathrm|operatorname)\{([^}]*)\}", text):
            names.add(word.replace("\\_", "_"))
        for base, braced, bare in re.findall(
            r"(?<![\\A-Za-z])([A-Za-z]+)_(?:\{([A-Za-z]+)\}|([A-Za-z]+))", text
        ):
            names.add(f"{base}_{braced or bare}")
    return names
