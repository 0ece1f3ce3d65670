"""Start a learner's process, talk to it with a deadline, and make sure it is gone afterwards.

The checker runs each exercise in a fresh process of its own (``learner.py`` is what runs
there): the learner's code never runs in the checker, and nothing one exercise does (a patched
module, an endless loop, ``os._exit``, a forked child) reaches the next. What can happen:

    an answer             the reply, with the audit hook's reports ("borrowed", "refused")
    no answer in time     the process group is killed; the exercise is "timed out"
    the process is gone   (os._exit, a signal, a closed pipe) the exercise is "exited", with how
    a bad message         (not this protocol, another process's) "exited", with what arrived

The process runs ``python -I -B`` (no PYTHONPATH, no user site, no working folder on its path,
no bytecode written), in a session of its own (Ctrl-C at the terminal reaches only the checker,
which then stops it), with PR_SET_PDEATHSIG where Linux has it (it dies with the checker), and is
killed with its whole process group when the exercise is over. It is forked from the checker's
zygote (``ZYGOTE``): an interpreter started the same way that has imported NumPy, scipy.special
and the runtime's modules, runs nothing else and forks a child per exercise, which then sets
itself up as a fresh process would (its session, its pipes, its folder, its TMPDIR, NumPy's
random state drawn afresh; it keeps the zygote's one BLAS thread); the zygote ends when the
checker closes its socket, and its children with it. That saves each
exercise a third of a second of imports. ``TWINS_EXERCISE_FORK=0`` starts a fresh interpreter
(``BOOT``) for each instead, as does a Python without ``socket.send_fds``. Its output goes to a
pipe the checker drains: the first ``OUTPUT_KEPT`` characters are kept to show, the rest only
counted, so a flood of output neither blocks it nor fills anything.

Behind the audit hook stands a wall the kernel keeps (``sandbox.py``: Landlock and seccomp,
where Linux offers them). The process never sees the project: it starts from a runtime copy
the checker makes once in a temporary folder (the modules of ``exercises`` the process needs,
and ``foundation``, which the learner's copy imports), reads only that copy, the learner's copy
and the Python installation (less the project and the other gradient engines), and writes only
a scratch folder of its own (its TMPDIR), which is removed with it. For the block and the model,
the scratch folder also holds the reference files its sub-modules run, with every other
backward body taken out; the process loads them and deletes them before the learner's code is
imported. Where there is no wall, the checker says so once: verdicts there trust the learner's
code.
"""

from __future__ import annotations

import ast
import atexit
import compileall
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from . import protocol, sandbox

