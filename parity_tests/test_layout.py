"""The house: a foundation, two mirror-image wings, and imports that run downward only.

Read from the source with ``ast`` (nothing is imported), so a stray ``import torch`` inside a
function counts as much as one at the top of a file.
"""

import ast
import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# each package's level: a package may import its own level's siblings only where listed below,
# and any package of a lower level
LEVELS = {
    "foundation": 0,
    "numpy_impl": 1,
    "torch_impl": 1,
    "gradcheck": 2,
    "interp": 2,
    "training": 2,
    "exercises": 2,
    "reading": 2,
    "tours": 3,
    "benchmarks": 3,
}
SIDEWAYS = {
    ("training", "interp"),  # training evaluates its model with interp's head scores and figures
    ("exercises", "gradcheck"),  # the exercise checker is a gradient checker
    # the reading page's run gives its models the gradient checks' random weights
    ("reading", "gradcheck"),
}
FORBIDDEN = {
    "foundation": {"torch", "numpy_impl", "torch_impl"},
    "numpy_impl": {"torch", "torch_impl"},
    "torch_impl": {"numpy_impl"},
}
TWIN_FILES = (
    "__init__.py",
    "attention.py",
    "block.py",
    "embedding.py",
    "feedforward.py",
    "hooked.py",
    "layernorm.py",
    "loss.py",
    "model.py",
    "module.py",
    "positional.py",
    "unembed.py",
    "views.py",
    "gated_feedforward.py",
    "rmsnorm.py",
    "rotary.py",
)
NO_TWIN = ("optim.py",)  # numpy_impl's optimisers: their twin is torch.optim


def imported_packages(path):
    """Top-level names a file imports (relative imports resolve to its own package)."""
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add(path.parent.name if node.level else node.module.split(".")[0])
    return names


@functools.cache
def package_imports():
    """{package: {file: imported top-level names}} for every package of the house: parsed once
    for the tests that read it (the tree does not change while they run)."""
    return {
        package: {
            str(path.relative_to(ROOT / package)): imported_packages(path)
            for path in sorted((ROOT / package).rglob("*.py"))
        }
        for package in LEVELS
        if (ROOT / package).is_dir()
    }


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_the_foundation_and_the_wings_import_only_what_they_may(package):
    for file, names in package_imports()[package].items():
        assert not names & FORBIDDEN[package], (
            f"{package}/{file} imports {sorted(names & FORBIDDEN[package])}"
        )


def test_imports_run_downward_only():
    upward = []
    for package, files in package_imports().items():
        for file, names in files.items():
            for name in names & set(LEVELS):
                if name == package or (package, name) in SIDEWAYS:
                    continue
                if LEVELS[name] >= LEVELS[package]:
                    upward.append(f"{package}/{file} imports {name}")
            if "parity_tests" in names:
                upward.append(f"{package}/{file} imports parity_tests")
    assert not upward, "imports that do not run downward:\n" + "\n".join(upward)


def test_the_wings_hold_the_same_files():
    numpy_files = sorted(path.name for path in (ROOT / "numpy_impl").glob("*.py"))
    torch_files = sorted(path.name for path in (ROOT / "torch_impl").glob("*.py"))
    assert numpy_files == sorted(TWIN_FILES + NO_TWIN)
    assert torch_files == sorted(TWIN_FILES)


def test_files_without_a_twin_say_so():
    for path in [ROOT / "numpy_impl" / name for name in NO_TWIN] + [
        ROOT / "gradcheck" / "finite_diff.py"
    ]:
        opening = " ".join((ast.get_docstring(ast.parse(path.read_text())) or "").split("\n\n")[:2])
        assert "no twin" in opening.replace("\n", " "), (
            f"{path.name} does not say in its first lines that it has no twin"
        )


def test_the_layout_check_can_fail(tmp_path):
    """The parser sees an import inside a function, and a relative import as its own package."""
    path = tmp_path / "numpy_impl" / "x.py"
    path.parent.mkdir()
    path.write_text("from .module import Module\n\ndef f():\n    import torch\n")
    assert imported_packages(path) == {"numpy_impl", "torch"}


# classes only the reference writes: torch has them already
NUMPY_ONLY_CLASSES = {"Parameter": "torch.nn.Parameter"}


def classes_and_methods(path):
    """[(class name, [its method names in order])] of a file, in order."""
    tree = ast.parse(path.read_text())
    return [
        (node.name, [item.name for item in node.body if isinstance(item, ast.FunctionDef)])
        for node in tree.body
        if isinstance(node, ast.ClassDef)
    ]


@pytest.mark.parametrize("name", TWIN_FILES)
def test_each_pair_of_twin_files_holds_the_same_classes_in_the_same_order(name):
    numpy_classes = [
        (cls, methods)
        for cls, methods in classes_and_methods(ROOT / "numpy_impl" / name)
        if cls not in NUMPY_ONLY_CLASSES
    ]
    torch_classes = classes_and_methods(ROOT / "torch_impl" / name)
    assert [cls for cls, _ in numpy_classes] == [cls for cls, _ in torch_classes]
    for (cls, numpy_methods), (_, torch_methods) in zip(numpy_classes, torch_classes):
        # the methods both write come in the same order (the reference adds backward, torch its
        # moves)
        shared = [m for m in numpy_methods if m in torch_methods]
        assert shared == [m for m in torch_methods if m in numpy_methods], (
            f"{name}: {cls}'s methods differ in order"
        )


def test_what_both_modules_share_is_written_once():
    """Both twins' ``Module`` build on foundation's ``TwinModule`` (``from_twin``, the state-dict
    check, a user's guarded forward) and write none of it again; each file holds the adapter that
    its array library needs, the same methods in the same order."""
    shared = {"from_twin", "_checked_state_dict", "_user_forward"}
    adapter = [
        "_forward_at_the_boundary",
        "_checked_arguments",
        "_guarded_forward",
        "_weights",
        "_finite",
    ]
    for package in ("numpy_impl", "torch_impl"):
        tree = ast.parse((ROOT / package / "module.py").read_text())
        (module,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Module"]
        methods = [item.name for item in module.body if isinstance(item, ast.FunctionDef)]
        assert "TwinModule" in [getattr(base, "id", None) for base in module.bases], package
        assert not shared & set(methods), f"{package}/module.py writes {shared & set(methods)}"
        assert [m for m in methods if m in adapter] == adapter, package
