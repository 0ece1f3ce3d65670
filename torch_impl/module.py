"""The small machinery under every torch component: modules, hook points and seeded generators.

``torch.nn`` already gives parameters, modules and state dicts. ``Module`` adds what the NumPy
reference's ``Module`` also has: ``load_state_dict`` that takes either library's arrays and
names every bad key in one ``ValueError``, and ``from_twin``; and dtype moves (``.float()``,
``.double()``, ``.to(dtype)``) that take ``cfg.dtype`` along, refusing any other dtype first. ``HookPoint`` is the twin of the
reference's (its hook lists are ``foundation.lens.hooks.HookLists``, written once).

``Module`` is also the boundary, as the reference's: every subclass's ``forward`` is wrapped (see
``_forward_at_the_boundary`` below, and ``foundation/contract/boundary.py`` for what it guarantees), so the
bodies in the component files hold only the formulas. Autograd needs no copies of the caller's
tensors: it refuses a backward through a tensor changed in place after the forward.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from itertools import chain

import numpy as np
import torch
from torch import nn

from foundation.contract.boundary import Call, calls, check_arguments, entered, guard, hook_label, nonfinite, taint
from foundation.contract.checks import check_seed, check_state_dict, check_tokens, tokens_as_array
from foundation.lens.hooks import HookLists


def default_rng(rng=None):
    """A ``torch.Generator`` from a seed, an existing generator, or None (a random seed)."""
    check_seed(rng, torch.Generator)
    if isinstance(rng, torch.Generator):
        return rng
    generator = torch.Generator()
    if rng is None:
        generator.seed()
    else:
        generator.manual_seed(int(rng))
    return generator


class Module(nn.Module):
    """``nn.Module`` with the reference's loading and boundary: either library's arrays, one clear
    error, ``from_twin``; every subclass's ``forward`` checked and guarded."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "forward" in vars(cls):
            cls.forward = _forward_at_the_boundary(vars(cls)["forward"])

    def load_state_dict(self, state_dict, strict=True, assign=False):
        """Copy arrays into the parameters, in place. Strict: missing, unexpected or mis-shaped keys raise ValueError.

        ``foundation.contract.checks.check_state_dict`` checks everything first and casts to the model's
        dtype, as the NumPy reference's ``load_state_dict`` does, so both take the same state
        dicts with the same values and refuse the same ones with the same message; with
        ``strict=False`` the keys present are checked all the same. ``assign=True`` makes new
        parameters of the values cast to each parameter's dtype and device (never the caller's
        own tensors, never another dtype).
        """
        params = dict(self.named_parameters())
        dtype = str(next(iter(params.values())).dtype).replace("torch.", "") if params else None
        arrays = check_state_dict(state_dict, {name: tuple(p.shape) for name, p in params.items()}, dtype, strict)
        tensors = {name: torch.from_numpy(array).to(params[name].device) for name, array in arrays.items()}
        unexpected = {name: value for name, value in state_dict.items() if name not in params}  # strict=False: listed
        return super().load_state_dict({**tensors, **unexpected}, strict=strict, assign=assign)

    @classmethod
    def from_twin(cls, twin):
        """A module of this class holding ``twin``'s config and weights (``twin``: the same class from numpy_impl)."""
        module = cls(twin.cfg) if hasattr(twin, "cfg") else cls()
        module.load_state_dict(twin.state_dict())
        return module

    # --- moving like a torch module: cfg.dtype follows the parameters; other dtypes are refused first ---

    def to(self, *args, **kwargs):
        """torch's ``Module.to`` (device, dtype, or both); a dtype other than float32/float64 is refused."""
        for arg in (*args, *kwargs.values()):
            if isinstance(arg, (torch.dtype, torch.Tensor)):
                _check_dtype(arg if isinstance(arg, torch.dtype) else arg.dtype)
        return super().to(*args, **kwargs)

    def type(self, dst_type):
        """torch's ``Module.type`` on the floating-point tensors only, as ``.to(dtype)``: a bool mask stays bool."""
        return self._apply(lambda t: t.type(dst_type) if t.is_floating_point() else t)

    def _apply(self, fn, *args, **kwargs):
        """Every move (.to, .float, .double, .half, .type, .cuda, ...) ends here; then cfg.dtype follows.

        ``fn`` is tried first on an empty tensor of the module's dtype and on an empty bool tensor
        (a causal mask): a move to a dtype the twin cannot compute in, or one that would turn a mask
        into numbers, is refused before any tensor changes.
        """
        cfg = getattr(self, "cfg", None)
        if cfg is not None:
            _check_dtype(fn(torch.empty(0, dtype=getattr(torch, cfg.dtype))).dtype)
            if fn(torch.empty(0, dtype=torch.bool)).dtype != torch.bool:
                raise TypeError("this move would turn the bool causal mask into numbers: the twin computes in "
                                "float32 or float64 with a bool mask; use .float(), .double() or .to(dtype)")
        super()._apply(fn, *args, **kwargs)
        floats = [t for t in chain(self.parameters(), self.buffers()) if t.is_floating_point()]
        if cfg is not None and floats and str(floats[0].dtype) != f"torch.{cfg.dtype}":
            cfg = dataclasses.replace(cfg, dtype=str(floats[0].dtype).removeprefix("torch."))
            for module in self.modules():
                if hasattr(module, "cfg"):
                    module.cfg = cfg
        return self


