"""Exercises that can't be fooled, second round: every false pass and every stuck case of issue 27.

Each case is one change planted in a solved copy (the reference's bodies put back), checked as a
learner's copy is: the status must be what the case says, never "done", and the message or hint
must hold the words that name the mistake and its fix. ``TABLE`` lists them all (mistake planted,
status, hint); ``python -m parity_tests.test_exercise_round_two`` prints it from a real run.
Borrowing (the learner's process reading outputs/ or the project's files) is tested with the
sandbox, in test_exercise_borrowing.py.
"""

import pytest

from exercises.catalog import EXERCISES, SIZE_SETS
from exercises.check import check
from parity_tests.copies import planted_copy

SAMPLE = 1
UNEMBED_DX = 'dx = np.einsum("mv,bpv->bpm", W_U, dlogits, optimize=True)  # [batch, pos, d_model]'
UNEMBED_W = (
    'self.W_U.grad += np.einsum("bpv,bpm->mv", dlogits, x, optimize=True)  # [d_model, d_vocab]'
)
LOSS_DNLL = "dnll = dloss * weights / weights.sum()  # [batch, pos]"
DQ = "dq_h = dscores @ k_h / math.sqrt(d_head)  # [batch, head, q_pos, d_head]"
DK = "dk_h = dscores.swapaxes(-1, -2) @ q_h / math.sqrt(d_head)  # [batch, head, k_pos, d_head]"
MASK = "dscores = np.where(self.mask[:pos, :pos], dscores, 0.0)  # [batch, head, q_pos, k_pos]"
COMPLEX_STEP = (
    "for index in np.ndindex(self.W_U.data.shape):\n"
    "            W = self.W_U.data.astype(complex)\n"
    "            W[index] += 1e-20j\n"
    '            logits = np.einsum("mv,bpm->bpv", W, x) + self.b_U.data\n'
    "            self.W_U.grad[index] += (logits.imag / 1e-20 * dlogits).sum()"
)
FINITE_DIFFERENCES = (
    "dx = np.zeros_like(x)\n"
    "        for index in np.ndindex(x.shape):\n"
    "            step = np.zeros_like(x)\n"
    "            step[index] = 1e-6\n"
    "            dx[index] = ((self.forward(x + step) - self.forward(x - step)) * dlogits).sum() / "
    "2e-6"
)
LN_STEPS = (
    "        dcentered = dnormalized / scale  # [batch, pos, d_model]\n"
    "        dscale = -(dnormalized * centered).sum(axis=-1, keepdims=True) / scale**2  # [batch, "
    "pos, 1]\n"
    "        dscale = self.hook_scale.backward(dscale)\n"
    "        # forward: scale = sqrt(var + EPS)\n"
    "        dvar = dscale / (2 * scale)  # [batch, pos, 1]\n"
    "        # forward: var = mean(centered**2)\n"
    "        dcentered += 2 / d_model * dvar * centered  # [batch, pos, d_model]\n"
    "        # forward: centered = x - mean   (x reaches centered directly, and through mean)\n"
    "        dmean = -dcentered.sum(axis=-1, keepdims=True)  # [batch, pos, 1]\n"
    "        # forward: mean = x.mean(-1)\n"
    "        dx = dcentered + dmean / d_model  # [batch, pos, d_model]\n"
)
LN_COMPACT = (
    "        dx = (dnormalized - dnormalized.mean(-1, keepdims=True)\n"
    "              - normalized * (dnormalized * normalized).mean(-1, keepdims=True)) / scale\n"
)
BLOCK_LN1 = (
    'if norm == "pre":\n'
    "            dattn_in = self.ln1.backward(dattn_in)  # [batch, pos, d_model]; "
    "now at resid_pre\n"
    "        dresid_pre = dresid_mid + dattn_in"
)
V_PATH = "\n            + self.v.hook_in.backward(dx_v)"

