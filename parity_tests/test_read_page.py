"""The reading page (python demo.py read): it holds every line, and it reads well in a browser.

The first tests read the page as text: every non-blank line of every component's forward (both
twins) and backward (NumPy) is on it, in the order of the forward pass, with nothing fetched
from the network. The browser test opens it in headless Chromium through Playwright, checks
that no script error is raised, that in each section the two twins' lines that assign the same
variable sit at the same height, that pointing at a backward step lights its forward line, and
takes two screenshots (the top of the page, and the LayerNorm section with a backward step
pointed at) for a person to look at. Without Chromium or Playwright it is skipped, unless TWINS_REQUIRE_BROWSER=1
(as in CI), where it fails instead.
"""

import inspect
import os
import re
import shutil
import textwrap
from html.parser import HTMLParser

import pytest

import demo
import numpy_impl
import torch_impl
from reading.render import differing, lex
from reading.source import align, link_steps, split_steps, split_units

# every component with a forward, in the order of the forward pass, then the model and the loss
COMPONENTS = [
    "TokenEmbedding",
    "SinusoidalPositionalEncoding",
    "LearnedPositionalEmbedding",
    "LayerNorm",
    "MultiHeadAttention",
    "FeedForward",
    "TransformerBlock",
    "Unembed",
    "CrossEntropyLoss",
    "Transformer",
]
SECTION_ORDER = ["embedding", "positional", "layernorm", "attention", "feedforward", "block", "unembed", "loss", "model"]
EXERCISE_MARK = re.compile(r"^#\s*EXERCISE (BEGIN$|END$|STEP )")  # kept out of the page on purpose
ASSIGNED = re.compile(r"^\s*([A-Za-z_][\w.]*(?:\s*,\s*[A-Za-z_][\w.]*)*)\s*(\+=|=)(?!=)")
SHOT_ENV = "TWINS_READ_SCREENSHOT"  # a path: where to save docs/read_page.png (one section's screenshot)


class LineCollector(HTMLParser):
    """The text of every ``<span class="ln">`` (one line of code on the page) and of every h2."""

    def __init__(self):
        super().__init__()
        self.lines, self.headings, self.stack = [], [], []

    def handle_starttag(self, tag, attrs):
        classes = (dict(attrs).get("class") or "").split()
        kind = "ln" if tag == "span" and "ln" in classes else "h2" if tag == "h2" else None
        if kind:
            self.stack.append([kind, tag, 0, ""])
        elif self.stack and self.stack[-1][1] == tag:
            self.stack[-1][2] += 1

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1][1] != tag:
            return
        if self.stack[-1][2]:
            self.stack[-1][2] -= 1
            return
        kind, _, _, text = self.stack.pop()
        (self.lines if kind == "ln" else self.headings).append(text)
        if self.stack:
            self.stack[-1][3] += text

    def handle_data(self, data):
        if self.stack:
            self.stack[-1][3] += data


@pytest.fixture(scope="module")
def page_path(tmp_path_factory):
    out = tmp_path_factory.mktemp("read")
    demo.main(["read", "--out", str(out)])
    return out / "read.html"


@pytest.fixture(scope="module")
def page_lines(page_path):
    collector = LineCollector()
    collector.feed(page_path.read_text(encoding="utf-8"))
    return collector


def source_lines(function):
    lines = [line.strip() for line in textwrap.dedent(inspect.getsource(function)).split("\n")]
    return [line for line in lines if line and not EXERCISE_MARK.match(line)]


@pytest.mark.parametrize("name", COMPONENTS)
def test_every_line_of_forward_and_backward_is_on_the_page(page_lines, name):
    on_page = {line.strip() for line in page_lines.lines}
    wanted = {
        "numpy forward": getattr(numpy_impl, name).forward,
        "torch forward": getattr(torch_impl, name).forward,
        "numpy backward": getattr(numpy_impl, name).backward,
    }
    for label, function in wanted.items():
        lines = source_lines(function)
        assert len(lines) >= 3, f"{name} {label}: too few lines read from the source"
        missing = [line for line in lines if line not in on_page]
        assert not missing, f"{name} {label}: {len(missing)} of {len(lines)} lines are not on the page: {missing[:3]}"


