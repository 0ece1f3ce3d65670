"""Transformer Twins: the walk-through a newcomer runs first.

    python demo.py              # the basics: architecture, shapes, attention plot, both passes
    python demo.py --help       # every walk-through
    python demo.py COMMAND --help

Each command lives in ``tours/<module>.py`` (``add_arguments(parser)`` and ``run(args)``);
this file only dispatches, so ``--help`` answers without importing torch.
"""

import argparse
import importlib
import os
import sys
import tempfile

# command -> (module in tours/, one line of help). The first is the default.
TOURS = {
    "basics": (
        "tours.basics",
        "architecture, shapes, attention patterns, a forward and backward pass in both twins",
    ),
    "parity": (
        "tours.parity",
        "the parity sweep over every configuration, as a table of worst differences",
    ),
    "interp": (
        "tours.interp",
        "mechanistic interpretability: caches, head scores, logit lens, attribution, ablation, "
        "activation and attribution patching, circuits",
    ),
    "gradcheck": (
        "tours.gradcheck",
        "finite differences against every hand-written backward, every component and config",
    ),
    "exercises": (
        "tours.exercises",
        "write the backward passes yourself: init DIR, then check DIR [COMPONENT]",
    ),
    "train-parity": (
        "tours.train_parity",
        "train NumPy and torch side by side: the same loss at every step",
    ),
    "induction": ("tours.induction", "grow induction heads from scratch in NumPy, then find them"),
    "read": (
        "tours.read",
        "the reading page: NumPy and torch side by side, line by line, as one HTML file",
    ),
    "gpt2": (
        "tours.gpt2",
        "a Hugging Face checkpoint, GPT-2, Llama or GPT-NeoX (--model DIR), in both twins: "
        "agreement, generation, figures",
    ),
    "precision": (
        "tours.precision",
        "the precision ladder: float64 to bfloat16, each activation's and gradient's error by "
        "layer",
    ),
    "checkpoint": (
        "tours.checkpoint",
        "write a tiny random checkpoint folder (DIR), offline: config, weights, tokenizer",
    ),
}

# Threads. Every command computes on one thread. Each multiplies small matrices (d_model 32 to
# 64, a few sequences), where a second thread saves little or nothing, and when another program
# holds the other core the two threads wait for each other at every product (train-parity: 37 s
# on one thread beside a busy neighbour, 104 s on two; every command in docs/performance.md).
# OMP_NUM_THREADS, when set, chooses instead (OMP_NUM_THREADS=2 python demo.py train-parity),
# except for induction: its trained numbers must not depend on the thread count.
SINGLE_THREADED = ("induction",)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["basics"] + argv
    command = argv[0]  # a tour's name, once the arguments parse
    try:
        args = parse_arguments(argv)  # imports the chosen tour, torch with it: Ctrl-C may come here
        module = importlib.import_module(args.module_name)
        check_arguments(args, writes_out=getattr(module, "writes_out", lambda args: True)(args))
        module.run(args)
    # a bad argument or file: one line, no traceback (a TypeError is a bug and keeps its traceback)
    except (ValueError, OSError) as error:
        fail(command, error)
    except SystemExit as error:
        if isinstance(error.code, str):  # a tour's own one-line refusal
            fail(command, error.code)
        raise
    except KeyboardInterrupt:
        fail(command, "interrupted", status=130)


def parse_arguments(argv):
    """The arguments of ``argv``, the chosen tour's own options included (importing that tour)."""
    parser = argparse.ArgumentParser(
        prog="demo.py",
        description="Transformer Twins: a NumPy transformer with hand-written backward passes and "
        "its PyTorch twin.",
    )
    commands = parser.add_subparsers(
        dest="command",
        metavar="COMMAND",
        description="plain `python demo.py` runs basics, the first walk-through",
    )
    for command, (module_name, help_text) in TOURS.items():
        sub = commands.add_parser(command, help=help_text, description=help_text)
        sub.set_defaults(module_name=module_name)
        sub.add_argument(
            "--out", default="outputs", help="folder for figures and files (default: outputs/)"
        )
    # see "Threads" above
    if "OMP_NUM_THREADS" not in os.environ or argv and argv[0] in SINGLE_THREADED:
        from training import use_one_thread  # before any tour imports NumPy (this imports none)

        use_one_thread()
    # each command's own options are added only when it is chosen, so --help stays fast
    if argv and argv[0] in TOURS:
        module = importlib.import_module(TOURS[argv[0]][0])
        module.add_arguments(commands.choices[argv[0]])
    return parser.parse_args(argv)


# options several tours share: name -> (smallest allowed value, what it must be)
LOWEST = {
    "seed": (0, "a non-negative int"),
    "sample": (1, "a positive int"),
    "steps": (1, "a positive int"),
}


def check_arguments(args, writes_out=True):
    """Refuse what no tour can use, before any work: negative seeds, zero samples, an --out that is
    no folder.

    ``writes_out``: False for a command that writes nothing to --out (exercises list and check),
    which then works from a read-only folder.
    """
    for name, (lowest, what) in LOWEST.items():
        value = getattr(args, name, None)
        if value is not None and value < lowest:
            raise ValueError(f"--{name} must be {what}, got {value}")
    if not writes_out:
        return
    out = os.path.abspath(args.out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out {args.out!r} is a file, not a folder")
    existing = out
    # the folder is made later, under the nearest folder that exists
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(f"--out {args.out!r} cannot be made: {existing!r} is a file")
    try:
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as error:
        raise ValueError(f"--out {args.out!r} is not writable ({error.strerror})") from None


def fail(command, message, status=1):
    print(f"demo.py {command}: error: {message}", file=sys.stderr)
    sys.exit(status)


if __name__ == "__main__":
    main()
