"""The wall around a learner's process: what the kernel refuses, whatever the learner's code does.

``exercises/sandbox.py`` puts the learner's process behind Landlock and a seccomp filter before
any learner's code runs. These tests switch the audit hook off from inside first (as a learner's
code can: it lives in the same process) and then try each route to the project: the project's
files hash the same after the check, the reference is never marked done, and what got through
is printed by the planted code and read back here. Where the kernel offers no Landlock they skip
with that reason, and the checker's note that its verdicts there trust the learner is tested.
"""

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from exercises import sandbox, worker
from exercises.check import check
from exercises.generate import PROJECT
from parity_tests.copies import planted_copy

SAMPLE = 1
DX = 'dx = np.einsum("mv,bpv->bpm", W_U, dlogits, optimize=True)  # [batch, pos, d_model]'
ABI, WHY = sandbox.wall()
needs_landlock = pytest.mark.skipif(not ABI, reason=f"no Landlock here: {WHY}")

# The learner's code finds the audit hook's object through the garbage collector and turns it
# into a hook that lets everything through, as a learner's code can: the hook is Python.
SWITCH_OFF = (
    "import gc\n"
    "        for _guard in [o for o in gc.get_objects() if type(o).__name__ == 'Guard']:\n"
    "            _guard.judge = lambda *a: None\n"
)


def attempts(project):
    """Lines for a backward body: each route tried in turn, those that got through printed."""
    reference = project / "numpy_impl" / "unembed.py"
    objects = (project / ".git" / "objects").rglob("*")
    git_object = next((p for p in objects if p.is_file()), reference)
    target = project / "numpy_impl" / "twins-planted"
    routes = {
        "import the reference": "import importlib; importlib.import_module('numpy_impl.loss')",
        "read the reference": f"open({str(reference)!r}).read()",
        "read .git/objects": f"open({str(git_object)!r}, 'rb').read()",
        "read outputs/": f"os.listdir({str(project / 'outputs')!r}) if os.path.isdir("
        f"{str(project / 'outputs')!r}) else os.listdir({str(project)!r})",
        "readline history": f"import readline; readline.read_history_file({str(reference)!r})",
        "write the reference": f"open({str(reference)!r}, 'a').write('# planted')",
        "create a file": f"open({str(target)!r}, 'w').write('x')",
        "os.system": f"assert os.system('touch {target}') == 0",
        "os.mkfifo": f"os.mkfifo({str(target)!r})",
        "sqlite3": f"import sqlite3; sqlite3.connect({str(target)!r}).execute('create table t(x)')",
        "unix socket bind": f"import socket; socket.socket(socket.AF_UNIX).bind({str(target)!r})",
        "tcp socket": "import socket; socket.create_connection(('127.0.0.1', 9), timeout=1)",
        "os.utime": f"os.utime({str(reference)!r}, (0, 0))",
        "os.setxattr": f"os.setxattr({str(reference)!r}, 'user.twins', b'1')",
        "os.chmod": f"os.chmod({str(reference)!r}, 0o777)",
        "signal the checker": f"os.kill({os.getpid()}, 0)",
        "signal its parent": "os.kill(os.getppid(), 0)",  # the checker's zygote
    }
    lines = ["import os", "_got = []"]
    for name, route in routes.items():
        lines += [
            "try:",
            f"    {route}",
            f"    _got.append({name!r})",
            "except BaseException:",
            "    pass",
        ]
    lines.append("print('GOT ' + __import__('json').dumps(_got), flush=True)")
    return "\n        ".join(lines)


def fingerprint(project):
    """(path, size, mtime, mode, content hash) of each file and folder of the project, and of
    .git's objects and refs (git's own bookkeeping, the index and worktrees, moves as git runs)."""
    rows = []
    skipped = {"__pycache__", ".pytest_cache", ".hypothesis"}
    for root, dirs, files in os.walk(project):
        if Path(root) == project / ".git":
            dirs[:], files = [d for d in dirs if d in ("objects", "refs")], []
        dirs[:] = [d for d in dirs if d not in skipped]
        for name in sorted(dirs + files):
            path = Path(root) / name
            info = path.lstat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
            rows.append((str(path), info.st_size, info.st_mtime_ns, info.st_mode, digest))
    return sorted(rows)


