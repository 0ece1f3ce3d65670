"""python demo.py read: the two twins side by side, as one HTML page to open in a browser.

It writes OUT/read.html: one section per component in the order of the forward pass (and one
for the whole model) with the formula, the NumPy and torch forwards lined up row by row, the
NumPy backward beside the forward lines it undoes, and a table of every hook point. The page
is read from the source files each time, so it always shows the code as it is, and the numbers
beside the lines come from a run of both twins made each time (``reading.measure``) on the
demo's sentence and vocabulary (``tours.basics``).

``--exercises DIR`` writes OUT/read_exercises.html instead: the NumPy backward passes read from
a learner's copy (DIR/numpy_impl, as ``python demo.py exercises init DIR`` writes it), so the
page holds the learner's answers and not the reference's. The exercise checker runs on every
backward the learner has written (``exercises.check``, the same as ``exercises check DIR``): its
verdict stands above each backward, and the line where the learner's gradient first parts from
the reference is marked beside it (``exercises.marks``).
"""

import time
from pathlib import Path

from reading import read_hooks, read_sections, write_page

SECOND_SENTENCE = "a dog sat on mat"  # the same length as the demo's, so the two make a batch


def demo_input():
    """(vocabulary, sentences): the demo's (``tours.basics``, which imports torch: only when the
    page is made)."""
    from .basics import SENTENCE, VOCAB

    return VOCAB, (SENTENCE, SECOND_SENTENCE)


def add_arguments(parser):
    parser.add_argument(
        "--exercises",
        metavar="DIR",
        default=None,
        help="show the backward passes of a learner's copy (DIR/numpy_impl) instead of the "
        "reference's",
    )


def learner_folder(directory):
    """DIR/numpy_impl of a learner's copy, or a one-line refusal."""
    folder = Path(directory) / "numpy_impl"
    if not folder.is_dir():
        raise SystemExit(
            f"--exercises {directory}: there is no {folder} "
            f"(make one with: python demo.py exercises init {directory})"
        )
    missing = [
        name
        for name in ("layernorm.py", "attention.py", "model.py")
        if not (folder / name).is_file()
    ]
    if missing:
        raise SystemExit(
            f"--exercises {directory}: {folder} is not a copy of numpy_impl "
            f"({', '.join(missing)} missing)"
        )
    return folder


def unwritten_steps(part):
    """The names of a backward's exercise steps that still raise NotImplementedError."""
    return [step.unwritten.split(":")[0] for step in part.steps if step.unwritten is not None]


def checked(learner, sections):
    """The checker's verdicts on the learner's written backward passes, as marks for the page."""
    from exercises.catalog import BY_CLASS
    from exercises.check import check
    from exercises.marks import page_marks

    written = []
    for part in (part for section in sections for part in section.parts):
        if part.name not in BY_CLASS or part.stub:
            continue
        exercise, unwritten = BY_CLASS[part.name], unwritten_steps(part)
        # some steps written: those, each on its own (the whole waits for the rest)
        steps = [f"{exercise.key}.{name}" for name in exercise.steps if name not in unwritten]
        written += steps if unwritten else [exercise.key]
    if not written:
        return {}
    directory = Path(learner).parent
    try:
        results = check(directory, keys=written, together=False)
    except (ImportError, ValueError) as error:
        print(f"the checker did not run: {error}")
        return {}
    return page_marks(results, directory)


def make_page(out, learner=None, measured=None):
    """Write the page into ``out``: (its path, the sections shown, the run's measurements, seconds
    for run and page).

    ``learner``: a learner's numpy_impl folder (the page then shows its backward passes);
    ``measured``: a run already made (``reading.measure``) of the reference files, instead of a new
    one.
    """
    from reading.measure import measure  # imports both twins and torch

    started = time.perf_counter()
    reference = read_sections()
    if measured is None:
        measured = measure(reference, *demo_input())
    ran = time.perf_counter()
    try:
        sections = read_sections(learner) if learner else reference
    except SyntaxError as error:
        raise SystemExit(f"--exercises: {error.filename}:{error.lineno}: {error.msg}")
    except (RecursionError, MemoryError) as error:  # an expression nested too deep for the parser
        raise SystemExit(
            f"--exercises {learner}: a file nests too deeply to be read "
            f"({type(error).__name__}); is it a copy of numpy_impl?"
        )
    except ValueError as error:  # a FIFO, a device, a file too large, bytes that are not UTF-8
        raise SystemExit(f"--exercises: {error}")
    verdicts = checked(learner, sections) if learner else None
    path = write_page(
        out,
        sections,
        read_hooks(sections),
        measured,
        learner,
        "read_exercises.html" if learner else "read.html",
        verdicts,
    )
    return path, sections, measured, (ran - started, time.perf_counter() - ran)


def run(args):
    learner = learner_folder(args.exercises) if args.exercises else None
    path, sections, measured, (run_seconds, page_seconds) = make_page(args.out, learner)
    rows = sum(len(part.rows) for section in sections for part in section.parts)
    steps = sum(len(part.steps) for section in sections for part in section.parts)
    hooks = read_hooks(sections)
    print(
        f"{len(sections)} sections, {rows} forward rows side by side, {steps} backward steps, "
        f"{len(hooks)} hook points"
    )
    gaps = list(measured.forward.values())
    worst = {
        dtype: max(gap.relative.get(dtype, 0.0) for gap in gaps) for dtype in ("float64", "float32")
    }
    grads = [g.gap for found in measured.gradients.values() for g in found]
    print(
        f"the run: {len(gaps)} forward rows measured in both twins (worst relative gap "
        f"{worst['float64']:.1e} float64, {worst['float32']:.1e} float32), {len(grads)} backward "
        f"lines against autograd, "
        f"{measured.checked_shapes} shape comments checked"
    )
    for problem in measured.problems:
        print(f"  a shape comment disagrees with the run: {problem}")
    if learner:
        parts = [part for section in sections for part in section.parts]
        stubs = [part.name for part in parts if part.stub] + [
            f"{part.name}'s steps {', '.join(unwritten_steps(part))}"
            for part in parts
            if unwritten_steps(part)
        ]
        state = "not written yet: " + ", ".join(stubs) if stubs else "every one written"
        print(f"backward passes from {learner}: {state}")
    print(f"time: {run_seconds:.1f} s for the run of both twins, {page_seconds:.1f} s for the page")
    print(f"Wrote {path}")
    print(f"Open it in a browser: {path.resolve().as_uri()}")
