"""Where two models part: the first-divergence walk names the hook point where a planted mistake
shows.

A mistake is planted in one component of a learner's copy (the other bodies are the
reference's), the copy's whole Transformer runs its own backward everywhere, and the walk
against the torch twin must stop at the hook point right below the mistake, with every hook
point above it right. A forward planted wrong is found by the forward walk. Correct twins agree.
"""

import pytest
import torch

import numpy_impl as npi
import torch_impl as pti
from exercises.divergence import first_divergence, walk_backward, walk_forward
from exercises.learner import load_package, unload_package
from gradcheck.factory import Variant, build, make_inputs
from parity_tests.copies import planted_copy

PRE = Variant("pre", {"normalization": "pre"})  # ln_final, learned positions, logits, gelu_new

# (component, file, reference line, planted line, the first hook point (or parameter) that must be
# wrong)
PLANTED = [
    (
        "unembed",
        "unembed.py",
        'dx = np.einsum("mv,bpv->bpm", W_U, dlogits, optimize=True)',
        'dx = 1.5 * np.einsum("mv,bpv->bpm", W_U, dlogits, optimize=True)',
        "unembed.hook_in",
    ),
    (
        "layernorm",
        "layernorm.py",
        "dx = dcentered + dmean / d_model",
        "dx = dcentered",
        "ln_final.hook_in",
    ),
    (
        "feedforward",
        "feedforward.py",
        'dpost = np.einsum("fm,bpm->bpf", W_out, dout, optimize=True)',
        'dpost = 2 * np.einsum("fm,bpm->bpf", W_out, dout, optimize=True)',
        "blocks.1.mlp.out.hook_in",
    ),  # hook_post's own name
    (
        "attention",
        "attention.py",
        "dscores = probs * (dprobs - dprobs_mean)",
        "dscores = probs * dprobs",
        "blocks.1.attn.hook_attn_scores",
    ),
    (
        "block",
        "block.py",
        "dresid_mid = dresid_post + dmlp_in",
        "dresid_mid = dmlp_in",
        "blocks.1.hook_resid_mid",
    ),
    (
        "model",
        "model.py",
        "dresid = self.ln_final.backward(dresid)  # [batch, pos, d_model]",
        "pass",
        "ln_final.hook_out",
    ),  # never reached: ln_final.backward is not called
    (
        "embedding",
        "embedding.py",
        "np.add.at(self.W_E.grad, tokens, dembed)",
        "self.W_E.grad[tokens] += dembed",
        "parameter embed.W_E",
    ),
    (
        "positional",
        "positional.py",
        "np.add.at(self.W_pos.grad, positions[0], dpos_embed.sum(axis=0))",
        "np.add.at(self.W_pos.grad, positions[0], dpos_embed[0])",
        "parameter pos_embed.W_pos",
    ),
]


def copy_and_twin(package, variant=PRE, seed=0):
    """The copy's Transformer with random weights, the torch twin with the same, and tokens."""
    cfg = variant.config(package)
    model = build(package, "Transformer", cfg, seed)
    twin = pti.Transformer(variant.config())
    twin.load_state_dict({name: torch.from_numpy(v) for name, v in model.state_dict().items()})
    (tokens,) = make_inputs("Transformer", cfg, seed + 1)
    return model, twin, tokens


def planted_package(solved, tmp_path, file, old, new):
    return load_package(planted_copy(solved, tmp_path, file, old, new))


@pytest.mark.parametrize(
    "component, file, old, new, expected", PLANTED, ids=[p[0] for p in PLANTED]
)
def test_a_planted_mistake_is_found_at_its_hook(
    solved, tmp_path, component, file, old, new, expected
):
    package = planted_package(solved, tmp_path, file, old, new)
    try:
        model, twin, tokens = copy_and_twin(package)
        parting = first_divergence(model, twin, tokens, seed=3)
    finally:
        unload_package(package)
    assert parting.direction == "backward", (
        "the forward is the reference's: only the backward differs"
    )
    if expected.startswith("parameter "):
        assert parting.first is None, f"{component}: a hook point is wrong: {parting.line()}"
        assert parting.first_parameter.name == expected.split()[1]
        assert "every hook point's gradient is right" in parting.line()
        return
    first = parting.first
    assert first is not None and first.name == expected, f"{component}: {parting.line()}"
    if first.error is None:
        assert "it got no gradient" in parting.line()
        return
    assert first.error > 1e-3, "a real mistake is off by much more than rounding"
    above = parting.gaps[: parting.gaps.index(first)]
    assert all(gap.error <= parting.tolerance for gap in above), (
        "everything above the first wrong one is right"
    )
    module, _, hook = expected.rpartition(".")
    assert f"first wrong at {module} ({hook}), relative error" in parting.line()


