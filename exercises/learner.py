"""The learner's process: where a learner's copy is imported and run, and nothing is judged.

The checker (``check.py``) starts one of these per exercise (``worker.py``) and asks it to build
the learner's component with weights it sends, to run forward and backward on inputs and an
upstream gradient it sends, and to send back what came out: every gradient, every hook point's
gradient, the arrays it was given as they are afterwards. It never sends a verdict: the checker
compares what it gets with references it computed itself, in its own process, which runs no
line of the learner's code. Messages are JSON and raw arrays (``protocol.py``), never pickle.

Before the learner's copy is imported, an audit hook (PEP 578: Python code can add a hook but
never remove one) is installed. It refuses, and reports to the checker at once:

    borrowed   importing the reference (numpy_impl), the twin (torch_impl), torch, or another
               gradient engine (jax, autograd, tensorflow, sympy, ...), or the project's
               checking code, by any route (import, importlib, __import__: they all raise the
               "import" event; none of them is in sys.modules here, so none is there to take);
               reading the reference's or the twin's files
    refused    starting a process (fork, exec, spawn, system, subprocess), ctypes, signalling
               another process, writing a file outside the learner's folder and the temp folder

The hook reports; the wall stops. Before the hook, where the kernel offers one (``sandbox.py``),
the process puts itself behind a wall it cannot take down: it reads only its runtime copy, the
learner's copy and the Python installation (less the project, torch and the other gradient
engines), writes only its scratch folder, and runs no program and opens no socket. So code that
switches the hook off still reaches nothing: the project's files (the reference, ``.git``,
``outputs/``) cannot be read or changed by any route.

Besides the gradients, it reports what a backward did on the side: every array it changed in place
(each parameter's .data, each module's cache and other arrays, compared byte for byte), each forward
it called (a profile function; finite differences call the forward), how many times each hook
point's backward ran and, when asked, the dtype of the gradient each was handed (a hook that
keeps nothing else) and the first line of the learner's after which an array held another dtype
than the model's (a trace function over the learner's lines only).

This process imports only the standard library, NumPy, ``foundation`` (which the copy imports)
and its own helpers (``protocol.py``, ``steps.py``, ``sandbox.py``), all from the runtime copy
``worker.py`` made, never from the project. The block's and the model's exercises run the
reference's backward in their sub-modules, so that a mistake shows where it is: those functions
are loaded before the hook from that copy (every other backward body taken out), under a private
name that is then dropped from sys.modules, and the files are deleted before the learner's code
is imported; the exercise's own class is never among them.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import itertools
import linecache
import os
import shutil
import sys
import types
import zlib
from pathlib import Path

import numpy as np

# the exact GELU's erf: imported before the audit hook, which refuses what scipy's import does
import scipy.special  # noqa: F401

from exercises import protocol, sandbox, steps

BORROWED_MODULES = {
    "numpy_impl",
    "torch_impl",
    "torch",
    "torchvision",
    "torchaudio",
    "functorch",
    "jax",
    "jaxlib",
    "autograd",
    "tensorflow",
    "keras",
    "tinygrad",
    "mlx",
    "sympy",
    "numdifftools",
    "transformers",
    "gradcheck",
    "exercises",
    "tours",
    "interp",
    "training",
    "reading",
    "parity_tests",
    "benchmarks",
    "demo",
    "_exercise_reference",
}
REFUSED_MODULES = {
    "subprocess",
    "_posixsubprocess",
    "multiprocessing",
    "pty",
    "_ctypes",
    "ctypes",
    "readline",
    "socket",
    "_socket",
    "sqlite3",
    "_sqlite3",
}
PROCESS_EVENTS = {
    "os.fork",
    "os.forkpty",
    "os.exec",
    "os.posix_spawn",
    "os.spawn",
    "os.system",
    "subprocess.Popen",
    "os.startfile",
    "pty.spawn",
}
WRITE_EVENTS = {
    "os.rename": 2,
    "os.remove": 1,
    "os.rmdir": 1,
    "os.truncate": 1,
    "os.link": 2,
    "os.symlink": 2,
    "os.mkdir": 1,
    "shutil.rmtree": 1,
    "os.chmod": 1,
    "os.chown": 1,
    "os.utime": 1,
    "os.setxattr": 1,
    "os.removexattr": 1,
    "os.chflags": 1,
    "os.mkfifo": 1,
    "os.mknod": 1,
    "sqlite3.connect": 1,
}
READ_EVENTS = {
    "readline.read_history_file",
    "readline.read_init_file",
    "readline.append_history_file",
    "readline.write_history_file",
}
SOCKET_EVENTS = {
    "socket.__new__",
    "socket.bind",
    "socket.connect",
    "socket.sendto",
    "socket.sendmsg",
}
# by name anywhere (other clones), besides the project's
REFERENCE_FOLDERS = ("numpy_impl", "torch_impl")
PROTECTED_IN_PROJECT = ("numpy_impl", "torch_impl", "gradcheck")
SHARED_LIBRARIES = (
    "/lib",
    "/lib64",
    "/usr/lib",
    "/usr/lib64",
    "/usr/local/lib",
    "/etc/ld.so.cache",
)  # what an extension module links to
_loads = itertools.count()


class NotAllowed(RuntimeError):
    """What the audit hook raises: the operation does not happen."""


# --- the learner's package ---


def find_package(directory) -> Path:
    """The learner's package folder: DIR/numpy_impl, or DIR itself if it holds __init__.py."""
    path = Path(directory)
    for candidate in (path / "numpy_impl", path):
        if (candidate / "__init__.py").is_file():
            return candidate
    raise FileNotFoundError(
        f"no exercise copy in {directory}: expected {path / 'numpy_impl' / '__init__.py'} "
        f"(create one with: python demo.py exercises init {directory})"
    )


