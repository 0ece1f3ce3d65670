"""``python demo.py checkpoint DIR --arch llama`` (or gpt_neox), then ``gpt2 --model DIR``: written
offline, toured."""

import pytest

import demo

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "family, prefix, says",
    [
        ("llama", "llama", "2 key/value heads, SwiGLU"),
        # the same command for another family: under pytest -m slow
        pytest.param(
            "gpt_neox", "gptneox", "attention and MLP in parallel", marks=pytest.mark.slow
        ),
    ],
)
def test_write_a_tiny_checkpoint_then_tour_it(family, prefix, says, tmp_path, capsys):
    out = tmp_path / "out"
    demo.main(
        [
            "checkpoint",
            str(tmp_path / "tiny"),
            "--arch",
            family,
            "--dtype",
            "float64",
            "--n-ctx",
            "24",
        ]
    )
    demo.main(
        [
            "gpt2",
            "--model",
            str(tmp_path / "tiny"),
            "--out",
            str(out),
            "--prompt",
            "The cat sat on the",
            "--new-tokens",
            "4",
        ]
    )
    printed = capsys.readouterr().out
    assert says in printed and "tokenizer: tokenizer.json (tokenizers)" in printed
    assert "<|endoftext|> prepended" in printed
    # grouped-query attention stores _W_K and _W_V; the table names them as the model reads them
    assert "grad attention W_Q, W_K, W_V, W_O" in printed and "_W_" not in printed
    worst = float(printed.split("worst relative difference: ")[1].split()[0])
    assert worst <= 1e-12
    numpy_ids = next(
        line for line in printed.splitlines() if line.split()[:3] == ["NumPy", "new", "ids"]
    )
    torch_ids = next(
        line for line in printed.splitlines() if line.split()[:3] == ["torch", "new", "ids"]
    )
    assert numpy_ids.split()[3:] == torch_ids.split()[3:]
    for name in ("attention", "previous_token_scores", "attention_head", "logit_lens"):
        assert (out / f"{prefix}_{name}.png").read_bytes()[:8] == PNG


def test_apply_ln_to_stack_divides_an_rms_norm_without_centring():
    """The residual stream's pieces through ln_final (cached scale, no centring) sum to what
    ln_final normalised."""
    import numpy as np

    import numpy_impl as npi
    from parity_tests.test_llama import llama_cfg

    model = npi.Transformer(llama_cfg())
    tokens = np.random.default_rng(0).integers(0, 13, (2, 5))
    _, cache = model.run_with_cache(tokens)
    pieces, _ = cache.decompose_resid(return_labels=True)
    normalized = cache.apply_ln_to_stack(pieces).sum(0)  # [batch, pos, d_model]
    assert np.abs(normalized - cache["ln_final.hook_normalized"]).max() <= 1e-12
