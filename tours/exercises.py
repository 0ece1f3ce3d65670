"""python demo.py exercises: write the backward passes yourself, and have them checked.

    python demo.py exercises init [DIR]                # DIR/numpy_impl, backward bodies stubbed
    python demo.py exercises check [DIR]               # every exercise: done / wrong / ...
    python demo.py exercises check [DIR] layernorm     # one exercise
    python demo.py exercises check [DIR] attention.softmax   # one step of an exercise in steps
    python demo.py exercises check [DIR] model         # the model, then all of yours together
    python demo.py exercises notebook [DIR]            # DIR/exercises.ipynb: the same, in Jupyter
    python demo.py exercises list                      # the exercises, easiest first

DIR defaults to ``mywork`` (which the project's .gitignore ignores).
"""

from __future__ import annotations

import math
import os

from exercises.catalog import EXERCISES, number_of
from exercises.generate import DEFAULT_DIR

from .progress import progress

KEYS = [key for exercise in EXERCISES for key in [exercise.key] + exercise.step_keys()]


def add_arguments(parser):
    # none: the list and how to start
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    init = actions.add_parser(
        "init", help="write a learner's copy of numpy_impl into DIR/numpy_impl"
    )
    init.add_argument(
        "dir",
        metavar="DIR",
        nargs="?",
        default=DEFAULT_DIR,
        help=f"folder for your copy (created if missing; default: {DEFAULT_DIR})",
    )
    init.add_argument(
        "--force",
        action="store_true",
        help="overwrite an existing DIR/numpy_impl (your work is lost)",
    )
    check = actions.add_parser(
        "check", help="mark your backward passes against the reference and finite differences"
    )
    check.add_argument(
        "dir",
        metavar="DIR",
        nargs="?",
        default=DEFAULT_DIR,
        help=f"the folder you gave to init (default: {DEFAULT_DIR})",
    )
    check.add_argument(
        "component",
        metavar="COMPONENT",
        nargs="?",
        help="one exercise or step: " + ", ".join(KEYS) + " (default: all)",
    )
    check.add_argument(
        "--sample",
        type=int,
        default=1,
        help="random directions per tensor for the finite differences (default: 1)",
    )
    check.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed for the random weights, inputs and upstream gradients",
    )
    check.add_argument(
        "--time-limit",
        type=float,
        default=None,
        metavar="SECONDS",
        help="seconds each exercise may take before it is stopped as 'timed out' (default: 60; "
        "at most 86400)",
    )
    notebook = actions.add_parser(
        "notebook", help="write DIR/exercises.ipynb: every exercise with its checker, for Jupyter"
    )
    notebook.add_argument(
        "dir",
        metavar="DIR",
        nargs="?",
        default=DEFAULT_DIR,
        help=f"folder for the notebook and your copy (default: {DEFAULT_DIR})",
    )
    notebook.add_argument(
        "--force", action="store_true", help="overwrite an existing DIR/exercises.ipynb"
    )
    actions.add_parser("list", help="the exercises, easiest first")


def writes_out(args):
    """None of these writes to --out: list and check work from a read-only folder."""
    return False


def run(args):
    if args.action is None:
        _list()
        print()
        print(
            f"Start with: python demo.py exercises init [DIR]   (DIR defaults to {DEFAULT_DIR}), "
            f"then write a "
            "backward in DIR/numpy_impl/ and run: python demo.py exercises check [DIR] [NAME]"
        )
        print("Every action: python demo.py exercises --help")
    elif args.action == "list":
        _list()
    elif args.action == "init":
        _init(args)
    elif args.action == "notebook":
        _notebook(args)
    else:
        _check(args)


def _list():
    for exercise in EXERCISES:
        print(
            f"{number_of(exercise.key)}. {exercise.key:<12} {exercise.cls}.backward in "
            f"{exercise.file}: {exercise.what}"
        )
        for key in exercise.step_keys():
            print(f"   {number_of(key)} {key}")


def _init(args):
    from exercises.generate import write_copy

    try:
        target = write_copy(args.dir, force=args.force)
    except (FileExistsError, PermissionError) as error:
        raise SystemExit(f"exercises init: {error}")
    print(f"Wrote your copy of the reference to {target}/.")
    print("Every forward pass is the reference's; each backward body below is yours to write,")
    print(
        "between the lines '# EXERCISE BEGIN' and '# EXERCISE END', where a hint says what to "
        "undo.\n"
    )
    _list()
    print(
        f"\nStart with {target / EXERCISES[0].file}, then run:  "
        f"python demo.py exercises check {args.dir} {EXERCISES[0].key}"
    )


def _notebook(args):
    from exercises.notebook import write_notebook

    try:
        path, copy = write_notebook(args.dir, force=args.force)
    except (FileExistsError, PermissionError, ImportError) as error:
        raise SystemExit(f"exercises notebook: {error}")
    print(
        f"Wrote {path}"
        + (
            f" and your copy of the reference to {copy}/."
            if copy
            else f" (your copy in {args.dir} is kept)."
        )
    )
    print(
        f"Open it in Jupyter (pip install notebook, then: jupyter notebook {path}); each exercise "
        f"has a cell"
    )
    print(
        "that writes your backward into the copy and a cell that checks it, as 'exercises check' "
        "does."
    )


def _check(args):
    from exercises.check import TIME_LIMIT_MAX, check, format_results

    directory, component = args.dir, args.component
    if component is None and directory in KEYS and not os.path.isdir(directory):
        # "check layernorm": the default folder, one exercise
        directory, component = DEFAULT_DIR, directory
    if component is not None and component not in KEYS:
        raise SystemExit(
            f"exercises check: unknown exercise {component!r}; choose from: {', '.join(KEYS)}"
        )
    limit = getattr(args, "time_limit", None)
    if limit is not None and not (math.isfinite(limit) and 0 < limit <= TIME_LIMIT_MAX):
        raise SystemExit(
            f"exercises check: --time-limit must be a positive, finite number of seconds, at most "
            f"{TIME_LIMIT_MAX:g} (a day), got {limit:g}"
        )
    keys = [component] if component else None
    options = {} if limit is None else {"time_limit": limit}
    try:
        results = check(
            directory, keys=keys, sample=args.sample, seed=args.seed, progress=progress, **options
        )
    except (FileNotFoundError, ImportError, ValueError) as error:
        raise SystemExit(f"exercises check: {error}")
    print(format_results(results, directory))
    if any(result.status not in ("done", "not started") for result in results):
        raise SystemExit(1)  # as a test run fails: `check && git commit` commits only what passes
