"""Exercises: the generated copy, and the checker that marks it.

A fresh copy must check "not started" everywhere (every step of the attention too); the copy
with the reference's bodies put back must check "done" everywhere; planted mistakes must be
reported "wrong" at the right exercise and tensor, and nowhere else; outside the marked backward
bodies the copy must be the reference line for line, and its forward passes must give the
reference's outputs. The tests put bodies back and plant mistakes with their own text surgery
(``parity_tests/copies.py``), not with the generator's helpers.
"""

import importlib.util
import sys

import numpy as np
import pytest

import numpy_impl as npi
from exercises.catalog import EXERCISES, STEP_KEYS
from exercises.check import check, format_results
from exercises.generate import PROJECT, REFERENCE_DIR, find_marked_bodies, write_copy
from gradcheck.factory import build, make_inputs
from parity_tests.copies import BEGIN, END, copy_of, marked_regions, outside, plant
from tours.exercises import run as run_exercises

# finite-difference directions per tensor: the reference comparison already covers every entry
SAMPLE = 1
KEYS = [key for exercise in EXERCISES for key in exercise.step_keys() + [exercise.key]]


def statuses(results):
    return {result.key: result.status for result in results}


@pytest.mark.slow
def test_fresh_copy_is_not_started_everywhere(fresh):
    results = check(fresh, sample=SAMPLE)
    assert statuses(results) == {
        **{key: "not started" for key in KEYS},
        "all together": "not started",
    }


@pytest.mark.slow
def test_copy_with_reference_bodies_is_done_everywhere(solved):
    results = check(solved, sample=SAMPLE)
    assert statuses(results) == {**{key: "done" for key in KEYS}, "all together": "done"}
    for result in results:
        assert result.tensors, f"{result.key}: done with nothing compared"
        for tensor in result.tensors:
            assert tensor.reference <= 1e-7, f"{result.key} {tensor.tensor}"
            if result.key not in STEP_KEYS:  # the steps are compared with the reference only
                assert tensor.numeric is not None and tensor.numeric <= 1e-7, (
                    f"{result.key} {tensor.tensor}"
                )
    # 11 exercises (rmsnorm and swiglu among them) and attention's 6 steps (groups and rotary too)
    assert "17 of 17 checked done." in format_results(results, solved)


@pytest.mark.slow
def test_layernorm_missing_mean_term_is_wrong_at_x(solved, tmp_path):
    directory = copy_of(solved, tmp_path)
    plant(
        directory / "numpy_impl",
        "layernorm.py",
        "dx = dcentered + dmean / d_model",
        "dx = dcentered",
    )
    results = check(directory, sample=SAMPLE)
    assert statuses(results) == {
        **{key: "done" for key in KEYS},
        "layernorm": "wrong",
        "all together": "wrong",
    }
    layernorm = next(r for r in results if r.key == "layernorm")
    assert [t.tensor for t in layernorm.wrong_tensors] == ["x"]
    assert layernorm.wrong_tensors[0].reference > 1e-2, (
        "a missing term is off by about the gradient's size"
    )
    assert "x off by" in format_results(results, directory)


def test_a_few_exercises_fresh_and_solved(fresh, solved):
    """The quick version of the two above: not started in a fresh copy, done in a solved one."""
    keys = ["unembed", "attention.softmax", "block"]
    assert statuses(check(fresh, keys=keys, sample=SAMPLE)) == dict.fromkeys(keys, "not started")
    results = check(solved, keys=keys, sample=SAMPLE)
    assert statuses(results) == dict.fromkeys(keys, "done")
    assert all(t.reference <= 1e-7 for result in results for t in result.tensors)


def test_an_exercise_checked_without_its_steps_comes_alone(fresh):
    """steps=False: an exercise named brings none of its steps; a step named is still checked."""
    results = check(fresh, keys=["attention", "attention.softmax"], sample=SAMPLE, steps=False)
    assert [r.key for r in results] == ["attention.softmax", "attention"]
    assert statuses(results) == {"attention.softmax": "not started", "attention": "not started"}


PROJECTION_GRADS = {f"{w}_{x}.grad" for w in "Wb" for x in "QKV"}


