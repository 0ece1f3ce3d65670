"""What both twins stand on, written once, in three rooms:

- ``foundation.contract``: the config, input checks, the boundary and the measure of agreement;
- ``foundation.lens``: TransformerLens's surface (hooks, cache, views, folding, tokenizer, runs);
- ``foundation.files``: the weights file and Hugging Face checkpoint folders.

Nothing here imports torch, ``numpy_impl`` or ``torch_impl``.
"""
