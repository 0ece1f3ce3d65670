"""Every command's figures, drawn and read by a machine: what can be checked without eyes.

Each tour runs with ``save_figure`` wrapped, so every figure is laid out and audited before it is
written (the rules are docs/interpretability.md's "How the figures are drawn"):

- **text size**: every piece of text (ticks, labels, titles, numbers in cells) is at least 8 pt;
- **no overlap**: no text's box overlaps another's (two boxes may touch, within 1 px);
- **meaningful range**: an axis or colour bar whose label names a quantity spans at least that
  quantity's meaningful scale (``SCALES``: 1 nat for log-probabilities and losses, half of [0, 1]
  for accuracy and attention, ...), so that noise is never stretched to look like a signal.

The quick tours (basics, gpt2 on a tiny checkpoint and on a 12 x 12 one, a short induction run,
train-parity's figure) run by default; the interp tour (15 figures) and the full induction run
are under ``-m slow``.
"""

import argparse
import itertools
import os

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

import interp.plots  # noqa: E402
import training.plots  # noqa: E402

MIN_POINTS = 8
# words in an axis (or colour-bar) label -> the smallest span that axis may have, in its units
SCALES = [
    ("log p", 1.0),
    ("log-probability", 1.0),
    ("cross-entropy", 1.0),
    ("training loss", 1.0),
    ("loss change", 0.2),
    ("accuracy", 0.5),
    ("attention weight", 0.5),
    ("restored fraction", 1.0),
    ("logit", 1.0),
    ("score", 0.1),
]


def required_span(label):
    text = label.lower()
    return next((span for words, span in SCALES if words in text), None)


def audit(fig):
    """The problems of one figure (an empty list when it passes), after laying it out."""
    fig.draw_without_rendering()
    renderer = fig.canvas.get_renderer()
    problems = []
    texts = drawn_texts(fig)
    boxes = []
    for text in texts:
        if text.get_fontsize() < MIN_POINTS:
            problems.append(
                f"text {text.get_text()!r} is {text.get_fontsize():.1f} pt (< {MIN_POINTS})"
            )
        boxes.append(
            (text.get_text(), text.get_window_extent(renderer).expanded(1.0, 1.0).padded(-1.0))
        )
    for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2):
        if box_a.width > 0 and box_b.width > 0 and box_a.overlaps(box_b):
            problems.append(f"text {a!r} overlaps text {b!r}")
    for ax in fig.axes:
        if not ax.get_visible() or ax.get_yscale() != "linear":
            continue
        span = required_span(ax.get_ylabel())
        low, high = sorted(ax.get_ylim())
        if span is not None and high - low < span * 0.999:
            problems.append(
                f"axis {ax.get_ylabel()!r} spans {high - low:.3g}, less than its meaningful {span}"
            )
    return problems


def drawn_texts(fig):
    """Every text the figure draws: a tick label only where its tick is inside the view (matplotlib
    keeps labels for ticks outside the limits, and does not draw them)."""
    tick_labels, drawn = set(), []
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                tick_labels.update((id(tick.label1), id(tick.label2)))
            if ax.get_visible():
                drawn += [
                    label
                    for tick in axis._update_ticks()
                    for label in (tick.label1, tick.label2)
                    if tick.get_visible() and label.get_visible()
                ]
    others = [
        t
        for t in fig.findobj(matplotlib.text.Text)
        if id(t) not in tick_labels and t.get_visible() and (t.axes is None or t.axes.get_visible())
    ]
    return [t for t in others + drawn if t.get_text().strip()]


@pytest.fixture
def audited(monkeypatch):
    """{figure file name: its problems}, for every figure saved while the test runs."""
    found = {}
    original = interp.plots.save_figure

    def save_and_audit(fig, path):
        found[os.path.basename(os.fspath(path))] = audit(fig)
        return original(fig, path)

    monkeypatch.setattr(interp.plots, "_save", save_and_audit)
    monkeypatch.setattr(training.plots, "_save", save_and_audit)
    return found


def assert_clean(audited, expected):
    missing = sorted(set(expected) - set(audited))
    assert not missing, f"figures not drawn: {missing}"
    problems = {name: found for name, found in audited.items() if found}
    assert not problems, "\n".join(
        f"{name}: {p}" for name, found in problems.items() for p in found
    )


def tour(module_name, out, **options):
    import importlib

    module = importlib.import_module(module_name)
    module.run(argparse.Namespace(out=str(out), **options))


