"""Mark a learner's backward passes: done, not started, or wrong (which tensor, by how much).

Each exercise is checked on its own: the learner's component runs forward and backward with
random weights, a random input and a random upstream gradient R, under every variant the
catalog lists (causal and not, each normalization ...), and every gradient it produces is
compared two ways:
  - with the torch twin's autograd on the same weights (parity), and
  - with central differences of the learner's own forward (``gradcheck.finite_diff``).
Sub-modules inside the block and the model run the reference's backward while those two
are checked, so a mistake is reported where it is, not again in everything built on it.
A last row, "all together", runs the learner's backward everywhere in the whole model.

Both comparisons use the relative error |a - b| / max(|a| + |b|, tiny), entry by entry,
with tiny a small fraction of the component's largest gradient (see gradcheck/finite_diff.py:
b_K's exact gradient is zero, so both sides there are noise).

A wrong answer also gets, where one fits, a hint naming the mistake (``diagnose.py``), and a
wrong model the first hook point where it parts from the twin (``divergence.py``). The
learner's code runs in a worker process (``worker.py``), one time limit per exercise.
"""

from __future__ import annotations

import importlib.util
import inspect
import itertools
import os
import sys
import traceback
import types
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import numpy_impl
from foundation.hooks import as_numpy
from gradcheck.factory import Variant, build, make_inputs
from gradcheck.finite_diff import gradcheck

from . import worker as workers
from .catalog import BY_CLASS, BY_KEY, EXERCISES
from .diagnose import Evidence, diagnose, diagnose_error
from .divergence import first_divergence

PARITY_TOLERANCE = 1e-7  # relative error against the twin (a correct backward: 1e-10 at worst, b_K's noise)
PARITY_FLOOR = 1e-6      # tiny = PARITY_FLOOR * the component's largest twin gradient
FD_TOLERANCE = 1e-7      # relative error against finite differences (gradcheck.finite_diff's default)
TIME_LIMIT = 60.0        # seconds per exercise (every variant); a correct one takes a few
STATUSES = ("done", "not started", "wrong", "timed out", "exited")
_loads = itertools.count()


@dataclass
class TensorError:
    """One gradient of one variant: its errors against the twin and against finite differences."""

    tensor: str
    twin: float                   # max over entries of the relative error against the twin
    overall: float                # |mine - twin| / |twin| for the whole tensor (Euclidean norms)
    numeric: float | None = None  # against finite differences; None when not run (the twin already disagreed)

    @property
    def ok(self):
        return self.twin <= PARITY_TOLERANCE and (self.numeric is None or self.numeric <= FD_TOLERANCE)


@dataclass
class Result:
    """The verdict on one exercise, with the evidence: the first failing variant and its tensors."""

    key: str
    cls: str
    status: str                               # one of STATUSES
    variant: str = ""                         # the variant the verdict comes from (the first that failed)
    message: str = ""                         # what went wrong, in words
    tensors: list = field(default_factory=list)  # TensorError per gradient of that variant
    hint: str = ""                            # the mistake named, when one is recognised (diagnose.py)
    parting: str = ""                         # a model: where it first parts from the twin (divergence.py)

    @property
    def wrong_tensors(self):
        return [t for t in self.tensors if not t.ok]


def find_package(directory) -> Path:
    """The learner's package folder: DIR/numpy_impl, or DIR itself if it holds __init__.py."""
    path = Path(directory)
    for candidate in (path / "numpy_impl", path):
        if (candidate / "__init__.py").is_file():
            return candidate
    raise FileNotFoundError(
        f"no exercise copy in {directory}: expected {path / 'numpy_impl' / '__init__.py'} "
        f"(create one with: python demo.py exercises init {directory})"
    )


