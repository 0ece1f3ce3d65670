"""The reading page (python demo.py read): every line, the numbers beside them, at any width, in any
light.

Read as text: every non-blank line of every component's forward (both twins) and backward
(NumPy) is on the page, in the order of the forward pass, with nothing fetched from the network;
each backward step is linked to every forward line it undoes; the numbers come from a run of
both twins (at least 40 forward rows measured, every one within the parity tolerance, every
shape comment agreeing with the run, and a planted wrong one caught); ``--exercises DIR`` shows
a learner's backward passes and none of the reference's.

In a browser (headless Chromium through Playwright, one launch for the module): no script error;
the twins' lines that assign the same variable at the same height; every line number on its
line's row at 1280, 1600 and 1920 px; at 420 px the panes stack, no code column narrower than
30 characters; the dark scheme followed, and the toggle; the navigation on screen at the end of
the page; pointing at a step lights all it undoes; the formulas typeset. Without Chromium or
Playwright the browser tests are skipped, unless TWINS_REQUIRE_BROWSER=1 (as in CI), where they
fail instead.
"""

import ast
import copy
import inspect
import os
import re
import shutil
import textwrap
from html.parser import HTMLParser
from pathlib import Path

import pytest

import demo
import numpy_impl
import torch_impl
from foundation.contract.agreement import TOL
from reading.formulas import FORMULAS, identifiers, to_mathml
from reading.measure import compare, run_twins, shape_disagreement
from reading.render import differing, lex
from reading.source import align, link_steps, package_dir, read_sections, split_steps, split_units
from tours.read import demo_input, make_page

# every component with a forward, in the order of the forward pass, then the model and the loss
COMPONENTS = [
    "TokenEmbedding",
    "SinusoidalPositionalEncoding",
    "LearnedPositionalEmbedding",
    "LayerNorm",
    "RMSNorm",
    "MultiHeadAttention",
    "FeedForward",
    "GatedFeedForward",
    "TransformerBlock",
    "Unembed",
    "CrossEntropyLoss",
    "Transformer",
]
SECTION_ORDER = [
    "embedding",
    "positional",
    "layernorm",
    "rmsnorm",
    "rotary",
    "attention",
    "feedforward",
    "gated_feedforward",
    "block",
    "unembed",
    "loss",
    "model",
]
SECTION_IDS = [stem.replace("_", "-") for stem in SECTION_ORDER]  # the page's section ids
EXERCISE_MARK = re.compile(r"^#\s*EXERCISE (BEGIN$|END$|STEP )")  # kept out of the page on purpose
ASSIGNED = re.compile(r"^\s*([A-Za-z_][\w.]*(?:\s*,\s*[A-Za-z_][\w.]*)*)\s*(\+=|=)(?!=)")
# a folder: where to save read_page_light.png and read_page_dark.png
SHOTS_ENV = "TWINS_READ_SCREENSHOTS"
MARKED_BODY = re.compile(r"(?m)^( *)# EXERCISE BEGIN\n.*?^\1# EXERCISE END\n", re.S)
LEARNER_LINE = "learner_rstd = 1.0 / scale  # [batch, pos, 1]"


class PageReader(HTMLParser):
    """The text of every code line (``.src``, without what the run adds), every h2, and every
    forward row's numbers."""

    def __init__(self):
        super().__init__()
        self.lines, self.headings, self.rows, self.steps, self.stack = [], [], [], [], []
        # depth inside an element whose text is not the code's (the run's shapes, tags)
        self.skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("wbr", "br"):
            return  # no end tag follows
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        if "row" in classes and tag == "div":
            self.rows.append(attrs)
        if "step" in classes and tag == "div":
            self.steps.append(attrs)
        if self.skip:
            self.skip += 1
            return
        if {"run", "tag"} & set(classes):
            self.skip = 1
            return
        kind = "src" if "src" in classes else "h2" if tag == "h2" else None
        if kind:
            self.stack.append([kind, tag, 0, ""])
        elif self.stack and self.stack[-1][1] == tag:
            self.stack[-1][2] += 1

    def handle_endtag(self, tag):
        if self.skip:
            self.skip -= 1
            return
        if not self.stack or self.stack[-1][1] != tag:
            return
        if self.stack[-1][2]:
            self.stack[-1][2] -= 1
            return
        kind, _, _, text = self.stack.pop()
        (self.lines if kind == "src" else self.headings).append(text)
        if self.stack:
            self.stack[-1][3] += text

    def handle_data(self, data):
        if self.stack and not self.skip:
            self.stack[-1][3] += data


def read_page(path):
    reader = PageReader()
    reader.feed(path.read_text(encoding="utf-8"))
    return reader


@pytest.fixture(scope="module")
def sections():
    return read_sections()


@pytest.fixture(scope="module")
def runs(sections):
    """One run of both twins (both models, float64 and float32), shared by the tests below."""
    return run_twins(sections, *demo_input())


@pytest.fixture(scope="module")
def measured(sections, runs):
    return compare(sections, runs)


@pytest.fixture(scope="module")
def page_path(tmp_path_factory, measured):
    path, *_ = make_page(tmp_path_factory.mktemp("read"), measured=measured)
    return path


@pytest.fixture(scope="module")
def page(page_path):
    return read_page(page_path)


def source_lines(function):
    source = textwrap.dedent(inspect.getsource(function))
    lines = [line.strip() for line in source.split("\n")]
    # the boundary's declaration (@boundary(...), one line or several) included: the page shows
    # it above the method
    return [line for line in lines if line and not EXERCISE_MARK.match(line)]


