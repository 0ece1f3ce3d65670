"""Token ids: what both twins read as ids, and what they refuse, the same way and naming ``tokens``.

Any integer dtype, byte order, memory layout or container of integers is read as the same ids;
floats, bools, strings, ids out of range, ragged or nested lists, tensors of an odd layout are
refused with a TypeError or ValueError before anything is converted, by both twins, by the
analyses and by the loss's targets alike.
"""

import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch

import numpy_impl as npi
import torch_impl as pti
from parity_tests.helpers import (
    CFG,
    TOKENS,
    as_matrix,
    masked_like,
    outcome,
    quantized,
    read_only,
    rel_err,
    twins,
)

OTHER_TOKENS = np.array([[9, 8, 7, 6], [0, 1, 0, 1]])
NP_MODEL = npi.Transformer(CFG)
TORCH_MODEL = pti.Transformer(CFG)


# ---------------------------------------------------------------- what each twin refuses, and says


BAD_TOKENS = [
    ("id too large", np.array([[1, 11]]), ValueError, r"tokens must lie in \[0, d_vocab=11\)"),
    ("negative id", np.array([[-1, 2]]), ValueError, r"tokens must lie in \[0, d_vocab=11\)"),
    ("float tokens", np.array([[1.0, 2.0]]), TypeError, "tokens must hold integer token ids"),
    ("rank 1", np.array([1, 2, 3]), ValueError, r"tokens must have shape \[batch, pos\]"),
    (
        "rank 3",
        np.zeros((1, 2, 3), dtype=int),
        ValueError,
        r"tokens must have shape \[batch, pos\]",
    ),
    (
        "longer than n_ctx",
        np.zeros((1, 7), dtype=int),
        ValueError,
        "7 positions but the model's n_ctx is 6",
    ),
    ("empty batch", np.zeros((0, 3), dtype=int), ValueError, "tokens must not be empty"),
    ("empty sequence", np.zeros((2, 0), dtype=int), ValueError, "tokens must not be empty"),
    (
        "not an array",
        "hello",
        TypeError,
        r"tokens must be an integer (numpy\.ndarray|torch\.Tensor)",
    ),
]


@pytest.mark.parametrize("case", BAD_TOKENS, ids=[c[0] for c in BAD_TOKENS])
@pytest.mark.parametrize("side", ["numpy", "torch"])
def test_bad_tokens(case, side):
    _, tokens, error, message = case
    if side == "torch" and isinstance(tokens, np.ndarray):
        tokens = torch.from_numpy(tokens)
    model = NP_MODEL if side == "numpy" else TORCH_MODEL
    with pytest.raises(error, match=message):
        model(tokens)


def test_bool_tokens_are_not_ids():
    with pytest.raises(TypeError, match="integer token ids"):
        TORCH_MODEL(torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="integer token ids"):
        NP_MODEL(np.ones((1, 3), dtype=bool))


def test_ragged_token_lists():
    for model in (NP_MODEL, TORCH_MODEL):
        with pytest.raises(ValueError, match="tokens must be a rectangular"):
            model([[1, 2], [3]])
        # rows as arrays of two lengths: [pos] rows, and [1, pos] rows NumPy cannot stack
        with pytest.raises(ValueError, match="tokens must be a rectangular"):
            model([np.array([1, 2]), np.array([3, 4, 5])])
        with pytest.raises(ValueError, match="tokens must be a rectangular"):
            model([np.array([[1, 2]]), np.array([[3, 4, 5]])])


# ---------------------------------------------------------------- arrays: every integer kind is
# read as ids


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
    "read-only": lambda: read_only(TOKENS),
    "fortran order": lambda: np.asfortranarray(TOKENS),
    "a strided view": lambda: np.repeat(TOKENS, 2, axis=1)[:, ::2],
    "a list": lambda: TOKENS.tolist(),
    "a tuple": lambda: tuple(map(tuple, TOKENS.tolist())),
    "np.matrix": lambda: as_matrix(TOKENS),
    "big-endian": lambda: TOKENS.astype(">i8"),
    "a memmap-like subclass": lambda: TOKENS.view(type("Sub", (np.ndarray,), {})),
}


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


