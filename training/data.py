"""Training data for the induction experiment: random tokens in which segments repeat.

Axes: ``batch`` (sequences), ``seq`` (token positions, ``seq = pos + 1``: a model sees
``tokens[:, :-1]`` and predicts ``tokens[:, 1:]``), ``pos`` (positions with a target).

A model can only predict a random token if it has seen it before in the same sequence,
which is what an induction head does: find the earlier copy of the current token and
predict the token that followed it (Olsson et al. 2022, "In-context Learning and Induction
Heads"). So each sequence holds a random segment ``r`` of length ``n`` and a later copy
of it, in one of three formats chosen uniformly per sequence:

- ``"repeat"``: ``[r, r, filler]`` -- the copy follows at once;
- ``"copy"``:   random tokens in which ``r`` (from a random offset) reappears at a later
  random offset, any distance away except 21..24 places (kept for the held-out data);
- ``"tile"``:   ``r`` repeated over the whole sequence.

The segment length ``n`` (uniform on 4..20) and offsets vary from sequence to sequence: with
one fixed distance the model can learn "look back ``n`` places" from positions alone, and
with one format it learns a shortcut for that format, and no induction head forms. No
training copy starts 21..24 places after its first occurrence, and no training segment is
longer than 20, so the held-out data (segments of 21..24, copied 21..24 places back) has
segment lengths and look-back distances that training never shows.

Every token is labelled with its ``kind``:

- ``FIRST``: the first occurrence of a segment that is repeated later (unpredictable);
- ``COPY_START``: the first token of a copy (unpredictable: nothing says a copy begins);
- ``REPEATED``: the rest of a copy (predictable by looking back to the first occurrence);
- ``FILLER``: everything else (random).

The loss weighs each target by its kind (``target_weights``): 1.0 on ``REPEATED`` tokens and
0.1 elsewhere. With equal weights the model spends its capacity hedging on chance matches
in the filler and stalls near 0.4 nats on the repeats.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FILLER, FIRST, COPY_START, REPEATED = 0, 1, 2, 3
FORMATS = ("repeat", "copy", "tile")
# held-out segment lengths and copy distances (inclusive): never trained on
HELDOUT_LENGTHS = (21, 24)
REPEATED_WEIGHT = 1.0  # loss weight on targets an induction head can predict
OTHER_WEIGHT = 0.1  # loss weight on every other target


@dataclass(frozen=True)
class Batch:
    """Token sequences and what each token is; the model input, targets and weights follow."""

    tokens: np.ndarray  # [batch, seq] int64 token ids
    kinds: np.ndarray  # [batch, seq] int8, one of FILLER, FIRST, COPY_START, REPEATED

    @property
    def inputs(self) -> np.ndarray:
        return self.tokens[:, :-1]  # [batch, pos]

    @property
    def targets(self) -> np.ndarray:
        return self.tokens[:, 1:]  # [batch, pos]

    @property
    def target_kinds(self) -> np.ndarray:
        return self.kinds[:, 1:]  # [batch, pos]

    @property
    def weights(self) -> np.ndarray:
        return target_weights(self.target_kinds)  # [batch, pos]


def target_weights(kinds: np.ndarray) -> np.ndarray:
    """Per-target loss weights: ``REPEATED_WEIGHT`` on repeated tokens, ``OTHER_WEIGHT``
    elsewhere."""
    return np.where(kinds == REPEATED, REPEATED_WEIGHT, OTHER_WEIGHT)  # [batch, pos]


def induction_batch(
    rng: np.random.Generator,
    batch_size: int,
    seq_len: int,
    d_vocab: int,
    min_len: int = 4,
    max_len: int = 20,
    formats=FORMATS,
) -> Batch:
    """A training batch: one random segment and its copy per sequence (see the module docstring).

    Each sequence draws its format uniformly from ``formats`` and its segment length
    uniformly from ``min_len..max_len`` (inclusive).
    """
    _check_sizes(batch_size, seq_len, d_vocab, min_len, max_len)
    if isinstance(formats, str) or not formats or any(f not in FORMATS for f in formats):
        raise ValueError(
            f"formats must be a non-empty sequence drawn from {FORMATS}, got {formats!r}"
        )
    tokens = rng.integers(0, d_vocab, size=(batch_size, seq_len))  # [batch, seq]
    kinds = np.full((batch_size, seq_len), FILLER, dtype=np.int8)  # [batch, seq]
    for row in range(batch_size):
        fmt = formats[rng.integers(len(formats))]
        n = int(rng.integers(min_len, max_len + 1))
        if fmt == "repeat":
            _place_copy(tokens[row], kinds[row], source=0, dest=n, n=n)
        elif fmt == "copy":
            source = int(rng.integers(0, seq_len - 2 * n + 1))
            low, high = HELDOUT_LENGTHS
            # d = n always fits
            distances = [d for d in range(n, seq_len - n - source + 1) if not low <= d <= high]
            dest = source + int(rng.choice(distances))
            _place_copy(tokens[row], kinds[row], source=source, dest=dest, n=n)
        else:  # "tile": r, r, r, ... each position copies the one n places back
            segment = tokens[row, :n].copy()  # [n]
            tokens[row] = np.resize(segment, seq_len)
            kinds[row, :n] = FIRST
            kinds[row, n] = COPY_START
            kinds[row, n + 1 :] = REPEATED
    return Batch(tokens, kinds)


def heldout_batch(
    rng: np.random.Generator,
    batch_size: int,
    seq_len: int,
    d_vocab: int,
    min_len: int = HELDOUT_LENGTHS[0],
    max_len: int = HELDOUT_LENGTHS[1],
) -> Batch:
    """Held-out data of a shape never trained on: ``[filler, r, r, filler]`` with ``n`` in 21..24.

    Segments are longer than any training segment (at most 20), and each copy starts 21..24
    places after its first occurrence, a distance no training copy has, so a model that has
    memorised training lengths or distances fails here, while an induction head, which
    only looks for the earlier copy of the current token, does not care. ``r`` starts at a
    random offset.
    """
    _check_sizes(batch_size, seq_len, d_vocab, min_len, max_len)
    tokens = rng.integers(0, d_vocab, size=(batch_size, seq_len))  # [batch, seq]
    kinds = np.full((batch_size, seq_len), FILLER, dtype=np.int8)  # [batch, seq]
    for row in range(batch_size):
        n = int(rng.integers(min_len, max_len + 1))
        source = int(rng.integers(0, seq_len - 2 * n + 1))
        _place_copy(tokens[row], kinds[row], source=source, dest=source + n, n=n)
    return Batch(tokens, kinds)


def batches(seed: int, steps: int, batch_size: int, seq_len: int, d_vocab: int, **kwargs):
    """The training stream: ``steps`` batches from one seeded generator (reproducible)."""
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        yield induction_batch(rng, batch_size, seq_len, d_vocab, **kwargs)


def _place_copy(tokens, kinds, source, dest, n):
    """Copy ``tokens[source:source+n]`` to ``dest`` and label both occurrences."""
    tokens[dest : dest + n] = tokens[source : source + n]
    kinds[source : source + n] = FIRST
    kinds[dest] = COPY_START
    kinds[dest + 1 : dest + n] = REPEATED


def _check_sizes(batch_size, seq_len, d_vocab, min_len, max_len):
    for name, value in (
        ("batch_size", batch_size),
        ("seq_len", seq_len),
        ("d_vocab", d_vocab),
        ("min_len", min_len),
        ("max_len", max_len),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {value!r}")
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")
    if d_vocab < 2:
        raise ValueError(f"d_vocab must be at least 2, got {d_vocab}")
    if min_len < 2:
        raise ValueError(
            f"min_len must be at least 2 (a copy needs a predictable token), got {min_len}"
        )
    if max_len < min_len:
        raise ValueError(f"max_len ({max_len}) must be >= min_len ({min_len})")
    if seq_len < 2 * max_len:
        raise ValueError(
            f"seq_len ({seq_len}) must hold a segment and its copy: at least 2 * max_len = "
            f"{2 * max_len}"
        )
