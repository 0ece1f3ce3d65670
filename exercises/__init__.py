"""Backprop exercises generated from the reference, and the checker that marks them.

``generate.py`` writes a learner's copy of ``numpy_impl`` with each backward body (the
lines between ``# EXERCISE BEGIN`` and ``# EXERCISE END``) replaced by a stub and a hint;
``check.py`` imports that copy under its own name and compares every gradient with the
torch twin and with finite differences. ``catalog.py`` lists the exercises, easiest first.
"""
