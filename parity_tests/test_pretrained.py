"""Transformer.from_pretrained against transformers' own GPT2LMHeadModel, on checkpoints made here.

Float64 throughout, at the parity tolerance (1e-12 relative): logits, the next-token loss and
every parameter's gradient, in both twins. Hugging Face's attention runs the eager path
(``attn_implementation="eager"``, the textbook matmul-softmax-matmul) so that nothing but the
order of additions differs.

Gradients are compared in Hugging Face's layout: this file turns the twins' gradients into it
(the inverse of the loading map, written here on its own, so a mistake in the map cannot hide
in both). GPT-2 ties its unembedding to the token embedding, so ``wte.weight``'s gradient is
compared with ``W_E.grad + W_U.grad.T``. ``unembed.b_U`` has no counterpart (GPT-2's head has
no bias): its gradient is checked against its exact value, the upstream gradient summed over
batch and positions. ``b_K``'s exact gradient is zero; here it is one third of ``c_attn.bias``,
measured with the rest of that tensor against its largest entry.
"""

import json
import os
import pathlib
import pickle

import numpy as np
import pytest
import safetensors.numpy
import torch

import numpy_impl as npi
import torch_impl as pti
from foundation.contract.agreement import TOL, rel_err
from parity_tests.gpt2_checkpoints import (
    D_VOCAB,
    END_OF_TEXT,
    SMALL,
    hf_tokens,
    make_checkpoint,
    needs_transformers,
)

TWINS = {"numpy": npi.Transformer, "torch": pti.Transformer}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """(folder, the Hugging Face model saved in it): float64, random weights, the tiny tokenizer."""
    folder = tmp_path_factory.mktemp("gpt2")
    return folder, make_checkpoint(folder)


def run_twin(model, tokens):
    """Logits of either twin as an ndarray (the torch twin keeps its graph for backward)."""
    if isinstance(model, npi.Transformer):
        logits = model(tokens)
        return logits, logits
    out = model(torch.from_numpy(tokens))
    return out.detach().numpy(), out


def backward_twin(model, out, dout):
    """Backward of ``dout`` (None: ``out`` is a torch loss)."""
    if isinstance(model, npi.Transformer):
        model.backward(dout)
    else:
        out.backward(None if dout is None else torch.from_numpy(dout))


def twin_grads(model):
    return {
        name: (p.grad if isinstance(p.grad, np.ndarray) else p.grad.numpy())
        for name, p in model.named_parameters()
    }


def in_hf_layout(grads, cfg):
    """The twins' gradients {our key: array} -> {Hugging Face name: array}, written independently of
    the loader."""
    d_model = cfg.d_model
    # tied: both uses of the one matrix
    hf = {
        "wte.weight": grads["embed.W_E"] + grads["unembed.W_U"].T,
        "wpe.weight": grads["pos_embed.W_pos"],
    }
    for i in range(cfg.n_layers):
        ours = {
            name.removeprefix(f"blocks.{i}."): g
            for name, g in grads.items()
            if name.startswith(f"blocks.{i}.")
        }
        h = f"h.{i}."
        hf[h + "ln_1.weight"], hf[h + "ln_1.bias"] = ours["ln1.w"], ours["ln1.b"]
        # [n_heads, d_model, d_head] -> [d_model, n_heads, d_head] -> [d_model, d_model]; then Q | K
        # | V side by side
        hf[h + "attn.c_attn.weight"] = np.concatenate(
            [ours[f"attn.W_{x}"].transpose(1, 0, 2).reshape(d_model, d_model) for x in "QKV"],
            axis=1,
        )
        hf[h + "attn.c_attn.bias"] = np.concatenate(
            [ours[f"attn.b_{x}"].reshape(d_model) for x in "QKV"]
        )
        # [n_heads * d_head, d_model]
        hf[h + "attn.c_proj.weight"] = ours["attn.W_O"].reshape(d_model, d_model)
        hf[h + "attn.c_proj.bias"] = ours["attn.b_O"]
        hf[h + "ln_2.weight"], hf[h + "ln_2.bias"] = ours["ln2.w"], ours["ln2.b"]
        hf[h + "mlp.c_fc.weight"], hf[h + "mlp.c_fc.bias"] = ours["mlp.W_in"], ours["mlp.b_in"]
        hf[h + "mlp.c_proj.weight"], hf[h + "mlp.c_proj.bias"] = (
            ours["mlp.W_out"],
            ours["mlp.b_out"],
        )
    hf["ln_f.weight"], hf["ln_f.bias"] = grads["ln_final.w"], grads["ln_final.b"]
    return hf