# the folder holding exercises/, numpy_impl/, foundation/
PROJECT = Path(__file__).resolve().parent.parent
OUTPUT_KEPT = 2000
BOOT = (  # argv: the pipes' two ends, and the runtime copy (never the project: see runtime_copy)
    "import sys\n"
    "try:\n"
    "    import ctypes; ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL: die with the "
    "checker\n"
    "except Exception:\n"
    "    pass\n"
    "sys.path.insert(0, sys.argv[3])\n"
    "from exercises.learner import main\n"
    "main(int(sys.argv[1]), int(sys.argv[2]))\n"
)
# The zygote: one interpreter per checker that has imported what every learner's process imports
# (NumPy, scipy.special, the runtime's exercises modules and the foundation modules the copy
# imports (PRELOADED): a third of a second of CPU) and forks a fresh child for each exercise, the
# child's own pipes received over its control socket.
# argv: the control socket's fd, the runtime copy, the project, the modules to preload; it finds
# the wall's plan for the installation once (learner.prewarm). A request is the JSON
# {"op": "fork", "cwd", "tmpdir"} with the child's three pipe ends (its input, its output, its
# log) as ancillary fds; or {"op": "wait", "pid", "seconds"}. The answer is one JSON line.
# The child, before anything else: a session of its own, PR_SET_PDEATHSIG (it dies with the
# zygote, which ends when the checker closes its socket), the socket closed and its modules
# dropped (so a learner's "import socket" is an import again, which the audit hook sees), its
# log as stdout and stderr, its working folder and TMPDIR; then learner.main, as BOOT runs it.
ZYGOTE = (
    "import sys\n"
    "sys.path.insert(0, sys.argv[2])\n"
    "from exercises.learner import main\n"
    "import importlib, json, os, socket, time\n"
    "for name in sys.argv[4:]:  # what the copy imports from the runtime's foundation\n"
    "    try:\n"
    "        importlib.import_module(name)\n"
    "    except Exception:  # the child's import of the copy says what went wrong\n"
    "        pass\n"
    "try:\n"
    "    from exercises.learner import prewarm\n"
    "    prewarm(sys.argv[2], sys.argv[3])\n"
    "except Exception:  # each child finds them itself\n"
    "    pass\n"
    "control = socket.socket(fileno=int(sys.argv[1]))\n"
    "child = None\n"
    "while child is None:\n"
    "    try:\n"
    "        data, fds, _, _ = socket.recv_fds(control, 65536, 3)\n"
    "    except OSError:\n"
    "        os._exit(0)\n"
    "    if not data:\n"
    "        os._exit(0)\n"
    "    request = json.loads(data)\n"
    "    if request['op'] == 'fork':\n"
    "        zygote = os.getpid()\n"
    "        pid = os.fork()\n"
    "        if pid == 0:\n"
    "            child = request, fds, zygote\n"
    "            break\n"
    "        for fd in fds:\n"
    "            os.close(fd)\n"
    "        answer = {'pid': pid}\n"
    "    else:\n"
    "        answer, deadline = {'code': None}, time.monotonic() + request['seconds']\n"
    "        while True:\n"
    "            try:\n"
    "                done, status = os.waitpid(request['pid'], os.WNOHANG)\n"
    "            except ChildProcessError:\n"
    "                break\n"
    "            if done:\n"
    "                answer = {'code': os.waitstatus_to_exitcode(status)}\n"
    "                break\n"
    "            if time.monotonic() >= deadline:\n"
    "                answer = {'code': None, 'running': True}\n"
    "                break\n"
    "            time.sleep(0.002)\n"
    "    try:\n"
    "        control.sendall(json.dumps(answer).encode() + b'\\n')\n"
    "    except OSError:  # the checker is gone\n"
    "        os._exit(0)\n"
    "request, (in_fd, out_fd, log_fd), zygote = child\n"
    "os.setsid()\n"
    "try:\n"
    "    import ctypes; ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL: die with the "
    "zygote\n"
    "except Exception:\n"
    "    pass\n"
    "if os.getppid() != zygote:\n"
    "    os._exit(1)\n"
    "control.close()\n"
    "del control, socket\n"
    "for name in [n for n in sys.modules if n in ('socket', '_socket', 'array', 'selectors')]:\n"
    "    del sys.modules[name]\n"
    "os.dup2(log_fd, 1)\n"
    "os.dup2(log_fd, 2)\n"
    "os.close(log_fd)\n"
    "__import__('numpy').random.seed()  # its own random state, as a fresh process has\n"
    "os.chdir(request['cwd'])\n"
    "os.environ['TMPDIR'] = request['tmpdir']\n"
    "if 'tempfile' in sys.modules:\n"
    "    sys.modules['tempfile'].tempdir = None\n"
    "del child, request, zygote, importlib, json, time\n"
    "main(in_fd, out_fd)\n"
)
RUNTIME_FILES = (
    "exercises/learner.py",
    "exercises/protocol.py",
    "exercises/steps.py",
    "exercises/sandbox.py",
)
# The modules of foundation that numpy_impl (and so the learner's copy) imports, with theirs: the
# zygote imports them from the runtime copy once, where each learner's process took 40 ms of CPU
# to import them again (config.py reads its own source for the fields' docs)
PRELOADED = (
    "foundation.contract.arrays",
    "foundation.contract.boundary",
    "foundation.contract.checks",
    "foundation.contract.config",
    "foundation.files.pretrained",
    "foundation.files.weights",
    "foundation.lens.factored",
    "foundation.lens.hooks",
    "foundation.lens.kv_cache",
    "foundation.lens.running",
    "foundation.lens.views",
)
_live = set()  # processes not yet stopped, for the exit handler
_said = []  # the no-wall note, once per checker
_runtime = []  # the shared runtime copy, once made
_zygote = []  # the zygote forking the learner's processes, and its runtime copy
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# learner's processes forked from a zygote (TWINS_EXERCISE_FORK=0: a fresh interpreter each)
FORK = os.environ.get("TWINS_EXERCISE_FORK", "1") != "0" and hasattr(socket, "send_fds")
NO_WALL = (
    "note: {why}, so the exercise checker has no wall the operating system keeps around a "
    "learner's code here; only an audit hook in the learner's own process watches it, and "
    "code that sets out to can switch that off: verdicts on this machine trust the learner."
)


