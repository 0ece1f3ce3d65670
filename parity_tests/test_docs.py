"""The README is a front door that cannot drift: its command table, its links, its size.

- The table under "What each command shows" lists exactly the commands ``python demo.py --help``
  lists, each once: a command added to demo.py without a row (or a row left for a command that
  is gone) fails here. The commands are read from the help text a user sees, not from a list
  written into this test.
- Every link into ``docs/`` from the README, and every relative link or image in a chapter,
  names a file that exists.
- The README stays at most 12,500 bytes: what is longer belongs in a chapter.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MAX_README_BYTES = 12_500
TABLE_HEADING = "## What each command shows"


def help_commands():
    """The subcommands ``python demo.py --help`` lists, in its order (argparse's help layout)."""
    env = {**os.environ, "COLUMNS": "200"}  # wide enough that no command name wraps
    result = subprocess.run(
        [sys.executable, "demo.py", "--help"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    # argparse prints "positional arguments:", then the metavar line "  COMMAND", then one line
    # per subcommand indented by four spaces (its help text either follows on the same line or,
    # for a long name, on the next line indented further), until a blank line.
    start = next(
        i for i, line in enumerate(lines) if line.strip() == "COMMAND" and line.startswith("  ")
    )
    commands = []
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        match = re.match(r"^ {4}(\S+)", line)
        if match:
            commands.append(match.group(1))
    return commands


def readme_table_commands(text):
    """The command of each row in the README's table under TABLE_HEADING: the word after
    ``demo.py``."""
    section = text.split(TABLE_HEADING, 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    assert len(rows) >= 3, f"no table under {TABLE_HEADING!r}"
    header, rule, *body = rows
    assert set(rule.replace("|", "").replace(" ", "")) <= set("-:"), (
        "the table's second line is not a rule"
    )
    commands = []
    for row in body:
        first_cell = row.strip("|").split("|")[0]
        match = re.search(r"`python demo\.py (\S+?)(?:\s[^`]*)?`", first_cell)
        assert match, f"a row whose first cell names no `python demo.py COMMAND`: {row}"
        commands.append(match.group(1))
    return commands


def test_help_lists_commands():
    commands = help_commands()
    assert len(commands) >= 1, "python demo.py --help lists no command"
    assert len(set(commands)) == len(commands), commands


def test_readme_command_table_lists_exactly_the_help_commands():
    listed = readme_table_commands(README.read_text(encoding="utf-8"))
    offered = help_commands()
    duplicated = sorted({c for c in listed if listed.count(c) > 1})
    assert not duplicated, f"README table lists these commands more than once: {duplicated}"
    missing = [c for c in offered if c not in listed]
    extra = [c for c in listed if c not in offered]
    assert not missing and not extra, (
        f"README's command table and `python demo.py --help` differ: "
        f"missing from the table {missing}, not a command {extra}"
    )


LINK = re.compile(r"\]\(([^)\s]+)\)|<img [^>]*src=\"([^\"]+)\"")


def relative_links(text):
    """Every link or image target that is a path (not a web address, not an in-page anchor), without
    its anchor.

    Code is not prose: fenced blocks and `inline code` are left out (``model.blocks[0](x)`` is no
    link).
    """
    text = re.sub(r"^```.*?^```", "", text, flags=re.DOTALL | re.MULTILINE)
    text = re.sub(r"`[^`\n]*`", "", text)
    targets = []
    for match in LINK.finditer(text):
        target = match.group(1) or match.group(2)
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        targets.append(target.split("#", 1)[0])
    return targets


def test_readme_links_into_docs_resolve():
    links = [t for t in relative_links(README.read_text(encoding="utf-8")) if t.startswith("docs/")]
    assert links, "the README links to no chapter in docs/"
    missing = [t for t in links if not (ROOT / t).is_file()]
    assert not missing, f"README links to files that do not exist: {missing}"


@pytest.mark.parametrize("chapter", sorted(p.name for p in DOCS.glob("*.md")))
def test_chapter_links_resolve(chapter):
    path = DOCS / chapter
    missing = [
        t
        for t in relative_links(path.read_text(encoding="utf-8"))
        if not (path.parent / t).is_file()
    ]
    assert not missing, f"docs/{chapter} links to files that do not exist: {missing}"


def test_every_chapter_is_linked_from_the_readme():
    linked = {
        t for t in relative_links(README.read_text(encoding="utf-8")) if t.startswith("docs/")
    }
    unlinked = sorted(f"docs/{p.name}" for p in DOCS.glob("*.md") if f"docs/{p.name}" not in linked)
    assert not unlinked, f"chapters the README does not link to: {unlinked}"


def test_readme_is_a_front_door():
    size = README.stat().st_size
    assert size <= MAX_README_BYTES, (
        f"README.md is {size} bytes; at most {MAX_README_BYTES}: move the rest to docs/"
    )