def random_tokens(seed, shape=(3, SMALL["n_positions"])):
    return np.random.default_rng(seed).integers(0, D_VOCAB, size=shape)


def hf_next_token_loss(logits, tokens):
    """transformers' causal-LM loss (shift by one, mean cross-entropy), in the logits' own dtype.

    ``GPT2LMHeadModel(labels=...)`` computes the same loss after ``logits.float()``: in float32,
    whatever the model's dtype. The float64 reference is therefore this one.
    """
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), hf_tokens(tokens[:, 1:]).reshape(-1)
    )


@pytest.mark.parametrize("twin", TWINS)
def test_logits_and_loss_match_transformers(checkpoint, twin):
    folder, hf = checkpoint
    model = TWINS[twin].from_pretrained(folder)
    assert model.cfg.dtype == "float64" and model.cfg.d_mlp == SMALL["n_inner"]
    tokens = random_tokens(1)
    with torch.no_grad():
        expected = hf(hf_tokens(tokens), labels=hf_tokens(tokens))
    logits, _ = run_twin(model, tokens)
    assert rel_err(logits, expected.logits) <= TOL["float64"]
    with torch.no_grad():
        loss = float(
            model(tokens if twin == "numpy" else torch.from_numpy(tokens), return_type="loss")
        )
    assert rel_err(np.asarray(loss), hf_next_token_loss(expected.logits, tokens)) <= TOL["float64"]
    # transformers' own, computed in float32
    assert rel_err(np.asarray(loss), expected.loss) <= TOL["float32"]


@pytest.mark.parametrize("upstream", ["random", "loss"])
@pytest.mark.parametrize("twin", TWINS)
def test_every_gradient_matches_transformers(checkpoint, twin, upstream):
    """Every GPT-2 parameter's gradient, from a random upstream gradient on the logits or from the
    loss."""
    folder, hf = checkpoint
    model = TWINS[twin].from_pretrained(folder)
    tokens = random_tokens(2)
    hf.zero_grad(set_to_none=True)
    hf_out = hf(hf_tokens(tokens))
    hf_out.logits.retain_grad()
    logits, out = run_twin(model, tokens)
    if upstream == "random":
        dout = np.random.default_rng(3).standard_normal(logits.shape)  # never all ones
        hf_out.logits.backward(torch.from_numpy(dout))
    else:
        hf_next_token_loss(hf_out.logits, tokens).backward()
        # the twins' own loss: position p predicts tokens[:, p + 1]; the last position predicts
        # nothing
        loss_fn = npi.CrossEntropyLoss() if twin == "numpy" else pti.CrossEntropyLoss()
        if twin == "numpy":
            loss_fn.forward(logits[:, :-1], tokens[:, 1:])
            dout = np.zeros_like(logits)
            dout[:, :-1] = loss_fn.backward()
        else:
            dout = None
            out = loss_fn(out[:, :-1], torch.from_numpy(tokens[:, 1:]))
    backward_twin(model, out, dout)
    grads = twin_grads(model)
    expected = {
        name.removeprefix("transformer."): p.grad.numpy() for name, p in hf.named_parameters()
    }
    actual = in_hf_layout(grads, model.cfg)
    assert sorted(actual) == sorted(expected), (
        "a GPT-2 parameter has no gradient here, or one is extra"
    )
    errors = {name: rel_err(actual[name], expected[name]) for name in expected}
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOL["float64"], f"{worst}: {errors[worst]:.2e}"
    # b_U: no Hugging Face counterpart. Its exact gradient is the upstream gradient on the logits
    # summed over batch and positions (the gradient HF's logits received)
    assert (
        rel_err(grads["unembed.b_U"], hf_out.logits.grad.numpy().sum(axis=(0, 1))) <= TOL["float64"]
    )