@pytest.mark.parametrize(
    "step, old, new, wrong, right",
    [
        (  # a step that adds into no .grad: only its outputs are compared
            "rotary",
            "dq = rotate(dq, cos, -sin, adjacent)",
            "dq = rotate(dq, cos, sin, adjacent)",
            {"dq"},
            {"dk"},
        ),
        (  # one that adds into six: those, and its output, never W_O's or b_O's
            "projections",
            "self.b_Q.grad += dq.sum(axis=(0, 1))",
            "self.b_Q.grad += 2 * dq.sum(axis=(0, 1))",
            {"b_Q.grad"},
            {"dx"} | PROJECTION_GRADS - {"b_Q.grad"},
        ),
        (  # a .grad the step must leave alone, changed: named among the wrong
            "projections",
            "self.b_Q.grad += dq.sum(axis=(0, 1))",
            "self.b_Q.grad += dq.sum(axis=(0, 1)); self.W_O.grad += 1.0",
            {"W_O.grad"},
            {"dx"} | PROJECTION_GRADS,
        ),
    ],
    ids=["rotary", "projections", "projections touching W_O"],
)
def test_a_step_check_compares_only_what_the_step_makes(
    solved, tmp_path, step, old, new, wrong, right
):
    """A step's verdict lists its outputs and the .grads it adds into, not every parameter's."""
    directory = copy_of(solved, tmp_path)
    plant(directory / "numpy_impl", "attention.py", old, new)
    (result,) = check(directory, keys=[f"attention.{step}"], sample=SAMPLE, together=False)
    assert result.status == "wrong", result.message
    assert {t.tensor for t in result.wrong_tensors} == wrong, result.message
    assert {t.tensor for t in result.tensors} == wrong | right, result.message
    said_right = result.message.split("; right: ")[1].split(", ")
    assert said_right and all(name in right for name in said_right if name != "..."), (
        f"the {step} step's verdict calls right what it never touches: {result.message}"
    )


def test_softmax_missing_row_sum_is_wrong_at_its_step_queries_and_keys(solved, tmp_path):
    directory = copy_of(solved, tmp_path)
    plant(
        directory / "numpy_impl",
        "attention.py",
        "dscores = probs * (dprobs - dprobs_mean)",
        "dscores = probs * dprobs",
    )
    results = check(directory, keys=["attention", "block"], sample=SAMPLE)
    assert statuses(results) == {
        **{
            key: "done"
            for key in [
                "attention.output",
                "attention.scores",
                "attention.groups",
                "attention.rotary",
                "attention.projections",
                "block",
            ]
        },
        "attention.softmax": "wrong",
        "attention": "wrong",
    }
    attention = next(r for r in results if r.key == "attention")
    wrong = {t.tensor: t.reference for t in attention.wrong_tensors}
    # the scores feed q and k only: v, the output projection and their biases stay right
    assert set(wrong) == {"W_Q", "W_K", "b_Q", "b_K", "x"}
    assert min(wrong.values()) > 1e-2
    softmax = next(r for r in results if r.key == "attention.softmax")
    assert [t.tensor for t in softmax.wrong_tensors] == ["dscores"], (
        "the step's own output is what is wrong"
    )


def test_skipping_a_hook_point_in_backward_is_wrong(solved, tmp_path):
    """Right parameter gradients are not enough: run_with_cache(incl_bwd=True) needs each hook's
    gradient."""
    directory = copy_of(solved, tmp_path)
    plant(directory / "numpy_impl", "attention.py", "dz = self.hook_z.backward(dz)", "pass")
    (result,) = check(directory, keys=["attention"], sample=SAMPLE, steps=False)
    assert result.key == "attention"
    assert result.status == "wrong" and "hook_z.backward" in result.message
    assert all(t.ok for t in result.tensors), "the parameter gradients themselves are right"


def test_overwriting_a_gradient_instead_of_adding_is_wrong(solved, tmp_path):
    directory = copy_of(solved, tmp_path)
    plant(
        directory / "numpy_impl",
        "unembed.py",
        "self.W_U.grad += np.einsum",
        "self.W_U.grad = np.einsum",
    )
    (result,) = check(directory, keys=["unembed"], sample=SAMPLE)
    assert result.status == "wrong" and "W_U" in result.message and "+=" in result.message


