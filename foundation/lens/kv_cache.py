"""The key-value cache that generation keeps, written once for both twins (TransformerLens's
``HookedTransformerKeyValueCache``).

Axes: batch, pos_so_far (the positions already run), pos (this step's positions), kv_head (the
heads that own keys and values: ``n_key_value_heads`` under grouped-query attention, else
``n_heads``), d_head (width of one head).

In a causal model the keys and values at a position depend on the tokens up to it only, so once
computed they never change. ``generate`` runs the prompt once and keeps each layer's keys and
values; every later step runs the newest position alone, with its positions counted from
``pos_so_far`` (the positional embedding's rows, the rotary angles, the causal mask), and its
attention reads the kept keys and values before its own. Each number it computes is the same
formula on the same inputs as the run over the whole sequence; only the order of a matrix
product's additions may differ, so the logits agree to rounding (docs/gpt2.md gives the measure).

    cache = HookedTransformerKeyValueCache.init_cache(model.cfg, batch_size=2)  # the twin's
    logits = model(prompt, past_kv_cache=cache)       # [batch, pos, d_vocab]; pos_so_far = pos
    logits = model(next_tokens, past_kv_cache=cache)  # [batch, 1, d_vocab], at position pos
    cache[0].past_keys                                # [batch, pos + 1, kv_head, d_head]

Keys are kept as attention uses them: turned by their rotary angles where the model has them, and
not repeated across a grouped-query group. Each twin's ``hooked.py`` says how its arrays are made
and joined (``_empty``, ``_concatenate``); everything else is here.
"""

from __future__ import annotations

import weakref

from foundation.contract.arrays import device_name, dtype_name


class KeyValueCacheEntry:
    """One layer's keys and values so far: ``past_keys``, ``past_values``
    [batch, pos_so_far, kv_head, d_head] (TransformerLens's
    ``HookedTransformerKeyValueCacheEntry``).

    ``frozen``: ``append`` returns the keys and values with this step's joined on, but keeps none
    of them (to run several continuations from one prompt).
    """

    def __init__(self, past_keys, past_values, frozen=False):
        self.past_keys = past_keys  # [batch, pos_so_far, kv_head, d_head]
        self.past_values = past_values  # [batch, pos_so_far, kv_head, d_head]
        self.frozen = frozen

    @classmethod
    def init_cache_entry(cls, cfg, device=None, batch_size=1):
        """An empty entry: nothing run yet."""
        shape = (batch_size, 0, cfg.n_key_value_heads or cfg.n_heads, cfg.d_head)
        return cls(cls._empty(shape, cfg.dtype, device), cls._empty(shape, cfg.dtype, device))

    @property
    def pos_so_far(self):
        """How many positions the entry holds."""
        return self.past_keys.shape[1]

    def append(self, new_keys, new_values):
        """This step's keys and values [batch, pos, kv_head, d_head] -> all of them so far
        [batch, pos_so_far + pos, kv_head, d_head], each; kept for the next step unless frozen."""
        keys = self._concatenate(
            self.past_keys, new_keys
        )  # [batch, pos_so_far + pos, kv_head, d_head]
        values = self._concatenate(self.past_values, new_values)  # [batch, pos_so_far + pos, ...]
        if not self.frozen:
            self.past_keys, self.past_values = keys, values
        return keys, values

    # --- the twin's (hooked.py) ---

    @staticmethod
    def _empty(shape, dtype, device):
        raise NotImplementedError

    @staticmethod
    def _concatenate(past, new):
        raise NotImplementedError

    def __repr__(self):
        shape = tuple(self.past_keys.shape)
        return (
            f"{type(self).__name__}(past_keys and past_values {list(shape)}, frozen={self.frozen})"
        )


