"""``python demo.py parity``: the parity sweep as a table, so the figures the tests assert can be
seen.

For every model configuration (normalization x positional x causal x attn_only x act_fn x
unembed) and both dtypes, load one set of random weights into both twins, run forward and a
random backward, and report the worst relative difference of the output and of any gradient.
``--device cuda`` runs the torch twin on the GPU, with TF32 off (so float32 products stay float32).
"""

import itertools
import re

import numpy as np
import torch

import numpy_impl as npi
import torch_impl as pti
from foundation.contract.agreement import TOL, rel_err, relative_errors
from gradcheck.factory import randomize_parameters
from tours.progress import progress


def add_arguments(parser):
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and inputs")
    parser.add_argument(
        "--device", default="cpu", help="where the torch twin runs: cpu (default), cuda or cuda:N"
    )


def measure(cfg, seed, device="cpu"):
    """Worst relative difference (output, gradients) between the twins for one config."""
    model = npi.Transformer(cfg, seed=seed)
    randomize_parameters(model, seed + 1)
    twin = pti.Transformer.from_twin(model).to(device)
    rng = np.random.default_rng(seed + 2)
    tokens = rng.integers(0, cfg.d_vocab, (3, cfg.n_ctx))
    out, out_t = model(tokens), twin(torch.from_numpy(tokens))
    dout = rng.standard_normal(out.shape).astype(cfg.dtype)
    model.backward(dout)
    out_t.backward(torch.from_numpy(dout).to(device))
    grads = {name: p.grad for name, p in model.named_parameters()}
    twin_grads = {name: p.grad for name, p in twin.named_parameters()}
    grad_err = max(relative_errors(grads, twin_grads).values())
    return rel_err(out, out_t), grad_err


def use_device(device):
    """The torch device to run the twin on, checked. On a GPU it turns TF32 off for the process
    (torch's global switches), so that float32 products stay float32."""
    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise ValueError(f"--device must be cpu, cuda or cuda:N, got {device!r}")
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: torch sees no GPU here")
        if (device.index or 0) >= torch.cuda.device_count():
            raise ValueError(
                f"--device {device}: torch sees {torch.cuda.device_count()} GPU(s) here"
            )
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return device


COMBOS = [
    c
    for c in itertools.product(
        ["pre", "post", None],
        ["learned", "sinusoidal"],
        [True, False],
        [False, True],
        ["relu", "gelu_new"],
        [True, False],
    )
    if not (c[3] and c[4] == "gelu_new")
    # (normalization, positional, causal, attn_only, act_fn, unembed); attn_only has no act_fn to
    # vary
]


def sweep(seed, device="cpu", dtypes=("float64", "float32"), progress_bar=progress):
    """{(dtype, normalization): (worst output error, worst gradient error)} over every
    configuration."""
    worst = {}
    jobs = [(combo, dtype) for dtype in dtypes for combo in COMBOS]
    for combo, dtype in progress_bar(jobs, "parity sweep"):
        norm, positional, causal, attn_only, act_fn, unembed = combo
        cfg = npi.TransformerConfig(
            d_vocab=11,
            d_model=12,
            n_heads=3,
            d_mlp=16,
            n_layers=2,
            n_ctx=6,
            normalization=norm,
            positional=positional,
            causal=causal,
            attn_only=attn_only,
            act_fn=act_fn,
            unembed=unembed,
            dtype=dtype,
        )
        out_err, grad_err = measure(cfg, seed, device)
        key = (dtype, str(norm))
        old = worst.get(key, (0.0, 0.0))
        worst[key] = (max(old[0], out_err), max(old[1], grad_err))
    return worst


def run(args):
    device = use_device(args.device)
    worst = sweep(args.seed, device)
    print()
    on_gpu = device.type == "cuda"
    where = "the torch twin on " + (
        f"{torch.cuda.get_device_name(device)}, TF32 off" if on_gpu else "the CPU"
    )
    print(
        f"{len(COMBOS)} configurations per dtype, batch 3, pos = n_ctx = 6, {where}; "
        f"relative = max|numpy - torch| / max|torch|"
    )
    print(
        f"  {'dtype':<8} {'normalization':<14} {'worst output':>13} {'worst gradient':>15} "
        f"{'tolerance':>10}"
    )
    for (dtype, norm), (out_err, grad_err) in sorted(worst.items()):
        print(f"  {dtype:<8} {norm:<14} {out_err:>13.1e} {grad_err:>15.1e} {TOL[dtype]:>10.0e}")
