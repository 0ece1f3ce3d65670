"""The wall around a learner's process: Landlock and a seccomp filter, through ctypes.

Python's audit hooks are no sandbox (its documentation says so): the hook lives in the same
process as the learner's code, which can find it and switch it off. The kernel's rules cannot be
switched off from inside. On Linux 5.13 and later, ``enter`` puts the calling process (and
anything it starts) behind them, for good:

    Landlock   files: read only under ``read`` (the learner's copy, this process's runtime copy,
               the Python installation less the project and the other gradient engines), read
               and write only under ``write`` (its scratch folder), execute nothing anywhere;
               TCP: no bind, no connect (ABI 4); no abstract Unix sockets, no signals to a
               process outside the wall (ABI 6)
    seccomp    no new sockets, no changes to a file's times, modes, owners or extended
               attributes (Landlock does not cover those), no execve, no ptrace, no new
               namespaces or mounts (x86-64 and AArch64; elsewhere Landlock alone)

The binding is ours, about a hundred lines of ctypes over the three Landlock system calls and
prctl, because the one Python package for Landlock on PyPI is still a development release; the
constants come from the kernel's ``include/uapi/linux/landlock.h`` and ``seccomp.h``.
``parity_tests/test_exercise_sandbox.py`` tests it from outside: each thing the wall refuses is
tried in a process behind it.

Where there is no Landlock (macOS, Windows, Linux before 5.13, a container that hides it),
``wall()`` says why, and the checker says once that its verdicts there trust the learner's code.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct
import sys
from pathlib import Path

# <linux/landlock.h>: the system calls (the same numbers on every architecture) and rights
CREATE_RULESET, ADD_RULE, RESTRICT_SELF = 444, 445, 446
CREATE_RULESET_VERSION = 1
RULE_PATH_BENEATH = 1
EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
REMOVE_DIR, REMOVE_FILE, MAKE_CHAR, MAKE_DIR = 1 << 4, 1 << 5, 1 << 6, 1 << 7
MAKE_REG, MAKE_SOCK, MAKE_FIFO, MAKE_BLOCK, MAKE_SYM = 1 << 8, 1 << 9, 1 << 10, 1 << 11, 1 << 12
REFER, TRUNCATE, IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15  # ABI 2, 3, 5
# the rights each ABI knows: 13 bits in ABI 1, REFER in 2, TRUNCATE in 3 (and 4), IOCTL_DEV from 5
FS_RIGHTS = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1}
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1  # ABI 4
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1  # ABI 6
FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV  # what a file's rule may hold
READ = READ_FILE | READ_DIR
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2

# <linux/seccomp.h>, <linux/filter.h>, <linux/audit.h>: the filter's words
SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO = 0x7FFF0000, 0x00050000
EPERM = 1
ARCHES = {  # the audit arch word, and the system calls the filter refuses, by number
    "x86_64": (
        0xC000003E,
        {
            "socket": 41,
            "socketpair": 53,
            "execve": 59,
            "execveat": 322,
            "ptrace": 101,
            "utime": 132,
            "utimes": 235,
            "futimesat": 261,
            "utimensat": 280,
            "chmod": 90,
            "fchmod": 91,
            "fchmodat": 268,
            "fchmodat2": 452,
            "chown": 92,
            "fchown": 93,
            "lchown": 94,
            "fchownat": 260,
            "setxattr": 188,
            "lsetxattr": 189,
            "fsetxattr": 190,
            "removexattr": 197,
            "lremovexattr": 198,
            "fremovexattr": 199,
            "setxattrat": 463,
            "removexattrat": 466,
            "mount": 165,
            "umount2": 166,
            "unshare": 272,
            "setns": 308,
            "io_uring_setup": 425,
            "bpf": 321,
            "process_vm_writev": 311,
        },
    ),
    "aarch64": (
        0xC00000B7,
        {
            "socket": 198,
            "socketpair": 199,
            "execve": 221,
            "execveat": 281,
            "ptrace": 117,
            "utimensat": 88,
            "fchmod": 52,
            "fchmodat": 53,
            "fchmodat2": 452,
            "fchown": 55,
            "fchownat": 54,
            "setxattr": 5,
            "lsetxattr": 6,
            "fsetxattr": 7,
            "removexattr": 14,
            "lremovexattr": 15,
            "fremovexattr": 16,
            "setxattrat": 463,
            "removexattrat": 466,
            "mount": 40,
            "umount2": 39,
            "unshare": 97,
            "setns": 268,
            "io_uring_setup": 425,
            "bpf": 280,
            "process_vm_writev": 271,
        },
    ),
}
X32_BIT = 0x40000000  # x86-64's x32 numbers: refused as a whole


class Unavailable(OSError):
    """The wall could not be put up (no Landlock, or a call the kernel refused)."""


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    libc.prctl.restype = ctypes.c_int
    return libc


def wall():
    """(Landlock ABI, "") where the wall stands up here, else (0, a sentence saying why not)."""
    if sys.platform != "linux":
        return 0, f"{platform.system() or sys.platform} has no Landlock (a Linux feature)"
    try:
        libc = _libc()
        abi = libc.syscall(
            CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(CREATE_RULESET_VERSION)
        )
    except (OSError, AttributeError) as error:
        return 0, f"the C library could not be reached to ask for Landlock ({error})"
    if abi < 1:
        errno = ctypes.get_errno()
        why = {38: "this kernel was built without it", 95: "it is switched off at boot (lsm=)"}.get(
            errno, os.strerror(errno)
        )
        return 0, f"Linux {platform.release()} offers no Landlock: {why} (it needs 5.13 or later)"
    return int(abi), ""


def split_roots(roots, excluded):
    """``roots`` less everything under ``excluded``: a root holding an excluded path gives way to
    its other entries, one level at a time (Landlock only grants, so a hole is made by granting
    around it). Paths are resolved; those that do not exist are dropped."""
    excluded = [os.path.realpath(p) for p in excluded]
    granted = []
    for root in dict.fromkeys(os.path.realpath(r) for r in roots):
        if os.path.exists(root):
            granted += _around(root, excluded)
    return [Path(p) for p in granted]


def carve(path, roots):
    """The folders under ``path`` to keep out of reach: ``path`` itself, or, where it holds some
    of ``roots`` (a virtual environment inside the project, a learner's copy inside it), each of
    its entries that holds none, one level at a time. A root equal to ``path`` is not kept."""
    path = os.path.realpath(path)
    inner = [r for r in (os.path.realpath(r) for r in roots) if r != path and _under(r, path)]
    if not inner or not os.path.isdir(path):
        return [Path(path)]
    kept = []
    for name in sorted(os.listdir(path)):
        entry = os.path.join(path, name)
        if entry in inner:
            continue
        if os.path.islink(entry) and any(_under(r, os.path.realpath(entry)) for r in inner):
            continue  # another name for a folder that holds a root (a venv's lib64 -> lib)
        holds_one = any(_under(r, entry) for r in inner) and not os.path.islink(entry)
        kept += carve(entry, inner) if holds_one else [Path(entry)]
    return kept


def _under(path, folder):
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _around(root, excluded):
    if any(_under(root, x) for x in excluded):
        return []
    if not any(_under(x, root) for x in excluded) or not os.path.isdir(root):
        return [root]
    parts = []
    for name in sorted(os.listdir(root)):
        entry = os.path.join(root, name)
        parts += _around(os.path.realpath(entry) if os.path.islink(entry) else entry, excluded)
    return parts


def enter(read, write):
    """Put this process behind the wall for good: read only under ``read``, write only under
    ``write``, no process execution, no sockets. Raises Unavailable where it cannot."""
    abi, why = wall()
    if not abi:
        raise Unavailable(why)
    libc = _libc()
    fs = FS_RIGHTS.get(abi, (1 << 16) - 1)
    attr = struct.pack(
        "=QQQ",
        fs,
        NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0,
        SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0,
    )
    attr = attr[: 8 if abi < 4 else 16 if abi < 6 else 24]
    ruleset = libc.syscall(
        CREATE_RULESET, ctypes.c_char_p(attr), ctypes.c_size_t(len(attr)), ctypes.c_uint32(0)
    )
    if ruleset < 0:
        raise Unavailable(f"landlock_create_ruleset: {os.strerror(ctypes.get_errno())}")
    try:
        writes = fs & ~EXECUTE
        for paths, rights in ((read, READ), (write, writes)):
            for path in paths:
                _add(libc, ruleset, path, rights)
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise Unavailable(f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(ctypes.get_errno())}")
        if libc.syscall(RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)) != 0:
            raise Unavailable(f"landlock_restrict_self: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(ruleset)
    _seccomp(libc)
    return abi


def _add(libc, ruleset, path, rights):
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return  # gone since the list was made: nothing to grant
    try:
        if not os.path.isdir(path):
            rights &= FILE_RIGHTS
        rule = struct.pack("=Qi", rights, fd)  # struct landlock_path_beneath_attr, packed
        if (
            libc.syscall(
                ADD_RULE,
                ctypes.c_int(ruleset),
                ctypes.c_int(RULE_PATH_BENEATH),
                ctypes.c_char_p(rule),
                ctypes.c_uint32(0),
            )
            != 0
        ):
            raise Unavailable(f"landlock_add_rule({path}): {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(fd)


def _seccomp(libc):
    """A filter refusing (EPERM) the calls ARCHES lists for this machine; none elsewhere."""
    machine = platform.machine().lower()
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    if machine not in ARCHES:
        return False
    arch, calls = ARCHES[machine]
    numbers = sorted(set(calls.values()))

    def op(code, k, jt=0, jf=0):
        return struct.pack("=HBBI", code, jt, jf, k)

    LD_W_ABS, JEQ_K, JGE_K, RET_K = 0x20, 0x15, 0x35, 0x06
    program = [
        op(LD_W_ABS, 4),
        op(JEQ_K, arch, 1, 0),
        op(RET_K, SECCOMP_RET_ALLOW),  # another arch
        op(LD_W_ABS, 0),
    ]  # the call's number
    if machine == "x86_64":
        program.append(op(JGE_K, X32_BIT, len(numbers) + 1, 0))
    for i, number in enumerate(numbers):
        program.append(op(JEQ_K, number, len(numbers) - i, 0))
    program += [op(RET_K, SECCOMP_RET_ALLOW), op(RET_K, SECCOMP_RET_ERRNO | EPERM)]
    code = b"".join(program)
    buffer = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("=HxxxxxxQ", len(program), ctypes.addressof(buffer))
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.c_char_p(fprog), 0, 0) != 0:
        raise Unavailable(f"prctl(PR_SET_SECCOMP): {os.strerror(ctypes.get_errno())}")
    return True