def test_basics_figure(audited, tmp_path):
    tour("tours.basics", tmp_path, seed=0)
    assert_clean(audited, ["attention_patterns.png"])


GPT2_FIGURES = [
    "gpt2_attention.png",
    "gpt2_previous_token_scores.png",
    "gpt2_attention_head.png",
    "gpt2_logit_lens.png",
]


def test_gpt2_figures_and_defaults_that_fit_a_short_context(audited, tmp_path, capsys):
    """n_ctx 16: the default prompt is cut and the default number of new tokens shrinks to fit."""
    from foundation.files.tiny import write_checkpoint

    folder = write_checkpoint(tmp_path / "checkpoint", n_ctx=16)
    tour("tours.gpt2", tmp_path / "out", model=folder, prompt=None, new_tokens=None)
    printed = capsys.readouterr().out
    assert "cut to its first 12 tokens to fit n_ctx 16" in printed
    assert "Greedy generation: 4 new tokens from each twin" in printed
    assert_clean(audited, GPT2_FIGURES)


@pytest.mark.slow
def test_gpt2_figures_of_a_12_by_12_model_show_a_subset(audited, tmp_path, capsys):
    from foundation.files.tiny import write_checkpoint

    folder = write_checkpoint(tmp_path / "checkpoint", layers=12, heads=12, d_model=48, n_ctx=32)
    tour("tours.gpt2", tmp_path / "out", model=folder, prompt=None, new_tokens=None)
    assert (
        "gpt2_attention.png shows the 8 with the highest previous-token score"
        in capsys.readouterr().out
    )
    assert_clean(audited, GPT2_FIGURES)


@pytest.mark.slow  # 13 s of CPU; by default the basics, GPT-2 and interp figures keep the rules
def test_induction_figures_short_run(audited, tmp_path):
    from training.induction import run_induction

    run_induction(seed=0, out_dir=str(tmp_path), steps=30)
    assert_clean(
        audited,
        [
            "induction_loss.png",
            "induction_prev_token_scores.png",
            "induction_induction_scores.png",
            "induction_patterns.png",
        ],
    )


def test_train_parity_figure(audited, tmp_path):
    rng = np.random.default_rng(0)
    loss = 5.4 - np.linspace(0, 1.1, 60) + 0.05 * rng.standard_normal(60)
    twin = loss * (1 + 1e-16 * rng.integers(-2, 3, 60))  # exact zeros among tiny gaps
    training.plots.plot_parity(tmp_path / "train_parity.png", loss, twin, "Training parity")
    assert_clean(audited, ["train_parity.png"])


INTERP_FIGURES = [
    "interp_attention_grid.png",
    "interp_attention_head.png",
    "interp_previous_token_scores.png",
    "interp_duplicate_token_scores.png",
    "interp_induction_scores.png",
    "interp_logit_lens.png",
    "interp_attribution.png",
    "interp_ablation_zero.png",
    "interp_ablation_mean.png",
    "interp_patching_positions.png",
    "interp_patching_heads.png",
    "interp_attribution_patching.png",
    "interp_attribution_patching_first_half.png",
    "interp_copying_scores.png",
    "interp_full_ov.png",
    "interp_positional_qk.png",
    "interp_composition.png",
]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["random", "handmade"])
def test_interp_figures(audited, tmp_path, model):
    tour("tours.interp", tmp_path, model=model, seed=0)
    assert_clean(audited, INTERP_FIGURES)


@pytest.mark.slow
def test_trained_figures(audited, tmp_path):
    from training.induction import run_induction

    run_induction(seed=0, out_dir=str(tmp_path))
    tour("tours.interp", tmp_path, model="auto", seed=0)
    assert_clean(audited, INTERP_FIGURES + ["induction_loss.png", "induction_patterns.png"])


def test_audit_catches_what_it_should(tmp_path):
    """The audit is not a check that cannot fail: small text, overlapping text and a squeezed
    log-probability axis are each reported."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [-10.808, -10.815])
    ax.set_ylabel("log p(next token)")
    ax.text(0.5, 0.5, "one", fontsize=7, transform=ax.transAxes)
    ax.text(0.5, 0.5, "two", fontsize=9, transform=ax.transAxes)
    problems = audit(fig)
    plt.close(fig)
    assert any("7.0 pt" in p for p in problems), problems
    assert any("'one' overlaps text 'two'" in p for p in problems), problems
    assert any("spans" in p and "meaningful 1.0" in p for p in problems), problems
