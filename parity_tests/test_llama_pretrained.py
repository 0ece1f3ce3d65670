"""Both twins read Llama and GPT-NeoX checkpoints and compute what ``transformers`` computes, to
1e-12.

The checkpoints are random float64 ``LlamaForCausalLM`` models built here
(``llama_checkpoints.py``): grouped-query and plain attention, tied and untied embeddings, with and
without attention biases, one file or shards; and ``GPTNeoXForCausalLM`` models shaped as Pythia
(partial rotary, parallel attention and MLP, exact GELU), and one with the sequential residual.
Compared: the logits, the next-token loss (computed by hand in float64 from transformers' logits:
its own loss upcasts to float32), every parameter gradient and the gradient at the residual stream
after every layer. transformers runs patched so that its rotary angles and RMSNorm compute in
float64 (``exact_float64``), with SDPA attention.
"""

import json

import numpy as np
import pytest
import torch

import numpy_impl as npi
import torch_impl as pti
from foundation.contract.agreement import rel_err, relative_errors
from parity_tests.llama_checkpoints import SMALL, exact_float64, make_llama_checkpoint

TOL = 1e-12
CASES = {
    "grouped": {},
    "plain-tied-biases": dict(num_key_value_heads=4, tie_word_embeddings=True, attention_bias=True),
    "one-kv-head-sharded": dict(num_key_value_heads=1, max_shard_size="20KB"),
    "neox-pythia": dict(family="gpt_neox"),
    "neox-sequential-half-rotary": dict(
        family="gpt_neox", use_parallel_residual=False, rotary_pct=0.5, hidden_act="gelu_new"
    ),
}


