"""Fixtures shared by the exercise tests."""

import pytest

from exercises.generate import write_copy
from parity_tests.test_exercises import put_back_reference_bodies


@pytest.fixture(scope="module")
def solved(tmp_path_factory):
    """A learner's copy with every reference body put back: every exercise done."""
    directory = tmp_path_factory.mktemp("solved")
    write_copy(directory)
    put_back_reference_bodies(directory / "numpy_impl")
    return directory