def load_package(directory, substitutes=None):
    """Import the learner's package under a fresh name of its own, so it never clashes with
    numpy_impl.

    substitutes: {file name: source} for files of the copy that do not compile (a syntax error in
        one exercise's file): each is loaded from the source given (the stub, with the reference's
        forward and no backward), so the other exercises still run.
    (The checker never calls this: it runs here, in the learner's process. Tests use it to hold a
    copy in their own hands.)
    """
    package_dir = find_package(directory)
    name = f"_learner_numpy_impl_{next(_loads)}"
    spec = importlib.util.spec_from_file_location(
        name, package_dir / "__init__.py", submodule_search_locations=[str(package_dir)]
    )
    package = importlib.util.module_from_spec(spec)
    sys.modules[name] = package
    # leave no __pycache__ behind
    writes_bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        for file, source in sorted((substitutes or {}).items()):
            stand_in = types.ModuleType(f"{name}.{Path(file).stem}")
            stand_in.__package__ = name
            stand_in.__file__ = f"<{file}, as init wrote it: yours does not compile>"
            sys.modules[stand_in.__name__] = stand_in
            exec(compile(source, stand_in.__file__, "exec"), vars(stand_in))
        spec.loader.exec_module(package)
    except BaseException as error:  # a learner's syntax error is the common case: say where it is
        unload_package(package)
        if isinstance(error, SyntaxError):
            what = f"SyntaxError: {error.msg} at {Path(str(error.filename)).name}:{error.lineno}"
        else:
            what = describe(error, package_dir)["text"]
        raise ImportError(f"your copy in {package_dir} does not import: {what}") from error
    finally:
        sys.dont_write_bytecode = writes_bytecode
    return package


def unload_package(package):
    for name in [
        n for n in sys.modules if n == package.__name__ or n.startswith(package.__name__ + ".")
    ]:
        del sys.modules[name]


# --- errors, described as plain data ---


def _safe(function, fallback):
    try:
        return function()
    # a learner's exception may raise anything, even from __str__
    except BaseException as error:  # noqa: B036
        return fallback(error)


def describe(error, package_dir=None):
    """{"type", "message", "text", "where", "line", "shapes", "not_started", "base"} for an
    exception: plain data.

    Every step is guarded: a learner's exception whose ``__str__`` or ``__name__`` raises still
    gets a description.
    """
    kind = _safe(lambda: str(type(error).__name__), lambda e: "an exception")
    if isinstance(error, SystemExit):
        message = _safe(lambda: repr(error.code), lambda e: "?")
    else:
        message = _safe(
            lambda: str(error),
            lambda e: f"(its message could not be made: str() raised {type(e).__name__})",
        )
    message = message if len(message) <= 2000 else message[:2000] + " ..."
    where, line, shapes, nonfinite = "", "", [], []
    frame_tb = None
    try:
        # the innermost frame of the learner's own files (not the boundary's)
        for tb in _walk(error.__traceback__):
            filename = tb.tb_frame.f_code.co_filename
            if package_dir is None or (
                _inside(filename, package_dir) and Path(filename).name != "module.py"
            ):
                frame_tb = tb
        if frame_tb is None:
            tbs = list(_walk(error.__traceback__))
            frame_tb = tbs[-1] if tbs else None
        if frame_tb is not None:
            filename, lineno = frame_tb.tb_frame.f_code.co_filename, frame_tb.tb_lineno
            where = f"{Path(filename).name}:{lineno}"
            line = linecache.getline(filename, lineno).strip()
            if package_dir is not None and _inside(filename, package_dir):
                shapes = _operand_shapes(frame_tb.tb_frame, filename, lineno)
                nonfinite = _nonfinite_locals(frame_tb.tb_frame)
    except BaseException:  # noqa: B036
        pass
    return {
        "type": kind,
        "message": message,
        "text": f"{kind}: {message}" + (f" at {where}" if where else ""),
        "where": where,
        "line": line,
        "shapes": shapes,
        "nonfinite": nonfinite,
        "not_started": isinstance(error, NotImplementedError),
        "base": not isinstance(error, Exception),
    }


def _nonfinite_locals(frame):
    """[{"name", "masked"}] for each float array in ``frame`` holding NaN or inf; masked: exactly
    where k_pos > q_pos."""
    found = []
    for name, value in dict(frame.f_locals).items():
        if (
            isinstance(value, np.ndarray)
            and value.dtype.kind == "f"
            and not np.all(np.isfinite(value))
        ):
            masked = False
            if value.ndim >= 2 and value.shape[-1] == value.shape[-2] > 1:
                hidden = np.triu(np.ones(value.shape[-2:], dtype=bool), k=1)  # [q_pos, k_pos]
                bad = ~np.isfinite(value)
                masked = bool(bad[..., hidden].all() and not bad[..., ~hidden].any())
            found.append({"name": str(name), "masked": masked})
    return found[:20]