# (id, mistake, exercise key the row is read from, file, reference text, planted text, status,
# words) words: each must appear in the row's message or hint
FALSE_PASSES = [
    (
        "1 W_pos[:6]",
        "hard-coded pos: np.add.at(self.W_pos.grad, np.arange(6), ...)",
        "positional",
        "positional.py",
        "positions[0]",
        "np.arange(6)",
        "wrong",
        ["wrong with batch 1", "6 is pos", "never write it as a number"],
    ),
    (
        "1 reshape(30, 10)",
        "hard-coded sizes: x.reshape(30, 10)",
        "unembed",
        "unembed.py",
        UNEMBED_W,
        "self.W_U.grad += x.reshape(30, 10).T @ dlogits.reshape(30, 13)",
        "wrong",
        ["wrong with batch 1", "30 is batch * pos", "10 is d_model"],
    ),
    (
        "1 D = 10",
        "hard-coded d_model: d_model = 10",
        "layernorm",
        "layernorm.py",
        "d_model = centered.shape[-1]",
        "d_model = 10",
        "wrong",
        ["10 is d_model"],
    ),
    (
        "1 sqrt(8)",
        "hard-coded d_head: math.sqrt(8)",
        "attention",
        "attention.py",
        DQ,
        DQ.replace("math.sqrt(d_head)", "math.sqrt(8)"),
        "wrong",
        ["8 is d_head"],
    ),
    (
        "1 mask[:6, :6]",
        "hard-coded pos: self.mask[:6, :6]",
        "attention",
        "attention.py",
        MASK,
        MASK.replace("[:pos, :pos]", "[:6, :6]"),
        "wrong",
        ["6 is pos"],
    ),
    (
        "2 float32 in float64",
        "dx = (...).astype(np.float32) in a float64 model",
        "unembed",
        "unembed.py",
        UNEMBED_DX,
        UNEMBED_DX.replace("optimize=True)", "optimize=True).astype(np.float32)"),
        "wrong",
        [
            "in a float64 model, x is float32",
            "it first changed at unembed.py:",
            "astype changed the dtype",
        ],
    ),
    (
        "2 float32 into float64 .grad",
        "W_U.grad += (...).astype(np.float32): float64 .grad, float32 digits",
        "unembed",
        "unembed.py",
        UNEMBED_W,
        UNEMBED_W.replace("optimize=True)", "optimize=True).astype(np.float32)"),
        "wrong",
        ["every entry of W_U is a float32 number"],
    ),
    (
        "3 weights changed",
        "self.W_E.data -= 0.1 * self.W_E.grad after a right gradient",
        "embedding",
        "embedding.py",
        "np.add.at(self.W_E.grad, tokens, dembed)  # [d_vocab, d_model], repeats add up",
        "np.add.at(self.W_E.grad, tokens, dembed)  # [d_vocab, d_model], repeats add up\n"
        "        self.W_E.data -= 0.1 * self.W_E.grad",
        "wrong",
        ["backward changed in place", "the weights (W_E)"],
    ),
    (
        "4 hook twice",
        "a hook point's backward called twice",
        "attention",
        "attention.py",
        "dz = self.hook_z.backward(dz)",
        "dz = self.hook_z.backward(self.hook_z.backward(dz))",
        "wrong",
        ["hook_z.backward 2 times"],
    ),
    (
        "6 complex step",
        "complex-step differentiation, entry by entry",
        "unembed",
        "unembed.py",
        UNEMBED_W,
        COMPLEX_STEP,
        "numerical",
        ["complex step", "numerical differentiation"],
    ),
    (
        "6 finite differences",
        "finite differences of self.forward",
        "unembed",
        "unembed.py",
        UNEMBED_DX,
        FINITE_DIFFERENCES,
        "numerical",
        ["Unembed.forward called at unembed.py:", "numerical differentiation"],
    ),
    (
        "7 np.maximum out=pre",
        "np.maximum(pre, 0, out=pre): the cache edited, same gradient",
        "feedforward",
        "feedforward.py",
        "dpre = dpost * (pre > 0)  # [batch, pos, d_mlp]",
        "np.maximum(pre, 0, out=pre)\n            dpre = dpost * (pre > 0)  # [batch, pos, d_mlp]",
        "wrong",
        ["what forward saved (pre)"],
    ),
    (
        "7 weights /= sum",
        "weights /= weights.sum(): the cache edited, same gradient",
        "loss",
        "loss.py",
        LOSS_DNLL,
        "weights /= weights.sum()\n            dnll = dloss * weights  # [batch, pos]",
        "wrong",
        ["what forward saved (weights)"],
    ),
    (
        "8 mask line removed",
        "the causal mask's backward left out (the whole row)",
        "attention",
        "attention.py",
        MASK,
        "pass",
        "wrong",
        ["edits the gradient", "the mask's backward sets"],
    ),
    (
        "8 mask line removed, step",
        "the causal mask's backward left out (its step)",
        "attention.scores",
        "attention.py",
        MASK,
        "pass",
        "wrong",
        ["causal mask's backward is missing"],
    ),
    (
        "8 W_O.grad =",
        "W_O.grad = ... (not +=), checked at its step",
        "attention.output",
        "attention.py",
        "self.W_O.grad += dW_O",
        "self.W_O.grad = dW_O",
        "wrong",
        ["W_O: this step replaced", "+="],
    ),
    (
        "8 float64 slip, step",
        "np.sqrt(d_head): float64 in a float32 model, checked at its step",
        "attention.scores",
        "attention.py",
        DQ,
        DQ.replace("math.sqrt", "np.sqrt"),
        "wrong",
        ["in a float32 model", "attention.py:", "NumPy float64 scalar", "math.sqrt"],
    ),
    (
        "8 given changed, step",
        "dpattern *= 2 after use, checked at its step",
        "attention.softmax",
        "attention.py",
        "dprobs = self.hook_pattern.backward(dpattern)  # [batch, head, q_pos, k_pos]",
        "dprobs = self.hook_pattern.backward(dpattern)  # [batch, head, q_pos, k_pos]\n        "
        "dpattern *= 2",
        "wrong",
        ["the gradients this step was given (dpattern)"],
    ),
    (
        "8 float64 slip, whole",
        "np.sqrt(d_head): float64 in a float32 model, the whole row",
        "attention",
        "attention.py",
        DQ,
        DQ.replace("math.sqrt", "np.sqrt"),
        "wrong",
        ["in a float32 model", "(step attention.scores)", "NumPy float64 scalar"],
    ),
]

