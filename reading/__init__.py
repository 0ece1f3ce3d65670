"""The reading page: both twins' forwards side by side, the NumPy backward beside what it undoes.

``write_page(out_dir)`` writes ``read.html``, generated from the component files each time it
runs. This package reads the twins' source files as text; it imports neither twin, and needs
only the standard library and Pygments.
"""

from .render import build_page, write_page
from .source import SECTIONS, read_hooks, read_sections

__all__ = ["SECTIONS", "build_page", "read_hooks", "read_sections", "write_page"]