class LearnerLost(Exception):
    """No answer: ``status`` is "timed out" or "exited"; the message says how."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


class Output:
    """Drains a pipe in a thread: keeps the first OUTPUT_KEPT characters, counts the rest."""

    def __init__(self, fd):
        self.fd = fd
        self.kept = bytearray()
        self.total = 0
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def _drain(self):
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            self.total += len(chunk)
            if len(self.kept) < OUTPUT_KEPT:
                self.kept += chunk[: OUTPUT_KEPT - len(self.kept)]

    def text(self):
        shown = self.kept.decode(errors="replace")
        if self.total > len(self.kept):
            shown += f"\n... ({self.total - len(self.kept):,} more bytes not shown)"
        return shown

    def close(self):
        self.thread.join(5)
        try:
            os.close(self.fd)
        except OSError:
            pass


class LearnerProcess:
    """One learner's process for one exercise: ``ask(request)`` answers or raises LearnerLost."""

    def __init__(self, directory, deadline, isolate=None, substitutes=None):
        self.deadline = deadline
        self.events = []  # the audit hook's reports, in order: {"kind", "what", "where"}
        # (read end, write end): the learner reads what the checker writes
        from_checker, to_learner = os.pipe()
        from_learner, to_checker = os.pipe()
        log_read, log_write = os.pipe()
        abi, why = sandbox.wall()
        if not abi and not _said:
            _said.append(why)
            print(NO_WALL.format(why=why), file=sys.stderr)
        self.scratch = Path(tempfile.mkdtemp(prefix="twins-learner-")).resolve()
        try:
            runtime = shared_runtime()
            reference = (
                reference_copy(self.scratch / "_exercise_reference", isolate) if isolate else None
            )
            if FORK:
                self.process = shared_zygote(runtime).fork(
                    (from_checker, to_checker, log_write), directory, self.scratch
                )
            else:
                self.process = subprocess.Popen(
                    [
                        sys.executable,
                        "-I",
                        "-B",
                        "-c",
                        BOOT,
                        str(from_checker),
                        str(to_checker),
                        str(runtime),
                    ],
                    pass_fds=(from_checker, to_checker),
                    stdin=subprocess.DEVNULL,
                    stdout=log_write,
                    stderr=log_write,
                    cwd=directory,
                    start_new_session=True,
                    env={**os.environ, "TMPDIR": str(self.scratch)},
                )
        except BaseException:  # Ctrl-C while it starts: no folder or pipe left behind
            shutil.rmtree(self.scratch, ignore_errors=True)
            for fd in (to_learner, from_learner, log_read):
                os.close(fd)
            raise
        finally:
            for fd in (from_checker, to_checker, log_write):
                os.close(fd)
        _live.add(self)
        self.to_learner = to_learner
        self.reader = protocol.Reader(from_learner)
        self.output = Output(log_read)
        # substitutes: {file: the stub's source} for the files of the copy that do not compile
        protocol.send(
            self.to_learner,
            {
                "directory": str(directory),
                "project": str(PROJECT),
                "isolate": isolate or {},
                "substitutes": substitutes or {},
                "scratch": str(self.scratch),
                "runtime": str(runtime),
                "reference": str(reference or ""),
                "wall": abi,
            },
        )

    def ready(self):
        """The learner's copy imported: {"ready": True}, or {"ready": False, "error": ...}."""
        return self._receive("ready", "while importing your copy")

    def ask(self, request, doing):
        """Send ``request``; its reply, or LearnerLost."""
        try:
            protocol.send(self.to_learner, request)
        except OSError:
            self._lost(doing)
        return self._receive("reply", doing)["reply"]

    def _receive(self, key, doing):
        while True:
            try:
                pid, message = self.reader.read(self.deadline)
            except protocol.Silence:
                self.stop()
                raise LearnerLost(
                    "timed out", f"no answer within the time limit {doing}; the checker stopped it"
                ) from None
            except (protocol.Closed, OSError):
                self._lost(doing)
            except protocol.BadMessage as error:
                self.stop()
                raise LearnerLost(
                    "exited", f"{doing}, your code's process sent {error}: the checker stopped it"
                ) from None
            if pid != self.process.pid:
                self.stop()
                raise LearnerLost(
                    "exited",
                    f"{doing}, a second process answered (pid {pid}: os.fork?); "
                    "the checker stopped both",
                )
            if not isinstance(message, dict):
                self.stop()
                raise LearnerLost(
                    "exited", f"{doing}, your code's process sent something that is no answer"
                )
            if "event" in message:
                self.events.append(message["event"])
                continue
            if key in message:
                return message
            self.stop()
            raise LearnerLost("exited", f"{doing}, your code's process sent an answer out of turn")

    def _lost(self, doing):
        code = self._wait(5)
        self.stop()
        raise LearnerLost(
            "exited", f"the interpreter ended {doing} ({_exit_words(code)})"
        ) from None

    def stop(self):
        """Kill the process and its whole group (anything it started), and wait for it."""
        if self not in _live:
            return
        _live.discard(self)
        try:
            protocol.send(self.to_learner, {"op": "bye"})
        except OSError:
            pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # a session of its own: its group is its id
        except (ProcessLookupError, PermissionError):
            pass
        self._wait(10)
        for fd in (self.to_learner, self.reader.fd):
            try:
                os.close(fd)
            except OSError:
                pass
        self.output.close()
        shutil.rmtree(self.scratch, ignore_errors=True)

    def _wait(self, seconds):
        try:
            return self.process.wait(seconds)
        except subprocess.TimeoutExpired:
            return None


