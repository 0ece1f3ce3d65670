"""The small machinery under every torch component: modules, hook points and seeded generators.

``torch.nn`` already gives parameters, modules and state dicts. ``Module`` adds what the NumPy
reference's ``Module`` also has: ``load_state_dict`` that takes either library's arrays and names
every bad key in one ``ValueError``, and ``from_twin``; a ``cfg`` whose dtype is read from the
tensors, so a move (``.float()``, ``.double()``, ``.half()``, ``.bfloat16()``, ``.to(dtype)``)
changes what it says; and moves to any other dtype refused first. ``HookPoint`` is the twin of
the reference's (its hook lists are ``foundation.lens.hooks.HookLists``, written once).

``Module`` also carries the boundary each component's ``forward`` declares with
``@boundary(x="activation")``, as the reference's, on what both twins share (``TwinModule``;
``_forward_at_the_boundary`` below; ``foundation/contract/boundary.py`` says what it guarantees),
so the bodies in the component files hold only the formulas. Autograd needs no copies of the
caller's tensors: it refuses a backward through a tensor changed in place after the forward. The
guard of the gradients runs once, when autograd ends the backward (``_end_of_backward``), not at
every hook point.
"""

from __future__ import annotations

import dataclasses
import functools
from itertools import chain

import numpy as np
import torch
from torch import nn

from foundation.contract.boundary import (  # noqa: F401 (boundary, for the components)
    Call,
    TwinModule,
    bind,
    boundary,
    calls,
    check_arguments,
    entered,
    guard,
    guard_every_hook,
    guarding,
    hook_label,
    inputs_finite,
    nonfinite,
    note_always_guarded,
    outputs,
    parameter_label,
    taint,
    user_call,
)
from foundation.contract.checks import check_seed, check_tokens, tokens_as_array
from foundation.contract.config import DTYPES
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


class Constant(nn.Buffer):
    """A fixed tensor in a parameter's place: a buffer, neither trained nor saved (the reference's
    ``Constant``)."""

    def __new__(cls, data):
        return super().__new__(cls, data, persistent=False)