def test_a_planted_forward_difference_is_found_by_the_forward_walk(solved, tmp_path):
    package = planted_package(
        solved,
        tmp_path,
        "attention.py",
        "scores = q_h @ k_h.swapaxes(-1, -2) / math.sqrt(d_head)",
        "scores = q_h @ k_h.swapaxes(-1, -2) / math.sqrt(self.cfg.d_model)",
    )
    try:
        model, twin, tokens = copy_and_twin(package)
        parting = first_divergence(model, twin, tokens)
    finally:
        unload_package(package)
    assert parting.direction == "forward"
    assert parting.first.name == "blocks.0.attn.hook_attn_scores", parting.line()
    assert "first different at blocks.0.attn (hook_attn_scores)" in parting.line()


@pytest.mark.parametrize(
    "overrides",
    [
        {"normalization": "pre"},
        {"normalization": "post", "positional": "sinusoidal", "unembed": False},
        {"normalization": None, "attn_only": True, "dtype": "float32"},
    ],
)
def test_correct_models_agree_in_both_directions_and_either_order(overrides):
    cfg = Variant("test", overrides).config()
    model = build(npi, "Transformer", cfg, 0)
    twin = pti.Transformer(cfg)
    twin.load_state_dict({name: torch.from_numpy(v) for name, v in model.state_dict().items()})
    (tokens,) = make_inputs("Transformer", cfg, 1)
    for a, b in ((model, twin), (twin, model)):
        assert walk_forward(a, b, tokens).agree
        backward = walk_backward(a, b, tokens, seed=2)
        assert backward.agree, backward.line()
        points = {point.name for point in model.hook_dict.values()}  # an alias's point once
        assert len(backward.gaps) == len(points) - 2, (
            "every hook point is compared, but the token and position ids"
        )
        assert "they agree" in backward.line()


def test_two_numpy_models_with_different_weights_part_where_the_weight_is_used():
    cfg = PRE.config()
    a, b = build(npi, "Transformer", cfg, 0), build(npi, "Transformer", cfg, 0)
    b.blocks[1].mlp.W_in.data[0, 0] += 0.5
    (tokens,) = make_inputs("Transformer", cfg, 1)
    parting = first_divergence(a, b, tokens)
    # hook_pre's own name: mlp.in.hook_out
    assert parting.direction == "forward" and parting.first.name == "blocks.1.mlp.in.hook_out", (
        parting.line()
    )


def test_a_backward_that_raises_is_reported_with_what_it_reached(solved, tmp_path):
    package = planted_package(
        solved,
        tmp_path,
        "layernorm.py",
        "dx = dcentered + dmean / d_model",
        "raise RuntimeError('not yet')",
    )
    try:
        model, twin, tokens = copy_and_twin(package)
        parting = walk_backward(model, twin, tokens)
    finally:
        unload_package(package)
    assert parting.stopped.startswith("RuntimeError: not yet")
    reached = [
        "unembed.hook_out",
        "unembed.hook_in",
        "ln_final.hook_out",
        "ln_final.hook_normalized",
        "ln_final.hook_scale",
    ]
    assert [gap.name for gap in parting.gaps] == reached
    assert (
        "the backward stopped" in parting.line()
        and "5 hook points it reached are right" in parting.line()
    )


def test_the_checker_prints_where_a_wrong_model_parts(solved, tmp_path, capsys):
    from tours.exercises import run as run_exercises

    planted_copy(
        solved, tmp_path, "layernorm.py", "dx = dcentered + dmean / d_model", "dx = dcentered"
    )

    class Args:
        action, dir, component, sample, seed, time_limit = (
            "check",
            str(tmp_path),
            "model",
            1,  # finite differences: one direction per tensor (the rows read here need no more)
            0,
            None,
        )

    with pytest.raises(SystemExit) as exit_info:  # a wrong exercise: status 1, as a failed test
        run_exercises(Args)
    assert exit_info.value.code == 1
    out = capsys.readouterr().out
    assert "all together  wrong" in out
    assert (
        "inside: right at the first 6 hook points the gradient reaches, down to "
        "ln_final.hook_scale; "
        "first wrong at ln_final.hook_in (relative error"
    ) in out
    assert "hint: ln_final.hook_in is off by the same amount across each row" in out
