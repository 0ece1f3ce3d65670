"""``python demo.py precision``: the precision ladder of one checkpoint (docs/precision.md).

The same weights run in float64 (the reference), float32, float16 and bfloat16 (the torch twin;
the NumPy twin has no bfloat16), one forward and backward of the next-token loss each, and every
cached activation and gradient is measured against float64, layer by layer. Without ``--model``
the tour writes a tiny random checkpoint (``--arch``) and climbs its ladder; with ``--model DIR``
any folder the twins read (GPT-2, Llama, GPT-NeoX; float16 and bfloat16 files load by exact upcast).
It prints the per-layer table and how each dtype's products accumulate, and writes
``precision_ladder.md`` (the table and every hook point's error) and ``precision_ladder.png``.
"""

import os
import tempfile
import time


def add_arguments(parser):
    from foundation.files.tiny import ARCHITECTURES

    parser.add_argument(
        "--model",
        default=None,
        metavar="DIR",
        help="a GPT-2, Llama or GPT-NeoX checkpoint folder (default: a tiny random one, --arch)",
    )
    parser.add_argument(
        "--arch",
        choices=sorted(ARCHITECTURES),
        default="gpt2",
        help="the tiny checkpoint's architecture, without --model (default gpt2)",
    )
    parser.add_argument(
        "--twins",
        choices=("both", "torch", "numpy"),
        default="both",
        help="which twins climb the ladder (default both; NumPy's float16 products are slow on a "
        "large model)",
    )
    parser.add_argument(
        "--pos", type=int, default=32, help="tokens per sequence (default 32, at most n_ctx)"
    )
    parser.add_argument("--batch", type=int, default=2, help="sequences (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random tokens")


def run(args):
    import numpy as np

    import torch_impl as pti
    from foundation.files.tiny import write_checkpoint
    from interp.precision import accumulation_table, precision_ladder

    for name in ("pos", "batch"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be a positive int, got {getattr(args, name)}")
    os.makedirs(args.out, exist_ok=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.model or write_checkpoint(os.path.join(scratch, "tiny"), arch=args.arch)
        model = pti.Transformer.from_pretrained(folder)
    where = args.model or f"a tiny random {args.arch} checkpoint"
    cfg = model.cfg
    pos = min(args.pos, cfg.n_ctx)
    tokens = np.random.default_rng(args.seed).integers(0, cfg.d_vocab, (args.batch, pos))
    twins = ("torch", "numpy") if args.twins == "both" else (args.twins,)
    print(
        f"The precision ladder of {where}: {cfg.n_layers} layers, d_model {cfg.d_model}, "
        f"weights loaded as {cfg.dtype}; {args.batch} x {pos} random tokens, twins: "
        f"{', '.join(twins)}."
    )
    ladder = precision_ladder(model, tokens, twins=twins)
    print()
    print("Largest error in each layer, max |x - x64| / max |x64| over its hook points:")
    print()
    print(ladder.layer_table())
    if ladder.references_agree is not None:
        agree = ladder.references_agree
        print(f"\nThe two twins' float64 runs agree to {agree:.1e} (every cached tensor).")
    print("\nHow each twin's products add up (x @ W, 4096 terms of one sign):")
    print()
    accumulation = accumulation_table()
    print(accumulation)
    text = (
        f"# Precision ladder: {where}\n\n{ladder.layer_table()}\n\n## Accumulation\n\n"
        f"{accumulation}\n\n## Every hook point\n\n{ladder.full_table()}\n"
    )
    path = os.path.join(args.out, "precision_ladder.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    figure = ladder.plot(os.path.join(args.out, "precision_ladder.png"))
    print(f"\nWrote {path} and {figure} in {time.perf_counter() - start:.1f} s.")
