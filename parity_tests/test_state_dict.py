"""State dicts and dtypes: what both twins load and refuse, alike, and how the torch twin changes
dtype.

1. either twin loads the other's state dict (whole models and components), bit for bit;
2. every kind of value for a key (byte orders, dtypes, tensors and arrays of every layout) is
   taken with the same values by both twins or refused by both with the same one-line message
   naming the key; values that do not fit the model's dtype are refused, integers are cast;
   weights files of such values the same way; ``strict=False`` and ``assign=True`` keep the checks;
3. the torch twin's dtype moves: one the model cannot compute in is refused before anything
   moves; float32 and float64 take the config along.
"""

import dataclasses
import types

import numpy as np
import pytest
import torch

import numpy_impl as npi
import torch_impl as pti
from parity_tests.helpers import (
    CFG,
    CFG32,
    SIDES,
    SMALL,
    TOKENS,
    as_float64,
    as_matrix,
    outcome,
    package,
    quantized,
    randomize,
    read_only,
    rel_err,
    twins,
)

# ---------------------------------------------------------------- 1. either twin's state dict


def test_load_state_dict_strict():
    model = npi.Transformer(CFG)
    sd = model.state_dict()
    with pytest.raises(ValueError, match=r"missing keys: embed\.W_E"):
        model.load_state_dict({k: v for k, v in sd.items() if k != "embed.W_E"})
    with pytest.raises(ValueError, match=r"unexpected keys: extra"):
        model.load_state_dict(dict(sd, extra=np.zeros(1)))
    with pytest.raises(
        ValueError, match=r"unembed\.W_U: shape \(12, 3\) does not match the model's \(12, 11\)"
    ):
        model.load_state_dict(dict(sd, **{"unembed.W_U": np.zeros((12, 3))}))
    with pytest.raises(TypeError, match="state_dict must be a dict"):
        model.load_state_dict([1, 2])
    with pytest.raises(TypeError, match=r"state_dict\['embed.W_E'\] must be an ndarray"):
        model.load_state_dict(dict(sd, **{"embed.W_E": "zeros"}))


def test_state_dicts_of_either_library():
    np_model, torch_model = twins()
    fresh_np, fresh_torch = npi.Transformer(CFG, seed=5), pti.Transformer(CFG, seed=5)
    fresh_np.load_state_dict({k: v.detach() for k, v in torch_model.state_dict().items()})
    fresh_torch.load_state_dict(np_model.state_dict())
    loaded_np, loaded_torch = fresh_np.state_dict(), fresh_torch.state_dict()
    for name, value in np_model.state_dict().items():
        assert np.array_equal(loaded_np[name], value)
        assert np.array_equal(loaded_torch[name].numpy(), value)


def test_component_state_dicts_of_either_library():
    for np_class, torch_class in (
        (npi.LayerNorm, pti.LayerNorm),
        (npi.MultiHeadAttention, pti.MultiHeadAttention),
        (npi.FeedForward, pti.FeedForward),
        (npi.Unembed, pti.Unembed),
    ):
        np_module, torch_module = np_class(CFG), torch_class(CFG)
        randomize(np_module, seed=2)
        torch_module.load_state_dict(np_module.state_dict())
        np_module.load_state_dict(torch_module.state_dict())
        for name, value in np_module.state_dict().items():
            assert np.array_equal(torch_module.state_dict()[name].numpy(), value)


# ---------------------------------------------------------------- 2. the same values taken, the
# same refused


KEY = "blocks.0.mlp.W_in"  # [d_model, d_mlp] = [12, 48]


def _masked(v, mask_something=True):
    return np.ma.masked_array(v, mask=np.abs(v) > 0.5 if mask_something else False)


def _longdouble_too_large(v):
    big = v.astype(np.longdouble)
    big[0, 0] = np.longdouble(10) ** 400
    return big


def _too_large_for_float32(v):
    big = v.astype(">f8")
    big[0, 0] = 1e300
    return big


def state_of(model):
    return {name: as_float64(value) for name, value in model.state_dict().items()}