def test_sections_follow_the_forward_pass_and_the_page_fetches_nothing(page_path, page_lines):
    text = page_path.read_text(encoding="utf-8")
    files = [re.search(r"numpy_impl/(\w+)\.py", heading) for heading in page_lines.headings]
    assert [match.group(1) for match in files if match] == SECTION_ORDER
    assert "Every hook point" in page_lines.headings
    # self-contained: no stylesheet, script, image or font from anywhere else
    assert not re.search(r"<link\b|\bsrc\s*=|@import|url\(\s*['\"]?(https?:)?//", text)
    assert not re.search(r"href=\"(?!#)", text), "every link on the page points inside it"


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
    rows = [(row.numpy and row.numpy.key, row.torch and row.torch.key) for row in align(left, right)]
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
    assert [(unit.key, len(unit.lines)) for unit in found] == [("dx =", 4), ("# a comment line", 1), ("return", 1)]


def test_the_tokens_that_differ_between_facing_lines_are_the_ones_marked():
    numpy_line, torch_line = units(
        """
        m = x.max(axis=-1, keepdims=True)  # [batch, 1]
        m = x.max(dim=-1, keepdim=True).values.detach()  # [batch, 1]; a comment is not diffed
        """
    )
    numpy_tokens, torch_tokens = lex(numpy_line), lex(torch_line)
    marked = lambda tokens, other: [tokens[k][1] for k in sorted(differing(tokens, other))]
    assert marked(numpy_tokens, torch_tokens) == ["axis", "keepdims"]
    assert marked(torch_tokens, numpy_tokens) == ["dim", "keepdim", ".", "values", ".", "detach", "(", ")"]


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
    assert [step.units[0].text.strip() for step in steps] == ["dy = dout", "if relu:", "else:", "# forward: h = x @ W",
                                                            "# forward: nothing = the forward assigns"]
    assert [step.undoes for step in steps] == [[], [3], [5], [0], []]


# ---- in a browser ----------------------------------------------------------------------------


def chromium_or_skip():
    """The Chromium executable and Playwright's sync API, or a skip (a failure in CI) saying why."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    reason = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright, reason = None, "Playwright for Python is not installed (pip install -r requirements.txt)"
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

MEASURE = """() => [...document.querySelectorAll("section.component table.forward")].map((table) => {
  const lines = (side) => [...table.querySelectorAll(`td.${side} .ln`)].map(
      (line) => [line.textContent, line.getBoundingClientRect().top]);
  return {section: table.closest("section").id, numpy: lines("np"), torch: lines("torch")};
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


def test_page_in_headless_chromium(page_path, tmp_path):
    chromium, sync_playwright = chromium_or_skip()
    errors = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=chromium,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1600, "height": 1120},  # tall enough that the hovered step needs no scrolling
        )
        try:
            page = browser.new_page()
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(page_path.as_uri())
            page.wait_for_load_state("load")
            tables = page.evaluate(MEASURE)

            page.screenshot(path=str(tmp_path / "read_top.png"))

            # pointing at a backward step lights the forward rows it undoes (the inline script)
            page.evaluate("window.scrollTo(0, document.getElementById('layernorm').offsetTop - 8)")
            step = page.locator("#layernorm tr.step[data-undoes]").nth(1)
            step.hover()
            lit_ids = page.evaluate("() => [...document.querySelectorAll('tbody tr.lit[id]')].map((row) => row.id)")
            undoes = step.get_attribute("data-undoes").split()
            section_shot = tmp_path / "read_layernorm.png"
            page.screenshot(path=str(section_shot))
            if os.environ.get(SHOT_ENV):
                shutil.copyfile(section_shot, os.environ[SHOT_ENV])
        finally:
            browser.close()

    assert not errors, f"the page logged errors: {errors}"
    assert lit_ids == undoes and undoes, "hovering a backward step should light exactly its forward rows"

    assert {table["section"] for table in tables} == set(SECTION_ORDER)
    compared, worst = 0, 0.0
    for table in tables:
        numpy_rows, torch_rows = assigned_rows(table["numpy"]), assigned_rows(table["torch"])
        if not table["torch"]:
            continue  # a function only one twin writes
        shared = [target for target in numpy_rows if len(numpy_rows[target]) == len(torch_rows.get(target, []))]
        assert shared, f"{table['section']}: no variable assigned in both twins was found"
        for target in shared:
            for top_np, top_torch in zip(numpy_rows[target], torch_rows[target]):
                worst = max(worst, abs(top_np - top_torch))
                assert abs(top_np - top_torch) <= 0.5, (
                    f"{table['section']}: '{target}' sits at y={top_np:.1f} in NumPy but y={top_torch:.1f} in torch"
                )
                compared += 1
    assert compared >= 30, f"only {compared} rows compared"
    for name in ("read_top.png", "read_layernorm.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"{compared} same-variable rows compared, worst vertical offset {worst:.2f} px; screenshots in {tmp_path}")
