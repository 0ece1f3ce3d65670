"""The figures are written as readable PNGs, bad shapes are refused, and the walk-through runs."""

import argparse
import os

import matplotlib.image
import numpy as np
import pytest

from interp import (
    direct_logit_attribution,
    logit_lens,
    plot_attention_grid,
    plot_attention_head,
    plot_attribution,
    plot_attribution_patching,
    plot_composition,
    plot_head_scores,
    plot_logit_lens,
    plot_matrix,
    plot_patching,
)
from interp.common import run_cache
from interp.handmade import bos_repeated_tokens
from parity_tests.helpers import (
    INTERP,
    handmade_pair,
    make_cfg,
    parametrize_pairwise,
    twins,
)


def assert_png(path, min_side=200):
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and min(image.shape[:2]) >= min_side, image.shape
    assert image[..., :3].std() > 0.05  # not a blank canvas


@pytest.mark.slow  # ten figures; the walk-through below draws every kind of figure by default
def test_every_plot_writes_a_png(tmp_path):
    model, twin = twins(make_cfg(INTERP), seed=1)
    tokens = np.random.default_rng(0).integers(0, 13, (2, 8))
    _, cache = twin.run_with_cache(tokens)  # a torch cache: converted at the boundary
    labels = [str(t) for t in tokens[0]]
    assert_png(plot_attention_grid(cache, tmp_path / "grid.png", token_labels=labels))
    assert_png(
        plot_attention_head(cache["pattern", 1][0, 2], tmp_path / "head.png", token_labels=labels)
    )
    assert_png(plot_head_scores(np.random.default_rng(1).random((2, 3)), tmp_path / "scores.png"))
    assert_png(
        plot_head_scores(
            np.random.default_rng(1).standard_normal((2, 3)),
            tmp_path / "signed.png",
            diverging=True,
        )
    )
    assert_png(plot_logit_lens(logit_lens(model, tokens), tmp_path / "lens.png"))
    assert_png(plot_attribution(direct_logit_attribution(model, tokens), tmp_path / "dla.png"))
    assert_png(
        plot_patching(
            np.random.default_rng(2).random((2, 8)), tmp_path / "patch.png", token_labels=labels
        )
    )
    grids = {k: np.random.default_rng(3).random((3, 3)) for k in "qkv"}
    assert_png(plot_composition(grids, tmp_path / "comp.png", baseline=0.2))
    assert_png(plot_matrix(np.eye(5), tmp_path / "matrix.png", "identity", "x", "y"))
    rng = np.random.default_rng(3)
    row = {
        "name": "one head's z, all positions",
        "patched": rng.random(6),
        "estimates": {"attribution": rng.random(6), "integrated gradients": rng.random(6)},
        "groups": np.arange(6),
        "group_names": [f"head {h}" for h in range(6)],
    }
    assert_png(plot_attribution_patching([row, row], tmp_path / "attribution_patching.png"))


def test_plots_refuse_bad_shapes(tmp_path):
    with pytest.raises(ValueError, match="n_layers, n_heads"):
        plot_head_scores(np.zeros(3), tmp_path / "x.png")
    with pytest.raises(ValueError, match="q_pos, k_pos"):
        plot_attention_head(np.zeros((2, 3, 3)), tmp_path / "x.png")
    with pytest.raises(ValueError, match="token_labels"):
        plot_attention_head(np.zeros((3, 3)), tmp_path / "x.png", token_labels=["a"])
    with pytest.raises(ValueError, match="n_layers, n_heads, q_pos, k_pos"):
        plot_attention_grid(np.zeros((3, 3)), tmp_path / "x.png")
    model, _ = handmade_pair()
    _, cache = run_cache(model, bos_repeated_tokens(batch=1))
    with pytest.raises(ValueError, match="batch_index"):
        plot_attention_grid(cache, tmp_path / "x.png", batch_index=3)


def walk_through(model, out, capsys):
    """What ``python demo.py interp --model MODEL --out OUT`` prints."""
    from tours import interp as tour

    parser = argparse.ArgumentParser()
    parser.add_argument("--out")
    tour.add_arguments(parser)
    tour.run(parser.parse_args(["--out", str(out), "--model", model]))
    return capsys.readouterr().out


def test_the_walk_through_on_the_handmade_model(tmp_path, capsys):
    text = walk_through("handmade", tmp_path, capsys)
    assert "layer 1, head 0 is a clear induction head (score 1.00; 1 = always)" in text
    assert "per head: layer 1, head 0 restores the most (1.00)" in text
    assert "noise, not structure" not in text  # a clear circuit: a gap worth dividing by
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert len(pngs) == 17, pngs
    for name in pngs:
        assert_png(tmp_path / name, min_side=150)


@pytest.mark.slow
def test_the_walk_through_on_a_random_model_says_its_patching_numbers_are_noise(tmp_path, capsys):
    text = walk_through("random", tmp_path, capsys)
    patching = text[text.index("7. Activation patching") : text.index("7b. Attribution")]
    attribution = text[text.index("7b. Attribution") : text.index("8. Circuits")]
    assert "noise, not structure" in patching and "noise, not structure" in attribution


def _plot_head(path):
    from interp.plots import plot_attention_head

    return plot_attention_head(np.tril(np.full((3, 3), 1 / 3)), path)


def _plot_scores(path):
    from interp.plots import plot_head_scores

    return plot_head_scores(np.random.default_rng(0).uniform(size=(2, 3)), path)


@parametrize_pairwise(
    plot=["attention head", "head scores"],
    name=["figure", "figure.png", "run.v2/figure", "figure.svg"],
    as_path=[False, True],
)
def test_a_plot_returns_the_path_it_wrote(tmp_path, plot, name, as_path):
    plot = {"attention head": _plot_head, "head scores": _plot_scores}[plot]
    given = tmp_path / name if as_path else str(tmp_path / name)
    written = plot(given)
    assert os.path.isfile(written), f"returned {written!r}, which is not a file"
    assert isinstance(written, type(given))
    assert os.path.splitext(os.fspath(written))[1] in (".png", ".svg")
    files = [os.path.join(folder, f) for folder, _, names in os.walk(tmp_path) for f in names]
    assert files == [os.fspath(written)]
