"""The pairwise selection the default run uses: every two option values meet in at least one chosen
case.

Coverage is counted here with plain loops over the options, not with the helper's own pair sets.
"""

import itertools

import pytest

from parity_tests.helpers import pairwise, pairwise_then_slow
from parity_tests.test_model import CASES as MODEL_CASES


def missing_pairs(everything, chosen):
    """Values, and pairs of values, that some case of ``everything`` has and no case of ``chosen``
    has."""
    n_options = len(everything[0])
    missing = []
    for i in range(n_options):
        wanted = {case[i] for case in everything}
        seen = {case[i] for case in chosen}
        missing += [(i, a) for a in sorted(wanted - seen, key=repr)]
    for i, j in itertools.combinations(range(n_options), 2):
        wanted = {(case[i], case[j]) for case in everything}
        seen = {(case[i], case[j]) for case in chosen}
        missing += [(i, a, j, b) for a, b in sorted(wanted - seen, key=repr)]
    return missing


PRODUCTS = {
    "three yes/no options": [[0, 1]] * 3,
    "the block's options": [
        ["float64", "float32"],
        [1, 7],
        ["pre", "post", None],
        [False, True],
        [True, False],
    ],
    "ten yes/no options": [[False, True]] * 10,
    "one option": [["a", "b", "c"]],
}


@pytest.mark.parametrize("name", PRODUCTS)
def test_every_pair_of_values_is_covered_by_fewer_cases(name):
    everything = list(itertools.product(*PRODUCTS[name]))
    chosen = pairwise(everything)
    assert missing_pairs(everything, chosen) == []
    assert set(chosen) <= set(everything) and len(set(chosen)) == len(chosen)
    if len(PRODUCTS[name]) > 2:
        assert len(chosen) <= len(everything) / 2, f"{len(chosen)} of {len(everything)}"


def test_ten_yes_no_options_need_few_cases():
    """1024 combinations; a covering array of strength 2 needs 6 rows, greedy may take a few
    more."""
    chosen = pairwise(list(itertools.product([False, True], repeat=10)))
    assert 6 <= len(chosen) <= 10, len(chosen)


def test_an_excluded_combination_is_never_chosen_and_its_pairs_not_asked_for():
    """The model's list leaves out attn_only with gelu_new (no MLP to apply it to)."""
    everything = [(*combo, dtype) for combo, dtype in MODEL_CASES]
    chosen = pairwise(everything)
    assert missing_pairs(everything, chosen) == []
    assert not any(
        attn_only and act_fn == "gelu_new" for _, _, _, attn_only, act_fn, _, _ in chosen
    )
    assert len(chosen) <= 12, len(chosen)


def test_the_rest_of_the_product_is_marked_slow():
    cases = list(itertools.product(["pre", "post", None], [False, True], [1, 7]))
    params = pairwise_then_slow(cases)
    assert [p.values for p in params] == cases, "every case, in order"
    default = [p.values for p in params if not p.marks]
    slow = [p.values for p in params if [m.name for m in p.marks] == ["slow"]]
    assert len(default) + len(slow) == len(cases)
    assert missing_pairs(cases, default) == []
    assert len(default) < len(cases)
