"""Borrowed work is not counted, and nothing a learner's file does reaches the verdict.

The learner's code runs in a process of its own; the verdict is made in the checker's, from
plain data (``exercises/learner.py`` says what its audit hook refuses). Each route to the
reference, the twin, torch or the checker is planted in a body of a solved copy (or at the top
of one of its files) and must read anything but "done": "borrowed" where the route is one, and
patching everything the learner's process can reach leaves a wrong answer wrong.
"""

import pytest

from exercises.check import check
from exercises.generate import PROJECT, REFERENCE_DIR
from parity_tests.copies import planted_copy

SAMPLE = 1
DX = 'dx = np.einsum("mv,bpv->bpm", W_U, dlogits, optimize=True)  # [batch, pos, d_model]'
REFERENCE_FILE = REFERENCE_DIR / "unembed.py"


def borrowing(line):
    """Unembed's input gradient taken from the reference's (or the twin's) by ``line``, which binds
    ``ref``."""
    return f"{line}\n        dx = ref.Unembed.backward(self, dlogits)"


ROUTES = {
    "import": borrowing("import numpy_impl as ref"),
    "from import": borrowing("from numpy_impl import unembed as _; import numpy_impl as ref"),
    "importlib": borrowing("import importlib; ref = importlib.import_module('numpy_impl')"),
    "__import__": borrowing("ref = __import__('numpy_impl')"),
    "builtins.__import__": borrowing(
        "import builtins; ref = builtins.__import__('num' + 'py_impl')"
    ),
    "spec_from_file_location": borrowing(
        "import importlib.util as u\n"
        f"        spec = u.spec_from_file_location('ref_unembed', {str(REFERENCE_FILE)!r})\n"
        "        ref = u.module_from_spec(spec); spec.loader.exec_module(ref)"
    ),
    "open and exec": borrowing(
        f"ref = type('ref', (), {{}}); namespace = {{}}; "
        f"exec(open({str(REFERENCE_FILE)!r}).read(), namespace)\n"
        "        ref.Unembed = namespace['Unembed']"
    ),
    "runpy": borrowing(
        f"import runpy, types; ref = "
        f"types.SimpleNamespace(**runpy.run_path({str(REFERENCE_FILE)!r}))"
    ),
    "torch autograd": (
        "import torch\n"
        "        W = torch.tensor(self.W_U.data, requires_grad=True)\n"
        "        x_t = torch.tensor(x, requires_grad=True)\n"
        "        (torch.einsum('mv,bpm->bpv', W, x_t) * torch.tensor(dlogits)).sum().backward()\n"
        "        dx = x_t.grad.numpy()"
    ),
    "the twin": borrowing("import torch_impl as ref"),
    "the checker": borrowing("import exercises.check as ref"),
}


# the rest run with pytest -m slow
QUICK = ("import", "importlib", "open and exec", "torch autograd")


@pytest.mark.parametrize(
    "route", [r if r in QUICK else pytest.param(r, marks=pytest.mark.slow) for r in ROUTES]
)
def test_a_body_that_borrows_is_borrowed(solved, tmp_path, route):
    directory = planted_copy(solved, tmp_path, "unembed.py", DX, ROUTES[route])
    (result,) = check(directory, keys=["unembed"], sample=SAMPLE)
    assert result.status == "borrowed", f"{route}: {result.status} {result.message}"
    assert "borrowed work is not counted" in result.message and "unembed.py:" in result.message, (
        result.message
    )


def test_sys_modules_holds_nothing_to_borrow(solved, tmp_path):
    """The learner's process never imports the reference: there is no sys.modules entry to take."""
    directory = planted_copy(
        solved,
        tmp_path,
        "unembed.py",
        DX,
        borrowing("import sys; ref = sys.modules.get('numpy_impl') or sys.modules['torch_impl']"),
    )
    (result,) = check(directory, keys=["unembed"], sample=SAMPLE)
    assert result.status == "wrong" and "KeyError" in result.message, result.message


def test_an_import_at_the_top_of_a_file_stops_the_copy(solved, tmp_path):
    directory = planted_copy(
        solved, tmp_path, "unembed.py", "import numpy as np\n", "import numpy as np\nimport torch\n"
    )
    with pytest.raises(
        ImportError, match=r"import torch at unembed.py:\d+: borrowed work is not counted"
    ):
        check(directory, keys=["unembed"], sample=SAMPLE)