def _walk(tb):
    while tb is not None:
        yield tb
        tb = tb.tb_next


def _inside(filename, folder):
    try:
        return Path(filename).resolve().is_relative_to(Path(folder).resolve())
    except (OSError, ValueError):
        return False


SAFE_METHODS = {
    "T",
    "swapaxes",
    "transpose",
    "reshape",
    "sum",
    "mean",
    "data",
    "grad",
    "astype",
    "copy",
}


def _operand_shapes(frame, filename, lineno):
    """For the statement at ``lineno``: the shapes of the operands of each ``@``, einsum and ``+=``
    in it.

    Only operands made of names, attributes, subscripts and a few array methods are evaluated
    again (in the frame that raised), so nothing the learner wrote runs twice with side effects.
    """
    try:
        tree = ast.parse("".join(linecache.getlines(filename)))
    except SyntaxError:
        return []
    statement = None
    for node in ast.walk(tree):
        if isinstance(node, ast.stmt) and node.lineno <= lineno <= node.end_lineno:
            if not isinstance(
                node, (ast.FunctionDef, ast.ClassDef, ast.If, ast.For, ast.While, ast.With, ast.Try)
            ):
                statement = node
    if statement is None:
        return []

    def shape(node):
        if not _evaluable(node):
            return None
        try:
            # (a target's Store context becomes a load)
            expression = ast.parse(ast.unparse(node), mode="eval")
            value = eval(
                compile(expression, filename, "eval"), frame.f_globals, dict(frame.f_locals)
            )
        except BaseException:  # noqa: B036
            return None
        return (
            list(np.shape(value))
            if isinstance(value, (np.ndarray, np.generic, float, int))
            else None
        )

    found = []
    for node in ast.walk(statement):
        if isinstance(node, ast.BinOp) and isinstance(
            node.op, (ast.MatMult, ast.Add, ast.Sub, ast.Mult, ast.Div)
        ):
            op = {ast.MatMult: "@", ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}[
                type(node.op)
            ]
            found.append(
                {
                    "op": op,
                    "operands": [
                        [ast.unparse(side), shape(side)] for side in (node.left, node.right)
                    ],
                }
            )
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", "")) == "einsum"
        ):
            if (
                node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                found.append(
                    {
                        "op": "einsum",
                        "subscripts": node.args[0].value,
                        "operands": [[ast.unparse(arg), shape(arg)] for arg in node.args[1:]],
                    }
                )
    if isinstance(statement, ast.AugAssign):
        found.append(
            {
                "op": "+=" if isinstance(statement.op, ast.Add) else "op=",
                "operands": [
                    [ast.unparse(side), shape(side)] for side in (statement.target, statement.value)
                ],
            }
        )
    return found[:12]


def _evaluable(node):
    for child in ast.walk(node):
        if isinstance(child, ast.Call):
            if not (isinstance(child.func, ast.Attribute) and child.func.attr in SAFE_METHODS):
                return False
        elif isinstance(child, (ast.Lambda, ast.NamedExpr, ast.Await, ast.Yield, ast.YieldFrom)):
            return False
    return True


# --- the audit hook ---


class Guard:
    """The audit hook's settings and its channel to the checker."""

    def __init__(self, out_fd, package_dir, work_dir, project, extra_protected=(), scratch=None):
        self.out_fd = out_fd
        self.package_dir = str(Path(package_dir).resolve())
        self.writable = [str(Path(scratch or _temp_dir()).resolve())]
        self.work_dir, self.project = str(Path(work_dir).resolve()), str(Path(project).resolve())
        self.protected = [str((Path(project) / name).resolve()) for name in PROTECTED_IN_PROJECT]
        self.protected += [str(Path(p).resolve()) for p in extra_protected]
        # the Python installation may sit inside the project (a virtual environment made there,
        # as .ci/run's): its folders are not the project's files (an ancestor of it never is)
        self.installation = [
            real
            for real in (os.path.realpath(entry) for entry in sys.path[1:] if entry)
            if os.path.isdir(real) and not sandbox._under(self.project, real)
        ]
        self.pid = os.getpid()
        self.busy = False

    def __call__(self, event, args):
        if self.busy:
            return
        self.busy = True
        try:
            verdict = self.judge(event, args)
        except BaseException:  # noqa: B036  (a hook that fails must not let the operation through)
            verdict = ("refused", f"{event} (the checker could not tell what it does)")
        finally:
            self.busy = False
        if verdict is not None:
            kind, what = verdict
            where = self.where()
            try:
                protocol.send(self.out_fd, {"event": {"kind": kind, "what": what, "where": where}})
            except BaseException:  # noqa: B036  (the channel is gone: refusing is still enough)
                pass
            raise NotAllowed(f"the exercise checker does not allow this in a backward: {what}")

    def judge(self, event, args):
        if event == "import":
            name = str(args[0])
            top = name.split(".")[0]
            if top in BORROWED_MODULES:
                return "borrowed", f"import {name}"
            if top in REFUSED_MODULES:
                return "refused", f"import {name}"
            return None
        if event == "open":
            path, mode, flags = (list(args) + [None, None, None])[:3]
            if isinstance(path, int) or path is None:
                return None
            path = os.fsdecode(path)
            if self._writes(mode, flags) and not self._writable(path):
                return "refused", f"writing {path}"
            if self._reference(path):
                return "borrowed", f"reading {path}"
            return None
        if event in READ_EVENTS and args and isinstance(args[0], (str, bytes, os.PathLike)):
            path = os.fsdecode(args[0])
            if self._reference(path) or not self._writable(path):
                return "borrowed", f"{event} on {path}"
            return None
        if event in SOCKET_EVENTS:
            return "refused", f"{event} (a socket)"
        if event in PROCESS_EVENTS:
            return "refused", f"{event} (starting a process)"
        if event.startswith("ctypes."):
            return "refused", f"{event} (ctypes)"
        if event in ("os.kill", "os.killpg"):
            target = args[0]
            if event == "os.kill" and target in (self.pid, 0):
                return None
            if event == "os.killpg" and target == os.getpgid(self.pid):
                return None
            return "refused", f"{event}({target}) (signalling another process)"
        if event in WRITE_EVENTS:
            for path in list(args)[: WRITE_EVENTS[event]]:
                if isinstance(path, (str, bytes, os.PathLike)) and not self._writable(
                    os.fsdecode(path)
                ):
                    return "refused", f"{event} on {os.fsdecode(path)}"
        return None

    @staticmethod
    def _writes(mode, flags):
        if isinstance(mode, str) and any(c in mode for c in "wax+"):
            return True
        if isinstance(flags, int):
            return bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND))
        return False

    def _writable(self, path):
        real = os.path.realpath(path)
        inside = lambda folder: real == folder or real.startswith(folder + os.sep)  # noqa: E731
        if inside(self.project) and not inside(self.work_dir):
            return False  # the project's own files, even where the project sits in the temp folder
        return any(inside(folder) for folder in self.writable)

    def _reference(self, path):
        real = os.path.realpath(path)
        inside = lambda folder: real == folder or real.startswith(folder + os.sep)  # noqa: E731
        if inside(self.package_dir) or inside(self.work_dir):
            return False
        if any(inside(folder) for folder in self.protected):
            return True
        if inside(self.project) and not any(inside(folder) for folder in self.installation):
            return True  # the project's files, .git and outputs/ among them
        return any(part in REFERENCE_FOLDERS for part in Path(real).parts[:-1])

    def where(self):
        """The learner's file and line that asked for it (the innermost frame in their package)."""
        try:
            # inside the hook: this raises the hook's event again, which returns at once
            frame = sys._getframe(2)
        except BaseException:  # noqa: B036
            return ""
        self.busy = True
        try:
            while frame is not None:
                filename = frame.f_code.co_filename
                if os.path.realpath(filename).startswith(self.package_dir + os.sep):
                    return f"{Path(filename).name}:{frame.f_lineno}"
                frame = frame.f_back
            return ""
        except BaseException:  # noqa: B036
            return ""
        finally:
            self.busy = False