# name -> (make the value for KEY from the reference's float64 value, "accept" or "refuse")
VALUES = {
    "big-endian >f8": (lambda v: v.astype(">f8"), "accept"),
    "big-endian >f4": (lambda v: v.astype(">f4"), "accept"),
    "big-endian >i8": (lambda v: np.round(v * 100).astype(">i8"), "accept"),
    "longdouble": (lambda v: v.astype(np.longdouble) / 3, "accept"),
    "with inf and NaN": (lambda v: np.where(v > 1, np.inf, np.where(v < -1, np.nan, v)), "accept"),
    "longdouble too large for float64": (_longdouble_too_large, "refuse"),
    "float16 ndarray": (lambda v: v.astype(np.float16), "accept"),
    "float16 tensor": (lambda v: torch.from_numpy(v).half(), "accept"),
    "bfloat16 tensor": (lambda v: torch.from_numpy(v).bfloat16(), "accept"),
    "float8 tensor": (lambda v: torch.from_numpy(v).to(torch.float8_e4m3fn), "accept"),
    "a Parameter (requires grad)": (
        lambda v: torch.nn.Parameter(torch.from_numpy(v.copy())),
        "accept",
    ),
    "non-contiguous tensor": (lambda v: torch.from_numpy(v.T.copy()).T, "accept"),
    "negative strides": (lambda v: v[::-1, ::-1].copy()[::-1, ::-1], "accept"),
    "fortran order": (np.asfortranarray, "accept"),
    "read-only ndarray": (read_only, "accept"),
    "np.matrix": (as_matrix, "accept"),
    "uint64 ndarray": (lambda v: np.round(np.abs(v) * 100).astype(np.uint64), "accept"),
    "uint8 tensor": (
        lambda v: torch.from_numpy(np.round(np.abs(v) * 10).astype(np.uint8)),
        "accept",
    ),
    "meta tensor": (lambda v: torch.empty(v.shape, device="meta", dtype=torch.float64), "refuse"),
    "sparse tensor": (lambda v: torch.from_numpy(v).to_sparse(), "refuse"),
    "quantized tensor": (quantized, "refuse"),
    "masked array": (_masked, "refuse"),
    "masked array, nothing masked": (lambda v: _masked(v, False), "refuse"),
    "bool ndarray": (lambda v: v > 0, "refuse"),
    "bool tensor": (lambda v: torch.from_numpy(v > 0), "refuse"),
    "complex ndarray": (lambda v: v.astype(complex), "refuse"),
    "complex tensor": (lambda v: torch.from_numpy(v.astype(complex)), "refuse"),
    "object ndarray": (lambda v: v.astype(object), "refuse"),
    "str ndarray": (lambda v: v.astype(str), "refuse"),
    "datetime ndarray": (lambda v: np.zeros(v.shape, dtype="datetime64[s]"), "refuse"),
    "a nested list": (lambda v: v.tolist(), "refuse"),
    "None": (lambda v: None, "refuse"),
    "a float": (lambda v: 1.0, "refuse"),
    "a wrong shape": (lambda v: v[:, :3], "refuse"),
    "transposed": (lambda v: v.T, "refuse"),
    "a wrong-shape tensor": (lambda v: torch.from_numpy(v[:3]), "refuse"),
}


def expected_values(value):
    """What loading ``value`` must give, computed with the libraries' own conversions."""
    if isinstance(value, torch.Tensor):
        return value.detach().to(torch.float64).numpy()
    return np.asarray(value).astype(np.float64)


def load_both(cfg, state_dict, **kwargs):
    """Load ``state_dict`` into fresh twins of ``cfg``: (numpy outcome, torch outcome, the two
    models, their state before)."""
    np_model, torch_model = npi.Transformer(cfg, seed=7), pti.Transformer(cfg, seed=8)
    before = (state_of(np_model), state_of(torch_model))
    results = [
        outcome(lambda: model.load_state_dict(state_dict, **kwargs))
        for model in (np_model, torch_model)
    ]
    return results, (np_model, torch_model), before


def assert_same_refusal(results, models, before, *names):
    (np_kind, np_message), (torch_kind, torch_message) = results
    assert np_kind in ("TypeError", "ValueError"), np_message
    assert (torch_kind, torch_message) == (np_kind, np_message), (
        "both twins refuse with the same message"
    )
    assert "\n" not in np_message
    for name in names:
        assert name in np_message, (name, np_message)
    for model, state in zip(models, before):
        now = state_of(model)
        assert all(np.array_equal(now[k], v) for k, v in state.items()), "nothing was loaded"


