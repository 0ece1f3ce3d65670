"""Running the model as TransformerLens users do, written once for both twins.

    model(tokens, return_type="loss")
        the mean next-token cross-entropy ("logits", "both", None too)
    model(tokens, return_type="loss", loss_per_token=True)
        one loss per predicted token [batch, pos - 1]
    model.generate(tokens, max_new_tokens=5, do_sample=False, verbose=False)
        greedy; do_sample samples; the prompt runs once, then each new token alone, reading a
        key-value cache (foundation/lens/kv_cache.py; use_past_kv_cache=False: no cache)
    model.to_tokens("the cat sat"), model.to_str_tokens(...), model.to_string(...)
        with model.tokenizer

The twin-specific steps are the next-token loss (the twin's own log-softmax and loss),
turning an int ndarray into the model's own tokens (a tensor on the model's device for the
torch twin), switching autograd off while generating and making an empty key-value cache of the
twin's arrays; each twin's model (or its hooked.py) provides them. Sampling happens once, here,
in NumPy float64 from the logits (``sample_logits``), with a ``numpy.random.Generator`` seeded by
``seed``, so both twins draw the same tokens from the same logits.
"""

from __future__ import annotations

import math
import numbers
import sys
from contextlib import nullcontext

import numpy as np

from foundation.contract.arrays import as_numpy
from foundation.contract.checks import check_flags, is_integer
from foundation.lens.vocab import as_token_rows

RETURN_TYPES = ("logits", "loss", "both", None)
GENERATE_RETURN_TYPES = ("input", "str", "tensor")


def sample_logits(
    final_logits, top_k=None, top_p=None, temperature=1.0, freq_penalty=0.0, tokens=None, rng=None
):
    """One token per row of ``final_logits`` [batch, d_vocab] -> ids [batch] (TransformerLens's
    ``sample_logits``).

    ``temperature=0``: the most likely token (argmax; the lowest id among ties). Otherwise the
    logits are divided by ``temperature``, ``freq_penalty`` times each token's count in
    ``tokens`` [batch, pos] is subtracted, then ``top_k`` keeps the k largest logits (ties with
    the k-th stay) or else ``top_p`` keeps the most likely tokens until their probability reaches
    top_p (the token that crosses it included), and one token is drawn from the softmax of what
    is kept, with ``rng`` (a ``numpy.random.Generator``). Everything in float64.
    """
    logits = np.array(final_logits, dtype=np.float64)  # [batch, d_vocab]
    if temperature == 0:
        return logits.argmax(axis=-1)  # [batch]
    # the max subtracted first: a tiny temperature sends the rest to -inf, never NaN (a row that
    # holds NaN or inf, or no finite logit, is refused below)
    with np.errstate(over="ignore", invalid="ignore"):
        logits = (logits - logits.max(axis=-1, keepdims=True)) / temperature  # [batch, d_vocab]
    if freq_penalty > 0:
        if tokens is None:
            raise ValueError("freq_penalty needs the tokens so far")
        # [batch, d_vocab]
        counts = np.stack([np.bincount(row, minlength=logits.shape[-1]) for row in tokens])
        logits = logits - freq_penalty * counts
    if top_k is not None:
        kth = np.sort(logits, axis=-1)[:, -top_k][:, None]  # [batch, 1]: the k-th largest logit
        logits = np.where(logits < kth, -np.inf, logits)  # [batch, d_vocab]
    elif top_p is not None:
        order = np.argsort(-logits, axis=-1, kind="stable")  # [batch, d_vocab]: most likely first
        sorted_logits = np.take_along_axis(logits, order, axis=-1)  # [batch, d_vocab]
        sorted_probs = np.exp(sorted_logits - sorted_logits[:, :1])  # [batch, d_vocab]
        # [batch, d_vocab]
        cumulative = np.cumsum(sorted_probs / sorted_probs.sum(axis=-1, keepdims=True), axis=-1)
        remove_sorted = np.zeros_like(cumulative, dtype=bool)  # [batch, d_vocab]
        remove_sorted[:, 1:] = cumulative[:, :-1] > top_p  # the token that crosses top_p is kept
        remove = np.zeros_like(remove_sorted)  # [batch, d_vocab], back in id order
        np.put_along_axis(remove, order, remove_sorted, axis=-1)
        logits = np.where(remove, -np.inf, logits)
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))  # [batch, d_vocab]
    probs /= probs.sum(axis=-1, keepdims=True)
    if np.isnan(probs).any():
        raise ValueError(
            "final_logits has a row with NaN, +inf or no finite entry: no distribution to draw from"
        )
    rng = np.random.default_rng() if rng is None else rng
    # one uniform number per row; the token drawn is the first whose cumulative probability exceeds
    # it (the draws of rng.choice(d_vocab, p=row), row after row, made for every row at once)
    cdf = np.cumsum(probs, axis=-1)  # [batch, d_vocab]
    cdf /= cdf[:, -1:]
    uniform = rng.random(len(probs))  # [batch]
    return (cdf <= uniform[:, None]).sum(axis=-1)  # [batch]


