"""What both twins stand on, written once: the config, input checks, the weights file, hook and
cache machinery that does not depend on the array library, and the measure of agreement.

Nothing here imports torch, ``numpy_impl`` or ``torch_impl``.
"""
