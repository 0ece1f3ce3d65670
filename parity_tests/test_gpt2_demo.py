"""``python demo.py gpt2 --model DIR``: on a GPT-2 checkpoint made here, with the tiny tokenizer and
without."""

import json
import os

import numpy as np
import pytest

import demo
from parity_tests.gpt2_checkpoints import D_VOCAB, make_checkpoint

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpt2")
    make_checkpoint(folder)
    return folder


def worst_difference(printed):
    return float(printed.split("worst relative difference: ")[1].split()[0])


def new_ids(printed, side):
    line = next(line for line in printed.splitlines() if line.split()[:3] == [side, "new", "ids"])
    return line.split("new ids ")[1].split("]")[0] + "]"


def test_text_prompt(folder, tmp_path, capsys):
    out = tmp_path / "out"
    demo.main(
        [
            "gpt2",
            "--model",
            str(folder),
            "--out",
            str(out),
            "--prompt",
            "The cat sat on the mat.",
            "--new-tokens",
            "6",
        ]
    )
    printed = capsys.readouterr().out
    assert "byte-level BPE" in printed and "'<|endoftext|>'" in printed
    assert worst_difference(printed) <= 1e-12
    assert new_ids(printed, "NumPy") == new_ids(printed, "torch")
    assert "The same 6 tokens from both twins." in printed
    # the prompt, decoded, then the new text
    assert "-> '<|endoftext|>The cat sat on the mat." in printed
    for name in (
        "gpt2_attention.png",
        "gpt2_previous_token_scores.png",
        "gpt2_attention_head.png",
        "gpt2_logit_lens.png",
    ):
        assert (out / name).read_bytes()[:8] == PNG
        assert str(out / name) in printed


@pytest.mark.slow  # the same command as test_text_prompt, given ids instead of text
def test_token_ids_without_a_tokenizer(folder, tmp_path, capsys):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        os.link(folder / name, bare / name)
    demo.main(
        ["gpt2", "--model", str(bare), "--out", str(tmp_path / "out"), "--prompt", "5, 17 200 3"]
    )
    printed = capsys.readouterr().out
    assert "tokenizer: none" in printed and "tokens (1, 4): [5, 17, 200, 3]" in printed
    assert worst_difference(printed) <= 1e-12
    assert new_ids(printed, "NumPy") == new_ids(printed, "torch")
    # default: random ids, repeated
    demo.main(["gpt2", "--model", str(bare), "--out", str(tmp_path / "out")])
    printed = capsys.readouterr().out
    # 8 ids twice (n_ctx 24 keeps a quarter, 6, for new tokens), then the 8 new tokens n_ctx leaves
    # room for
    ids = np.array(json.loads(printed.split("tokens (1, 16): ")[1].splitlines()[0]))
    assert np.array_equal(ids[:8], ids[8:]) and ids.max() < D_VOCAB
    assert "Greedy generation: 8 new tokens from each twin" in printed


