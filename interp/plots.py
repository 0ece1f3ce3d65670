"""Figures for the analyses: PNGs a person reads at a glance (title, axis labels, colour bar).

Every function takes plain arrays (or a cache of either twin), writes one PNG and returns
its path. Matplotlib runs on the Agg backend: no window opens.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePath

import matplotlib
import matplotlib.colors

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from foundation.lens.hooks import ActivationCache, as_numpy  # noqa: E402

from .common import head_patterns  # noqa: E402


def save_figure(fig, path):
    """Write ``fig`` to ``path`` (creating its folder) at 120 dpi, close it, return the path written.

    A path without an extension gets ".png" (as matplotlib would add it): the path returned is
    the file written, a ``Path`` when ``path`` is one.
    """
    written = os.fspath(path)
    if not os.path.splitext(written)[1][1:]:  # "figure" or "figure.": no format named
        written = written.rstrip(".") + ".png"
    os.makedirs(os.path.dirname(os.path.abspath(written)), exist_ok=True)
    try:
        fig.savefig(written, dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)
    return Path(written) if isinstance(path, PurePath) else written


_save = save_figure


def _patterns_of(source, batch_index):
    """[n_layers, n_heads, q_pos, k_pos] for one sequence, from a cache or an array."""
    if isinstance(source, ActivationCache):
        patterns = head_patterns(source)  # [layer, batch, head, q_pos, k_pos]
        if not 0 <= batch_index < patterns.shape[1]:
            raise ValueError(f"batch_index must be in [0, {patterns.shape[1]}), got {batch_index}")
        return patterns[:, batch_index]
    patterns = as_numpy(source)
    if patterns.ndim != 4:
        raise ValueError(f"patterns must be [n_layers, n_heads, q_pos, k_pos], got shape {patterns.shape}")
    return patterns


def _token_ticks(ax, labels, axis, most=16):
    """Label one axis "position:token"; past ``most`` positions every k-th one (k = 2, 4, 8, ...), from 0.

    Every position keeps a small tick, so a labelled one can be counted from.
    """
    if labels is None:
        return
    step = 1
    while len(labels) / step > most:
        step *= 2
    positions = np.arange(0, len(labels), step)
    shown = [f"{p}:{labels[p]}" for p in positions]
    if axis == "x":
        ax.set_xticks(positions, shown, rotation=90, fontsize=7)
        ax.set_xticks(np.arange(len(labels)), minor=True)
    else:
        ax.set_yticks(positions, shown, fontsize=7)
        ax.set_yticks(np.arange(len(labels)), minor=True)


def _masked_pattern(pattern, causal):
    """A pattern with the keys a causal head can never see (key > query) masked: drawn grey, not as 0."""
    if not causal:
        return pattern
    q_pos, k_pos = pattern.shape[-2:]
    hidden = np.triu(np.ones((q_pos, k_pos), dtype=bool), k=1)  # [q_pos, k_pos]
    return np.ma.masked_array(pattern, np.broadcast_to(hidden, pattern.shape))


def _grey_for_masked(cmap_name):
    return plt.get_cmap(cmap_name).with_extremes(bad="#d9d9d9")


MASKED_NOTE = "grey: key after the query, masked"


def plot_attention_grid(source, path, batch_index=0, title="Attention patterns", token_labels=None, causal=None,
                        separators=()):
    """A grid of every head's pattern: rows are layers, columns heads (one sequence of the batch).

    ``source`` is an ActivationCache of either twin or an array [n_layers, n_heads, q_pos, k_pos].
    Axes read "position:token". ``causal`` (default: the cache's config, else False) greys out
    the keys after each query; ``separators`` are positions before which a thin line is drawn
    (e.g. where the second copy of a repeated sequence starts).
    """
    patterns = _patterns_of(source, batch_index)  # [layer, head, q_pos, k_pos]
    if causal is None:
        causal = bool(source.cfg.causal) if isinstance(source, ActivationCache) else False
    n_layers, n_heads = patterns.shape[:2]
    n_pos = patterns.shape[-1]
    size = 2.2 if token_labels is None else min(6.0, max(3.2, 0.11 * n_pos))
    fig, axes = plt.subplots(n_layers, n_heads, figsize=(size * n_heads + 1.2, size * n_layers + 0.8), squeeze=False)
    cmap = _grey_for_masked("Blues")
    for layer in range(n_layers):
        for head in range(n_heads):
            ax = axes[layer, head]
            image = ax.imshow(_masked_pattern(patterns[layer, head], causal), cmap=cmap, vmin=0.0, vmax=1.0)
            ax.set_title(f"L{layer} H{head}", fontsize=9)
            if token_labels is not None:
                _token_ticks(ax, token_labels, "x")
                _token_ticks(ax, token_labels, "y")
            for p in separators:
                ax.axvline(p - 0.5, color="tab:orange", lw=0.6)
                ax.axhline(p - 0.5, color="tab:orange", lw=0.6)
            if layer == n_layers - 1:
                ax.set_xlabel("key position" if token_labels is None else "key position:token")
            if head == 0:
                ax.set_ylabel("query position" if token_labels is None else "query position:token")
    fig.colorbar(image, ax=axes, shrink=0.8, label="attention weight" + (f"\n({MASKED_NOTE})" if causal else ""))
    fig.suptitle(title)
    return _save(fig, path)


def plot_attention_head(pattern, path, token_labels=None, title="Attention pattern", causal=False, separators=()):
    """One head's pattern [q_pos, k_pos], large, with "position:token" on both axes (keys after the query grey if causal)."""
    pattern = as_numpy(pattern)
    if pattern.ndim != 2:
        raise ValueError(f"pattern must be [q_pos, k_pos], got shape {pattern.shape}")
    if token_labels is not None and len(token_labels) != pattern.shape[0]:
        raise ValueError(f"token_labels has {len(token_labels)} entries for {pattern.shape[0]} positions")
    side = max(5.0, 0.32 * pattern.shape[0] + 2)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    image = ax.imshow(_masked_pattern(pattern, causal), cmap=_grey_for_masked("Blues"), vmin=0.0, vmax=1.0)
    _token_ticks(ax, token_labels, "x", most=64)
    _token_ticks(ax, token_labels, "y", most=64)
    for p in separators:
        ax.axvline(p - 0.5, color="tab:orange", lw=0.8)
        ax.axhline(p - 0.5, color="tab:orange", lw=0.8)
    ax.set_xlabel("key (attended-to) position:token")
    ax.set_ylabel("query position:token")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, shrink=0.8, label="attention weight" + (f" ({MASKED_NOTE})" if causal else ""))
    return _save(fig, path)


