"""A hostile user's checks: no silently wrong gradient, no hostile file, no crash.

Each class of misuse has its cases here, run on both twins wherever both are concerned:

1. stale state: a backward after a forward that raised part-way, or after a hook that ran the
   same model again, is right or refused with a message naming the component;
2. the weights-file loader: every malformed file is one ValueError naming the file, and a
   file's claims are checked against what it holds before anything large is allocated;
3. the twins take the same input and refuse the same input with the same kind of error;
4. saved files get the permissions ``np.save`` would give, and saving stays atomic;
5. clipping huge gradients, and values that do not fit the model's dtype at load;
6. arguments of the wrong kind (optimiser settings, config fields, hook return values, tokens).

The command line (class 7) is in ``test_cli.py``; the twins' agreement over random configs
in ``test_properties.py``.
"""

import io
import json
import os
import re
import stat
import struct
import time
import zipfile

import numpy as np
import pytest
import torch

import numpy_impl as npi
import torch_impl as pti
from numpy_impl.optim import SGD, Adam, AdamW, LambdaLR, clip_grad_norm
from parity_tests.helpers import load_into_twin, parametrize_pairwise, randomize, rel_err

CFG = npi.TransformerConfig(d_vocab=11, d_model=12, n_heads=3, n_layers=2, n_ctx=6)
TOKENS = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
OTHER_TOKENS = np.array([[9, 8, 7, 6], [0, 1, 0, 1]])


def twins(cfg=CFG, seed=0):
    np_model = npi.Transformer(cfg, seed=seed)
    randomize(np_model, seed=seed)
    torch_model = pti.Transformer(cfg)
    load_into_twin(np_model, torch_model)
    return np_model, torch_model


def random_dout(shape, dtype="float64", seed=1):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def grads(model):
    return {name: np.array(p.grad.detach().numpy() if hasattr(p.grad, "detach") else p.grad, copy=True)
            for name, p in model.named_parameters()}


def assert_same_grads(actual, expected, tol=1e-12):
    largest = max(np.abs(g).max() for g in expected.values())
    for name in expected:
        assert rel_err(actual[name], expected[name], scale=largest) <= tol, name


class Boom(Exception):
    pass


def raise_boom(x, hook):
    raise Boom(hook.name)


# ---------------------------------------------------------------- 1. stale state

def component_cases():
    """(name, component, good input, other input of the same shape, the hook point to break or None)."""
    cfgs = {
        "pre": CFG,
        "post": npi.TransformerConfig(d_vocab=11, d_model=12, n_heads=3, n_layers=1, n_ctx=6, normalization="post"),
        "none-relu": npi.TransformerConfig(d_vocab=11, d_model=12, n_heads=3, n_layers=1, n_ctx=6,
                                           normalization=None, act_fn="relu"),
        "attn-only": npi.TransformerConfig(d_vocab=11, d_model=12, n_heads=3, n_layers=1, n_ctx=6, attn_only=True),
    }
    rng = np.random.default_rng(0)
    x1, x2 = rng.standard_normal((2, 2, 4, 12))
    cases = [
        ("LayerNorm", npi.LayerNorm(CFG), x1, x2, "hook_normalized"),
        ("MultiHeadAttention", npi.MultiHeadAttention(CFG, 0), x1, x2, "hook_pattern"),
        ("FeedForward", npi.FeedForward(CFG, 0), x1, x2, "hook_post"),
        ("FeedForward-relu", npi.FeedForward(cfgs["none-relu"], 0), x1, x2, "hook_pre"),
        ("Unembed", npi.Unembed(CFG, 0), x1, x2, None),
        ("TokenEmbedding", npi.TokenEmbedding(CFG, 0), TOKENS, OTHER_TOKENS, None),
        ("LearnedPositionalEmbedding", npi.LearnedPositionalEmbedding(CFG, 0), TOKENS, OTHER_TOKENS, None),
        ("SinusoidalPositionalEncoding", npi.SinusoidalPositionalEncoding(CFG), TOKENS, OTHER_TOKENS, None),
    ]
    for key, cfg in cfgs.items():
        block = npi.TransformerBlock(cfg, 0)
        point = "hook_resid_post" if cfg.attn_only else "hook_mlp_out"
        cases.append((f"TransformerBlock-{key}", block, x1, x2, point))
        cases.append((f"TransformerBlock-{key}-attn", npi.TransformerBlock(cfg, 0), x1, x2, "attn.hook_z"))
    return cases


COMPONENTS = component_cases()


def hook_point(module, dotted):
    for name in dotted.split("."):
        module = getattr(module, name)
    return module


@pytest.mark.parametrize("case", COMPONENTS, ids=[c[0] for c in COMPONENTS])
def test_backward_after_a_forward_that_raised_is_refused(case):
    name, module, good, other, point = case
    randomize(module, seed=3)
    out = module(good)
    if point is None:
        bad = other[..., :1] if other.ndim == 3 else np.full_like(other, 99)  # fails the input check
        with pytest.raises((ValueError, TypeError)):
            module(bad)
    else:
        hook_point(module, point).add_hook(raise_boom)
        with pytest.raises(Boom):
            module(other)
        hook_point(module, point).remove_hooks()
    dout = random_dout(out.shape)
    component = name.split("-")[0]
    with pytest.raises(ValueError, match=rf"{component}\.backward\(\).*{component}\.forward\(\)"):
        module.backward(dout)