@pytest.mark.slow
def test_a_caught_import_at_the_top_of_a_file_marks_every_exercise(solved, tmp_path):
    directory = planted_copy(
        solved,
        tmp_path,
        "unembed.py",
        "import numpy as np\n",
        "import numpy as np\ntry:\n    import numpy_impl\nexcept Exception:\n    pass\n",
    )
    results = check(directory, keys=["embedding", "unembed"], sample=SAMPLE)
    assert [r.status for r in results] == ["borrowed", "borrowed"], [r.message for r in results]


PATCH_EVERYTHING = """import numpy as np
import sys as _sys

# everything the learner's process can reach, patched to say "equal", "no error", "right"
np.allclose = np.array_equal = lambda *a, **k: True
np.abs = lambda x: 0 * np.asarray(x)
for _name, _module in list(_sys.modules.items()):
    if _name.startswith("exercises"):
        for _attr in ("describe", "plain", "_nonfinite_locals", "edit_pattern"):
            if hasattr(_module, _attr):
                setattr(_module, _attr, lambda *a, **k: {"type": "", "text": "", "message": ""})
"""


@pytest.mark.slow
def test_patching_everything_reachable_changes_no_verdict(solved, tmp_path):
    """A wrong backward (twice the gradient) with every object the learner's process holds
    patched."""
    directory = planted_copy(solved, tmp_path, "unembed.py", DX, DX.replace("dx = ", "dx = 2 * "))
    source = (directory / "numpy_impl" / "unembed.py").read_text()
    (directory / "numpy_impl" / "unembed.py").write_text(
        source.replace("import numpy as np\n", PATCH_EVERYTHING, 1)
    )
    (result,) = check(directory, keys=["unembed"], sample=SAMPLE)
    # what the patched process reports is no right gradient
    assert result.status == "wrong", result.message


def test_patching_numpy_in_the_learners_process_changes_no_comparison(solved, tmp_path):
    directory = planted_copy(solved, tmp_path, "unembed.py", DX, DX.replace("dx = ", "dx = 2 * "))
    source = (directory / "numpy_impl" / "unembed.py").read_text()
    patch = (
        "import numpy as np\nnp.allclose = np.array_equal = lambda *a, **k: True\nnp.abs = "
        "lambda x: 0 * x\n"
    )
    (directory / "numpy_impl" / "unembed.py").write_text(
        source.replace("import numpy as np\n", patch, 1)
    )
    (result,) = check(directory, keys=["unembed"], sample=SAMPLE)
    assert result.status == "wrong" and "x off by 1" in result.message, result.message
    assert "x is 2 times the right gradient" in result.hint


@pytest.mark.parametrize(
    "route",
    [
        "open(CHECKER, 'a').write('# patched')",
        pytest.param("import os; os.rename(CHECKER, CHECKER + '.moved')", marks=pytest.mark.slow),
        pytest.param("import os; os.remove(CHECKER)", marks=pytest.mark.slow),
    ],
)
def test_a_backward_cannot_rewrite_the_checker_on_disk(solved, tmp_path, route):
    checker = PROJECT / "exercises" / "check.py"
    before = checker.read_bytes()
    line = route.replace("CHECKER", repr(str(checker)))
    directory = planted_copy(solved, tmp_path, "unembed.py", DX, f"{DX}\n        {line}")
    (result,) = check(directory, keys=["unembed"], sample=SAMPLE)
    assert checker.read_bytes() == before
    assert result.status == "refused" and "the checker refused it" in result.message, result.message


@pytest.mark.parametrize(
    "route",
    [
        "import subprocess; subprocess.run(['true'])",
        pytest.param("import os; os.system('true')", marks=pytest.mark.slow),
        pytest.param(
            "import os; os.posix_spawn('/bin/true', ['true'], {})", marks=pytest.mark.slow
        ),
        pytest.param("import ctypes; ctypes.CDLL(None)", marks=pytest.mark.slow),
    ],
)
def test_a_backward_cannot_start_a_process_or_reach_for_ctypes(solved, tmp_path, route):
    directory = planted_copy(solved, tmp_path, "unembed.py", DX, f"{DX}\n        {route}")
    (result,) = check(directory, keys=["unembed"], sample=SAMPLE)
    assert result.status == "refused", f"{route}: {result.status} {result.message}"