def load_package(directory):
    """Import the learner's package under a fresh name of its own, so it never clashes with numpy_impl."""
    package_dir = find_package(directory)
    name = f"_learner_numpy_impl_{next(_loads)}"
    spec = importlib.util.spec_from_file_location(
        name, package_dir / "__init__.py", submodule_search_locations=[str(package_dir)]
    )
    package = importlib.util.module_from_spec(spec)
    sys.modules[name] = package
    writes_bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True  # leave no __pycache__ behind
    try:
        spec.loader.exec_module(package)
    except Exception as error:  # a learner's syntax error is the common case: say where it is
        unload_package(package)
        if isinstance(error, SyntaxError):
            what = f"SyntaxError: {error.msg} at {Path(error.filename).name}:{error.lineno}"
        else:
            what = _describe(error)
        raise ImportError(f"your copy in {package_dir} does not import: {what}") from error
    finally:
        sys.dont_write_bytecode = writes_bytecode
    return package


def unload_package(package):
    for name in [n for n in sys.modules if n == package.__name__ or n.startswith(package.__name__ + ".")]:
        del sys.modules[name]


def check(directory, keys=None, sample=20, seed=0, together=True, progress=None, time_limit=TIME_LIMIT):
    """Check the learner's copy in ``directory``; returns a list of ``Result``, in exercise order.

    keys: exercise keys to check (default: all of them); when they hold "model" and ``together``,
        a last row "all together" runs the learner's backward everywhere in the whole model.
    sample: entries per tensor for finite differences.
    progress: ``progress(items, label)`` yielding the items while it draws a bar (tours/progress.py).
    time_limit: seconds each exercise may take; past it, or when the learner's code ends the
        interpreter, the exercise gets the status "timed out" or "exited" and the check goes on.
    """
    if keys is None:
        keys = [exercise.key for exercise in EXERCISES]
    unknown = [key for key in keys if key not in BY_KEY]
    if unknown:
        raise ValueError(f"unknown exercise {', '.join(unknown)}; choose from: {', '.join(BY_KEY)}")
    if isinstance(sample, bool) or not isinstance(sample, int) or sample < 1:
        raise ValueError(f"sample must be a positive int, got {sample!r}")
    if isinstance(time_limit, bool) or not isinstance(time_limit, (int, float)) or not time_limit > 0:
        raise ValueError(f"time_limit must be a positive number of seconds, got {time_limit!r}")
    find_package(directory)  # a missing copy is the caller's error, before any worker starts
    directory = os.path.abspath(directory)  # the worker keeps the working folder it started in
    try:  # a copy that does not import, or hangs or exits while importing, stops the check here
        _in_worker(_try_load, (directory,), time_limit, "while importing your copy")
    except workers.WorkerLost as lost:
        raise ImportError(f"your copy in {find_package(directory)} does not import: {lost}") from None
    steps = list(keys) + (["all together"] if together and "model" in keys else [])
    results = []
    for key in (progress or _quietly)(steps, "checking"):
        cls = "Transformer" if key == "all together" else BY_KEY[key].cls
        lost = [r for r in results if r.status in ("timed out", "exited")]
        if key == "all together" and lost:
            results.append(Result(key, cls, lost[0].status, message=f"not run: {lost[0].key} {lost[0].status} first"))
            continue
        try:
            result = _in_worker(_run_step, (directory, key, sample, seed), time_limit, f"while checking {key}")
        except workers.WorkerLost as lost_worker:
            result = Result(key, cls, lost_worker.status, message=_lost_message(lost_worker, time_limit))
        if key == "all together":
            _together_message(result, results)
        results.append(result)
    return results


def _in_worker(function, args, time_limit, doing):
    """function(*args) in the worker process; WorkerLost when it hangs or ends the interpreter."""
    try:
        return workers.worker().ask(("call", function, args), time_limit, doing)
    except workers.WorkerLost:
        workers.forget_if_stopped()
        raise
    except KeyboardInterrupt:  # the learner stops the check: stop the worker too
        workers.stop()
        raise


def _lost_message(lost, time_limit):
    if lost.status == "timed out":
        return (f"no answer within {time_limit:g} s: a backward that never returns (an endless loop?); "
                "the checker stopped it (raise the limit with --time-limit if your machine is slow)")
    return f"{lost}: a backward must return its gradient, never end the program"