def _check_dtype(dtype):
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"dtype {dtype} is not supported: the twin computes in float32 or float64 "
                        "(cfg.dtype); use .float() or .double()")


def _forward_at_the_boundary(forward):
    """``forward`` with its arguments checked (tokens made int64 on the module's device) and its results guarded.

    The gradients autograd computes later are guarded too: each hook point it passes registers a
    check (``HookPoint.forward``), which raises only if the gradient arriving at the outputs of the
    outermost call was finite.
    """
    signature = inspect.signature(forward)

    @functools.wraps(forward)
    def forward_at_the_boundary(self, *args, **kwargs):
        outermost = not calls()
        arguments = _checked_arguments(self, signature, args, kwargs)
        arrays = [value for value in arguments.values() if isinstance(value, torch.Tensor)]
        call = Call(self, "forward", arrays, lambda: [p.detach() for p in self.parameters()])
        with entered(call):
            result = forward(self, **arguments)
            for out in result if isinstance(result, tuple) else (result,):
                if isinstance(out, torch.Tensor):
                    guard(out, "its output")
                    if outermost and out.requires_grad:
                        out.register_hook(functools.partial(_note_upstream_gradient, call))
        return result

    return forward_at_the_boundary


def _checked_arguments(module, signature, args, kwargs):
    """{name: value} of a forward call, checked; tokens become int64 on the module's device."""
    bound = signature.bind(module, *args, **kwargs)
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    del arguments[next(iter(signature.parameters))]  # self
    if "tokens" in arguments and getattr(module, "takes_any_tokens", False):
        tokens = token_tensor(arguments.pop("tokens"), module.cfg)  # the model's: lists and ndarrays too, checked
        check_arguments(module, arguments, torch.Tensor)
        device = next(chain(module.parameters(), module.buffers()), tokens).device
        return {"tokens": tokens.to(device), **arguments}
    check_arguments(module, arguments, torch.Tensor)
    if "tokens" in arguments:
        arguments["tokens"] = arguments["tokens"].to(torch.int64)  # ids of any integer dtype (a uint8 index would be a mask)
    if "targets" in arguments:
        arguments["targets"] = arguments["targets"].to(torch.int64)  # ids of any integer dtype; take_along_dim wants int64
    return arguments


def _note_upstream_gradient(call, grad):
    """A non-finite gradient given to the outermost output: what follows from it is not the formula's doing."""
    if nonfinite(grad):
        call.tainted = True