STUCK = [
    (
        "einsum letters",
        "an einsum whose letters misread W_O: remapped shapes",
        "attention.output",
        "attention.py",
        'dz = np.einsum("hdm,bpm->bphd", W_O, dout, optimize=True)',
        'dz = np.einsum("hmd,bpm->bphd", W_O, dout, optimize=True)',
        "wrong",
        ["W_O", '"hdm"'],
    ),
    (
        "positional broadcast",
        "self.W_pos.grad += dpos_embed.sum(axis=0)",
        "positional",
        "positional.py",
        "np.add.at(self.W_pos.grad, positions[0], dpos_embed.sum(axis=0))",
        "self.W_pos.grad += dpos_embed.sum(axis=0)",
        "wrong",
        ["[n_ctx, d_model]", "[pos, d_model]", "[:pos] +="],
    ),
    (
        "dv_h untransposed",
        "dv_h = pattern @ dz_h",
        "attention",
        "attention.py",
        "dv_h = pattern.swapaxes(-1, -2) @ dz_h",
        "dv_h = pattern @ dz_h",
        "wrong",
        ["pattern used untransposed", "pattern.swapaxes(-1, -2) @ dz_h"],
    ),
    (
        "dk_h transpose",
        "dk_h = dscores @ q_h / sqrt(d_head)",
        "attention",
        "attention.py",
        DK,
        DK.replace("dscores.swapaxes(-1, -2)", "dscores"),
        "wrong",
        ["transpose of dscores is missing"],
    ),
    (
        "softmax axis",
        "the softmax's row sum over axis=-2",
        "attention",
        "attention.py",
        "(dprobs * probs).sum(axis=-1, keepdims=True)",
        "(dprobs * probs).sum(axis=-2, keepdims=True)",
        "wrong",
        ["over the wrong axis", "axis=-1"],
    ),
    (
        "v path",
        "the values' path left out of dx",
        "attention",
        "attention.py",
        V_PATH,
        "",
        "wrong",
        ["x lacks the values' path", "W_V term is missing"],
    ),
    (
        "GELU cubic",
        "GELU: d inner / d pre without its cubic term",
        "feedforward",
        "feedforward.py",
        "dpre += dinner * GELU_C * (1 + 3 * 0.044715 * pre * pre)",
        "dpre += dinner * GELU_C",
        "wrong",
        ["cubic term's derivative", "3 * 0.044715 * pre**2"],
    ),
    (
        "GELU tanh",
        "GELU: 1 - tanh for tanh's derivative",
        "feedforward",
        "feedforward.py",
        "dinner = dtanh * (1 - tanh * tanh)",
        "dinner = dtanh * (1 - tanh)",
        "wrong",
        ["1 - tanh**2"],
    ),
    (
        "ReLU times post",
        "ReLU: dpre = dpost * post",
        "feedforward",
        "feedforward.py",
        "dpre = dpost * (pre > 0)",
        "dpre = dpost * post",
        "wrong",
        ["dpost * post", "dpost * (pre > 0)"],
    ),
    (
        "loss weights",
        "the loss's weights left out",
        "loss",
        "loss.py",
        LOSS_DNLL,
        "dnll = dloss * np.ones_like(weights) / weights.size  # [batch, pos]",
        "wrong",
        ["weights are left out", "dloss * weights / weights.sum()"],
    ),
    (
        "1/dloss",
        "the loss's dloss left out",
        "loss",
        "loss.py",
        LOSS_DNLL,
        "dnll = weights / weights.sum()  # [batch, pos]",
        "wrong",
        ["1/dloss", "dloss * weights / weights.sum()"],
    ),
    (
        "ln1 on the sum",
        "pre-norm: ln1's backward applied to both paths",
        "block",
        "block.py",
        BLOCK_LN1,
        'dresid_pre = self.ln1.backward(dresid_mid + dattn_in) if norm == "pre" else dresid_mid + '
        "dattn_in",
        "wrong",
        ["ln1's backward is applied to the sum", "attention branch only"],
    ),
    (
        "compact LayerNorm",
        "a compact LayerNorm backward that never forms dscale",
        "layernorm",
        "layernorm.py",
        LN_STEPS,
        LN_COMPACT,
        "wrong",
        ["never calls hook_scale.backward", "dscale = -(dnormalized * centered)"],
    ),
    (
        "tiny error",
        "one entry of W_U.grad off by 1e-6 relative",
        "unembed",
        "unembed.py",
        UNEMBED_W,
        UNEMBED_W + "\n        self.W_U.grad[0, 0] *= 1 + 2e-6",
        "wrong",
        ["at entry (0, 0)", "The tolerance is 1e-07"],
    ),
]

