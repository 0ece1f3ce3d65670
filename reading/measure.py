"""The run behind the reading page's numbers: both twins, float64 and float32, every line watched.

``measure(sections, words, sentences)`` (``run_twins``, then ``compare``) builds two small models on
the demo's vocabulary and sentences, gives the NumPy one random weights and copies them into its
torch twin, and runs both twins forward and backward with a line tracer (``sys.settrace``) on every
component function the page shows. After each line of a traced function has run, the tracer
evaluates what that line assigns (``scale``, ``q, k, v``, ``self.W_O.grad``) in the function's own
frame and keeps a copy. So a number beside a line is that line's value, computed by that line, in
the run, not a recomputation:

- a forward row: the largest |NumPy - torch| of the value it assigns, over every call of the
  line in the run (LayerNorm's lines run once per LayerNorm of the model), in float64 and in
  float32, and that gap relative to the largest |torch| (``foundation.contract.agreement.rel_err``);
- a shape comment: checked against the shapes the line's value had, in both twins;
- a backward line that adds into a parameter's gradient (``self.w.grad += ...``): the NumPy
  gradient against torch autograd's, parameter by parameter, after the whole backward;
- a backward line that passes a gradient through a hook point (``self.hook_scale.backward``):
  the gradient there against the one autograd brings to the same hook point (both recorded by a
  backward hook, TransformerLens's ``<name>_grad``);
- a backward's ``return``: the gradient it returns against autograd's vector-Jacobian product
  through the same component call (``torch.autograd.grad`` of the component's output, with the
  gradient that output received, with respect to the input it was given).

The two models cover both branches of every choice a component makes: the demo's own encoder
(post-norm, sinusoidal positions, ReLU, bidirectional attention, no unembedding; a random
upstream gradient) and a GPT-2-style decoder (pre-norm, learned positions, GELU, causal, logits
and the next-token loss, whose gradient starts the backward). Their sizes differ from the
demo's so that no two axes share a length: a shape comment that swaps two axes cannot pass.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib
import math
import operator
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import numpy_impl
import torch_impl
from foundation.contract.agreement import is_exact_zero
from gradcheck.factory import randomize_parameters

from .source import (
    HOOK_BACKWARD,
    PARAMETER_GRAD,
    SHAPE_COMMENT,
    Part,
    Section,
    Unit,
    hook_path,
    strip_comment,
)

DTYPES = ("float64", "float32")
TWIN_PACKAGES = {"numpy": numpy_impl, "torch": torch_impl}
# every length different from every other (batch 2 and pos 5 come from the sentences)
SIZES = dict(d_model=24, n_heads=3, d_mlp=96, n_layers=2, n_ctx=12)
MODELS = {
    "encoder": dict(
        normalization="post", positional="sinusoidal", act_fn="relu", causal=False, unembed=False
    ),
    "decoder": dict(
        normalization="pre", positional="learned", act_fn="gelu_new", causal=True, unembed=True
    ),
    # Llama's: RMSNorm, rotary halves on the whole head, SwiGLU, 9 query heads sharing 3
    "llama": dict(
        normalization_type="RMS",
        eps=1e-6,
        positional_embedding_type="rotary",
        act_fn="silu",
        gated_mlp=True,
        mlp_bias=False,
        attn_bias=False,
        n_heads=9,
        d_head=8,
        n_key_value_heads=3,
        unembed=True,
    ),
    # GPT-J's: attention and the MLP side by side, rotary on neighbouring pairs of 14 of 16 entries
    "gptj": dict(
        positional_embedding_type="rotary",
        rotary_adjacent_pairs=True,
        rotary_dim=14,
        parallel_attn_mlp=True,
        n_heads=4,
        d_head=16,
        act_fn="gelu_new",
        unembed=True,
    ),
}


# ---- what the page shows ------------------------------------------------------------------------


@dataclass
class Gap:
    """How far NumPy is from torch for one value, worst over every time it was measured."""

    absolute: dict = field(default_factory=dict)  # dtype -> largest |numpy - torch|
    relative: dict = field(default_factory=dict)  # dtype -> that over the largest |torch| (rel_err)
    scale: dict = field(default_factory=dict)  # dtype -> largest |torch|
    # module names (or full hook / parameter names) measured
    where: list = field(default_factory=list)
    count: int = 0  # values compared

    def add(self, dtype: str, absolute: float, relative: float, scale: float, where: str):
        self.absolute[dtype] = max(self.absolute.get(dtype, 0.0), absolute)
        self.relative[dtype] = max(self.relative.get(dtype, 0.0), relative)
        self.scale[dtype] = max(self.scale.get(dtype, 0.0), scale)
        if where not in self.where:
            self.where.append(where)
        self.count += 1


@dataclass
class GradientGap:
    """A backward line's gradient against autograd's: what it is (label), where, and how far."""

    label: str  # "parameter", "hook" or "returned"
    key: str  # the parameter (``w``), the hook point (``hook_scale``) or "return"
    names: list  # e.g. ["blocks.0.ln1.hook_scale_grad", ...] or ["blocks.0.ln1.w", ...]
    gap: Gap


@dataclass
class Measurements:
    """Everything the page shows beside the lines, keyed so the renderer finds it from a unit."""

    forward: dict = field(default_factory=dict)  # (stem, part, numpy code, torch code) -> Gap
    shapes: dict = field(default_factory=dict)  # (twin, stem, part, kind, code) -> {shape tuple}
    # (twin, stem, part, kind, code) of every unit the run reached
    ran: set = field(default_factory=set)
    gradients: dict = field(default_factory=dict)  # (stem, part, backward code) -> [GradientGap]
    problems: list = field(default_factory=list)  # shape comments that disagree with the run
    checked_shapes: int = 0  # shape comments checked against the run (units, both twins)
    sentences: tuple = ()
    models: dict = field(default_factory=dict)  # name -> the TransformerConfig of the float64 run
    tokens: tuple = ()  # the token ids, row by row


# ---- shape comments -----------------------------------------------------------------------------


def shape_comment(unit: Unit) -> str | None:
    """The ``[axis, ...]`` of a unit's last shape comment (``# [batch, pos, d_model]``), or None."""
    found = None
    for line in unit.lines:
        comment = line[len(strip_comment(line)) :].strip()
        match = SHAPE_COMMENT.match(comment)
        if match:
            found = match.group(1)
    return found


