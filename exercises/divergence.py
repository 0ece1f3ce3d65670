"""Where do two models part? Walk the hook points and name the first one that differs.

    parting = first_divergence(model, reference, tokens)   # any two models with hook points
    print(parting.line())
    # first wrong at blocks.1.ln2 (hook_scale), relative error 0.4; everything above it is right ...

The models may be the NumPy reference, a learner's copy of it, or the torch twin, in any pair,
with the same config and weights. The forward walk compares each hook point's activation in
forward order; if every activation agrees, the backward walk sends one random upstream
gradient into both and compares the gradient at each hook point in backward order (the last
hook of the forward is the first the gradient reaches), then the parameter gradients. The
first hook point that differs is where the two part: the code between it and the last hook
point that agrees holds the difference.

Agreement: ``foundation.contract.agreement.rel_err``, max |a - b| / max |b| per tensor, with max |b|
floored at a thousandth of the largest tensor of the walk (b_K's exact gradient is zero, so both
sides hold only rounding: about 1e-7 of the largest gradient in float32), and ``TOLERANCE`` by
dtype: two correct twins agree to about 1e-12 in float64 and 1e-6 in float32.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from foundation.contract.agreement import rel_err
from foundation.lens.hooks import as_numpy

TOLERANCE = {"float64": 1e-8, "float32": 1e-4}
FLOOR = 1e-3  # max |b| is floored at FLOOR * the largest tensor of the walk


@dataclass(frozen=True)
class Gap:
    """One compared tensor: a hook point's activation or gradient, a parameter's gradient, or the
    output."""

    name: str
    # relative error; None: one model has no value here (a hook its backward never called)
    error: float | None


@dataclass
class Parting:
    """The walk in one direction: every tensor compared, in walk order, and where it stopped."""

    direction: str  # "forward" or "backward"
    gaps: list  # Gap per hook point, in walk order
    tolerance: float
    # backward: Gap per parameter gradient, in backward order
    parameters: list = field(default_factory=list)
    stopped: str = ""  # why the walk ended early (the model's backward raised)

    @property
    def first(self):
        """The first hook point that differs, or None."""
        return next((gap for gap in self.gaps if not self._agrees(gap)), None)

    @property
    def first_parameter(self):
        return next((gap for gap in self.parameters if not self._agrees(gap)), None)

    @property
    def agree(self):
        return self.first is None and self.first_parameter is None and not self.stopped

    def _agrees(self, gap):
        return gap.error is not None and gap.error <= self.tolerance

    def short(self):
        """e.g. "right at hook_z, hook_pattern; first wrong at hook_attn_scores (relative error
        0.81)"."""
        first = self.first
        if first is None:
            return ""
        index = self.gaps.index(first)
        right = [gap.name for gap in self.gaps[:index]]
        if len(right) > 3:
            before = (
                f"right at the first {len(right)} hook points the gradient reaches, down to "
                f"{right[-1]}; "
            )
        else:
            before = (
                f"right at {', '.join(right)}; "
                if right
                else "wrong from the first hook point the gradient reaches: "
            )
        size = "it got no gradient" if first.error is None else f"relative error {first.error:.2g}"
        return f"{before}first wrong at {first.name} ({size})"

    def line(self):
        """One sentence: where the two part, by how much, and what agrees."""
        first = self.first
        verb = "wrong" if self.direction == "backward" else "different"
        if first is not None:
            at = _where(first.name)
            size = (
                "it got no gradient (its backward was never called)"
                if first.error is None
                else f"relative error {first.error:.2g}"
            )
            index = self.gaps.index(first)
            if self.direction == "forward":
                before = (
                    "everything before it agrees"
                    if index
                    else "it is the first hook point of the forward"
                )
                return f"the forwards part first: first {verb} at {at}, {size}; {before}"
            if index == 0:
                return (
                    f"first {verb} at {at}, {size}; it is the first hook point the gradient "
                    f"reaches, "
                    "so the difference lies between the output and there"
                )
            last = self.gaps[index - 1].name
            return (
                f"first {verb} at {at}, {size}; everything above it is right "
                f"(the last right: {last}), so the difference lies in the backward between those "
                f"two hook points"
            )
        if self.stopped:
            reached = (
                f"the {len(self.gaps)} hook points it reached are right"
                if self.gaps
                else "it reached no hook point"
            )
            return f"the backward stopped: {self.stopped}; {reached}"
        wrong = self.first_parameter
        if wrong is not None:
            return (
                f"every hook point's "
                f"{'gradient' if self.direction == 'backward' else 'activation'} is right; "
                f"first wrong parameter gradient: {wrong.name}, relative error {wrong.error:.2g}"
            )
        worst = max((gap.error for gap in self.gaps + self.parameters), default=0.0)
        things = "gradient and parameter gradient" if self.direction == "backward" else "activation"
        return (
            f"they agree: every hook point's {things} within {self.tolerance:g} (worst "
            f"relative error {worst:.0e})"
        )