TABLE = FALSE_PASSES + STUCK
QUICK = {
    "1 W_pos[:6]",
    "2 float32 in float64",
    "2 float32 into float64 .grad",
    "3 weights changed",
    "4 hook twice",
    "6 complex step",
    "7 np.maximum out=pre",
    "8 mask line removed",
    "8 W_O.grad =",
    "8 float64 slip, step",
    "8 given changed, step",
    # the rest: pytest -m slow
    "positional broadcast",
    "1/dloss",
    "compact LayerNorm",
    "tiny error",
}
SLOW = {case[0] for case in TABLE} - QUICK


def row(results, key):
    return next(result for result in results if result.key == key)


def run_case(solved, tmp_path, case):
    _, _, key, file, old, new, _, _ = case
    return row(
        check(
            planted_copy(solved, tmp_path, file, old, new),
            keys=[key],
            sample=SAMPLE,
            together=False,
            steps=False,  # the exercise's row alone: its steps' rows are not read
        ),
        key,
    )


@pytest.mark.parametrize(
    "case",
    [c if c[0] not in SLOW else pytest.param(c, marks=pytest.mark.slow) for c in TABLE],
    ids=[c[0] for c in TABLE],
)
def test_a_planted_mistake_gets_its_status_and_hint(solved, tmp_path, case):
    label, _, key, _, _, _, status, words = case
    result = run_case(solved, tmp_path, case)
    assert result.status == status, f"{label}: {result.status}: {result.message}"
    said = result.message + " " + result.hint
    for word in words:
        assert word in said, f"{label}: {word!r} not in {said!r}"


def test_no_planted_mistake_is_done():
    assert all(case[6] != "done" for case in TABLE)


def test_the_size_sets_differ_axis_by_axis_with_batch_one_and_pos_n_ctx():
    first, second = SIZE_SETS
    assert second.batch == 1 and second.pos == second.config["n_ctx"]
    axes = ("d_vocab", "d_model", "n_heads", "d_head", "d_mlp", "n_ctx")
    assert first.batch != second.batch and first.pos != second.pos
    assert all(first.config[a] != second.config[a] for a in axes)
    for sizes in SIZE_SETS:
        values = [sizes.config[a] for a in axes if a != "n_ctx"] + [sizes.batch, sizes.pos]
        assert len(set(values)) == len(values), f"{sizes.label}: two axes share a size"
        assert not {2, 4} & set(values)


def test_one_broken_file_fails_only_its_own_exercise(solved, tmp_path):
    directory = planted_copy(
        solved, tmp_path, "layernorm.py", "dx = dcentered + dmean / d_model", "dx = (dcentered"
    )
    results = {
        r.key: r for r in check(directory, keys=["unembed", "layernorm", "block"], sample=SAMPLE)
    }
    assert (
        results["layernorm"].status == "wrong"
        and "does not compile" in results["layernorm"].message
    )
    assert "layernorm.py:" in results["layernorm"].message
    assert results["unembed"].status == "done" and results["block"].status == "done"


@pytest.mark.slow
def test_the_reference_bodies_are_done_under_every_size_set(solved):
    for exercise in EXERCISES:
        for result in check(solved, keys=[exercise.key], sample=SAMPLE, together=False):
            assert result.status == "done", f"{result.key}: {result.message}"


def table(solved_dir):
    """The table for the issue's closing note: (mistake planted, status, hint or message)."""
    import tempfile
    from pathlib import Path

    lines = [
        "| mistake planted | exercise | status | hint (or message) |",
        "| --- | --- | --- | --- |",
    ]
    for case in TABLE:
        with tempfile.TemporaryDirectory() as folder:
            result = run_case(Path(solved_dir), Path(folder), case)
        said = (result.hint or result.message).replace("|", "\\|")
        lines.append(f"| {case[1]} | {case[2]} | {result.status} | {said} |")
    return "\n".join(lines)


if __name__ == "__main__":
    import tempfile
    from pathlib import Path

    from exercises.generate import write_copy
    from parity_tests.copies import put_back_reference_bodies

    with tempfile.TemporaryDirectory() as folder:
        write_copy(folder)
        put_back_reference_bodies(Path(folder) / "numpy_impl")
        print(table(folder))