@pytest.mark.parametrize("point", ["hook_embed", "blocks.0.attn.hook_pattern", "blocks.1.mlp.hook_post",
                                   "ln_final.hook_scale"])
def test_model_backward_after_a_forward_that_raised_is_refused(point):
    model, _ = twins()
    out = model(TOKENS)
    with pytest.raises(Boom):
        model.run_with_hooks(OTHER_TOKENS, fwd_hooks=[(point, raise_boom)])
    with pytest.raises(ValueError, match=r"Transformer\.backward\(\).*Transformer\.forward\(\)"):
        model.backward(random_dout(out.shape))
    # a fresh forward makes backward possible again, and right
    out = model(OTHER_TOKENS)
    model.backward(random_dout(out.shape))


def test_loss_backward_after_a_forward_that_raised_is_refused():
    loss = npi.CrossEntropyLoss()
    logits = random_dout((2, 4, 11))
    loss(logits, TOKENS % 11)
    with pytest.raises(ValueError):
        loss(logits, np.full((2, 4), 11))
    with pytest.raises(ValueError, match=r"CrossEntropyLoss\.backward\(\).*CrossEntropyLoss\.forward\(\)"):
        loss.backward()


NESTED_POINTS = ["hook_embed", "blocks.0.hook_resid_mid", "blocks.1.hook_resid_pre", "blocks.1.attn.hook_q",
                 "blocks.1.hook_resid_post", "ln_final.hook_normalized"]


@parametrize_pairwise(side=["numpy", "torch"], inner=["forward", "run_with_cache", "run_with_hooks"],
                      point=NESTED_POINTS)
def test_a_hook_that_runs_the_same_model_again(point, inner, side):
    """The outer backward's gradients are those of the run without the nested one."""
    np_model, torch_model = twins()
    model = np_model if side == "numpy" else torch_model
    dout = random_dout((2, 4, 11))
    model.zero_grad()
    model.run_with_hooks(TOKENS, dout=dout)
    expected = grads(model)
    calls = []

    def run_again(x, hook):
        if not calls:  # once: the hook is still on during the inner run
            calls.append(hook.name)
            if inner == "forward":
                model(OTHER_TOKENS)
            elif inner == "run_with_cache":
                model.run_with_cache(OTHER_TOKENS)
            else:
                model.run_with_hooks(OTHER_TOKENS, fwd_hooks=[("blocks.0.hook_attn_out", lambda a, hook: a * 0)])

    model.zero_grad()
    model.run_with_hooks(TOKENS, fwd_hooks=[(point, run_again)], dout=dout)
    assert calls == [model.hook_dict[point].name]  # hook_embed is embed.hook_out (an alias), ...
    assert_same_grads(grads(model), expected)


def test_a_backward_of_the_inner_run_inside_a_hook():
    """numpy: refused with a clear message (the outer forward is still running); torch: allowed."""
    np_model, torch_model = twins()

    calls = []

    def inner_backward(x, hook):
        if not calls:
            calls.append(hook.name)
            np_model.run_with_cache(OTHER_TOKENS, incl_bwd=True)

    np_model.run_with_cache(TOKENS)  # a finished forward first
    with pytest.raises(ValueError, match=r"Transformer\.forward\(\).*(running|finish)"):
        np_model.run_with_hooks(TOKENS, fwd_hooks=[("blocks.1.hook_resid_pre", inner_backward)])
    # the model is usable afterwards
    np_model.zero_grad()
    np_model.run_with_hooks(TOKENS, dout=random_dout((2, 4, 11)))


# ---------------------------------------------------------------- 2. the weights-file loader

SMALL = npi.TransformerConfig(d_vocab=5, d_model=4, n_heads=2, n_layers=1, n_ctx=3, d_mlp=4)


def npz_bytes(arrays, compressed=False):
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    return buffer.getvalue()


def valid_arrays(cfg=SMALL):
    arrays = dict(npi.Transformer(cfg).state_dict())
    arrays["__config__"] = np.array(cfg.to_json())
    return arrays


def with_config(text, cfg=SMALL):
    arrays = valid_arrays(cfg)
    arrays["__config__"] = np.array(text)
    return npz_bytes(arrays)


def with_fields(**fields):
    d = SMALL.to_dict()
    d.update(fields)
    return with_config(json.dumps(d))


def zip_of(members, compression=zipfile.ZIP_STORED):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def npy_bytes(array):
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def valid_members(cfg=SMALL):
    return {f"{name}.npy": npy_bytes(a) for name, a in valid_arrays(cfg).items()}


def replace_member(name, data, cfg=SMALL, compression=zipfile.ZIP_STORED):
    members = valid_members(cfg)
    members[name] = data
    return zip_of(members, compression)