def _temp_dir():
    import tempfile

    return tempfile.gettempdir()


# --- the reference's backward for sub-modules (block and model only) ---


def reference_backwards(folder, files):
    """{class name: the reference's backward} for ``files`` ({class: file name}), loaded by file
    from ``folder`` (a copy in the process's scratch folder, see ``worker.reference_copy``).

    The private package runs no ``__init__`` (which would load every class) and is dropped from
    sys.modules once the functions are taken.
    """
    name = "_exercise_reference"
    package = types.ModuleType(name)
    package.__path__ = [str(folder)]
    sys.modules[name] = package
    try:
        functions = {}
        for cls, file in files.items():
            module = importlib.import_module(f"{name}.{Path(file).stem}")
            functions[cls] = getattr(module, cls).backward
        return functions
    finally:
        for loaded in [n for n in sys.modules if n == name or n.startswith(name + ".")]:
            del sys.modules[loaded]


# --- the wall's plan ---


def engine_folders(runtime):
    """Where torch and the other gradient engines of BORROWED_MODULES are installed, if they are
    (the runtime copy's own ``exercises`` aside)."""
    found = []
    for name in sorted(BORROWED_MODULES):
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        if spec is not None and spec.submodule_search_locations:
            found += [str(Path(p).resolve()) for p in spec.submodule_search_locations]
        elif spec is not None and spec.origin and os.path.isfile(spec.origin):
            found.append(str(Path(spec.origin).resolve()))
    runtime = str(Path(runtime).resolve())
    return [p for p in found if not (p == runtime or p.startswith(runtime + os.sep))]


_engines = {}  # {runtime: engine_folders(runtime)}, found once in the zygote: see prewarm
_installation = {}  # {(its roots, what is excluded): what the wall grants of the installation}


def prewarm(runtime, project):
    """In the checker's zygote, before it forks: the gradient engines' folders and what the wall
    grants of the Python installation (a listing of site-packages around them), found once for
    every learner's process it forks rather than by each (6 ms of CPU); a process whose folder
    sits inside the project, and so carves it otherwise, finds its own."""
    _engines[runtime] = engine_folders(runtime)
    readable({"project": project, "runtime": runtime, "directory": runtime}, _engines[runtime])


