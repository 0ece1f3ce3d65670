"""The first walk-through: the seed model, its shapes, its attention patterns, and the twins
agreeing.

The model is the small encoder of the original seed demo ("Attention Is All You Need" style:
post-norm, sinusoidal positions, bidirectional attention, no unembedding), so its output is
the final residual stream [batch, pos, d_model].
"""

import os

import numpy as np
import torch

import numpy_impl as npi
import torch_impl as pti
from foundation.contract.agreement import is_exact_zero, rel_err, relative_errors

VOCAB = ["<pad>", "the", "cat", "sat", "on", "mat", "a", "dog", "ran", "home"]
SENTENCE = "the cat sat on mat"


def add_arguments(parser):
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the random weights (default 0)"
    )


def seed_config(dtype="float64"):
    """The seed demo's model: d_model 16, 4 heads, d_mlp 64, 2 layers, an encoder."""
    return npi.TransformerConfig(
        d_vocab=len(VOCAB),
        d_model=16,
        n_heads=4,
        d_mlp=64,
        n_layers=2,
        n_ctx=16,
        act_fn="relu",
        normalization="post",
        positional="sinusoidal",
        causal=False,
        unembed=False,
        dtype=dtype,
    )


def run(args):
    import matplotlib

    matplotlib.use("Agg")
    from foundation.lens.vocab import WordVocabulary
    from interp.plots import plot_attention_grid

    cfg = seed_config()
    model = npi.Transformer(cfg, seed=args.seed)
    # a word-level vocabulary: to_tokens / to_str_tokens as in TransformerLens
    model.tokenizer = WordVocabulary(VOCAB)
    print("Model Architecture:")
    print(f"- Embedding dimension: {cfg.d_model}")
    print(f"- Number of heads: {cfg.n_heads}")
    print(f"- Feed-forward dimension: {cfg.d_mlp}")
    print(f"- Number of layers: {cfg.n_layers}")
    print(
        f"  ({cfg.normalization}-norm, {cfg.positional} positions, "
        f"{'causal' if cfg.causal else 'bidirectional'} attention, {cfg.act_fn}, "
        f"{sum(p.data.size for p in model.parameters())} parameters)"
    )
    print()
    print("Parameters (the same names and shapes in both twins, and in TransformerLens):")
    for name, p in model.named_parameters():
        if name.startswith(("blocks.1",)):
            continue
        print(f"  {name:<24} {str(p.shape):<14}")
    print("  (blocks.1.* as blocks.0.*)")
    print(
        "TransformerLens's views, stacked over layers: "
        f"model.W_Q {model.W_Q.shape}, model.W_O {model.W_O.shape}, model.W_in {model.W_in.shape}, "
        f"model.OV {model.OV} (OV.S: singular values)"
    )
    print()

    tokens = model.to_tokens(SENTENCE)  # [batch=1, pos=5]
    words = model.to_str_tokens(tokens)
    print(f"model.to_tokens({SENTENCE!r}) -> {tokens.tolist()}   (to_str_tokens: {words})")
    out, cache = model.run_with_cache(tokens)
    print(f"Input shape: {tokens.shape}")
    print(f"Output shape: {out.shape}")
    print(
        "  [batch, pos, d_model]: this seed model is an encoder with no unembedding "
        "(unembed=False), so its"
    )
    print(
        f"  output is the final residual stream, not logits over the {cfg.d_vocab} words (other "
        f"tours' models end in logits)."
    )
    print()
    print("Visualizing attention patterns...")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "attention_patterns.png")
    plot_attention_grid(
        cache,
        path,
        token_labels=words,
        title="Attention patterns of the seed model (random weights)",
    )
    print(f"  saved {path}")
    print()

    print("Forward and backward through both twins (same weights, random upstream gradient):")
    twin = pti.Transformer.from_twin(model)
    # [1, 5, 16], random: never all ones
    dout = np.random.default_rng(args.seed + 1).standard_normal(out.shape)
    model.zero_grad()
    model.backward(dout)
    out_t = twin(torch.from_numpy(tokens))
    out_t.backward(torch.from_numpy(dout))
    grads = {name: p.grad for name, p in model.named_parameters()}
    twin_grads = {name: p.grad.numpy() for name, p in twin.named_parameters()}
    rows = [("output", out, out_t.detach().numpy(), rel_err(out, out_t))]
    # b_K's exact gradient is zero, so it is measured against the largest gradient (marked *)
    errors = relative_errors(grads, twin_grads)
    rows += [(f"grad {name}", grads[name], twin_grads[name], errors[name]) for name in grads]
    print(f"  {'tensor':<32} {'shape':<14} {'max |numpy - torch|':>20} {'relative':>10}")
    worst = 0.0
    for name, a, b, relative in rows:
        diff = np.abs(a - b).max()
        worst = max(worst, relative)
        mark = " *" if is_exact_zero(name) else ""
        print(f"  {name:<32} {str(a.shape):<14} {diff:>20.2e} {relative:>10.1e}{mark}")
    print(f"  worst relative difference: {worst:.1e} (float64; the parity tests require <= 1e-12)")
    print(
        "  * b_K's exact gradient is zero (softmax ignores a shift shared by every key): both "
        "twins hold"
    )
    print("    rounding noise there, so it is measured against the largest gradient in the model.")
    print()
    print("Deeper tours: python demo.py --help")