def test_greedy_generation_matches_transformers(checkpoint):
    """The same new tokens from both twins and from transformers' generate (greedy, no sampling)."""
    folder, hf = checkpoint
    prompt = random_tokens(4, shape=(2, 6))
    new_tokens = SMALL["n_positions"] - prompt.shape[1]
    with torch.no_grad():
        expected = hf.generate(
            hf_tokens(prompt),
            attention_mask=torch.ones(prompt.shape, dtype=torch.int64),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
        ).numpy()
    for twin in TWINS.values():
        model = twin.from_pretrained(folder)
        generated = model.generate(
            prompt if twin is npi.Transformer else torch.from_numpy(prompt),
            max_new_tokens=new_tokens,
            do_sample=False,
            verbose=False,
        )
        assert np.array_equal(np.asarray(generated), expected), twin.__module__


def test_the_tokenizer_is_gpt2s(checkpoint):
    """model.tokenizer encodes as transformers' GPT2Tokenizer reading the same vocab.json and
    merges.txt."""
    folder, _ = checkpoint
    hf_tokenizer = needs_transformers().GPT2Tokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt")
    )
    for twin in TWINS.values():
        model = twin.from_pretrained(folder)
        for text in [
            "The cat sat on the mat.",
            "  spaces,\tand a new\nline! Ünïcödé 猫",
            END_OF_TEXT + "Hello",
        ]:
            expected = hf_tokenizer.encode(text)
            bos = model.tokenizer.ids[END_OF_TEXT]
            assert np.asarray(model.to_tokens(text)).tolist() == [[bos] + expected], text
            assert model.to_string(expected) == hf_tokenizer.decode(expected), text
        # an id the vocabulary lacks (a model's d_vocab may be larger than its tokenizer's) is
        # shown, not dropped
        missing = len(model.tokenizer) + 7
        assert (
            model.to_string([5, missing, 6])
            == f"{hf_tokenizer.decode([5])}<|id {missing}|>{hf_tokenizer.decode([6])}"
        )
        pieces = [hf_tokenizer.decode([token]) for token in hf_tokenizer.encode(" the mat")]
        # its leading space
        assert model.to_str_tokens(" the mat", prepend_bos=False) == pieces and pieces[0] == " the"


@pytest.mark.parametrize("twin", TWINS)
def test_a_float32_checkpoint_loads_as_float32(tmp_path, twin):
    hf = make_checkpoint(tmp_path, dtype="float32", tokenizer=False)
    model = TWINS[twin].from_pretrained(tmp_path)
    assert model.cfg.dtype == "float32" and model.tokenizer is None
    assert {str(p.data.dtype).removeprefix("torch.") for _, p in model.named_parameters()} == {
        "float32"
    }
    tokens = random_tokens(5)
    with torch.no_grad():
        expected = hf(hf_tokens(tokens)).logits
    assert rel_err(run_twin(model, tokens)[0], expected) <= TOL["float32"]


def test_untied_relu_and_older_names(tmp_path):
    """An untied head (lm_head.weight), a relu MLP, and the names older files use (no
    "transformer.", the causal-mask buffers h.i.attn.bias and h.i.attn.masked_bias): all read, and
    the logits agree."""
    hf = make_checkpoint(
        tmp_path, tokenizer=False, tie_word_embeddings=False, activation_function="relu"
    )
    assert not np.array_equal(
        hf.lm_head.weight.detach().numpy(), hf.transformer.wte.weight.detach().numpy()
    )
    tensors = safetensors.numpy.load_file(tmp_path / "model.safetensors")
    older = {name.removeprefix("transformer."): value for name, value in tensors.items()}
    for i in range(SMALL["n_layer"]):
        older[f"h.{i}.attn.bias"] = np.tril(np.ones((1, 1, 24, 24), dtype=np.uint8))
        older[f"h.{i}.attn.masked_bias"] = np.array(-1e4, dtype=np.float32)
    safetensors.numpy.save_file(older, tmp_path / "model.safetensors", metadata={"format": "pt"})
    tokens = random_tokens(6)
    with torch.no_grad():
        expected = hf(hf_tokens(tokens)).logits
    for twin in TWINS.values():
        model = twin.from_pretrained(tmp_path)
        assert model.cfg.act_fn == "relu"
        assert rel_err(run_twin(model, tokens)[0], expected) <= TOL["float64"]