def readable(setup, engines):
    """What the process may read behind the wall: its runtime copy, the learner's folder and the
    Python installation (this process's sys.path), less the project and the gradient engines."""
    project = Path(setup["project"]).resolve()
    installation = [
        p for p in sys.path[1:] if p and os.path.isdir(p) and Path(p).resolve() != project
    ]
    libraries = [p for p in SHARED_LIBRARIES if os.path.exists(p)]
    own = [setup["runtime"], setup["directory"]]
    excluded = sandbox.carve(project, own + installation + libraries) + engines
    key = (tuple(installation + libraries), tuple(map(str, excluded)))
    if key not in _installation:
        _installation[key] = sandbox.split_roots(installation + libraries, excluded)
    return sandbox.split_roots(own, excluded) + _installation[key]


def reaches_out(package_dir, directory, project):
    """A sentence where the learner's copy is, or links into, something not its own; else ""."""
    folder, project = Path(directory).resolve(), Path(project).resolve()
    if folder == project or project.is_relative_to(folder):
        return (
            f"your folder {directory} holds the project itself ({project}): check the copy "
            "that 'python demo.py exercises init DIR' makes, in a folder of its own"
        )
    references = {}
    for name in ("numpy_impl", "torch_impl"):
        for path in (project / name).glob("*.py"):
            info = path.stat()
            references[(info.st_dev, info.st_ino)] = path
    if not Path(package_dir).resolve().is_relative_to(folder):
        real = Path(package_dir).resolve()
        return f"your {Path(package_dir).name} is a link to {real}, outside your folder"
    for root, dirs, files in os.walk(package_dir):
        for name in dirs + files:
            path = Path(root) / name
            real = path.resolve()
            if path.is_symlink() and not real.is_relative_to(folder):
                return f"your {path.relative_to(folder)} is a link to {real}, outside your folder"
            if path.is_file() and not path.is_symlink():
                info = path.stat()
                if info.st_nlink > 1 and (info.st_dev, info.st_ino) in references:
                    return (
                        f"your {path.relative_to(folder)} is a hard link to the project's "
                        f"{references[(info.st_dev, info.st_ino)]}"
                    )
    return ""


def _audited(name, function):
    def audited(path, *args, **kwargs):
        sys.audit(f"os.{name}", path)
        return function(path, *args, **kwargs)

    return audited


# --- what a backward did besides its gradient: side effects, forward calls, dtypes ---


def snapshot(module):
    """{path: a copy} of every array a backward must leave as it found it: each parameter's .data,
    each module's cache (its entries one by one) and its other arrays (the causal mask, a table)."""
    found = {}
    for name, sub in module.named_modules():
        if type(sub).__name__ == "HookPoint":
            continue
        prefix = f"{name}." if name else ""
        for attribute, value in vars(sub).items():
            if attribute in ("forward_record", "changed"):
                continue
            if (
                hasattr(value, "data")
                and hasattr(value, "grad")
                and isinstance(value.data, np.ndarray)
            ):
                found[f"{prefix}{attribute}.data"] = value.data.copy()
            elif isinstance(value, np.ndarray):
                found[f"{prefix}{attribute}"] = value.copy()
            elif isinstance(value, (tuple, list)) and attribute == "cache":
                for index, item in enumerate(value):
                    if isinstance(item, np.ndarray):
                        found[f"{prefix}cache[{index}]"] = item.copy()
    return found


def changed_since(module, before):
    """The paths of ``before`` whose array is gone or differs, byte for byte, now:
    [{"path", "cls"}]."""
    now = snapshot(module)
    classes = {name: type(sub).__name__ for name, sub in module.named_modules()}
    out = []
    for path, old in before.items():
        new = now.get(path)
        if (
            new is None
            or new.dtype != old.dtype
            or new.shape != old.shape
            or new.tobytes() != old.tobytes()
        ):
            owner = path.rsplit(".", 1)[0] if "." in path else ""
            owner = (
                owner
                if owner in classes
                else (path.rsplit(".", 2)[0] if path.count(".") >= 2 else "")
            )
            out.append({"path": path, "cls": classes.get(owner, classes.get("", ""))})
    return out


# linear maps whose transpose is the same function given other arguments: rotate(x, cos, sin)'s is
# rotate(dout, cos, -sin), the rotation back. A backward calling one applies the transpose (the
# chain rule), as it would a matrix product: no forward evaluated.
SELF_TRANSPOSED = ("rotate",)


def forward_codes(package):
    """{code object: "Class.forward"} of every forward of the package and its top-level functions
    (log_softmax, ...): what a backward that evaluates the forward calls (not SELF_TRANSPOSED)."""
    codes = {}
    for name, loaded in list(sys.modules.items()):
        if not (
            name == package.__name__ or name.startswith(package.__name__ + ".")
        ) or name.endswith(".module"):
            continue
        for value in list(vars(loaded).values()):
            if isinstance(value, type) and value.__module__ == name and "forward" in vars(value):
                function = inspect.unwrap(vars(value)["forward"])
                if hasattr(function, "__code__"):
                    codes[function.__code__] = f"{value.__name__}.forward"
            elif (
                isinstance(value, types.FunctionType)
                and value.__module__ == name
                and not value.__name__.startswith("_")
                and value.__name__ not in SELF_TRANSPOSED
            ):
                codes[value.__code__] = value.__name__
    return codes