def _try_load(directory):
    """In the worker: import the learner's copy once, to report an ImportError before any exercise."""
    unload_package(load_package(directory))


def _run_step(directory, key, sample, seed):
    """In the worker: load the learner's copy (fresh for each step: the learner may have edited it) and check ``key``."""
    package = load_package(directory)
    try:
        if key == "all together":
            return check_together(package, sample, seed, [])
        return check_exercise(package, BY_KEY[key], sample, seed)
    finally:
        unload_package(package)


def _quietly(items, label):
    return items


def check_exercise(package, exercise, sample=20, seed=0):
    """One exercise under each of its variants; the first variant that is not done decides."""
    for number, variant in enumerate(exercise.variants):
        result = _check_variant(package, exercise.key, exercise.cls, variant, sample, seed + 10 * number,
                                isolate=True)
        if result.status != "done":
            break
    return result


def check_together(package, sample, seed, results=()):
    """The whole model with the learner's backward in every component, under every model variant."""
    for number, variant in enumerate(BY_KEY["model"].variants):
        result = _check_variant(package, "all together", "Transformer", variant, sample, seed + 100 + number,
                                isolate=False)
        if result.status != "done":
            break
    _together_message(result, results)
    return result


def _together_message(result, results):
    """Say which exercises the whole model waits for, or should be fixed first."""
    unfinished = [r.key for r in results if r.key in BY_KEY and r.status != "done"]
    if result.status == "not started":
        result.message = f"waits for: {', '.join(unfinished)}" if unfinished else result.message
    elif result.status == "wrong" and unfinished and not result.message.startswith("fix "):
        result.message = f"fix {', '.join(unfinished)} first; " + result.message


