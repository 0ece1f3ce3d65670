"""The checker's worker process: a learner's code runs there, never in the checker itself.

A backward that never returns, or that ends the interpreter (``sys.exit``, ``os._exit``, a
crash), must not take the checker with it. So ``check`` hands each exercise to a worker
process and waits at most a time limit for the answer:

    no answer in time     the worker is killed; the exercise is "timed out"
    the worker is gone    (os._exit, a signal) the exercise is "exited", with the exit code
    sys.exit inside       caught in the worker, which lives on; the exercise is "exited"

The worker imports numpy, torch and both twins once, before any time limit starts, and stays
alive between exercises and between calls of ``check``: the normal path pays the start once
per process. A worker that was killed is replaced by a fresh one for the next exercise.
Ctrl-C reaches the checker only (the worker runs in a session of its own), and the checker
stops the worker, also while it is still starting: one line, no process left behind.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import traceback
from contextlib import contextmanager
from multiprocessing.connection import Connection
from pathlib import Path

STARTUP_LIMIT = 180.0  # seconds for a fresh worker to import numpy, torch and the twins
PROJECT = Path(__file__).resolve().parent.parent  # the folder holding exercises/, numpy_impl/, torch_impl/
# The child's first path entry would be the working folder, where a learner's copy may sit as
# ./numpy_impl: dropped, so that "numpy_impl" is always the reference (PROJECT is on PYTHONPATH).
SERVE = ("import sys; sys.path[:] = [p for p in sys.path if p not in ('', '.')]; "
         "from exercises.worker import serve; serve(int(sys.argv[1]))")


class WorkerLost(Exception):
    """The worker did not answer: ``status`` is "timed out" or "exited"; the message says how."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


class Worker:
    """One worker process and the connection to it.

    A plain ``python -c`` child, not multiprocessing's spawn, which would re-run the caller's
    main script in the child; the two ends of a socket pair carry pickled requests and answers.
    """

    def __init__(self):
        mine, theirs = socket.socketpair()
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join([str(PROJECT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
        self.process = self.connection = None
        try:
            with _ctrl_c_held():  # a Ctrl-C inside Popen would lose the child: it is raised once self.process is set
                # a session of its own: the terminal's Ctrl-C reaches the checker only, which stops the worker
                self.process = subprocess.Popen(
                    [sys.executable, "-c", SERVE, str(theirs.fileno())], pass_fds=[theirs.fileno()],
                    stdin=subprocess.DEVNULL, env=environment, cwd=os.getcwd(), start_new_session=True)
            theirs.close()
            self.connection = Connection(mine.detach())
            self.receive(STARTUP_LIMIT, "starting")
        except WorkerLost as lost:  # torch missing or broken: the environment's fault, not the learner's
            raise RuntimeError(f"the checker's worker process did not start: {lost} (its error is printed above)") from None
        except BaseException:  # Ctrl-C while it starts: no worker is left behind
            self.stop()
            theirs.close()
            mine.close()
            raise

    def ask(self, request, limit, doing):
        """Send ``request`` and return the answer; WorkerLost if none comes within ``limit`` seconds."""
        self.connection.send(request)
        return self.receive(limit, doing)

    def receive(self, limit, doing):
        if not self.connection.poll(limit):  # also wakes when the worker dies (end of file)
            self.stop()
            raise WorkerLost("timed out", f"no answer within {limit:g} s {doing}; the checker stopped it")
        try:
            kind, value = self.connection.recv()
        except (EOFError, OSError):
            code = self._wait(5)
            self.stop()
            raise WorkerLost("exited", f"the interpreter ended {doing} ({_exit_words(code)})") from None
        if kind == "exit":
            raise WorkerLost("exited", f"{value} {doing}; the checker caught it")
        if kind == "raise":
            raise value
        if kind == "error":
            raise RuntimeError(value)
        return value

    @property
    def alive(self):
        return self.process.poll() is None and not self.connection.closed

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.kill()  # SIGKILL: a learner's loop cannot ignore it
        if self.process is not None:
            self._wait(5)
        if self.connection is not None and not self.connection.closed:
            self.connection.close()

    def _wait(self, seconds):
        try:
            return self.process.wait(seconds)
        except subprocess.TimeoutExpired:
            return None


@contextmanager
def _ctrl_c_held():
    """Hold SIGINT (Ctrl-C) back for the block; one that came meanwhile is raised as the block ends.

    A child started inside inherits the held signal: ``serve`` lets it through again.
    """
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


_worker = None


def worker():
    """The live worker of this process, started when there is none."""
    global _worker
    if _worker is None or not _worker.alive:
        _worker = Worker()
    return _worker


@atexit.register
def stop():
    """Stop the worker of this process, if there is one (at exit, and when the learner presses Ctrl-C)."""
    global _worker
    if _worker is not None:
        _worker.stop()
    _worker = None


def forget_if_stopped():
    """After a WorkerLost: a worker that was stopped or ended is replaced at the next call; one that caught sys.exit stays."""
    global _worker
    if _worker is not None and not _worker.alive:
        _worker = None


def serve(fd):
    """The worker's loop on socket ``fd``: ("call", function, args) -> ("ok", result), ("raise", error), ("exit", how)."""
    connection = Connection(fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the checker's to handle: it stops this process
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # held while the checker started this process
    import numpy  # noqa: F401  (imported before the first time limit starts)
    import torch  # noqa: F401

    import numpy_impl  # noqa: F401
    import torch_impl  # noqa: F401

    try:
        connection.send(("ok", None))
    except OSError:  # the checker is gone (stopped while this process started): nothing to say, to no one
        return
    while True:
        try:
            _, function, args = connection.recv()
        except (EOFError, OSError):
            return  # the checker is gone
        try:
            reply = ("ok", function(*args))
        except SystemExit as error:  # a learner's sys.exit(): caught here, so the worker lives on
            reply = ("exit", f"sys.exit({error.code!r}) was called{_where(error)}")
        except Exception as error:  # the checker's own errors (an ImportError of the copy ...) travel back
            reply = ("raise", error)
        except BaseException:
            reply = ("error", traceback.format_exc())
        try:
            connection.send(reply)
        except Exception:  # an answer that does not pickle
            connection.send(("error", traceback.format_exc()))


def _where(error):
    frames = traceback.extract_tb(error.__traceback__)
    return f" at {frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno}" if frames else ""


def _exit_words(code):
    if code is None:
        return "exit code unknown"
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        return f"killed by signal {name}" + (": out of memory?" if name == "SIGKILL" else "")
    return f"exit code {code}: os._exit or a crash"
