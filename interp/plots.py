"""Figures for the analyses: PNGs a person reads at a glance (title, axis labels, colour bar).

Every function takes plain arrays (or a cache of either twin), writes one PNG and returns
its path. Matplotlib runs on the Agg backend: no window opens.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePath

import matplotlib
import matplotlib.colors
import matplotlib.lines
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from foundation.lens.hooks import ActivationCache, as_numpy  # noqa: E402

from .common import head_patterns  # noqa: E402


def save_figure(fig, path):
    """Write ``fig`` to ``path`` (creating its folder) at 120 dpi, close it, return the path
    written.

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
        raise ValueError(
            f"patterns must be [n_layers, n_heads, q_pos, k_pos], got shape {patterns.shape}"
        )
    return patterns


TICK_SIZE = 8  # points: the smallest text in any figure


def _token_ticks(ax, labels, axis, most=16):
    """Label one axis "position:token"; past ``most`` positions every k-th one (k = 2, 4, 8, ...),
    from 0.

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
        ax.set_xticks(positions, shown, rotation=90, fontsize=TICK_SIZE)
        ax.set_xticks(np.arange(len(labels)), minor=True)
    else:
        ax.set_yticks(positions, shown, fontsize=TICK_SIZE)
        ax.set_yticks(np.arange(len(labels)), minor=True)


def cell_text(fmt, value):
    """``fmt`` applied to ``value``, where a value that rounds to zero reads "0.00", never
    "-0.00"."""
    text = fmt.format(value)
    try:
        if float(text) == 0:
            return fmt.format(0.0).replace("+", "")
    except ValueError:
        pass
    return text


def head_name(layer, head):
    """ "layer 1, head 0": how every figure and summary names a head."""
    return f"layer {layer}, head {head}"


def _masked_pattern(pattern, causal):
    """A pattern with the keys a causal head can never see (key > query) masked: drawn grey, not as
    0."""
    if not causal:
        return pattern
    q_pos, k_pos = pattern.shape[-2:]
    hidden = np.triu(np.ones((q_pos, k_pos), dtype=bool), k=1)  # [q_pos, k_pos]
    return np.ma.masked_array(pattern, np.broadcast_to(hidden, pattern.shape))


def _grey_for_masked(cmap_name):
    return plt.get_cmap(cmap_name).with_extremes(bad="#d9d9d9")


MASKED_NOTE = "grey: key after the query, masked"


def plot_attention_grid(
    source,
    path,
    batch_index=0,
    title="Attention patterns",
    token_labels=None,
    causal=None,
    separators=(),
    separator_note="separators",
    heads=None,
    columns=None,
):
    """A grid of heads' patterns (one sequence of the batch): by default every head, rows are
    layers.

    ``source`` is an ActivationCache of either twin or an array [n_layers, n_heads, q_pos, k_pos].
    Axes read "position:token". ``causal`` (default: the cache's config, else False) greys out
    the keys after each query; ``separators`` are positions before which a thin orange line is
    drawn (e.g. where the second copy of a repeated sequence starts), named in a legend by
    ``separator_note``. ``heads``: a list of (layer, head) to draw instead of every head (for a
    large model: a readable subset), ``columns`` panels a row (default: n_heads, or 4 for a subset).
    """
    patterns = _patterns_of(source, batch_index)  # [layer, head, q_pos, k_pos]
    if causal is None:
        causal = bool(source.cfg.causal) if isinstance(source, ActivationCache) else False
    n_layers, n_heads = patterns.shape[:2]
    chosen = (
        [(layer, head) for layer in range(n_layers) for head in range(n_heads)]
        if heads is None
        else list(heads)
    )
    columns = columns or (n_heads if heads is None else min(4, len(chosen)))
    rows = -(-len(chosen) // columns)
    n_pos = patterns.shape[-1]
    size = 2.2 if token_labels is None else min(4.5, max(2.8, 0.1 * n_pos + 1.0))
    fig, axes = plt.subplots(
        rows,
        columns,
        figsize=(size * columns + 1.2, size * rows + 0.9),
        squeeze=False,
        layout="constrained",
    )
    cmap = _grey_for_masked("Blues")
    for index, ax in enumerate(axes.flat):
        if index >= len(chosen):
            ax.set_visible(False)
            continue
        layer, head = chosen[index]
        row, column = divmod(index, columns)
        image = ax.imshow(
            _masked_pattern(patterns[layer, head], causal), cmap=cmap, vmin=0.0, vmax=1.0
        )
        ax.set_title(head_name(layer, head), fontsize=10)
        ax.tick_params(labelsize=TICK_SIZE)
        if token_labels is not None:
            _token_ticks(ax, token_labels, "x")
            _token_ticks(ax, token_labels, "y")
        for p in separators:
            ax.axvline(p - 0.5, color="tab:orange", lw=0.8)
            ax.axhline(p - 0.5, color="tab:orange", lw=0.8)
        if row == rows - 1 or index + columns >= len(chosen):
            ax.set_xlabel("key position" if token_labels is None else "key position:token")
        if column == 0:
            ax.set_ylabel("query position" if token_labels is None else "query position:token")
    fig.colorbar(
        image,
        ax=axes,
        shrink=0.8,
        label="attention weight" + (f"\n({MASKED_NOTE})" if causal else ""),
    )
    if len(separators):
        line = matplotlib.lines.Line2D([], [], color="tab:orange", lw=1.5)
        fig.legend([line], [separator_note], loc="outside lower center", frameon=False)
    fig.suptitle(title)
    return _save(fig, path)


def plot_attention_head(
    pattern,
    path,
    token_labels=None,
    title="Attention pattern",
    causal=False,
    separators=(),
    separator_note="separators",
):
    """One head's pattern [q_pos, k_pos], large, with "position:token" on both axes (keys after the
    query grey if causal)."""
    pattern = as_numpy(pattern)
    if pattern.ndim != 2:
        raise ValueError(f"pattern must be [q_pos, k_pos], got shape {pattern.shape}")
    if token_labels is not None and len(token_labels) != pattern.shape[0]:
        raise ValueError(
            f"token_labels has {len(token_labels)} entries for {pattern.shape[0]} positions"
        )
    side = max(5.0, 0.32 * pattern.shape[0] + 2)
    fig, ax = plt.subplots(figsize=(side + 1.2, side), layout="constrained")
    image = ax.imshow(
        _masked_pattern(pattern, causal), cmap=_grey_for_masked("Blues"), vmin=0.0, vmax=1.0
    )
    _token_ticks(ax, token_labels, "x", most=64)
    _token_ticks(ax, token_labels, "y", most=64)
    for p in separators:
        ax.axvline(p - 0.5, color="tab:orange", lw=0.8)
        ax.axhline(p - 0.5, color="tab:orange", lw=0.8)
    ax.set_xlabel("key (attended-to) position:token")
    ax.set_ylabel("query position:token")
    ax.set_title(title)
    fig.colorbar(
        image, ax=ax, shrink=0.8, label="attention weight" + (f" ({MASKED_NOTE})" if causal else "")
    )
    if len(separators):
        line = matplotlib.lines.Line2D([], [], color="tab:orange", lw=1.5)
        fig.legend([line], [separator_note], loc="outside lower center", frameon=False)
    return _save(fig, path)


def plot_head_scores(
    scores,
    path,
    title="Head scores",
    label="score",
    diverging=False,
    fmt="{:.2f}",
    vmin=None,
    vmax=None,
    min_range=0.0,
    baseline=None,
    baseline_note="random heads",
):
    """Heatmap of a [n_layers, n_heads] array with each value written in its cell.

    ``diverging=True`` centres a red-blue colour map on zero (for signed numbers such as loss
    changes or attributions; ``vmax`` then fixes the range to [-vmax, vmax]; otherwise the range
    is the largest |value|, but at least ``min_range``, so that noise stays pale instead of
    being stretched to full colour); otherwise a sequential map over [vmin, vmax] (default: the
    data's range; pass 0 and 1 for scores that live there). ``baseline``: what a head without
    the property scores (e.g. random weights); cells at or below it are white, the colour
    measures the distance above it, and the colour bar marks it with ``baseline_note``.
    """
    scores = as_numpy(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be [n_layers, n_heads], got shape {scores.shape}")
    n_layers, n_heads = scores.shape
    fig, ax = plt.subplots(
        figsize=(max(5.5, 0.9 * n_heads + 3.0), max(3.6, 0.7 * n_layers + 2.0)),
        layout="constrained",
    )
    if baseline is not None:
        top = vmax if vmax is not None else max(float(scores.max()), baseline + 0.1)
        cmap = plt.get_cmap("Reds").with_extremes(under="white")
        image = ax.imshow(scores, cmap=cmap, vmin=baseline, vmax=top)
    elif diverging:
        bound = vmax if vmax is not None else (max(float(np.abs(scores).max()), min_range) or 1.0)
        image = ax.imshow(scores, cmap="RdBu_r", vmin=-bound, vmax=bound)
    else:
        image = ax.imshow(scores, cmap="viridis", vmin=vmin, vmax=vmax)
    for layer in range(n_layers):
        for head in range(n_heads):
            value = scores[layer, head]
            shade = image.norm(value)
            if baseline is not None:
                dark = shade > 0.6
            elif diverging:
                dark = abs(shade - 0.5) > 0.35
            else:
                dark = shade < 0.5
            ax.text(
                head,
                layer,
                cell_text(fmt, value),
                ha="center",
                va="center",
                fontsize=9,
                color="white" if dark else "black",
            )
    ax.set_xticks(range(n_heads), [str(h) for h in range(n_heads)], fontsize=TICK_SIZE + 1)
    ax.set_yticks(
        range(n_layers), [str(layer) for layer in range(n_layers)], fontsize=TICK_SIZE + 1
    )
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    fig.suptitle(title, fontsize=11)  # above the colour bar too: a long title never runs into it
    if baseline is not None:
        bar = fig.colorbar(image, ax=ax, label=label, extend="min", extendfrac=0.08)
        bar.set_ticks([baseline, top], labels=[f"{baseline:.2f} {baseline_note}", f"{top:.2f}"])
    else:
        fig.colorbar(image, ax=ax, label=label)
    return _save(fig, path)


def plot_score_grid(grid, path, kind, half):
    """A head-score heatmap [n_layers, n_heads] of ``kind`` on ``scores.scoring_tokens``
    (``half`` random tokens, then again), as every tour draws it: one title and colour bar for
    one quantity."""
    from .scores import KIND_NAMES, KIND_TARGETS, scoring_data

    name = KIND_NAMES[kind]
    return plot_head_scores(
        grid,
        path,
        vmin=0,
        vmax=1,
        label=f"{name} score (1 = always)",
        title=f"{name.capitalize()} score of each head: {KIND_TARGETS[kind]}\n"
        f"on {scoring_data(half)}",
    )


def plot_logit_lens(lens, path, title="Logit lens: what the unembedding reads after each layer"):
    """Three panels: mean log-prob of the true next token per layer, top-1 accuracy per layer, and
    the log-prob per layer and position.

    Each quantity has its own axis, and each axis runs over the range its quantity means something
    on: log-probability from uniform guessing (-ln d_vocab, drawn as a line) or lower, up to 0
    (certain); accuracy from 0 to 1, with chance (1 / d_vocab) drawn.
    """
    d_vocab = lens.logits.shape[-1]
    chance = -np.log(d_vocab)
    per_position = lens.next_logprob.mean(axis=1)  # [n_layers + 1, pos - 1]
    lowest = min(chance, float(per_position.min()), float(lens.mean_next_logprob.min()))
    fig, (left, middle, right) = plt.subplots(
        1, 3, figsize=(15, 4.4), layout="constrained", gridspec_kw={"width_ratios": [1, 0.8, 1.7]}
    )
    layers = np.arange(len(lens.labels))
    left.plot(layers, lens.mean_next_logprob, marker="o", color="tab:blue")
    left.axhline(
        chance, color="black", ls=":", lw=1, label=f"uniform guess: -ln {d_vocab} = {chance:.2f}"
    )
    left.set_ylim(lowest * 1.08, 0.0)
    left.set_ylabel("mean log p(true next token), nats")
    left.set_title("log-probability (0 = certain)", fontsize=10)
    left.legend(loc="upper left", fontsize=TICK_SIZE + 1)
    middle.plot(layers, lens.next_top1, marker="s", color="tab:green")
    middle.axhline(1 / d_vocab, color="black", ls=":", lw=1, label=f"chance: 1/{d_vocab}")
    middle.set_ylim(-0.02, 1.02)
    for ax, values in ((left, lens.mean_next_logprob), (middle, lens.next_top1)):
        ax.set_xlim(-0.5, len(values) - 0.5)
    middle.set_ylabel("top-1 accuracy (fraction of positions)")
    middle.set_title("the true next token ranked first", fontsize=10)
    middle.legend(loc="upper left", fontsize=TICK_SIZE + 1)
    step = 1
    while len(layers) / step > 13:
        step *= 2
    for ax in (left, middle):
        ax.set_xticks(
            layers[::step],
            (["embed"] + [str(i - 1) for i in layers[1:]])[::step],
            rotation=90 if len(layers) > 7 else 0,
        )
        ax.set_xlabel("residual stream, after layer")
    image = right.imshow(per_position, aspect="auto", cmap="viridis", vmin=lowest, vmax=0.0)
    right.set_yticks(
        layers[::step],
        (["embedding"] + [f"after layer {i - 1}" for i in layers[1:]])[::step],
        fontsize=TICK_SIZE + 1,
    )
    right.set_xlabel("position (predicting the token at position + 1)")
    right.set_ylabel("residual stream")
    right.set_title("log p(true next token) per position (mean over batch)", fontsize=10)
    bar = fig.colorbar(
        image,
        ax=right,
        label=f"log p(true next token), nats\n(0 = certain; dotted: uniform, {chance:.2f})",
    )
    ticks = matplotlib.ticker.MaxNLocator(5).tick_values(lowest, 0.0)
    bar.set_ticks([t for t in ticks if lowest <= t <= 0.0])
    bar.ax.axhline(chance, color="white", ls=":", lw=1.5)
    fig.suptitle(title)
    return _save(fig, path)


# logits: an attribution axis spans at least +-0.5, so a model adding ~0 looks like it
MIN_LOGIT_RANGE = 0.5


def plot_attribution(attribution, path, title="Direct logit attribution"):
    """Left: bars per component (embed, pos_embed, each layer's attn and mlp), each with its value
    written on it (a bar near zero is still read). Right: heads [layer, head]."""
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(12, 4.4), gridspec_kw={"width_ratios": [1.4, 1]}, layout="constrained"
    )
    values = attribution.components
    colors = ["tab:blue" if v >= 0 else "tab:red" for v in values]
    bars = left.bar(range(len(values)), values, color=colors)
    left.bar_label(
        bars, [cell_text("{:+.3f}", v) for v in values], padding=2, fontsize=TICK_SIZE + 1
    )
    low = min(float(values.min()), -MIN_LOGIT_RANGE)  # noise near 0 stays small, not stretched
    high = max(float(values.max()), MIN_LOGIT_RANGE)
    left.set_ylim(low - 0.12 * (high - low), high + 0.12 * (high - low))
    left.axhline(0, color="black", linewidth=0.8)
    left.set_xticks(range(len(values)), attribution.component_labels, rotation=30)
    left.set_xlabel("component (embed, positions, each layer's attention and MLP output)")
    left.set_ylabel("direct effect on the true token's logit")
    left.set_title(
        f"components (sum {values.sum():.3f} + bias {attribution.bias:.3f} = logit "
        f"{attribution.logit:.3f})",
        fontsize=10,
    )
    heads = attribution.heads
    bound = max(float(np.abs(heads).max()), MIN_LOGIT_RANGE)
    image = right.imshow(heads, cmap="RdBu_r", vmin=-bound, vmax=bound)
    for layer in range(heads.shape[0]):
        for head in range(heads.shape[1]):
            shade = image.norm(heads[layer, head])
            right.text(
                head,
                layer,
                cell_text("{:.2f}", heads[layer, head]),
                ha="center",
                va="center",
                fontsize=9,
                color="white" if abs(shade - 0.5) > 0.35 else "black",
            )
    right.set_xticks(range(heads.shape[1]), [str(h) for h in range(heads.shape[1])])
    right.set_yticks(range(heads.shape[0]), [str(layer) for layer in range(heads.shape[0])])
    right.set_xlabel("head")
    right.set_ylabel("layer")
    right.set_title("per head (z_h W_O[h])", fontsize=10)
    fig.colorbar(image, ax=right, label="direct effect on the logit")
    fig.suptitle(title)
    return _save(fig, path)


def plot_patching(
    grid, path, token_labels=None, title="Activation patching", ylabel="layer", row_prefix=""
):
    """Heatmap of a [n_layers, pos] patching grid (1 = clean restored, 0 = corrupted), tokens on x.

    A cell is written only where something is restored (|value| >= 0.005); a blank cell is 0.
    """
    grid = as_numpy(grid)
    if grid.ndim != 2:
        raise ValueError(f"grid must be [n_layers, pos], got shape {grid.shape}")
    fig, ax = plt.subplots(
        figsize=(max(5.0, 0.4 * grid.shape[1] + 2.8), 0.6 * grid.shape[0] + 2.2),
        layout="constrained",
    )
    bound = max(1.0, float(np.abs(grid).max()))
    image = ax.imshow(grid, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto")
    for row in range(grid.shape[0]):
        for col in range(grid.shape[1]):
            value = grid[row, col]
            if abs(value) < 0.005:
                continue
            shade = image.norm(value)
            ax.text(
                col,
                row,
                f"{value:.2f}",
                ha="center",
                va="center",
                fontsize=TICK_SIZE,
                color="white" if abs(shade - 0.5) > 0.3 else "black",
            )
    labels = (
        [str(p) for p in range(grid.shape[1])]
        if token_labels is None
        else [f"{p}:{t}" for p, t in enumerate(token_labels)]
    )
    ax.set_xticks(
        range(grid.shape[1]),
        labels,
        rotation=90 if token_labels is not None else 0,
        fontsize=TICK_SIZE,
    )
    ax.set_yticks(range(grid.shape[0]), [f"{row_prefix}{r}" for r in range(grid.shape[0])])
    ax.set_xlabel("position patched" + ("" if token_labels is None else ": clean token"))
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=11)
    fig.colorbar(image, ax=ax, label="restored fraction of the\nlogit difference (blank: 0)")
    return _save(fig, path)


def plot_composition(scores, path, baseline=None, title="Composition scores, layer 0 -> layer 1"):
    """Three heatmaps, Q, K and V composition [head in layer 0, head in layer 1]; ``scores`` maps
    kind -> array.

    With ``baseline`` (what random matrices score, about 1/sqrt(d_model)) the colour is the
    distance above it: white at or below the baseline, redder the further above. A score of 0
    and a score just under the baseline both look like nothing, as they mean nothing.
    """
    kinds = list(scores)
    vmax = max(float(np.max(scores[k])) for k in kinds) or 1.0
    if baseline is not None:
        vmax = max(vmax, 2 * baseline)
        norm = matplotlib.colors.Normalize(vmin=baseline, vmax=vmax)
        # below the baseline: white, as at it
        cmap = plt.get_cmap("Reds").with_extremes(under="white")
    else:
        norm, cmap = matplotlib.colors.Normalize(vmin=0.0, vmax=vmax), plt.get_cmap("viridis")
    fig, axes = plt.subplots(
        1, len(kinds), figsize=(3.6 * len(kinds) + 1.2, 3.8), squeeze=False, layout="constrained"
    )
    for i, (ax, kind) in enumerate(zip(axes[0], kinds)):
        grid = as_numpy(scores[kind])
        image = ax.imshow(grid, cmap=cmap, norm=norm)
        for a in range(grid.shape[0]):
            for b in range(grid.shape[1]):
                shade = image.norm(grid[a, b])
                dark = shade > 0.6 if baseline is not None else shade < 0.5
                ax.text(
                    b,
                    a,
                    f"{grid[a, b]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if dark else "black",
                )
        ax.set_xticks(range(grid.shape[1]), [str(h) for h in range(grid.shape[1])])
        ax.set_yticks(range(grid.shape[0]), [str(h) for h in range(grid.shape[0])])
        ax.set_xlabel("head in layer 1 (reads)")
        if i == 0:
            ax.set_ylabel("head in layer 0 (writes)")
        ax.set_title(f"{kind.upper()}-composition")
        if baseline is not None:  # a thin frame, so that an all-white panel still reads as a grid
            ax.set_xticks(np.arange(grid.shape[1] + 1) - 0.5, minor=True)
            ax.set_yticks(np.arange(grid.shape[0] + 1) - 0.5, minor=True)
            ax.grid(which="minor", color="lightgrey", lw=0.8)
            ax.tick_params(which="minor", length=0)
    if baseline is not None:
        # the triangle under the bar: scores below the baseline, white as the baseline itself
        bar = fig.colorbar(
            image, ax=axes, shrink=0.85, extend="min", extendfrac=0.08, label="composition score"
        )
        bar.set_ticks([baseline, vmax], labels=[f"{baseline:.2f} random", f"{vmax:.2f}"])
        suffix = (
            f"\n(white: at or below the random-matrix baseline ~ {baseline:.2f}; the redder, "
            f"the further above it)"
        )
    else:
        fig.colorbar(image, ax=axes, shrink=0.85, label="composition score")
        suffix = ""
    fig.suptitle(title + suffix)
    return _save(fig, path)


def plot_matrix(
    matrix,
    path,
    title,
    xlabel,
    ylabel,
    label="value",
    tick_labels=None,
    mask=None,
    mask_note=None,
    min_range=0.0,
):
    """One matrix as a red-blue heatmap centred on zero (e.g. a head's full OV or QK circuit).

    At most about 8 inches a side, whatever the matrix's size; past 32 rows or columns only every
    k-th index is labelled (k = 2, 4, 8, ...). ``mask`` (bool, like ``matrix``) greys out entries
    that mean nothing (e.g. keys after the query in a causal model's positional QK circuit);
    the colour range comes from the rest, and is at least +-``min_range``.
    """
    matrix = as_numpy(matrix)
    if matrix.ndim != 2:
        raise ValueError(f"matrix must be 2-D, got shape {matrix.shape}")
    rows, cols = matrix.shape
    fig, ax = plt.subplots(
        figsize=(min(9.0, max(4.5, 0.3 * cols + 2.5)), min(8.0, max(4.0, 0.3 * rows + 1.5))),
        layout="constrained",
    )
    shown = matrix if mask is None else np.ma.masked_array(matrix, mask)
    bound = max(float(np.abs(shown).max()), min_range) or 1.0
    image = ax.imshow(shown, cmap=_grey_for_masked("RdBu_r"), vmin=-bound, vmax=bound)
    labels = tick_labels if tick_labels is not None else [str(i) for i in range(max(rows, cols))]
    for axis, n in (("x", cols), ("y", rows)):
        step = 1
        while n / step > 32:
            step *= 2
        ticks = np.arange(0, n, step)
        if axis == "x":
            ax.set_xticks(ticks, [labels[t] for t in ticks], rotation=90, fontsize=TICK_SIZE)
        else:
            ax.set_yticks(ticks, [labels[t] for t in ticks], fontsize=TICK_SIZE)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.suptitle(title, fontsize=11)  # above the colour bar too
    fig.colorbar(
        image,
        ax=ax,
        label=label + (f"\n(grey: {mask_note})" if mask is not None and mask_note else ""),
    )
    return _save(fig, path)


def plot_attribution_patching(rows, path, title="Attribution patching against activation patching"):
    """Scatter plots: activation patching (x) against each gradient estimate (y), one row of
    panels per kind of patch.

    ``rows``: a list of dicts, each with ``name`` (what one point is, "one head's z, all
    positions"), ``patched`` [n] (the activation-patching results), ``estimates`` {label: [n]}
    (one panel each: "attribution", "integrated gradients, 16 steps"), ``groups`` [n] ints and
    ``group_names`` (one colour and legend entry per group: a head, or a layer). Both axes are
    the restored fraction of the logit difference, on one scale, with the diagonal y = x (a
    perfect estimate) dashed; each panel's title gives Pearson's r.
    """
    n_cols = max(len(row["estimates"]) for row in rows)
    fig, axes = plt.subplots(
        len(rows),
        n_cols,
        figsize=(5.4 * n_cols, 4.2 * len(rows)),
        layout="constrained",
        squeeze=False,
    )
    for row_axes, row in zip(axes, rows, strict=True):
        patched = as_numpy(row["patched"]).ravel()
        groups = np.asarray(row["groups"]).ravel()
        for ax, (label, estimate) in zip(row_axes, row["estimates"].items(), strict=False):
            estimate = as_numpy(estimate).ravel()
            both = np.concatenate([patched, estimate])
            low, high = min(float(both.min()), 0.0), max(float(both.max()), 1.0)
            pad = 0.08 * (high - low)  # at least [-0.08, 1.08]: the metric's own scale
            low, high = low - pad, high + pad
            ax.plot([low, high], [low, high], color="grey", ls="--", lw=1, label="y = x (exact)")
            for group, group_name in enumerate(row["group_names"]):
                chosen = groups == group
                # each group drawn smaller than the one before: a point on top of another
                # leaves a ring of it showing
                size = max(12, 100 - 30 * group)
                ax.scatter(patched[chosen], estimate[chosen], s=size, label=group_name)
            ax.set_xlim(low, high)
            ax.set_ylim(low, high)
            ax.set_aspect("equal", adjustable="box")
            r = np.corrcoef(patched, estimate)[0, 1] if np.std(estimate) > 0 else np.nan
            ax.set_title(f"{row['name']}\n{label}: r = {r:.3f}", fontsize=10)
            ax.set_xlabel("activation patching\n(restored fraction)")
            ax.set_ylabel(f"{label}\n(restored fraction)")
        row_axes[-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle(title)
    return _save(fig, path)