def test_a_copy_that_does_not_import_says_where(solved, tmp_path):
    """A file without an exercise that does not compile stops everything (an exercise's file stops
    only its own: test_exercise_round_two.py)."""
    directory = copy_of(solved, tmp_path)
    plant(directory / "numpy_impl", "module.py", "class Parameter:", "class Parameter")
    with pytest.raises(ImportError, match=r"does not import.*module\.py"):
        check(directory)


def test_copy_differs_from_reference_only_inside_backward_bodies(fresh):
    copy_dir = fresh / "numpy_impl"
    reference_files = sorted(p.name for p in REFERENCE_DIR.glob("*.py"))
    assert sorted(p.name for p in copy_dir.glob("*.py")) == reference_files
    marked = raises = 0
    for name in reference_files:
        reference = (REFERENCE_DIR / name).read_text().splitlines()
        mine = (copy_dir / name).read_text().splitlines()
        assert outside(mine) == outside(reference), (
            f"{name}: lines outside the marked bodies differ"
        )
        for begin, end in marked_regions(mine):
            body = mine[begin + 1 : end]
            steps = [line.strip() for line in body if line.strip().startswith("# EXERCISE STEP ")]
            reference_steps = [
                line.strip() for line in reference if line.strip().startswith("# EXERCISE STEP ")
            ]
            assert steps == reference_steps, f"{name}: the step markers are the reference's"
            assert "\n".join(body).count("raise NotImplementedError(") == max(len(steps), 1), (
                "one raise per step"
            )
            marked += 1
            raises += max(len(steps), 1)
    assert marked == len(EXERCISES)
    assert raises == len(EXERCISES) - 1 + len(STEP_KEYS)


def test_copy_imports_and_its_forward_passes_are_the_references(fresh):
    spec = importlib.util.spec_from_file_location(
        "copy_under_test",
        fresh / "numpy_impl" / "__init__.py",
        submodule_search_locations=[str(fresh / "numpy_impl")],
    )
    copy = importlib.util.module_from_spec(spec)
    sys.modules["copy_under_test"] = copy
    try:
        spec.loader.exec_module(copy)
        assert copy.LayerNorm is not npi.LayerNorm, (
            "the copy must be its own package, not the reference"
        )
        for exercise in EXERCISES:
            for variant in exercise.variants:
                cfg, copy_cfg = variant.config(), variant.config(copy)
                reference_module, copy_module = (
                    build(npi, exercise.cls, cfg),
                    build(copy, exercise.cls, copy_cfg),
                )
                inputs = make_inputs(exercise.cls, cfg, 1, variant.weighted)
                assert np.array_equal(
                    reference_module.forward(*inputs), copy_module.forward(*inputs)
                ), exercise.key
                out = copy_module.forward(*inputs)
                dout = np.random.default_rng(2).standard_normal(np.shape(out))
                with pytest.raises(
                    NotImplementedError,
                    match=rf"{exercise.cls}\.backward(, step 1 \(\w+\) of| is) exercise",
                ):
                    copy_module.backward(dout if np.ndim(out) else float(dout))
    finally:
        for name in [n for n in sys.modules if n.startswith("copy_under_test")]:
            del sys.modules[name]


def test_stub_hint_says_what_to_undo_and_return(fresh):
    text = (fresh / "numpy_impl" / "layernorm.py").read_text()
    for needed in (
        "normalized = centered / scale",
        "mean = x.mean(-1)",
        "self.w.grad [d_model]",
        "Return: dx [batch, pos, d_model]",
        f"exercises check {fresh} layernorm",
    ):
        assert needed in text, f"the LayerNorm hint lacks {needed!r}"


def test_feedforward_stub_labels_its_relu_and_gelu_branches(fresh):
    text = (fresh / "numpy_impl" / "feedforward.py").read_text()
    relu = text.index("#   the ReLU branch:")
    gelu = text.index('#   the GELU branch (act_fn "gelu_new"):')
    assert relu < text.index("#       post = max(pre, 0)") < gelu, (
        "the ReLU line sits under its label"
    )
    assert (
        gelu
        < text.index("#       post = 0.5 * pre * (1 + tanh)")
        < text.index("#       tanh = np.tanh(inner)")
    )