def npy_header(descr, shape, fortran=False):
    header = repr({"descr": descr, "fortran_order": fortran, "shape": shape}).encode("latin1")
    header += b" " * ((64 - (10 + len(header) + 1) % 64) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


def corrupt_deflate():
    data = bytearray(zip_of(valid_members(), zipfile.ZIP_DEFLATED))
    # the first member's compressed data starts after its 30-byte local header and name
    name_len = struct.unpack("<H", data[26:28])[0]
    start = 30 + name_len
    data[start:start + 8] = b"\xff" * 8
    return bytes(data)


def unknown_compression():
    data = bytearray(zip_of(valid_members()))
    # method field, in every local header and central directory entry: 99 is not a zip method
    for signature, offset in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
        start = 0
        while (i := data.find(signature, start)) >= 0:
            data[i + offset:i + offset + 2] = struct.pack("<H", 99)
            start = i + 4
    return bytes(data)


def nested_json(depth):
    return "[" * depth + "]" * depth


TINY_HUGE = {
    "n_layers 10^7": dict(n_layers=10**7),
    "d_vocab 10^9": dict(d_vocab=10**9),
    "d_model 10^6": dict(d_model=10**6, n_heads=1),
    "n_ctx 10^7 sinusoidal": dict(n_ctx=10**7, positional="sinusoidal"),
    "n_ctx 10^5 sinusoidal": dict(n_ctx=10**5, positional="sinusoidal"),
    "d_mlp 10^9": dict(d_mlp=10**9),
    "n_heads 10^7": dict(n_heads=10**7, d_head=1),
}

BAD_FILES = {
    "empty": b"",
    "random bytes": bytes(np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8)),
    "text": b"hello, I am not a weights file\n",
    "truncated zip": npz_bytes(valid_arrays())[:-100],
    "half a zip": npz_bytes(valid_arrays())[: len(npz_bytes(valid_arrays())) // 2],
    "a single .npy": npy_bytes(np.zeros(3)),
    "a pickle": b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00K\x01.",
    "corrupt deflate data": corrupt_deflate(),
    "unknown compression": unknown_compression(),
    "bad npy magic": replace_member("embed.W_E.npy", b"NOTNUMPY" + b"\x00" * 100),
    "garbage npy header": replace_member("embed.W_E.npy", b"\x93NUMPY\x01\x00\x10\x00{garbage!!!!!!}\n"),
    "npy version 9": replace_member("embed.W_E.npy", b"\x93NUMPY\x09\x00" + npy_bytes(np.zeros((5, 4)))[8:]),
    "object dtype": replace_member("embed.W_E.npy", npy_header("|O", (5, 4)) + b"\x80\x04N." * 4),
    "complex weights": replace_member("embed.W_E.npy", npy_bytes(np.zeros((5, 4), dtype=complex))),
    "string weights": replace_member("embed.W_E.npy", npy_bytes(np.full((5, 4), "a"))),
    "bool weights": replace_member("embed.W_E.npy", npy_bytes(np.zeros((5, 4), dtype=bool))),
    "structured weights": replace_member("embed.W_E.npy", npy_bytes(np.zeros((5, 4), dtype=[("a", "f8")]))),
    "huge claimed shape": replace_member("embed.W_E.npy", npy_header("<f8", (10**12, 4)) + b"\x00" * 64),
    "data shorter than header": replace_member("embed.W_E.npy", npy_header("<f8", (5, 4)) + b"\x00" * 16),
    "data longer than header": replace_member("embed.W_E.npy", npy_bytes(np.zeros((5, 4))) + b"\x00" * 64),
    "wrong shape": replace_member("embed.W_E.npy", npy_bytes(np.zeros((4, 5)))),
    "negative shape": replace_member("embed.W_E.npy", npy_header("<f8", (-5, 4)) + b"\x00" * 64),
    "member not .npy": zip_of({**valid_members(), "readme.txt": b"hi"}),
    "extra array": zip_of({**valid_members(), "blocks.7.attn.W_Q.npy": npy_bytes(np.zeros(1))}),
    "missing array": zip_of({k: v for k, v in valid_members().items() if k != "embed.W_E.npy"}),
    "duplicate member": zip_of(valid_members()) ,  # replaced below: zipfile warns on duplicates
    "no config": zip_of({k: v for k, v in valid_members().items() if k != "__config__.npy"}),
    "config not JSON": with_config("{not json"),
    "config a list": with_config("[1, 2]"),
    "config a number": with_config("3"),
    "config nested 10^5 deep": with_config(nested_json(100_000)),
    "config dict nested deep": with_config('{"a":' * 50_000 + "1" + "}" * 50_000),
    "config unknown field": with_fields(colour="blue"),
    "config bad value": with_fields(n_layers=0),
    "config float field": with_fields(d_model=4.5),
    "config string field": with_fields(d_model="4"),
    "config bool field": with_fields(n_layers=True),
    "config wrong act_fn": with_fields(act_fn="tanh"),
    "config huge int": with_fields(n_layers=10**400),
    "config NaN": with_config(SMALL.to_json().replace('"d_model": 4', '"d_model": NaN')),
    "config not a str array": replace_member("__config__.npy", npy_bytes(np.zeros(3))),
    "config 2-D str array": replace_member("__config__.npy", npy_bytes(np.array([[SMALL.to_json()]]))),
    "config huge string": replace_member("__config__.npy", npy_header("<U100000000", ()) + b"\x00" * 64),
    **{f"tiny file claims {k}": with_fields(**v) for k, v in TINY_HUGE.items()},
}


def duplicate_member_zip():
    buffer = io.BytesIO()
    members = valid_members()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        with pytest.warns(UserWarning):
            archive.writestr("embed.W_E.npy", npy_bytes(np.zeros((5, 4))))
    return buffer.getvalue()


BAD_FILES["duplicate member"] = duplicate_member_zip()


@pytest.mark.parametrize("side", ["numpy", "torch"])
@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_malformed_weights_file_is_one_ValueError_naming_it(tmp_path, case, side):
    path = tmp_path / "weights.npz"
    path.write_bytes(BAD_FILES[case])
    model_class = npi.Transformer if side == "numpy" else pti.Transformer
    start = time.perf_counter()
    with pytest.raises(ValueError, match=re.escape(repr(str(path)))):
        model_class.load(path)
    assert time.perf_counter() - start < 2.0, "the file's claims must be checked before allocating"


def test_a_valid_file_still_loads_from_either_compression(tmp_path):
    for compressed in (False, True):
        path = tmp_path / f"w{compressed}.npz"
        path.write_bytes(npz_bytes(valid_arrays(), compressed))
        for model_class in (npi.Transformer, pti.Transformer):
            model = model_class.load(path)
            assert model.cfg == SMALL


def test_a_folder_or_missing_file_is_named(tmp_path):
    for model_class in (npi.Transformer, pti.Transformer):
        with pytest.raises(FileNotFoundError, match="no weights file"):
            model_class.load(tmp_path / "missing.npz")
        with pytest.raises((FileNotFoundError, ValueError), match=re.escape(str(tmp_path))):
            model_class.load(tmp_path)


# ---------------------------------------------------------------- 3. the twins take the same input

INT_DTYPES = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"]


@pytest.mark.parametrize("dtype", INT_DTYPES)
def test_every_integer_dtype_is_read_as_ids(dtype):
    np_model, torch_model = twins()
    expected = np_model(TOKENS)
    tokens = TOKENS.astype(dtype)
    assert rel_err(np_model(tokens), expected) == 0
    assert rel_err(torch_model(tokens), expected) <= 1e-12
    if hasattr(torch, dtype):
        assert rel_err(torch_model(torch.from_numpy(tokens)), expected) <= 1e-12


EXOTIC_GOOD = {
    "negative strides": lambda: TOKENS[::-1, ::-1],
    "read-only": lambda: _read_only(TOKENS),
    "fortran order": lambda: np.asfortranarray(TOKENS),
    "a strided view": lambda: np.repeat(TOKENS, 2, axis=1)[:, ::2],
    "a list": lambda: TOKENS.tolist(),
    "a tuple": lambda: tuple(map(tuple, TOKENS.tolist())),
    "np.matrix": lambda: _matrix(TOKENS),
    "big-endian": lambda: TOKENS.astype(">i8"),
    "a memmap-like subclass": lambda: TOKENS.view(type("Sub", (np.ndarray,), {})),
}


def _matrix(a):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)  # np.matrix is discouraged, not gone
        return np.asmatrix(a)