def got_through(result):
    line = next(line for line in (result.output or "").splitlines() if line.startswith("GOT "))
    return json.loads(line[4:])


@needs_landlock
@pytest.mark.parametrize("switched_off", [True, False], ids=["hook switched off", "hook on"])
def test_nothing_reaches_the_project_whatever_the_code_does(solved, tmp_path, switched_off):
    before = fingerprint(PROJECT)
    body = (SWITCH_OFF + "        " if switched_off else "") + attempts(PROJECT)
    directory = planted_copy(solved, tmp_path, "unembed.py", DX, f"{body}\n        {DX}")
    (result,) = check(directory, keys=["unembed"], sample=SAMPLE)
    assert fingerprint(PROJECT) == before, "a project file changed during the check"
    if switched_off:
        assert got_through(result) == [], result.output
        assert result.status == "done"  # nothing borrowed got through, and the body is right
    else:
        assert result.status in ("borrowed", "refused"), result.message  # the hook saw a route


@needs_landlock
def test_a_borrowing_backward_with_the_hook_switched_off_is_not_done(solved, tmp_path):
    line = (
        "import importlib; ref = importlib.import_module('numpy_impl.unembed')\n"
        "        dx = ref.Unembed.backward(self, dlogits)"
    )
    directory = planted_copy(solved, tmp_path, "unembed.py", DX, SWITCH_OFF + "        " + line)
    (result,) = check(directory, keys=["unembed"], sample=SAMPLE)
    assert result.status == "wrong" and "PermissionError" in result.message, result.message


@needs_landlock
def test_the_reading_page_cannot_be_parsed_for_the_answer(solved, tmp_path):
    page = PROJECT / "outputs" / "read.html"
    line = (
        f"text = open({str(page)!r}).read()\n"
        "        dx = np.einsum('mv,bpv->bpm', self.W_U.data, dlogits)"
    )
    directory = planted_copy(solved, tmp_path, "unembed.py", DX, SWITCH_OFF + "        " + line)
    (result,) = check(directory, keys=["unembed"], sample=SAMPLE)
    assert result.status == "wrong", result.message
    assert re.search("PermissionError|FileNotFoundError", result.message), result.message


def test_a_copy_linked_into_the_project_is_refused_with_why(tmp_path):
    (tmp_path / "numpy_impl").symlink_to(PROJECT / "numpy_impl")
    with pytest.raises(ImportError, match=r"numpy_impl is a link to .*numpy_impl, outside your"):
        check(tmp_path, keys=["unembed"], sample=SAMPLE)


def test_a_file_linked_into_the_project_is_refused_with_why(solved, tmp_path):
    directory = planted_copy(solved, tmp_path, "unembed.py", DX, DX)
    (directory / "numpy_impl" / "unembed.py").unlink()
    (directory / "numpy_impl" / "unembed.py").symlink_to(PROJECT / "numpy_impl" / "unembed.py")
    with pytest.raises(ImportError, match=r"unembed.py is a link to .*outside your folder"):
        check(directory, keys=["unembed"], sample=SAMPLE)


def test_a_hard_link_to_the_reference_is_refused_with_why(solved, tmp_path):
    directory = planted_copy(solved, tmp_path, "unembed.py", DX, DX)
    (directory / "numpy_impl" / "unembed.py").unlink()
    try:
        os.link(PROJECT / "numpy_impl" / "unembed.py", directory / "numpy_impl" / "unembed.py")
    except OSError as error:
        pytest.skip(f"no hard link from {tmp_path} into the project here: {error}")
    with pytest.raises(ImportError, match=r"unembed.py is a hard link to the project's"):
        check(directory, keys=["unembed"], sample=SAMPLE)


def test_the_project_itself_is_refused_as_a_copy():
    with pytest.raises(ImportError, match="holds the project itself"):
        check(PROJECT, keys=["unembed"], sample=SAMPLE)