@pytest.mark.parametrize("name", COMPONENTS)
def test_every_line_of_forward_and_backward_is_on_the_page(page, name):
    on_page = {line.strip() for line in page.lines}
    wanted = {
        "numpy forward": getattr(numpy_impl, name).forward,
        "torch forward": getattr(torch_impl, name).forward,
        "numpy backward": getattr(numpy_impl, name).backward,
    }
    for label, function in wanted.items():
        lines = source_lines(function)
        assert len(lines) >= 3, f"{name} {label}: too few lines read from the source"
        missing = [line for line in lines if line not in on_page]
        assert not missing, (
            f"{name} {label}: {len(missing)} of {len(lines)} lines are not on the page: "
            f"{missing[:3]}"
        )


def test_each_boundary_line_is_shown_and_links_to_what_its_kinds_check(page_path, page):
    """Every @boundary(...) line of a shown method is on the page, beside links to its kinds'
    rows in the table of what each kind is checked for (every kind of KINDS, with its check)."""
    from foundation.contract.boundary import KINDS

    text = page_path.read_text(encoding="utf-8")
    on_page = {line.strip() for line in page.lines}
    declared = set()
    for name in COMPONENTS:
        for owner in (numpy_impl, torch_impl):
            for method in ("forward", "backward"):
                function = getattr(getattr(owner, name), method, None)
                if function is None or owner is torch_impl and method == "backward":
                    continue
                source = textwrap.dedent(inspect.getsource(function))
                decorators = [
                    "@" + ast.get_source_segment(source, node)
                    for node in ast.parse(source).body[0].decorator_list
                ]
                assert decorators, f"{owner.__name__}.{name}.{method} declares no boundary"
                for line in decorators[0].split("\n"):  # one line, or several
                    assert line.strip() in on_page, f"{line.strip()} is not on the page"
                declared |= set(re.findall(r'="([^"]+)"', decorators[0]))
    assert declared >= {"activation", "tokens", "gradient", "logits"}
    for kind, check in KINDS.items():
        slug = re.sub(r"[^a-z0-9]+", "-", kind.lower()).strip("-")
        assert f'<tr id="boundary-{slug}">' in text and check.__name__ in text, kind
        if kind in declared:
            assert f'href="#boundary-{slug}"' in text, f"no line links to {kind}'s row"
    assert text.count('class="checks"') >= len(COMPONENTS), "a boundary line without its link"


def test_sections_follow_the_forward_pass_and_the_page_fetches_nothing(page_path, page):
    text = page_path.read_text(encoding="utf-8")
    files = [re.search(r"numpy_impl/(\w+)\.py", heading) for heading in page.headings]
    assert [match.group(1) for match in files if match] == SECTION_ORDER
    assert "Every hook point" in page.headings
    # self-contained: no stylesheet, script, image or font from anywhere else
    assert not re.search(r"<link\b|\bsrc\s*=|@import|url\(\s*['\"]?(https?:)?//", text)
    assert not re.search(r"href=\"(?!#)", text), "every link on the page points inside it"
    assert text.count('<div class="formula">') == len(SECTION_ORDER), (
        "each section opens with its formula"
    )


def units(source):
    return split_units(textwrap.dedent(source).strip("\n").split("\n"), 1)


def test_alignment_puts_the_same_variable_on_one_row_and_a_lone_line_beside_a_blank():
    left = units(
        """
        x = np.asarray(x)  # [n]
        mean = x.mean(axis=-1)  # [1]
        self.cache = mean
        out = x - mean
        return out
        """
    )
    right = units(
        """
        mean = x.mean(dim=-1)  # [1]
        y = mean * 2
        out = x - mean
        return out
        """
    )
    rows = [
        (row.numpy and row.numpy.key, row.torch and row.torch.key) for row in align(left, right)
    ]
    assert rows == [
        ("x =", None),
        ("mean =", "mean ="),
        ("self.cache =", None),
        (None, "y ="),
        ("out =", "out ="),
        ("return", "return"),
    ]


def test_a_statement_over_several_lines_is_one_unit():
    found = units(
        """
        dx = (
            a @ b  # a comment inside
            + c
        )  # [batch, pos, d_model]
        # a comment line
        return dx
        """
    )
    assert [(unit.key, len(unit.lines)) for unit in found] == [
        ("dx =", 4),
        ("# a comment line", 1),
        ("return", 1),
    ]


def test_the_tokens_that_differ_between_facing_lines_are_the_ones_marked():
    numpy_line, torch_line = units(
        """
        m = x.max(axis=-1, keepdims=True)  # [batch, 1]
        m = x.max(dim=-1, keepdim=True).values.detach()  # [batch, 1]; a comment is not diffed
        """
    )
    numpy_tokens, torch_tokens = lex(numpy_line), lex(torch_line)

    def marked(tokens, other):
        return [tokens[k][1] for k in sorted(differing(tokens, other))]

    assert marked(numpy_tokens, torch_tokens) == ["axis", "keepdims"]
    assert marked(torch_tokens, numpy_tokens) == [
        "dim",
        "keepdim",
        ".",
        "values",
        ".",
        "detach",
        "(",
        ")",
    ]


def test_each_backward_step_is_linked_to_the_forward_line_it_quotes():
    rows = align(
        units(
            """
            h = x @ W
            h = hook(h)
            if relu:
                y = max(h, 0)
            else:
                y = tanh(h)
            """
        ),
        [],
    )
    steps = split_steps(
        units(
            """
            dy = dout
            if relu:
                # forward: y = max(h, 0)
                dh = dy * (h > 0)
            else:
                # forward: y = tanh(h)
                dh = dy * (1 - y**2)
            # forward: h = x @ W
            dx = dh @ W.T
            # forward: nothing = the forward assigns
            """
        )
    )
    link_steps(steps, rows)
    assert [step.units[0].text.strip() for step in steps] == [
        "dy = dout",
        "if relu:",
        "else:",
        "# forward: h = x @ W",
        "# forward: nothing = the forward assigns",
    ]
    assert [step.undoes for step in steps] == [[], [3], [5], [0], []]


