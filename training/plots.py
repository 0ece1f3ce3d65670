"""Figures for the training tours: loss curves, parity gaps, head scores, attention patterns.

Every function draws one figure, saves it as a PNG at ``path`` (Agg backend: no display
needed) and returns the path.
"""

from __future__ import annotations

import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_parity(path, numpy_loss, torch_loss, title):
    """Both loss curves on one axis, and the relative gap per step below (log scale)."""
    numpy_loss, torch_loss = np.asarray(numpy_loss), np.asarray(torch_loss)
    steps = np.arange(len(numpy_loss))
    gap = np.abs(numpy_loss - torch_loss) / np.abs(torch_loss)  # [steps]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True,
                                      gridspec_kw={"height_ratios": [2, 1]})
    top.plot(steps, numpy_loss, color="tab:blue", lw=2.5, label="NumPy (hand-written backward)")
    top.plot(steps, torch_loss, color="tab:orange", lw=1.0, ls="--", label="torch (autograd)")
    top.set_ylabel("training loss (nats, weighted)")
    top.set_title(title)
    top.legend()
    # An exact match has gap 0, which a log axis cannot show: draw it at the float64 floor.
    bottom.semilogy(steps, np.maximum(gap, 1e-17), color="tab:red", lw=1, label="gap (an exact 0 drawn at 1e-17)")
    bottom.axhline(1e-9, color="grey", ls=":", lw=1, label="tolerance 1e-9")
    bottom.set_ylabel("|numpy - torch| / |torch|")
    bottom.set_xlabel("training step")
    bottom.set_ylim(1e-17, 1e-6)
    bottom.legend(loc="upper left")
    return _save(fig, path)


def plot_induction_losses(path, history, d_vocab, title):
    """Training loss per step, and loss on repeated tokens and on first occurrences over training."""
    fig, ax = plt.subplots(figsize=(8, 4.8))
    steps = np.arange(len(history.loss))
    ax.plot(steps, history.loss, color="lightgrey", lw=0.8, label="training loss (weighted, per batch)")
    styles = {"train-like": ("-", 1.0), "held-out": ("--", 1.8)}
    colours = {"repeated": "tab:blue", "first": "tab:red"}
    labels = {"repeated": "repeated tokens", "first": "first occurrences"}
    for name, by_kind in history.evals.items():
        ls, lw = styles.get(name, ("-", 1.0))
        for kind, values in by_kind.items():
            ax.plot(history.eval_steps, values, color=colours[kind], ls=ls, lw=lw,
                    label=f"{labels[kind]} ({name} data)")
    ax.axhline(math.log(d_vocab), color="black", ls=":", lw=1, label=f"chance: ln {d_vocab} = {math.log(d_vocab):.2f}")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("cross-entropy (nats, log scale)")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower left")
    return _save(fig, path)


def plot_head_scores(path, prev_token, induction, title):
    """Previous-token and induction scores per [layer, head] as two annotated heatmaps."""
    fig, axes = plt.subplots(1, 2, figsize=(8.5, 3.2), constrained_layout=True)
    for ax, scores, name in zip(axes, (prev_token, induction), ("previous-token score", "induction score")):
        image = ax.imshow(scores, cmap="viridis", vmin=0, vmax=1)
        n_layers, n_heads = scores.shape
        for layer in range(n_layers):
            for head in range(n_heads):
                value = scores[layer, head]
                ax.text(head, layer, f"{value:.2f}", ha="center", va="center",
                        color="black" if value > 0.6 else "white")
        ax.set_xticks(range(n_heads))
        ax.set_yticks(range(n_layers))
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_title(name)
        fig.colorbar(image, ax=ax, label="mean attention")
    fig.suptitle(title)
    return _save(fig, path)


def plot_attention_patterns(path, patterns, title, boundaries=()):
    """Each head's pattern [layer][head] -> [q_pos, k_pos] in a grid; lines mark ``boundaries``."""
    n_layers, n_heads = len(patterns), len(patterns[0])
    fig, axes = plt.subplots(n_layers, n_heads, figsize=(3.6 * n_heads + 0.8, 3.4 * n_layers),
                             squeeze=False, constrained_layout=True)
    for layer in range(n_layers):
        for head in range(n_heads):
            ax = axes[layer, head]
            image = ax.imshow(patterns[layer][head], cmap="Blues", vmin=0, vmax=1)
            for b in boundaries:
                ax.axhline(b - 0.5, color="tab:red", lw=0.6)
                ax.axvline(b - 0.5, color="tab:red", lw=0.6)
            ax.set_title(f"layer {layer}, head {head}")
            ax.set_xlabel("key position")
            ax.set_ylabel("query position")
    fig.colorbar(image, ax=axes, label="attention weight", shrink=0.8)
    fig.suptitle(title)
    return _save(fig, path)