class Zygote:
    """The checker's zygote (``ZYGOTE``): ``fork`` starts a learner's process from it."""

    def __init__(self, runtime):
        ours, theirs = socket.socketpair()
        self.control, self.lock = ours, threading.Lock()
        try:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-I",
                    "-B",
                    "-c",
                    ZYGOTE,
                    str(theirs.fileno()),
                    str(runtime),
                    str(PROJECT),
                    *PRELOADED,
                ],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, **ONE_THREAD},  # no BLAS thread pool to fork
            )
        finally:
            theirs.close()
        self.answers = self.control.makefile("rb")
        self.broken = False  # a question sent and its answer not read (Ctrl-C): never asked again

    def alive(self):
        return not self.broken and self.process.poll() is None

    def _ask(self, request, fds=()):
        with self.lock:
            if self.broken:
                raise OSError("the exercise checker's zygote was interrupted")
            try:
                socket.send_fds(self.control, [json.dumps(request).encode()], list(fds))
                line = self.answers.readline()
            except BaseException:
                self.broken = True
                raise
        if not line:
            self.broken = True
            raise OSError("the exercise checker's zygote process is gone")
        return json.loads(line)

    def fork(self, fds, directory, scratch):
        """A learner's process with ``fds`` (its input, its output, its log) in ``directory``."""
        request = {"op": "fork", "cwd": str(Path(directory).resolve()), "tmpdir": str(scratch)}
        return Forked(self, self._ask(request, fds)["pid"])

    def stop(self):
        self.broken = True
        self.answers.close()
        self.control.close()  # the zygote ends at the end of its input
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Forked:
    """A process the zygote forked, waited for through the zygote (its parent): what a
    ``subprocess.Popen`` gives ``LearnerProcess`` (pid, wait, returncode)."""

    def __init__(self, zygote, pid):
        self.zygote, self.pid, self.returncode = zygote, pid, None

    def wait(self, timeout=None):
        """Its exit code (negative: the signal that ended it), or None where the zygote cannot
        say (it is gone, and the process with it); TimeoutExpired while it runs."""
        if self.returncode is None:
            seconds = 1e9 if timeout is None else timeout
            try:
                answer = self.zygote._ask({"op": "wait", "pid": self.pid, "seconds": seconds})
            except OSError:
                return None
            if answer.get("running"):
                raise subprocess.TimeoutExpired(f"learner {self.pid}", timeout)
            self.returncode = answer["code"]
        return self.returncode