def _check_variant(package, key, cls, variant: Variant, sample, seed, isolate):
    import torch

    import torch_impl

    cfg = variant.config(package)
    verdict = Result(key, cls, "done", variant.label)
    try:
        module = build(package, cls, cfg, seed)
    except Exception as error:  # the learner edited more than the backward
        return _wrong(verdict, f"building {cls} raised {_describe(error)}")
    if isolate:
        _use_reference_backward_below(module)
    inputs = make_inputs(cls, cfg, seed + 1, variant.weighted)
    # the twin, with the same weights
    twin = getattr(torch_impl, cls).from_twin(module)
    twin_inputs = [torch.tensor(x, requires_grad=bool(np.issubdtype(x.dtype, np.floating)) and i == 0)
                   for i, x in enumerate(inputs)]
    # the gradient arriving at every hook point: run_with_cache(incl_bwd=True) and backward hooks need them
    hook_grads, twin_hook_grads = _record_at_hook_points(module, "bwd"), _record_at_hook_points(twin, "bwd")
    activations = _record_at_hook_points(twin, "fwd")  # for the diagnosis: what a LayerNorm normalised
    twin_out = twin(*twin_inputs)
    try:
        out = module.forward(*inputs)
    except Exception as error:
        return _wrong(verdict, f"forward raised {_describe(error)} (only backward is the exercise)")
    forward_error = _relative(np.asarray(out), twin_out.detach().numpy(), np.abs(twin_out.detach().numpy()).max())
    if forward_error > PARITY_TOLERANCE:
        return _wrong(verdict, f"forward differs from the twin by {forward_error:.1e} (only backward is the exercise)")
    R = np.asarray(np.random.default_rng(seed + 2).standard_normal(np.shape(out)))  # random upstream gradient, never all ones
    module.zero_grad()
    try:
        dinput = module.backward(R.copy() if np.ndim(out) else float(R))
    except NotImplementedError as error:
        verdict.status, verdict.message = "not started", _not_started_where(error)
        return verdict
    except Exception as error:
        verdict.hint = getattr(diagnose_error(str(error)), "hint", "")
        return _wrong(verdict, f"backward raised {_describe(error)}")
    (twin_out * torch.from_numpy(R)).sum().backward()
    # every gradient: the twin's, and what the learner produced
    pairs = [(name, p.grad.copy(), twin_param.grad)
             for (name, p), (_, twin_param) in zip(module.named_parameters(), twin.named_parameters())]
    if cls in ("TokenEmbedding", "LearnedPositionalEmbedding", "Transformer"):
        if dinput is not None:
            return _wrong(verdict, f"backward returned {type(dinput).__name__}; it must return None (tokens are discrete)")
    else:
        input_name = _forward_arg(module)  # x, resid_pre or logits: gradcheck names the input the same way
        expected_shape = tuple(inputs[0].shape)
        if dinput is None or np.shape(dinput) != expected_shape:
            got = "None" if dinput is None else f"shape {np.shape(dinput)}"
            verdict.hint = getattr(diagnose_error(f"{tuple(np.shape(dinput))} {expected_shape}"), "hint", "")
            return _wrong(verdict, f"backward returned {got}; it must return d{input_name} of shape {expected_shape}")
        pairs.append((input_name, np.asarray(dinput, dtype=np.float64), twin_inputs[0].grad))
    pairs = [(name, mine, twin_grad.detach().numpy() if twin_grad is not None else np.zeros_like(mine))
             for name, mine, twin_grad in pairs]
    largest = max(np.abs(theirs).max() for _, _, theirs in pairs)
    verdict.tensors = [TensorError(name, _relative(mine, theirs, PARITY_FLOOR * largest), _overall(mine, theirs, largest))
                       for name, mine, theirs in pairs]
    if all(t.ok for t in verdict.tensors):
        skipped = [name for name in twin_hook_grads if name not in hook_grads]
        if skipped:
            return _wrong(verdict, f"the gradients are right, but backward never calls {', '.join(n + '.backward' for n in skipped)}: "
                                   "pass each gradient through its hook point, as the forward passes each activation")
        off = [name for name, theirs in twin_hook_grads.items()
               if _relative(hook_grads[name], theirs, PARITY_FLOOR * max(np.abs(theirs).max(), largest)) > PARITY_TOLERANCE]
        if off:
            return _wrong(verdict, f"the gradient handed to {', '.join(n + '.backward' for n in off)} differs from the twin's "
                                   "(pass each hook point the gradient of its own activation)")
    if all(t.ok for t in verdict.tensors):
        # finite differences on the learner's own forward, and gradients that add up (+=)
        try:
            report = gradcheck(module, *inputs, sample=sample, seed=seed + 3)
            overwrite = _overwritten(module, inputs, R, pairs)
        except Exception as error:
            return _wrong(verdict, f"a second forward and backward raised {_describe(error)}")
        numeric = {row.tensor: row.max_rel_error for row in report.rows}
        for t in verdict.tensors:
            t.numeric = numeric.get(t.tensor)
        if overwrite:
            return _wrong(verdict, f"{', '.join(overwrite)}: the second backward replaced the gradient instead of "
                                   "adding to it (use +=: gradients accumulate until zero_grad)")
    if not all(t.ok for t in verdict.tensors):
        verdict.status = "wrong"
        verdict.message = _describe_wrong(verdict.tensors, pairs)
        evidence = Evidence(cls, cfg, tuple(inputs), R, {name: (mine, theirs) for name, mine, theirs in pairs},
                            _in_forward_order(module, hook_grads, twin_hook_grads), dict(activations),
                            _rerun(module, twin, inputs, twin_inputs, hook_grads, twin_hook_grads))
        try:
            verdict.hint = getattr(diagnose(evidence), "hint", "")
        except Exception:  # a learner's backward that fails on a rerun: no hint, the verdict stands
            verdict.hint = ""
        if cls == "Transformer":
            try:
                verdict.parting = first_divergence(module, twin, inputs[0], dout=R).line()
            except Exception as error:
                verdict.parting = f"the walk through the hook points raised {_describe(error)}"
    return verdict


def _in_forward_order(module, hook_grads, twin_hook_grads):
    """{hook name: (learner's gradient or None, twin's)} in the order the forward meets the hook points."""
    order = [name for name, sub in module.named_modules() if hasattr(sub, "bwd_hooks")]
    return {name: (hook_grads.get(name), twin_hook_grads[name]) for name in order if name in twin_hook_grads}


