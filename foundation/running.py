"""Running the model as TransformerLens users do, written once for both twins.

    model(tokens, return_type="loss")     the mean next-token cross-entropy ("logits", "both", None too)
    model.generate(tokens, max_new_tokens=5, temperature=0)   greedy; temperature > 0 samples (with seed)
    model.to_tokens("the cat sat"), model.to_str_tokens(...), model.to_string(...)   with model.tokenizer

The twin-specific steps are the loss class, turning an int ndarray into the model's own tokens
(a tensor on the model's device for the torch twin) and switching autograd off while generating;
each twin's model provides them. Sampling happens in NumPy float64 from the logits, with a
``numpy.random.Generator`` seeded by ``seed``, so both twins draw the same tokens from the same
logits.
"""

from __future__ import annotations

import numbers
from contextlib import nullcontext

import numpy as np

from .vocab import as_token_rows

RETURN_TYPES = ("logits", "loss", "both", None)


class RunningMixin:
    """return_type, generate and the tokenizer helpers; the model sets ``loss_class``."""

    tokenizer = None  # a foundation.vocab.WordVocabulary (or anything with encode, decode, id_to_word)
    takes_any_tokens = True  # the boundary turns lists and the other library's arrays into this twin's

    # --- the twin-specific steps (torch_impl's model overrides the last two) ---

    def _native_tokens(self, tokens):
        """An int ndarray [batch, pos] -> what this model's forward takes."""
        return tokens

    def _inference(self):
        """A context in which forward passes record nothing for a backward pass."""
        return nullcontext()

    # --- written once ---

    def _check_return_type(self, return_type):
        if return_type not in RETURN_TYPES:
            raise ValueError(f"return_type must be one of {RETURN_TYPES}, got {return_type!r}")
        if return_type in ("loss", "both") and not self.cfg.unembed:
            raise ValueError(f"return_type={return_type!r} needs logits (cfg.unembed=True)")

    def gradient_shape(self, result):
        """``backward`` takes the gradient of the output (the logits), whatever ``return_type`` gave back."""
        return self._output_shape

    def _with_return_type(self, out, tokens, return_type):
        """The forward's output as ``return_type`` asks: logits, the next-token loss, both, or None."""
        self._output_shape = tuple(out.shape)
        if return_type == "logits":
            return out
        if return_type is None:
            return None
        if tokens.shape[1] < 2:
            raise ValueError(f"return_type={return_type!r}: tokens need at least 2 positions for a next-token loss")
        # position p predicts tokens[:, p + 1]; the last position predicts nothing
        loss = self.loss_class().forward(out[:, :-1], tokens[:, 1:])  # []
        return loss if return_type == "loss" else (out, loss)

    def generate(self, tokens, max_new_tokens=10, temperature=0.0, seed=None):
        """Extend ``tokens`` [batch, pos] by ``max_new_tokens`` ids, one forward pass per new token.

        ``temperature=0``: greedy, the most likely next token (the lowest id among ties).
        ``temperature > 0`` (a finite real number of any type): sampled from softmax(logits /
        temperature) with a generator seeded by ``seed``; as the temperature shrinks towards 0 this
        puts all the mass on the most likely token (shared equally among ties), never a NaN.
        A str is encoded with ``model.tokenizer`` and the result decoded back to a str.
        Returns the whole sequence [batch, pos + max_new_tokens] (tokens first) as the model's
        own array type; the total must fit in n_ctx.
        """
        if not self.cfg.unembed:
            raise ValueError("generate needs logits (cfg.unembed=True)")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be a non-negative int, got {max_new_tokens!r}")
        temperature = check_temperature(temperature)
        text_in = isinstance(tokens, str)
        rows = self._token_rows(tokens)  # [batch, pos]
        if rows.shape[1] + max_new_tokens > self.cfg.n_ctx:
            raise ValueError(f"generate: {rows.shape[1]} tokens + max_new_tokens={max_new_tokens} exceed "
                             f"n_ctx={self.cfg.n_ctx}")
        rng = np.random.default_rng(seed)
        with self._inference():
            for _ in range(max_new_tokens):
                logits = self(self._native_tokens(rows))  # [batch, pos, d_vocab]
                last = as_float64(logits)[:, -1]  # [batch, d_vocab]
                if temperature == 0:
                    new = last.argmax(axis=-1)  # [batch]
                else:
                    # the max subtracted before dividing: a tiny temperature sends the rest to -inf, never NaN
                    with np.errstate(over="ignore"):
                        scaled = (last - last.max(axis=-1, keepdims=True)) / temperature  # [batch, d_vocab]
                    probs = np.exp(scaled)  # [batch, d_vocab]
                    probs /= probs.sum(axis=-1, keepdims=True)
                    new = np.array([rng.choice(self.cfg.d_vocab, p=p) for p in probs])  # [batch]
                rows = np.concatenate([rows, new[:, None]], axis=1)  # [batch, pos + 1]
        if text_in:
            return self.to_string(rows[0])
        return self._native_tokens(rows)

    def _token_rows(self, tokens):
        """str (via the tokenizer), nested lists, an ndarray or a tensor -> int ndarray [batch, pos]."""
        if isinstance(tokens, str):
            return as_token_rows(self.to_tokens(tokens))
        rows = as_token_rows(tokens)
        if rows.ndim != 2:
            raise ValueError(f"tokens must have shape [batch, pos], got {rows.shape}")
        return rows

    def _require_tokenizer(self, method):
        if self.tokenizer is None:
            raise ValueError(f"{method} needs model.tokenizer, e.g. model.tokenizer = "
                             "foundation.vocab.WordVocabulary(['<pad>', 'the', 'cat', ...])")
        return self.tokenizer

    def to_tokens(self, input, prepend_bos=None):
        """A str (or a list of str of equal length in words) -> tokens [batch, pos] as the model takes them.

        ``prepend_bos``: None follows the tokenizer (True when it has a ``bos_token``).
        TransformerLens prepends its BOS token by default; the seed vocabulary has none.
        """
        vocab = self._require_tokenizer("to_tokens")
        texts = [input] if isinstance(input, str) else input
        if not isinstance(texts, (list, tuple)) or not texts or not all(isinstance(t, str) for t in texts):
            raise TypeError(f"input must be a str or a non-empty list of str, got {input!r}")
        if prepend_bos is None:
            prepend_bos = vocab.bos_token is not None
        if prepend_bos and vocab.bos_token is None:
            raise ValueError("prepend_bos=True, but model.tokenizer has no bos_token")
        rows = [([vocab.ids[vocab.bos_token]] if prepend_bos else []) + vocab.encode(text) for text in texts]
        if len({len(row) for row in rows}) != 1:
            raise ValueError(f"input texts must have the same number of words (no padding here), got {texts!r}")
        if not rows[0]:
            raise ValueError("input has no words")
        return self._native_tokens(np.array(rows, dtype=np.int64))  # [batch, pos]

    def to_str_tokens(self, input, prepend_bos=None):
        """A str, or tokens [pos] or [1, pos] -> the list of its tokens as words."""
        vocab = self._require_tokenizer("to_str_tokens")
        rows = as_token_rows(self.to_tokens(input, prepend_bos) if isinstance(input, str) else input)
        if rows.ndim == 2 and rows.shape[0] == 1:
            rows = rows[0]
        if rows.ndim != 1:
            raise ValueError(f"to_str_tokens takes one sequence: [pos] or [1, pos], got shape {rows.shape}")
        return [vocab.id_to_word(token) for token in rows]

    def to_string(self, tokens):
        """Tokens [pos] -> a str; [batch, pos] -> a list of str."""
        vocab = self._require_tokenizer("to_string")
        rows = as_token_rows(tokens)
        if rows.ndim == 1:
            return vocab.decode(rows)
        return [vocab.decode(row) for row in rows]


def check_temperature(temperature):
    """A finite real number >= 0 (Python's, NumPy's, a 0-d array, a Fraction) -> a float."""
    if isinstance(temperature, np.ndarray) and temperature.ndim == 0 and temperature.dtype.kind in "fiu":
        temperature = temperature[()]
    if isinstance(temperature, (bool, np.bool_)) or not isinstance(temperature, numbers.Real):
        raise TypeError(f"temperature must be a real number >= 0, got {temperature!r}")
    temperature = float(temperature)
    if not 0 <= temperature < float("inf"):  # NaN fails both
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    return temperature


def as_float64(x):
    """Logits of either twin as a float64 ndarray (detached, on the CPU)."""
    x = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    return x.astype(np.float64)
