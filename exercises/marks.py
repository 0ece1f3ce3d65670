"""Where a learner's gradient first parts from the reference, as lines of their own file.

``page_marks(results, directory)`` turns the checker's verdicts (``check.check``) into marks for
the reading page (``python demo.py read --exercises DIR``): for each exercise's class, its status
in a few words, and {line number: note} beside the learner's own lines. The line is the one
the verdict points at: the hook point whose gradient is first wrong, walking back from the
output (the lines just above its ``backward`` call made that gradient), else the line that
raised, changed a dtype or called a forward, else the first line that adds into a parameter
gradient that is wrong (or makes the returned gradient). Plain data only: the page imports
nothing from here.
"""

from __future__ import annotations

import re

from .catalog import BY_KEY, STEP_KEYS
from .learner import find_package
from .steps import find_marked_bodies

FILE_LINE = re.compile(r"\b(\w+\.py):(\d+)\b")


def page_marks(results, directory):
    """{class name: {"status", "words", "lines": {line: note}}} for every exercise in
    ``results``."""
    marks = {}
    whole = {BY_KEY[result.key].cls for result in results if result.key in BY_KEY}
    for result in results:
        exercise = BY_KEY.get(result.key) or STEP_KEYS.get(result.key)
        if exercise is None:
            continue
        entry = marks.setdefault(exercise.cls, {"status": "done", "words": "", "lines": {}})
        if result.key in BY_KEY:
            entry["status"] = result.status
            entry["words"] = _words(result)
        else:
            if result.status != "done" and entry["status"] == "done":
                entry["status"] = result.status
            if exercise.cls not in whole:  # steps checked on their own: each says its verdict
                said = result.status + ("" if result.status == "done" else f": {result.message}")
                entry["words"] += ("; " if entry["words"] else "") + f"{result.key} {said}"
        if result.status in ("done", "not started"):
            continue
        try:
            source = (find_package(directory) / exercise.file).read_text()
            body = next(
                b for b in find_marked_bodies(source, exercise.file) if b.cls == exercise.cls
            )
        except (OSError, SyntaxError, ValueError, StopIteration):
            continue
        line, note = _first_line(result, exercise, source.splitlines(), body)
        if line is not None:
            label = f"{result.key}: " if result.key in STEP_KEYS else ""
            entry["lines"].setdefault(line, label + note)
    for cls, entry in marks.items():
        if cls not in whole and entry["status"] in ("done", "not started"):
            entry["status"] = _steps_status(cls, results)
    return marks


def _steps_status(cls, results):
    """A backward checked step by step, none of its steps wrong: "done" when every one of its
    steps is, "in part" when some are (the rest not written or not checked), else "not started"."""
    steps = [key for key, exercise in STEP_KEYS.items() if exercise.cls == cls]
    done = {result.key for result in results if result.key in steps and result.status == "done"}
    if done == set(steps):
        return "done"
    return "in part" if done else "not started"


def _words(result):
    if result.status == "done":
        return (
            "right under every variant and size set, against the reference and finite differences"
        )
    words = result.message
    if result.hint:
        words += f" (hint: {result.hint})"
    return words if len(words) <= 600 else words[:600] + " ..."


def _first_line(result, exercise, lines, body):
    """(1-based line, note): where this verdict points inside the learner's body, or (None, "")."""
    inside = range(body.begin + 1, body.end)
    if result.parting and "first wrong at " in result.parting:
        hook = result.parting.split("first wrong at ", 1)[1].split()[0].rstrip(",;").split(".")[-1]
        for number in inside:
            if f"self.{hook}.backward(" in lines[number]:
                return number + 1, (
                    f"your gradient first parts from the reference here: what reaches {hook} "
                    f"(made by the lines above, since the last hook point that was right) differs"
                )
    for file, number in FILE_LINE.findall(result.message + " " + result.hint):
        if file == exercise.file and int(number) - 1 in inside:
            return int(number), f"{result.status} here: {result.message[:200]}"
    wrong = [t.tensor for t in result.tensors if not t.ok]
    returned = next(
        (
            line.strip().split()[1]
            for line in lines[body.end :]
            if line.strip().startswith("return ")
        ),
        "",
    )
    for number in inside:
        code = lines[number].split("#", 1)[0]
        for name in wrong:
            short = name.split(".")[-1]
            if f"self.{short}.grad" in code:
                return number + 1, f"{short}.grad first differs from the reference's on this line"
            if (
                short == result.tensors[-1].tensor
                and returned
                and re.match(rf"\s*{re.escape(returned)}\s*\+?=", code)
            ):
                return (
                    number + 1,
                    f"the gradient it returns ({returned}) first differs from the reference's here",
                )
    return None, ""
