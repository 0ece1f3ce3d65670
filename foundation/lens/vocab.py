"""Tokenizers for ``model.tokenizer``: a word-level vocabulary, and GPT-2's byte-level BPE.

    vocab = WordVocabulary(["<pad>", "the", "cat", "sat", "on", "mat"])
    vocab.encode("the cat sat")   -> [1, 2, 3]
    vocab.decode([1, 2, 3])       -> "the cat sat"

Set it as ``model.tokenizer`` and the model's ``to_tokens``, ``to_str_tokens`` and ``to_string``
work as TransformerLens's do with a real tokenizer. Words are the tokens: no sub-words and no
spaces inside tokens, so ``to_str_tokens`` gives plain words (TransformerLens's GPT-2 tokens
carry their leading space, and so do ``BytePairTokenizer``'s, which a GPT-2 checkpoint's
``vocab.json`` and ``merges.txt`` give: ``Transformer.from_pretrained`` sets it).
"""

from __future__ import annotations

import json

from foundation.contract.arrays import as_numpy
from foundation.contract.checks import tokens_as_array


class WordVocabulary:
    """An ordered list of distinct words; a word's id is its index. ``bos_token`` (optional) starts
    sequences."""

    def __init__(self, words, bos_token=None):
        words = list(words)
        if not words or not all(
            isinstance(w, str) and w and not any(c.isspace() for c in w) for w in words
        ):
            raise ValueError(
                f"words must be a non-empty list of non-empty strings without spaces, got {words!r}"
            )
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
            raise ValueError(
                f"text has words outside the vocabulary: {unknown!r}; the vocabulary is "
                f"{self.words!r}"
            )
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