# --- refusals: each a one-line error naming what is wrong
# ---------------------------------------------


class RunsCode:
    """Unpickling this touches a marker file: the proof that a loader unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def edit_config(**changes):
    def edit(folder):
        path = folder / "config.json"
        fields = json.loads(path.read_text())
        fields.update(changes)
        path.write_text(json.dumps(fields))

    return edit


def edit_tensors(change):
    """Rewrite model.safetensors with ``change(tensors)`` applied (names as stored)."""

    def edit(folder):
        path = folder / "model.safetensors"
        tensors = safetensors.numpy.load_file(path)
        change(tensors)
        safetensors.numpy.save_file(tensors, path, metadata={"format": "pt"})

    return edit


def write(name, content):
    def edit(folder):
        (folder / name).write_bytes(content if isinstance(content, bytes) else content.encode())

    return edit


def remove(*names):
    def edit(folder):
        for name in names:
            os.remove(folder / name)

    return edit


def only_a_pickle(folder):
    os.remove(folder / "model.safetensors")
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(RunsCode(folder / "UNPICKLED")))


def big_vocabulary(folder):
    (folder / "vocab.json").write_text(json.dumps({f"t{i}": i for i in range(D_VOCAB + 5)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")


W = "transformer."
REFUSALS = {
    # case: (edit of a good checkpoint folder, what the one line must say)
    "a missing folder": (None, "no checkpoint folder"),
    "a file, not a folder": (None, "is a file"),
    "no config.json": (remove("config.json"), "no config.json"),
    "config.json not JSON": (write("config.json", "{oops"), "not valid JSON"),
    "config.json not an object": (write("config.json", "[1, 2]"), "must hold a JSON object"),
    "another model type": (edit_config(model_type="bert"), "model_type"),
    "another activation": (edit_config(activation_function="gelu"), "activation_function"),
    "another LayerNorm epsilon": (edit_config(layer_norm_epsilon=1e-6), "layer_norm_epsilon"),
    "cross-attention": (edit_config(add_cross_attention=True), "add_cross_attention"),
    "scores scaled by layer": (
        edit_config(scale_attn_by_inverse_layer_idx=True),
        "scale_attn_by_inverse_layer_idx",
    ),
    "reordered, upcast attention": (
        edit_config(reorder_and_upcast_attn=True),
        "reorder_and_upcast_attn",
    ),
    "unscaled attention": (edit_config(scale_attn_weights=False), "scale_attn_weights"),
    "a number for a bool": (edit_config(scale_attn_weights=1), "scale_attn_weights"),
    "n_inner not the file's": (edit_config(n_inner=50), "mlp.c_fc.weight has shape"),
    "n_embd not divisible by n_head": (edit_config(n_head=5), "divisible by n_head"),
    "aliases that disagree": (edit_config(hidden_size=32), "hidden_size"),
    "a vocab_size that is not an int": (edit_config(vocab_size="big"), "vocab_size"),
    "tie_word_embeddings not a bool": (
        edit_config(tie_word_embeddings="yes"),
        "tie_word_embeddings",
    ),
    "untied without lm_head": (
        edit_config(tie_word_embeddings=False),
        "missing tensors: lm_head.weight",
    ),
    "only pytorch_model.bin": (only_a_pickle, "pickle"),
    "a sharded checkpoint": (
        lambda f: (remove("model.safetensors")(f), write("model.safetensors.index.json", "{}")(f)),
        "sharded",
    ),
    "no weights at all": (remove("model.safetensors"), "no model.safetensors"),
    "model.safetensors not safetensors": (
        write("model.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00garbage!"),
        "not a readable safetensors file",
    ),
    "integer tensors": (
        edit_tensors(lambda t: t.update({k: v.astype(np.int32) for k, v in t.items()})),
        "I32",
    ),
    "mixed dtypes": (
        edit_tensors(lambda t: t.update({W + "ln_f.bias": t[W + "ln_f.bias"].astype(np.float32)})),
        "mix dtypes",
    ),
    "a missing tensor": (
        edit_tensors(lambda t: t.pop(W + "h.1.mlp.c_proj.bias")),
        "missing tensors: h.1.mlp.c_proj.bias",
    ),
    "an extra tensor": (
        edit_tensors(lambda t: t.update({W + "h.0.attn.q_attn.weight": np.zeros((24, 24))})),
        "unexpected tensors: h.0.attn.q_attn.weight",
    ),
    "a tensor stored twice": (
        edit_tensors(lambda t: t.update({"wte.weight": t[W + "wte.weight"]})),
        "stored twice",
    ),
    "a misshaped tensor": (
        edit_tensors(lambda t: t.update({W + "wpe.weight": np.zeros((23, 24))})),
        "wpe.weight has shape [23, 24]",
    ),
    "lm_head that is not wte, tied": (
        edit_tensors(lambda t: t.update({"lm_head.weight": np.ones((D_VOCAB, 24))})),
        "lm_head.weight differs from wte.weight",
    ),
    "vocab.json without merges.txt": (remove("merges.txt"), "needs both"),
    "a malformed vocab.json": (write("vocab.json", "not json"), "not a byte-level BPE vocabulary"),
    "a vocabulary larger than the model's": (big_vocabulary, f"has {D_VOCAB + 5} tokens"),
}


@pytest.fixture(scope="module")
def good_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("good")
    make_checkpoint(folder)
    return folder


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_each_refusal_is_one_line(good_folder, tmp_path, case):
    import shutil

    edit, says = REFUSALS[case]
    folder = tmp_path / "checkpoint"
    shutil.copytree(good_folder, folder)
    if case == "a missing folder":
        folder = tmp_path / "nowhere"
    elif case == "a file, not a folder":
        folder = folder / "config.json"
    else:
        edit(folder)
    for twin in TWINS.values():
        with pytest.raises((ValueError, OSError)) as refused:
            twin.from_pretrained(folder)
        message = str(refused.value)
        assert "\n" not in message and says in message, f"{twin.__module__}: {message}"


def test_a_pickle_is_never_unpickled(tmp_path):
    """The pickle in only_a_pickle runs code when unpickled (shown here); from_pretrained never runs
    it."""
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    only_a_pickle(tmp_path)
    for twin in TWINS.values():
        with pytest.raises(ValueError, match="pickle"):
            twin.from_pretrained(tmp_path)
    assert not (tmp_path / "UNPICKLED").exists()
    pickle.loads((tmp_path / "pytorch_model.bin").read_bytes())  # what loading it would have done
    assert (tmp_path / "UNPICKLED").exists()


# --- files that are no regular files, sizes a config claims, tokenizer files ---

import shutil as _shutil  # noqa: E402

import numpy_impl as _npi  # noqa: E402
import torch_impl as _pti  # noqa: E402
from parity_tests.helpers import (  # noqa: E402
    NEEDS_SPECIAL_FILES,
    SPECIAL,
    SPECIAL_WORDS,  # noqa: E402
    special_file,
    without_hanging,
)


def _checkpoint(folder, **overrides):
    from parity_tests.gpt2_checkpoints import make_checkpoint

    make_checkpoint(folder, **{"n_layer": 1, **overrides})
    return folder


@pytest.fixture(scope="module")
def one_layer_checkpoint(tmp_path_factory):
    return _checkpoint(tmp_path_factory.mktemp("checkpoint"))


@NEEDS_SPECIAL_FILES
@pytest.mark.parametrize("kind", SPECIAL)
@pytest.mark.parametrize("name", ["vocab.json", "merges.txt", "config.json"])
def test_from_pretrained_takes_only_regular_files(one_layer_checkpoint, tmp_path, name, kind):
    folder = tmp_path / "copy"
    _shutil.copytree(one_layer_checkpoint, folder)
    special_file(folder / name, kind)
    error = without_hanging(lambda: _npi.Transformer.from_pretrained(folder))
    assert isinstance(error, ValueError), repr(error)
    assert name in str(error) and SPECIAL_WORDS[kind] in str(error), str(error)
    assert "\n" not in str(error)


@pytest.mark.parametrize("side", ["numpy", "torch"])
def test_a_config_claiming_two_million_layers_is_refused_before_building_them(
    one_layer_checkpoint, tmp_path, side
):
    import json
    import tracemalloc

    folder = tmp_path / "copy"
    _shutil.copytree(one_layer_checkpoint, folder)
    fields = json.loads((folder / "config.json").read_text())
    claim = {**fields, "n_layer": 2_000_000, "n_positions": 4}
    (folder / "config.json").write_text(json.dumps(claim))
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"n_layer is 2000000 but the file holds 1 blocks"):
            {"numpy": _npi, "torch": _pti}[side].Transformer.from_pretrained(folder)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, f"{peak / 2**20:.0f} MiB allocated before the refusal"


@pytest.mark.parametrize(
    "content, words",
    [
        (b"[" * 200_000 + b"]" * 200_000, "RecursionError"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b'{"a": "b"}', "map each token to an int"),
    ],
    ids=["deep JSON", "not UTF-8", "ids not ints"],
)
def test_a_malformed_vocab_json_is_one_line(one_layer_checkpoint, tmp_path, content, words):
    folder = tmp_path / "copy"
    _shutil.copytree(one_layer_checkpoint, folder)
    (folder / "vocab.json").write_bytes(content)
    with pytest.raises(ValueError, match=words) as raised:
        _npi.Transformer.from_pretrained(folder)
    assert "\n" not in str(raised.value)


def test_a_tokenizer_file_over_its_limit_is_refused_unread(
    one_layer_checkpoint, tmp_path, monkeypatch
):
    from foundation.lens.vocab import BytePairTokenizer

    folder = tmp_path / "copy"
    _shutil.copytree(one_layer_checkpoint, folder)
    monkeypatch.setattr(BytePairTokenizer, "MAX_FILE_BYTES", 1000)
    with pytest.raises(ValueError, match=r"vocab.json' is [\d,]+ bytes, over the 1,000"):
        _npi.Transformer.from_pretrained(folder)


@pytest.fixture(scope="module")
def short_alphabet(tmp_path_factory):
    """A byte-level BPE that knows only the bytes of 'abc ', as a hand-made vocabulary might."""
    import json

    from foundation.lens.vocab import BytePairTokenizer

    folder = tmp_path_factory.mktemp("alphabet")
    (folder / "vocab.json").write_text(json.dumps({"a": 0, "b": 1, "c": 2, "\u0120": 3, "ab": 4}))
    (folder / "merges.txt").write_text("#version: 0.2\na b\n")
    return BytePairTokenizer(folder / "vocab.json", folder / "merges.txt")


def test_a_vocabulary_missing_byte_symbols_refuses_what_it_cannot_spell(short_alphabet):
    assert short_alphabet.encode("ab c") == [4, 3, 2]
    with pytest.raises(ValueError, match=r"cannot spell 'xz'"):
        short_alphabet.encode("abx cz")


@NEEDS_SPECIAL_FILES
@pytest.mark.parametrize("kind", SPECIAL)
def test_model_safetensors_must_be_a_regular_file(one_layer_checkpoint, tmp_path, kind):
    _shutil.copytree(one_layer_checkpoint, tmp_path / "copy")
    special_file(tmp_path / "copy" / "model.safetensors", kind)
    error = without_hanging(lambda: _npi.Transformer.from_pretrained(tmp_path / "copy"))
    assert isinstance(error, ValueError) and SPECIAL_WORDS[kind] in str(error), repr(error)
