"""Exercises in the Llama family's settings: the rotation undone, the grouped heads' sum.

The attention's backward holds two steps that run only in Llama-shaped models: ``groups`` (each
shared key/value head's gradient is the sum over its group of query heads) and ``rotary`` (q's
and k's gradients turned back by the opposite angles). The catalog checks the attention under
Llama's settings (rotary halves, 9 query heads sharing 3, then 10 sharing 5) and GPT-J's (adjacent
pairs, partial rotary); the block and the model under Llama's and GPT-NeoX's (parallel, partial
rotary). Each case below plants one classic slip in a solved copy: the status must be "wrong",
at the step and for the whole attention, and the hint must name the slip and its fix.
"""

import pytest

from exercises.catalog import BY_KEY, SIZE_SETS, resized
from exercises.check import check
from parity_tests.copies import planted_copy

SAMPLE = 1
ROT_Q = "dq = rotate(dq, cos, -sin, adjacent)"
ROT_K = "dk = rotate(dk, cos, -sin, adjacent)"
GROUP_K = "dk = dk.reshape(*dk.shape[:2], *grouped).sum(axis=3)"
GROUP_V = "dv = dv.reshape(*dv.shape[:2], *grouped).sum(axis=3)"
# the parallel block's line (the sequential block's goes on: "; now at resid_pre")
PARALLEL = "dattn_in = self.ln1.backward(dattn_in)  # [batch, pos, d_model]\n"

# (label, file, line, planted, the keys checked, words the message or hint must hold)
CASES = [
    (
        "rotation sign",
        "attention.py",
        ROT_Q,
        "dq = rotate(dq, cos, sin, adjacent)",
        ["attention.rotary", "attention"],
        ["turned forward again, by +angle", "rotate(d, cos, -sin, adjacent_pairs)"],
    ),
    (
        "pairing",
        "attention.py",
        ROT_K,
        "dk = rotate(dk, cos, -sin, not adjacent)",
        ["attention.rotary"],
        ["the other pairing", "the two halves"],
    ),
    (
        "cos and sin swapped",
        "attention.py",
        ROT_Q,
        "dq = rotate(dq, sin, -cos, adjacent)",
        ["attention.rotary"],
        ["cos and sin swapped"],
    ),
    (
        "partial rotary's tail forgotten",
        "attention.py",
        ROT_Q,
        ROT_Q + "\n            dq[..., 2 * cos.shape[-1] :] = 0.0",
        ["attention.rotary", "attention"],
        ["[rotary adjacent pairs, partial (GPT-J)]", "rest pass unchanged"],
    ),
    (
        "one head of the group",
        "attention.py",
        GROUP_K,
        "dk = dk.reshape(*dk.shape[:2], *grouped)[:, :, :, 0]",
        ["attention.groups", "attention"],
        ["one head of each group", "the group's sum is missing", ".sum(axis=3)"],
    ),
    (
        "strided group (tile for repeat)",
        "attention.py",
        GROUP_V,
        "dv = dv.reshape(*dv.shape[:2], grouped[1], grouped[0], grouped[2]).sum(axis=2)",
        ["attention.groups", "attention"],
        ["strided heads", "np.tile's order", "contiguous group"],
    ),
    (
        "group sum left out",
        "attention.py",
        GROUP_K,
        "dk = dk",
        ["attention.groups"],
        ["has shape (5, 6, 9, 8)", "each of the 9 query heads", "group's sum"],
    ),
    (
        "parallel block's ln1 left out",
        "block.py",
        PARALLEL,
        "dattn_in = dattn_in\n",
        ["block"],
        ["[parallel, partial rotary (GPT-NeoX)]", "off by"],
    ),
]
QUICK = {"rotation sign", "one head of the group"}


@pytest.mark.parametrize(
    "case",
    [c if c[0] in QUICK else pytest.param(c, marks=pytest.mark.slow) for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_a_planted_llama_slip_is_wrong_with_its_hint(solved, tmp_path, case):
    label, file, old, new, keys, words = case
    results = check(
        planted_copy(solved, tmp_path, file, old, new), keys=keys, sample=SAMPLE, together=False
    )
    by_key = {result.key: result for result in results}
    for key in keys:
        result = by_key[key]
        assert result.status == "wrong", f"{label} at {key}: {result.status}: {result.message}"
        said = f"[{result.variant}] {result.message} {result.hint}"
        for word in words:
            assert word in said, f"{label} at {key}: {word!r} not in {said!r}"
    # the slip sits in one step: the attention's other steps stay done
    for key, result in by_key.items():
        if key.startswith("attention.") and key not in keys:
            assert result.status == "done", f"{label}: {key} {result.status}: {result.message}"


def test_grouped_variants_have_real_groups_in_both_size_sets():
    """1 < n_key_value_heads < n_heads, so np.repeat's heads differ from np.tile's."""
    for key in ("attention", "block", "model"):
        grouped = [v for v in BY_KEY[key].variants if "n_key_value_heads" in v.overrides]
        assert grouped, f"{key} has no grouped-query variant"
        for variant in grouped:
            for sizes in SIZE_SETS:
                cfg = resized(variant, sizes).config()
                assert 1 < cfg.n_key_value_heads < cfg.n_heads, (key, sizes.label)
                assert cfg.n_heads % cfg.n_key_value_heads == 0


def test_llama_settings_are_checked_where_the_learner_writes_them():
    """Rotary (both pairings, partial), grouped heads, RMSNorm, SwiGLU, the parallel block."""

    def configs(key):
        return [resized(v, s).config() for v in BY_KEY[key].variants for s in SIZE_SETS]

    attention = configs("attention")
    assert any(c.positional == "rotary" and not c.rotary_adjacent_pairs for c in attention)
    assert any(c.rotary_adjacent_pairs and c.rotary_dim < c.d_head for c in attention)
    for key in ("block", "model"):
        llama = [c for c in configs(key) if c.n_key_value_heads is not None]
        assert llama and all(
            c.normalization_type == "RMS" and c.gated_mlp and c.positional == "rotary"
            for c in llama
        ), key
    assert any(c.parallel_attn_mlp and c.rotary_dim < c.d_head for c in configs("block"))


@pytest.mark.slow
def test_a_shape_hint_names_the_shared_heads_kv_head(solved, tmp_path):
    """The group's sum left out: the whole attention runs on to W_K's gradient, where the shapes
    clash, and the hint names each axis by this run's sizes (9 query heads sharing 3)."""
    planted = planted_copy(solved, tmp_path, "attention.py", GROUP_K, "dk = dk")
    results = {r.key: r for r in check(planted, keys=["attention"], sample=SAMPLE)}
    hint = results["attention"].hint
    assert results["attention"].status == "wrong"
    assert "(3,10,8) is [kv_head, d_model, d_head]" in hint, hint
    assert "(9,10,8) is [head, d_model, d_head]" in hint, hint


@pytest.mark.slow
def test_a_slip_in_the_shared_heads_shows_at_attention_not_in_the_block(solved, tmp_path):
    """Inside the block, GroupedQueryAttention runs the reference's backward (found through its
    base class, MultiHeadAttention), so the mistake is reported once, where it is."""
    planted = planted_copy(
        solved,
        tmp_path,
        "attention.py",
        GROUP_K,
        "dk = dk.reshape(*dk.shape[:2], *grouped)[:, :, :, 0]",
    )
    results = {r.key: r for r in check(planted, keys=["block"], sample=SAMPLE, together=False)}
    assert results["block"].status == "done", results["block"].message
