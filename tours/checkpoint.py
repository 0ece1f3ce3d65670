"""``python demo.py checkpoint DIR``: a tiny random checkpoint folder, written offline.

The folder is what ``save_pretrained`` writes (config.json, model.safetensors, and GPT-2's
tokenizer files vocab.json and merges.txt, or tokenizer.json for ``--arch llama`` and
``--arch gpt_neox``), small enough to run every tour on in seconds:
``python demo.py gpt2 --model DIR``. The weights are random (``foundation/files/tiny.py``).
"""


def add_arguments(parser):
    from foundation.files.tiny import ARCHITECTURES, DTYPES, SIZES

    parser.add_argument(
        "folder", metavar="DIR", help="the folder to write (new, or one without a config.json)"
    )
    parser.add_argument(
        "--arch", choices=sorted(ARCHITECTURES), default="gpt2", help="architecture (default gpt2)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the random weights (default 0)"
    )
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default="float32",
        help="dtype of the weights (default float32; float16 and bfloat16 load as float32, "
        "exactly)",
    )
    parser.add_argument(
        "--layers", type=int, default=SIZES["layers"], help=f"layers (default {SIZES['layers']})"
    )
    parser.add_argument(
        "--heads",
        type=int,
        default=SIZES["heads"],
        help=f"attention heads per layer (default {SIZES['heads']})",
    )
    parser.add_argument(
        "--d-model",
        type=int,
        default=SIZES["d_model"],
        help=f"residual stream width (default {SIZES['d_model']})",
    )
    parser.add_argument(
        "--n-ctx",
        type=int,
        default=SIZES["n_ctx"],
        help=f"context length (default {SIZES['n_ctx']})",
    )


def writes_out(args):
    return False  # it writes DIR, not --out


def run(args):
    import json
    import os

    from foundation.files.tiny import write_checkpoint

    folder = write_checkpoint(
        args.folder,
        arch=args.arch,
        seed=args.seed,
        dtype=args.dtype,
        layers=args.layers,
        heads=args.heads,
        d_model=args.d_model,
        n_ctx=args.n_ctx,
    )
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        vocab = json.load(f).get("vocab_size")
    print(
        f"Wrote a random {args.arch} checkpoint to {folder}: {args.layers} layers, "
        f"{args.heads} heads, "
        f"d_model {args.d_model}, n_ctx {args.n_ctx}, d_vocab {vocab}, {args.dtype}."
    )
    for name in sorted(os.listdir(folder)):
        print(f"  {name:<18} {os.path.getsize(os.path.join(folder, name)):>9,} bytes")
    print(f"Next: python demo.py gpt2 --model {folder}")
