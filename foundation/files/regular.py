"""Read a file the user named: a regular file only, and never more than a stated limit.

A FIFO named where a file is expected would block ``open`` until a writer comes (forever), a
character device (``/dev/zero``) never ends, a folder is no file: each is a one-line ValueError
naming the file and what it is. The file is opened with O_NONBLOCK, so opening a FIFO returns at
once, and checked with ``fstat`` on that very descriptor (no window between the check and the
read); at most ``min(its size, limit)`` bytes are read, and a file over ``limit`` is refused.
"""

from __future__ import annotations

import os
import stat

KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def kind_of(mode):
    """'a FIFO (named pipe)', 'a folder', ... for a st_mode that is no regular file."""
    return next((kind for test, kind in KINDS if test(mode)), "not a regular file")


def read_bytes(path, limit, what="file"):
    """The bytes of the regular file ``path``; another kind of file, or one over ``limit`` bytes,
    is a one-line ValueError that says ``what`` it was meant to be."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(
                f"{os.fsdecode(path)!r} is {kind_of(info.st_mode)}, not a regular file: "
                f"not a {what}"
            )
        if info.st_size > limit:
            raise ValueError(
                f"{os.fsdecode(path)!r} is {info.st_size:,} bytes, over the {limit:,} "
                f"a {what} may be here"
            )
        chunks, left = [], min(info.st_size, limit) + 1  # one more: a file that grew is refused
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > limit:
        raise ValueError(f"{os.fsdecode(path)!r} grew past the {limit:,} bytes a {what} may be")
    return data


def read_text(path, limit, what="file"):
    """``read_bytes`` decoded as UTF-8; bytes that are not UTF-8 are a one-line ValueError."""
    data = read_bytes(path, limit, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{os.fsdecode(path)!r} is not UTF-8 text (byte {error.start}): not a {what}"
        ) from None