def undone(sections, stem, quote_start):
    """The NumPy forward lines (code) that the backward step whose quote starts so undoes."""
    part = next(
        part for section in sections if section.stem == stem for part in section.parts if part.steps
    )
    step = next(step for step in part.steps if (step.quote or "").startswith(quote_start))
    return [part.rows[k].numpy.code.strip() for k in step.undoes]


def test_a_step_is_linked_to_every_forward_line_it_undoes(sections):
    # the hook the step passes its gradient through, besides the quoted line
    assert undone(sections, "layernorm", "normalized = centered / scale") == [
        "scale = self.hook_scale(scale)",
        "normalized = centered / scale",
    ]
    # every line that reads a parameter whose gradient the step fills: q, k and v
    assert [line.split(" =")[0] for line in undone(sections, "attention", "q = einsum")] == [
        "q",
        "k",
        "v",
    ]
    # a quote that names a function the forward spells out in lines: the lines between
    assert [
        line.split(" =")[0] for line in undone(sections, "attention", "probs = softmax(scores)")
    ] == ["scores", "scores_max", "exp", "probs"]
    # a quote that only renames is matched to no computation
    assert undone(sections, "block", "resid_post = resid_mid ") == []


# ---- the numbers beside the lines ---------------------------------------------------------------


def test_forward_rows_carry_the_twins_gap_in_both_dtypes_within_the_parity_tolerance(
    page, measured
):
    measured_rows = [row for row in page.rows if "data-agree-f64" in row]
    assert len(measured_rows) >= 40, f"only {len(measured_rows)} forward rows carry a measured gap"
    for row in measured_rows:
        for short, dtype in (("f64", "float64"), ("f32", "float32")):
            relative = float(row[f"data-agree-rel-{short}"])
            absolute = float(row[f"data-agree-{short}"])
            assert relative <= TOL[dtype], (
                f"row {row['id']}: {dtype} relative gap {relative:.1e} > {TOL[dtype]:.0e}"
            )
            assert absolute >= 0.0
    # the badge says it too, and the run really is two models in two dtypes of both twins
    worst = max(gap.relative["float64"] for gap in measured.forward.values())
    assert 0.0 < worst <= TOL["float64"], (
        "float64 gaps of exactly 0 everywhere would mean nothing was compared"
    )
    assert set(measured.models) == {"encoder", "decoder", "llama", "gptj"}
    # the Llama family's lines are measured too: RMSNorm, the rotation (halves in the llama model,
    # neighbours on part of each head in the gptj one), SwiGLU, the grouped heads' repeat
    for prefix in ("rmsnorm-rmsnorm-", "rotary-rotate-", "gated-feedforward-gatedfeedforward-"):
        assert any(row["id"].startswith(prefix) for row in measured_rows), prefix
    for code in ("k = np.repeat(k, group, axis=2)", "paired = np.stack("):
        assert any(key[2].startswith(code) for key in measured.forward), code


def test_every_shape_comment_agrees_with_the_run(measured):
    assert measured.checked_shapes >= 100, (
        f"only {measured.checked_shapes} shape comments were checked"
    )
    assert not measured.problems, "shape comments that disagree with the run:\n" + "\n".join(
        measured.problems
    )


def plant(sections, stem, old, new):
    """A copy of the sections with one forward line's shape comment changed (the code stays as it
    is)."""
    planted = copy.deepcopy(sections)
    for section in planted:
        for part in section.parts:
            for unit in part.numpy_forward.units if section.stem == stem else []:
                if old in unit.lines[-1]:
                    unit.lines[-1] = unit.lines[-1].replace(old, new)
                    return planted, unit.first_line
    raise AssertionError(f"no line of {stem} holds {old!r}")


@pytest.mark.parametrize(
    "stem, old, new",
    [
        # a wrong axis
        (
            "layernorm",
            "keepdims=True)  # [batch, pos, 1]",
            "keepdims=True)  # [batch, pos, d_model]",
        ),
        # two axes swapped
        ("layernorm", "mean  # [batch, pos, d_model]", "mean  # [pos, batch, d_model]"),
        ("attention", "# [batch, head, q_pos, 1]", "# [batch, head, q_pos]"),  # an axis missing
    ],
)
def test_a_planted_wrong_shape_comment_fails_the_shape_check(sections, runs, stem, old, new):
    planted, line = plant(sections, stem, old, new)
    problems = compare(planted, runs).problems
    assert any(f"numpy_impl/{stem}.py:{line} " in problem for problem in problems), problems
    # once for each model of the run that reaches the line (the llama one has RMSNorms)
    models = [run for run in runs if run.dtype == "float64"]
    if stem == "layernorm":
        models = [run for run in models if run.cfg.normalization_type == "LN"]
    assert len(problems) == len(models), "the planted line, once per model: " + "\n".join(problems)