def test_block_stub_nests_an_if_inside_an_else(fresh):
    """The post-norm ln2 sits inside the block's not-attn_only branch: the hint indents it under
    that branch's heading, not before it at the top level."""
    text = (fresh / "numpy_impl" / "block.py").read_text()
    hint = text[text.index("# EXERCISE BEGIN") : text.index("raise NotImplementedError(")]
    lines = [line.strip()[1:] for line in hint.splitlines()]  # each comment, "#" dropped
    other = lines.index("   else (not self.cfg.attn_only):")
    assert lines[other + 1 : other + 4] == [
        '       if norm == "post":',
        "           resid_post = ln2(resid_post)   (post-norm only)",
        "       resid_post = resid_mid + mlp_out",
    ], hint
    assert lines.index('   if norm == "post":') > other, "the later top-level if is its own"


def test_attention_stub_has_one_hint_per_step(fresh):
    text = (fresh / "numpy_impl" / "attention.py").read_text()
    for number, (step, given, make) in enumerate(
        [
            ("output", "dout [batch, pos, d_model]", "dpattern"),
            ("softmax", "dpattern", "dscores"),
            ("scores", "dscores", "dq_h"),
            ("groups", "dq_h", "dk [batch, pos, kv_head, d_head]"),
            ("rotary", "dq", "dk"),
            ("projections", "dq", "dx [batch, pos, d_model]"),
        ],
        1,
    ):
        marker = text.index(f"# EXERCISE STEP {step}:")
        hint = text[marker : text.index("raise NotImplementedError(", marker)]
        assert f"Step {number} of 6" in hint and f"exercises check {fresh} attention.{step}" in hint
        assert given in hint.split("# Make:")[0] and make in hint.split("# Make:")[1], hint


def _step_hint(text, step):
    marker = text.index(f"# EXERCISE STEP {step}:")
    return text[marker : text.index("raise NotImplementedError(", marker)]


def test_attention_stub_names_the_shared_heads_kv_head(fresh):
    """After the group sum, dk and dv have one row per key/value head: the stubs say kv_head, as the
    checker's grouped run demands ((5, 6, 3, 8) with 9 query heads)."""
    text = (fresh / "numpy_impl" / "attention.py").read_text()
    groups, rotary = _step_hint(text, "groups"), _step_hint(text, "rotary")
    given, make = (" ".join(groups.split("# Make:")[i].split()) for i in (0, 1))
    assert "dk_h [batch, head, pos, d_head]" in given and "dv_h [batch, head, pos, d_head]" in given
    for name, axes in (("dq", "head"), ("dk", "kv_head"), ("dv", "kv_head")):
        assert f"{name} [batch, pos, {axes}, d_head]" in make, groups
    given, make = (" ".join(rotary.split("# Make:")[i].split()) for i in (0, 1))
    for part in (given, make):
        assert (
            "dq [batch, pos, head, d_head]" in part and "dk [batch, pos, kv_head, d_head]" in part
        )
    projections = " ".join(_step_hint(text, "projections").split())
    for needed in ("dv [batch, pos, kv_head, d_head]", "self.W_K.grad [kv_head, d_model, d_head]"):
        assert needed in projections, projections
    assert "self.W_Q.grad [head, d_model, d_head]" in projections
    stub = text[text.index("# EXERCISE BEGIN") : text.index("# EXERCISE END")]
    assert "_W_K" not in stub and "else kv_head is head" in stub


def test_init_refuses_to_overwrite_work_unless_forced(fresh, tmp_path):
    write_copy(tmp_path)
    (tmp_path / "numpy_impl" / "layernorm.py").write_text("# my work\n")
    with pytest.raises(FileExistsError, match="--force"):
        write_copy(tmp_path)
    assert (tmp_path / "numpy_impl" / "layernorm.py").read_text() == "# my work\n"
    write_copy(tmp_path, force=True)
    assert "EXERCISE BEGIN" in (tmp_path / "numpy_impl" / "layernorm.py").read_text()