def hf_reference(hf_model, tokens):
    """transformers' logits, hand-made float64 loss, parameter gradients and residual-stream
    gradients."""
    residuals = []

    def keep(module, inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden.retain_grad()
        residuals.append(hidden)

    layers = hf_model.model.layers if hasattr(hf_model, "model") else hf_model.gpt_neox.layers
    handles = [layer.register_forward_hook(keep) for layer in layers]
    hf_model.zero_grad()
    with exact_float64():
        logits = hf_model(torch.from_numpy(tokens)).logits  # [batch, pos, d_vocab]
    for handle in handles:
        handle.remove()
    log_probs = torch.log_softmax(logits[:, :-1], dim=-1)  # float64, by hand
    targets = torch.from_numpy(tokens[:, 1:])
    loss = -log_probs.gather(-1, targets[..., None]).mean()
    loss.backward()
    grads = {name: p.grad.numpy() for name, p in hf_model.named_parameters()}
    return logits.detach().numpy(), loss.item(), grads, [r.grad.numpy() for r in residuals]


def our_gradients(model, hf_grads, cfg, tied, family="llama"):
    """{our name: (ours, transformers')} for every parameter transformers has."""
    from foundation.files.llama import llama_state_dict, neox_state_dict

    hf_as_ours = (llama_state_dict if family == "llama" else neox_state_dict)(hf_grads, cfg, tied)
    embedding = "model.embed_tokens.weight" if family == "llama" else "gpt_neox.embed_in.weight"
    ours = {name: p.grad for name, p in model.named_parameters()}
    if not isinstance(next(iter(ours.values())), np.ndarray):
        ours = {name: g.numpy() for name, g in ours.items()}
    pairs = {
        name: (ours[name], hf_as_ours[name])
        for name in hf_as_ours
        if name not in ("unembed.b_U", "unembed.W_U")
    }
    if tied:  # one matrix used twice: its gradient is the sum of both uses
        pairs["embed.W_E"] = (ours["embed.W_E"] + ours["unembed.W_U"].T, hf_grads[embedding])
    else:
        pairs["unembed.W_U"] = (ours["unembed.W_U"], hf_as_ours["unembed.W_U"])
    return pairs


@pytest.fixture(scope="module", params=sorted(CASES))
def checkpoint(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    hf_model = make_llama_checkpoint(folder, **CASES[request.param])
    if "family" not in CASES[request.param]:
        assert json.loads((folder / "config.json").read_text())["model_type"] == "llama"
    return request.param, folder, hf_model


@pytest.mark.parametrize("twin", ["numpy", "torch"])
def test_twin_matches_transformers(checkpoint, twin):
    name, folder, hf_model = checkpoint
    package = npi if twin == "numpy" else pti
    model = package.Transformer.from_pretrained(folder)
    cfg = model.cfg
    overrides = CASES[name]
    family = overrides.get("family", "llama")
    if family == "llama":
        assert cfg.normalization_type == "RMS" and cfg.positional == "rotary" and cfg.gated_mlp
        assert cfg.n_key_value_heads == (
            None
            if overrides.get("num_key_value_heads") == 4
            else overrides.get("num_key_value_heads", 2)
        )
    else:
        assert cfg.normalization_type == "LN" and cfg.positional == "rotary" and not cfg.gated_mlp
        assert cfg.rotary_dim == cfg.d_head * overrides.get("rotary_pct", 0.25)
        assert cfg.parallel_attn_mlp == overrides.get("use_parallel_residual", True)
    tokens = np.random.default_rng(3).integers(
        0, SMALL["vocab_size"], (2, SMALL["max_position_embeddings"])
    )
    logits, loss, hf_grads, hf_residual_grads = hf_reference(hf_model, tokens)
    if twin == "numpy":
        # the gradient of the mean next-token loss
        out, cache = model.run_with_cache(tokens, incl_bwd=True)
        our_loss = model.forward(tokens, return_type="loss")
    else:
        model.zero_grad()
        out, cache = model.run_with_cache(torch.from_numpy(tokens), incl_bwd=True)
        our_loss = model(torch.from_numpy(tokens), return_type="loss").item()
        out = out.detach().numpy()
    assert rel_err(out, logits) <= TOL, f"logits {rel_err(out, logits):.1e}"
    assert abs(float(our_loss) - loss) <= TOL * abs(loss)
    pairs = our_gradients(model, hf_grads, cfg, bool(overrides.get("tie_word_embeddings")), family)
    errors = relative_errors(
        {k: a for k, (a, _) in pairs.items()}, {k: b for k, (_, b) in pairs.items()}
    )
    assert set(errors) >= {"blocks.0.attn.W_Q", "blocks.0.mlp.W_in", "ln_final.w", "embed.W_E"}
    # query_key_value: 3 of ours
    split = 2 * cfg.n_layers * (1 + cfg.attn_bias) if family == "gpt_neox" else 0
    assert len(errors) == len(dict(hf_model.named_parameters())) + split, (
        "every parameter of transformers' model"
    )
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOL, f"{worst}: {errors[worst]:.1e}"
    for i, hf_grad in enumerate(hf_residual_grads):
        ours = cache[f"blocks.{i}.hook_resid_post_grad"]
        ours = ours if isinstance(ours, np.ndarray) else ours.numpy()
        assert rel_err(ours, hf_grad) <= TOL, f"resid_post {i}: {rel_err(ours, hf_grad):.1e}"


def test_unpatched_transformers_is_float32_away():
    """Why the patch: transformers' own rotary and RMSNorm round to float32 inside a float64
    model."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        hf_model = make_llama_checkpoint(Path(folder), tokenizer=False)
        model = npi.Transformer.from_pretrained(folder)
    tokens = np.random.default_rng(3).integers(
        0, SMALL["vocab_size"], (2, SMALL["max_position_embeddings"])
    )
    with torch.no_grad():
        plain = hf_model(torch.from_numpy(tokens)).logits.numpy()
        with exact_float64():
            patched = hf_model(torch.from_numpy(tokens)).logits.numpy()
    ours = model(tokens)
    assert rel_err(ours, patched) <= TOL
    assert 1e-10 < rel_err(ours, plain) < 1e-5, f"{rel_err(ours, plain):.1e}"


def test_tokenizer_and_greedy_generation(checkpoint):
    _, folder, hf_model = checkpoint
    model = npi.Transformer.from_pretrained(folder)
    assert model.tokenizer.bos_token == "<s>" and model.tokenizer.eos_token == "</s>"
    tokens = model.to_tokens("the cat sat")
    assert tokens[0, 0] == 1 and model.to_string(tokens[0, 1:]).replace(" ", "") == "thecatsat"
    ours = model.generate(tokens, max_new_tokens=5, do_sample=False, stop_at_eos=False)
    with exact_float64(), torch.no_grad():
        theirs = hf_model.generate(
            torch.from_numpy(tokens),
            max_new_tokens=5,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
            min_new_tokens=5,
        ).numpy()
    assert np.array_equal(np.asarray(ours), theirs)


def edit_config(**changes):
    def edit(folder):
        path = folder / "config.json"
        fields = json.loads(path.read_text())
        fields.update(changes)
        path.write_text(json.dumps(fields))

    return edit


def edit_index(change):
    def edit(folder):
        path = folder / "model.safetensors.index.json"
        index = json.loads(path.read_text())
        change(index["weight_map"])
        path.write_text(json.dumps(index))

    return edit


REFUSALS = {
    "llama3 rope scaling": (
        edit_config(rope_scaling={"rope_type": "llama3", "factor": 8.0}),
        "rope_scaling",
    ),
    "linear rope parameters": (
        edit_config(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0}),
        "rope_type",
    ),
    "a sliding window": (edit_config(sliding_window=8), "sliding_window"),
    "another activation": (edit_config(hidden_act="gelu"), "hidden_act"),
    "biases in the MLP": (edit_config(mlp_bias=True), "mlp_bias"),
    "heads that do not divide": (edit_config(num_key_value_heads=3), "n_key_value_heads"),
    "an index naming the wrong shard": (
        edit_index(
            lambda m: (
                m.update({"model.norm.weight": m["lm_head.weight"]})
                if m["model.norm.weight"] != m["lm_head.weight"]
                else m.update({"model.norm.weight": "elsewhere.safetensors"})
            )
        ),
        "model.safetensors.index.json",
    ),
    "an index outside the folder": (
        edit_index(lambda m: m.update({"model.norm.weight": "../x.safetensors"})),
        "shard",
    ),
}


@pytest.fixture(scope="module")
def sharded_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sharded")
    make_llama_checkpoint(folder, tokenizer=False, max_shard_size="20KB")
    return folder


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_each_refusal_is_one_line(sharded_folder, tmp_path, case):
    import shutil

    edit, says = REFUSALS[case]
    folder = tmp_path / "checkpoint"
    shutil.copytree(sharded_folder, folder)
    edit(folder)
    for package in (npi, pti):
        with pytest.raises((ValueError, FileNotFoundError)) as error:
            package.Transformer.from_pretrained(folder)
        message = str(error.value)
        assert says in message and "\n" not in message, message


def test_n_ctx_caps_the_longest_sequence(sharded_folder):
    model = npi.Transformer.from_pretrained(sharded_folder, n_ctx=8)
    assert model.cfg.n_ctx == 8
    with pytest.raises(ValueError, match="n_ctx"):
        npi.Transformer.from_pretrained(sharded_folder, n_ctx=SMALL["max_position_embeddings"] + 1)


# --- a config's layer count against the files, tokenizer.json that is no regular file ---


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
def test_a_config_claiming_two_million_layers_is_refused_at_once(tmp_path, arch):
    import json as _json

    import numpy_impl as _npi
    from foundation.files.tiny import write_checkpoint

    write_checkpoint(tmp_path, arch=arch)
    fields = _json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(_json.dumps({**fields, "num_hidden_layers": 2_000_000}))
    with pytest.raises(
        ValueError, match=r"num_hidden_layers is 2000000 but the files hold \d+ layers"
    ):
        # 4 positions: the masks alone would fit
        _npi.Transformer.from_pretrained(tmp_path, n_ctx=4)


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_tokenizer_json_must_be_a_regular_file(tmp_path, kind):
    import numpy_impl as _npi
    from foundation.files.tiny import write_checkpoint
    from parity_tests.helpers import HAS_SPECIAL_FILES, SPECIAL_WORDS, special_file, without_hanging

    if not HAS_SPECIAL_FILES:
        pytest.skip("needs FIFOs and /dev/zero")
    write_checkpoint(tmp_path, arch="llama")
    special_file(tmp_path / "tokenizer.json", kind)
    error = without_hanging(lambda: _npi.Transformer.from_pretrained(tmp_path))
    assert isinstance(error, ValueError) and SPECIAL_WORDS[kind] in str(error), repr(error)