def _rerun(module, twin, inputs, twin_inputs, hook_grads, twin_hook_grads):
    """rerun(R) -> (mine, right): every gradient of a fresh forward and backward of both, for upstream gradient R."""
    import torch

    input_name = None if twin_inputs[0].grad is None else _forward_arg(module)

    def rerun(upstream):
        hook_grads.clear()
        twin_hook_grads.clear()
        module.zero_grad()
        module.forward(*inputs)
        dinput = module.backward(upstream.copy() if np.ndim(upstream) else float(upstream))
        twin.zero_grad()
        twin_inputs[0].grad = None
        (twin(*twin_inputs) * torch.from_numpy(np.asarray(upstream))).sum().backward()
        mine = {name: p.grad.copy() for name, p in module.named_parameters()}
        right = {name: np.zeros(tuple(p.shape)) if p.grad is None else p.grad.detach().numpy().copy()
                 for name, p in twin.named_parameters()}
        if input_name is not None:
            mine[input_name] = np.asarray(dinput, dtype=np.float64)
            right[input_name] = twin_inputs[0].grad.detach().numpy().copy()
        return {**mine, **hook_grads}, {**right, **twin_hook_grads}

    return rerun


def _record_at_hook_points(module, direction):
    """Add a hook to every hook point of ``module`` (either twin): "fwd" records activations, "bwd"
    the gradients arriving there. Returns {name: float64 ndarray seen}, filled as the module runs."""
    seen = {}
    for name, sub in module.named_modules():
        if hasattr(sub, "bwd_hooks") and hasattr(sub, "add_hook"):
            sub.add_hook(lambda x, hook, name=name: seen.__setitem__(name, np.array(as_numpy(x), dtype=np.float64)),
                         dir=direction)
    return seen


def _forward_arg(module):
    """The name of forward's first argument: x, resid_pre, logits."""
    return next(iter(inspect.signature(module.forward).parameters))


def _overwritten(module, inputs, R, pairs):
    """Names of parameters whose gradient a second backward (no zero_grad between) did not double."""
    first = {name: mine for name, mine, _ in pairs}
    largest = max((np.abs(grad).max() for grad in first.values()), default=0.0)
    module.zero_grad()
    for _ in range(2):
        module.forward(*inputs)
        module.backward(R.copy() if np.ndim(R) else float(R))
    return [name for name, p in module.named_parameters()
            if _relative(p.grad, 2 * first[name], PARITY_FLOOR * largest) > PARITY_TOLERANCE]


def _use_reference_backward_below(module):
    """Give every exercise sub-module the reference's backward, so only ``module``'s own is checked."""
    for name, child in module.named_modules():
        if name and type(child).__name__ in BY_CLASS:
            child.backward = types.MethodType(getattr(numpy_impl, type(child).__name__).backward, child)