def plot_head_scores(scores, path, title="Head scores", label="score", diverging=False, fmt="{:.2f}",
                     vmin=None, vmax=None, min_range=0.0):
    """Heatmap of a [n_layers, n_heads] array with each value written in its cell.

    ``diverging=True`` centres a red-blue colour map on zero (for signed numbers such as loss
    changes or attributions; ``vmax`` then fixes the range to [-vmax, vmax]; otherwise the range
    is the largest |value|, but at least ``min_range``, so that noise stays pale instead of
    being stretched to full colour); otherwise a sequential map over [vmin, vmax] (default: the
    data's range; pass 0 and 1 for scores that live there).
    """
    scores = as_numpy(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be [n_layers, n_heads], got shape {scores.shape}")
    n_layers, n_heads = scores.shape
    fig, ax = plt.subplots(figsize=(1.0 * n_heads + 2.5, 0.8 * n_layers + 1.6))
    if diverging:
        bound = vmax if vmax is not None else (max(float(np.abs(scores).max()), min_range) or 1.0)
        image = ax.imshow(scores, cmap="RdBu_r", vmin=-bound, vmax=bound)
    else:
        image = ax.imshow(scores, cmap="viridis", vmin=vmin, vmax=vmax)
    for layer in range(n_layers):
        for head in range(n_heads):
            value = scores[layer, head]
            shade = image.norm(value)
            color = "white" if (shade < 0.5 and not diverging) or (diverging and abs(shade - 0.5) > 0.35) else "black"
            ax.text(head, layer, fmt.format(value), ha="center", va="center", fontsize=8, color=color)
    ax.set_xticks(range(n_heads), [f"H{h}" for h in range(n_heads)])
    ax.set_yticks(range(n_layers), [f"L{layer}" for layer in range(n_layers)])
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label=label)
    return _save(fig, path)


