"""Hooks and activation caches, written once for both twins (TransformerLens's habits).

    out, cache = model.run_with_cache(tokens)                  # every activation, by hook name
    cache["blocks.1.attn.hook_pattern"], cache["pattern", 1]   # full name or short form
    out, cache = model.run_with_cache(tokens, incl_bwd=True)   # also "<name>_grad" entries
    out = model.run_with_hooks(tokens, fwd_hooks=[(name, fn)]) # fn(activation, hook) reads or replaces
    with model.hooks(fwd_hooks=[...]): ...                     # hooks on for a block of code

Nothing here knows the array library. Each twin's ``hooked.py`` subclasses ``HookedMixin`` and
writes its own four steps (which HookPoint class, how to copy an activation, how to run the
backward pass, the default gradient); everything else here serves both models.

Activation gradients: the NumPy backward calls every HookPoint on its way down, and autograd
calls the torch HookPoint's tensor hook, so ``<name>_grad`` is the gradient of the backward's
scalar with respect to that activation, in both twins. An activation a forward hook edited
follows one rule in both (see ``HookPoint``): changed entries are constants.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np

from .cache import ActivationCacheMethods
from .checks import check_grad, check_hook_result, check_plain

# TransformerLens's short names: which part of the model each hook name lives in
BLOCK_HOOKS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
ATTN_HOOKS = ("q", "k", "v", "z", "attn_scores", "pattern")
MLP_HOOKS = ("pre", "post")
LN_HOOKS = ("scale", "normalized")
MODEL_HOOKS = ("embed", "pos_embed")
NAME_ALIASES = {"attn": "pattern", "attn_logits": "attn_scores", "query": "q", "key": "k",
                "value": "v", "mlp_pre": "pre", "mlp_post": "post"}
LAYER_TYPE_ALIASES = {"a": "attn", "attention": "attn", "m": "mlp", "b": None, "block": None, "blocks": None}
GRAD_SUFFIX = "_grad"


class HookNameError(ValueError, KeyError):
    """An unknown hook name or cache key: a ValueError, and a KeyError as dict lookups raise."""

    def __str__(self):
        return str(self.args[0])


def as_numpy(x):
    """An ndarray from an ndarray or a torch tensor (detached, on the CPU)."""
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def hook_name(name, layer=None, layer_type=None, n_layers=None):
    """TransformerLens's short form -> the full hook name (as its ``utils.get_act_name``).

    ``hook_name("pattern", 1)`` -> ``"blocks.1.attn.hook_pattern"``; ``("resid_pre", 0)`` ->
    ``"blocks.0.hook_resid_pre"``; ``("scale", 0, "ln1")`` -> ``"blocks.0.ln1.hook_scale"``;
    ``"scale"`` alone -> ``"ln_final.hook_scale"``; ``"embed"`` -> ``"hook_embed"``. A name ending
    in ``_grad`` resolves the rest and keeps the suffix. Negative layers count from the end when
    ``n_layers`` is known. A full name (with a dot, or starting ``hook_``) is returned as it is.
    """
    if not isinstance(name, str):
        raise TypeError(f"hook name must be a str, got {type(name).__name__}")
    if layer is not None and (isinstance(layer, bool) or not isinstance(layer, (int, np.integer))):
        raise TypeError(f"layer must be an int, got {layer!r}")
    if layer_type is not None and not isinstance(layer_type, str):
        raise TypeError(f"layer_type must be a str, got {layer_type!r}")
    if name.endswith(GRAD_SUFFIX):
        return hook_name(name[: -len(GRAD_SUFFIX)], layer, layer_type, n_layers) + GRAD_SUFFIX
    if ("." in name or name.startswith("hook_")) and layer is None and layer_type is None:
        return name
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
            raise HookNameError(f"{where}: say which LayerNorm, e.g. ({short!r}, {layer}, 'ln1') or 'ln2'")
        return f"blocks.{layer}.{layer_type}.hook_{short}"
    for names, part in ((BLOCK_HOOKS, None), (ATTN_HOOKS, "attn"), (MLP_HOOKS, "mlp")):
        if short in names:
            if layer is None:
                raise HookNameError(f"{where}: {short!r} needs a layer, e.g. ({short!r}, 0)")
            if layer_type is not None and layer_type != part:
                raise HookNameError(f"{where}: {short!r} lives in {part or 'the block'}, not {layer_type!r}")
            return f"blocks.{layer}.{part + '.' if part else ''}hook_{short}"
    known = ", ".join(MODEL_HOOKS + BLOCK_HOOKS + ATTN_HOOKS + MLP_HOOKS + LN_HOOKS)
    raise HookNameError(f"{where}: unknown short name; expected a full hook name or one of {known}")


class HookLists:
    """Forward and backward hook lists, written once for the NumPy ``HookPoint`` and its torch twin."""

    def _init_hooks(self):
        self.name = None
        self.fwd_hooks = []
        self.bwd_hooks = []

    def add_hook(self, fn, dir: str = "fwd"):
        """Call ``fn(activation, hook)`` in the forward pass ("fwd") or ``fn(grad, hook)`` in the backward ("bwd")."""
        if not callable(fn):
            raise TypeError(f"hook must be callable, got {type(fn).__name__}")
        if dir not in ("fwd", "bwd"):
            raise ValueError(f"dir must be 'fwd' or 'bwd', got {dir!r}")
        (self.fwd_hooks if dir == "fwd" else self.bwd_hooks).append(fn)

    def remove_hooks(self, dir: str = "both"):
        if dir not in ("fwd", "bwd", "both"):
            raise ValueError(f"dir must be 'fwd', 'bwd' or 'both', got {dir!r}")
        if dir in ("fwd", "both"):
            self.fwd_hooks = []
        if dir in ("bwd", "both"):
            self.bwd_hooks = []

    def _run(self, hooks, x):
        """Pass x through each hook in turn; a hook that returns something (of x's shape) replaces x."""
        for fn in hooks:
            result = fn(x, self)
            if result is not None:
                x = check_hook_result(result, x.shape, self.name, "bwd" if hooks is self.bwd_hooks else "fwd")
        return x


class ActivationCache(ActivationCacheMethods):
    """Activations (and ``<name>_grad`` gradients) of one run, keyed by full hook name.

    Index it with a full name, ``cache["blocks.0.attn.hook_q"]``, or TransformerLens's short
    forms, ``cache["q", 0]``, ``cache["q", 0, "attn"]``, ``cache["scale", 1, "ln2"]``,
    ``cache["pattern_grad", -1]``. Values are what the model computes: ndarrays from the NumPy
    model, detached tensors from the torch twin (``to_numpy()`` gives an all-ndarray copy).
    ``tokens`` are the input tokens (an ndarray), ``cfg`` the model's config and ``model`` the
    model (its weights serve the residual-stream methods written in ``foundation/cache.py``:
    ``accumulated_resid``, ``decompose_resid``, ``stack_head_results``, ``logit_attrs``, ...).
    """

    def __init__(self, cache_dict, cfg, tokens=None, model=None, has_batch_dim=True):
        self.cache_dict = dict(cache_dict)
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
        raise TypeError(f"cache key must be a str or a tuple (name, layer[, layer_type]), got {key!r}")

    def __getitem__(self, key):
        name = self.resolve(key)
        if name not in self.cache_dict:
            hint = "" if name.endswith(GRAD_SUFFIX) else " (or was filtered out by names_filter)"
            if name.endswith(GRAD_SUFFIX) and not any(k.endswith(GRAD_SUFFIX) for k in self.cache_dict):
                hint = " (run_with_cache(..., incl_bwd=True) records gradients)"
            raise HookNameError(f"cache has no entry {name!r} for key {key!r}: this model has no such hook{hint}")
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
        return ActivationCache({k: as_numpy(v) for k, v in self.items()}, self.cfg, self.tokens, self.model,
                               self.has_batch_dim)

    def __repr__(self):
        n_grads = sum(k.endswith(GRAD_SUFFIX) for k in self.cache_dict)
        return f"ActivationCache({len(self) - n_grads} activations, {n_grads} gradients)"


class HookedMixin:
    """run_with_cache, run_with_hooks and hooks(), for a model whose sub-modules hold HookPoints."""

    hook_point_class = None  # each twin's HookPoint

    # --- the steps each twin writes for itself (numpy_impl/hooked.py, torch_impl/hooked.py) ---

    def _snapshot(self, x):
        """A copy of an activation or gradient that later computation cannot change."""
        raise NotImplementedError

    def _as_tokens(self, tokens):
        """Tokens as this twin's forward takes them."""
        raise NotImplementedError

    def _run_backward(self, out, dout):
        """Backpropagate ``dout`` (an ndarray shaped like ``out``) from the last forward's output."""
        raise NotImplementedError

    def _default_dout(self, out, tokens):
        """d(mean next-token cross-entropy)/d(out), as an ndarray shaped like ``out``."""
        raise NotImplementedError

    # --- written once ---

    @property
    def hook_dict(self):
        """{full hook name: HookPoint}, in forward order."""
        return {name: m for name, m in self.named_modules() if isinstance(m, self.hook_point_class)}

    def _resolve_hooks(self, hooks, arg):
        """[(name or filter, fn)] -> [(HookPoint, fn)], every entry checked before any is added."""
        if not isinstance(hooks, (list, tuple)):
            raise TypeError(f"{arg} must be a list of (hook name or filter, fn) pairs, got {type(hooks).__name__}")
        points = self.hook_dict
        resolved = []
        for i, entry in enumerate(hooks):
            if not isinstance(entry, (list, tuple)) or len(entry) != 2:
                raise TypeError(f"{arg}[{i}] must be a (hook name or filter, fn) pair, got {entry!r}")
            name, fn = entry
            if not callable(fn):
                raise TypeError(f"{arg}[{i}]: the hook function must be callable, got {type(fn).__name__}")
            if isinstance(name, str):
                full = hook_name(name, n_layers=self.cfg.n_layers)
                if full not in points:
                    raise HookNameError(f"{arg}[{i}]: this model has no hook named {name!r}; "
                                        f"its hooks are {', '.join(points)}")
                resolved.append((points[full], fn))
            elif callable(name):
                resolved.extend((point, fn) for full, point in points.items() if name(full))
            else:
                raise TypeError(f"{arg}[{i}]: the hook name must be a str or a filter function, got {name!r}")
        return resolved

    @contextmanager
    def hooks(self, fwd_hooks=(), bwd_hooks=()):
        """Add hooks for the ``with`` block; they are removed at its end, also after an exception."""
        fwd = self._resolve_hooks(fwd_hooks or [], "fwd_hooks")
        bwd = self._resolve_hooks(bwd_hooks or [], "bwd_hooks")
        added = []
        try:
            for direction, pairs in (("fwd", fwd), ("bwd", bwd)):
                for point, fn in pairs:
                    point.add_hook(fn, dir=direction)
                    added.append((point, direction, fn))
            yield self
        finally:
            for point, direction, fn in reversed(added):
                hooks = point.fwd_hooks if direction == "fwd" else point.bwd_hooks
                for i in range(len(hooks) - 1, -1, -1):  # remove this one entry, not others' hooks
                    if hooks[i] is fn:
                        del hooks[i]
                        break

    def run_with_hooks(self, tokens, fwd_hooks=(), bwd_hooks=(), dout=None):
        """Run the model with hooks on and return its output; the hooks are removed afterwards.

        ``fwd_hooks`` and ``bwd_hooks`` are lists of ``(name_or_filter, fn)``: a full hook name
        (or a layer-free short one, such as ``"embed"``), or a function ``name -> bool`` choosing
        hook points. ``fn(activation, hook)`` may return a replacement (or edit its argument).
        Backward hooks ``fn(grad, hook)`` fire in the backward pass that runs when ``dout``
        (shaped like the output) is given.
        """
        tokens = self._as_tokens(tokens)  # the model's forward checks them
        with self.hooks(fwd_hooks, bwd_hooks):
            out = self(tokens)
            if dout is not None:
                self._run_backward(out, self._check_dout(dout, out))
        return out

    def run_with_cache(self, tokens, names_filter=None, incl_bwd=False, dout=None):
        """Run the model and record activations -> ``(out, ActivationCache)``.

        ``names_filter``: None (every hook), a hook name, a list of names, or ``name -> bool``.
        ``incl_bwd=True`` also runs a backward pass and records ``<name>_grad``: the gradient of
        ``sum(out * dout)`` at each hook, so ``dout`` is d(your scalar)/d(out); by default it is the
        gradient of the mean next-token cross-entropy (``tokens[:, 1:]`` predicted from each
        earlier position). Parameter gradients accumulate, as with any backward pass.
        """
        tokens = self._as_tokens(tokens)  # the model's forward checks them
        names = self._filtered_names(names_filter)
        store = {}

        def save_activation(x, hook):
            store[hook.name] = self._snapshot(x)

        def save_gradient(dx, hook):
            store[hook.name + GRAD_SUFFIX] = self._snapshot(dx)

        fwd_hooks = [(name, save_activation) for name in names]
        bwd_hooks = [(name, save_gradient) for name in names] if incl_bwd else []
        with self.hooks(fwd_hooks, bwd_hooks):
            out = self(tokens)
            if incl_bwd:
                grad = self._default_dout(out, tokens) if dout is None else self._check_dout(dout, out)
                self._run_backward(out, grad)
        # activations in forward order, then their gradients in the same order
        order = names + [name + GRAD_SUFFIX for name in names]
        return out, ActivationCache({key: store[key] for key in order if key in store}, self.cfg, tokens, model=self)

    def _check_dout(self, dout, out):
        dout = as_numpy(check_plain(dout, "dout"))  # a meta tensor or a masked array refused before it is read
        check_grad(dout, "dout", out.shape, self.cfg.dtype)
        return dout

    def _filtered_names(self, names_filter):
        names = list(self.hook_dict)
        if names_filter is None:
            return names
        if callable(names_filter):
            return [name for name in names if names_filter(name)]
        if isinstance(names_filter, str):
            names_filter = [names_filter]
        if not isinstance(names_filter, (list, tuple)) or not all(isinstance(n, str) for n in names_filter):
            raise TypeError(f"names_filter must be None, a hook name, a list of names or a function, got {names_filter!r}")
        wanted = [hook_name(n, n_layers=self.cfg.n_layers) for n in names_filter]
        unknown = [n for n in wanted if n not in names]
        if unknown:
            raise HookNameError(f"names_filter: this model has no hook named {', '.join(map(repr, unknown))}")
        return [name for name in names if name in wanted]



def check_next_token_loss(cfg, tokens):
    """The default gradient of ``run_with_cache(incl_bwd=True)`` needs logits and two positions."""
    if not cfg.unembed:
        raise ValueError("run_with_cache(incl_bwd=True) without dout needs logits (cfg.unembed=True); pass dout")
    if tokens.shape[1] < 2:
        raise ValueError("tokens need at least 2 positions for a next-token loss; pass dout instead")
