"""python demo.py gradcheck: every hand-written backward against finite differences.

For each config family (each normalization, with causal/bidirectional, relu/gelu_new,
learned/sinusoidal positions, attn_only and logits/residual output spread across them; then
Llama's RMSNorm, rotary, SwiGLU and grouped heads, and GPT-NeoX's parallel block with partial
rotary and exact GELU) it checks every component the model holds and the whole model, with
random weights, a random input and a random upstream direction R, using
``gradcheck.finite_diff``. It prints one row per component and config, and writes the full
per-tensor table to OUT/gradcheck.txt.
"""

from __future__ import annotations

import os

import numpy_impl
from gradcheck.factory import Variant, build, make_inputs
from gradcheck.finite_diff import FLOOR, STEP, TOLERANCE, format_rows, gradcheck

from .progress import progress

# config fields that change the math; each family sets some, the rest keep their defaults
FAMILIES = (
    {"normalization": "pre"},
    {
        "normalization": "pre",
        "causal": False,
        "positional": "sinusoidal",
        "attn_only": True,
        "unembed": False,
    },
    {
        "normalization": "post",
        "causal": False,
        "act_fn": "relu",
        "positional": "sinusoidal",
        "unembed": False,
    },
    {"normalization": "post", "attn_only": True},
    {"normalization": None, "act_fn": "relu"},
    {
        "normalization": None,
        "causal": False,
        "positional": "sinusoidal",
        "attn_only": True,
        "unembed": False,
    },
    # Llama's: RMSNorm, rotary on the two halves of each head, SwiGLU, no biases, and the two
    # query heads sharing one key/value head
    {
        "normalization_type": "RMS",
        "eps": 1e-6,
        "positional_embedding_type": "rotary",
        "d_head": 4,
        "rotary_base": 100.0,
        "act_fn": "silu",
        "gated_mlp": True,
        "mlp_bias": False,
        "attn_bias": False,
        "n_key_value_heads": 1,
    },
    # GPT-NeoX's: attention and the MLP side by side, rotary on half of each head, exact GELU
    {
        "positional_embedding_type": "rotary",
        "d_head": 4,
        "rotary_dim": 2,
        "act_fn": "gelu",
        "parallel_attn_mlp": True,
    },
)


# the config fields each component's math depends on: a component is checked once per distinct
# setting
ROTARY = ("positional", "rotary_dim", "rotary_adjacent_pairs")
BLOCK = ("normalization", "normalization_type", "causal", "act_fn", "attn_only", "gated_mlp")
BLOCK += ROTARY + ("n_key_value_heads", "parallel_attn_mlp")
DEPENDS_ON = {
    "MultiHeadAttention": ("causal",) + ROTARY,
    "GroupedQueryAttention": ("causal",) + ROTARY,
    "FeedForward": ("act_fn",),
    "TransformerBlock": BLOCK,
    "Transformer": BLOCK + ("unembed",),
}


def add_arguments(parser):
    parser.add_argument(
        "--sample", type=int, default=100, help="entries checked per tensor, at most (default: 100)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed for weights, inputs, R and the sampled entries"
    )


def family_label(cfg):
    """e.g. "pre, causal, gelu_new, learned, logits" (act_fn is left out when there is no MLP);
    "pre RMS, causal, gated silu, rotary, 2 heads on 1 kv, logits" for Llama's."""
    norm = str(cfg.normalization).lower()
    parts = [norm + (" RMS" if cfg.normalization_type == "RMS" else "")]
    parts += ["causal" if cfg.causal else "bidirectional"]
    parts += ["attn_only"] if cfg.attn_only else [("gated " if cfg.gated_mlp else "") + cfg.act_fn]
    rotary = cfg.positional == "rotary" and cfg.rotary_dim not in (None, cfg.d_head)
    parts += [f"rotary {cfg.rotary_dim} of {cfg.d_head}" if rotary else cfg.positional]
    if cfg.n_key_value_heads:
        parts += [f"{cfg.n_heads} heads on {cfg.n_key_value_heads} kv"]
    parts += ["parallel"] if cfg.parallel_attn_mlp else []
    parts += ["logits" if cfg.unembed else "resid out"]
    return ", ".join(parts)


def components(cfg):
    """The classes a model with this config is built from, easiest first, then the model itself."""
    names = ["TokenEmbedding"]
    names += ["LearnedPositionalEmbedding"] if cfg.positional == "learned" else []
    if cfg.normalization is not None:
        names += ["RMSNorm"] if cfg.normalization_type == "RMS" else ["LayerNorm"]
    names += ["GroupedQueryAttention"] if cfg.n_key_value_heads else ["MultiHeadAttention"]
    if not cfg.attn_only:
        names += ["GatedFeedForward"] if cfg.gated_mlp else ["FeedForward"]
    names += ["TransformerBlock"]
    names += ["Unembed", "CrossEntropyLoss"] if cfg.unembed else []
    return names + ["Transformer"]


def run(args):
    if args.sample < 1:
        raise ValueError(f"--sample must be a positive int, got {args.sample}")
    cases, seen = [], set()
    for number, overrides in enumerate(FAMILIES):
        cfg = Variant(str(number), overrides).config()
        for cls in components(cfg):
            setting = (cls, tuple(getattr(cfg, name) for name in DEPENDS_ON.get(cls, ())))
            if setting not in seen:  # e.g. LayerNorm is the same in every config: check it once
                seen.add(setting)
                cases.append((family_label(cfg), cfg, cls))
    print(
        f"Finite differences against every hand-written backward: {len(FAMILIES)} configs, "
        f"{len(cases)} checks."
    )
    print(
        f"Central differences in float64, step {STEP:g}, on f = sum(out * R) with random R; at "
        f"most "
        f"{args.sample} entries per tensor."
    )
    print(
        f"* Relative error |a - n| / max(|a| + |n|, tiny), tiny = {FLOOR:g} x the component's "
        f"largest gradient, "
        f"so entries smaller than that are judged by their error against it; pass at <= "
        f"{TOLERANCE:g}.\n",
        flush=True,
    )
    summary, all_rows = [], []
    for label, cfg, cls in progress(cases, "gradcheck"):
        module = build(numpy_impl, cls, cfg, args.seed)
        inputs = make_inputs(cls, cfg, args.seed + 1, weighted=cls == "CrossEntropyLoss")
        report = gradcheck(
            module, *inputs, sample=args.sample, seed=args.seed + 2, name=f"{cls} [{label}]"
        )
        worst = report.worst
        summary.append(
            (
                label,
                cls,
                str(len(report.rows)),
                str(sum(r.checked for r in report.rows)),
                worst.tensor,
                f"{worst.max_rel_error:.1e}",
                "pass" if report.passed else "FAIL",
            )
        )
        all_rows += report.rows
    print(
        _table(
            ("config", "component", "tensors", "entries", "worst tensor", "max rel err*", ""),
            summary,
        )
    )
    failed = [row for row in all_rows if not row.passed]
    print(f"\n{len(all_rows)} tensors checked, {len(failed)} failed.")
    for kind in ("parameter", "input"):
        worst = max(
            (row for row in all_rows if row.kind == kind), key=lambda row: row.max_rel_error
        )
        print(f"Worst {kind}: {worst.max_rel_error:.1e} ({worst.tensor} in {worst.component}).")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "gradcheck.txt")
    with open(path, "w") as f:
        f.write(format_rows(all_rows) + "\n")
    print(f"Every tensor, one row each: {path}")
    if failed:
        raise SystemExit(1)


def _table(header, rows):
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(header, widths)).rstrip(),
        "  ".join("-" * w for w in widths),
    ]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)
