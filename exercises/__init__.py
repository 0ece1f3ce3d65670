"""Backprop exercises generated from the reference, and the checker that marks them.

``generate.py`` writes a learner's copy of ``numpy_impl`` with each backward body (the lines
between ``# EXERCISE BEGIN`` and ``# EXERCISE END``, in steps where ``# EXERCISE STEP`` lines
split it; ``steps.py`` reads the marks) replaced by a stub and a hint; ``check.py`` marks the
copy against the reference and finite differences. The learner's code runs in a process of its
own (``learner.py``, started and stopped by ``worker.py``), which sends back plain data
(``protocol.py``); the verdict is made in the checker's process. ``catalog.py`` lists the
exercises, easiest first; ``diagnose.py`` names a wrong answer's mistake where one fits
exactly; ``divergence.py`` walks two models' hook points to the first where they part;
``notebook.py`` writes the exercises as a Jupyter notebook.
"""