def test_reading_a_shape_comment():
    sizes = {"batch": 2, "pos": 5, "d_model": 24, "d_vocab": 10}
    assert shape_disagreement("[batch, pos, d_model]", (2, 5, 24), sizes) is None
    assert shape_disagreement("[batch, pos, d_vocab or d_model]", (2, 5, 10), sizes) is None
    assert shape_disagreement("[..., 1]", (2, 5, 1), sizes) is None
    assert shape_disagreement("[]", (), sizes) is None
    assert "d_model" in shape_disagreement("[batch, pos, d_model]", (2, 5, 10), sizes)
    assert "axes" in shape_disagreement("[batch, pos]", (2, 5, 24), sizes)
    # an axis name nobody defined
    assert "not one of" in shape_disagreement("[batch, heads]", (2, 3), sizes)


def test_backward_lines_carry_autograd_gaps_and_gradient_names(page_path, page, measured):
    gaps = [(key, gradient) for key, found in measured.gradients.items() for gradient in found]
    kinds = {gradient.label for _, gradient in gaps}
    assert kinds == {"parameter", "hook", "returned"}
    for key, gradient in gaps:
        for dtype in ("float64", "float32"):
            relative = gradient.gap.relative[dtype]
            assert relative <= TOL[dtype], f"{key} {gradient.key}: {dtype} {relative:.1e}"
    # every parameter of both models, and every hook point's gradient, is measured on some line
    parameters = {
        name for _, gradient in gaps if gradient.label == "parameter" for name in gradient.gap.where
    }
    model_parameters, points = set(), {}  # points: {a hook point's own name: its names' gradients}
    for cfg in measured.models.values():
        model = numpy_impl.Transformer(cfg)
        model_parameters |= {name for name, _ in model.named_parameters()}
        for name, point in model.hook_dict.items():
            # token and position ids: no gradient
            if point.name not in ("embed.hook_in", "pos_embed.hook_in"):
                # an alias (hook_q) names it too
                points.setdefault(point.name, set()).add(name + "_grad")
    assert model_parameters <= parameters, (
        f"parameters with no line: {sorted(model_parameters - parameters)}"
    )
    hook_grads = {
        name for _, gradient in gaps if gradient.label == "hook" for name in gradient.gap.where
    }
    unmeasured = sorted(own for own, names in points.items() if not names & hook_grads)
    assert not unmeasured, f"hook points whose gradient no line measures: {unmeasured}"
    # the full names are on the page: the forward row calling the hook, and the backward line
    # passing its gradient
    text = page_path.read_text(encoding="utf-8")
    plain = re.sub(r"<wbr>", "", text)
    assert "blocks.{i}.attn.hook_pattern</code>" in plain
    assert "blocks.{i}.attn.hook_pattern_grad</code>" in plain
    assert "ln_final.hook_scale_grad</code>" in plain
    assert sum("data-grad-f64" in step for step in page.steps) >= 20


# ---- a learner's copy ---------------------------------------------------------------------------

LEARNER_LAYERNORM = """\
        # EXERCISE BEGIN
        d_model = centered.shape[-1]
        dout = self.hook_normalized.backward(dout)
        self.w.grad += (dout * normalized).sum(axis=(0, 1))
        self.b.grad += dout.sum(axis=(0, 1))
        dnormalized = dout * self.w.data
        learner_rstd = 1.0 / scale  # [batch, pos, 1]
        dscale = -(dnormalized * normalized).sum(axis=-1, keepdims=True) * learner_rstd
        dscale = self.hook_scale.backward(dscale)
        dx = (dnormalized - dnormalized.mean(axis=-1, keepdims=True)) * learner_rstd
        dx += dscale * centered * learner_rstd / d_model
        # EXERCISE END
"""


def learners_copy(directory: Path) -> Path:
    """A learner's numpy_impl: every marked backward a stub that raises, LayerNorm's written (their
    own way)."""
    target = directory / "numpy_impl"
    target.mkdir(parents=True)
    for path in package_dir("numpy_impl").glob("*.py"):
        text = path.read_text()

        def stub(match):
            return (
                f"{match.group(1)}# EXERCISE BEGIN\n{match.group(1)}raise "
                f"NotImplementedError('yours')\n"
                f"{match.group(1)}# EXERCISE END\n"
            )

        if path.name == "layernorm.py":
            text = MARKED_BODY.sub(lambda match: LEARNER_LAYERNORM, text)
        else:
            text = MARKED_BODY.sub(stub, text)
        (target / path.name).write_text(text)
    return target


@pytest.fixture(scope="module")
def learner_page(tmp_path_factory):
    """The command itself: python demo.py read --exercises DIR (its own run of the twins)."""
    directory = tmp_path_factory.mktemp("learner")
    learners_copy(directory)
    out = tmp_path_factory.mktemp("read_learner")
    demo.main(["read", "--out", str(out), "--exercises", str(directory)])
    return out / "read_exercises.html"


def test_the_learners_page_shows_their_bodies_and_none_of_the_references(learner_page, page):
    learner = read_page(learner_page)
    on_learner = {line.strip() for line in learner.lines}
    on_reference = {line.strip() for line in page.lines}
    assert LEARNER_LINE in on_learner and LEARNER_LINE not in on_reference
    forwards = {
        line
        for name in COMPONENTS
        for twin in (numpy_impl, torch_impl)
        for line in source_lines(getattr(twin, name).forward)
    }
    hidden, looked_for = [], 0
    for name in COMPONENTS:
        # the reference's answer: the lines between its exercise markers (but those the learner
        # wrote the same)
        source = textwrap.dedent(inspect.getsource(getattr(numpy_impl, name).backward))
        marked = MARKED_BODY.search(source)
        if marked is None:
            continue  # the sinusoidal table's backward: nothing to write, no exercise
        answers = [
            line.strip()
            for line in marked.group(0).split("\n")[1:-2]
            if line.strip()
            and line.strip() not in LEARNER_LAYERNORM
            and line.strip() not in forwards
            # step markers are kept off both pages
            and not EXERCISE_MARK.match(line.strip())
        ]
        assert answers and set(answers) <= on_reference, name
        looked_for += len(answers)
        hidden += [line for line in answers if line in on_learner]
    assert looked_for > 70 and not hidden, f"reference answers on the learner's page: {hidden[:5]}"
    text = learner_page.read_text(encoding="utf-8")
    # RMSNorm's and SwiGLU's among them
    assert text.count("Not written yet:") == 10, "every backward but LayerNorm's still raises"
    assert "data-grad-f64" not in text, (
        "no gradient numbers: the learner's backward is not what was run"
    )
    assert len([row for row in learner.rows if "data-agree-f64" in row]) >= 40, (
        "the forwards keep their numbers"
    )


