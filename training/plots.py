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

# one way to write a figure, for every package
from interp.plots import save_figure as _save  # noqa: E402

FLOOR = 1e-18  # where an exact zero gap is drawn, on its own labelled tick under the data


def plot_parity(path, numpy_loss, torch_loss, title):
    """Both loss curves on one axis, and the relative gap per step below (log scale).

    An exact zero, which a log axis cannot show, is drawn on a floor tick labelled "0 (exact)".
    """
    numpy_loss, torch_loss = np.asarray(numpy_loss), np.asarray(torch_loss)
    steps = np.arange(len(numpy_loss))
    gap = np.abs(numpy_loss - torch_loss) / np.abs(torch_loss)  # [steps]
    fig, (top, bottom) = plt.subplots(
        2,
        1,
        figsize=(7.5, 6.4),
        sharex=True,
        layout="constrained",
        gridspec_kw={"height_ratios": [2, 1.2]},
    )
    top.plot(steps, numpy_loss, color="tab:blue", lw=2.5, label="NumPy (hand-written backward)")
    top.plot(steps, torch_loss, color="tab:orange", lw=1.0, ls="--", label="torch (autograd)")
    top.set_ylabel("training loss (nats)")
    top.set_title(
        title + "\nloss weighted per target: 1.0 on repeated tokens, 0.1 elsewhere", fontsize=11
    )
    top.legend()
    exact = gap == 0
    bottom.semilogy(steps, np.where(exact, FLOOR, gap), color="tab:red", lw=1, label="relative gap")
    bottom.plot(
        steps[exact],
        np.full(exact.sum(), FLOOR),
        "o",
        ms=2.5,
        color="tab:red",
        label=f"exactly 0 ({exact.sum()} of {len(steps)} steps)",
    )
    bottom.axhline(1e-9, color="grey", ls=":", lw=1, label="tolerance 1e-9")
    bottom.set_ylabel("|numpy - torch| / |torch|")
    bottom.set_xlabel("training step")
    bottom.set_ylim(FLOOR / 3, max(1e-6, 10 * gap.max()))
    ticks = [FLOOR] + [
        t for t in (1e-15, 1e-12, 1e-9, 1e-6, 1e-3) if t <= max(1e-6, 10 * gap.max())
    ]
    bottom.set_yticks(ticks, ["0 (exact)"] + [f"1e{int(np.log10(t))}" for t in ticks[1:]])
    bottom.yaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    fig.legend(
        *bottom.get_legend_handles_labels(), loc="outside lower center", ncol=3, frameon=False
    )
    return _save(fig, path)


def plot_induction_losses(path, history, d_vocab, title):
    """Above: the training loss per step (weighted). Below: loss on repeated tokens and on first
    occurrences over training, with chance. Two quantities, two axes."""
    fig, (top, ax) = plt.subplots(
        2,
        1,
        figsize=(9.5, 7.0),
        sharex=True,
        layout="constrained",
        gridspec_kw={"height_ratios": [1, 2]},
    )
    steps = np.arange(len(history.loss))
    top.plot(steps, history.loss, color="grey", lw=0.8)
    top.set_ylabel("training loss (nats)")
    top.set_ylim(0, max(history.loss) * 1.05)
    top.set_title(
        "training loss per batch, weighted per target: 1.0 on repeated tokens, 0.1 elsewhere",
        fontsize=10,
    )
    styles = {"train-like": ("-", 1.0), "held-out": ("--", 1.8)}
    colours = {"repeated": "tab:blue", "first": "tab:red"}
    labels = {"repeated": "repeated tokens", "first": "first occurrences"}
    for name, by_kind in history.evals.items():
        ls, lw = styles.get(name, ("-", 1.0))
        for kind, values in by_kind.items():
            ax.plot(
                history.eval_steps,
                values,
                color=colours[kind],
                ls=ls,
                lw=lw,
                label=f"{labels[kind]} ({name} data)",
            )
    ax.axhline(
        math.log(d_vocab),
        color="black",
        ls=":",
        lw=1,
        label=f"chance: ln {d_vocab} = {math.log(d_vocab):.2f}",
    )
    ax.set_yscale("log")
    # plain numbers on the log axis (0.1, 0.2, 0.5, 1, 2, 5), not 2x10^0
    ticks = [
        t
        for t in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10)
        if ax.get_ylim()[0] <= t <= ax.get_ylim()[1]
    ]
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
    ax.set_xlabel("training step")
    ax.set_ylabel("cross-entropy, unweighted (nats, log scale)")
    ax.set_title(
        "evaluation: first occurrences sit above chance (they are uniformly random, so any guess "
        "but "
        "the uniform one\ncosts more than ln d_vocab, and a model that expects repeats bets on "
        "tokens "
        "already seen)",
        fontsize=10,
    )
    ax.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.suptitle(title)
    return _save(fig, path)
