"""The reading page: both twins' forwards side by side, the NumPy backward beside what it undoes.

``write_page(out_dir, sections, hooks, measured)`` writes ``read.html``, generated from the
component files each time it runs. ``source`` reads the twins' files as text (``ast`` and
``tokenize``, importing neither twin); ``measure`` runs both twins on the demo's sentences with a
line tracer, for the numbers beside the lines (it imports both twins and torch, so it is imported
only where it is used); ``formulas`` typesets each section's formula as MathML; ``render`` writes
the HTML with Pygments.
"""

from .render import build_page, write_page
from .source import SECTIONS, read_hooks, read_sections

__all__ = ["SECTIONS", "build_page", "read_hooks", "read_sections", "write_page"]