@pytest.mark.parametrize("case", sorted(EXOTIC_BAD))
def test_both_twins_refuse_the_same_tokens_with_the_same_kind_of_error(case):
    np_model, torch_model = twins()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np_kind, np_message = outcome(lambda: np_model(EXOTIC_BAD[case]()))
        torch_kind, torch_message = outcome(lambda: torch_model(EXOTIC_BAD[case]()))
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
    kind, message = outcome(lambda: torch_model(TORCH_BAD[case]()))
    assert kind in ("TypeError", "ValueError") and "tokens" in message, (kind, message)


# ---------------------------------------------------------------- lists and tensors: checked before
# they are converted


TOKEN_LISTS_BAD = {
    "[[1, True, 2]]": lambda: [[1, True, 2]],
    "[[np.True_, 1]]": lambda: [[np.True_, 1]],
    "a tuple with False": lambda: [(1, False)],
    "a list of bool arrays": lambda: [np.array([True, False])],
    "a list of bool tensors": lambda: [torch.tensor([True, False])],
    "[[1, 2.0]]": lambda: [[1, 2.0]],
    "[[1, np.float64(2)]]": lambda: [[1, np.float64(2)]],
    "a list of float arrays": lambda: [np.array([1.0, 2.0])],
    "[[1, None]]": lambda: [[1, None]],
    "[[1, '2']]": lambda: [[1, "2"]],
    "[[1, 1j]]": lambda: [[1, 1j]],
    "[[1, Fraction(2)]]": lambda: [[1, Fraction(2)]],
    "[[2**70, 1]]": lambda: [[2**70, 1]],
    "[[-2**70, 1]]": lambda: [[-(2**70), 1]],
    "a uint64 id too large": lambda: [[np.uint64(2**63 + 5), 1]],
    "[[1, [2]]]": lambda: [[1, [2]]],
    "ragged": lambda: [[1, 2], [3]],
    "nested 100 deep": lambda: _nested(100),
    "a 0-d bool tensor": lambda: [[torch.tensor(True), 1]],
    "a 0-d float array": lambda: [[np.array(1.0), 1]],
    "a 0-d meta tensor": lambda: [[torch.tensor(1, device="meta"), 1]],
}


def _nested(depth):
    x = [1, 2]
    for _ in range(depth):
        x = [x]
    return x


@pytest.mark.parametrize("case", sorted(TOKEN_LISTS_BAD))
def test_token_lists_are_checked_before_they_are_converted(case):
    np_model, torch_model = twins()
    results = [outcome(lambda: model(TOKEN_LISTS_BAD[case]())) for model in (np_model, torch_model)]
    results += [
        outcome(lambda: model.run_with_cache(TOKEN_LISTS_BAD[case]()))
        for model in (np_model, torch_model)
    ]
    results += [
        outcome(lambda: model.generate(TOKEN_LISTS_BAD[case](), max_new_tokens=1))
        for model in (np_model, torch_model)
    ]
    kinds = {kind for kind, _ in results}
    assert len(kinds) == 1 and kinds <= {"TypeError", "ValueError"}, results
    assert all("tokens" in message for _, message in results), results
    if "True" in case or "bool" in case or "False" in case:
        assert all("bool" in message for _, message in results), results


TOKEN_LISTS_GOOD = {
    "NumPy ints with a uint64": lambda: [
        [np.int64(1), np.uint64(2), 3, np.uint8(4)],
        [5, 6, np.int8(7), 8],
    ],
    "uint64 only": lambda: [[np.uint64(t) for t in row] for row in TOKENS.tolist()],
    "a list of int arrays": lambda: [row for row in TOKENS],
    "a list of uint64 arrays": lambda: [row.astype(np.uint64) for row in TOKENS],
    "a list of int tensors": lambda: [torch.from_numpy(row) for row in TOKENS],
    "a tuple of tuples": lambda: tuple(tuple(row) for row in TOKENS.tolist()),
    "0-d int tensors and arrays": lambda: [
        [torch.tensor(t) if t % 2 else np.array(t) for t in row] for row in TOKENS
    ],
}