def _read_only(a):
    a = a.copy()
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("case", sorted(EXOTIC_GOOD))
def test_unusual_but_valid_token_arrays(case):
    np_model, torch_model = twins()
    tokens = EXOTIC_GOOD[case]()
    expected = np_model(np.array(np.asarray(tokens), dtype=np.int64))
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np_out = np_model(tokens)
        torch_out = torch_model(tokens)
    assert type(np_out) is np.ndarray and np_out.shape == expected.shape
    assert rel_err(np_out, expected) == 0
    assert rel_err(torch_out, expected) <= 1e-12


EXOTIC_BAD = {
    "float": lambda: TOKENS.astype(float),
    "float16": lambda: TOKENS.astype(np.float16),
    "complex": lambda: TOKENS.astype(complex),
    "bool": lambda: TOKENS > 3,
    "object ints": lambda: TOKENS.astype(object),
    "strings": lambda: TOKENS.astype(str),
    "structured": lambda: np.zeros((2, 4), dtype=[("a", "i8")]),
    "datetime": lambda: TOKENS.astype("datetime64[s]"),
    "timedelta": lambda: TOKENS.astype("timedelta64[s]"),
    "masked array": lambda: np.ma.masked_array(TOKENS, mask=TOKENS > 5),
    "a list of floats": lambda: [[1.0, 2.0]],
    "a list of bools": lambda: [[True, False]],
    "a ragged list": lambda: [[1, 2], [3]],
    "a list of huge ints": lambda: [[2**70, 1]],
    "a list of strings": lambda: [["a", "b"]],
    "None": lambda: None,
    "a str": lambda: "1 2 3",
    "a dict": lambda: {"tokens": [1, 2]},
    "a scalar": lambda: np.int64(3),
    "rank 1": lambda: TOKENS[0],
    "rank 3": lambda: TOKENS[None],
    "empty": lambda: np.zeros((0, 3), dtype=int),
    "too long": lambda: np.zeros((1, 7), dtype=int),
    "id too large": lambda: np.full((1, 2), 11),
    "negative id": lambda: np.full((1, 2), -1),
    "uint64 too large": lambda: np.full((1, 2), 2**63 + 5, dtype=np.uint64),
    "int8 negative": lambda: np.full((1, 2), -1, dtype=np.int8),
}


