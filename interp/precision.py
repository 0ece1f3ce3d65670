"""The precision ladder: one model's weights run in float64, float32, float16 and bfloat16, and the
error of every cached activation and gradient against float64, layer by layer.

Each rung is a fresh model of one twin and one dtype holding the same weights (rounded to the
dtype as ``load_state_dict`` rounds them), run once forward and once backward on the same tokens:
``run_with_cache(tokens, return_type="loss", incl_bwd=True)``, every hook point's activation and
the gradient of the mean next-token loss there. Each cached tensor is measured against the same
twin's float64 run with the project's one measure of agreement::

    error(name) = max |x - x_float64| / max |x_float64|        (foundation's rel_err)

Entries that are equal in both (the -inf of a masked attention score) count as no error.
The float64 rung is a second float64 run: its errors are exactly zero, so what the other rungs
show is the dtype's doing alone. NumPy has no bfloat16: the NumPy twin climbs float64, float32
and float16. A rung whose formula overflows its dtype (the boundary's non-finite guard raises)
is a result too: ``Rung.overflow`` holds the guard's message, which names the hook point.

    ladder = precision_ladder(model)            # model: either twin, any dtype
    print(ladder.layer_table())                 # markdown: the largest error in each layer
    ladder.plot("precision_ladder.png")         # error vs layer, one line per rung, log scale
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from foundation.contract.agreement import TOL, rel_err
from foundation.contract.boundary import NonFiniteError
from foundation.contract.config import DTYPES
from foundation.lens.hooks import as_numpy

from .common import check_model, weights

# the twins' dtypes (DTYPES: float64, float32, float16, bfloat16); NumPy has no bfloat16
TWIN_DTYPES = {"torch": DTYPES, "numpy": tuple(d for d in DTYPES if d != "bfloat16")}
GRAD = "_grad"
# the loose bounds the tests hold a tiny random model's rungs to: float16 keeps 11 significant bits
# (unit roundoff 4.9e-4), bfloat16 8 (3.9e-3); a few layers of rounding, and a gradient that
# cancels, cost about a factor of ten more
LOOSE_BOUND = {"float64": 0.0, "float32": TOL["float32"], "float16": 2e-2, "bfloat16": 1e-1}


@dataclasses.dataclass
class Rung:
    """One twin in one dtype: ``errors[name]`` for every cached activation and ``<name>_grad``
    (empty when the formula overflowed; then ``overflow`` is the guard's message)."""

    twin: str
    dtype: str
    errors: dict
    loss: float | None
    overflow: str | None = None

    @property
    def label(self):
        return f"{self.twin} {self.dtype}"


@dataclasses.dataclass
class Ladder:
    """Every rung of one model's ladder; ``names``: the cached hook names in forward order."""

    cfg: object
    names: list
    rungs: list
    reference_loss: dict  # twin -> its float64 loss
    references_agree: float | None  # rel_err of the NumPy and torch float64 caches (both twins run)

    def rung(self, twin, dtype):
        """The rung of ``twin`` ("torch" or "numpy") in ``dtype``."""
        for rung in self.rungs:
            if (rung.twin, rung.dtype) == (twin, dtype):
                return rung
        raise ValueError(f"this ladder has no rung {twin} {dtype}")

    def layers(self):
        """The layer labels, in order: "embed", "0", ..., str(n_layers - 1), "final"."""
        return ["embed", *map(str, range(self.cfg.n_layers)), "final"]

    def layer_errors(self, rung, gradients=False):
        """The largest error among each layer's activations (or gradients) -> [len(layers())]
        (NaN where the rung overflowed)."""
        largest = dict.fromkeys(self.layers(), 0.0)
        if rung.overflow:
            return np.full(len(largest), np.nan)
        for name in self.names:
            key = name + GRAD if gradients else name
            if key in rung.errors:
                layer = layer_of(name)
                largest[layer] = max(largest[layer], rung.errors[key])
        return np.array(list(largest.values()))

    def worst(self, rung, gradients=False):
        """(name, error) of the rung's largest activation (or gradient) error."""
        keys = [n + GRAD if gradients else n for n in self.names]
        keys = [k for k in keys if k in rung.errors]
        name = max(keys, key=lambda k: rung.errors[k])
        return name, rung.errors[name]

    def layer_table(self):
        """Markdown: one row per rung, the largest error in each layer, activations then
        gradients; the loss's relative error; where the error is largest."""
        layers = self.layers()
        lines = []
        for gradients in (False, True):
            what = "gradients of the loss" if gradients else "activations"
            lines += [
                f"| {what} | " + " | ".join(layers) + " | largest at |",
                "| --- " * (len(layers) + 2) + "|",
            ]
            for rung in self.rungs:
                if rung.overflow:
                    cells = ["overflow"] * len(layers) + [_overflow_at(rung.overflow)]
                else:
                    name, error = self.worst(rung, gradients)
                    cells = [_number(e) for e in self.layer_errors(rung, gradients)]
                    cells.append(f"`{name}`" if error else "(nowhere)")
                lines.append(f"| {rung.label} | " + " | ".join(cells) + " |")
            lines.append("")
        lines += ["| rung | loss | its relative error |", "| --- | --- | --- |"]
        for rung in self.rungs:
            if rung.overflow:
                lines.append(f"| {rung.label} | overflow at {_overflow_at(rung.overflow)} | |")
                continue
            ref = self.reference_loss[rung.twin]
            gap = abs(rung.loss - ref) / abs(ref)
            lines.append(f"| {rung.label} | {rung.loss:.6f} | {_number(gap)} |")
        return "\n".join(lines)

    def full_table(self):
        """Markdown: every cached name's error in every rung (activations, then gradients)."""
        rungs = [r for r in self.rungs if not r.overflow]
        lines = [
            "| hook point | " + " | ".join(r.label for r in rungs) + " |",
            "| --- " * (len(rungs) + 1) + "|",
        ]
        for key in self.names + [n + GRAD for n in self.names]:
            if all(key not in r.errors for r in rungs):
                continue
            cells = [_number(r.errors[key]) if key in r.errors else "" for r in rungs]
            lines.append(f"| `{key}` | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def plot(self, path, title=None):
        """Error vs layer, one line per rung (colour: dtype, line: twin), log scale; activations
        and gradients in two panels. The float64 rungs are exactly zero and not drawn; any other
        exact zero (a log scale has no 0) sits on a floor a decade under the smallest error, a
        tick labelled "0 (exact)", drawn as a hollow marker."""
        from .plots import plt, save_figure

        layers = self.layers()
        colours = {"float32": "tab:blue", "float16": "tab:orange", "bfloat16": "tab:red"}
        styles = {"torch": "-", "numpy": "--"}
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
        drawn = [r for r in self.rungs if r.dtype != "float64" and not r.overflow]
        errors = [self.layer_errors(r, g) for r in drawn for g in (False, True)]
        positive = np.concatenate([e[e > 0] for e in errors] + [np.array([1.0])])
        floor = 10.0 ** (np.floor(np.log10(positive.min())) - 1)  # where an exact 0 is drawn
        any_exact = any((e == 0).any() for e in errors)
        for ax, gradients in zip(axes, (False, True)):
            for rung in self.rungs:
                if rung.dtype == "float64":
                    continue
                label = rung.label
                if rung.overflow:
                    label += f" (overflow at {_overflow_at(rung.overflow)})"
                    ax.plot([], [], styles[rung.twin], color=colours[rung.dtype], label=label)
                    continue
                errors = self.layer_errors(rung, gradients)
                exact = errors == 0  # weights the dtype holds exactly: drawn on the floor
                x = np.arange(len(layers))
                colour = colours[rung.dtype]
                y = np.where(exact, floor, errors)
                ax.plot(x, y, styles[rung.twin], marker="o", color=colour, label=label)
                ax.plot(x[exact], y[exact], "o", mfc="white", color=colour)
            ax.set_yscale("log")
            if any_exact:
                ax.axhline(floor, color="grey", lw=0.8, ls=":")
            ax.set_xticks(range(len(layers)), _tick_labels(layers))
            ax.set_xlabel("layer (embed, blocks, final: ln_final and unembed)")
            ax.set_title("activations" if not gradients else "gradients of the loss")
            ax.grid(True, which="major", alpha=0.3)
        if any_exact:
            ticks = [t for t in axes[0].get_yticks() if t > floor * 5]
            labels = [f"1e{int(round(np.log10(t)))}" for t in ticks]
            axes[0].set_yticks([floor, *ticks], ["0 (exact)", *labels])
            axes[0].set_ylim(floor / 3, None)
        axes[0].set_ylabel("largest error in the layer\nmax |x - x64| / max |x64|")
        axes[1].legend(fontsize=8, loc="best")
        fig.suptitle(
            title or "Precision ladder: error against float64 (float64 itself: 0, not drawn)"
        )
        fig.tight_layout()
        return save_figure(fig, path)


def accumulation(twin, dtype, n=4096, seed=0):
    """How ``twin``'s weight products add up in ``dtype``, spelled as the components spell them
    (NumPy: ``np.einsum(..., optimize=True)``, torch: ``torch.einsum``) -> (share of the entries
    equal to the exact sum rounded once to ``dtype``, largest error relative to the exact sum).

    ``x [2, 8, n] @ W [n, 16]`` of values in [0.5, 1): every term positive, so the exact sum has
    no cancellation. An accumulator wider than ``dtype`` (float32) gives nearly every entry as the
    exact sum rounded once; one of ``dtype`` itself loses about n / 2 roundings.
    """
    rng = np.random.default_rng(seed)
    x, w = rng.uniform(0.5, 1, (2, 8, n)), rng.uniform(0.5, 1, (n, 16))
    if twin == "torch":
        import torch

        xs, ws = (torch.from_numpy(a).to(getattr(torch, dtype)) for a in (x, w))
        exact = torch.einsum("mf,bpm->bpf", ws.double(), xs.double())  # [2, 8, 16]
        once = as_numpy(exact.to(xs.dtype)).astype(np.float64)
        got = as_numpy(torch.einsum("mf,bpm->bpf", ws, xs)).astype(np.float64)
        exact = as_numpy(exact)
    else:
        xs, ws = x.astype(dtype), w.astype(dtype)
        exact = np.einsum("mf,bpm->bpf", ws.astype(np.float64), xs.astype(np.float64))
        once = exact.astype(dtype).astype(np.float64)
        got = np.einsum("mf,bpm->bpf", ws, xs, optimize=True).astype(np.float64)
    return float(np.mean(got == once)), float(np.max(np.abs(got - exact) / exact))


def accumulation_table(twins=("torch", "numpy")):
    """Markdown: ``accumulation`` for every twin and dtype below float64."""
    lines = [
        "| twin | dtype | entries equal to the exact sum rounded once | largest relative error |",
        "| --- | --- | --- | --- |",
    ]
    for twin in twins:
        for dtype in TWIN_DTYPES[twin][1:]:
            share, error = accumulation(twin, dtype)
            lines.append(f"| {twin} | {dtype} | {share:.1%} | {error:.1e} |")
    return "\n".join(lines)


def layer_of(name):
    """A hook name's layer label: "embed" before the blocks, the block's index, "final" after."""
    match = re.match(r"blocks\.(\d+)\.", name)
    if match:
        return match.group(1)
    if name.startswith(("embed.", "pos_embed.", "hook_embed", "hook_pos_embed")):
        return "embed"
    return "final"


def precision_ladder(model, tokens=None, twins=("torch", "numpy"), dtypes=DTYPES, seed=0):
    """Run ``model``'s weights through every dtype of ``dtypes`` in each twin of ``twins`` ->
    ``Ladder``.

    ``model``: either twin, in any dtype (its weights are read as they are: a float16 model's
    ladder has float16 weights on every rung). ``tokens``: int [batch, pos]; by default 2 random
    sequences of min(n_ctx, 32) tokens drawn with ``seed``. A dtype a twin lacks (bfloat16 in
    NumPy) is left out of that twin's rungs.
    """
    check_model(model)
    if not model.cfg.unembed:
        raise ValueError(
            "model: the ladder differentiates the next-token loss, which needs logits "
            "(cfg.unembed=True); this model outputs its residual stream"
        )
    for dtype in dtypes:
        if dtype not in DTYPES:
            raise ValueError(f"dtypes: {dtype!r} is not one of {DTYPES}")
    for twin in twins:
        if twin not in TWIN_DTYPES:
            raise ValueError(f"twins: {twin!r} is not one of {tuple(TWIN_DTYPES)}")
    state_dict = weights(model)
    if tokens is None:
        rng = np.random.default_rng(seed)
        tokens = rng.integers(0, model.cfg.d_vocab, (2, min(model.cfg.n_ctx, 32)))
    tokens = np.asarray(as_numpy(tokens))
    rungs, reference_loss, references, names = [], {}, {}, None
    for twin in twins:
        reference, loss = _run(twin, model.cfg, "float64", state_dict, tokens)
        names = names or _distinct_names(_build(twin, model.cfg, "float64", state_dict), reference)
        references[twin], reference_loss[twin] = reference, loss
        for dtype in [d for d in DTYPES if d in dtypes and d in TWIN_DTYPES[twin]]:
            try:
                cache, loss = _run(twin, model.cfg, dtype, state_dict, tokens)
            except NonFiniteError as error:
                rungs.append(Rung(twin, dtype, {}, None, overflow=str(error)))
                continue
            errors = {key: _error(cache[key], reference[key]) for key in reference}
            rungs.append(Rung(twin, dtype, errors, loss))
    agree = None
    if len(references) == 2:
        cache_a, cache_b = references.values()
        agree = max(_error(cache_a[key], cache_b[key]) for key in cache_a)
    return Ladder(model.cfg, names, rungs, reference_loss, agree)


def _build(twin, cfg, dtype, state_dict):
    """A fresh model of ``twin`` in ``dtype`` holding ``state_dict`` (rounded to the dtype)."""
    if twin == "torch":
        import torch_impl as package
    else:
        import numpy_impl as package
    model = package.Transformer(dataclasses.replace(cfg, dtype=dtype))
    model.load_state_dict(state_dict)
    return model


def _run(twin, cfg, dtype, state_dict, tokens):
    """One forward and backward of the mean next-token loss -> ({name: float64 ndarray}, loss)."""
    model = _build(twin, cfg, dtype, state_dict)
    with np.errstate(over="ignore"):  # an overflow is a result: the guard raises, naming it
        loss, cache = model.run_with_cache(tokens, return_type="loss", incl_bwd=True)
    arrays = {
        name: as_numpy(value).astype(np.float64)
        for name, value in cache.items()
        if np.issubdtype(as_numpy(value).dtype, np.floating)  # token ids have no error
    }
    return arrays, float(as_numpy(loss))


def _distinct_names(model, cache):
    """The cached names in forward order, one per hook point: TransformerLens's classic name
    (``blocks.0.hook_resid_pre``) where a point has one, not its alias (``blocks.0.hook_in``)."""
    classic = {}
    for name, point in model.hook_dict.items():
        if point.name != name:
            classic[point.name] = name
    names = []
    for key in cache:
        if key.endswith(GRAD) or key in classic.values():
            continue
        names.append(classic.get(key, key))
    return names


def _error(actual, expected):
    """rel_err, with the entries equal in both (a masked score's -inf) counted as no error."""
    same = actual == expected
    return rel_err(np.where(same, 0.0, actual), np.where(same, 0.0, expected))


def _tick_labels(layers, most=16):
    """The layer labels to print under the ticks: all of them, or for a deep model every k-th
    (about ``most``), "embed" and "final" always, none crowding them."""
    step = -(-len(layers) // most)
    last = len(layers) - 1
    shown = []
    for i, label in enumerate(layers):
        if i in (0, last) or step == 1:
            shown.append(label)
        elif i % step == 0 and 2 * step <= i <= last - step:
            shown.append(label)
        else:
            shown.append("")
    return shown


def _number(error):
    return "0" if error == 0 else f"{error:.1e}"


def _overflow_at(message):
    """The hook point a guard's message names ("LayerNorm.forward: blocks.0.ln1.hook_scale holds
    inf ..." -> "blocks.0.ln1.hook_scale")."""
    match = re.match(r"[\w.]+: (.+?) holds ", message)
    return match.group(1) if match else message
