"""Files: the weights file (``.npz`` and ``.safetensors``, atomic saves, loads that never unpickle)
and Hugging Face checkpoint folders."""