def _kind(fn):
    try:
        fn()
    except TypeError as error:
        return "TypeError", str(error)
    except ValueError as error:
        return "ValueError", str(error)
    except Exception as error:
        return f"{type(error).__name__} (neither)", str(error)
    return "accepted", ""


@pytest.mark.parametrize("case", sorted(EXOTIC_BAD))
def test_both_twins_refuse_the_same_tokens_with_the_same_kind_of_error(case):
    np_model, torch_model = twins()
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np_kind, np_message = _kind(lambda: np_model(EXOTIC_BAD[case]()))
        torch_kind, torch_message = _kind(lambda: torch_model(EXOTIC_BAD[case]()))
    assert np_kind in ("TypeError", "ValueError"), np_message
    assert torch_kind == np_kind, (np_message, torch_message)
    assert "tokens" in np_message and "tokens" in torch_message


TORCH_BAD = {
    "float": lambda: torch.tensor([[1.0, 2.0]]),
    "bool": lambda: torch.tensor([[True, False]]),
    "complex": lambda: torch.tensor([[1 + 0j]]),
    "uint8 out of range": lambda: torch.full((1, 2), 200, dtype=torch.uint8),
    "int8 negative": lambda: torch.full((1, 2), -1, dtype=torch.int8),
    "requires_grad float": lambda: torch.ones(1, 2, requires_grad=True),
    "empty": lambda: torch.zeros(1, 0, dtype=torch.long),
}


@pytest.mark.parametrize("case", sorted(TORCH_BAD))
def test_bad_torch_tokens_are_refused(case):
    _, torch_model = twins()
    kind, message = _kind(lambda: torch_model(TORCH_BAD[case]()))
    assert kind in ("TypeError", "ValueError") and "tokens" in message, (kind, message)


@pytest.mark.parametrize("dtype", INT_DTYPES)
def test_loss_targets_of_every_integer_dtype(dtype):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, 4, 11))
    targets = TOKENS.astype(dtype)
    expected = npi.CrossEntropyLoss()(logits, TOKENS)
    assert npi.CrossEntropyLoss()(logits, targets) == expected
    twin = pti.CrossEntropyLoss()
    assert abs(float(twin(torch.from_numpy(logits), torch.from_numpy(targets.astype(np.int64) if dtype.startswith("uint") and dtype != "uint8" else targets))) - expected) < 1e-12


def test_loss_targets_int32_torch():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, 4, 11))
    expected = npi.CrossEntropyLoss()(logits, TOKENS)
    for dtype in (torch.int32, torch.int16, torch.uint8, torch.int8):
        got = pti.CrossEntropyLoss()(torch.from_numpy(logits), torch.from_numpy(TOKENS).to(dtype))
        assert abs(float(got) - expected) < 1e-12, dtype


def test_state_dicts_of_either_library():
    np_model, torch_model = twins()
    fresh_np, fresh_torch = npi.Transformer(CFG, seed=5), pti.Transformer(CFG, seed=5)
    fresh_np.load_state_dict({k: v.detach() for k, v in torch_model.state_dict().items()})
    fresh_torch.load_state_dict(np_model.state_dict())
    for name, value in np_model.state_dict().items():
        assert np.array_equal(fresh_np.state_dict()[name], value)
        assert np.array_equal(fresh_torch.state_dict()[name].numpy(), value)


def test_component_state_dicts_of_either_library():
    for np_class, torch_class in ((npi.LayerNorm, pti.LayerNorm), (npi.MultiHeadAttention, pti.MultiHeadAttention),
                                  (npi.FeedForward, pti.FeedForward), (npi.Unembed, pti.Unembed)):
        np_module, torch_module = np_class(CFG), torch_class(CFG)
        randomize(np_module, seed=2)
        torch_module.load_state_dict(np_module.state_dict())
        np_module.load_state_dict(torch_module.state_dict())
        for name, value in np_module.state_dict().items():
            assert np.array_equal(torch_module.state_dict()[name].numpy(), value)