class Module(TwinModule, nn.Module):
    """``nn.Module`` with the reference's loading and boundary: either library's arrays, one clear
    error; every ``forward`` declared with ``@boundary(...)`` checked and guarded (what reads the
    same in both twins, ``from_twin`` and a user's guarded forward among it, is
    ``TwinModule``'s)."""

    @property
    def cfg(self):
        """The config the module was built with, its ``dtype`` the tensors' (one source of truth:
        a move such as ``.double()`` changes the tensors, and so what ``cfg.dtype`` says)."""
        if "_cfg" not in vars(self):
            raise AttributeError(f"{type(self).__name__} has no cfg")
        cfg = vars(self)["_cfg"]
        floats = (t for t in chain(self.parameters(), self.buffers()) if t.is_floating_point())
        tensor = next(floats, None)
        if tensor is None:
            return cfg
        return _with_dtype(cfg, str(tensor.dtype).removeprefix("torch."))

    @cfg.setter
    def cfg(self, cfg):
        vars(self)["_cfg"] = cfg

    def load_state_dict(self, state_dict, strict=True, assign=False):
        """Copy arrays into the parameters, in place. Strict: missing, unexpected or mis-shaped keys
        raise ValueError.

        ``foundation.contract.checks.check_state_dict`` checks everything first and casts to the
        model's dtype, as the NumPy reference's ``load_state_dict`` does, so both take the same
        state dicts with the same values and refuse the same ones with the same message; with
        ``strict=False`` the keys present are checked all the same. ``assign=True`` makes new
        parameters of the values cast to each parameter's dtype and device (never the caller's own
        tensors, never another dtype).
        """
        params = dict(self.named_parameters())
        arrays = self._checked_state_dict(state_dict, strict)
        # each in its parameter's dtype: a bfloat16 model's come as float32 (NumPy has no bfloat16)
        tensors = {
            name: torch.from_numpy(array).to(params[name].device, params[name].dtype)
            for name, array in arrays.items()
        }
        # strict=False: listed
        unexpected = {name: value for name, value in state_dict.items() if name not in params}
        return super().load_state_dict({**tensors, **unexpected}, strict=strict, assign=assign)

    # --- the boundary: what @boundary(...) makes of a forward ---

    def _forward_at_the_boundary(self, body, signature, args, kwargs):
        """A forward: a body's call runs as it is; a user's is checked (tokens made int64 on the
        module's device) and guarded, and so is the backward autograd runs through it later."""
        if not user_call():
            if not guarding():
                return body(self, *args, **kwargs)
            call = Call(self, "forward", [], self._weights)  # named in the guard's messages
            return self._guarded_forward(body, args, kwargs, call)
        arguments = self._checked_arguments(body, signature, args, kwargs)
        arrays = [value for value in arguments.values() if isinstance(value, torch.Tensor)]
        result, call, guarded = self._user_forward(body, arguments, arrays)
        tensors = [out for out in outputs(result) if out.requires_grad]
        if tensors and torch.is_grad_enabled() and not guarded:
            call.input_grads = []
            for x in arrays:
                if x.requires_grad:
                    # the gradients it returns, kept for the end
                    x.register_hook(call.input_grads.append)
            tensors[0].register_hook(functools.partial(self._start_of_backward, call, arguments))
        return result

    def _checked_arguments(self, body, signature, args, kwargs):
        """{name: value} of a user's forward call, checked; tokens become int64 on the module's
        device."""
        arguments = bind(self, signature, args, kwargs)
        # start_at_layer: the input is a residual stream, not ids
        ids = "tokens" in arguments and arguments.get("start_at_layer") is None
        if ids and getattr(self, "takes_any_tokens", False):
            # the model's: lists and ndarrays too, checked
            tokens = token_tensor(arguments["tokens"], self.cfg)
            arguments["tokens"] = tokens
            check_arguments(self, body, arguments, torch.Tensor, checked=("tokens",))  # the others
            device = next(chain(self.parameters(), self.buffers()), tokens).device
            return {**arguments, "tokens": tokens.to(device)}
        check_arguments(self, body, arguments, torch.Tensor)
        if ids:
            # ids of any integer dtype (a uint8 index would be a mask)
            arguments["tokens"] = arguments["tokens"].to(torch.int64)
        if "targets" in arguments:
            # ids of any integer dtype; take_along_dim wants int64
            arguments["targets"] = arguments["targets"].to(torch.int64)
        return arguments

    def _guarded_forward(self, body, args, kwargs, call):
        """A forward with every hook point, every output and (when autograd runs back through it)
        every gradient at a hook point guarded as it is made."""
        user = user_call()
        with entered(call):
            result = body(self, *args, **kwargs)
            for out in outputs(result):
                guard(out, "its output")
                if user and out.requires_grad:
                    out.register_hook(functools.partial(_note_upstream_gradient, call))
        return result

    def _start_of_backward(self, call, arguments, dout):
        """Autograd reached a user's call's output: look at its gradients when the backward ends."""
        torch.autograd.Variable._execution_engine.queue_callback(
            functools.partial(self._end_of_backward, call, arguments, dout)
        )
        return dout

    def _end_of_backward(self, call, arguments, dout):
        """The gradients a backward made, looked at once: those of the inputs and of every weight.

        Only when one is not finite, and ``dout``, the inputs and the weights were, is the forward
        replayed and the backward run again with every hook point guarded, to name where it began.
        """
        grads = [
            dout,
            *call.input_grads,
            *(p.grad for p in self.parameters() if p.grad is not None),
        ]
        call.input_grads = []
        if self._finite(grads) or call.tainted:
            return  # one host synchronisation: what follows runs only when a gradient is not finite
        if not self._finite([dout]) or not inputs_finite(call):
            return
        with torch.enable_grad(), guard_every_hook():
            result = self(**arguments)
            out = [tensor for tensor in outputs(result) if tensor.requires_grad][0]
            leaves = [x for x in call.arrays if x.requires_grad] + [
                p for p in self.parameters() if p.requires_grad
            ]
            owners = {
                id(p): module for module in self.modules() for p in module.parameters(recurse=False)
            }
            for p in self.parameters():
                if p.requires_grad:
                    label = f"the gradient of {parameter_label(self, p)}"
                    owner = Call(owners[id(p)], "backward", [], self._weights)
                    guarded = functools.partial(guard, tensor=label, forward_call=(call, owner))
                    p.register_hook(guarded)
            torch.autograd.grad(out, leaves, grad_outputs=dout, allow_unused=True)

    def _weights(self):
        return [p.detach() for p in self.parameters()]

    @staticmethod
    def _finite(tensors):
        """Is every entry of these float tensors finite? One sum each, all read back in one host
        synchronisation; a sum of large finite entries can overflow, so a non-finite sum is checked
        entry by entry."""
        floats = [
            t.detach() for t in tensors if t is not None and t.is_floating_point() and t.numel()
        ]
        if not floats:
            return True
        sums = torch.stack([t.sum(dtype=torch.float64) for t in floats])  # on the tensors' device
        if bool(torch.isfinite(sums).all()):
            return True
        return all(bool(torch.isfinite(t).all()) for t in floats)

    # --- moving like a torch module: other dtypes are refused first (cfg.dtype reads the tensors)

    def to(self, *args, **kwargs):
        """torch's ``Module.to`` (device, dtype, or both); a dtype not in the config's DTYPES is
        refused."""
        for arg in (*args, *kwargs.values()):
            if isinstance(arg, (torch.dtype, torch.Tensor)):
                _check_dtype(arg if isinstance(arg, torch.dtype) else arg.dtype)
        return super().to(*args, **kwargs)

    def type(self, dst_type):
        """torch's ``Module.type`` on the floating-point tensors only, as ``.to(dtype)``: a bool
        mask stays bool."""
        return self._apply(lambda t: t.type(dst_type) if t.is_floating_point() else t)

    def _apply(self, fn, *args, **kwargs):
        """Every move (.to, .float, .double, .half, .type, .cuda, ...) ends here.

        ``fn`` is tried first on an empty tensor of the module's dtype and on an empty bool tensor
        (a causal mask): a move to a dtype the twin cannot compute in, or one that would turn a mask
        into numbers, is refused before any tensor changes.
        """
        cfg = getattr(self, "cfg", None)
        if cfg is not None:
            _check_dtype(fn(torch.empty(0, dtype=getattr(torch, cfg.dtype))).dtype)
            if fn(torch.empty(0, dtype=torch.bool)).dtype != torch.bool:
                raise TypeError(
                    "this move would turn the bool causal mask into numbers: the twin computes in "
                    "a float dtype with a bool mask; use .float(), .double(), .half() or .to(dtype)"
                )
        return super()._apply(fn, *args, **kwargs)


