"""``python demo.py checkpoint DIR``: a tiny random checkpoint folder, written offline.

The folder is what ``save_pretrained`` writes (config.json, model.safetensors, and GPT-2's
tokenizer files vocab.json and merges.txt), small enough to run every tour on in seconds:
``python demo.py gpt2 --model DIR``. The weights are random (``foundation/files/tiny.py``).
"""


def add_arguments(parser):
    from foundation.files.tiny import ARCHITECTURES, GPT2_SIZES

    parser.add_argument("folder", metavar="DIR", help="the folder to write (new, or one without a config.json)")
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), default="gpt2", help="architecture (default gpt2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                        help="dtype of the weights (default float32)")
    parser.add_argument("--layers", type=int, default=GPT2_SIZES["n_layer"],
                        help=f"layers (default {GPT2_SIZES['n_layer']})")
    parser.add_argument("--heads", type=int, default=GPT2_SIZES["n_head"],
                        help=f"attention heads per layer (default {GPT2_SIZES['n_head']})")
    parser.add_argument("--d-model", type=int, default=GPT2_SIZES["n_embd"],
                        help=f"residual stream width (default {GPT2_SIZES['n_embd']})")
    parser.add_argument("--n-ctx", type=int, default=GPT2_SIZES["n_positions"],
                        help=f"context length (default {GPT2_SIZES['n_positions']})")


def writes_out(args):
    return False  # it writes DIR, not --out


def run(args):
    import json
    import os

    from foundation.files.tiny import write_checkpoint

    folder = write_checkpoint(args.folder, arch=args.arch, seed=args.seed, dtype=args.dtype,
                              n_layer=args.layers, n_head=args.heads, n_embd=args.d_model, n_positions=args.n_ctx)
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    print(f"Wrote a random {args.arch} checkpoint to {folder}: {config['n_layer']} layers, {config['n_head']} heads, "
          f"d_model {config['n_embd']}, n_ctx {config['n_positions']}, d_vocab {config['vocab_size']}, {args.dtype}.")
    for name in sorted(os.listdir(folder)):
        print(f"  {name:<18} {os.path.getsize(os.path.join(folder, name)):>9,} bytes")
    print(f"Next: python demo.py gpt2 --model {folder}")