def token_tensor(tokens, cfg):
    """Token ids as an int64 tensor: lists and ndarrays of any integer dtype are checked, then converted.

    Checking the ndarray first gives the reference's messages; converting to int64 copies it (so
    negative strides and read-only arrays are fine) and reads a uint8 array as ids, never as a mask.
    """
    tokens = tokens_as_array(tokens)
    if isinstance(tokens, np.ndarray):
        check_tokens(tokens, cfg, np.ndarray)
        return torch.from_numpy(tokens.astype(np.int64))
    check_tokens(tokens, cfg, torch.Tensor)
    return tokens.to(torch.int64)


class HookPoint(nn.Module, HookLists):
    """An identity placed at a named point of the forward pass, to read or replace it.

    ``forward`` hands each forward hook ``fn(activation, hook)`` a detached copy of the
    activation; a hook may edit it in place or return a replacement. Backward hooks
    ``fn(grad, hook)`` are attached to the activation the rest of the model uses, so autograd
    calls them where the NumPy reference calls ``HookPoint.backward``. Edited activations follow
    one rule in both twins:

        entries a forward hook changed are constants: no gradient flows past them;
        entries it left unchanged pass their gradient through untouched.

    The name is set by the model that owns it.
    """

    def __init__(self):
        super().__init__()
        self._init_hooks()

    def forward(self, x):
        guard(x, lambda: hook_label(self))
        if x.requires_grad and torch.is_grad_enabled() and calls():
            forward_call = (calls()[0], calls()[-1])  # the gradient's guard needs this forward's records
            x.register_hook(functools.partial(self._guard_gradient, forward_call))
        if self.fwd_hooks:
            # hooks get a detached copy, so they may edit it in place; x keeps its autograd history
            hooked = self._run(self.fwd_hooks, x.detach().clone())
            hooked = torch.as_tensor(hooked, dtype=x.dtype, device=x.device).detach().clone()  # ours: the hook may reuse it
            if nonfinite(hooked):
                taint()  # the hook put a NaN or an infinity in: what follows from it is not the formula's doing
            changed = hooked != x.detach()  # like x: True where a hook changed the value
            if changed.any():
                x = torch.where(changed, hooked, x)  # the hook's values are constants: no gradient reaches x there
        if self.bwd_hooks and torch.is_grad_enabled() and x.is_floating_point():  # ids have no gradient
            if not x.requires_grad:
                x = x.detach().requires_grad_()  # a constant (the sinusoidal table): a leaf, so it has a gradient
            else:
                x = x.view_as(x)  # a node of its own: its gradient is what flows through this point alone,
                # as the reference's (x may go elsewhere too: a residual stream, or q, k and v's inputs)
            x.register_hook(functools.partial(self.backward, forward_call=tuple(calls()[:1] + calls()[-1:])))
        return x

    def backward(self, dx, forward_call=()):
        # hooks get a copy, as in the reference, and what they return is copied too
        dx = torch.as_tensor(self._run(self.bwd_hooks, dx.clone()), dtype=dx.dtype, device=dx.device).clone()
        if nonfinite(dx):
            for call in forward_call:
                call.tainted = True  # the hook put a NaN or an infinity in: what follows is not the formula's doing
        return dx

    def _guard_gradient(self, forward_call, dx):
        """The gradient autograd brings to this hook point, guarded as the reference's ``HookPoint.backward`` guards it."""
        guard(dx, lambda: f"the gradient at {hook_label(self, forward_call[-1].module)}", forward_call)


class Projection(nn.Module):
    """The hook points around one linear map inside a component: TransformerLens 4's ``attn.q``,
    ``attn.k``, ``attn.v``, ``attn.o``, ``mlp.in`` and ``mlp.out``.

    ``hook_in`` holds the map's input, ``hook_out`` its output. The weights stay in the component
    that multiplies by them (``W_Q``, ``W_in``, ...), under TransformerLens's parameter names.
    """

    def __init__(self):
        super().__init__()
        self.hook_in = HookPoint()
        self.hook_out = HookPoint()
