"""Figures for the training tours: loss curves and parity gaps.

Head scores and attention patterns are drawn by ``interp.plots``, written once there.

Every function draws one figure, saves it as a PNG at ``path`` (Agg backend: no display
needed) and returns the path.
"""

from __future__ import annotations

import math

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from interp.plots import save_figure as _save  # noqa: E402  (one way to write a figure, for every package)


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
    bottom.set_ylim(1e-17, max(1e-6, 10 * gap.max()))
    # the legend goes under the axis, where it covers neither the gaps nor the tolerance line
    bottom.legend(loc="upper center", bbox_to_anchor=(0.5, -0.32), ncol=2, frameon=False)
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
    # plain numbers on the log axis (0.1, 0.2, 0.5, 1, 2, 5), not 2x10^0
    ticks = [t for t in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10) if ax.get_ylim()[0] <= t <= ax.get_ylim()[1]]
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
    ax.set_xlabel("training step")
    ax.set_ylabel("cross-entropy (nats, log scale)")
    ax.set_title(title)
    # the legend sits beside the axes, so it covers no curve (the phase change is at the lower left)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    return _save(fig, path)
