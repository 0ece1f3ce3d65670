"""The induction data: labels that tell the truth about the tokens, and the shapes promised."""

import numpy as np
import pytest

from training.data import (
    COPY_START,
    FILLER,
    FIRST,
    OTHER_WEIGHT,
    REPEATED,
    REPEATED_WEIGHT,
    heldout_batch,
    induction_batch,
)

SEQ_LEN, D_VOCAB = 49, 128


def predictable_by_induction(tokens, t):
    """Token t follows a token that appeared earlier, and the same pair appeared then."""
    return any(tokens[s - 1] == tokens[t - 1] and tokens[s] == tokens[t] for s in range(1, t))


@pytest.mark.parametrize("make", [induction_batch, heldout_batch], ids=["train", "heldout"])
def test_kinds_describe_the_tokens(make):
    batch = make(np.random.default_rng(0), 64, SEQ_LEN, D_VOCAB)
    assert batch.tokens.shape == batch.kinds.shape == (64, SEQ_LEN)
    assert batch.tokens.min() >= 0 and batch.tokens.max() < D_VOCAB
    for tokens, kinds in zip(batch.tokens, batch.kinds):
        first = np.flatnonzero(kinds == FIRST)
        assert first.size and np.all(np.diff(first) == 1), "one contiguous first occurrence"
        # Every repeated token is predictable by an induction head: the bigram was seen before.
        repeated = np.flatnonzero(kinds == REPEATED)
        assert repeated.size
        assert all(predictable_by_induction(tokens, t) for t in repeated)
        # A copy starts once, after the first occurrence ends, and the repeats follow it.
        starts = np.flatnonzero(kinds == COPY_START)
        assert starts.size == 1 and starts[0] > first[-1]
        assert repeated.min() == starts[0] + 1


def test_training_segment_lengths_and_formats_vary():
    batch = induction_batch(np.random.default_rng(1), 600, SEQ_LEN, D_VOCAB)
    lengths = (batch.kinds == FIRST).sum(axis=1)  # [batch]
    assert lengths.min() == 4 and lengths.max() == 20
    tiled = (batch.kinds[:, -1] == REPEATED) & ((batch.kinds == FILLER).sum(axis=1) == 0)
    starts_at_zero = batch.kinds[:, 0] == FIRST
    # The three formats: tiles fill the sequence; "repeat" starts at 0 with filler after;
    # "copy" places its segment at random offsets (so some start later than 0).
    assert 0.2 < tiled.mean() < 0.45
    assert 0.2 < (starts_at_zero & ~tiled & (batch.kinds[:, -1] == FILLER)).mean()
    assert 0.15 < (~starts_at_zero).mean()
    copy_starts = np.argmax(batch.kinds == COPY_START, axis=1)  # [batch]
    assert len(np.unique(copy_starts)) > 20, "copies start at many different positions"


def lengths_and_distances(batch):
    """Per sequence: the segment length, and how far back the copy's start looks (copy start - first
    start)."""
    lengths = (batch.kinds == FIRST).sum(axis=1)  # [batch]
    distances = np.argmax(batch.kinds == COPY_START, axis=1) - np.argmax(
        batch.kinds == FIRST, axis=1
    )  # [batch]
    return lengths, distances


def test_heldout_lengths_and_distances_are_never_trained_on():
    """Held-out segments are 21..24 long and copied 21..24 places back; training never shows
    either."""
    heldout_lengths, heldout_distances = lengths_and_distances(
        heldout_batch(np.random.default_rng(2), 300, SEQ_LEN, D_VOCAB)
    )
    assert heldout_lengths.min() == 21 and heldout_lengths.max() == 24
    assert heldout_distances.min() >= 21
    train = [
        induction_batch(np.random.default_rng(seed), 500, SEQ_LEN, D_VOCAB) for seed in range(4)
    ]
    train_lengths, train_distances = np.concatenate(
        [np.stack(lengths_and_distances(b)) for b in train], axis=1
    )
    assert train_lengths.max() == 20 and train_distances.min() == 4
    assert not np.any((train_distances >= 21) & (train_distances <= 24)), (
        "held-out distances never trained"
    )
    assert train_distances.max() > 30, (
        "long look-backs are trained, on both sides of the held-out band"
    )
    heldout = heldout_batch(np.random.default_rng(3), 300, SEQ_LEN, D_VOCAB)
    assert len(np.unique(np.argmax(heldout.kinds == FIRST, axis=1))) > 1, "offsets vary"


def test_weights_inputs_and_targets():
    batch = induction_batch(np.random.default_rng(3), 8, SEQ_LEN, D_VOCAB)
    assert np.array_equal(batch.inputs, batch.tokens[:, :-1])
    assert np.array_equal(batch.targets, batch.tokens[:, 1:])
    expected = np.where(batch.kinds[:, 1:] == REPEATED, REPEATED_WEIGHT, OTHER_WEIGHT)
    assert np.array_equal(batch.weights, expected)
    assert REPEATED_WEIGHT == 1.0 and OTHER_WEIGHT == 0.1


def test_same_seed_same_data():
    a = induction_batch(np.random.default_rng(4), 8, SEQ_LEN, D_VOCAB)
    b = induction_batch(np.random.default_rng(4), 8, SEQ_LEN, D_VOCAB)
    assert np.array_equal(a.tokens, b.tokens) and np.array_equal(a.kinds, b.kinds)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(batch_size=0), "batch_size"),
        (dict(seq_len=30), "seq_len"),
        (dict(d_vocab=1), "d_vocab"),
        (dict(min_len=1), "min_len"),
        (dict(min_len=8, max_len=6), "max_len"),
        (dict(batch_size=2.5), "batch_size"),
        (dict(formats=("repeat", "shuffle")), "formats"),
        (dict(formats="repeat"), "formats"),
    ],
)
def test_bad_input_names_the_argument(kwargs, message):
    args = dict(batch_size=4, seq_len=SEQ_LEN, d_vocab=D_VOCAB) | kwargs
    with pytest.raises((ValueError, TypeError), match=message):
        induction_batch(np.random.default_rng(0), **args)
