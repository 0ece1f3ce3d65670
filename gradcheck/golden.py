"""The golden reference: float64 inputs, outputs and every gradient of a few configs, in one small
file.

    python -m gradcheck.golden              # check both twins against gradcheck/golden.npz
    python -m gradcheck.golden --write      # make the file (refuses to overwrite it ...)
    python -m gradcheck.golden --write --force   # ... unless told: regenerating is deliberate

The parity tests compare the twins with each other, so a change that moves both the same way
(a shared constant such as LayerNorm's eps, a config default, a helper both call) passes them.
This file does not move with the code: it holds, for each config in ``CONFIGS``, the weights,
tokens and upstream gradient (the inputs), and what the NumPy reference made of them when the
file was written (the output, every parameter gradient, every hook point's activation and
gradient, once per point: an alias is left out; and the next-token loss with its gradient), with
the versions and seed that made it.
``compare`` runs either twin on the stored inputs and measures each stored tensor with
``foundation.contract.agreement`` (b_K's exactly-zero gradient against the largest gradient of its
config); both twins must agree with the file to ``TOLERANCE``.

Regenerate the file only when a change of the numbers is meant (a new hook convention, a fixed
bug), and say so in the commit; ``write`` refuses when the twins disagree with each other.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from foundation.contract.agreement import TOL, is_exact_zero, rel_err
from foundation.contract.config import TransformerConfig
from foundation.lens.hooks import GRAD_SUFFIX, as_numpy

from .factory import randomize_parameters

GOLDEN = Path(__file__).resolve().with_name("golden.npz")
SEED = 0
BATCH, POS = 2, 5
# Another machine, BLAS or library version sums in another order: about 1e-15 relative. A real
# change of the numbers moves them by far more (eps 1e-5 -> 1e-6 moves the output by about 1e-6).
TOLERANCE = 1e-10
SIZES = dict(
    d_vocab=7, d_model=8, n_heads=2, d_head=3, d_mlp=12, n_layers=2, n_ctx=6, dtype="float64"
)
CONFIGS = {
    "pre": dict(
        normalization="pre", positional="learned", act_fn="gelu_new", causal=True, unembed=True
    ),
    "post": dict(
        normalization="post", positional="sinusoidal", act_fn="relu", causal=False, unembed=False
    ),
    "none": dict(
        normalization=None, positional="learned", attn_only=True, causal=True, unembed=True
    ),
    # the Llama family: RMSNorm, rotary (partial: 2 of d_head 3), SwiGLU, 2 query heads sharing 1
    # key/value head
    "llama": dict(
        normalization_type="RMS",
        eps=1e-6,
        positional_embedding_type="rotary",
        rotary_dim=2,
        rotary_base=100.0,
        act_fn="silu",
        gated_mlp=True,
        mlp_bias=False,
        attn_bias=False,
        n_key_value_heads=1,
    ),
    # GPT-J's adjacent pairs with LayerNorm, exact GELU and biases
    "rotary-adjacent": dict(
        positional_embedding_type="rotary",
        rotary_dim=2,
        rotary_adjacent_pairs=True,
        act_fn="gelu",
        causal=True,
        unembed=True,
    ),
    # GPT-NeoX (Pythia): attention and MLP side by side, partial rotary on split halves
    "neox": dict(
        positional_embedding_type="rotary", rotary_dim=2, act_fn="gelu", parallel_attn_mlp=True
    ),
}


def config(name):
    """The TransformerConfig of one golden config."""
    return TransformerConfig(**SIZES, **CONFIGS[name])


def make(seed=SEED):
    """{key: array} for every config, plus "meta" (JSON text): what ``write`` saves."""
    import numpy_impl

    arrays = {}
    rng = np.random.default_rng(seed)
    for name in CONFIGS:
        cfg = config(name)
        model = randomize_parameters(numpy_impl.Transformer(cfg, seed=seed), seed + 1)
        tokens = rng.integers(0, cfg.d_vocab, (BATCH, POS))  # [batch, pos]
        out_shape = (BATCH, POS, cfg.d_vocab if cfg.unembed else cfg.d_model)
        dout = rng.standard_normal(out_shape)  # [batch, pos, d_vocab or d_model]; never all ones
        arrays[f"{name}/input/tokens"] = tokens
        arrays[f"{name}/input/dout"] = dout
        for key, value in model.state_dict().items():
            arrays[f"{name}/weight/{key}"] = value
        for key, value in run(numpy_impl, cfg, model.state_dict(), tokens, dout).items():
            arrays[f"{name}/{key}"] = value
    meta = {
        "made_by": "python -m gradcheck.golden --write",
        "made_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "seed": seed,
        "batch": BATCH,
        "pos": POS,
        "configs": {name: {**SIZES, **CONFIGS[name]} for name in CONFIGS},
        "versions": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "torch": _torch_version(),
            "platform": platform.platform(),
        },
        "values_from": "numpy_impl (the reference); torch_impl agreed to within the tolerance when "
        "written",
    }
    arrays["meta"] = np.array(json.dumps(meta, indent=1))
    return arrays


def run(package, cfg, state_dict, tokens, dout):
    """What one twin (``numpy_impl`` or ``torch_impl``) makes of the inputs: {key: float64 array}.

    Keys: output, grad/<parameter>, act/<hook>, act_grad/<hook>, and with logits, loss and
    loss_grad (the mean next-token cross-entropy of the output, and its gradient by the output).
    """
    model = package.Transformer(cfg)
    model.load_state_dict(state_dict)
    model.zero_grad()
    out, cache = model.run_with_cache(tokens, incl_bwd=True, dout=dout)
    results = {"output": _float64(out)}
    points = model.hook_dict  # built from every sub-module on each read: read once
    for key, value in cache.items():
        hook = key[: -len(GRAD_SUFFIX)] if key.endswith(GRAD_SUFFIX) else key
        if points[hook].name != hook:
            continue  # an alias (hook_q for attn.q.hook_out): its point is kept under its own name
        if key.endswith(GRAD_SUFFIX):
            results[f"act_grad/{hook}"] = _float64(value)
        else:
            results[f"act/{key}"] = _float64(value)
    for key, p in model.named_parameters():
        results[f"grad/{key}"] = _float64(p.grad)
    if cfg.unembed:
        results.update(_loss(package, _float64(out), tokens))
    return results


def _loss(package, logits, tokens):
    """The mean next-token cross-entropy of ``logits`` and its gradient, by ``package``'s loss."""
    loss = package.CrossEntropyLoss()
    inputs, targets = logits[:, :-1], tokens[:, 1:]  # position p predicts token p + 1
    if package.__name__.startswith("torch"):
        import torch

        inputs = torch.tensor(inputs, requires_grad=True)
        value = loss(inputs, torch.as_tensor(targets))
        value.backward()
        return {"loss": _float64(value), "loss_grad": _float64(inputs.grad)}
    value = loss.forward(inputs, targets)
    return {"loss": _float64(value), "loss_grad": _float64(loss.backward())}


