"""Start a learner's process, talk to it with a deadline, and make sure it is gone afterwards.

The checker runs each exercise in a fresh process of its own (``learner.py`` is what runs
there): the learner's code never runs in the checker, and nothing one exercise does (a patched
module, an endless loop, ``os._exit``, a forked child) reaches the next. What can happen:

    an answer             the reply, and the audit hook's reports ("borrowed", "refused") that came with it
    no answer in time     the process group is killed; the exercise is "timed out"
    the process is gone   (os._exit, a signal, a closed pipe) the exercise is "exited", with how
    a bad message         (not this protocol, another process's) "exited", with what arrived

The process runs ``python -I -B`` (no PYTHONPATH, no user site, no working folder on its path,
no bytecode written), in a session of its own (Ctrl-C at the terminal reaches only the checker,
which then stops it), with PR_SET_PDEATHSIG where Linux has it (it dies with the checker), and is
killed with its whole process group when the exercise is over. Its output goes to a pipe the
checker drains: the first ``OUTPUT_KEPT`` characters are kept to show, the rest only counted,
so a flood of output neither blocks it nor fills anything.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from . import protocol

PROJECT = Path(__file__).resolve().parent.parent  # the folder holding exercises/, numpy_impl/, foundation/
OUTPUT_KEPT = 2000
BOOT = (
    "import sys\n"
    "try:\n"
    "    import ctypes; ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL: die with the checker\n"
    "except Exception:\n"
    "    pass\n"
    "sys.path.insert(0, sys.argv[3])\n"
    "from exercises.learner import main\n"
    "main(int(sys.argv[1]), int(sys.argv[2]))\n"
)
_live = set()  # processes not yet stopped, for the exit handler


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
        from_checker, to_learner = os.pipe()  # (read end, write end): the learner reads what the checker writes
        from_learner, to_checker = os.pipe()
        log_read, log_write = os.pipe()
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-I", "-B", "-c", BOOT, str(from_checker), str(to_checker), str(PROJECT)],
                pass_fds=(from_checker, to_checker), stdin=subprocess.DEVNULL, stdout=log_write, stderr=log_write,
                cwd=directory, start_new_session=True)
        finally:
            for fd in (from_checker, to_checker, log_write):
                os.close(fd)
        _live.add(self)
        self.to_learner = to_learner
        self.reader = protocol.Reader(from_learner)
        self.output = Output(log_read)
        # substitutes: {file: the stub's source} for the files of the copy that do not compile
        protocol.send(self.to_learner, {"directory": str(directory), "project": str(PROJECT),
                                        "isolate": isolate or {}, "substitutes": substitutes or {}})

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
                raise LearnerLost("timed out", f"no answer within the time limit {doing}; the checker stopped it") from None
            except (protocol.Closed, OSError):
                self._lost(doing)
            except protocol.BadMessage as error:
                self.stop()
                raise LearnerLost("exited", f"{doing}, your code's process sent {error}: the checker stopped it") from None
            if pid != self.process.pid:
                self.stop()
                raise LearnerLost("exited", f"{doing}, a second process answered (pid {pid}: os.fork?); "
                                            "the checker stopped both")
            if not isinstance(message, dict):
                self.stop()
                raise LearnerLost("exited", f"{doing}, your code's process sent something that is no answer")
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
        raise LearnerLost("exited", f"the interpreter ended {doing} ({_exit_words(code)})") from None

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

    def _wait(self, seconds):
        try:
            return self.process.wait(seconds)
        except subprocess.TimeoutExpired:
            return None


@atexit.register
def stop_all():
    """At exit (and on Ctrl-C), no learner's process outlives the checker."""
    for process in list(_live):
        process.stop()


def _exit_words(code):
    if code is None:
        return "exit code unknown"
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        return f"killed by signal {name}" + (": out of memory?" if name == "SIGKILL" else "")
    return f"exit code {code}: os._exit or a crash"
