"""Figures for the analyses: PNGs a person reads at a glance (title, axis labels, colour bar).

Every function takes plain arrays (or a cache of either twin), writes one PNG and returns
its path. Matplotlib runs on the Agg backend: no window opens.
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from numpy_impl.hooked import ActivationCache, as_numpy  # noqa: E402

from .common import head_patterns  # noqa: E402


def _save(fig, path):
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


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


def _token_ticks(ax, labels, axis):
    if labels is None:
        return
    positions = np.arange(len(labels))
    if axis == "x":
        ax.set_xticks(positions, labels, rotation=90, fontsize=7)
    else:
        ax.set_yticks(positions, labels, fontsize=7)


def plot_attention_grid(source, path, batch_index=0, title="Attention patterns", token_labels=None):
    """A grid of every head's pattern: rows are layers, columns heads (one sequence of the batch).

    ``source`` is an ActivationCache of either twin or an array [n_layers, n_heads, q_pos, k_pos].
    """
    patterns = _patterns_of(source, batch_index)  # [layer, head, q_pos, k_pos]
    n_layers, n_heads = patterns.shape[:2]
    size = 2.2 if token_labels is None else 3.2
    fig, axes = plt.subplots(n_layers, n_heads, figsize=(size * n_heads + 1.2, size * n_layers + 0.6), squeeze=False)
    for layer in range(n_layers):
        for head in range(n_heads):
            ax = axes[layer, head]
            image = ax.imshow(patterns[layer, head], cmap="Blues", vmin=0.0, vmax=1.0)
            ax.set_title(f"L{layer} H{head}", fontsize=9)
            if token_labels is not None:
                _token_ticks(ax, token_labels, "x")
                _token_ticks(ax, token_labels, "y")
            if layer == n_layers - 1:
                ax.set_xlabel("key position" if token_labels is None else "key token")
            if head == 0:
                ax.set_ylabel("query position" if token_labels is None else "query token")
    fig.colorbar(image, ax=axes, shrink=0.8, label="attention weight")
    fig.suptitle(title)
    return _save(fig, path)


def plot_attention_head(pattern, path, token_labels=None, title="Attention pattern"):
    """One head's pattern [q_pos, k_pos], large, with the tokens on both axes."""
    pattern = as_numpy(pattern)
    if pattern.ndim != 2:
        raise ValueError(f"pattern must be [q_pos, k_pos], got shape {pattern.shape}")
    if token_labels is not None and len(token_labels) != pattern.shape[0]:
        raise ValueError(f"token_labels has {len(token_labels)} entries for {pattern.shape[0]} positions")
    side = max(5.0, 0.32 * pattern.shape[0] + 2)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    image = ax.imshow(pattern, cmap="Blues", vmin=0.0, vmax=1.0)
    labels = None if token_labels is None else [f"{i}:{t}" for i, t in enumerate(token_labels)]
    _token_ticks(ax, labels, "x")
    _token_ticks(ax, labels, "y")
    ax.set_xlabel("key (attended-to) position: token")
    ax.set_ylabel("query position: token")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, shrink=0.8, label="attention weight")
    return _save(fig, path)


def plot_head_scores(scores, path, title="Head scores", label="score", diverging=False, fmt="{:.2f}",
                     vmin=None, vmax=None):
    """Heatmap of a [n_layers, n_heads] array with each value written in its cell.

    ``diverging=True`` centres a red-blue colour map on zero (for signed numbers such as loss
    changes or attributions); otherwise a sequential map over [vmin, vmax] (default: the data's
    range; pass 0 and 1 for scores that live there).
    """
    scores = as_numpy(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be [n_layers, n_heads], got shape {scores.shape}")
    n_layers, n_heads = scores.shape
    fig, ax = plt.subplots(figsize=(1.0 * n_heads + 2.5, 0.8 * n_layers + 1.6))
    if diverging:
        bound = float(np.abs(scores).max()) or 1.0
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