def axis_sizes(cfg, batch: int, pos: int) -> dict:
    """Each axis name of the shape comments -> its length in a run of ``cfg`` on [batch, pos]
    tokens."""
    return {
        "batch": batch,
        "pos": pos,
        "q_pos": pos,
        "k_pos": pos,
        "head": cfg.n_heads,
        "kv_head": cfg.n_key_value_heads or cfg.n_heads,
        "half": (cfg.rotary_dim or 0) // 2,
        "rotary_dim": cfg.rotary_dim or 0,
        "d_head": cfg.d_head,
        "d_model": cfg.d_model,
        "d_mlp": cfg.d_mlp,
        "d_vocab": cfg.d_vocab,
        "n_ctx": cfg.n_ctx,
    }


def axis_length(word: str, sizes: dict) -> int | None:
    """The length an axis of a shape comment names: ``d_model``, ``1``, or arithmetic such as
    ``ceil(d_model / 2)``."""
    try:
        tree = ast.parse(word, mode="eval").body
    except SyntaxError:
        return None
    operators = {
        ast.Add: operator.add,
        ast.Sub: operator.sub,
        ast.Mult: operator.mul,
        ast.Div: operator.truediv,
        ast.FloorDiv: operator.floordiv,
    }
    functions = {"ceil": math.ceil, "floor": math.floor}

    def value(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name) and node.id in sizes:
            return sizes[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in operators:
            return operators[type(node.op)](value(node.left), value(node.right))
        if (
            isinstance(node, ast.Call)
            and getattr(node.func, "id", None) in functions
            and len(node.args) == 1
        ):
            return functions[node.func.id](value(node.args[0]))
        raise ValueError(word)

    try:
        length = value(tree)
    except (ValueError, ZeroDivisionError):
        return None
    return int(length) if float(length).is_integer() else None


@functools.cache
def axis_options(comment: str, sizes: tuple) -> tuple | str:
    """The lengths each axis of ``comment`` allows (None: ``...``), or why the comment cannot be
    read."""
    named = dict(sizes)
    inner = comment.strip()[1:-1].strip()
    lengths = []
    for axis in [axis.strip() for axis in inner.split(",")] if inner else []:
        if axis == "...":
            lengths.append(None)
            continue
        options = set()
        for word in axis.split(" or "):
            length = axis_length(word.strip(), named)
            if length is None:
                return (
                    f"axis {word.strip()!r} is not one of {', '.join(named)}, nor arithmetic "
                    f"on them"
                )
            options.add(length)
        lengths.append(frozenset(options))
    return tuple(lengths)


def shape_disagreement(comment: str, shape: tuple, sizes: dict) -> str | None:
    """Why ``shape`` does not fit ``comment`` (e.g. ``[batch, pos, d_model]``), or None when it
    fits.

    An axis is a name from ``sizes``, a number, arithmetic on them (``ceil(d_model / 2)``),
    ``A or B`` (either), or ``...`` (any leading axes).
    """
    lengths = axis_options(comment, tuple(sorted(sizes.items())))
    if isinstance(lengths, str):
        return lengths
    if None in lengths:
        k = lengths.index(None)
        head, tail = lengths[:k], lengths[k + 1 :]
        if len(shape) < len(head) + len(tail):
            return f"the run made {shape}, fewer axes than {comment}"
        pairs = list(zip(head, shape[: len(head)])) + list(
            zip(tail, shape[len(shape) - len(tail) :])
        )
    else:
        if len(shape) != len(lengths):
            return (
                f"the run made {shape} ({len(shape)} axes), the comment says {comment} "
                f"({len(lengths)})"
            )
        pairs = list(zip(lengths, shape))
    for options, length in pairs:
        if length not in options:
            wanted = " / ".join(map(str, sorted(options)))
            return f"the run made {shape}, the comment says {comment} ({wanted} != {length})"
    return None


# ---- the tracer ---------------------------------------------------------------------------------


@dataclass
class Call:
    """One call of a traced function: which module, and every value each of its units assigned."""

    module: str
    # unit index -> [tuple of copies, per run]
    values: dict = field(default_factory=lambda: defaultdict(list))
    ran: set = field(default_factory=set)  # indexes of the units that ran
    given: object = None  # torch forward: the input tensor (for the vector-Jacobian product)
    returned: object = None


@dataclass
class Traced:
    twin: str
    stem: str
    part: str
    kind: str  # "forward" or "backward"
    unit_at: dict  # file line -> unit index
    targets: dict  # unit index -> [compiled target expressions]


def copy_value(value):
    """A copy of a float array or tensor, detached from the run; None for anything else (ints,
    tuples, None)."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, (np.ndarray, np.generic)) and np.asarray(value).dtype.kind == "f":
        return np.array(value, copy=True)
    return None


class LineTracer:
    """``sys.settrace`` on the traced functions only: after each unit runs, copy what it
    assigned."""

    def __init__(self, functions: dict, names: dict | None = None):
        self.functions = functions  # code object -> Traced
        self.names = names or {}  # id(module) -> its name in the run
        self.calls = defaultdict(list)  # (twin, stem, part, kind) -> [Call]

    def __enter__(self):
        self.previous = sys.gettrace()
        sys.settrace(self.trace)
        return self

    def __exit__(self, *exc):
        sys.settrace(self.previous)

    def trace(self, frame, event, arg):
        traced = self.functions.get(code_key(frame.f_code))
        if traced is None or event != "call":
            return None
        owner = frame.f_locals.get("self")
        call = Call(self.names.get(id(owner), type(owner).__name__ if owner is not None else ""))
        arguments = frame.f_code.co_varnames[: frame.f_code.co_argcount]
        if traced.twin == "torch" and len(arguments) > 1:
            given = frame.f_locals.get(arguments[1])
            if isinstance(given, torch.Tensor) and given.requires_grad:
                call.given = given
        self.calls[(traced.twin, traced.stem, traced.part, traced.kind)].append(call)
        current = [None]

        def snapshot(k):
            copies = []
            for code in traced.targets.get(k, []):
                try:
                    copies.append(copy_value(eval(code, frame.f_globals, frame.f_locals)))
                except NameError:  # a name this call's branch did not bind: nothing to copy
                    copies.append(None)
            if any(copy is not None for copy in copies):
                call.values[k].append(tuple(copies))

        def local(frame, event, arg):
            if event == "line":
                k = traced.unit_at.get(frame.f_lineno)
                if k != current[0]:
                    if k is not None:
                        call.ran.add(k)
                    if current[0] is not None:
                        snapshot(current[0])
                    current[0] = k
            elif event == "return":
                if current[0] is not None:
                    snapshot(current[0])
                if isinstance(arg, torch.Tensor) and arg.requires_grad:
                    arg.retain_grad()
                    call.returned = arg
                elif isinstance(arg, np.ndarray):
                    call.returned = np.array(arg, copy=True)
            return local

        return local


def unwrapped(function):
    while hasattr(function, "__wrapped__"):
        function = function.__wrapped__
    return function


def traced_parts(part: Part):
    """(twin, "forward" or "backward", parsed function) of every function of ``part`` the run
    watches."""
    if part.kind == "init":  # what a class builds is random weights: nothing to compare
        return ()
    return (
        ("numpy", "forward", part.numpy_forward),
        ("torch", "forward", part.torch_forward),
        ("numpy", "backward", part.numpy_backward),
    )


def code_key(code) -> tuple:
    """A function's code by where it is written (code objects of two files can compare equal)."""
    return code.co_filename, code.co_firstlineno, code.co_name


def traced_functions(sections: list[Section]) -> dict:
    """{code_key: Traced} for every forward (both twins) and every NumPy backward on the page."""
    functions = {}
    for section in sections:
        for part in section.parts:
            for twin, kind, parsed in traced_parts(part):
                if parsed is None:
                    continue
                module = importlib.import_module(f"{TWIN_PACKAGES[twin].__name__}.{section.stem}")
                owner = getattr(module, part.name)
                code = unwrapped(getattr(owner, kind) if part.kind == "class" else owner).__code__
                if (Path(code.co_filename).resolve(), code.co_firstlineno) != (
                    parsed.path.resolve(),
                    parsed.code_line,
                ):
                    raise RuntimeError(
                        f"{module.__name__}.{part.name}.{kind} was imported from "
                        f"{code.co_filename}:"
                        f"{code.co_firstlineno}, but the page reads "
                        f"{parsed.path}:{parsed.first_line}"
                    )
                unit_at, targets = {}, {}
                for k, unit in enumerate(parsed.units):
                    for line in range(unit.first_line, unit.first_line + len(unit.lines)):
                        unit_at[line] = k
                    if unit.targets:
                        targets[k] = [
                            compile(target, f"<{part.name} target>", "eval")
                            for target in unit.targets
                        ]
                functions[code_key(code)] = Traced(
                    twin, section.stem, part.name, kind, unit_at, targets
                )
    return functions


# ---- one run of both twins ----------------------------------------------------------------------


@dataclass
class Run:
    """One model in one dtype, run by both twins."""

    model: str
    dtype: str
    cfg: object
    calls: dict  # as LineTracer.calls
    numpy_params: dict
    torch_params: dict
    numpy_hook_grads: dict
    torch_hook_grads: dict
    vjps: dict  # (stem, part, module name) -> autograd's gradient of the input of that call
    batch: int
    pos: int
    sentences: tuple = ()
    tokens: tuple = ()


def random_weights(cfg, seed: int) -> dict:
    """A float64 state dict of random weights (never ones, never zeros); a float32 run gets them
    rounded."""
    wide = numpy_impl.Transformer(dataclasses.replace(cfg, dtype="float64"), seed=seed)
    return randomize_parameters(wide, seed=seed).state_dict()


def module_names(reference, twin, losses) -> dict:
    names = {}
    for model in (reference, twin):
        for name, module in model.named_modules():
            names[id(module)] = name
    for loss in losses:
        names[id(loss)] = "loss"
    return names


def run_once(
    functions: dict, model: str, dtype: str, tokens: np.ndarray, d_vocab: int, seed: int
) -> Run:
    cfg = numpy_impl.TransformerConfig(d_vocab=d_vocab, dtype=dtype, **{**SIZES, **MODELS[model]})
    state = random_weights(cfg, seed)
    losses = [numpy_impl.CrossEntropyLoss(), torch_impl.CrossEntropyLoss()]
    # the unweighted branch
    plain_losses = [numpy_impl.CrossEntropyLoss(), torch_impl.CrossEntropyLoss()]
    grads = {"numpy": {}, "torch": {}}

    def keeper(twin_name):
        def keep(gradient, hook):
            value = gradient.detach().numpy() if hasattr(gradient, "detach") else gradient
            grads[twin_name][hook.name] = np.array(value, copy=True)

        return keep

    every = lambda name: True  # noqa: E731
    batch, pos = tokens.shape
    # the next-token loss: position p predicts token p + 1; the last position predicts nothing
    targets = np.concatenate([tokens[:, 1:], np.zeros((batch, 1), dtype=tokens.dtype)], axis=1)
    weights = np.ones((batch, pos), dtype=dtype)
    weights[:, -1] = 0.0
    upstream = (
        np.random.default_rng(seed + 1).standard_normal((batch, pos, cfg.d_model)).astype(dtype)
    )
    with LineTracer(functions) as tracer:
        # built here, so the sinusoidal table's lines are watched
        reference = numpy_impl.Transformer(cfg, seed=seed)
        reference.load_state_dict(state)
        twin = torch_impl.Transformer.from_twin(reference)
        tracer.names = module_names(reference, twin, losses + plain_losses)
        with reference.hooks(bwd_hooks=[(every, keeper("numpy"))]):
            out = reference(tokens)
            if cfg.unembed:
                losses[0](out, targets, weights)
                reference.backward(losses[0].backward())
                plain_losses[0](out, targets)  # forward only: the lines of the unweighted mean
            else:
                reference.backward(upstream)
        with twin.hooks(bwd_hooks=[(every, keeper("torch"))]):
            out_t = twin(torch.from_numpy(tokens))
            if cfg.unembed:
                losses[1](out_t, torch.from_numpy(targets), torch.from_numpy(weights)).backward(
                    retain_graph=True
                )
                plain_losses[1](out_t, torch.from_numpy(targets))
            else:  # the gradient of sum(out * upstream) is upstream: autograd starts from a scalar
                (out_t * torch.from_numpy(upstream)).sum().backward(retain_graph=True)
    # an alias (hook_q) holds its point's gradient (q.hook_out)
    for name, point in reference.hook_dict.items():
        for found in grads.values():
            if point.name in found:
                found.setdefault(name, found[point.name])
    # the gradient each component's output received, copied before any autograd.grad below adds to
    # it
    outputs = [
        (stem, part, call, call.returned.grad.clone())
        for (twin_name, stem, part, kind), calls in tracer.calls.items()
        if (twin_name, kind) == ("torch", "forward")
        for call in calls
        if call.given is not None
        and isinstance(call.returned, torch.Tensor)
        and call.returned.grad is not None
    ]
    vjps = {}
    for stem, part, call, received in outputs:
        # the vector-Jacobian product with ``received``, as the gradient of the scalar sum(output *
        # received) (the same numbers as grad_outputs=received; a scalar spares torch a second of
        # imports on its first call)
        (gradient,) = torch.autograd.grad(
            (call.returned * received).sum(), call.given, retain_graph=True, allow_unused=True
        )
        if gradient is not None:
            vjps[(stem, part, call.module)] = gradient.detach().numpy()
    numpy_params = {name: p.grad.copy() for name, p in reference.named_parameters()}
    torch_params = {name: p.grad.detach().numpy().copy() for name, p in twin.named_parameters()}
    return Run(
        model,
        dtype,
        cfg,
        dict(tracer.calls),
        numpy_params,
        torch_params,
        grads["numpy"],
        grads["torch"],
        vjps,
        batch,
        pos,
    )


# ---- comparing the twins ------------------------------------------------------------------------


def gap_of(a, b) -> tuple[float, float, float]:
    """(largest |a - b|, that over the largest |b|, largest |b|), over finite entries; non-finite
    ones must match."""
    a = np.asarray(a.numpy() if isinstance(a, torch.Tensor) else a, dtype=np.float64)
    b = np.asarray(b.numpy() if isinstance(b, torch.Tensor) else b, dtype=np.float64)
    if a.shape != b.shape:
        return np.inf, np.inf, 0.0
    finite = np.isfinite(b)
    if not np.array_equal(np.isfinite(a), finite) or not np.array_equal(a[~finite], b[~finite]):
        return np.inf, np.inf, 0.0  # a masked -inf on one side only
    if not finite.any():
        return 0.0, 0.0, 0.0
    gap = float(np.abs(a[finite] - b[finite]).max())
    scale = float(np.abs(b[finite]).max())
    return gap, gap / max(scale, 1e-300), scale


def compare_forward(part: Part, section: Section, runs: list[Run], found: Measurements):
    for row in part.rows:
        if row.numpy is None or row.torch is None:
            continue
        i = part.numpy_forward.units.index(row.numpy)
        j = part.torch_forward.units.index(row.torch)
        gap = Gap()
        for run in runs:
            np_calls = run.calls.get(("numpy", section.stem, part.name, "forward"), [])
            torch_calls = run.calls.get(("torch", section.stem, part.name, "forward"), [])
            for np_call, torch_call in zip(np_calls, torch_calls):
                for np_values, torch_values in zip(
                    np_call.values.get(i, []), torch_call.values.get(j, [])
                ):
                    for a, b in zip(np_values, torch_values):
                        if a is not None and b is not None:
                            gap.add(run.dtype, *gap_of(a, b), np_call.module or part.name)
        if gap.count:
            found.forward[(section.stem, part.name, row.numpy.code, row.torch.code)] = gap


def check_shapes(part: Part, section: Section, runs: list[Run], found: Measurements):
    for twin, kind, parsed in traced_parts(part):
        if parsed is None:
            continue
        for k, unit in enumerate(parsed.units):
            if not unit.targets:
                continue
            comment = shape_comment(unit)
            shapes = set()
            problems = set()
            for run in runs:
                sizes = axis_sizes(run.cfg, run.batch, run.pos)
                # rotate turns q and k alike, and attention's k and v lines serve both classes: in a
                # grouped model their head axis is either count
                shared = part.kind == "function" or section.stem == "attention"
                also = {**sizes, "head": sizes["kv_head"]} if shared else sizes
                for call in run.calls.get((twin, section.stem, part.name, kind), []):
                    if k in call.ran:
                        found.ran.add((twin, section.stem, part.name, kind, unit.code))
                    for values in call.values.get(k, []):
                        for value in values:
                            if value is None:
                                continue
                            shape = tuple(value.shape)
                            shapes.add(shape)
                            why = shape_disagreement(comment, shape, sizes) if comment else None
                            if why and not shape_disagreement(comment, shape, also):
                                why = None
                            if why:
                                problems.add(
                                    f"{twin}_impl/{section.stem}.py:{unit.first_line} ({run.model} "
                                    f"model): "
                                    f"{unit.code.strip()[:60]}: {why}"
                                )
            if shapes:
                found.shapes[(twin, section.stem, part.name, kind, unit.code)] = shapes
                if comment:
                    found.checked_shapes += 1
            found.problems.extend(sorted(problems))


def modules_of(run_calls, stem, part):
    """Module names of every call of ``part`` in a run (the instances of that class)."""
    return [call.module for call in run_calls.get(("numpy", stem, part, "forward"), [])]


def layer_free(name: str) -> str:
    return re.sub(r"\.\d+\.", ".{i}.", name)


def compare_gradients(part: Part, section: Section, runs: list[Run], found: Measurements):
    if part.numpy_backward is None:
        return
    for unit in part.numpy_backward.units:
        if unit.kind == "comment":
            continue
        found_here = []
        for parameter in dict.fromkeys(PARAMETER_GRAD.findall(unit.text)):
            gap, names = Gap(), []
            for run in runs:
                largest = max(float(np.abs(value).max()) for value in run.torch_params.values())
                for module in modules_of(run.calls, section.stem, part.name):
                    name = f"{module}.{parameter}" if module else parameter
                    if name not in run.numpy_params:  # GroupedQueryAttention's W_K is _W_K's
                        name = f"{module}._{parameter}" if module else f"_{parameter}"
                    if name in run.numpy_params:
                        absolute, relative, scale = gap_of(
                            run.numpy_params[name], run.torch_params[name]
                        )
                        # its exact gradient is zero: measured against the model's largest
                        if is_exact_zero(name):
                            relative = absolute / largest
                        gap.add(run.dtype, absolute, relative, scale, name)
                        names.append(layer_free(name))
            if gap.count:
                found_here.append(
                    GradientGap("parameter", parameter, list(dict.fromkeys(names)), gap)
                )
        for hook in dict.fromkeys(HOOK_BACKWARD.findall(unit.text)):
            gap, names = Gap(), []
            for run in runs:
                for module in modules_of(run.calls, section.stem, part.name):
                    name = f"{module}.{hook_path(hook)}" if module else hook_path(hook)
                    if name in run.numpy_hook_grads and name in run.torch_hook_grads:
                        gaps = gap_of(run.numpy_hook_grads[name], run.torch_hook_grads[name])
                        gap.add(run.dtype, *gaps, name + "_grad")
                        names.append(layer_free(name) + "_grad")
            if gap.count:
                found_here.append(GradientGap("hook", hook, list(dict.fromkeys(names)), gap))
        if unit.key == "return":
            gap = Gap()
            for run in runs:
                for call in run.calls.get(("numpy", section.stem, part.name, "backward"), []):
                    vjp = run.vjps.get((section.stem, part.name, call.module))
                    if isinstance(call.returned, np.ndarray) and vjp is not None:
                        gap.add(run.dtype, *gap_of(call.returned, vjp), call.module or part.name)
            if gap.count:
                found_here.append(GradientGap("returned", "return", [], gap))
        if found_here:
            found.gradients[(section.stem, part.name, unit.code)] = found_here


def run_twins(sections: list[Section], words, sentences, seed: int = 0) -> list[Run]:
    """Run both twins on ``sentences`` (words from ``words``): both models, both dtypes, every
    traced line copied."""
    ids = {word: i for i, word in enumerate(words)}
    rows = [[ids[word] for word in sentence.split()] for sentence in sentences]
    tokens = np.array(rows, dtype=np.int64)  # [batch, pos]
    functions = traced_functions(sections)
    threads = torch.get_num_threads()
    # tensors this small only lose time to a thread pool (many times over on a busy machine)
    torch.set_num_threads(1)
    try:
        runs = [
            run_once(functions, model, dtype, tokens, len(words), seed)
            for model in MODELS
            for dtype in DTYPES
        ]
    finally:
        torch.set_num_threads(threads)
    for run in runs:
        run.sentences, run.tokens = tuple(sentences), tuple(map(tuple, tokens.tolist()))
    return runs


def compare(sections: list[Section], runs: list[Run]) -> Measurements:
    """What the page shows beside each line of ``sections``, from ``runs`` (``run_twins`` of the
    same files)."""
    found = Measurements(
        sentences=runs[0].sentences,
        tokens=runs[0].tokens,
        models={run.model: run.cfg for run in runs if run.dtype == "float64"},
    )
    for section in sections:
        for part in section.parts:
            compare_forward(part, section, runs, found)
            check_shapes(part, section, runs, found)
            compare_gradients(part, section, runs, found)
    return found


def measure(sections: list[Section], words, sentences, seed: int = 0) -> Measurements:
    """``compare(sections, run_twins(sections, words, sentences, seed))``."""
    return compare(sections, run_twins(sections, words, sentences, seed))
