"""Head scores: equal from both twins, and right on heads whose answer is known."""

import numpy as np
import pytest

from interp import all_head_scores, induction_scores, pattern_scores, previous_token_scores, repeated_random_tokens
from interp.common import run_cache
from interp.handmade import bos_repeated_tokens
from interp.scores import duplicate_token_targets, induction_targets, previous_token_targets
from parity_tests.helpers import INTERP, handmade_pair, make_cfg, max_abs_diff, twins

# the analyses run in NumPy on activations that agree to ~1e-15; scores are averages of them
PARITY_TOL = 1e-12


def test_scores_equal_from_both_twins():
    model, twin = twins(make_cfg(INTERP), seed=1)
    tokens = repeated_random_tokens(model.cfg.d_vocab, 5, batch=4, seed=3)
    ours, theirs = all_head_scores(model, tokens), all_head_scores(twin, tokens)
    for kind in ours:
        assert ours[kind].shape == (2, 3)
        assert max_abs_diff(ours[kind], theirs[kind]) <= PARITY_TOL, kind


def test_scores_from_a_cache_match_scores_from_the_model():
    model, twin = twins(make_cfg(INTERP), seed=1)
    tokens = repeated_random_tokens(model.cfg.d_vocab, 5, batch=2, seed=4)
    _, cache = twin.run_with_cache(tokens)
    assert max_abs_diff(induction_scores(cache), induction_scores(model, tokens)) <= PARITY_TOL


def test_handmade_heads_score_one():
    """L0H0 is a previous-token head, L1H0 an induction head, L1H1 a duplicate-token head (interp.handmade)."""
    model, twin = handmade_pair()
    tokens = bos_repeated_tokens(batch=4)
    for source in (model, twin):
        scores = all_head_scores(source, tokens)
        assert abs(scores["previous_token"][0, 0] - 1) < 1e-9
        assert abs(scores["induction"][1, 0] - 1) < 1e-9
        assert abs(scores["duplicate_token"][1, 1] - 1) < 1e-9
        # the other heads of each kind are far from it
        assert scores["induction"][0].max() < 0.2 and scores["induction"][1, 1] < 1e-9
        assert scores["previous_token"][1].max() < 0.2


def test_uniform_head_scores_are_the_harmonic_mean():
    """L0H1 has W_Q = W_K = 0: query q spreads 1/(q+1) over keys 0..q, so its previous-token
    score is mean over q = 1..P-1 of 1/(q+1)."""
    model, _ = handmade_pair()
    tokens = bos_repeated_tokens(batch=2)
    pos = tokens.shape[1]
    expected = np.mean([1 / (q + 1) for q in range(1, pos)])
    assert abs(previous_token_scores(model, tokens)[0, 1] - expected) < 1e-12


def test_targets_on_a_written_out_sequence():
    tokens = np.array([[5, 1, 2, 5, 1]])  # duplicates: q3 -> k0, q4 -> k1; induction: q3 -> k1, q4 -> k2
    dup, ind, prev = duplicate_token_targets(tokens)[0], induction_targets(tokens)[0], previous_token_targets(tokens)[0]
    assert sorted(zip(*np.nonzero(dup))) == [(3, 0), (4, 1)]
    assert sorted(zip(*np.nonzero(ind))) == [(3, 1), (4, 2)]
    assert sorted(zip(*np.nonzero(prev))) == [(q, q - 1) for q in range(1, 5)]
    # a pattern that puts 0.7 on the induction target of each query that has one
    pattern = np.zeros((1, 1, 5, 5))
    pattern[0, 0, 3, 1] = pattern[0, 0, 4, 2] = 0.7
    assert abs(pattern_scores(pattern, induction_targets(tokens))[0] - 0.7) < 1e-15


def test_scores_reject_bad_input():
    model, _ = twins(make_cfg(INTERP), seed=1)
    with pytest.raises(ValueError, match="kind"):
        all_head_scores(model, kinds=("copying",))
    with pytest.raises(TypeError, match="source"):
        induction_scores("model")
    with pytest.raises(ValueError, match="target"):
        induction_scores(model, np.arange(6)[None])  # no token repeats: no induction target
    _, cache = run_cache(model, np.zeros((1, 4), dtype=np.int64))
    with pytest.raises(ValueError, match="tokens"):
        induction_scores(cache, np.zeros((2, 4), dtype=np.int64))