@pytest.mark.parametrize("cfg", [CFG, CFG32], ids=["float64 model", "float32 model"])
@pytest.mark.parametrize("case", sorted(VALUES))
def test_the_twins_take_and_refuse_the_same_state_dict_values(case, cfg):
    reference = npi.Transformer(cfg, seed=3)
    randomize(reference, seed=3)
    state = {
        name: np.asarray(value, dtype=np.float64) for name, value in reference.state_dict().items()
    }
    make, verdict = VALUES[case]
    value = make(state[KEY])
    results, models, before = load_both(cfg, {**state, KEY: value})
    if verdict == "refuse":
        assert_same_refusal(results, models, before, KEY)
        return
    assert [kind for kind, _ in results] == ["accepted", "accepted"], results
    expected = {**state, KEY: expected_values(value)}
    for model in models:
        loaded, tensors = state_of(model), model.state_dict()
        for name, values in expected.items():
            assert np.array_equal(loaded[name], values.astype(cfg.dtype), equal_nan=True), name
            assert tensors[name].dtype == (
                np.dtype(cfg.dtype) if model is models[0] else getattr(torch, cfg.dtype)
            )


@pytest.mark.parametrize("side", SIDES)
def test_values_too_large_for_a_float32_model_are_refused_by_both(side):
    cfg = CFG32
    state = {
        name: np.asarray(v, dtype=np.float64)
        for name, v in npi.Transformer(cfg).state_dict().items()
    }
    results, models, before = load_both(cfg, {**state, KEY: _too_large_for_float32(state[KEY])})
    assert_same_refusal(results, models, before, KEY, "float32")


@pytest.mark.parametrize("side", ["numpy", "torch"])
def test_values_that_do_not_fit_a_float32_model_are_refused_naming_the_key(side, tmp_path):
    cfg = npi.TransformerConfig(**{**SMALL.to_dict(), "dtype": "float32"})
    model = npi.Transformer(cfg) if side == "numpy" else pti.Transformer(cfg)
    state = {
        k: np.asarray(v, dtype=np.float64) for k, v in npi.Transformer(cfg).state_dict().items()
    }
    state["blocks.0.mlp.W_in"][0, 0] = 1e300
    with pytest.raises(ValueError, match=r"blocks\.0\.mlp\.W_in"):
        model.load_state_dict(state)
    arrays = dict(state)
    arrays["__config__"] = np.array(cfg.to_json())
    path = tmp_path / "w.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=r"blocks\.0\.mlp\.W_in"):
        (npi.Transformer if side == "numpy" else pti.Transformer).load(path)