class ForwardWatch:
    """A profile function, while a backward runs, noting each call of a forward (``calls``:
    [{"what", "where"}])."""

    def __init__(self, codes, package_dir):
        self.codes = codes
        self.package_dir = str(Path(package_dir).resolve())
        self.calls = []

    def __enter__(self):
        sys.setprofile(self._profile)
        return self

    def __exit__(self, *exc):
        sys.setprofile(None)
        return False

    def _profile(self, frame, event, arg):
        if event != "call" or frame.f_code not in self.codes or len(self.calls) >= 5:
            return
        caller = frame.f_back
        while caller is not None and (
            Path(caller.f_code.co_filename).name == "module.py"
            or not os.path.realpath(caller.f_code.co_filename).startswith(self.package_dir + os.sep)
        ):
            caller = caller.f_back
        where = (
            f"{Path(caller.f_code.co_filename).name}:{caller.f_lineno}"
            if caller is not None
            else ""
        )
        line = (
            linecache.getline(caller.f_code.co_filename, caller.f_lineno).strip()
            if caller is not None
            else ""
        )
        self.calls.append({"what": self.codes[frame.f_code], "where": where, "line": line})


class DtypeTrace:
    """A trace function over the learner's own lines: the first line after which an array (a local,
    or a parameter's .grad) holds another float dtype than the model's (``first``: {"where", "line",
    "name", "dtype"})."""

    def __init__(self, package_dir, dtype, parameters):
        self.package_dir = str(Path(package_dir).resolve())
        self.dtype = np.dtype(dtype)
        self.parameters = parameters  # [(name, Parameter)]
        self.first = None
        self.last = {}  # frame -> the line it ran last

    def __enter__(self):
        sys.settrace(self._global)
        return self

    def __exit__(self, *exc):
        sys.settrace(None)
        return False

    def _global(self, frame, event, arg):
        filename = frame.f_code.co_filename
        if self.first is not None or Path(filename).name == "module.py":
            return None
        if not os.path.realpath(filename).startswith(self.package_dir + os.sep):
            return None
        return self._local

    def _local(self, frame, event, arg):
        if self.first is not None:
            return None
        if event in ("line", "return"):
            previous = self.last.get(frame)
            if previous is not None:
                self._look(frame, previous)
            self.last[frame] = frame.f_lineno
        return self._local

    def _look(self, frame, lineno):
        found = [
            (name, value)
            for name, value in frame.f_locals.items()
            if isinstance(value, (np.ndarray, np.generic))
        ]
        found += [(f"self.{name}.grad", p.grad) for name, p in self.parameters]
        for name, value in found:
            dtype = getattr(value, "dtype", None)
            if (
                dtype is not None
                and dtype.kind in "fc"
                and dtype != self.dtype
                and np.ndim(value) > 0
            ):
                filename = frame.f_code.co_filename
                self.first = {
                    "where": f"{Path(filename).name}:{lineno}",
                    "name": str(name),
                    "dtype": dtype.name,
                    "line": linecache.getline(filename, lineno).strip(),
                }
                return


def gradient_editor(seed, name):
    """A backward hook for hook point ``name``: the gradient times a random factor, plus random
    noise (the same in the checker and here). A hook point's backward skipped, or called twice,
    changes the result; noise at masked scores shows a mask's backward left out."""
    index = zlib.crc32(name.encode())
    factor = 0.5 + float(np.random.default_rng([seed, index]).uniform())

    def edit(grad, hook):
        noise = np.random.default_rng([seed, index, 1]).standard_normal(np.shape(grad))
        return grad * factor + noise.astype(grad.dtype)

    return edit


# --- what the checker asks for ---