def locate(mine, right, tolerance=TOLERANCE["float64"]):
    """The backward walk from gradients already recorded at each hook point ({name: gradient}).

    ``right``'s order is the order the gradient reached the hook points (backward order); a hook
    point missing from ``mine`` got no gradient (its backward was never called, or the learner's
    backward raised before it).
    """
    return Parting("backward", _gaps(list(right), mine, right), tolerance)


def first_divergence(model, reference, tokens, dout=None, seed=0, tolerance=None):
    """Walk ``model`` against ``reference`` (same config and weights): forward first, then backward.

    Returns the forward ``Parting`` if any activation differs, else the backward one.
    dout: the upstream gradient (default: standard normal, from ``seed``, shaped like the output;
    never all ones). Parameter gradients are zeroed first and hold this backward's afterwards.
    """
    forward = walk_forward(model, reference, tokens, tolerance)
    if not forward.agree:
        return forward
    return walk_backward(model, reference, tokens, dout, seed, tolerance)


def walk_forward(model, reference, tokens, tolerance=None):
    """Compare every hook point's activation, in forward order, and the output last."""
    (out, mine), (reference_out, theirs) = _run(model, tokens), _run(reference, tokens)
    names = [name for name in _hook_names(reference)]
    gaps = _gaps(names, mine, theirs)
    gaps.append(_gaps(["output"], {"output": out}, {"output": reference_out})[0])
    return Parting("forward", gaps, _tolerance(reference, tolerance))


def walk_backward(model, reference, tokens, dout=None, seed=0, tolerance=None):
    """Compare every hook point's gradient, in backward order, then every parameter's gradient."""
    reference.zero_grad()
    reference_out, theirs = _run(reference, tokens, dout=None)
    if dout is None:
        out = _as_numpy(reference_out)
        # the model's dtype
        dout = np.random.default_rng(seed).standard_normal(out.shape).astype(out.dtype)
    reference.zero_grad()
    _, theirs = _run(reference, tokens, dout)
    model.zero_grad()
    stopped = ""
    try:
        _, mine = _run(model, tokens, dout)
    # a learner's backward may raise: the walk still reports what it reached
    except Exception as error:
        mine, stopped = error.recorded, f"{type(error).__name__}: {error}"
    names = list(reversed(_hook_names(reference)))
    if stopped:
        names = [name for name in names if name in mine]
    gaps = _gaps(names, mine, theirs)
    mine_params = {name: p.grad for name, p in model.named_parameters()}
    theirs_params = {name: p.grad for name, p in reference.named_parameters()}
    parameters = (
        [] if stopped else _gaps(list(reversed(list(theirs_params))), mine_params, theirs_params)
    )
    return Parting("backward", gaps, _tolerance(reference, tolerance), parameters, stopped)


def _run(model, tokens, dout=None):
    """(output, {hook name: activation, or gradient when dout is given}); a raising backward keeps
    what it recorded."""
    recorded = {}

    def save(x, hook):
        recorded[hook.name] = np.array(_as_numpy(x), dtype=np.float64)

    everywhere = [(lambda name: True, save)]
    try:
        if dout is None:
            out = model.run_with_hooks(tokens, fwd_hooks=everywhere)
        else:
            out = model.run_with_hooks(tokens, bwd_hooks=everywhere, dout=dout)
    except Exception as error:
        error.recorded = recorded
        raise
    return out, recorded


def _hook_names(model):
    return list(model.hook_dict)


def _gaps(names, mine, theirs):
    present = [
        np.asarray(_as_numpy(theirs[name]), dtype=np.float64) for name in names if name in theirs
    ]
    largest = max((_finite_max(x) for x in present), default=0.0)
    gaps = []
    for name in names:
        if name not in theirs:
            continue
        b = np.asarray(_as_numpy(theirs[name]), dtype=np.float64)
        a = mine.get(name)
        if a is None:
            gaps.append(Gap(name, None))
            continue
        a = np.asarray(_as_numpy(a), dtype=np.float64)
        if a.shape != b.shape:
            gaps.append(Gap(name, float("inf")))
            continue
        same = a == b  # masked attention scores are -inf on both sides: equal, so no difference
        a, b = np.where(same, 0.0, a), np.where(same, 0.0, b)
        scale = max(_finite_max(b), FLOOR * largest)
        error = (
            rel_err(a, b, scale)
            if np.all(np.isfinite(a)) and np.all(np.isfinite(b))
            else float("inf")
        )
        gaps.append(Gap(name, error))
    return gaps


def _finite_max(x):
    """max |x| over the finite entries (0 when there are none)."""
    finite = np.abs(x[np.isfinite(x)])
    return float(finite.max(initial=0.0))


def _tolerance(model, tolerance):
    if tolerance is not None:
        return tolerance
    return TOLERANCE.get(str(model.cfg.dtype), TOLERANCE["float32"])


def _where(name):
    """blocks.1.ln2.hook_scale -> "blocks.1.ln2 (hook_scale)"; hook_embed stays hook_embed."""
    module, _, hook = name.rpartition(".")
    return f"{module} ({hook})" if module and hook.startswith("hook_") else name


def _as_numpy(x):
    return None if x is None else as_numpy(x)
