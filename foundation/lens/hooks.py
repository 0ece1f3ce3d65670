"""Hooks and activation caches, written once for both twins (TransformerLens's habits and
signatures).

    out, cache = model.run_with_cache(tokens)                  # every activation, by hook name
    cache["blocks.1.attn.hook_pattern"], cache["pattern", 1]   # full or short name (get_act_name)
    out, cache = model.run_with_cache(tokens, incl_bwd=True)   # also "<name>_grad" entries
    loss = model.run_with_hooks(tokens, return_type="loss",
                                fwd_hooks=[(name, fn)])        # fn(act, hook) edits act
    model.add_hook(name, fn); ...; model.reset_hooks()         # hooks that stay on until reset
    with model.hooks(fwd_hooks=[...]): ...                     # hooks on for a block of code
    loss = model.run_with_hooks(tokens, return_type="loss", bwd_hooks=[(name, fn)],
                                reset_hooks_end=False)
    loss.backward()  (torch twin)  /  model.backward()  (NumPy); then model.reset_hooks()

Nothing here knows the array library. Each twin's ``hooked.py`` subclasses ``HookedMixin`` and
writes its own steps (which HookPoint class, how to copy an activation, how to run the backward
pass, the default gradient, a parameter-free LayerNorm); everything else here serves both models.

Activation gradients: the NumPy backward calls every HookPoint on its way down, and autograd
calls the torch HookPoint's tensor hook, so ``<name>_grad`` is the gradient of the backward's
scalar with respect to that activation, in both twins. An activation a forward hook edited
follows one rule in both (see ``HookPoint``): changed entries are constants. A backward hook
fires when it is on while the backward runs, and (torch twin) was on during the forward.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import numpy as np

from foundation.contract.arrays import as_numpy
from foundation.contract.boundary import running_hooks
from foundation.contract.checks import check_flags, check_hook_result, is_integer
from foundation.lens import folding
from foundation.lens.cache import ActivationCacheMethods, Slice
from foundation.lens.folding import fold_layer_norm_weights

# TransformerLens's short names: which part of the model each hook name lives in
BLOCK_HOOKS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
ATTN_HOOKS = ("q", "k", "v", "z", "attn_scores", "pattern")
MLP_HOOKS = ("pre", "post")
LN_HOOKS = ("scale", "normalized")
MODEL_HOOKS = ("embed", "pos_embed")
NAME_ALIASES = {
    "attn": "pattern",
    "attn_logits": "attn_scores",
    "query": "q",
    "key": "k",
    "value": "v",
    "mlp_pre": "pre",
    "mlp_post": "post",
}
LAYER_TYPE_ALIASES = {
    "a": "attn",
    "attention": "attn",
    "m": "mlp",
    "b": None,
    "block": None,
    "blocks": None,
}
GRAD_SUFFIX = "_grad"
# what a cache's pos_slice cuts along: the position axis, -3 in [batch, pos, head, d_head] entries,
# -1 in the token ids [batch, pos] and the position ids [1, pos]; -2 elsewhere
HEAD_HOOKS = (
    "hook_q",
    "hook_k",
    "hook_v",
    "hook_z",
    "q.hook_out",
    "k.hook_out",
    "v.hook_out",
    "o.hook_in",
)
POSITION_ID_HOOKS = ("embed.hook_in",)


class HookNameError(ValueError, KeyError):
    """An unknown hook name or cache key: a ValueError, and a KeyError as dict lookups raise."""

    def __str__(self):
        return str(self.args[0])


def hook_name(name, layer=None, layer_type=None, n_layers=None):
    """TransformerLens's short form -> the full hook name (as its ``utils.get_act_name``;
    ``get_act_name`` here).

    ``hook_name("pattern", 1)`` -> ``"blocks.1.attn.hook_pattern"``; ``("resid_pre", 0)`` ->
    ``"blocks.0.hook_resid_pre"``; ``("scale", 0, "ln1")`` -> ``"blocks.0.ln1.hook_scale"``;
    ``"scale"`` alone -> ``"ln_final.hook_scale"``; ``"embed"`` -> ``"hook_embed"``; the compact
    ``"k6"`` -> ``"blocks.6.attn.hook_k"`` and ``"scale4ln1"`` -> ``"blocks.4.ln1.hook_scale"``. A
    name ending in ``_grad`` resolves the rest and keeps the suffix. Negative layers count from
    the end when ``n_layers`` is known. A full name (with a dot, or starting ``hook_``) is
    returned as it is. Where TransformerLens would build a name no model has (``("scale", 0)``
    without "ln1" or "ln2"), this raises a ValueError saying what is missing.
    """
    if not isinstance(name, str):
        raise TypeError(f"hook name must be a str, got {type(name).__name__}")
    if layer is not None and not is_integer(layer):
        raise TypeError(f"layer must be an int, got {layer!r}")
    if layer_type is not None and not isinstance(layer_type, str):
        raise TypeError(f"layer_type must be a str, got {layer_type!r}")
    if name.endswith(GRAD_SUFFIX):
        return hook_name(name[: -len(GRAD_SUFFIX)], layer, layer_type, n_layers) + GRAD_SUFFIX
    if ("." in name or name.startswith("hook_")) and layer is None and layer_type is None:
        return name
    compact = (
        re.fullmatch(r"([a-z]+)(\d+)([a-z]\w*)?", name)
        if layer is None and layer_type is None
        else None
    )
    # "k6" -> ("k", 6), "scale4ln1" -> ("scale", 4, "ln1"), as TransformerLens reads them
    if compact is not None:
        name, layer, layer_type = compact.group(1), int(compact.group(2)), compact.group(3)
    if layer is not None and layer < 0 and n_layers is not None:
        layer = n_layers + layer
    short = NAME_ALIASES.get(name, name)
    layer_type = LAYER_TYPE_ALIASES.get(layer_type, layer_type)
    where = f"hook name {name!r} (layer={layer!r}, layer_type={layer_type!r})"
    if short in MODEL_HOOKS:
        if layer is not None:
            raise HookNameError(f"{where}: {short!r} is not per layer; leave the layer out")
        return f"hook_{short}"
    if short in LN_HOOKS:
        if layer is None:
            return f"ln_final.hook_{short}"
        if layer_type not in ("ln1", "ln2"):
            raise HookNameError(
                f"{where}: say which LayerNorm, e.g. ({short!r}, {layer}, 'ln1') or 'ln2'"
            )
        return f"blocks.{layer}.{layer_type}.hook_{short}"
    for names, part in ((BLOCK_HOOKS, None), (ATTN_HOOKS, "attn"), (MLP_HOOKS, "mlp")):
        if short in names:
            if layer is None:
                raise HookNameError(f"{where}: {short!r} needs a layer, e.g. ({short!r}, 0)")
            if layer_type is not None and layer_type != part:
                raise HookNameError(
                    f"{where}: {short!r} lives in {part or 'the block'}, not {layer_type!r}"
                )
            return f"blocks.{layer}.{part + '.' if part else ''}hook_{short}"
    known = ", ".join(MODEL_HOOKS + BLOCK_HOOKS + ATTN_HOOKS + MLP_HOOKS + LN_HOOKS)
    raise HookNameError(f"{where}: unknown short name; expected a full hook name or one of {known}")


get_act_name = hook_name  # TransformerLens's name for it (its utils.get_act_name)


@dataclass
class LensHandle:
    """One hook function on a HookPoint, with what ``reset_hooks`` needs to know (TransformerLens's
    record)."""

    fn: Callable
    is_permanent: bool = False  # reset_hooks() leaves it on, unless including_permanent=True
    context_level: int | None = None  # the hooks() block that added it; None when added directly


class HookLists:
    """Forward and backward hook lists, written once for the NumPy ``HookPoint`` and its torch twin.

    A hook is called as TransformerLens calls it, ``fn(activation, hook=this_hook_point)``; it
    reads ``hook.name``, ``hook.layer()`` and ``hook.ctx`` (a dict for its own notes).
    """

    def _init_hooks(self):
        self.name = None
        self.fwd_hooks = []  # [LensHandle], called in this order in the forward pass
        self.bwd_hooks = []  # [LensHandle], called in this order in the backward pass
        self.ctx = {}  # scratch space for hook functions; clear_context() empties it

    def add_hook(
        self, hook, dir: str = "fwd", is_permanent: bool = False, level=None, prepend: bool = False
    ):
        """Call ``hook(activation, hook=self)`` in the forward pass ("fwd"),
        ``hook(grad, hook=self)`` in the backward ("bwd").

        It stays on until removed: ``remove_hooks``, or the model's ``reset_hooks`` (which leaves
        ``is_permanent`` hooks on). ``prepend`` puts it before the hooks already here.
        """
        if not callable(hook):
            raise TypeError(f"hook must be callable, got {type(hook).__name__}")
        if dir not in ("fwd", "bwd"):
            raise ValueError(f"dir must be 'fwd' or 'bwd', got {dir!r}")
        hooks = self.fwd_hooks if dir == "fwd" else self.bwd_hooks
        check_flags(is_permanent=is_permanent)
        handle = LensHandle(hook, is_permanent, level)
        if prepend:
            hooks.insert(0, handle)
        else:
            hooks.append(handle)

    def add_perma_hook(self, hook, dir: str = "fwd"):
        """``add_hook(hook, dir, is_permanent=True)``: a hook that ``reset_hooks()`` leaves on."""
        self.add_hook(hook, dir, is_permanent=True)

    def remove_hooks(self, dir: str = "fwd", including_permanent: bool = False, level=None):
        """Remove this point's hooks in ``dir`` ("fwd", "bwd" or "both"): every non-permanent one,
        or those added by the ``hooks()`` block of ``level``; ``including_permanent`` removes them
        all."""
        if dir not in ("fwd", "bwd", "both"):
            raise ValueError(f"dir must be 'fwd', 'bwd' or 'both', got {dir!r}")

        def kept(handle):
            if including_permanent:
                return False
            return handle.is_permanent or (level is not None and handle.context_level != level)

        if dir in ("fwd", "both"):
            self.fwd_hooks = [handle for handle in self.fwd_hooks if kept(handle)]
        if dir in ("bwd", "both"):
            self.bwd_hooks = [handle for handle in self.bwd_hooks if kept(handle)]

    def clear_context(self):
        self.ctx = {}

    def layer(self) -> int:
        """The block this hook point sits in: 1 for ``blocks.1.attn.hook_z`` (TransformerLens's
        ``hook.layer()``)."""
        parts = (self.name or "").split(".")
        if len(parts) < 3 or parts[0] != "blocks" or not parts[1].isdigit():
            raise ValueError(
                f"hook {self.name!r} is not inside a block (blocks.<layer>....), so it has no layer"
            )
        return int(parts[1])

    def _run(self, hooks, x):
        """Pass x through each hook in turn; a hook that returns something (of x's shape) replaces
        x."""
        # a model a hook runs is a user's call, and leaves this run's saved values alone
        with running_hooks():
            for handle in list(hooks):  # a copy: a hook may add or remove hooks while they run
                result = handle.fn(x, hook=self)
                if result is not None:
                    x = check_hook_result(
                        result, x.shape, self.name, "bwd" if hooks is self.bwd_hooks else "fwd"
                    )
        return x


class ActivationCache(ActivationCacheMethods):
    """Activations (and ``<name>_grad`` gradients) of one run, keyed by full hook name.

    Index it with a full name, ``cache["blocks.0.attn.hook_q"]``, or TransformerLens's short forms,
    ``cache["q", 0]``, ``cache["q", 0, "attn"]``, ``cache["scale", 1, "ln2"]``,
    ``cache["pattern_grad", -1]``, ``cache["k0"]``. Values are what the model computes: ndarrays
    from the NumPy model, detached tensors from the torch twin (``to_numpy()`` gives an all-ndarray
    copy). ``tokens`` are the input tokens (an ndarray), ``cfg`` the model's config and ``model``
    the model (its weights serve the residual-stream methods written in
    ``foundation/lens/cache.py``: ``accumulated_resid``, ``decompose_resid``,
    ``stack_head_results``, ``logit_attrs``, ...). As TransformerLens's, the cache holds
    ``cache_dict`` itself, not a copy: hooks left on by ``run_with_cache(...,
    reset_hooks_end=False)`` keep writing into it.
    """

    def __init__(self, cache_dict, cfg, tokens=None, model=None, has_batch_dim=True):
        if not isinstance(cache_dict, dict):
            raise TypeError(f"cache_dict must be a dict, got {type(cache_dict).__name__}")
        self.cache_dict = cache_dict
        self.cfg = cfg
        self.tokens = None if tokens is None else as_numpy(tokens).copy()
        self.model = model
        self.has_batch_dim = has_batch_dim

    def resolve(self, key):
        """A key (full name, short name, or tuple (name, layer[, layer_type])) -> the full name."""
        if isinstance(key, str):
            if key in self.cache_dict:
                return key
            return hook_name(key, n_layers=self.cfg.n_layers)
        if isinstance(key, tuple) and 1 <= len(key) <= 3:
            return hook_name(*key, n_layers=self.cfg.n_layers)
        raise TypeError(
            f"cache key must be a str or a tuple (name, layer[, layer_type]), got {key!r}"
        )

    def __getitem__(self, key):
        name = self.resolve(key)
        if name not in self.cache_dict:
            hint = "" if name.endswith(GRAD_SUFFIX) else " (or was filtered out by names_filter)"
            if name.endswith(GRAD_SUFFIX) and not any(
                k.endswith(GRAD_SUFFIX) for k in self.cache_dict
            ):
                hint = " (run_with_cache(..., incl_bwd=True) records gradients)"
            raise HookNameError(
                f"cache has no entry {name!r} for key {key!r}: this model has no such hook{hint}"
            )
        return self.cache_dict[name]

    def __contains__(self, key):
        try:
            return self.resolve(key) in self.cache_dict
        except (ValueError, TypeError):
            return False

    def __iter__(self):
        return iter(self.cache_dict)

    def __len__(self):
        return len(self.cache_dict)

    def keys(self):
        return self.cache_dict.keys()

    def values(self):
        return self.cache_dict.values()

    def items(self):
        return self.cache_dict.items()

    def to_numpy(self):
        """A copy of this cache whose every entry is an ndarray."""
        return ActivationCache(
            {k: as_numpy(v) for k, v in self.items()},
            self.cfg,
            self.tokens,
            self.model,
            self.has_batch_dim,
        )

    def to(self, device, move_model=False):
        """Every entry moved to ``device``, in place (TransformerLens's ``cache.to``); returns the
        cache.

        Tensors move with ``Tensor.to``; ndarrays live on the CPU, so "cpu" keeps them and any other
        device is a ValueError. ``move_model=True`` moves the model too (the torch twin).
        """
        check_flags(move_model=move_model)
        moved = {}
        for name, value in self.cache_dict.items():
            if isinstance(value, np.ndarray):
                if str(device) != "cpu":
                    raise ValueError(
                        f"cache.to({device!r}): the entry {name!r} is a NumPy array, which lives "
                        "on the CPU; only 'cpu' is a device for it"
                    )
                moved[name] = value
            else:
                moved[name] = value.to(device)
        if move_model:
            if not hasattr(self.model, "to"):
                raise ValueError(
                    "cache.to(..., move_model=True): the NumPy model does not move; it lives on "
                    "the CPU"
                )
            self.model.to(device)
        self.cache_dict = moved
        return self

    def __repr__(self):
        n_grads = sum(k.endswith(GRAD_SUFFIX) for k in self.cache_dict)
        return f"ActivationCache({len(self) - n_grads} activations, {n_grads} gradients)"


class HookedMixin:
    """TransformerLens's hook surface for a model whose sub-modules hold HookPoints.

    run_with_hooks, run_with_cache, hooks(), add_hook, reset_hooks, remove_all_hook_fns and
    fold_layer_norm, with TransformerLens's signatures; ``dout`` is this project's addition
    (a backward pass inside the call, from a given output gradient).
    """

    hook_point_class = None  # each twin's HookPoint

    # --- the steps each twin writes for itself (numpy_impl/hooked.py, torch_impl/hooked.py) ---

    def _snapshot(self, x, device=None):
        """A copy of an activation or gradient that later computation cannot change (on
        ``device``)."""
        raise NotImplementedError

    def _as_tokens(self, tokens):
        """Tokens as this twin's forward takes them."""
        raise NotImplementedError

    def _backward_from(self, result, dout):
        """Backpropagate from what the forward returned: ``dout`` shaped like the logits or the loss
        (None: a scalar loss)."""
        raise NotImplementedError

    def _default_dout(self, out, tokens):
        """d(mean next-token cross-entropy)/d(out), as an ndarray shaped like ``out``."""
        raise NotImplementedError

    def _layer_norm_pre(self, cfg):
        """A new parameter-free LayerNorm (``LayerNormPre``) of ``cfg``, where the model's
        parameters are."""
        raise NotImplementedError

    # --- written once: the hook points ---

    def _named_modules_and_aliases(self):
        """(name, module) for every sub-module, and again under each alias (a second name)."""
        raise NotImplementedError

    @property
    def hook_dict(self):
        """{full hook name: HookPoint}, in the order the components are defined. An alias
        (TransformerLens 4's ``hook_embed`` for ``embed.hook_out``, ``blocks.0.hook_resid_pre`` for
        ``blocks.0.hook_in``) maps to the same HookPoint as the name it stands for; ``point.name``
        is that name."""
        modules = self._named_modules_and_aliases()
        return {name: m for name, m in modules if isinstance(m, self.hook_point_class)}

    @property
    def mod_dict(self):
        """{full name: module} for every sub-module, hook points included (TransformerLens's
        ``mod_dict``)."""
        return {name: m for name, m in self.named_modules() if name}

    def hook_points(self):
        return self.hook_dict.values()

    def _resolve_hooks(self, hooks, arg):
        """[(name or filter, fn)] (a list, a tuple or any other iterable of pairs, as
        TransformerLens takes) -> [(HookPoint, fn)], every entry checked before any is added."""
        if isinstance(hooks, (str, bytes, dict)) or not hasattr(hooks, "__iter__"):
            raise TypeError(
                f"{arg} must be a list (or another iterable) of (hook name or filter, fn) pairs, "
                f"got {type(hooks).__name__}"
            )
        hooks = list(hooks)  # a generator is read once, here
        points = self.hook_dict
        resolved = []
        for i, entry in enumerate(hooks):
            if not isinstance(entry, (list, tuple)) or len(entry) != 2:
                raise TypeError(
                    f"{arg}[{i}] must be a (hook name or filter, fn) pair, got {entry!r}"
                )
            name, fn = entry
            if not callable(fn):
                raise TypeError(
                    f"{arg}[{i}]: the hook function must be callable, got {type(fn).__name__}"
                )
            if isinstance(name, str):
                full = hook_name(name, n_layers=self.cfg.n_layers)
                if full not in points:
                    close = difflib.get_close_matches(full, points, n=3, cutoff=0.6)
                    raise HookNameError(
                        f"{arg}[{i}]: this model has no hook named {name!r}"
                        + (f"; did you mean {' or '.join(map(repr, close))}?" if close else "")
                        + f" (model.hook_dict names its {len(points)} hook points)"
                    )
                resolved.append((points[full], fn))
            elif callable(name):
                # a point chosen under two names (an alias) gets the hook once
                chosen = {id(point): point for full, point in points.items() if name(full)}
                resolved.extend((point, fn) for point in chosen.values())
            else:
                raise TypeError(
                    f"{arg}[{i}]: the hook name must be a str or a filter function, got {name!r}"
                )
        return resolved

    def add_hook(self, name, hook, dir="fwd", is_permanent=False, level=None, prepend=False):
        """Put ``hook`` on the hook point ``name`` (or on every point where ``name(point_name)`` is
        True).

        It stays on through every later forward (and ``generate``) until ``reset_hooks()``;
        ``is_permanent=True`` keeps it on through that too. ``dir``: "fwd" or "bwd".
        """
        for point, fn in self._resolve_hooks([(name, hook)], "add_hook"):
            point.add_hook(fn, dir=dir, is_permanent=is_permanent, level=level, prepend=prepend)

    def add_perma_hook(self, name, hook, dir="fwd"):
        """``add_hook(name, hook, dir, is_permanent=True)``."""
        self.add_hook(name, hook, dir=dir, is_permanent=True)

    def list_hooks(self, name_filter=None, dir="both", including_permanent=True):
        """{hook name: [LensHandle]} of every hook point with hooks on (TransformerLens 4's
        ``list_hooks``), under each of its names (an alias too, as the bridge lists them); points
        without hooks are left out. ``name_filter``: None (all), a name, a list of names or
        ``name -> bool``; ``dir``: "fwd", "bwd" or "both"; ``including_permanent=False`` leaves
        permanent hooks out."""
        if dir not in ("fwd", "bwd", "both"):
            raise ValueError(f"dir must be 'fwd', 'bwd' or 'both', got {dir!r}")
        check_flags(including_permanent=including_permanent)
        if name_filter is None or callable(name_filter):
            matches = name_filter or (lambda name: True)
        elif isinstance(name_filter, str) or (
            isinstance(name_filter, (list, tuple)) and all(isinstance(n, str) for n in name_filter)
        ):
            wanted = {name_filter} if isinstance(name_filter, str) else set(name_filter)
            matches = wanted.__contains__
        else:
            raise TypeError(
                f"name_filter must be None, a hook name, a list of names or a function, "
                f"got {name_filter!r}"
            )
        listed = {}
        for name, point in self.hook_dict.items():
            handles = (point.fwd_hooks if dir in ("fwd", "both") else []) + (
                point.bwd_hooks if dir in ("bwd", "both") else []
            )
            handles = [h for h in handles if including_permanent or not h.is_permanent]
            if handles and matches(name):
                listed[name] = handles
        return listed

    def remove_all_hook_fns(self, direction="both", including_permanent=False, level=None):
        """Remove the hooks of every hook point (see ``HookPoint.remove_hooks``)."""
        for point in self.hook_points():
            point.remove_hooks(direction, including_permanent=including_permanent, level=level)

    def clear_contexts(self):
        """Empty every hook point's ``ctx``."""
        for point in self.hook_points():
            point.clear_context()

    def reset_hooks(
        self, clear_contexts=True, direction="both", including_permanent=False, level=None
    ):
        """Remove every hook: those added by ``add_hook``, directly on a HookPoint, or left on by
        ``reset_hooks_end=False``; permanent ones stay unless ``including_permanent``."""
        if clear_contexts:
            self.clear_contexts()
        self.remove_all_hook_fns(direction, including_permanent, level=level)

    @contextmanager
    def hooks(self, fwd_hooks=(), bwd_hooks=(), reset_hooks_end=True, clear_contexts=False):
        """Add hooks for the ``with`` block; at its end (also after an exception) the hooks it
        added are removed, unless ``reset_hooks_end=False``. Hooks added otherwise are left as
        they are."""
        fwd = self._resolve_hooks(fwd_hooks or [], "fwd_hooks")
        bwd = self._resolve_hooks(bwd_hooks or [], "bwd_hooks")
        level = getattr(self, "context_level", 0) + 1
        self.context_level = level
        try:
            for direction, pairs in (("fwd", fwd), ("bwd", bwd)):
                for point, fn in pairs:
                    point.add_hook(fn, dir=direction, level=level)
            yield self
        finally:
            if reset_hooks_end:
                self.reset_hooks(clear_contexts, including_permanent=False, level=level)
            self.context_level = level - 1

    # --- written once: running with hooks ---

    def run_with_hooks(
        self,
        *model_args,
        fwd_hooks=(),
        bwd_hooks=(),
        reset_hooks_end=True,
        clear_contexts=False,
        dout=None,
        **model_kwargs,
    ):
        """Run ``model(*model_args, **model_kwargs)`` with hooks on and return what it returns.

        Every argument the forward takes passes through (``return_type="loss"``,
        ``loss_per_token``). ``fwd_hooks`` and ``bwd_hooks`` are lists (or other iterables) of
        ``(name_or_filter, fn)``:
        a hook name (full, or short as ``get_act_name`` reads it) or a function ``name -> bool``
        choosing hook points. ``fn(activation, hook)`` may return a replacement (or edit its
        argument). The hooks are removed at the end unless ``reset_hooks_end=False``: as in
        TransformerLens, backward hooks fire in a later ``loss.backward()`` (torch) /
        ``model.backward()`` (NumPy) only if they are still on, so leave them on and call
        ``reset_hooks()`` after that backward. ``dout`` (this project's) runs the backward pass
        here: a gradient shaped like the logits or the loss.
        """
        with self.hooks(fwd_hooks, bwd_hooks, reset_hooks_end, clear_contexts):
            if bwd_hooks and reset_hooks_end and dout is None:  # said once the hooks are checked
                warnings.warn(
                    "run_with_hooks: the backward hooks are removed at its end, before any "
                    "backward pass can reach them; pass reset_hooks_end=False (then "
                    "model.reset_hooks() after the backward)",
                    stacklevel=2,
                )
            result = self(*model_args, **model_kwargs)
            if dout is not None:
                self._backward_from(result, dout)
        return result

    def get_caching_hooks(
        self,
        names_filter=None,
        incl_bwd=False,
        device=None,
        remove_batch_dim=False,
        cache=None,
        pos_slice=None,
    ):
        """(cache dict, fwd_hooks, bwd_hooks): hooks that record activations (and gradients) into
        the dict.

        Nothing is added to the model: pass the lists to ``hooks()`` or ``run_with_hooks``.
        ``pos_slice`` keeps some positions of each entry (axis -3 for q, k, v, z; -2 for the rest);
        ``remove_batch_dim`` keeps the first sequence (a batch of 1).
        """
        cache = {} if cache is None else cache
        if not isinstance(cache, dict):
            raise TypeError(f"cache must be a dict, got {type(cache).__name__}")
        pos_slice = Slice.unwrap(pos_slice)
        self._check_device(device)

        def save(x, hook, name, is_backward=False):
            value = self._snapshot(x, device)
            if remove_batch_dim:
                if value.shape[0] != 1:
                    raise ValueError(
                        f"remove_batch_dim needs a batch of 1; {name} has {value.shape[0]}"
                    )
                value = value[0]
            pos_dim = -3 if name.endswith(HEAD_HOOKS) else -2
            pos_dim = -1 if name.endswith(POSITION_ID_HOOKS) else pos_dim
            if value.ndim >= -pos_dim:
                value = pos_slice.apply(value, dim=pos_dim)
            cache[name + (GRAD_SUFFIX if is_backward else "")] = value

        # one caching hook per name: a point with an alias is recorded under both (as the bridge)
        names = self._filtered_names(names_filter)
        fwd_hooks = [(name, partial(save, name=name, is_backward=False)) for name in names]
        bwd_hooks = (
            [(name, partial(save, name=name, is_backward=True)) for name in names]
            if incl_bwd
            else []
        )
        return cache, fwd_hooks, bwd_hooks

    def run_with_cache(
        self,
        *model_args,
        names_filter=None,
        device=None,
        remove_batch_dim=False,
        incl_bwd=False,
        reset_hooks_end=True,
        clear_contexts=False,
        pos_slice=None,
        return_cache_object=True,
        dout=None,
        **model_kwargs,
    ):
        """Run the model and record activations -> ``(what the forward returns, ActivationCache)``.

        Every argument the forward takes passes through (``return_type="loss"``,
        ``loss_per_token``). ``names_filter``: None (every hook), a hook name, a list of names, or
        ``name -> bool``. ``incl_bwd=True`` also runs a backward pass and records ``<name>_grad``:
        with ``return_type="loss"``, of that loss (as TransformerLens's ``loss.backward()``); with
        logits, of ``sum(logits * dout)``, ``dout`` by default the gradient of the mean next-token
        cross-entropy (``tokens[:, 1:]`` predicted from each earlier position). Parameter gradients
        accumulate, as with any backward pass. ``pos_slice``, ``remove_batch_dim``: as in
        ``get_caching_hooks``; ``device``: where the torch twin's entries go ("cpu" only for NumPy);
        ``return_cache_object=False``: a plain dict instead of the ActivationCache.
        """
        first = model_args[0] if model_args else model_kwargs.get("tokens")
        # start_at_layer: the input is a residual stream; the cache holds no tokens then
        starts = model_kwargs.get("start_at_layer") is not None
        tokens = None if starts else self._as_tokens(first)
        shape = tuple(np.shape(first) if starts else tokens.shape)
        if remove_batch_dim and shape[0] != 1:
            raise ValueError(
                f"remove_batch_dim=True needs a batch of 1, got an input of shape {shape}"
            )
        returned = _return_type(model_args, model_kwargs)
        if incl_bwd and model_kwargs.get("stop_at_layer") is not None:
            raise ValueError(
                "incl_bwd=True cannot be combined with stop_at_layer: the run returns the residual "
                "stream entering that layer, not an output to backpropagate (as TransformerLens 4)"
            )
        if incl_bwd and starts and dout is None:
            raise ValueError(
                "incl_bwd=True with start_at_layer needs dout, the gradient of the logits: the "
                "input is a residual stream, so there are no tokens for the default loss"
            )
        if incl_bwd and returned is None:
            raise ValueError(
                "incl_bwd=True needs an output to backpropagate; return_type=None returns nothing"
            )
        store, fwd, bwd = self.get_caching_hooks(
            names_filter, incl_bwd, device, remove_batch_dim, pos_slice=pos_slice
        )
        names = [name for name, _ in fwd]
        with self.hooks(fwd, bwd, reset_hooks_end, clear_contexts):
            result = self(*model_args, **model_kwargs)
            if incl_bwd:
                if dout is None and returned == "logits":
                    dout = self._default_dout(result, tokens)
                self._backward_from(result, dout)
        # activations in forward order, then their gradients in the same order (the same dict,
        # reordered)
        order = [key for key in names + [name + GRAD_SUFFIX for name in names] if key in store]
        ordered = {key: store[key] for key in order}
        store.clear()
        store.update(ordered)
        if not return_cache_object:
            return result, store
        return result, ActivationCache(
            store, self.cfg, tokens, model=self, has_batch_dim=not remove_batch_dim
        )

    def _check_device(self, device):
        """Where cached entries may go: anything torch takes on the torch twin (checked there)."""

    def _filtered_names(self, names_filter):
        names = list(self.hook_dict)
        if names_filter is None:
            return names
        if callable(names_filter):
            return [name for name in names if names_filter(name)]
        if isinstance(names_filter, str):
            names_filter = [names_filter]
        if not isinstance(names_filter, (list, tuple)) or not all(
            isinstance(n, str) for n in names_filter
        ):
            raise TypeError(
                f"names_filter must be None, a hook name, a list of names or a function, got "
                f"{names_filter!r}"
            )
        wanted = [hook_name(n, n_layers=self.cfg.n_layers) for n in names_filter]
        unknown = [n for n in wanted if n not in names]
        if unknown:
            raise HookNameError(
                f"names_filter: this model has no hook named {', '.join(map(repr, unknown))}"
            )
        # an alias brings its point's own name along (hook_embed: embed.hook_out), as on the bridge
        wanted += [self.hook_dict[name].name for name in wanted]
        return [name for name in names if name in wanted]

    # --- written once: folding the LayerNorms ---

    def fold_layer_norm(self, center_weights=True):
        """Fold every LayerNorm's w and b into the weights that read its output (TransformerLens's
        ``fold_ln``).

        ln1 into W_Q, W_K, W_V and their biases, ln2 into W_in and b_in, ln_final into W_U and b_U
        (``foundation/lens/folding.py`` has the formulas); each LayerNorm becomes a ``LayerNormPre``
        (centre, divide by the scale, no w or b) and ``cfg.normalization_type`` becomes "LNPre". The
        logits are unchanged (up to rounding), and the caches, decompositions and ``logit_attrs``
        read as on a TransformerLens model loaded with ``fold_ln=True``. ``center_weights``
        (TransformerLens's default) also removes the mean over d_model of each folded weight, which
        reads a vector of mean zero. Hooks on the old LayerNorms' hook points go with them. Needs a
        pre-norm model with an unembedding; returns the model.
        """
        cfg = self.cfg
        if cfg.normalization != "pre" or cfg.normalization_type != "LN":
            raise ValueError(
                f"fold_layer_norm needs LayerNorms with w and b before the parts that read them "
                f"(normalization='pre', normalization_type='LN'), got normalization="
                f"{cfg.normalization!r}, normalization_type={cfg.normalization_type!r}"
            )
        if not cfg.unembed:
            raise ValueError(
                "fold_layer_norm needs an unembedding to fold ln_final into (cfg.unembed=True)"
            )
        check_flags(center_weights=center_weights)
        state_dict = {name: as_numpy(value) for name, value in self.state_dict().items()}
        folded = fold_layer_norm_weights(state_dict, cfg, center_weights)
        folded_cfg = dataclasses.replace(cfg, normalization_type="LNPre")
        for block in self.blocks:
            block.ln1 = self._layer_norm_pre(folded_cfg)
            if not cfg.attn_only:
                block.ln2 = self._layer_norm_pre(folded_cfg)
        self.ln_final = self._layer_norm_pre(folded_cfg)
        named = set()
        for name, module in self._named_modules_and_aliases():
            if hasattr(module, "cfg"):
                module.cfg = folded_cfg
            if isinstance(module, self.hook_point_class) and id(module) not in named:
                module.name = name  # its own name: an alias comes after it
                named.add(id(module))
        self.load_state_dict(folded)
        return self

    def process_weights(
        self, fold_ln=True, center_writing_weights=True, center_unembed=True, fold_value_biases=True
    ):
        """TransformerLens 4's weight processing, as ``bridge.process_weights()`` and
        ``enable_compatibility_mode()`` do it (the same arguments and defaults): the logits stay the
        same (up to rounding), and every cached activation then equals the bridge's in compatibility
        mode. ``fold_ln``: ``fold_layer_norm``; ``center_writing_weights``: mean zero over d_model
        for every weight that writes to the residual stream; ``center_unembed``: W_U and b_U less
        their mean over the vocabulary; ``fold_value_biases``: b_V folded into b_O
        (``foundation/lens/folding.py`` has each formula). Returns the model.
        """
        check_flags(
            fold_ln=fold_ln,
            center_writing_weights=center_writing_weights,
            center_unembed=center_unembed,
            fold_value_biases=fold_value_biases,
        )
        if fold_ln:
            self.fold_layer_norm(center_weights=True)
        state_dict = {name: as_numpy(value) for name, value in self.state_dict().items()}
        if center_writing_weights:
            if self.cfg.normalization != "pre" or self.cfg.normalization_type not in (
                "LN",
                "LNPre",
            ):
                raise ValueError(
                    "center_writing_weights needs a LayerNorm (that removes the mean) "
                    "before every reader of the residual stream: a pre-norm model"
                )
            state_dict = folding.center_writing_weights(state_dict, self.cfg)
        if center_unembed:
            if not self.cfg.unembed:
                raise ValueError("center_unembed needs an unembedding (cfg.unembed=True)")
            state_dict = folding.center_unembed(state_dict)
        if fold_value_biases:
            state_dict = folding.fold_value_biases(state_dict, self.cfg)
        self.load_state_dict(state_dict)
        return self


def _return_type(model_args, model_kwargs):
    """The ``return_type`` a forward call asks for (its second argument), "logits" when not
    given."""
    if len(model_args) > 1:
        return model_args[1]
    return model_kwargs.get("return_type", "logits")


def split_outputs(result):
    """What a forward returned -> (logits or None, loss or None): logits have 3 axes, a loss 0 or
    2."""
    if isinstance(result, tuple):
        return result
    if result is None:
        return None, None
    return (result, None) if result.ndim == 3 else (None, result)


def check_next_token_loss(cfg, tokens):
    """The default gradient of ``run_with_cache(incl_bwd=True)`` needs logits and two positions."""
    if not cfg.unembed:
        raise ValueError(
            "run_with_cache(incl_bwd=True) without dout needs logits (cfg.unembed=True); pass dout"
        )
    if tokens.shape[1] < 2:
        raise ValueError(
            "tokens need at least 2 positions for a next-token loss; pass dout instead"
        )