@pytest.mark.parametrize("dout_dtype", ["float32", "float16", "longdouble"])
def test_dout_of_another_dtype_is_refused(dout_dtype):
    np_model, torch_model = twins()
    out = np_model(TOKENS)
    dout = random_dout(out.shape).astype(dout_dtype)
    with pytest.raises(TypeError, match="dout.*float64"):
        np_model.backward(dout)
    for model in (np_model, torch_model):
        with pytest.raises(TypeError, match="dout.*float64"):
            model.run_with_hooks(TOKENS, dout=dout)
        with pytest.raises(TypeError, match="dout.*float64"):
            model.run_with_cache(TOKENS, incl_bwd=True, dout=dout)


@pytest.mark.parametrize("case", [c for c in COMPONENTS if c[0] in ("LayerNorm", "MultiHeadAttention", "FeedForward",
                                                                      "Unembed", "TransformerBlock-pre")],
                         ids=lambda c: c[0])
def test_component_dout_of_another_dtype_is_refused(case):
    _, module, good, _, _ = case
    out = module(good)
    with pytest.raises(TypeError, match="float64"):
        module.backward(random_dout(out.shape, "float32"))


def test_a_float32_model_refuses_a_float64_dout():
    cfg = npi.TransformerConfig(d_vocab=11, d_model=12, n_heads=3, n_layers=1, n_ctx=6, dtype="float32")
    model = npi.Transformer(cfg)
    out = model(TOKENS)
    with pytest.raises(TypeError, match="dout.*float32"):
        model.backward(random_dout(out.shape, "float64"))


# ---------------------------------------------------------------- 4. files

@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
@pytest.mark.parametrize("side", ["numpy", "torch"])
def test_a_saved_file_gets_the_permissions_np_save_gives(tmp_path, umask, side):
    model = npi.Transformer(SMALL) if side == "numpy" else pti.Transformer(SMALL)
    old = os.umask(umask)
    try:
        np.save(tmp_path / "reference.npy", np.zeros(1))
        model.save(tmp_path / "w.npz")
    finally:
        os.umask(old)
    expected = stat.S_IMODE(os.stat(tmp_path / "reference.npy").st_mode)
    assert stat.S_IMODE(os.stat(tmp_path / "w.npz").st_mode) == expected


def test_saving_over_a_file_replaces_it_atomically_and_keeps_its_mode(tmp_path):
    path = tmp_path / "w.npz"
    npi.Transformer(SMALL, seed=1).save(path)
    os.chmod(path, 0o640)
    inode = os.stat(path).st_ino
    model = npi.Transformer(SMALL, seed=2)
    model.save(path)
    assert os.stat(path).st_ino != inode  # a rename, not a rewrite in place
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640  # as np.save over an existing file
    assert sorted(os.listdir(tmp_path)) == ["w.npz"]  # no temporary file left behind
    assert np.array_equal(npi.Transformer.load(path).embed.W_E.data, model.embed.W_E.data)


def test_an_interrupted_save_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "w.npz"
    old = npi.Transformer(SMALL, seed=1)
    old.save(path)

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", fail)
    with pytest.raises(KeyboardInterrupt):
        npi.Transformer(SMALL, seed=2).save(path)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["w.npz"]
    assert np.array_equal(npi.Transformer.load(path).embed.W_E.data, old.embed.W_E.data)


# ---------------------------------------------------------------- 5. clipping and values that do not fit

@pytest.mark.parametrize("dtype,size", [("float64", 1e200), ("float64", 1e300), ("float32", 1e30),
                                        ("float32", 1e37), ("float64", 1e-300)])
def test_clip_grad_norm_of_huge_or_tiny_gradients(dtype, size):
    params = [npi.Parameter(np.zeros((3, 4), dtype=dtype)), npi.Parameter(np.zeros(5, dtype=dtype))]
    rng = np.random.default_rng(0)
    for p in params:
        p.grad[...] = rng.standard_normal(p.shape) * size
    directions = [p.grad.astype(np.float64) / size for p in params]
    originals = [p.grad.copy() for p in params]
    total = clip_grad_norm(params, max_norm=1.0)
    true_norm = np.sqrt(sum((d**2).sum() for d in directions))
    clipped = np.sqrt(sum((p.grad.astype(np.float64) ** 2).sum() for p in params))
    for p, d in zip(params, directions):
        assert np.all(np.isfinite(p.grad))
    if size > 1:
        assert abs(clipped - 1.0) < 1e-5
        for p, d in zip(params, directions):  # the direction is kept
            assert rel_err(p.grad / clipped, d / true_norm) < 1e-5
    else:  # no clipping below max_norm
        assert all(np.array_equal(p.grad, original) for p, original in zip(params, originals))
    expected_total = true_norm * size
    if np.isfinite(np.array(expected_total, dtype=np.float64)):
        assert abs(total - expected_total) <= 1e-5 * expected_total