@pytest.mark.parametrize("force", [False, True])
@pytest.mark.parametrize("where", [".", "numpy_impl", "foundation", "exercises/sub"])
def test_init_never_writes_into_the_projects_own_packages(monkeypatch, force, where):
    """``exercises init . --force`` from the project root would put stubs over the reference."""
    before = {path: path.read_bytes() for path in REFERENCE_DIR.glob("*.py")}
    monkeypatch.chdir(PROJECT)
    with pytest.raises(PermissionError, match="never writes into the project's own packages"):
        write_copy(where, force=force)
    assert {path: path.read_bytes() for path in REFERENCE_DIR.glob("*.py")} == before
    assert (
        not (PROJECT / "foundation" / "numpy_impl").exists()
        and not (PROJECT / "exercises" / "sub").exists()
    )


def test_init_refuses_a_symlink_to_the_reference(tmp_path):
    (tmp_path / "numpy_impl").symlink_to(REFERENCE_DIR)
    with pytest.raises(PermissionError, match="the reference itself"):
        write_copy(tmp_path, force=True)


def test_the_default_work_folder_is_git_ignored():
    import subprocess

    from exercises.generate import DEFAULT_DIR

    ignored = subprocess.run(
        ["git", "check-ignore", "-q", f"{DEFAULT_DIR}/numpy_impl/layernorm.py"],
        cwd=PROJECT,
        capture_output=True,
    )
    if ignored.returncode == 128:
        pytest.skip("not a git checkout")
    assert ignored.returncode == 0, f"{DEFAULT_DIR}/ is not in .gitignore"


def test_demo_command_init_then_check_one(tmp_path, capsys):
    class Args:
        action, dir, force, component, sample, seed, time_limit = (
            "init",
            str(tmp_path),
            False,
            None,
            SAMPLE,
            0,
            None,
        )

    run_exercises(Args)
    Args.action, Args.component = "check", "layernorm"
    run_exercises(Args)
    out = capsys.readouterr().out
    assert "layernorm  not started" in out and "0 of 1 checked done" in out


def test_demo_command_init_refuses_the_project_root(monkeypatch, capsys):
    import demo

    monkeypatch.chdir(PROJECT)
    with pytest.raises(SystemExit) as exit_info:
        demo.main(["exercises", "init", ".", "--force"])
    assert exit_info.value.code not in (0, None)
    error = capsys.readouterr().err
    assert "never writes into the project's own packages" in error and "Traceback" not in error
    assert len(error.strip().splitlines()) == 1


def test_bad_arguments(fresh, tmp_path):
    with pytest.raises(ValueError, match="unknown exercise"):
        check(fresh, keys=["softmax"])
    with pytest.raises(ValueError, match="time_limit"):
        check(fresh, keys=["unembed"], time_limit=float("inf"))
    with pytest.raises(ValueError, match="sample"):
        check(fresh, sample=0)
    with pytest.raises(FileNotFoundError, match="exercises init"):
        check(tmp_path / "nowhere")
    with pytest.raises(TypeError, match="directory"):
        write_copy(3)


@pytest.mark.parametrize(
    "source, problem",
    [
        (f"class A:\n    def backward(self):\n        {BEGIN}\n        pass\n", "without an"),
        (f"class A:\n    def backward(self):\n        pass\n        {END}\n", "without a"),
        (
            f"class A:\n    def forward(self):\n        {BEGIN}\n        pass\n        {END}\n",
            "inside one backward",
        ),
        (
            f"class A:\n    def backward(self):\n        {BEGIN}\n        {BEGIN}\n        pass\n  "
            f"      {END}\n",
            "inside another",
        ),
        (
            "class A:\n    def backward(self):\n        # EXERCISE STEP a: x\n        pass\n",
            "outside an exercise",
        ),
        (
            f"class A:\n    def backward(self):\n        {BEGIN}\n        x = 1\n        # "
            f"EXERCISE STEP a: x\n"
            f"        pass\n        {END}\n        return x\n",
            "every line belongs to a step",
        ),
    ],
)
def test_misplaced_markers_fail_loudly(source, problem):
    with pytest.raises(ValueError, match=problem):
        find_marked_bodies(source)
