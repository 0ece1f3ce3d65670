"""python demo.py exercises: write the backward passes yourself, and have them checked.

    python demo.py exercises init DIR                 # DIR/numpy_impl: the reference, backward bodies stubbed
    python demo.py exercises check DIR                # every exercise: done / not started / wrong
    python demo.py exercises check DIR layernorm      # one exercise
    python demo.py exercises check DIR model          # the model, then all of yours together, and
                                                      # where your model first parts from the twin
    python demo.py exercises list                     # the exercises, easiest first
"""

from __future__ import annotations

from exercises.catalog import EXERCISES

from .progress import progress


def add_arguments(parser):
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    init = actions.add_parser("init", help="write a learner's copy of numpy_impl into DIR/numpy_impl")
    init.add_argument("dir", metavar="DIR", help="folder for your copy (created if missing)")
    init.add_argument("--force", action="store_true", help="overwrite an existing DIR/numpy_impl (your work is lost)")
    check = actions.add_parser("check", help="mark your backward passes against the torch twin and finite differences")
    check.add_argument("dir", metavar="DIR", help="the folder you gave to init")
    check.add_argument("component", metavar="COMPONENT", nargs="?", choices=[e.key for e in EXERCISES],
                       help="one exercise: " + ", ".join(e.key for e in EXERCISES) + " (default: all)")
    check.add_argument("--sample", type=int, default=20, help="entries per tensor for finite differences (default: 20)")
    check.add_argument("--seed", type=int, default=0, help="seed for the random weights, inputs and upstream gradients")
    check.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                       help="seconds each exercise may take before it is stopped as 'timed out' (default: 60)")
    actions.add_parser("list", help="the exercises, easiest first")


def run(args):
    if args.action == "list":
        _list()
    elif args.action == "init":
        _init(args)
    else:
        _check(args)


def _list():
    for number, exercise in enumerate(EXERCISES, 1):
        print(f"{number}. {exercise.key:<12} {exercise.cls}.backward in {exercise.file}: {exercise.what}")


def _init(args):
    from exercises.generate import write_copy

    try:
        target = write_copy(args.dir, force=args.force)
    except FileExistsError as error:
        raise SystemExit(f"exercises init: {error}")
    print(f"Wrote your copy of the reference to {target}/.")
    print("Every forward pass is the reference's; each backward body below is yours to write,")
    print("between the lines '# EXERCISE BEGIN' and '# EXERCISE END', where a hint says what to undo.\n")
    _list()
    print(f"\nStart with {target / EXERCISES[0].file}, then run:  "
          f"python demo.py exercises check {args.dir} {EXERCISES[0].key}")


def _check(args):
    from exercises.check import check, format_results

    keys = [args.component] if args.component else None
    limit = {} if getattr(args, "time_limit", None) is None else {"time_limit": args.time_limit}
    try:
        results = check(args.dir, keys=keys, sample=args.sample, seed=args.seed, progress=progress, **limit)
    except (FileNotFoundError, ImportError, ValueError) as error:
        raise SystemExit(f"exercises check: {error}")
    print(format_results(results, args.dir))
