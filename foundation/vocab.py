"""A word-level vocabulary: whitespace-separated words <-> token ids (a stand-in for a tokenizer).

    vocab = WordVocabulary(["<pad>", "the", "cat", "sat", "on", "mat"])
    vocab.encode("the cat sat")   -> [1, 2, 3]
    vocab.decode([1, 2, 3])       -> "the cat sat"

Set it as ``model.tokenizer`` and the model's ``to_tokens``, ``to_str_tokens`` and ``to_string``
work as TransformerLens's do with a real tokenizer. Words are the tokens: no sub-words and no
spaces inside tokens, so ``to_str_tokens`` gives plain words (TransformerLens's GPT-2 tokens
carry their leading space).
"""

from __future__ import annotations

import numpy as np

from .checks import tokens_as_array


class WordVocabulary:
    """An ordered list of distinct words; a word's id is its index. ``bos_token`` (optional) starts sequences."""

    def __init__(self, words, bos_token=None):
        words = list(words)
        if not words or not all(isinstance(w, str) and w and not any(c.isspace() for c in w) for w in words):
            raise ValueError(f"words must be a non-empty list of non-empty strings without spaces, got {words!r}")
        if len(set(words)) != len(words):
            raise ValueError(f"words must be distinct, got {words!r}")
        if bos_token is not None and bos_token not in words:
            raise ValueError(f"bos_token {bos_token!r} is not one of the words {words!r}")
        self.words = words
        self.ids = {word: i for i, word in enumerate(words)}
        self.bos_token = bos_token

    def __len__(self):
        return len(self.words)

    def encode(self, text):
        """'the cat sat' -> [1, 2, 3]; an unknown word is a ValueError that names it."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        unknown = [word for word in text.split() if word not in self.ids]
        if unknown:
            raise ValueError(f"text has words outside the vocabulary: {unknown!r}; the vocabulary is {self.words!r}")
        return [self.ids[word] for word in text.split()]

    def decode(self, ids):
        """[1, 2, 3] -> 'the cat sat'."""
        return " ".join(self.id_to_word(i) for i in ids)

    def id_to_word(self, token):
        token = int(token)
        if not 0 <= token < len(self.words):
            raise ValueError(f"token id must lie in [0, {len(self.words)}), got {token}")
        return self.words[token]

    def __repr__(self):
        return f"WordVocabulary({len(self.words)} words)"


def as_token_rows(tokens, name="tokens"):
    """Token ids from an ndarray, a tensor or nested lists -> an int ndarray (for decoding), checked first."""
    tokens = tokens_as_array(tokens, name)  # lists entry by entry: True is no id; meta or sparse tensors refused
    array = tokens.detach().cpu().numpy() if hasattr(tokens, "detach") else np.asarray(tokens)
    if array.dtype.kind not in "iu":
        raise TypeError(f"{name} must be token ids (ints), got dtype {array.dtype}")
    return array