def _relative(mine, theirs, tiny):
    """max |a - b| / max(|a| + |b|, tiny), entry by entry."""
    mine, theirs = np.asarray(mine, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
    if mine.shape != theirs.shape:
        return float("inf")
    if not np.all(np.isfinite(mine)):
        return float("inf")
    denominator = np.maximum(np.abs(mine) + np.abs(theirs), max(tiny, np.finfo(np.float64).tiny))
    return float((np.abs(mine - theirs) / denominator).max(initial=0.0))


def _overall(mine, theirs, largest):
    """|mine - theirs| / |theirs| over the whole tensor; an exactly-zero gradient (b_K) is measured
    against a tenth of the component's largest entry instead of its own noise."""
    mine, theirs = np.asarray(mine, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
    if mine.shape != theirs.shape or not np.all(np.isfinite(mine)):
        return float("inf")
    return float(np.linalg.norm(mine - theirs) / max(np.linalg.norm(theirs), 0.1 * largest, 1e-300))


def _describe_wrong(tensors, pairs, shown=4):
    """e.g. "x off by 0.35 (relative error, whole tensor); right: w, b" -- at most ``shown`` names of each kind."""
    mine = {name: a for name, a, _ in pairs}
    words = []
    for t in tensors:
        if t.ok:
            continue
        if not np.all(np.isfinite(mine[t.tensor])):
            words.append(f"{t.tensor} is not finite (NaN or inf)")
        elif not np.any(mine[t.tensor]):
            words.append(f"{t.tensor} is all zeros (never added into?)")
        elif t.twin > PARITY_TOLERANCE:
            words.append(f"{t.tensor} off by {t.overall:.2g}")
        else:
            words.append(f"{t.tensor} off by {t.numeric:.2g} from finite differences, though it matches the twin")
    text = ", ".join(words[:shown]) + (f" and {len(words) - shown} more" if len(words) > shown else "")
    text += " (relative error, whole tensor)"
    right = [t.tensor for t in tensors if t.ok]
    if right:
        text += "; right: " + ", ".join(right[:shown]) + (", ..." if len(right) > shown else "")
    return text


def _not_started_where(error):
    """For "all together": which component's backward still raises NotImplementedError."""
    for frame, _ in reversed(list(traceback.walk_tb(error.__traceback__))):
        owner = frame.f_locals.get("self")
        if owner is not None and frame.f_code.co_name == "backward":
            return f"{type(owner).__name__}.backward raises NotImplementedError"
    return "backward raises NotImplementedError"


def _describe(error):
    frames = [f for f in traceback.extract_tb(error.__traceback__)]
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    return f"{type(error).__name__}: {error}{where}"


def _wrong(verdict, message):
    verdict.status, verdict.message = "wrong", message
    return verdict


def format_results(results, directory):
    """The check as a table a learner reads: number, exercise, status, where it went wrong."""
    lines = [f"Exercises in {directory}: your backward passes against the torch twin and finite differences.",
             f"done: every gradient within {PARITY_TOLERANCE:g} (relative) of both, entry by entry, under every variant,",
             "and every hook point handed its gradient, as the twin's autograd hands it;",
             "the figures are the worst entries. wrong: which tensors are off and by how much;",
             "[brackets] name the variant that failed; hint: the mistake, where one is recognised.", ""]
    rows = [("#", "exercise", "status", "details")]
    notes = {}  # row index -> lines under it: the hint, where a model parts from the twin
    for result in results:
        number = str([e.key for e in EXERCISES].index(result.key) + 1) if result.key in BY_KEY else ""
        details = result.message
        if result.status == "wrong" and result.variant != "default":
            details = f"[{result.variant}] {details}"
        if result.status == "done":
            worst = max(result.tensors, key=lambda t: t.twin, default=None)
            worst_numeric = max((t.numeric for t in result.tensors if t.numeric is not None), default=None)
            if worst is not None:
                details = f"twin {worst.twin:.0e}" + (f", finite differences {worst_numeric:.0e}" if worst_numeric is not None else "")
        if result.status == "not started" and result.key in BY_KEY:
            details = f"{BY_KEY[result.key].file}: {result.cls}.backward still raises NotImplementedError"
        rows.append((number, result.key, result.status, details))
        notes[len(rows) - 1] = ([f"hint: {result.hint}"] if result.hint else []) + (
            [f"where it parts from the twin: {result.parting}"] if result.parting else [])
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    indent = " " * (sum(widths) + 6)
    for index, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths)) + "  " + row[3])
        lines += [indent + note for note in notes.get(index, [])]
    done = sum(r.status == "done" for r in results if r.key in BY_KEY)
    checked = sum(r.key in BY_KEY for r in results)
    lines.append("")
    following = next((r for r in results if r.key in BY_KEY and r.status != "done"), None)
    if following is None:
        lines.append(f"{done} of {checked} done.")
    else:
        exercise = BY_KEY[following.key]
        lines.append(f"{done} of {checked} done. Next: {exercise.key} ({exercise.file}, {exercise.cls}.backward).")
    return "\n".join(lines)
