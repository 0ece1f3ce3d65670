"""Wrong work is never "done": each way a backward can be wrong while matching the gradients of
one plain run is planted in a solved copy, and the checker must say so.

Each plant is one change to a reference body, right in float64 with the checker's recording
hooks, and wrong in one of the runs the checker adds: float32 (a float64 gradient slips in),
no hooks (an array changed in place after use), a forward hook that edits the attention
pattern (the softmax's backward built on the hooked pattern), the caller's arrays compared
before and after, a second backward with the very same upstream array. The config's sizes all
differ, so a constant factor names the one size that explains it.
"""

import pytest

from exercises.check import check
from parity_tests.copies import planted_copy

SAMPLE = 1
LOSS_ONE_HOT = (
    "dlog_probs = np.zeros_like(log_probs)  # [batch, pos, d_vocab]\n"
    "        np.put_along_axis(dlog_probs, targets[..., None], -dnll[..., None], axis=-1)",
    "dlog_probs = -np.eye(log_probs.shape[-1])[targets] * dnll[..., None]  # [batch, pos, d_vocab]",
)

# (label, exercise, file, reference text, planted text, the run that shows it: words its message
# holds)
PLANTED = [
    (
        "float64 from np.eye in a float32 loss",
        "loss",
        "loss.py",
        *LOSS_ONE_HOT,
        ["float32", "logits is float64"],
    ),
    (
        "a float64 .grad in a float32 model",
        "unembed",
        "unembed.py",
        "self.b_U.grad += dlogits.sum(axis=(0, 1))  # [d_vocab]",
        "self.b_U.grad = self.b_U.grad + dlogits.sum(axis=(0, 1)).astype(np.float64)  # [d_vocab]",
        ["float32", "b_U is float64"],
    ),
    (
        "the model's backward in float64",
        "model",
        "model.py",
        "dresid = self.unembed.backward(dout) if self.cfg.unembed else dout  # [batch, pos, "
        "d_model]",
        "dout = dout.astype(np.float64)\n"
        "        dresid = self.unembed.backward(dout) if self.cfg.unembed else dout  # [batch, "
        "pos, d_model]",
        ["float32"],
    ),
    (
        "softmax's backward built on pattern",
        "attention",
        "attention.py",
        "dprobs_mean = (dprobs * probs).sum(axis=-1, keepdims=True)  # [batch, head, q_pos, 1]\n"
        "        dscores = probs * (dprobs - dprobs_mean)",
        "dprobs_mean = (dprobs * pattern).sum(axis=-1, keepdims=True)  # [batch, head, q_pos, 1]\n"
        "        dscores = pattern * (dprobs - dprobs_mean)",
        ["edits the attention pattern", "softmax's backward takes probs"],
    ),
    (
        "the values' gradient built on probs",
        "attention",
        "attention.py",
        "dv_h = pattern.swapaxes(-1, -2) @ dz_h",
        "dv_h = probs.swapaxes(-1, -2) @ dz_h",
        ["edits the attention pattern"],
    ),
    (
        "a block that adds into its incoming gradient",
        "block",
        "block.py",
        "dresid_mid = dresid_post + dmlp_in",
        "dresid_post += dmlp_in\n            dresid_mid = dresid_post",
        ["changed its incoming gradient in place without hooks"],
    ),
    (
        "a feed-forward that scales its dout after use",
        "feedforward",
        "feedforward.py",
        'dx = np.einsum("mf,bpf->bpm", W_in, dpre, optimize=True)  # [batch, pos, d_model]',
        'dx = np.einsum("mf,bpf->bpm", W_in, dpre, optimize=True)  # [batch, pos, '
        "d_model]\n"
        "        dout *= 2.9",
        ["changed its incoming gradient in place"],
    ),
    (
        "a LayerNorm that edits its cache after use",
        "layernorm",
        "layernorm.py",
        "dx = dcentered + dmean / d_model  # [batch, pos, d_model]",
        "dx = dcentered + dmean / d_model  # [batch, pos, d_model]\n        centered *= 2",
        ["a second backward", "in place"],
    ),
]


SLOW = (
    "the values' gradient built on probs",
    "the model's backward in float64",
    "a float64 .grad in a float32 model",
)


@pytest.mark.parametrize(
    "label, key, file, old, new, words",
    [p if p[0] not in SLOW else pytest.param(*p, marks=pytest.mark.slow) for p in PLANTED],
    ids=[p[0] for p in PLANTED],
)
def test_a_planted_false_pass_is_not_done(solved, tmp_path, label, key, file, old, new, words):
    results = check(
        planted_copy(solved, tmp_path, file, old, new),
        keys=[key],
        sample=SAMPLE,
        together=False,
        steps=False,  # the exercise's row alone: its steps' rows are not read
    )
    result = results[-1]
    assert result.key == key and result.status == "wrong", (
        f"{label}: {result.status} {result.message}"
    )
    for word in words:
        assert word in result.message, f"{label}: {word!r} not in {result.message!r}"


@pytest.mark.slow
def test_a_feedforward_scaling_its_dout_breaks_the_whole_model_without_hooks(solved, tmp_path):
    """The recording hooks copy each gradient they see, which hides the scaling inside a block; run
    without them, the block's residual path hands the feed-forward the very array it adds to the
    skip path."""
    directory = planted_copy(solved, tmp_path, "feedforward.py", *PLANTED[6][3:5])
    results = {r.key: r for r in check(directory, keys=["block", "model"], sample=SAMPLE)}
    assert results["block"].status == "done" and results["model"].status == "done", (
        "both run the reference's MLP"
    )
    together = results["all together"]
    assert together.status == "wrong", together.message
    assert (
        "changed its incoming gradient in place" in together.message
        or "without hooks" in together.message
    )


def test_the_softmax_step_built_on_pattern_gets_its_hint(solved, tmp_path):
    directory = planted_copy(solved, tmp_path, "attention.py", *PLANTED[3][3:5])
    (step,) = check(directory, keys=["attention.softmax"], sample=SAMPLE)
    assert step.status == "wrong" and "pattern edited" in step.variant
    assert "built on pattern" in step.hint and "probs" in step.hint


def test_a_missing_scale_names_d_head_not_another_size(solved, tmp_path):
    """Every size of the checked config differs: sqrt(d_head) is no other size's square root."""
    directory = planted_copy(
        solved,
        tmp_path,
        "attention.py",
        "dq_h = dscores @ k_h / math.sqrt(d_head)",
        "dq_h = dscores @ k_h",
    )
    results = {r.key: r for r in check(directory, keys=["attention"], sample=SAMPLE)}
    for key in ("attention.scores", "attention"):
        assert results[key].status == "wrong"
        assert "sqrt(d_head)" in results[key].hint and "batch" not in results[key].hint, results[
            key
        ].hint
    assert "first wrong at q.hook_out" in results["attention"].parting, results["attention"].parting
