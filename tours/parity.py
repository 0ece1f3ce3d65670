"""``python demo.py parity``: the parity sweep as a table, so the figures the tests assert can be seen.

For every model configuration (normalization x positional x causal x attn_only x act_fn x
unembed) and both dtypes, load one set of random weights into both twins, run forward and a
random backward, and report the worst relative difference of the output and of any gradient.
"""

import itertools

import numpy as np
import torch

import numpy_impl as npi
import torch_impl as pti
from foundation.agreement import TOL, rel_err, relative_errors
from gradcheck.factory import randomize_parameters
from tours.progress import progress


def add_arguments(parser):
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and inputs")


def measure(cfg, seed):
    """Worst relative difference (output, gradients) between the twins for one config."""
    model = npi.Transformer(cfg, seed=seed)
    randomize_parameters(model, seed + 1)
    twin = pti.Transformer.from_twin(model)
    rng = np.random.default_rng(seed + 2)
    tokens = rng.integers(0, cfg.d_vocab, (3, cfg.n_ctx))
    out, out_t = model(tokens), twin(torch.from_numpy(tokens))
    dout = rng.standard_normal(out.shape).astype(cfg.dtype)
    model.backward(dout)
    out_t.backward(torch.from_numpy(dout))
    grads = {name: p.grad for name, p in model.named_parameters()}
    twin_grads = {name: p.grad for name, p in twin.named_parameters()}
    grad_err = max(relative_errors(grads, twin_grads).values())
    return rel_err(out, out_t), grad_err


def run(args):
    combos = [
        c for c in itertools.product(["pre", "post", None], ["learned", "sinusoidal"], [True, False],
                                     [False, True], ["relu", "gelu_new"], [True, False])
        if not (c[3] and c[4] == "gelu_new")
    ]
    worst = {}
    jobs = [(combo, dtype) for dtype in ("float64", "float32") for combo in combos]
    for combo, dtype in progress(jobs, "parity sweep"):
        norm, positional, causal, attn_only, act_fn, unembed = combo
        cfg = npi.TransformerConfig(
            d_vocab=11, d_model=12, n_heads=3, d_mlp=16, n_layers=2, n_ctx=6, normalization=norm,
            positional=positional, causal=causal, attn_only=attn_only, act_fn=act_fn, unembed=unembed, dtype=dtype,
        )
        out_err, grad_err = measure(cfg, args.seed)
        key = (dtype, str(norm))
        old = worst.get(key, (0.0, 0.0))
        worst[key] = (max(old[0], out_err), max(old[1], grad_err))
    print()
    print(f"{len(combos)} configurations per dtype, batch 3, pos = n_ctx = 6; relative = max|numpy - torch| / max|torch|")
    print(f"  {'dtype':<8} {'normalization':<14} {'worst output':>13} {'worst gradient':>15} {'tolerance':>10}")
    for (dtype, norm), (out_err, grad_err) in sorted(worst.items()):
        print(f"  {dtype:<8} {norm:<14} {out_err:>13.1e} {grad_err:>15.1e} {TOL[dtype]:>10.0e}")