def plot_logit_lens(lens, path, title="Logit lens: what the unembedding reads after each layer"):
    """Left: mean log-prob of the true next token per layer. Right: the same per layer and position."""
    per_position = lens.next_logprob.mean(axis=1)  # [n_layers + 1, pos - 1]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.4), gridspec_kw={"width_ratios": [1, 1.6]}, layout="constrained")
    layers = np.arange(len(lens.labels))
    left.plot(layers, lens.mean_next_logprob, marker="o", label="mean log p(next token)")
    left.set_xticks(layers, lens.labels, rotation=30)
    left.set_xlabel("residual stream after")
    left.set_ylabel("log-probability of the true next token")
    twin = left.twinx()
    twin.plot(layers, lens.next_top1, marker="s", color="tab:orange", label="top-1 accuracy")
    twin.set_ylabel("top-1 accuracy", color="tab:orange")
    twin.set_ylim(-0.02, 1.02)
    left.set_title("averaged over batch and positions")
    # one legend for the lines of both y-axes
    left.legend(handles=left.get_lines() + twin.get_lines(), loc="upper left", fontsize=8)
    image = right.imshow(per_position, aspect="auto", cmap="viridis")
    right.set_yticks(layers, lens.labels)
    right.set_xlabel("position (predicting the token at position + 1)")
    right.set_ylabel("residual stream after")
    right.set_title("per position (mean over batch)")
    fig.colorbar(image, ax=right, label="log p(next token)")
    fig.suptitle(title)
    return _save(fig, path)