class Session:
    """One exercise's worth of requests, in the learner's process."""

    def __init__(self, package, package_dir, isolation):
        self.package = package
        self.package_dir = package_dir
        self.isolation = isolation  # {class name: reference backward} for sub-modules
        self.forward_codes = forward_codes(package)

    def build(self, request):
        cls, fields = request["cls"], request["cfg"]
        package = self.package
        cfg = package.TransformerConfig(**fields)
        if cls == "CrossEntropyLoss":
            module = package.CrossEntropyLoss()
        elif cls == "Transformer":
            module = package.Transformer(cfg, seed=0)
        elif cls == "MultiHeadAttention":  # grouped-query when cfg.n_key_value_heads is set
            module = package.MultiHeadAttention.for_config(cfg, 0)
        else:
            module = getattr(package, cls)(cfg, 0)
        module.load_state_dict(request["weights"])
        if request.get("isolate"):
            for name, child in module.named_modules():
                # GroupedQueryAttention runs MultiHeadAttention's backward: found by its bases
                owner = next(
                    (c.__name__ for c in type(child).__mro__ if c.__name__ in self.isolation), None
                )
                if name and owner:
                    child.backward = types.MethodType(self.isolation[owner], child)
        return module

    def hooks(self, module, request):
        """Recording hooks (the gradient arriving at every hook point) and the pattern-editing
        hook."""
        recorded = {}
        self.counts = counts = {}  # how many times each hook point's backward ran
        self.dtypes = dtypes = {}  # the dtype of the first gradient each hook point's backward got

        def record(x, hook, name):
            recorded[name] = np.array(x, copy=True)
            counts[name] = counts.get(name, 0) + 1

        def watch(x, hook, name):
            dtypes.setdefault(name, x.dtype.name)

        for name, sub in module.named_modules():
            if not (hasattr(sub, "bwd_hooks") and hasattr(sub, "add_hook")):
                continue
            if request.get("record"):
                sub.add_hook(lambda x, hook, name=name: record(x, hook, name), dir="bwd")
            elif request.get("watch_dtypes"):  # only the dtype: nothing copied
                sub.add_hook(lambda x, hook, name=name: watch(x, hook, name), dir="bwd")
            if request.get("edit_pattern") and name.split(".")[-1] == "hook_pattern":
                sub.add_hook(edit_pattern, dir="fwd")
            if request.get("edit_grads") is not None:
                sub.add_hook(gradient_editor(request["edit_grads"], name), dir="bwd")
        return recorded

    def run(self, request):
        """Forward, backward (twice, with the very same upstream array, when asked): everything that
        came out."""
        try:
            module = self.build(request)
        except BaseException as error:  # noqa: B036
            return {"stage": "build", "error": describe(error, self.package_dir)}
        recorded = self.hooks(module, request)
        inputs = [
            np.array(x, copy=True) if isinstance(x, np.ndarray) else x for x in request["inputs"]
        ]
        try:
            out = module.forward(*inputs)
        except BaseException as error:  # noqa: B036
            return {"stage": "forward", "error": describe(error, self.package_dir)}
        upstream = request["dout"]
        upstream = (
            np.array(upstream, copy=True) if isinstance(upstream, np.ndarray) else float(upstream)
        )
        reply = {"out": plain(out)}
        module.zero_grad()
        before = snapshot(module)
        watch = ForwardWatch(self.forward_codes, self.package_dir)
        try:
            if request.get("trace_dtype"):
                with DtypeTrace(
                    self.package_dir, fields_dtype(request), list(module.named_parameters())
                ) as trace:
                    module.backward(upstream)
                return {"dtype_change": trace.first}
            with watch:
                dinput = module.backward(upstream)
        except BaseException as error:  # noqa: B036
            reply.update(
                stage="backward",
                error=describe(error, self.package_dir),
                hooks=dict(recorded),
                forward_calls=watch.calls,
            )
            return reply
        reply.update(
            dinput=plain(dinput),
            grads=grads_of(module),
            hooks=dict(recorded),
            dout_after=plain(upstream),
            inputs_after=[plain(x) for x in inputs],
            changed=changed_since(module, before),
            forward_calls=watch.calls,
            hook_calls=dict(self.counts),
            hook_dtypes=dict(self.dtypes),
        )
        if request.get("twice"):
            recorded.clear()
            try:
                again = module.backward(upstream)  # no zero_grad: gradients must add up (+=)
            except BaseException as error:  # noqa: B036
                reply["second"] = {"error": describe(error, self.package_dir)}
                return reply
            reply["second"] = {
                "dinput": plain(again),
                "grads": grads_of(module),
                "dout_after": plain(upstream),
            }
        return reply

    def finite_differences(self, request):
        """For each direction D: sum((out(theta + h D) - out(theta - h D)) * R) / (2 h), in
        float64."""
        module = self.build(request)
        inputs = [
            np.array(x, copy=True) if isinstance(x, np.ndarray) else x for x in request["inputs"]
        ]
        arrays = {name: p.data for name, p in module.named_parameters()}
        if request.get("input_name"):
            arrays[request["input_name"]] = inputs[0]
        R, h = np.asarray(request["dout"], dtype=np.float64), float(request["step"])
        values = []
        for direction in request["directions"]:
            saved = {name: arrays[name].copy() for name in direction}
            for name, D in direction.items():
                arrays[name][...] = saved[name] + h * D
            plus = np.array(module.forward(*inputs), dtype=np.float64)
            for name, D in direction.items():
                arrays[name][...] = saved[name] - h * D
            minus = np.array(module.forward(*inputs), dtype=np.float64)
            for name in direction:
                arrays[name][...] = saved[name]
            values.append(float(((plus - minus) * R).sum() / (2 * h)))
        return {"values": values}

    def step(self, request):
        """One ``# EXERCISE STEP`` region of the learner's backward, run on its own with the given
        gradients."""
        try:
            module = self.build(request)
        except BaseException as error:  # noqa: B036
            return {"stage": "build", "error": describe(error, self.package_dir)}
        recorded = self.hooks(module, request)
        inputs = [
            np.array(x, copy=True) if isinstance(x, np.ndarray) else x for x in request["inputs"]
        ]
        try:
            module.forward(*inputs)
        except BaseException as error:  # noqa: B036
            return {"stage": "forward", "error": describe(error, self.package_dir)}
        path = Path(self.package_dir) / request["file"]
        source = path.read_text()
        lines = source.splitlines()
        try:
            body = next(
                b for b in steps.find_marked_bodies(source, path.name) if b.cls == request["cls"]
            )
            region = next(r for r in body.steps if r.name == request["step"])
        except (StopIteration, ValueError, SyntaxError):
            return {
                "stage": "markers",
                "error": {
                    "text": f"the line '{steps.STEP} {request['step']}: ...' is missing from "
                    f"your {path.name}, or its markers are out of place"
                },
            }
        namespace = vars(sys.modules[type(module).__module__])
        try:
            values = steps.prologue_values(body, lines, module, str(path), namespace)
            given = {**values, **request["given"]}
            missing = [name for name in region.inputs if name not in given]
            if missing:
                return {"stage": "inputs", "missing": missing}
            function = steps.region_function(
                lines, region.first, region.last, region.inputs, str(path), namespace
            )
            module.zero_grad()
            # .grad holding something already: a step adds (+=) into it
            prefill = request.get("prefill") or {}
            for name, parameter in module.named_parameters():
                if name in prefill:
                    parameter.grad[...] = prefill[name]
            arguments = {name: given[name] for name in region.inputs}
            # the gradients it is given
            passed = {
                name: value.copy()
                for name, value in arguments.items()
                if name in request["given"] and isinstance(value, np.ndarray)
            }
            before = snapshot(module)
            if request.get("trace_dtype"):
                with DtypeTrace(
                    self.package_dir, fields_dtype(request), list(module.named_parameters())
                ) as trace:
                    function(module, **arguments)
                return {"dtype_change": trace.first}
            watch = ForwardWatch(self.forward_codes, self.package_dir)
            with watch:
                scope = function(module, **arguments)
        except BaseException as error:  # noqa: B036
            return {
                "stage": "step",
                "error": describe(error, self.package_dir),
                "hooks": dict(recorded),
            }
        scope.pop("self", None)
        changed = changed_since(module, before) + [
            {"path": name, "cls": "given"}
            for name, value in passed.items()
            if arguments[name].dtype != value.dtype or arguments[name].tobytes() != value.tobytes()
        ]
        return {
            "locals": {
                name: plain(value) for name, value in scope.items() if isinstance(value, np.ndarray)
            },
            "grads": grads_of(module),
            "hooks": dict(recorded),
            "changed": changed,
            "forward_calls": watch.calls,
            "hook_calls": dict(self.counts),
        }