def test_the_runtime_copy_holds_no_backward_but_the_sub_modules(tmp_path):
    """The block's process gets LayerNorm's, attention's and the MLP's backward; no other body."""
    isolate = {
        "LayerNorm": "layernorm.py",
        "MultiHeadAttention": "attention.py",
        "FeedForward": "feedforward.py",
    }
    runtime = worker.runtime_copy(tmp_path / "runtime")
    reference = worker.reference_copy(tmp_path / "reference", isolate)
    copied = {p.name for p in reference.glob("*.py")}
    assert {"attention.py", "feedforward.py", "layernorm.py", "module.py"} <= copied, copied
    assert not copied & {"block.py", "model.py", "loss.py"}, copied  # what they do not import
    assert sorted(p.name for p in runtime.iterdir()) == ["exercises", "foundation"]
    assert sorted(p.name for p in (runtime / "exercises").iterdir()) == [
        "__init__.py",
        "learner.py",
        "protocol.py",
        "sandbox.py",
        "steps.py",
    ]
    import ast

    for path in reference.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                for method in node.body:
                    if getattr(method, "name", "") == "backward" and node.name != "HookPoint":
                        body = ast.unparse(method.body)
                        stripped = body == "raise NotImplementedError('not in this process')"
                        assert stripped == (node.name not in isolate), f"{path.name}: {node.name}"


@needs_landlock
def test_the_sub_modules_source_is_gone_before_the_learners_code_runs(solved, tmp_path):
    line = "# EXERCISE BEGIN\n        norm = self.cfg.normalization"
    look = (
        "import sys, os, tempfile; print('LEFT', "
        "os.listdir(tempfile.gettempdir()), sorted(os.listdir(sys.path[0])), flush=True)"
    )
    directory = planted_copy(solved, tmp_path, "block.py", line, f"{look}\n        {line}")
    (result,) = check(directory, keys=["block"], sample=SAMPLE)
    assert result.status == "done", result.message
    assert "LEFT [] ['exercises', 'foundation']" in result.output, result.output


def test_without_a_wall_the_checker_says_once_that_verdicts_trust_the_learner(
    solved, monkeypatch, capsys
):
    monkeypatch.setattr(sandbox, "wall", lambda: (0, "this test's kernel offers no Landlock"))
    monkeypatch.setattr(worker, "_said", [])
    results = check(solved, keys=["embedding", "unembed"], sample=SAMPLE)
    assert [r.status for r in results] == ["done", "done"]
    said = capsys.readouterr().err
    assert said.count("verdicts on this machine trust the learner") == 1, said
    assert "this test's kernel offers no Landlock" in said


def test_without_a_wall_the_audit_hook_still_refuses(solved, tmp_path, monkeypatch):
    monkeypatch.setattr(sandbox, "wall", lambda: (0, "this test's kernel offers no Landlock"))
    monkeypatch.setattr(worker, "_said", ["said"])
    target = PROJECT / "numpy_impl" / "twins-planted"
    line = f"{DX}\n        import os; os.mkfifo({str(target)!r})"
    directory = planted_copy(solved, tmp_path, "unembed.py", DX, line)
    (result,) = check(directory, keys=["unembed"], sample=SAMPLE)
    assert not target.exists() and result.status == "refused", result.message


# --- the binding itself, in a process of its own ---

PROBE = r"""
import json, os, socket, sys
sys.path.insert(0, sys.argv[1])
from exercises import sandbox
readable, scratch, outside = sys.argv[2], sys.argv[3], sys.argv[4]
sandbox.enter(read=[p for p in sys.path[1:] if os.path.isdir(p)] + [readable], write=[scratch])
def tried(f):
    try:
        f()
        return "allowed"
    except OSError as error:
        return type(error).__name__
print(json.dumps({
    "read a granted file": tried(lambda: open(os.path.join(readable, "f")).read()),
    "write the scratch folder": tried(lambda: open(os.path.join(scratch, "g"), "w").write("x")),
    "write a granted file": tried(lambda: open(os.path.join(readable, "f"), "a").write("x")),
    "read outside": tried(lambda: open(outside).read()),
    "list outside": tried(lambda: os.listdir(os.path.dirname(outside))),
    "execute": tried(lambda: os.execv("/bin/true", ["true"])),
    "socket": tried(lambda: socket.socket(socket.AF_INET)),
    "utime": tried(lambda: os.utime(os.path.join(readable, "f"))),
    "setxattr": tried(lambda: os.setxattr(os.path.join(readable, "f"), "user.a", b"1")),
    "chmod": tried(lambda: os.chmod(os.path.join(readable, "f"), 0o777)),
    "mkfifo": tried(lambda: os.mkfifo(os.path.join(readable, "p"))),
    "signal the parent": tried(lambda: os.kill(os.getppid(), 0)),
}))
"""


