"""Transformer Twins: the walk-through a newcomer runs first.

    python demo.py              # the basics: architecture, shapes, attention plot, forward + backward in both twins
    python demo.py --help       # every walk-through
    python demo.py COMMAND --help

Each command lives in ``tours/<module>.py`` (``add_arguments(parser)`` and ``run(args)``);
this file only dispatches, so ``--help`` answers without importing torch.
"""

import argparse
import importlib
import sys

# command -> (module in tours/, one line of help). The first is the default.
TOURS = {
    "basics": ("tours.basics", "architecture, shapes, attention patterns, a forward and backward pass in both twins"),
    "parity": ("tours.parity", "the parity sweep over every configuration, as a table of worst differences"),
    "interp": ("tours.interp", "mechanistic interpretability: caches, head scores, logit lens, attribution, ablation, patching, circuits"),
    "gradcheck": ("tours.gradcheck", "finite differences against every hand-written backward, every component and config"),
    "exercises": ("tours.exercises", "write the backward passes yourself: init DIR, then check DIR [COMPONENT]"),
    "train-parity": ("tours.train_parity", "train NumPy and torch side by side: the same loss at every step"),
    "induction": ("tours.induction", "grow induction heads from scratch in NumPy, then find them"),
    "read": ("tours.read", "the reading page: NumPy and torch side by side, line by line, as one HTML file"),
}


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["basics"] + argv
    parser = argparse.ArgumentParser(
        prog="demo.py",
        description="Transformer Twins: a NumPy transformer with hand-written backward passes and its PyTorch twin.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command, (module_name, help_text) in TOURS.items():
        sub = commands.add_parser(command, help=help_text, description=help_text)
        sub.set_defaults(module_name=module_name)
        sub.add_argument("--out", default="outputs", help="folder for figures and files (default: outputs/)")
    # each command's own options are added only when it is chosen, so --help stays fast
    if argv and argv[0] in TOURS:
        module = importlib.import_module(TOURS[argv[0]][0])
        module.add_arguments(commands.choices[argv[0]])
    args = parser.parse_args(argv)
    module = importlib.import_module(args.module_name)
    module.run(args)


if __name__ == "__main__":
    main()