def shared_zygote(runtime):
    """The zygote of ``runtime``, started once (again if it is gone: stopped at exit)."""
    if not _zygote or not _zygote[0].alive() or _zygote[1] != runtime:
        if _zygote:
            _zygote[0].stop()
        _zygote[:] = [Zygote(runtime), runtime]
    return _zygote[0]


def shared_runtime():
    """The runtime copy the checker's learner's processes share, made once (removed at exit):
    read-only to them behind the wall.

    Compiled once here, so that each process reads its modules' bytecode instead of compiling
    them again (``python -B`` writes no bytecode, and may read it).
    """
    if not _runtime or not _runtime[0].exists():
        folder = Path(tempfile.mkdtemp(prefix="twins-runtime-")).resolve()
        atexit.register(shutil.rmtree, folder, True)
        runtime = runtime_copy(folder / "runtime")
        compileall.compile_dir(runtime, quiet=1)
        _runtime[:] = [runtime]
    return _runtime[0]


def runtime_copy(runtime):
    """What the learner's process imports, copied under ``runtime``: never the project itself.

    ``exercises`` gets the modules the process uses (and an empty ``__init__``), ``foundation``
    all of it.
    """
    (runtime / "exercises").mkdir(parents=True)
    (runtime / "exercises" / "__init__.py").write_text("")
    for name in RUNTIME_FILES:
        shutil.copyfile(PROJECT / name, runtime / name)
    shutil.copytree(
        PROJECT / "foundation",
        runtime / "foundation",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    return runtime


def reference_copy(reference, isolate):
    """The files of the classes in ``isolate`` ({class: file}) and the ones they import, copied
    into ``reference``, each ``backward`` body of any other class replaced by a raise."""
    reference.mkdir()
    (reference / "__init__.py").write_text("")
    for name, source in _reference_sources(tuple(sorted(isolate.items()))):
        (reference / name).write_text(source)
    return reference


@functools.lru_cache(maxsize=16)
def _reference_sources(isolate):
    """[(file name, source)] of ``reference_copy``: parsed once per checker for each ``isolate``
    ((class, file) pairs; the block's and the model's), as the checker reads the reference once."""
    sources, kept = [], {cls for cls, _ in isolate}
    wanted, done = [PROJECT / "numpy_impl" / file for _, file in isolate], set()
    while wanted:
        path = wanted.pop()
        if path.name in done:
            continue
        done.add(path.name)
        source = path.read_text()
        tree = ast.parse(source)
        wanted += [
            PROJECT / "numpy_impl" / f"{node.module}.py"
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module
        ]
        sources.append((path.name, without_backwards(source, tree, kept)))
    return tuple(sources)


def without_backwards(source, tree, kept):
    """``source``, each ``backward`` body of a class not in ``kept`` replaced by a raise."""
    lines = source.splitlines(keepends=True)
    for node in sorted(ast.walk(tree), key=lambda n: -getattr(n, "lineno", 0)):
        if not isinstance(node, ast.ClassDef) or node.name in kept:
            continue
        for method in node.body:
            is_backward = isinstance(method, ast.FunctionDef) and method.name == "backward"
            if is_backward and node.name != "HookPoint":  # a hook point's is no exercise
                first, last = method.body[0].lineno, method.end_lineno
                indent = " " * method.body[0].col_offset
                stub = f"{indent}raise NotImplementedError('not in this process')\n"
                lines[first - 1 : last] = [stub]
    return "".join(lines)


@atexit.register
def stop_all():
    """At exit (and on Ctrl-C), no learner's process outlives the checker, nor the zygote."""
    for process in list(_live):
        process.stop()
    if _zygote:
        _zygote[0].stop()
        _zygote.clear()


def _exit_words(code):
    if code is None:
        return "exit code unknown"
    if code < 0:
        name = (
            signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        )
        return f"killed by signal {name}" + (": out of memory?" if name == "SIGKILL" else "")
    return f"exit code {code}: os._exit or a crash"