@needs_landlock
def test_the_binding_refuses_what_it_says(tmp_path):
    readable, scratch, elsewhere = (tmp_path / n for n in ("readable", "scratch", "elsewhere"))
    for folder in (readable, scratch, elsewhere):
        folder.mkdir()
    (readable / "f").write_text("granted")
    (elsewhere / "secret").write_text("not granted")
    arguments = [str(PROJECT), str(readable), str(scratch), str(elsewhere / "secret")]
    ran = subprocess.run(
        [sys.executable, "-I", "-c", PROBE, *arguments], capture_output=True, text=True, timeout=60
    )
    assert ran.returncode == 0, ran.stderr
    seen = json.loads(ran.stdout)
    allowed = {"read a granted file", "write the scratch folder"}
    assert {k for k, v in seen.items() if v == "allowed"} == allowed, seen
    assert (readable / "f").read_text() == "granted" and (scratch / "g").read_text() == "x"


def test_carving_keeps_a_virtual_environment_inside_the_project(tmp_path):
    project = tmp_path / "project"
    for folder in ("numpy_impl", ".git/objects", ".venv/lib/site", "outputs"):
        (project / folder).mkdir(parents=True)
    site = project / ".venv" / "lib" / "site"
    holes = sandbox.carve(project, [site])
    assert sorted(p.name for p in holes) == [".git", "numpy_impl", "outputs"]
    granted = sandbox.split_roots([site, tmp_path], holes + [tmp_path / "elsewhere"])
    assert site in granted and project not in granted and tmp_path not in granted
    assert all(not p.is_relative_to(project / "numpy_impl") for p in granted)


@needs_landlock
def test_a_copy_inside_the_project_is_checked_and_still_reads_nothing_else(solved):
    """init's default folder sits in the project: the wall grants it and nothing beside it."""
    import shutil
    import tempfile

    directory = Path(tempfile.mkdtemp(prefix="mywork-sandbox-test-", dir=PROJECT))
    try:
        shutil.copytree(solved / "numpy_impl", directory / "numpy_impl")
        body = SWITCH_OFF + "        " + attempts(PROJECT)
        (result,) = check(
            planted_copy_in(directory, f"{body}\n        {DX}"), keys=["unembed"], sample=SAMPLE
        )
        assert result.status == "done", result.message
        assert got_through(result) == [], result.output
    finally:
        shutil.rmtree(directory)


def planted_copy_in(directory, new):
    from parity_tests.copies import plant

    plant(directory / "numpy_impl", "unembed.py", DX, new)
    return directory


def test_ci_allows_the_skip_only_where_the_kernel_lacks_landlock():
    from parity_tests.conftest import _no_landlock

    assert _no_landlock("no Landlock here: an old kernel") == (ABI == 0)
    assert not _no_landlock("safetensors is not installed")


def test_a_virtual_environment_inside_the_project_stays_readable(tmp_path, monkeypatch):
    """.ci/run makes its venv inside the project: the wall grants its site-packages (the venv's
    lib64 -> lib link must not close it), and the audit hook does not call reading it borrowing;
    the project's other files stay out of reach."""
    from exercises import sandbox
    from exercises.learner import Guard

    project = tmp_path / "project"
    site = project / ".venv" / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True)
    (project / ".venv" / "lib64").symlink_to("lib")
    (project / "numpy_impl").mkdir()
    (project / "README.md").write_text("the project")
    excluded = sandbox.carve(project, [site])
    assert sandbox.split_roots([site], excluded) == [site.resolve()]
    assert project / "numpy_impl" in excluded and project / "README.md" in excluded
    monkeypatch.setattr(sys, "path", ["", str(site)])
    guard = Guard(None, tmp_path / "copy", tmp_path / "copy", project)
    assert not guard._reference(str(site / "safetensors" / "__init__.py"))
    assert guard._reference(str(project / "numpy_impl" / "loss.py"))
    assert guard._reference(str(project / "README.md"))