class BytePairTokenizer:
    """GPT-2's byte-level BPE from ``vocab.json`` and ``merges.txt``, read by the ``tokenizers``
    library.

    The same surface as ``WordVocabulary`` (``encode``, ``decode``, ``id_to_word``, ``ids``,
    ``bos_token``), so ``model.to_tokens("Hello world")`` works as in TransformerLens: GPT-2
    splits text into bytes and merges them, so a token carries its leading space (" world").
    ``<|endoftext|>``, when the vocabulary has it, is GPT-2's one special token and the BOS
    that ``to_tokens`` prepends (as TransformerLens does for GPT-2).
    """

    END_OF_TEXT = "<|endoftext|>"
    MAX_FILE_BYTES = 64 << 20  # GPT-2's vocab.json is 1 MB, merges.txt 0.5 MB

    def __init__(self, vocab_path, merges_path):
        from tokenizers import ByteLevelBPETokenizer

        from foundation.files.regular import read_text

        # read here, not by the library: regular files only, bounded (a FIFO would hang it)
        vocab_text = read_text(vocab_path, self.MAX_FILE_BYTES, "vocab.json")
        merges_text = read_text(merges_path, self.MAX_FILE_BYTES, "merges.txt")
        try:
            vocab, merges = json.loads(vocab_text), _merges(merges_text)
            if not isinstance(vocab, dict) or not all(isinstance(i, int) for i in vocab.values()):
                raise ValueError("vocab.json must map each token to an int id")
            # GPT-2's settings: no space added before the text, the byte-level regex split
            self.tokenizer = ByteLevelBPETokenizer(vocab, merges, add_prefix_space=False)
        # RecursionError (deep JSON), ValueError, the library's Exception
        except Exception as error:
            raise ValueError(
                f"{str(vocab_path)!r} and {str(merges_path)!r} are not a byte-level BPE "
                f"vocabulary ({type(error).__name__}: {str(error)[:200]})"
            ) from None
        self.ids = self.tokenizer.get_vocab()  # {token as stored: id}
        self.bos_token = self.END_OF_TEXT if self.END_OF_TEXT in self.ids else None
        if self.bos_token is not None:
            # one token, never split into "<", "|", ...
            self.tokenizer.add_special_tokens([self.END_OF_TEXT])

    def __len__(self):
        return len(self.ids)

    def encode(self, text):
        """'Hello world' -> [15496, 995] (with GPT-2's own files).

        A vocabulary that lacks some of the 256 byte symbols cannot spell every text: where
        Hugging Face's byte-level BPE drops such characters without a word, this refuses the
        text with a ValueError naming them (GPT-2's own vocabulary has all 256 and spells any text).
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        ids = self.tokenizer.encode(text).ids
        if self.tokenizer.decode(ids, skip_special_tokens=False) != text:
            spelled = self.tokenizer.decode(ids, skip_special_tokens=False)
            lost = sorted(set(text) - set(spelled)) or sorted(set(text))
            missing = "".join(lost[:20])
            raise ValueError(
                f"text: this vocabulary cannot spell {missing!r} (its byte symbols are "
                "missing from vocab.json); the text would lose them"
            )
        return ids

    def decode(self, ids):
        """Token ids -> the text they stand for; special tokens are written out, and an id the
        vocabulary lacks (a model's d_vocab may be larger) as ``<|id 50300|>``, never dropped."""
        pieces, known = [], []
        for token in ids:
            token = int(token)
            if token < 0:
                raise ValueError(f"token ids must be non-negative, got {token}")
            if self.tokenizer.id_to_token(token) is not None:
                known.append(token)
                continue
            pieces.append(self.tokenizer.decode(known, skip_special_tokens=False))
            pieces.append(f"<|id {token}|>")
            known = []
        pieces.append(self.tokenizer.decode(known, skip_special_tokens=False))
        return "".join(pieces)

    def id_to_word(self, token):
        """One token id -> its text, e.g. ' world' (a piece of a multi-byte character decodes to
        '\\ufffd')."""
        return self.decode([token])

    def __repr__(self):
        return f"BytePairTokenizer({len(self.ids)} tokens)"


class JsonTokenizer:
    """A Hugging Face ``tokenizer.json`` (Llama's, Pythia's, ...) read by the ``tokenizers``
    library.

    The same surface as ``BytePairTokenizer``. ``encode`` adds no special tokens: ``to_tokens``
    prepends ``bos_token`` (config.json's ``bos_token_id``), as TransformerLens does for Llama;
    ``eos_token`` (``eos_token_id``) is where ``generate`` stops.
    """

    def __init__(self, path, bos_token_id=None, eos_token_id=None):
        from tokenizers import Tokenizer

        from foundation.files.regular import read_text

        # regular, bounded
        text = read_text(path, BytePairTokenizer.MAX_FILE_BYTES, "tokenizer.json")
        try:
            self.tokenizer = Tokenizer.from_str(text)
        except Exception as error:  # the library raises a bare Exception for a malformed file
            raise ValueError(
                f"{str(path)!r} is not a tokenizers tokenizer.json ({error})"
            ) from None
        self.ids = self.tokenizer.get_vocab(with_added_tokens=True)  # {token as stored: id}
        self.bos_token = self._token(bos_token_id, "bos_token_id")
        self.eos_token = self._token(eos_token_id, "eos_token_id")

    def _token(self, token_id, name):
        # config.json may list several end-of-sequence ids: the first is the token
        if isinstance(token_id, list):
            token_id = token_id[0] if token_id else None
        if token_id is None:
            return None
        token = (
            self.tokenizer.id_to_token(token_id)
            if isinstance(token_id, int) and token_id >= 0
            else None
        )
        if token is None:
            raise ValueError(f"config.json: {name} {token_id!r} is not a token of tokenizer.json")
        return token

    def __len__(self):
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text):
        """Text -> token ids, without the special tokens a template would add (to_tokens adds
        BOS)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids):
        """Token ids -> text; special tokens written out, an id the vocabulary lacks as
        ``<|id 50300|>``."""
        pieces, known = [], []
        for token in ids:
            token = int(token)
            if token < 0:
                raise ValueError(f"token ids must be non-negative, got {token}")
            if self.tokenizer.id_to_token(token) is not None:
                known.append(token)
                continue
            pieces.append(self.tokenizer.decode(known, skip_special_tokens=False))
            pieces.append(f"<|id {token}|>")
            known = []
        pieces.append(self.tokenizer.decode(known, skip_special_tokens=False))
        return "".join(pieces)

    def id_to_word(self, token):
        return self.decode([token])

    def __repr__(self):
        return f"JsonTokenizer({len(self)} tokens)"


def as_token_rows(tokens, name="tokens"):
    """Token ids from an ndarray, a tensor or nested lists -> an int ndarray (for decoding), checked
    first."""
    # lists entry by entry: True is no id; meta or sparse tensors refused
    tokens = tokens_as_array(tokens, name)
    array = as_numpy(tokens)
    if array.dtype.kind not in "iu":
        raise TypeError(f"{name} must be token ids (ints), got dtype {array.dtype}")
    return array


def _merges(text):
    """merges.txt -> [(left, right)], one merge a line; the "#version" line and blank lines
    skipped."""
    merges = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or (number == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise ValueError(f"merges.txt line {number} is not two tokens separated by one space")
        merges.append((parts[0], parts[1]))
    return merges