@pytest.mark.parametrize("case", sorted(TOKEN_LISTS_GOOD))
def test_token_lists_of_any_integer_kind_are_ids(case):
    np_model, torch_model = twins()
    expected = np_model(TOKENS)
    assert rel_err(np_model(TOKEN_LISTS_GOOD[case]()), expected) == 0
    assert rel_err(torch_model(TOKEN_LISTS_GOOD[case]()), expected) <= 1e-12


def _meta_tokens():
    return torch.tensor([[1, 2]], device="meta")


def _sparse_csr(rows):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # sparse CSR is in beta: torch says so
        return torch.tensor(rows).to_sparse_csr()


def _nested_tokens():
    with warnings.catch_warnings():
        # nested tensors are a prototype: torch says so
        warnings.simplefilter("ignore", UserWarning)
        return torch.nested.nested_tensor([torch.tensor([1, 2]), torch.tensor([3])])


TORCH_TOKENS_BAD = {
    "sparse": lambda: torch.tensor([[1, 0, 2]]).to_sparse(),
    "sparse csr": lambda: _sparse_csr([[1, 0, 2]]),
    "meta": _meta_tokens,
    "nested": _nested_tokens,
    "quantized": lambda: quantized([[1.0, 2.0]], 1.0, torch.quint8),
}


@pytest.mark.parametrize("case", sorted(TORCH_TOKENS_BAD))
def test_unusual_token_tensors_are_refused_naming_the_argument(case):
    np_model, torch_model = twins()
    for call in (
        lambda: torch_model(TORCH_TOKENS_BAD[case]()),
        lambda: torch_model.run_with_cache(TORCH_TOKENS_BAD[case]()),
        lambda: torch_model.generate(TORCH_TOKENS_BAD[case](), max_new_tokens=1),
        lambda: pti.TokenEmbedding(CFG)(TORCH_TOKENS_BAD[case]()),
        lambda: np_model(TORCH_TOKENS_BAD[case]()),
    ):
        kind, message = outcome(call)
        assert (
            kind in ("TypeError", "ValueError") and "tokens" in message and "\n" not in message
        ), (kind, message)


@pytest.mark.parametrize(
    "tokens",
    [[[1, True, 2]], [[np.True_, 2]], masked_like((1, 3)).astype(np.int64)],
    ids=["a list with True", "a list with np.True_", "a masked array"],
)
def test_the_analyses_check_tokens_before_converting_them(tokens):
    from interp.common import check_token_array

    kind, message = outcome(lambda: check_token_array(tokens, CFG))
    assert kind == "TypeError" and "tokens" in message, (kind, message)


# ---------------------------------------------------------------- the loss's targets


@pytest.mark.parametrize("dtype", INT_DTYPES)
def test_loss_targets_of_every_integer_dtype(dtype):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, 4, 11))
    targets = TOKENS.astype(dtype)
    expected = npi.CrossEntropyLoss()(logits, TOKENS)
    assert npi.CrossEntropyLoss()(logits, targets) == expected
    twin = pti.CrossEntropyLoss()
    assert (
        abs(
            float(
                twin(
                    torch.from_numpy(logits),
                    torch.from_numpy(
                        targets.astype(np.int64)
                        if dtype.startswith("uint") and dtype != "uint8"
                        else targets
                    ),
                )
            )
            - expected
        )
        < 1e-12
    )


def test_loss_targets_int32_torch():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, 4, 11))
    expected = npi.CrossEntropyLoss()(logits, TOKENS)
    for dtype in (torch.int32, torch.int16, torch.uint8, torch.int8):
        got = pti.CrossEntropyLoss()(torch.from_numpy(logits), torch.from_numpy(TOKENS).to(dtype))
        assert abs(float(got) - expected) < 1e-12, dtype