@pytest.mark.parametrize("side", ["numpy", "torch"])
def test_values_that_do_not_fit_a_float32_model_are_refused_naming_the_key(side, tmp_path):
    cfg = npi.TransformerConfig(d_vocab=5, d_model=4, n_heads=2, n_layers=1, n_ctx=3, d_mlp=4, dtype="float32")
    model = npi.Transformer(cfg) if side == "numpy" else pti.Transformer(cfg)
    state = {k: np.asarray(v, dtype=np.float64) for k, v in npi.Transformer(cfg).state_dict().items()}
    state["blocks.0.mlp.W_in"][0, 0] = 1e300
    with pytest.raises(ValueError, match=r"blocks\.0\.mlp\.W_in"):
        model.load_state_dict(state)
    arrays = dict(state)
    arrays["__config__"] = np.array(cfg.to_json())
    path = tmp_path / "w.npz"
    path.write_bytes(npz_bytes(arrays))
    with pytest.raises(ValueError, match=r"blocks\.0\.mlp\.W_in"):
        (npi.Transformer if side == "numpy" else pti.Transformer).load(path)


@pytest.mark.parametrize("side", ["numpy", "torch"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_integer_weights_are_never_too_big_for_the_dtype_and_are_cast(side, dtype):
    """The largest integers (uint64's 1.8e19, int64's -9.2e18) fit float32 (up to 3.4e38): cast, not refused.

    No integer dtype holds a value too big for float32 or float64, so the overflow check of
    load_state_dict looks at float values only: in a float32 model the same key holding a float64
    1e300 is refused, naming the key.
    """
    cfg = npi.TransformerConfig(**{**SMALL.to_dict(), "dtype": dtype})
    model = npi.Transformer(cfg) if side == "numpy" else pti.Transformer(cfg)
    state = {k: np.asarray(v) for k, v in npi.Transformer(cfg).state_dict().items()}
    state["embed.W_E"] = np.full((5, 4), np.iinfo(np.uint64).max, dtype=np.uint64)
    state["unembed.W_U"] = np.full((4, 5), np.iinfo(np.int64).min, dtype=np.int64)
    model.load_state_dict(state)
    loaded = {k: np.asarray(v) for k, v in model.state_dict().items()}
    assert loaded["embed.W_E"].dtype == np.dtype(dtype)
    assert np.all(loaded["embed.W_E"] == 2.0**64)  # 2**64 - 1 rounds to 2**64 in both dtypes
    assert np.all(loaded["unembed.W_U"] == -(2.0**63))
    if dtype == "float32":
        state["unembed.W_U"] = np.full((4, 5), 1e300)
        with pytest.raises(ValueError, match=r"unembed\.W_U"):
            model.load_state_dict(state)


# ---------------------------------------------------------------- 6. arguments of the wrong kind

def params():
    return [npi.Parameter(np.zeros(3))]


OPTIMIZER_BAD = {
    "Adam eps=0": lambda: Adam(params(), eps=0.0),
    "AdamW eps=0": lambda: AdamW(params(), eps=0),
    "Adam eps<0": lambda: Adam(params(), eps=-1e-8),
    "Adam eps=nan": lambda: Adam(params(), eps=float("nan")),
    "Adam lr=nan": lambda: Adam(params(), lr=float("nan")),
    "Adam lr=inf": lambda: Adam(params(), lr=float("inf")),
    "Adam lr=-1": lambda: Adam(params(), lr=-1.0),
    "Adam lr as str": lambda: Adam(params(), lr="0.1"),
    "Adam lr as array": lambda: Adam(params(), lr=np.array([0.1])),
    "Adam betas=1": lambda: Adam(params(), betas=(0.9, 1.0)),
    "Adam betas as str": lambda: Adam(params(), betas="ab"),
    "Adam betas three": lambda: Adam(params(), betas=(0.9, 0.99, 0.9)),
    "Adam weight_decay=-1": lambda: Adam(params(), weight_decay=-1),
    "SGD momentum=1": lambda: SGD(params(), lr=0.1, momentum=1.0),
    "SGD momentum=nan": lambda: SGD(params(), lr=0.1, momentum=float("nan")),
    "SGD no params": lambda: SGD([], lr=0.1),
    "SGD params a dict": lambda: SGD({"a": 1}, lr=0.1),
    "SGD params an array": lambda: SGD(np.zeros(3), lr=0.1),
    "SGD lr bool": lambda: SGD(params(), lr=True),
    "clip max_norm=0": lambda: clip_grad_norm(params(), 0.0),
    "clip max_norm=nan": lambda: clip_grad_norm(params(), float("nan")),
    "clip max_norm str": lambda: clip_grad_norm(params(), "1"),
    "LambdaLR lambda returns str": lambda: LambdaLR(SGD(params(), lr=0.1), lambda step: "x"),
    "LambdaLR lambda returns nan": lambda: LambdaLR(SGD(params(), lr=0.1), lambda step: float("nan")),
    "LambdaLR lambda returns -1": lambda: LambdaLR(SGD(params(), lr=0.1), lambda step: -1.0),
    "LambdaLR not callable": lambda: LambdaLR(SGD(params(), lr=0.1), 3),
}


@pytest.mark.parametrize("case", sorted(OPTIMIZER_BAD))
def test_optimiser_arguments_of_the_wrong_kind(case):
    kind, message = _kind(OPTIMIZER_BAD[case])
    assert kind in ("TypeError", "ValueError"), (kind, message)


def test_adam_with_a_zero_gradient_stays_finite():
    p = npi.Parameter(np.ones(3))
    optimizer = Adam([p], lr=0.1)
    optimizer.step()
    assert np.all(np.isfinite(p.data))


BASE = dict(d_vocab=11, d_model=12, n_heads=3, n_layers=1, n_ctx=6)
CONFIG_BAD = {
    "d_model an array": dict(d_model=np.array(12)),
    "d_model a 1-element array": dict(d_model=np.array([12])),
    "n_layers a float": dict(n_layers=1.0),
    "n_layers a str": dict(n_layers="1"),
    "d_vocab None": dict(d_vocab=None),
    "d_head an array": dict(d_head=np.array([4])),
    "d_mlp negative": dict(d_mlp=-1),
    "act_fn an array": dict(act_fn=np.array("relu")),
    "act_fn a list": dict(act_fn=["relu"]),
    "normalization an array": dict(normalization=np.array("pre")),
    "normalization 'none'": dict(normalization="none"),
    "positional an array": dict(positional=np.array("learned")),
    "dtype a numpy dtype": dict(dtype=np.dtype("float64")),
    "dtype a type": dict(dtype=np.float64),
    "dtype a torch dtype": dict(dtype=torch.float64),
    "dtype float16": dict(dtype="float16"),
    "causal an int": dict(causal=1),
    "causal an array": dict(causal=np.array(True)),
    "unembed a str": dict(unembed="yes"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_BAD))
def test_config_fields_of_the_wrong_kind(case):
    kind, message = _kind(lambda: npi.TransformerConfig(**{**BASE, **CONFIG_BAD[case]}))
    field = next(iter(CONFIG_BAD[case]))
    assert kind in ("TypeError", "ValueError") and field in message, (kind, message)


@pytest.mark.parametrize("fields", [dict(d_model=np.int64(12)), dict(n_layers=np.int32(1)),
                                    dict(causal=np.bool_(False))], ids=["np.int64", "np.int32", "np.bool_"])
def test_numpy_scalars_in_a_config_become_python_values(fields):
    cfg = npi.TransformerConfig(**{**BASE, **fields})
    name, value = next(iter(fields.items()))
    assert type(getattr(cfg, name)) in (int, bool) and getattr(cfg, name) == value
    assert npi.TransformerConfig.from_json(cfg.to_json()) == cfg


HOOK_RESULTS = {
    "a str": lambda x: "hello",
    "bytes": lambda x: b"hello",
    "a dict": lambda x: {"x": x},
    "a list": lambda x: [1, 2],
    "a python complex": lambda x: 1j,
    "a complex array": lambda x: np.asarray(_np(x)) + 1j,
    "a str array": lambda x: np.full(_np(x).shape, "1.0"),
    "an object array": lambda x: np.asarray(_np(x)).astype(object),
    "a bool array": lambda x: np.ones(_np(x).shape, dtype=bool),
    "a wrong shape": lambda x: np.asarray(_np(x))[..., :1],
    "a scalar": lambda x: 0.0,
    "a 0-d array": lambda x: np.array(0.0),
    "a datetime array": lambda x: np.zeros(_np(x).shape, dtype="datetime64[s]"),
}


def _np(x):
    return x.detach().numpy() if hasattr(x, "detach") else x


@pytest.mark.parametrize("case", sorted(HOOK_RESULTS))
@pytest.mark.parametrize("direction", ["fwd", "bwd"])
def test_hook_results_of_the_wrong_kind(case, direction):
    np_model, torch_model = twins()
    kinds = []
    for model in (np_model, torch_model):
        hooks = [("blocks.0.hook_resid_mid", lambda x, hook: HOOK_RESULTS[case](x))]
        dout = random_dout((2, 4, 11))
        kind, message = _kind(lambda: model.run_with_hooks(
            TOKENS, **({"fwd_hooks": hooks} if direction == "fwd" else {"bwd_hooks": hooks}), dout=dout))
        assert kind in ("TypeError", "ValueError") and "blocks.0.hook_resid_mid" in message, (kind, message)
        kinds.append(kind)
    assert kinds[0] == kinds[1]


@pytest.mark.parametrize("direction", ["fwd", "bwd"])
def test_hook_results_of_the_other_library_are_welcome(direction):
    np_model, torch_model = twins()
    dout = random_dout((2, 4, 11))
    key = "fwd_hooks" if direction == "fwd" else "bwd_hooks"
    results = []
    for model, halve in ((np_model, lambda x, hook: torch.from_numpy(x * 0.5)),
                         (torch_model, lambda x, hook: x.detach().numpy() * 0.5)):
        model.zero_grad()
        out = model.run_with_hooks(TOKENS, **{key: [("blocks.0.hook_resid_mid", halve)]}, dout=dout)
        results.append((_np(out), grads(model)))
    assert rel_err(results[0][0], results[1][0]) < 1e-12
    assert_same_grads(results[0][1], results[1][1])