BAD = {
    "a missing folder": (
        lambda folder, tmp: ["--model", str(tmp / "missing")],
        "no checkpoint folder",
    ),
    "a folder without config.json": (lambda folder, tmp: ["--model", str(tmp)], "no config.json"),
    "ids that are not ids": (
        lambda folder, tmp: ["--model", str(tmp / "bare"), "--prompt", "one two"],
        "token ids",
    ),
    "an id outside the vocabulary": (
        lambda folder, tmp: ["--model", str(tmp / "bare"), "--prompt", f"1 {D_VOCAB}"],
        "not in [0, 320)",
    ),
    "one token": (
        lambda folder, tmp: ["--model", str(tmp / "bare"), "--prompt", "7"],
        "at least 2 tokens",
    ),
    "too long for n_ctx": (
        lambda folder, tmp: ["--model", str(folder), "--prompt", "the cat " * 20],
        "n_ctx",
    ),
    "an empty prompt": (lambda folder, tmp: ["--model", str(folder), "--prompt", "  "], "empty"),
    "negative --new-tokens": (
        lambda folder, tmp: ["--model", str(folder), "--new-tokens", "-1"],
        "--new-tokens",
    ),
    "no --model": (lambda folder, tmp: [], "--model"),
    # the prompt's id errors in this process (in a subprocess, with bytes: under pytest -m slow)
    "a huge id": (
        lambda folder, tmp: ["--model", str(tmp / "bare"), "--prompt", "1 99999999999999999999999"],
        "token id 99999999999999999999999 is not in [0, ",
    ),
    "a non-ASCII digit": (
        lambda folder, tmp: ["--model", str(tmp / "bare"), "--prompt", "1 \u0661"],
        "--prompt must be token ids",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_argument_is_one_line(folder, tmp_path, capsys, case):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        os.link(folder / name, bare / name)
    arguments, says = BAD[case]
    with pytest.raises(SystemExit) as exit_info:
        demo.main(["gpt2", "--out", str(tmp_path / "out"), *arguments(folder, tmp_path)])
    err = capsys.readouterr().err
    assert exit_info.value.code not in (0, None)
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and says in errors[0], err


# --- the prompt's one-line errors ---

import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

PROJECT = Path(__file__).resolve().parent.parent


def _checkpoint(folder, **overrides):
    from parity_tests.gpt2_checkpoints import make_checkpoint

    make_checkpoint(folder, **{"n_layer": 1, **overrides})
    return folder


@pytest.fixture(scope="module")
def one_layer_checkpoint(tmp_path_factory):
    return _checkpoint(tmp_path_factory.mktemp("checkpoint"))


def _demo(*args, cwd=PROJECT):
    return subprocess.run(
        [os.fsencode(sys.executable), os.fsencode(PROJECT / "demo.py"), *args],
        capture_output=True,
        timeout=300,
        cwd=cwd,
    )


@pytest.fixture(scope="module")
def checkpoint_without_tokenizer(tmp_path_factory):
    return _checkpoint(tmp_path_factory.mktemp("ids"), tokenizer=False)


# one subprocess by default (bytes that are not UTF-8 reach only a fresh interpreter's argv); the
# other two under pytest -m slow (test_a_bad_argument_is_one_line gives both in this process)
@pytest.mark.parametrize(
    "prompt, words",
    [
        pytest.param(
            b"1 99999999999999999999999",
            b"token id 99999999999999999999999 is not in [0, ",
            marks=pytest.mark.slow,
        ),
        (b"1 2 \xff", b"--prompt is not UTF-8 text"),
        pytest.param(b"1 \xd9\xa1", b"--prompt must be token ids", marks=pytest.mark.slow),
    ],
    ids=["a huge id", "not UTF-8", "a non-ASCII digit"],
)
def test_demo_gpt2_prompt_errors_are_one_line(
    checkpoint_without_tokenizer, tmp_path, prompt, words
):
    ran = _demo(
        b"gpt2",
        b"--model",
        os.fsencode(checkpoint_without_tokenizer),
        b"--prompt",
        prompt,
        b"--out",
        os.fsencode(tmp_path / "out"),
    )
    assert ran.returncode == 1 and words in ran.stderr, ran.stderr
    assert ran.stderr.count(b"\n") == 1 and b"Traceback" not in ran.stderr, ran.stderr


@pytest.mark.slow  # the same refusal as "not UTF-8" above, given text with a tokenizer
def test_demo_gpt2_text_prompt_that_is_not_utf8_is_one_line(one_layer_checkpoint, tmp_path):
    ran = _demo(
        b"gpt2",
        b"--model",
        os.fsencode(one_layer_checkpoint),
        b"--prompt",
        b"hello \xff",
        b"--out",
        os.fsencode(tmp_path / "out"),
    )
    assert ran.returncode == 1 and b"--prompt is not UTF-8 text" in ran.stderr, ran.stderr
    assert ran.stderr.count(b"\n") == 1, ran.stderr