@functools.lru_cache(maxsize=16)
def _with_dtype(cfg, dtype):
    """``cfg`` with ``dtype``: ``cfg`` itself when the dtypes agree, else a copy (a few
    microseconds; a forward reads ``cfg`` a few times per component)."""
    return cfg if cfg.dtype == dtype else dataclasses.replace(cfg, dtype=dtype)


def _check_dtype(dtype):
    if str(dtype).removeprefix("torch.") not in DTYPES:
        raise TypeError(
            f"dtype {dtype} is not supported: the twin computes in {', '.join(DTYPES)} "
            "(cfg.dtype); use .double(), .float(), .half() or .bfloat16()"
        )


def _note_upstream_gradient(call, grad):
    """A non-finite gradient given to the outermost output: what follows from it is not the
    formula's doing."""
    if nonfinite(grad):
        call.tainted = True


def token_tensor(tokens, cfg):
    """Token ids as an int64 tensor: lists and ndarrays of any integer dtype are checked, then
    converted.

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

    The name is set by the model that owns it. With no hook on it, it passes its value on and
    looks at nothing (no host synchronisation, no tensor hook), unless ``always`` (a LayerNorm's
    scale: see foundation/contract/boundary.py) or inside ``guard_every_hook()``.
    """

    def __init__(self, always=False):
        super().__init__()
        self._init_hooks()
        self.always = always  # looked at by the guard at every call, hooks or not

    def forward(self, x):
        if guarding():
            guard(x, lambda: hook_label(self))
            frames = [call for call in calls() if not call.is_hook]
            if x.requires_grad and torch.is_grad_enabled() and frames:
                # the gradient's guard needs this forward's records
                forward_call = (frames[0], frames[-1])
                x.register_hook(functools.partial(self._guard_gradient, forward_call))
        elif self.always:
            note_always_guarded(x)
        if self.fwd_hooks:
            # hooks get a detached copy, so they may edit it in place; x keeps its autograd history
            hooked = self._run(self.fwd_hooks, x.detach().clone())
            # ours: the hook may reuse it
            hooked = torch.as_tensor(hooked, dtype=x.dtype, device=x.device).detach().clone()
            if nonfinite(hooked) and not nonfinite(x):
                # the hook put a NaN or an infinity in: what follows from it is not the formula's
                # doing
                taint()
            changed = hooked != x.detach()  # like x: True where a hook changed the value
            if changed.any():
                # the hook's values are constants: no gradient reaches x there
                x = torch.where(changed, hooked, x)
        # ids have no gradient
        if self.bwd_hooks and torch.is_grad_enabled() and x.is_floating_point():
            if not x.requires_grad:
                # a constant (the sinusoidal table): a leaf, so it has a gradient
                x = x.detach().requires_grad_()
            else:
                # a node of its own: its gradient is what flows through this point alone, as the
                # reference's (x may go elsewhere too: a residual stream, or q, k and v's inputs)
                x = x.view_as(x)
            x.register_hook(
                functools.partial(self.backward, forward_call=tuple(calls()[:1] + calls()[-1:]))
            )
        return x

    def backward(self, dx, forward_call=()):
        # hooks get a copy, as in the reference, and what they return is copied too
        hooked = torch.as_tensor(
            self._run(self.bwd_hooks, dx.clone()), dtype=dx.dtype, device=dx.device
        ).clone()
        if nonfinite(hooked) and not nonfinite(dx):
            for call in forward_call:
                # the hook put a NaN or an infinity in: what follows is not the formula's doing
                call.tainted = True
        return hooked

    def _guard_gradient(self, forward_call, dx):
        """The gradient autograd brings to this hook point, guarded as the reference's
        ``HookPoint.backward`` guards it."""
        guard(
            dx, lambda: f"the gradient at {hook_label(self, forward_call[-1].module)}", forward_call
        )


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