def load(path=GOLDEN):
    """(meta, {config: {key: array}}) from a golden file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no golden file at {path}; make one with: python -m gradcheck.golden --write"
        )
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        configs = {}
        for key in data.files:
            if key != "meta":
                name, _, rest = key.partition("/")
                configs.setdefault(name, {})[rest] = data[key]
    return meta, configs


def compare(package, path=GOLDEN):
    """{config: {key: relative error}} of ``package`` (numpy_impl or torch_impl) against the golden
    file."""
    meta, configs = load(path)
    errors = {}
    for name, stored in configs.items():
        cfg = TransformerConfig(**meta["configs"][name])
        weights = {
            key[len("weight/") :]: value
            for key, value in stored.items()
            if key.startswith("weight/")
        }
        mine = run(package, cfg, weights, stored["input/tokens"], stored["input/dout"])
        expected = {
            key: value for key, value in stored.items() if not key.startswith(("input/", "weight/"))
        }
        missing = sorted(set(expected) ^ set(mine))
        if missing:
            raise ValueError(
                f"{package.__name__} [{name}] and the golden file hold different tensors: "
                f"{missing[:5]} "
                f"(the hook points or parameters changed? regenerate: python -m gradcheck.golden "
                f"--write --force)"
            )
        largest = max(
            np.abs(value).max() for key, value in expected.items() if key.startswith("grad/")
        )
        errors[name] = {
            key: tensor_error(mine[key], value, largest if is_exact_zero(key) else None)
            for key, value in expected.items()
        }
    return errors


def tensor_error(mine, expected, scale=None):
    """rel_err, where entries equal on both sides (the -inf of masked attention scores) count as
    agreeing."""
    mine, expected = np.asarray(mine, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    if mine.shape != expected.shape:
        return float("inf")
    same = mine == expected
    mine, expected = np.where(same, 0.0, mine), np.where(same, 0.0, expected)
    if not (np.all(np.isfinite(mine)) and np.all(np.isfinite(expected))):
        return float("inf")
    return rel_err(mine, expected, scale)


def write(path=GOLDEN, force=False, seed=SEED):
    """Make the golden file; refuses to overwrite one unless ``force``, or to write when the twins
    disagree."""
    import numpy_impl
    import torch_impl

    path = Path(path)
    if path.exists() and not force:
        raise FileExistsError(
            f"{path} exists; regenerating the golden values is deliberate: pass --force "
            "(python -m gradcheck.golden --write --force) and say why in the commit"
        )
    arrays = make(seed)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    try:
        for package in (numpy_impl, torch_impl):
            worst = _worst(compare(package, tmp))
            if worst[2] > TOL["float64"]:
                raise ValueError(
                    f"not written: {package.__name__} disagrees with the reference at "
                    f"{worst[0]} {worst[1]} by {worst[2]:.1e} (> {TOL['float64']:g})"
                )
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _worst(errors):
    """(config, key, error) of the largest error."""
    return max(
        ((name, key, error) for name, keys in errors.items() for key, error in keys.items()),
        key=lambda item: item[2],
        default=("", "", 0.0),
    )


def _float64(x):
    return np.array(as_numpy(x), dtype=np.float64)


def _torch_version():
    try:
        import torch
    except ImportError:
        return None
    return torch.__version__


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m gradcheck.golden", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--write", action="store_true", help="make the golden file (from numpy_impl)"
    )
    parser.add_argument(
        "--force", action="store_true", help="with --write: overwrite an existing file"
    )
    parser.add_argument("--path", default=str(GOLDEN), help=f"the golden file (default: {GOLDEN})")
    args = parser.parse_args(argv)
    try:
        if args.write:
            path = write(args.path, force=args.force)
            print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KB)")
            return 0
        import numpy_impl
        import torch_impl

        meta, _ = load(args.path)
        print(
            f"golden file {args.path}: made {meta['made_at']} by {meta['made_by']} (seed "
            f"{meta['seed']}), "
            f"numpy {meta['versions']['numpy']}, torch {meta['versions']['torch']}"
        )
        failed = False
        for package in (numpy_impl, torch_impl):
            for name, keys in compare(package, args.path).items():
                key, error = max(keys.items(), key=lambda item: item[1])
                ok = error <= TOLERANCE
                failed |= not ok
                print(
                    f"  {package.__name__:<10} {name:<5} {len(keys):>3} tensors, worst {error:.1e} "
                    f"({key})  "
                    f"{'pass' if ok else 'FAIL'}"
                )
        print(f"tolerance {TOLERANCE:g} (relative to each tensor's largest entry)")
        return 1 if failed else 0
    except (FileExistsError, FileNotFoundError, ValueError) as error:
        print(f"gradcheck.golden: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