class KeyValueCache:
    """One ``KeyValueCacheEntry`` per layer, ``entries`` (TransformerLens's
    ``HookedTransformerKeyValueCache``); ``cache[i]`` is layer i's.

    Made for one config and one batch size; the first model that runs with it owns it, and another
    model's forward refuses it (its keys and values would come from other weights).
    """

    entry_class = KeyValueCacheEntry  # the twin's, with its own arrays

    def __init__(self, entries, cfg):
        self.entries = list(entries)
        self.cfg = cfg
        self.owner = None  # a weak reference to the model that filled it

    @classmethod
    def init_cache(cls, cfg, device=None, batch_size=1):
        """An empty cache for ``batch_size`` sequences of a model with config ``cfg`` (the torch
        twin's on ``device``; the model's own device when ``generate`` makes it)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        entry = cls.entry_class.init_cache_entry
        return cls([entry(cfg, device, batch_size) for _ in range(cfg.n_layers)], cfg)

    def __getitem__(self, layer):
        return self.entries[layer]

    def __len__(self):
        return len(self.entries)

    @property
    def pos_so_far(self):
        """How many positions the cache holds (the position the next token runs at)."""
        return self.entries[0].pos_so_far

    @property
    def batch_size(self):
        return self.entries[0].past_keys.shape[0]

    @property
    def frozen(self):
        return all(entry.frozen for entry in self.entries)

    def freeze(self):
        """From now on a forward reads the cache and adds nothing to it."""
        for entry in self.entries:
            entry.frozen = True

    def unfreeze(self):
        for entry in self.entries:
            entry.frozen = False

    def __repr__(self):
        return (
            f"{type(self).__name__}({len(self.entries)} layers, batch_size={self.batch_size}, "
            f"pos_so_far={self.pos_so_far}, frozen={self.frozen})"
        )


def cache_state(arguments):
    """What the key-value caches among a call's ``arguments`` ({name: value}) hold now: a list of
    (entry, past_keys, past_values). ``restore_cache_state`` puts it back, so a forward that is
    replayed, or that raises part way, leaves a cache as it found it (``append`` makes new arrays
    and never writes into the old ones, so keeping the old ones keeps what they held)."""
    state = []
    for value in arguments.values():
        entries = value.entries if isinstance(value, KeyValueCache) else [value]
        state += [
            (entry, entry.past_keys, entry.past_values)
            for entry in entries
            if isinstance(entry, KeyValueCacheEntry)
        ]
    return state


def restore_cache_state(state):
    """Put back what ``cache_state`` saw."""
    for entry, past_keys, past_values in state:
        entry.past_keys, entry.past_values = past_keys, past_values


# --- the boundary's checks (foundation/contract/boundary.py's kinds "kv cache", "kv cache entry")


def check_past_kv_cache(model, cache, tokens, stop_at_layer, array_type):
    """A model's ``past_kv_cache``: this twin's cache, made for this config, holding this batch,
    room for ``tokens`` before n_ctx, filled by no other model. Binds a new cache to the model.
    """
    if not isinstance(cache, KeyValueCache) or not isinstance(cache.entries, list):
        raise TypeError(
            "past_kv_cache must be None or a HookedTransformerKeyValueCache "
            f"(HookedTransformerKeyValueCache.init_cache(model.cfg, batch_size=...)), got "
            f"{type(cache).__name__}"
        )
    if cache.cfg != model.cfg:
        raise ValueError(
            "past_kv_cache was made for another config than this model's; make one with "
            "init_cache(model.cfg, ...)"
        )
    owner = None if cache.owner is None else cache.owner()
    if owner is not None and owner is not model:
        raise ValueError(
            "past_kv_cache holds another model's keys and values; give each model its own cache"
        )
    if not model.cfg.causal:
        raise ValueError(
            "past_kv_cache needs a causal model (cfg.causal=True): in a bidirectional model an "
            "earlier position's keys and values change with every new token"
        )
    if stop_at_layer is not None:
        raise ValueError(
            "past_kv_cache with stop_at_layer: the blocks after the stop would keep no keys and "
            "values; run the whole model with a cache"
        )
    if len(cache.entries) != model.cfg.n_layers:
        raise ValueError(
            f"past_kv_cache has {len(cache.entries)} entries; the model has {model.cfg.n_layers} "
            "layers"
        )
    for layer, entry in enumerate(cache.entries):
        check_entry(entry, model.cfg, f"past_kv_cache[{layer}]", array_type)
    held = {(entry.past_keys.shape[0], entry.pos_so_far) for entry in cache.entries}
    if len(held) != 1:
        raise ValueError(
            "past_kv_cache's layers hold different numbers of positions (entries changed by "
            "hand?); start again from a new cache"
        )
    check_device(cache.entries, model, "past_kv_cache")
    check_room(
        cache.batch_size, cache.pos_so_far, tokens.shape, model.cfg, "past_kv_cache", "tokens"
    )
    if owner is None:
        cache.owner = weakref.ref(model)


def check_past_kv_cache_entry(module, entry, x, array_type):
    """A block's or an attention's ``past_kv_cache_entry``: this twin's entry for this config,
    holding x's batch, room for x's positions before n_ctx."""
    if not isinstance(entry, KeyValueCacheEntry):
        raise TypeError(
            "past_kv_cache_entry must be None or a HookedTransformerKeyValueCacheEntry, got "
            f"{type(entry).__name__}"
        )
    if not module.cfg.causal:
        raise ValueError("past_kv_cache_entry needs a causal model (cfg.causal=True)")
    check_entry(entry, module.cfg, "past_kv_cache_entry", array_type)
    check_device([entry], module, "past_kv_cache_entry")
    check_room(
        entry.past_keys.shape[0], entry.pos_so_far, x.shape, module.cfg, "past_kv_cache_entry", "x"
    )


def check_entry(entry, cfg, name, array_type):
    """An entry's arrays: the twin's type, the model's dtype, [batch, pos_so_far, kv_head,
    d_head]."""
    if not isinstance(entry, KeyValueCacheEntry):
        raise TypeError(
            f"{name} must be a HookedTransformerKeyValueCacheEntry, got {type(entry).__name__}"
        )
    kv_heads = cfg.n_key_value_heads or cfg.n_heads
    for label, array in (("past_keys", entry.past_keys), ("past_values", entry.past_values)):
        if not isinstance(array, array_type):
            raise TypeError(
                f"{name}.{label} must be a {array_type.__module__}.{array_type.__name__} (a cache "
                f"of this twin), got {type(array).__name__}"
            )
        if dtype_name(array) != cfg.dtype:
            raise ValueError(f"{name}.{label} must be {cfg.dtype}, got {dtype_name(array)}")
        if array.ndim != 4 or tuple(array.shape[2:]) != (kv_heads, cfg.d_head):
            raise ValueError(
                f"{name}.{label} must have shape [batch, pos_so_far, {kv_heads}, {cfg.d_head}], "
                f"got {list(array.shape)}"
            )
    if tuple(entry.past_keys.shape) != tuple(entry.past_values.shape):
        raise ValueError(
            f"{name}: past_keys {list(entry.past_keys.shape)} and past_values "
            f"{list(entry.past_values.shape)} differ in shape"
        )


def check_device(entries, module, name):
    """The entries' arrays are where the module's weights are (the torch twin's device)."""
    weight = next(iter(module.parameters()), None)  # one is enough: a module is on one device
    where = {device_name(entry.past_keys) for entry in entries}
    if weight is not None and where != {device_name(weight)}:
        maker = "init_cache" if name == "past_kv_cache" else "init_cache_entry"
        raise ValueError(
            f"{name} is on {', '.join(sorted(where))}, the {type(module).__name__}'s weights on "
            f"{device_name(weight)}: make it on theirs, with "
            f"HookedTransformerKeyValueCache{'Entry' if maker == 'init_cache_entry' else ''}"
            f".{maker}(cfg, device=...)"
        )


def check_room(batch_size, pos_so_far, shape, cfg, name, input_name):
    """The input [batch, pos, ...] continues the cache: the same batch, and n_ctx has room."""
    if shape[0] != batch_size:
        raise ValueError(
            f"{name} holds a batch of {batch_size} sequences, but {input_name} holds {shape[0]}"
        )
    if pos_so_far + shape[1] > cfg.n_ctx:
        raise ValueError(
            f"{name} holds {pos_so_far} positions; {input_name}'s {shape[1]} more would reach "
            f"{pos_so_far + shape[1]}, past n_ctx={cfg.n_ctx}"
        )