def test_the_exercise_generator_s_stubs_are_read_as_not_written_yet(fresh):
    target = fresh / "numpy_impl"
    stubs = [part.name for section in read_sections(target) for part in section.parts if part.stub]
    assert sorted(stubs) == sorted(
        [
            "TokenEmbedding",
            "LearnedPositionalEmbedding",
            "LayerNorm",
            "RMSNorm",
            "MultiHeadAttention",
            "FeedForward",
            "GatedFeedForward",
            "TransformerBlock",
            "Unembed",
            "CrossEntropyLoss",
            "Transformer",
        ]
    )


STEP_MARK = re.compile(r"^\s*# EXERCISE (?:STEP (\w+):.*|END)$")


def step_regions(lines):
    """{step name: (its marker's index, the next marker's)} of the attention's stub or answer."""
    regions, current = {}, None
    for number, line in enumerate(lines):
        mark = STEP_MARK.match(line)
        if mark and current:
            regions[current[0]] = (current[1], number)
        if mark:
            current = (mark.group(1), number) if mark.group(1) else None
    return regions


def test_a_backward_written_in_part_shows_its_written_steps(fresh, tmp_path, measured):
    """2 of the attention's 6 steps written: the page shows those two and marks the other four."""
    from exercises.generate import REFERENCE_DIR
    from parity_tests.copies import copy_of

    target = copy_of(fresh, tmp_path / "part") / "numpy_impl"
    path = target / "attention.py"
    mine = path.read_text().splitlines(keepends=True)
    reference = (REFERENCE_DIR / "attention.py").read_text().splitlines(keepends=True)
    written, unwritten = ["output", "softmax"], ["scores", "groups", "rotary", "projections"]
    for step in reversed(written):
        (begin, end), (ref_begin, ref_end) = (step_regions(m)[step] for m in (mine, reference))
        mine[begin:end] = reference[ref_begin:ref_end]
    path.write_text("".join(mine))
    regions = step_regions(reference)

    def answer(step):  # the reference's own lines of a step (not comments, not in the forward)
        begin, end = regions[step]
        return [line.strip() for line in reference[begin + 1 : end] if line.strip()[:1] != "#"]

    (part,) = [p for s in read_sections(target) for p in s.parts if p.name == "MultiHeadAttention"]
    assert not part.stub
    said = [step.unwritten.split(":")[0] for step in part.steps if step.unwritten]
    assert said == unwritten
    page_file, *_ = make_page(tmp_path / "out", target, measured=measured)
    text = page_file.read_text(encoding="utf-8")
    start = text.index("MultiHeadAttention.backward <span")
    text = text[start : text.index("</section>", start)]  # the attention's backward, to its end
    reader = PageReader()
    reader.feed(text)
    lines = {line.strip() for line in reader.lines}
    assert "MultiHeadAttention.backward still raises" not in text
    for step in unwritten:
        assert f"Not written yet: step <code>{step}</code>" in text, step
        assert not set(answer(step)) & lines, f"the reference's {step} step is on the page"
    shown = [line for step in written for line in answer(step)]
    assert len(shown) > 8 and set(shown) <= lines, set(shown) - lines
    assert "raise NotImplementedError(" not in lines, "a stub's own lines are not shown as code"
    assert "attention.output done; attention.softmax done" in text, "the checker ran those two"
    assert "exercises check: in part</b>" in text, "2 of 6 steps done is not done"


def test_read_refuses_a_folder_without_a_copy_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as raised:
        demo.main(["read", "--out", str(tmp_path), "--exercises", str(tmp_path / "nothing")])
    assert raised.value.code == 1
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "exercises init" in error, error


def test_every_formula_converts_and_names_what_its_files_name(sections):
    for section in sections:
        lines = FORMULAS[section.stem]
        assert to_mathml(lines, section.title).count("<math") == len(lines)
        text = section.numpy_path.read_text() + section.torch_path.read_text()
        missing = [
            name for name in identifiers(lines) if not re.search(rf"\b{re.escape(name)}\b", text)
        ]
        assert not missing, f"{section.stem}: the formula names {missing}, which its files do not"


# ---- in a browser ----------------------------------------------------------------------------