class RunningMixin:
    """return_type, loss_per_token, generate and the tokenizer helpers; the model provides
    ``_next_token_loss``."""

    # a foundation.lens.vocab.WordVocabulary (or anything with encode, decode, id_to_word)
    tokenizer = None
    _loss = None  # the loss module of the last forward, when it returned a loss
    _loss_shape = None  # and that loss's shape
    # the boundary turns lists and the other library's arrays into this twin's
    takes_any_tokens = True

    # --- the twin-specific steps (torch_impl's model overrides the two below; hooked.py the loss)
    # ---

    def _native_tokens(self, tokens):
        """An int ndarray [batch, pos] -> what this model's forward takes."""
        return tokens

    def _inference(self):
        """A context in which forward passes record nothing for a backward pass."""
        return nullcontext()

    def _new_kv_cache(self, batch_size):
        """An empty key-value cache of this twin for ``batch_size`` sequences, where the model's
        arrays live (each twin's hooked.py)."""
        raise NotImplementedError

    def _next_token_loss(self, out, tokens, per_token):
        """The cross-entropy of each ``tokens[:, p + 1]`` given the logits at p: its mean, or
        [batch, pos - 1].

        The loss module is kept (``_loss``): the NumPy model's ``backward`` starts from it.
        """
        loss = self.loss_class(reduction="none" if per_token else "mean")
        # not a part of the model: no parameters, and not in named_modules()
        vars(self)["_loss"] = loss
        return loss(out[:, :-1], tokens[:, 1:])  # [] or [batch, pos - 1]

    # --- written once ---

    def _cache_entries(self, past_kv_cache):
        """Each block's entry of ``past_kv_cache``; None for every block without a cache."""
        return [None] * self.cfg.n_layers if past_kv_cache is None else past_kv_cache.entries

    def gradient_shape(self, result):
        """``backward`` takes the gradient of the output (the logits), whatever ``return_type`` gave
        back (the NumPy twin's ``backward`` also starts from the loss: see numpy_impl/model.py)."""
        return self._output_shape

    def _stop_layer(self, stop_at_layer):
        """The forward's ``stop_at_layer`` -> the number of blocks to run (None: all of them)."""
        n_layers = self.cfg.n_layers
        if stop_at_layer is None:
            return n_layers
        if not is_integer(stop_at_layer):
            raise TypeError(f"stop_at_layer must be an int or None, got {stop_at_layer!r}")
        if not -n_layers <= stop_at_layer <= n_layers:
            raise ValueError(
                f"stop_at_layer must lie in [-n_layers, n_layers] = [{-n_layers}, {n_layers}], "
                f"got {stop_at_layer}"
            )
        return int(stop_at_layer) % n_layers if stop_at_layer < 0 else int(stop_at_layer)

    def _start_layer(self, start_at_layer):
        """The forward's ``start_at_layer`` -> the first block to run on a residual stream given
        (None: none given, the run starts from the tokens)."""
        n_layers = self.cfg.n_layers
        if start_at_layer is None:
            return None
        if not is_integer(start_at_layer):
            raise TypeError(f"start_at_layer must be an int or None, got {start_at_layer!r}")
        if not -n_layers <= start_at_layer < n_layers:
            raise ValueError(
                f"start_at_layer must lie in [-n_layers, n_layers) = [{-n_layers}, {n_layers}), "
                f"got {start_at_layer}"
            )
        return int(start_at_layer) % n_layers

    def _stopped(self, resid):
        """What ``forward(..., stop_at_layer=k)`` returns: the residual stream entering block k,
        whatever ``return_type`` says (as TransformerLens's bridge). No backward starts from it
        here."""
        self._output_shape = None
        vars(self)["_loss"] = vars(self)["_loss_shape"] = None
        return resid

    def _with_return_type(self, out, tokens, return_type, loss_per_token=False):
        """The forward's output as ``return_type`` asks: logits, the next-token loss, both, or None.

        ``loss_per_token``: the loss of each predicted token [batch, pos - 1] instead of their mean.
        """
        self._output_shape = tuple(out.shape)
        # only the loss this forward returns starts backward()
        vars(self)["_loss"] = vars(self)["_loss_shape"] = None
        if return_type == "logits":
            return out
        if return_type is None:
            return None
        if tokens.shape[1] < 2:
            raise ValueError(
                f"return_type={return_type!r}: tokens need at least 2 positions for a next-token "
                f"loss"
            )
        # position p predicts tokens[:, p + 1]; the last position predicts nothing
        loss = self._next_token_loss(out, tokens, loss_per_token)  # [] or [batch, pos - 1]
        vars(self)["_loss_shape"] = tuple(loss.shape)
        return loss if return_type == "loss" else (out, loss)

    def generate(
        self,
        input="",
        max_new_tokens=10,
        stop_at_eos=True,
        eos_token_id=None,
        do_sample=True,
        top_k=None,
        top_p=None,
        temperature=1.0,
        freq_penalty=0.0,
        use_past_kv_cache=True,
        prepend_bos=None,
        return_type="input",
        verbose=True,
        seed=None,
    ):
        """Extend ``input`` by up to ``max_new_tokens`` ids, one forward pass each
        (TransformerLens's arguments).

        ``use_past_kv_cache=True`` (the default): the first pass runs the prompt and keeps every
        layer's keys and values (a ``HookedTransformerKeyValueCache``), and each later pass runs
        only the newest token, at its position, reading them; ``False``: every pass runs the whole
        sequence. The logits agree to rounding either way (docs/gpt2.md, "Generation").

        ``input``: tokens [batch, pos] (any int array or nested list) or a str (encoded with
        ``model.tokenizer``, ``prepend_bos`` as in ``to_tokens``). ``do_sample=False``: greedy, the
        most likely next token (the lowest id among ties); ``do_sample=True`` (the default, as in
        TransformerLens): drawn by ``sample_logits`` with ``temperature``, ``top_k``, ``top_p``,
        ``freq_penalty``, from a ``numpy.random.Generator`` seeded by ``seed`` (this project's
        argument: the same seed draws the same tokens in both twins). ``stop_at_eos``: a sequence
        that produced ``eos_token_id`` (default: the tokenizer's ``eos_token``, if it has one) is
        padded with it, and generation ends when every sequence has; with no end-of-text id known it
        runs the full ``max_new_tokens``. ``return_type``: "input" (a str for a str, else tokens),
        "str" (a str; a list of them for a batch) or "tensor" (the model's own array type).
        ``verbose`` prints progress to stderr. The prompt plus the new tokens must fit in n_ctx.
        """
        if not self.cfg.unembed:
            raise ValueError("generate needs logits (cfg.unembed=True)")
        if not is_integer(max_new_tokens) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be a non-negative int, got {max_new_tokens!r}")
        temperature = check_temperature(temperature)
        if top_k is not None and (not is_integer(top_k) or not 0 < top_k <= self.cfg.d_vocab):
            raise ValueError(
                f"top_k must be None or an int in [1, d_vocab={self.cfg.d_vocab}], got {top_k!r}"
            )
        if top_p is not None and (
            isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1
        ):
            raise ValueError(f"top_p must be None or a number in (0, 1], got {top_p!r}")
        if (
            isinstance(freq_penalty, bool)
            or not isinstance(freq_penalty, (int, float))
            or not freq_penalty >= 0
        ):
            raise ValueError(f"freq_penalty must be a number >= 0, got {freq_penalty!r}")
        # counts reach n_ctx; inf-inf: NaN
        if not math.isfinite(float(freq_penalty) * self.cfg.n_ctx):
            raise ValueError(
                f"freq_penalty must be finite, and stay finite times n_ctx={self.cfg.n_ctx}, "
                f"got {freq_penalty!r}"
            )
        if return_type not in GENERATE_RETURN_TYPES:
            raise ValueError(
                f"return_type must be one of {GENERATE_RETURN_TYPES}, got {return_type!r}"
            )
        check_flags(
            stop_at_eos=stop_at_eos,
            do_sample=do_sample,
            verbose=verbose,
            use_past_kv_cache=use_past_kv_cache,
        )
        text_in = isinstance(input, str)
        if text_in:
            rows = as_token_rows(self.to_tokens(input, prepend_bos))  # [1, pos]
            prepended = prepend_bos is not False and self.tokenizer.bos_token is not None
        else:
            rows, prepended = self._token_rows(input), False  # [batch, pos]
        if rows.shape[1] + max_new_tokens > self.cfg.n_ctx:
            raise ValueError(
                f"generate: {rows.shape[1]} tokens + max_new_tokens={max_new_tokens} exceed "
                f"n_ctx={self.cfg.n_ctx}"
            )
        stop_tokens = self._stop_tokens(stop_at_eos, eos_token_id)
        # [batch]: which sequences produced a stop token
        finished = np.zeros(rows.shape[0], dtype=bool)
        rng = np.random.default_rng(seed)
        past_kv_cache = self._new_kv_cache(rows.shape[0]) if use_past_kv_cache else None
        with self._inference():
            for step in range(max_new_tokens):
                # with a cache: the prompt once, then the newest token alone; without: everything
                unseen = rows if past_kv_cache is None else rows[:, past_kv_cache.pos_so_far :]
                # [batch, pos of unseen, d_vocab]
                logits = self(self._native_tokens(unseen), past_kv_cache=past_kv_cache)
                last = as_numpy(logits).astype(np.float64)[:, -1]  # [batch, d_vocab]
                if do_sample:
                    # [batch]
                    new = sample_logits(last, top_k, top_p, temperature, freq_penalty, rows, rng)
                else:
                    new = last.argmax(axis=-1)  # [batch]
                if stop_tokens:
                    # a finished sequence is padded with eos
                    new = np.where(finished, stop_tokens[0], new)
                    finished |= np.isin(new, stop_tokens)
                rows = np.concatenate([rows, new[:, None]], axis=1)  # [batch, pos + 1]
                if verbose:
                    print(
                        f"\rgenerate: {step + 1}/{max_new_tokens} tokens",
                        end="",
                        file=sys.stderr,
                        flush=True,
                    )
                if stop_tokens and finished.all():
                    break
        if verbose:
            print(file=sys.stderr)
        if return_type == "str" or (return_type == "input" and text_in):
            text_rows = rows[:, 1:] if prepended else rows  # the BOS that to_tokens put in front
            return (
                self.to_string(text_rows[0])
                if text_rows.shape[0] == 1
                else self.to_string(text_rows)
            )
        return self._native_tokens(rows)

    def _stop_tokens(self, stop_at_eos, eos_token_id):
        """The ids that end a sequence: [eos_token_id ...], the tokenizer's eos token, or [] (none
        known, not stopping)."""
        if not stop_at_eos:
            return []
        if eos_token_id is None:
            # a Hugging Face tokenizer's
            eos_token_id = getattr(self.tokenizer, "eos_token_id", None)
            eos_token = getattr(self.tokenizer, "eos_token", None)
            if eos_token_id is None and eos_token is not None and hasattr(self.tokenizer, "ids"):
                # a WordVocabulary with an end-of-text word
                eos_token_id = self.tokenizer.ids[eos_token]
            if eos_token_id is None:
                return []
        ids = [eos_token_id] if isinstance(eos_token_id, (int, np.integer)) else list(eos_token_id)
        if not ids or not all(is_integer(i) and 0 <= i < self.cfg.d_vocab for i in ids):
            raise ValueError(
                f"eos_token_id must be a token id in [0, d_vocab={self.cfg.d_vocab}) or a list of "
                f"them, got {eos_token_id!r}"
            )
        return [int(i) for i in ids]

    def _token_rows(self, tokens):
        """Nested lists, an ndarray or a tensor -> int ndarray [batch, pos] (generate reads a str
        through the tokenizer itself)."""
        rows = as_token_rows(tokens)
        if rows.ndim != 2:
            raise ValueError(f"tokens must have shape [batch, pos], got {rows.shape}")
        return rows

    def _require_tokenizer(self, method):
        if self.tokenizer is None:
            raise ValueError(
                f"{method} needs model.tokenizer, e.g. model.tokenizer = "
                "foundation.lens.vocab.WordVocabulary(['<pad>', 'the', 'cat', ...])"
            )
        return self.tokenizer

    def to_tokens(self, input, prepend_bos=None):
        """A str (or a list of str of equal length in words) -> tokens [batch, pos] as the model
        takes them.

        ``prepend_bos``: None follows the tokenizer (True when it has a ``bos_token``).
        TransformerLens prepends its BOS token by default; the seed vocabulary has none.
        """
        vocab = self._require_tokenizer("to_tokens")
        texts = [input] if isinstance(input, str) else input
        if (
            not isinstance(texts, (list, tuple))
            or not texts
            or not all(isinstance(t, str) for t in texts)
        ):
            raise TypeError(f"input must be a str or a non-empty list of str, got {input!r}")
        if prepend_bos is None:
            prepend_bos = vocab.bos_token is not None
        if prepend_bos and vocab.bos_token is None:
            raise ValueError("prepend_bos=True, but model.tokenizer has no bos_token")
        rows = [
            ([vocab.ids[vocab.bos_token]] if prepend_bos else []) + vocab.encode(text)
            for text in texts
        ]
        if len({len(row) for row in rows}) != 1:
            raise ValueError(
                f"input texts must have the same number of words (no padding here), got {texts!r}"
            )
        if not rows[0]:
            raise ValueError("input has no words")
        return self._native_tokens(np.array(rows, dtype=np.int64))  # [batch, pos]

    def to_str_tokens(self, input, prepend_bos=None):
        """A str, or tokens [pos] or [1, pos] -> the list of its tokens as words."""
        vocab = self._require_tokenizer("to_str_tokens")
        rows = as_token_rows(
            self.to_tokens(input, prepend_bos) if isinstance(input, str) else input
        )
        if rows.ndim == 2 and rows.shape[0] == 1:
            rows = rows[0]
        if rows.ndim != 1:
            raise ValueError(
                f"to_str_tokens takes one sequence: [pos] or [1, pos], got shape {rows.shape}"
            )
        return [vocab.id_to_word(token) for token in rows]

    def to_single_token(self, string):
        """The id of a str that is one token (TransformerLens's ``to_single_token``), without a
        BOS."""
        rows = as_token_rows(self.to_tokens(string, prepend_bos=False))
        if rows.shape != (1, 1):
            raise ValueError(f"to_single_token: {string!r} is {rows.shape[1]} tokens, not one")
        return int(rows[0, 0])

    def to_string(self, tokens):
        """Tokens [pos] -> a str; [batch, pos] -> a list of str."""
        vocab = self._require_tokenizer("to_string")
        rows = as_token_rows(tokens)
        if rows.ndim == 1:
            return vocab.decode(rows)
        return [vocab.decode(row) for row in rows]


def check_temperature(temperature):
    """A finite real number >= 0 (Python's, NumPy's, a 0-d array, a Fraction) -> a float."""
    if (
        isinstance(temperature, np.ndarray)
        and temperature.ndim == 0
        and temperature.dtype.kind in "fiu"
    ):
        temperature = temperature[()]
    if isinstance(temperature, (bool, np.bool_)) or not isinstance(temperature, numbers.Real):
        raise TypeError(f"temperature must be a real number >= 0, got {temperature!r}")
    temperature = float(temperature)
    if not 0 <= temperature < float("inf"):  # NaN fails both
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    return temperature