def plot_attribution(attribution, path, title="Direct logit attribution"):
    """Left: bars per component (embed, pos_embed, each layer's attn and mlp). Right: heads [layer, head]."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.4), gridspec_kw={"width_ratios": [1.4, 1]}, layout="constrained")
    values = attribution.components
    colors = ["tab:blue" if v >= 0 else "tab:red" for v in values]
    left.bar(range(len(values)), values, color=colors)
    left.axhline(0, color="black", linewidth=0.8)
    left.set_xticks(range(len(values)), attribution.component_labels, rotation=30)
    left.set_xlabel("component")
    left.set_ylabel("direct effect on the logit")
    left.set_title(f"components (sum {values.sum():.3f} + bias {attribution.bias:.3f} = logit {attribution.logit:.3f})",
                   fontsize=9)
    heads = attribution.heads
    bound = float(np.abs(heads).max()) or 1.0
    image = right.imshow(heads, cmap="RdBu_r", vmin=-bound, vmax=bound)
    for layer in range(heads.shape[0]):
        for head in range(heads.shape[1]):
            shade = image.norm(heads[layer, head])
            right.text(head, layer, f"{heads[layer, head]:.2f}", ha="center", va="center", fontsize=8,
                       color="white" if abs(shade - 0.5) > 0.35 else "black")
    right.set_xticks(range(heads.shape[1]), [f"H{h}" for h in range(heads.shape[1])])
    right.set_yticks(range(heads.shape[0]), [f"L{layer}" for layer in range(heads.shape[0])])
    right.set_xlabel("head")
    right.set_ylabel("layer")
    right.set_title("per head (z_h W_O[h])")
    fig.colorbar(image, ax=right, label="direct effect on the logit")
    fig.suptitle(title)
    return _save(fig, path)


def plot_patching(grid, path, token_labels=None, title="Activation patching", ylabel="layer", row_prefix="L"):
    """Heatmap of a [n_layers, pos] patching grid (1 = clean restored, 0 = corrupted), tokens on x."""
    grid = as_numpy(grid)
    if grid.ndim != 2:
        raise ValueError(f"grid must be [n_layers, pos], got shape {grid.shape}")
    fig, ax = plt.subplots(figsize=(max(5.0, 0.55 * grid.shape[1] + 2.5), 0.7 * grid.shape[0] + 2.0))
    bound = max(1.0, float(np.abs(grid).max()))
    image = ax.imshow(grid, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto")
    for row in range(grid.shape[0]):
        for col in range(grid.shape[1]):
            value = grid[row, col]
            # every cell gets its number ("0" where nothing is restored); white on the dark cells
            text = "0" if abs(value) < 0.005 else f"{value:.2f}"
            shade = image.norm(value)
            ax.text(col, row, text, ha="center", va="center", fontsize=7,
                    color="white" if abs(shade - 0.5) > 0.3 else ("grey" if text == "0" else "black"))
    labels = [str(p) for p in range(grid.shape[1])] if token_labels is None else [f"{p}:{t}" for p, t in enumerate(token_labels)]
    ax.set_xticks(range(grid.shape[1]), labels, rotation=90 if token_labels is not None else 0, fontsize=8)
    ax.set_yticks(range(grid.shape[0]), [f"{row_prefix}{r}" for r in range(grid.shape[0])])
    ax.set_xlabel("position patched" + ("" if token_labels is None else ": clean token"))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="restored fraction of the logit difference")
    return _save(fig, path)


def plot_composition(scores, path, baseline=None, title="Composition scores, layer 0 -> layer 1"):
    """Three heatmaps, Q, K and V composition [head in layer 0, head in layer 1]; ``scores`` maps kind -> array.

    With ``baseline`` (what random matrices score, about 1/sqrt(d_model)) the colour is the
    distance above it: white at or below the baseline, redder the further above. A score of 0
    and a score just under the baseline both look like nothing, as they mean nothing.
    """
    kinds = list(scores)
    vmax = max(float(np.max(scores[k])) for k in kinds) or 1.0
    if baseline is not None:
        vmax = max(vmax, 2 * baseline)
        norm = matplotlib.colors.Normalize(vmin=baseline, vmax=vmax)
        cmap = plt.get_cmap("Reds").with_extremes(under="white")  # below the baseline: white, as at it
    else:
        norm, cmap = matplotlib.colors.Normalize(vmin=0.0, vmax=vmax), plt.get_cmap("viridis")
    fig, axes = plt.subplots(1, len(kinds), figsize=(3.6 * len(kinds) + 1.2, 3.8), squeeze=False, layout="constrained")
    for i, (ax, kind) in enumerate(zip(axes[0], kinds)):
        grid = as_numpy(scores[kind])
        image = ax.imshow(grid, cmap=cmap, norm=norm)
        for a in range(grid.shape[0]):
            for b in range(grid.shape[1]):
                shade = image.norm(grid[a, b])
                dark = shade > 0.6 if baseline is not None else shade < 0.5
                ax.text(b, a, f"{grid[a, b]:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if dark else "black")
        ax.set_xticks(range(grid.shape[1]), [f"H{h}" for h in range(grid.shape[1])])
        ax.set_yticks(range(grid.shape[0]), [f"H{h}" for h in range(grid.shape[0])])
        ax.set_xlabel("head in the later layer (reads)")
        if i == 0:
            ax.set_ylabel("head in the earlier layer (writes)")
        ax.set_title(f"{kind.upper()}-composition")
        if baseline is not None:  # a thin frame, so that an all-white panel still reads as a grid
            ax.set_xticks(np.arange(grid.shape[1] + 1) - 0.5, minor=True)
            ax.set_yticks(np.arange(grid.shape[0] + 1) - 0.5, minor=True)
            ax.grid(which="minor", color="lightgrey", lw=0.8)
            ax.tick_params(which="minor", length=0)
    if baseline is not None:
        # the triangle under the bar: scores below the baseline, white as the baseline itself
        bar = fig.colorbar(image, ax=axes, shrink=0.85, extend="min", extendfrac=0.08, label="composition score")
        bar.set_ticks([baseline, vmax], labels=[f"{baseline:.2f} random", f"{vmax:.2f}"])
        suffix = f"\n(white: at or below the random-matrix baseline ~ {baseline:.2f}; the redder, the further above it)"
    else:
        fig.colorbar(image, ax=axes, shrink=0.85, label="composition score")
        suffix = ""
    fig.suptitle(title + suffix)
    return _save(fig, path)


def plot_matrix(matrix, path, title, xlabel, ylabel, label="value", tick_labels=None, mask=None, mask_note=None):
    """One matrix as a red-blue heatmap centred on zero (e.g. a head's full OV or QK circuit).

    At most about 8 inches a side, whatever the matrix's size; past 32 rows or columns only every
    k-th index is labelled (k = 2, 4, 8, ...). ``mask`` (bool, like ``matrix``) greys out entries
    that mean nothing (e.g. keys after the query in a causal model's positional QK circuit);
    the colour range comes from the rest.
    """
    matrix = as_numpy(matrix)
    if matrix.ndim != 2:
        raise ValueError(f"matrix must be 2-D, got shape {matrix.shape}")
    rows, cols = matrix.shape
    fig, ax = plt.subplots(figsize=(min(9.0, max(4.5, 0.3 * cols + 2.5)), min(8.0, max(4.0, 0.3 * rows + 1.5))))
    shown = matrix if mask is None else np.ma.masked_array(matrix, mask)
    bound = float(np.abs(shown).max()) or 1.0
    image = ax.imshow(shown, cmap=_grey_for_masked("RdBu_r"), vmin=-bound, vmax=bound)
    labels = tick_labels if tick_labels is not None else [str(i) for i in range(max(rows, cols))]
    for axis, n in (("x", cols), ("y", rows)):
        step = 1
        while n / step > 32:
            step *= 2
        ticks = np.arange(0, n, step)
        if axis == "x":
            ax.set_xticks(ticks, [labels[t] for t in ticks], rotation=90, fontsize=7)
        else:
            ax.set_yticks(ticks, [labels[t] for t in ticks], fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label=label + (f"\n(grey: {mask_note})" if mask is not None and mask_note else ""))
    return _save(fig, path)
