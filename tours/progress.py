"""A small text progress bar for long walk-throughs (no dependency).

On a terminal it redraws one line; into a file or a pipe it writes a line at every tenth,
so logs stay readable.
"""

import sys
import time


def progress(items, label, width=30, stream=None, total=None, status=None):
    """Yield the items of a list while drawing ``label [#####.....] 12/40 3.1s``.

    ``total``: the number of items, for an iterable that is not a list (a stream of
    batches: it is not read ahead). ``status``: a function whose string ends the line
    after each item (say, the latest loss).
    """
    stream = stream or sys.stderr
    if total is None:
        items = list(items)
        total = len(items)
    count = total
    total = max(total, 1)
    interactive = hasattr(stream, "isatty") and stream.isatty()
    start = time.perf_counter()
    last_tenth = -1
    for i, item in enumerate(items):
        yield item
        done = i + 1
        filled = int(width * done / total)
        line = (
            f"{label} [{'#' * filled}{'.' * (width - filled)}] {done}/{count} "
            f"{time.perf_counter() - start:.1f}s"
        )
        if status is not None:
            line += f" {status()}"
        if interactive:
            stream.write("\r" + line + ("\n" if done == count else ""))
        elif done * 10 // total > last_tenth:
            last_tenth = done * 10 // total
            stream.write(line + "\n")
        stream.flush()