@pytest.mark.parametrize("side", ["numpy", "torch"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_integer_weights_are_never_too_big_for_the_dtype_and_are_cast(side, dtype):
    """The largest integers (uint64's 1.8e19, int64's -9.2e18) fit float32 (up to 3.4e38): cast, not
    refused.

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


def test_ml_dtypes_bfloat16_arrays_are_read_as_their_values():
    ml_dtypes = pytest.importorskip(
        "ml_dtypes", reason="ml_dtypes is not installed (NumPy's bfloat16 comes from it)"
    )
    reference = npi.Transformer(CFG, seed=3)
    randomize(reference, seed=3)
    state = reference.state_dict()
    value = state[KEY].astype(ml_dtypes.bfloat16)
    results, models, _ = load_both(CFG, {**state, KEY: value})
    assert [kind for kind, _ in results] == ["accepted", "accepted"], results
    for model in models:
        assert np.array_equal(state_of(model)[KEY], value.astype(np.float64))


def test_the_twins_take_the_same_kinds_of_state_dict():
    reference = npi.Transformer(CFG, seed=3)
    randomize(reference, seed=3)
    state = reference.state_dict()
    for kind in (types.MappingProxyType(state), dict(state), reference.state_dict()):
        results, models, _ = load_both(CFG, kind)
        assert [k for k, _ in results] == ["accepted", "accepted"], results
        for loaded in map(state_of, models):
            assert all(np.array_equal(loaded[k], v) for k, v in state.items())
    for bad, names in (
        (dict(state, **{"0": state[KEY]}), ["unexpected keys: 0"]),
        ({**state, 0: state[KEY]}, ["keys must be str", "0"]),
        ([(k, v) for k, v in state.items()], ["state_dict must be a dict"]),
        (None, ["state_dict must be a dict"]),
    ):
        results, models, before = load_both(CFG, bad)
        assert_same_refusal(results, models, before, *names)


def write_npz(path, cfg, arrays):
    np.savez(path, __config__=np.array(cfg.to_json()), **arrays)


# name -> (make every array of the file from the reference's float64 arrays, config, "accept" or
# "refuse")
FILES = {
    "every array big-endian >f8": (
        lambda a: {k: v.astype(">f8") for k, v in a.items()},
        CFG,
        "accept",
    ),
    "every array big-endian >f4": (
        lambda a: {k: v.astype(">f4") for k, v in a.items()},
        CFG,
        "accept",
    ),
    "every array longdouble": (
        lambda a: {k: v.astype(np.longdouble) / 3 for k, v in a.items()},
        CFG,
        "accept",
    ),
    "every array float16": (
        lambda a: {k: v.astype(np.float16) for k, v in a.items()},
        CFG,
        "accept",
    ),
    "one array int16": (
        lambda a: {**a, KEY: np.round(a[KEY] * 100).astype(np.int16)},
        CFG,
        "accept",
    ),
    "float64 arrays, float32 config": (lambda a: a, CFG32, "accept"),
    "1e300 in a float32 config's file": (
        lambda a: {**a, KEY: _too_large_for_float32(a[KEY])},
        CFG32,
        "refuse",
    ),
    "longdouble 1e400 in a float64 file": (
        lambda a: {**a, KEY: _longdouble_too_large(a[KEY])},
        CFG,
        "refuse",
    ),
}


@pytest.mark.parametrize("case", sorted(FILES))
def test_the_twins_take_and_refuse_the_same_files(tmp_path, case):
    make, cfg, verdict = FILES[case]
    reference = npi.Transformer(CFG, seed=3)
    randomize(reference, seed=3)
    arrays = make({k: np.asarray(v, dtype=np.float64) for k, v in reference.state_dict().items()})
    path = tmp_path / "w.npz"
    write_npz(path, cfg, arrays)
    results = [outcome(lambda: side.Transformer.load(path)) for side in (npi, pti)]
    if verdict == "refuse":
        (np_kind, np_message), (torch_kind, torch_message) = results
        assert np_kind == "ValueError" and (torch_kind, torch_message) == (np_kind, np_message)
        assert repr(str(path)) in np_message and KEY in np_message and "\n" not in np_message
        return
    assert [kind for kind, _ in results] == ["accepted", "accepted"], results
    for _, model in results:
        assert model.cfg == cfg
        loaded = state_of(model)
        for name, values in arrays.items():
            assert np.array_equal(
                loaded[name], np.asarray(values).astype(np.float64).astype(cfg.dtype)
            ), name


@pytest.mark.parametrize("side", SIDES)
def test_strict_false_loads_what_is_there_and_still_checks_it(side):
    cfg = CFG32
    model = package(side).Transformer(cfg, seed=1)
    before = state_of(model)
    value = np.random.default_rng(0).standard_normal((12, 48))  # float64, for a float32 model
    result = model.load_state_dict({KEY: value, "extra.key": np.zeros(3)}, strict=False)
    assert sorted(result.missing_keys) == sorted(k for k in before if k != KEY)
    assert list(result.unexpected_keys) == ["extra.key"]
    after = state_of(model)
    assert np.array_equal(after[KEY], value.astype(np.float32))
    assert all(np.array_equal(after[k], v) for k, v in before.items() if k != KEY)
    assert model.state_dict()[KEY].dtype in (np.float32, torch.float32)
    for bad, words in (
        (_too_large_for_float32(value), [KEY, "float32"]),
        (value[:3], [KEY, "shape"]),
        (torch.empty(12, 48, device="meta"), [KEY, "meta"]),
        (_masked(value), [KEY, "masked"]),
    ):
        kind, message = outcome(lambda: model.load_state_dict({KEY: bad}, strict=False))
        assert kind in ("TypeError", "ValueError") and all(w in message for w in words), (
            kind,
            message,
        )
        assert np.array_equal(state_of(model)[KEY], value.astype(np.float32)), "nothing was loaded"


def test_strict_false_gives_the_same_result_in_both_twins():
    state = {KEY: np.random.default_rng(0).standard_normal((12, 48)), "extra.key": np.zeros(3)}
    results, models, _ = load_both(CFG, state, strict=False)
    (np_kind, np_result), (torch_kind, torch_result) = results
    assert np_kind == torch_kind == "accepted"
    assert (sorted(np_result.missing_keys), list(np_result.unexpected_keys)) == (
        sorted(torch_result.missing_keys),
        list(torch_result.unexpected_keys),
    )
    assert np.array_equal(state_of(models[0])[KEY], state_of(models[1])[KEY])


def test_assign_keeps_the_models_dtype_and_takes_a_copy():
    """assign=True: the new parameters hold the values cast to the model's dtype, never the caller's
    arrays."""
    np_model, _ = twins(CFG32)
    twin = pti.Transformer(CFG32, seed=5)
    state = {
        name: np.asarray(value, dtype=np.float64) for name, value in np_model.state_dict().items()
    }
    twin.load_state_dict(state, assign=True)
    assert {p.dtype for p in twin.parameters()} == {torch.float32} and twin.cfg.dtype == "float32"
    assert all(p.requires_grad for p in twin.parameters())
    state[KEY][...] = 0  # the caller's array changes afterwards: the model must not
    out = twin(TOKENS)
    assert out.dtype == torch.float32
    assert rel_err(out, np_model(TOKENS)) <= 1e-5  # float32 parity, as the parity tests state it
    float32_state = {
        name: torch.from_numpy(np.asarray(v)) for name, v in np_model.state_dict().items()
    }
    twin.load_state_dict(float32_state, assign=True)
    float32_state[KEY][...] = 0
    assert rel_err(twin(TOKENS), np_model(TOKENS)) <= 1e-5


# ---------------------------------------------------------------- 3. the torch twin's dtype moves


DTYPE_MOVES = {
    ".type(torch.float8_e4m3fn)": lambda m: m.type(torch.float8_e4m3fn),
    ".type(torch.int64)": lambda m: m.type(torch.int64),
    ".type(torch.complex128)": lambda m: m.type(torch.complex128),
    ".type('torch.IntTensor')": lambda m: m.type("torch.IntTensor"),
    ".to(torch.float8_e5m2)": lambda m: m.to(torch.float8_e5m2),
    ".to(dtype=torch.complex64)": lambda m: m.to(dtype=torch.complex64),
    ".to('cpu', torch.float8_e4m3fn)": lambda m: m.to("cpu", torch.float8_e4m3fn),
    ".to(torch.complex128)": lambda m: m.to(torch.complex128),
    ".to(a float8 tensor)": lambda m: m.to(torch.zeros(1, dtype=torch.float8_e4m3fn)),
    "._apply(to float8)": lambda m: m._apply(lambda t: t.to(torch.float8_e4m3fn)),
}


@pytest.mark.parametrize("cfg", [CFG, CFG32], ids=["float64", "float32"])
@pytest.mark.parametrize("move", sorted(DTYPE_MOVES))
def test_a_dtype_move_the_model_cannot_compute_in_changes_nothing(move, cfg):
    _, twin = twins(cfg)
    before = state_of(twin)
    out = twin(TOKENS).detach().clone()
    with pytest.raises(TypeError, match="float64, float32, float16, bfloat16"):
        DTYPE_MOVES[move](twin)
    assert {str(p.dtype) for p in twin.parameters()} == {f"torch.{cfg.dtype}"}
    assert twin.cfg == cfg and all(m.cfg == cfg for m in twin.modules() if hasattr(m, "cfg"))
    after = state_of(twin)
    assert all(np.array_equal(after[k], v) for k, v in before.items())
    assert torch.equal(twin(TOKENS), out), "the model still runs, as before"


MOVES_THAT_FOLLOW = {
    ".float()": ("float32", lambda m: m.float()),
    ".double()": ("float64", lambda m: m.double()),
    ".to(torch.float32)": ("float32", lambda m: m.to(torch.float32)),
    ".type(torch.float64)": ("float64", lambda m: m.type(torch.float64)),
    ".half()": ("float16", lambda m: m.half()),
    ".bfloat16()": ("bfloat16", lambda m: m.bfloat16()),
    ".to('cpu', torch.bfloat16)": ("bfloat16", lambda m: m.to("cpu", torch.bfloat16)),
    ".type('torch.HalfTensor')": ("float16", lambda m: m.type("torch.HalfTensor")),
}
# the float32 parity tolerance; float16 (11 significant bits) and bfloat16 (8): the loose bounds
# of test_precision.py
MOVE_TOLERANCE = {"float64": 1e-5, "float32": 1e-5, "float16": 1e-2, "bfloat16": 5e-2}


@pytest.mark.parametrize("cfg", [CFG, CFG32], ids=["from float64", "from float32"])
@pytest.mark.parametrize("move", sorted(MOVES_THAT_FOLLOW))
def test_a_move_to_float32_or_float64_takes_the_config_along(move, cfg):
    np_model, twin = twins(cfg)
    dtype, do = MOVES_THAT_FOLLOW[move]
    do(twin)
    assert twin.cfg.dtype == dtype and all(
        m.cfg.dtype == dtype for m in twin.modules() if hasattr(m, "cfg")
    )
    assert {str(p.dtype) for p in twin.parameters()} == {f"torch.{dtype}"}
    assert rel_err(twin(TOKENS), np_model(TOKENS)) <= MOVE_TOLERANCE[dtype]


def _components(cfg):
    """(name, a torch component of cfg, its input) for each component that holds cfg."""
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 4, 12))).to(
        getattr(torch, cfg.dtype)
    )
    tokens = torch.from_numpy(TOKENS)
    return [
        ("LayerNorm", pti.LayerNorm(cfg), x),
        ("MultiHeadAttention", pti.MultiHeadAttention(cfg), x),
        ("FeedForward", pti.FeedForward(cfg), x),
        ("TransformerBlock", pti.TransformerBlock(cfg), x),
        ("Unembed", pti.Unembed(cfg), x),
        ("TokenEmbedding", pti.TokenEmbedding(cfg), tokens),
        ("SinusoidalPositionalEncoding", pti.SinusoidalPositionalEncoding(cfg), tokens),
    ]


@pytest.mark.parametrize(
    "move", [".type(torch.int32)", ".to(torch.complex64)", "._apply(double, masks too)"]
)
@pytest.mark.parametrize("index", range(7), ids=[name for name, _, _ in _components(CFG)])
def test_a_component_refuses_a_dtype_move_before_anything_moves(index, move):
    _, component, x = _components(CFG32)[index]
    before = {name: t.clone() for name, t in chain_tensors(component)}
    out = component(x).detach().clone()
    do = {
        ".type(torch.int32)": lambda m: m.type(torch.int32),
        ".to(torch.complex64)": lambda m: m.to(torch.complex64),
        "._apply(double, masks too)": lambda m: m._apply(lambda t: t.double()),
    }[move]
    with pytest.raises(TypeError, match="float64, float32, float16, bfloat16|a float dtype"):
        do(component)
    assert all(
        torch.equal(t, before[name]) and t.dtype == before[name].dtype
        for name, t in chain_tensors(component)
    )
    assert component.cfg == CFG32 and torch.equal(component(x), out)


@pytest.mark.parametrize("index", range(7), ids=[name for name, _, _ in _components(CFG)])
def test_a_component_moved_to_float64_takes_its_config_along(index):
    _, component, x = _components(CFG32)[index]
    component.double()
    assert component.cfg.dtype == "float64" and all(
        m.cfg.dtype == "float64" for m in component.modules() if hasattr(m, "cfg")
    )
    assert {t.dtype for _, t in chain_tensors(component) if t.is_floating_point()} <= {
        torch.float64
    }
    out = component(x.double() if x.is_floating_point() else x)
    assert out.dtype == torch.float64


def test_the_config_reads_its_dtype_from_the_tensors():
    """One source of truth: ``cfg.dtype`` is the tensors' dtype, however they came to hold it; the
    config a module was built with is kept as it was given, never rewritten by a move."""
    np_model, twin = twins(CFG32)
    built = vars(twin)["_cfg"]
    with torch.no_grad():  # not a module move: the tensors are swapped one by one
        for module in twin.modules():
            for name, tensor in [*module._parameters.items(), *module._buffers.items()]:
                if tensor is not None and tensor.is_floating_point():
                    moved = tensor.double()
                    is_parameter = isinstance(tensor, torch.nn.Parameter)
                    setattr(module, name, torch.nn.Parameter(moved) if is_parameter else moved)
    assert twin.cfg.dtype == "float64" and twin.blocks[0].attn.cfg.dtype == "float64"
    assert vars(twin)["_cfg"] is built and built.dtype == "float32"
    assert twin.cfg == dataclasses.replace(CFG32, dtype="float64")
    out = twin(TOKENS)  # the boundary takes a float64 gradient now, as the tensors say
    out.backward(torch.from_numpy(np.random.default_rng(1).standard_normal(tuple(out.shape))))
    assert out.dtype == torch.float64 and rel_err(out, np_model(TOKENS)) <= 1e-5
    twin.float()
    assert twin.cfg == CFG32 and vars(twin)["_cfg"] is built


def chain_tensors(module):
    return [*module.named_parameters(), *module.named_buffers()]
