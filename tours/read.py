"""python demo.py read: the two twins side by side, as one HTML page to open in a browser.

It writes OUT/read.html: one section per component in the order of the forward pass (and one
for the whole model) with the equation, the NumPy and torch forwards lined up row by row, the
NumPy backward beside the forward lines it undoes, and a table of every hook point. The page
is read from the source files each time, so it always shows the code as it is.
"""

from reading import read_hooks, read_sections, write_page


def add_arguments(parser):
    """No options of its own: --out names the folder."""


def run(args):
    sections = read_sections()
    hooks = read_hooks(sections)
    path = write_page(args.out, sections, hooks)
    rows = sum(len(part.rows) for section in sections for part in section.parts)
    steps = sum(len(part.steps) for section in sections for part in section.parts)
    print(f"{len(sections)} sections, {rows} forward rows side by side, {steps} backward steps, {len(hooks)} hook points")
    print(f"Wrote {path}")
    print(f"Open it in a browser: {path.resolve().as_uri()}")