def fields_dtype(request):
    return request["cfg"].get("dtype") or "float64"


def edit_pattern(pattern, hook):
    """The pattern-editing hook: key 1 ablated (zeroed) for every query, as an interpretability run
    might."""
    pattern[..., 1] = 0.0
    return pattern


def plain(value):
    """An array, a number or None as it is; anything else as a description (it cannot travel, and is
    wrong anyway)."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, np.generic) and value.dtype.name in protocol.DTYPES:
        return np.asarray(value)
    if isinstance(value, np.ndarray) and value.dtype.name in protocol.DTYPES:
        return value
    return {
        "not_an_array": _safe(lambda: type(value).__name__, lambda e: "object"),
        "dtype": _safe(lambda: str(value.dtype), lambda e: ""),
    }


def grads_of(module):
    """{name: a copy of p.grad}: what it holds now (a later backward adds into the parameter's own
    array)."""
    return {
        name: plain(np.array(p.grad, copy=True) if isinstance(p.grad, np.ndarray) else p.grad)
        for name, p in module.named_parameters()
    }


# --- the loop ---


def main(in_fd, out_fd):
    """Read the setup, install the guard, import the copy, then answer requests until "bye" or end
    of input."""
    reader = protocol.Reader(in_fd)
    _, setup = reader.read()
    isolation = {}
    if setup.get("reference"):
        isolation = reference_backwards(setup["reference"], setup["isolate"])
        # the functions are held; the source goes
        shutil.rmtree(setup["reference"], ignore_errors=True)
    linecache.clearcache()
    package_dir = find_package(setup["directory"])
    engines = list(_engines.get(setup["runtime"]) or engine_folders(setup["runtime"]))
    refusal = reaches_out(package_dir, setup["directory"], setup["project"])
    if refusal:
        protocol.send(out_fd, {"event": {"kind": "borrowed", "what": refusal, "where": ""}})
        protocol.send(out_fd, {"ready": False, "error": refusal})
        return
    if setup.get("wall"):
        try:
            sandbox.enter(read=readable(setup, engines), write=[setup["scratch"]])
        except sandbox.Unavailable as error:
            said = f"the checker could not put up its wall: {error}"
            protocol.send(out_fd, {"ready": False, "error": said})
            return
    for name in ("mkfifo", "mknod"):  # no audit event of their own: give them one
        setattr(os, name, _audited(name, getattr(os, name)))
    sys.addaudithook(
        Guard(out_fd, package_dir, setup["directory"], setup["project"], engines, setup["scratch"])
    )
    try:
        package = load_package(setup["directory"], setup.get("substitutes"))
    except ImportError as error:
        protocol.send(
            out_fd,
            {
                "ready": False,
                "error": _safe(lambda error=error: str(error), lambda e: "ImportError"),
                "cause": describe(error.__cause__ or error, package_dir),
            },
        )
        return
    protocol.send(out_fd, {"ready": True})
    session = Session(package, str(package_dir), isolation)
    operations = {"run": session.run, "fd": session.finite_differences, "step": session.step}
    while True:
        try:
            _, request = reader.read()
        except protocol.Closed:
            return
        if request.get("op") == "bye":
            return
        try:
            reply = operations[request["op"]](request)
        except SystemExit as error:  # a learner's sys.exit(): reported, and the process lives on
            reply = {
                "exit": _safe(lambda error=error: repr(error.code), lambda e: "?"),
                "where": describe(error, package_dir)["where"],
            }
        except BaseException as error:  # noqa: B036
            reply = {"stage": "checker", "error": describe(error, package_dir)}
        try:
            protocol.send(out_fd, {"reply": reply})
        except (TypeError, ValueError) as error:
            protocol.send(
                out_fd,
                {
                    "reply": {
                        "stage": "reply",
                        "error": {"text": f"an answer that cannot be sent: {error}"},
                    }
                },
            )
