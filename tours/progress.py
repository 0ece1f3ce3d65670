"""A one-line progress bar for long walk-throughs (no dependency; any tour may use it).

    bar = ProgressBar(total=40, label="gradcheck")
    for case in cases:
        ...
        bar.update(note=case.name)   # one step done
    bar.close()

On a terminal it redraws one line on stderr; in a log or a pipe (not a terminal) it writes
a line at each quarter instead, so captured output stays short.
"""

from __future__ import annotations

import sys
import time


class ProgressBar:
    """Counts finished steps out of ``total`` and shows the count, a bar, the time spent and a note."""

    def __init__(self, total: int, label: str = "", width: int = 30, stream=None, enabled: bool = True):
        if isinstance(total, bool) or not isinstance(total, int) or total < 1:
            raise ValueError(f"total must be a positive int, got {total!r}")
        self.total = total
        self.label = label
        self.width = width
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.interactive = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.done = 0
        self.start = time.perf_counter()
        self.last_quarter = 0

    def update(self, steps: int = 1, note: str = ""):
        """Mark ``steps`` more steps finished; ``note`` says what just finished (or what runs next)."""
        self.done = min(self.total, self.done + steps)
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.start
        filled = self.width * self.done // self.total
        line = (f"{self.label} [{'#' * filled}{'.' * (self.width - filled)}] "
                f"{self.done}/{self.total}  {elapsed:.0f} s  {note}")
        if self.interactive:
            self.stream.write("\r" + line[:120].ljust(120))
            self.stream.flush()
        elif 4 * self.done // self.total > self.last_quarter:
            self.last_quarter = 4 * self.done // self.total
            self.stream.write(line + "\n")
            self.stream.flush()

    def close(self):
        """End the bar's line (on a terminal), so what is printed next starts on a fresh one."""
        if self.enabled and self.interactive:
            self.stream.write("\n")
            self.stream.flush()