def chromium_or_skip():
    """The Chromium executable and Playwright's sync API, or a skip (a failure in CI) saying why."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    reason = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright, reason = (
            None,
            "Playwright for Python is not installed (pip install -r requirements.txt)",
        )
    if chromium is None:
        reason = "Chromium is not installed (Debian: apt-get install chromium)"
    if reason:
        if os.environ.get("TWINS_REQUIRE_BROWSER") == "1":
            pytest.fail(f"TWINS_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    return chromium, sync_playwright


CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser(tmp_path_factory, page_path):
    """One headless Chromium for the whole module: a page on the reading page, and the errors it
    logged."""
    chromium, sync_playwright = chromium_or_skip()
    errors = []
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("profile")),
            executable_path=chromium,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1600, "height": 1120},
            color_scheme="light",
        )
        try:
            tab = context.new_page()
            tab.on(
                "console",
                lambda message: errors.append(message.text) if message.type == "error" else None,
            )
            tab.on("pageerror", lambda error: errors.append(str(error)))
            tab.goto(page_path.as_uri())
            tab.wait_for_load_state("load")
            yield context, tab, errors
        finally:
            context.close()


MEASURE_ROWS = """() => [...document.querySelectorAll("section.component .twins")].map((table) => {
  const lines = (side) => [...table.querySelectorAll(`.cell.${side} .ln`)].map(
      (line) => [line.querySelector(".src").textContent, line.getBoundingClientRect().top]);
  return {section: table.closest("section").id, numpy: lines("np"), torch: lines("torch")};
})"""

# every line: how far its number's top is from the top of its code's first line, and how many lines
# it wraps to
MEASURE_NUMBERS = """() => [...document.querySelectorAll(".ln")].map((line) => {
  const number = line.querySelector(".lnum").getBoundingClientRect();
  const range = document.createRange();
  range.selectNodeContents(line.querySelector(".src"));
  const boxes = [...range.getClientRects()].filter((box) => box.height > 0);
  const first = Math.min(...boxes.map((box) => box.top));
  const lines = Math.round((Math.max(...boxes.map((box) => box.bottom)) - first) / 19.5);
  return [line.querySelector(".lnum").textContent, number.top - first, lines];
})"""


def assigned_rows(lines):
    """{target: [top of each line that assigns it, in order]} for one column."""
    found = {}
    for text, top in lines:
        match = ASSIGNED.match(text)
        if match:
            target = re.sub(r"\s+", "", match.group(1)) + match.group(2)
            found.setdefault(target, []).append(top)
    return found


def test_no_errors_and_the_same_variable_on_the_same_height(browser):
    _, tab, errors = browser
    tables = tab.evaluate(MEASURE_ROWS)
    assert not errors, f"the page logged errors: {errors}"
    assert {table["section"] for table in tables} == set(SECTION_IDS)
    compared = 0
    for table in tables:
        numpy_rows, torch_rows = assigned_rows(table["numpy"]), assigned_rows(table["torch"])
        if not table["torch"]:
            continue  # a function only one twin writes
        shared = [
            target
            for target in numpy_rows
            if len(numpy_rows[target]) == len(torch_rows.get(target, []))
        ]
        assert shared, f"{table['section']}: no variable assigned in both twins was found"
        for target in shared:
            for top_np, top_torch in zip(numpy_rows[target], torch_rows[target]):
                assert abs(top_np - top_torch) <= 0.5, (
                    f"{table['section']}: '{target}' sits at y={top_np:.1f} in NumPy but "
                    f"y={top_torch:.1f} in torch"
                )
                compared += 1
    assert compared >= 30, f"only {compared} rows compared"


@pytest.mark.parametrize("width", [1280, 1600, 1920])
def test_every_line_number_sits_on_its_line(browser, width):
    _, tab, _ = browser
    tab.set_viewport_size({"width": width, "height": 1120})
    found = tab.evaluate(MEASURE_NUMBERS)
    off = [(number, round(offset, 1)) for number, offset, _ in found if abs(offset) > 4]
    wrapped = sum(1 for _, _, lines in found if lines > 1)
    assert len(found) > 500
    assert not off, (
        f"{len(off)} of {len(found)} line numbers off their line at {width} px: {off[:5]}"
    )
    if width <= 1600:
        assert wrapped >= 10, (
            f"only {wrapped} lines wrap at {width} px: the check would prove little"
        )


def test_on_a_narrow_screen_the_panes_stack_and_code_keeps_30_characters(browser):
    _, tab, _ = browser
    tab.set_viewport_size({"width": 420, "height": 900})
    try:
        found = tab.evaluate("""() => {
          const probe = document.createElement("span");
          probe.className = "src";
          probe.style.cssText = "position:absolute; white-space:pre; padding:0; text-indent:0";
          probe.textContent = "0".repeat(30);
          document.querySelector(".ln").appendChild(probe);
          const thirty = probe.getBoundingClientRect().width; probe.remove();
          const widths = [...document.querySelectorAll(".src")]
            .map((src) => src.getBoundingClientRect().width)
              .filter((width) => width > 0);
          const rows = [...document.querySelectorAll(".twins .row")]
            .filter((row) => !row.querySelector(".empty"));
          const stacked = rows.filter((row) => {
            const np = row.querySelector(".cell.np").getBoundingClientRect();
            const torch = row.querySelector(".cell.torch").getBoundingClientRect();
            return torch.top >= np.bottom - 1 && Math.abs(torch.left - np.left) < 2;
          }).length;
          return {thirty, narrowest: Math.min(...widths), rows: rows.length, stacked,
                  page: document.documentElement.scrollWidth};
        }""")
    finally:
        tab.set_viewport_size({"width": 1600, "height": 1120})
    assert found["stacked"] == found["rows"] > 50, (
        f"{found['stacked']} of {found['rows']} rows stacked"
    )
    assert found["narrowest"] >= found["thirty"] - 0.5, (
        f"a code column {found['narrowest']:.0f} px wide, narrower than 30 characters "
        f"({found['thirty']:.0f} px)"
    )
    assert found["page"] <= 420, (
        f"the page is {found['page']} px wide at 420 px: it scrolls sideways"
    )


@pytest.mark.parametrize("width", [420, 1280])
def test_no_shape_badge_covers_a_link_and_every_section_link_is_in_sight(browser, width):
    """The hook table's shape badges stay in their column, and the sections bar shows every link
    (at 420 px they wrap onto more rows instead of hiding in a strip that scrolls sideways)."""
    _, tab, _ = browser
    tab.set_viewport_size({"width": width, "height": 900})
    try:
        found = tab.evaluate("""() => {
          const overlaps = (a, b) => a.right > b.left + 1 && a.left < b.right - 1
              && a.bottom > b.top + 1
              && a.top < b.bottom - 1;
          let covered = 0;
          for (const row of document.querySelectorAll("table.hooks tr")) {
            const links = [...row.querySelectorAll("a")].map((a) => a.getBoundingClientRect());
            for (const badge of row.querySelectorAll(".shape")) {
              const box = badge.getBoundingClientRect();
              covered += links.filter((link) => overlaps(box, link)).length;
            }
          }
          const bar = document.querySelector("nav.bar ol").getBoundingClientRect();
          const links = [...document.querySelectorAll("nav.bar ol a")]
            .map((a) => a.getBoundingClientRect());
          const right = Math.min(bar.right, window.innerWidth) + 1;
          const hidden = links.filter((a) => a.right > right || a.left < bar.left - 1);
          return {covered, hidden: hidden.length, links: links.length};
        }""")
    finally:
        tab.set_viewport_size({"width": 1600, "height": 1120})
    assert found["covered"] == 0, (
        f"{found['covered']} shape badges cover a link in the hook table at {width} px"
    )
    assert found["links"] >= 10 and found["hidden"] == 0, (
        f"{found['hidden']} of {found['links']} section links out of sight at {width} px"
    )


def luminance(color):
    r, g, b = (int(value) / 255 for value in re.findall(r"\d+", color)[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


COLORS = """() => ({background: getComputedStyle(document.body).backgroundColor,
  text: getComputedStyle(document.body).color,
  keyword: getComputedStyle(document.querySelector(".src .k")).color,
  theme: document.documentElement.dataset.theme || "",
  button: document.getElementById("theme").textContent})"""


def test_the_dark_scheme_is_followed_and_the_toggle_switches(browser):
    _, tab, _ = browser
    light = tab.evaluate(COLORS)
    tab.emulate_media(color_scheme="dark")
    try:
        tab.wait_for_function(
            "document.getElementById('theme').textContent === 'Light'", timeout=3000
        )
        dark = tab.evaluate(COLORS)
        tab.click("#theme")
        toggled = tab.evaluate(COLORS)
        stored = tab.evaluate("localStorage.getItem('twins-theme')")
        tab.click("#theme")
        back = tab.evaluate(COLORS)
    finally:
        tab.emulate_media(color_scheme="light")
        tab.evaluate(
            "localStorage.removeItem('twins-theme'); delete document.documentElement.dataset.theme"
        )
    assert luminance(light["background"]) > 0.9 and luminance(light["text"]) < 0.3
    assert luminance(dark["background"]) < 0.1 and luminance(dark["text"]) > 0.8, dark
    assert dark["keyword"] != light["keyword"], "the highlighting has dark colours of its own"
    assert dark["button"] == "Light"
    assert (
        toggled["theme"] == "light" and luminance(toggled["background"]) > 0.9 and stored == "light"
    )
    assert back["theme"] == "" and luminance(back["background"]) < 0.1, (
        "back at the system's choice, it follows it"
    )


def test_the_navigation_stays_on_screen_to_the_end_of_the_page(browser):
    _, tab, _ = browser
    tab.evaluate("window.scrollTo(0, document.documentElement.scrollHeight)")
    found = tab.evaluate("""() => {
      const nav = document.querySelector("nav.bar").getBoundingClientRect();
      const link = document.querySelector('nav.bar a[href="#attention"]').getBoundingClientRect();
      const hit = document.elementFromPoint(link.left + link.width / 2, link.top + link.height / 2);
      return {top: nav.top, bottom: nav.bottom, height: document.documentElement.scrollHeight,
              y: scrollY,
              hit: hit && hit.closest("nav") !== null};
    }""")
    assert found["y"] > 10000, f"the page is {found['height']} px tall and scrolled to {found['y']}"
    assert found["top"] == 0 and found["bottom"] <= 80 and found["hit"], found
    tab.click('nav.bar a[href="#attention"]')
    tab.wait_for_timeout(100)
    heading = tab.evaluate("""() => [
        document.querySelector("#attention h2").getBoundingClientRect().top,
        document.querySelector("nav.bar").getBoundingClientRect().bottom]""")
    assert heading[1] <= heading[0] <= heading[1] + 60, (
        f"after the jump the heading sits at {heading}"
    )


def test_pointing_at_a_step_lights_every_forward_line_it_undoes(browser):
    _, tab, _ = browser
    tab.evaluate("window.scrollTo(0, document.getElementById('layernorm').offsetTop)")
    steps = tab.locator("#layernorm .step[data-undoes]")
    many = [
        k
        for k in range(steps.count())
        if len(steps.nth(k).get_attribute("data-undoes").split()) > 1
    ]
    assert many, "no LayerNorm step undoes more than one line"
    step = steps.nth(many[0])
    step.scroll_into_view_if_needed()
    step.hover()
    lit = tab.evaluate("() => [...document.querySelectorAll('.row.lit')].map((row) => row.id)")
    assert sorted(lit) == sorted(step.get_attribute("data-undoes").split())
    tab.mouse.move(0, 0)


def test_the_formulas_are_typeset(browser):
    _, tab, _ = browser
    found = tab.evaluate("""() => [...document.querySelectorAll(".formula")].map((formula) => {
      const math = formula.querySelector("math").getBoundingClientRect();
      const fraction = formula.querySelector("mfrac");
      const parts = fraction
        ? [...fraction.children].map((child) => child.getBoundingClientRect()) : [];
      return {section: formula.closest("section").id, width: math.width, height: math.height,
              stacked: parts.length === 2 ? parts[0].bottom <= parts[1].top + 1 : null};
    })""")
    assert [item["section"] for item in found] == SECTION_IDS
    assert all(item["width"] > 60 and item["height"] > 12 for item in found), found
    fractions = [item for item in found if item["stacked"] is not None]
    assert fractions and all(item["stacked"] for item in fractions), (
        "a fraction's numerator sits above its denominator"
    )


def test_the_learners_page_in_the_browser(browser, learner_page):
    context, _, _ = browser
    tab = context.new_page()
    try:
        tab.goto(learner_page.as_uri())
        text = tab.inner_text("#layernorm")
        attention = tab.inner_text("#attention")
    finally:
        tab.close()
    assert "learner_rstd = 1.0 / scale" in text and "dvar = dscale / (2 * scale)" not in text
    assert "Not written yet" in attention and "dscores = probs" not in attention


def test_screenshots_light_and_dark(browser, tmp_path):
    """Two pictures at 1280 px for a person to look at (and for docs/, with
    TWINS_READ_SCREENSHOTS=docs)."""
    _, tab, _ = browser
    # the LayerNorm section from its title to the step below
    tab.set_viewport_size({"width": 1280, "height": 1560})
    shots = {}
    try:
        for scheme in ("light", "dark"):
            tab.emulate_media(color_scheme=scheme)
            tab.evaluate("""() => {
                const title = document.querySelector("#layernorm h2").getBoundingClientRect().top;
                const nav = document.querySelector("nav.bar").getBoundingClientRect().height;
                                    window.scrollTo(0, title + scrollY - nav - 4); }""")
            steps = tab.locator("#layernorm .step[data-undoes]")
            step = next(
                steps.nth(k)
                for k in range(steps.count())
                if len(steps.nth(k).get_attribute("data-undoes").split()) > 1
            )
            step.hover()
            shots[scheme] = tmp_path / f"read_page_{scheme}.png"
            tab.screenshot(path=str(shots[scheme]))
            tab.mouse.move(0, 0)
    finally:
        tab.emulate_media(color_scheme="light")
        tab.set_viewport_size({"width": 1600, "height": 1120})
    for path in shots.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get(SHOTS_ENV):
        for path in shots.values():
            shutil.copyfile(path, Path(os.environ[SHOTS_ENV]) / path.name)


def test_the_learners_page_marks_where_their_gradient_first_parts(solved, tmp_path):
    """read --exercises runs the checker: its verdict above the backward, a mark beside the line it
    points at."""
    from exercises.check import check
    from exercises.marks import page_marks
    from parity_tests.copies import planted_copy
    from reading import build_page

    directory = planted_copy(
        solved,
        tmp_path,
        "attention.py",
        "(dprobs * probs).sum(axis=-1, keepdims=True)",
        "(dprobs * probs).sum(axis=-2, keepdims=True)",
    )
    marks = page_marks(check(directory, keys=["attention", "unembed"], together=False), directory)
    attention = marks["MultiHeadAttention"]
    assert attention["status"] == "wrong" and marks["Unembed"]["status"] == "done"
    source = (directory / "numpy_impl" / "attention.py").read_text().splitlines()
    (line, note), *_ = sorted(attention["lines"].items())
    assert (
        "self.hook_attn_scores.backward(" in source[line - 1]
        and "first parts from the reference" in note
    )
    text = build_page(
        read_sections(directory / "numpy_impl"), None, None, directory / "numpy_impl", marks
    )
    assert "exercises check: wrong" in text and "exercises check: done" in text
    before = text[: text.index("first parts from the reference")]
    assert before[before.rindex('<span class="lnum">') :].startswith(
        f'<span class="lnum">{line}</span>'
    ), "the mark stands beside that line"


# --- read --exercises on files that are no regular files, nest too deeply or are not UTF-8 ---

from parity_tests.helpers import NEEDS_SPECIAL_FILES, SPECIAL_WORDS, special_file, without_hanging  # noqa: E402  # noqa: E402


@pytest.fixture
def learner_copy(fresh, tmp_path):
    from parity_tests.copies import copy_of

    return copy_of(fresh, tmp_path / "mine") / "numpy_impl"


def _read_exercises(folder):
    from tours.read import make_page

    return without_hanging(lambda: make_page(folder.parent / "out", folder, measured=object()), 60)


@NEEDS_SPECIAL_FILES
@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_read_exercises_takes_only_regular_files(learner_copy, kind):
    special_file(learner_copy / "layernorm.py", kind)
    error = _read_exercises(learner_copy)
    assert isinstance(error, SystemExit) and SPECIAL_WORDS[kind] in str(error.code), repr(error)


@pytest.mark.parametrize(
    "tail, words",
    [
        ("\nx = " + "1 + " * 200_000 + "1\n", "nests too deeply"),
        ("\n# \udcff\n", "not UTF-8"),
    ],
    ids=["200,000 terms", "not UTF-8"],
)
def test_read_exercises_turns_deep_nesting_and_bad_bytes_into_one_line(learner_copy, tail, words):
    path = learner_copy / "layernorm.py"
    path.write_bytes(path.read_bytes() + tail.encode("utf-8", "surrogateescape"))
    error = _read_exercises(learner_copy)
    assert isinstance(error, SystemExit) and words in str(error.code), repr(error)
    assert "\n" not in str(error.code)
