"""Backprop exercises generated from the reference, and the checker that marks them.

``generate.py`` writes a learner's copy of ``numpy_impl`` with each backward body (the
lines between ``# EXERCISE BEGIN`` and ``# EXERCISE END``) replaced by a stub and a hint;
``check.py`` imports that copy under its own name and compares every gradient with the
torch twin and with finite differences. ``catalog.py`` lists the exercises, easiest first.
``diagnose.py`` names a wrong answer's mistake where it recognises one; ``divergence.py``
walks two models' hook points to the first where they part; ``worker.py`` runs the
learner's code in a process of its own, with a time limit per exercise.
"""
