"""Mark a learner's backward passes: done, not started, wrong, borrowed (which tensor, by how much).

Each exercise runs in a process of its own (``worker.py``, ``learner.py``): the learner's code
never runs here. This process imports the reference (``numpy_impl``) before any learner's
process starts, builds each component with random weights, a random input and a random upstream
gradient R (never all ones), under every variant the catalog lists, and sends the learner's
process the same weights, input and R. What comes back is plain data (JSON and arrays, never
pickle), compared here with the reference's gradients.

"done" means right in every way the reference is, under every variant and both size sets
(catalog.SIZE_SETS: every size distinct, the second with batch 1 and pos = n_ctx):

    float64, the checker's recording hooks on every hook point:
        every gradient (each parameter's, the input's) float64, within 1e-7 (relative, entry by
        entry) of the reference's, and within 1e-7 of central differences of the learner's own
        forward; every hook point handed the gradient of its own activation, its backward called
        once; the upstream gradient, the caller's inputs, every parameter's .data, every cache
        and module array unchanged afterwards, byte for byte; no forward called during backward
        (else "numerical"); a second backward (same forward, same upstream array) adds the same
        again (+=);
    float64, no hooks at all: the same gradients and byte-for-byte checks (a hook point without
        hooks hands on the very array it was given, so an array changed in place after use shows
        only here);
    float64, a backward hook at every hook point that edits the gradient (a random factor, and
        noise): the reference's gradients with the same hooks (a hook skipped, doubled or dropped,
        a mask's backward left out);
    float64, a forward hook that zeroes key 1 of the attention pattern (attention, block, model):
        the gradients the reference gives for the edited run (softmax's backward takes probs,
        the softmax's own output; what z used is the edited pattern);
    float32: every gradient returned and every .grad is float32, and so is every gradient a hook
        point's backward is handed (hooks that note only its dtype), within 1e-4 of the float64
        reference (relative to the largest entry of its tensor);
    the second size set: the first run again.

A wrong dtype is traced to the line after which an array first held it (learner.DtypeTrace).
A body that uses complex numbers, or calls a forward, is "numerical": it differentiates the
forward numerically instead of writing the chain rule.

An exercise with steps (attention) is also checked one step at a time: each step's lines run on
their own, given random incoming gradients and a .grad that holds something already, and must
give the reference step's outputs, in float64 and float32, leaving what it was given, the cache
and the weights as they were. Sub-modules inside the block and the model run the reference's
backward while those two are checked, so a mistake is reported where it is; the last row, "all
together", runs the learner's backward everywhere. A file of the copy that does not compile fails
only its own exercise: the others run with that file as init wrote it.

A wrong answer also gets, where one fits exactly, a hint naming the mistake (``diagnose.py``),
and the first hook point inside the exercise where the learner's gradient parts from the
reference ("right at hook_z; first wrong at hook_attn_scores").
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import numpy_impl
from foundation.contract.config import TransformerConfig
from gradcheck.factory import build, make_inputs

from . import worker as workers
from .catalog import BY_CLASS, BY_KEY, EXERCISES, SIZE_SETS, STEP_KEYS, TOGETHER, number_of, resized
from .diagnose import (
    Evidence,
    diagnose,
    diagnose_error,
    diagnose_step,
    dtype_hint,
    group_shape_hint,
    hard_coded_hint,
)
from .divergence import locate
from .learner import find_package
from .steps import find_marked_bodies, prologue_values, region_function

if Path(numpy_impl.__file__).resolve().parent != workers.PROJECT / "numpy_impl":
    raise ImportError(
        f"the checker's reference is {numpy_impl.__file__}, not the project's "
        f"{workers.PROJECT / 'numpy_impl'}: put the project first on sys.path"
    )

# relative error against the reference (a correct backward: 1e-10 at worst, b_K's noise)
PARITY_TOLERANCE = 1e-7
PARITY_FLOOR = 1e-6  # tiny = PARITY_FLOOR * the component's largest reference gradient
FD_TOLERANCE = 1e-7  # relative error of each directional derivative against central differences
FD_STEP = 1e-6
FD_FLOOR = 0.1  # tiny = FD_FLOOR * the largest gradient norm of the component
# float32 gradients against the float64 reference, relative to their tensor's largest entry
FLOAT32_TOLERANCE = 1e-4
FLOAT32_FLOOR = 1e-2  # ... or to this fraction of the component's largest entry, if that is larger
TIME_LIMIT = 60.0  # seconds per exercise (every variant and step); a correct one takes about one
TIME_LIMIT_MAX = 86400.0  # a day: the longest time_limit taken (a deadline the clock can wait for)
STATUSES = (
    "done",
    "not started",
    "wrong",
    "numerical",
    "borrowed",
    "refused",
    "timed out",
    "exited",
)
WITH_ATTENTION = ("MultiHeadAttention", "TransformerBlock", "Transformer")
SUB_MODULE_FILES = {  # the classes whose reference backward each exercise's sub-modules run
    "TransformerBlock": (
        "LayerNorm",
        "RMSNorm",
        "MultiHeadAttention",
        "FeedForward",
        "GatedFeedForward",
    ),
    "Transformer": (
        "TokenEmbedding",
        "LearnedPositionalEmbedding",
        "LayerNorm",
        "RMSNorm",
        "MultiHeadAttention",
        "FeedForward",
        "GatedFeedForward",
        "TransformerBlock",
        "Unembed",
    ),
}
REFERENCE_SOURCES = {
    path.name: path.read_text() for path in (workers.PROJECT / "numpy_impl").glob("*.py")
}
# the seed of the gradient-editing hooks (learner.gradient_editor), the same on both sides
EDIT_SEED = 7
_references = {}  # the reference's side of each check, by what decides it: see _reference_side
REFERENCES_KEPT = 512
NUMERICAL = (
    "that is numerical differentiation, which the checker itself uses to check you, not backprop: "
    "it costs a forward per entry, is exact only for code that complex numbers pass through "
    "unchanged, and skips what the exercise is, the chain rule. Write the gradient from the "
    "forward lines, last first, with the cache"
)


def _cache_names():
    """{class: [names]} from each reference backward's ``a, b, c = self.cache`` line: what cache[i]
    holds."""
    import ast

    names = {}
    for source in REFERENCE_SOURCES.values():
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ClassDef):
                for item in ast.walk(node):
                    if (
                        isinstance(item, ast.Assign)
                        and ast.unparse(item.value) == "self.cache"
                        and len(item.targets) == 1
                    ):
                        target = item.targets[0]
                        elements = target.elts if isinstance(target, ast.Tuple) else [target]
                        names[node.name] = [getattr(e, "id", "?") for e in elements]
    return names


CACHE_NAMES = _cache_names()


@dataclass
class TensorError:
    """One gradient of one run: its error against the reference, and against finite differences."""

    tensor: str
    reference: float  # max over entries of the relative error against the reference
    overall: float  # |mine - right| / |right| for the whole tensor (Euclidean norms)
    # directional derivative against finite differences; None when not run
    numeric: float | None = None
    worst: tuple = ()  # (index, mine, right) of the entry with the largest relative error

    @property
    def ok(self):
        return self.reference <= PARITY_TOLERANCE and (
            self.numeric is None or self.numeric <= FD_TOLERANCE
        )


@dataclass
class Result:
    """The verdict on one exercise (or step), with the evidence: the first failing run and its
    tensors."""

    key: str
    cls: str
    status: str  # one of STATUSES
    variant: str = ""  # the variant the verdict comes from (the first that failed)
    message: str = ""  # what went wrong, in words
    tensors: list = field(default_factory=list)  # TensorError per gradient of that run
    hint: str = ""  # the mistake named, when one fits exactly (diagnose.py)
    parting: str = ""  # where inside the exercise the gradient first parts from the reference
    output: str = ""  # what the learner's code printed, abridged
    seconds: float = 0.0  # wall-clock time of its check

    @property
    def wrong_tensors(self):
        return [t for t in self.tensors if not t.ok]


class Unchecked(Exception):
    """A verdict reached before the comparison: not started, exited, borrowed, ... (carries the
    Result)."""

    def __init__(self, result):
        super().__init__(result.message)
        self.result = result


def check(
    directory,
    keys=None,
    sample=1,
    seed=0,
    together=True,
    progress=None,
    time_limit=TIME_LIMIT,
    steps=True,
):
    """Check the learner's copy in ``directory``; returns a list of ``Result``, in exercise order.

    keys: exercise keys ("layernorm") or step keys ("attention.softmax") to check (default: all
        of them); an exercise written in steps brings its steps along (with ``steps`` False it
        comes alone: a quicker check of the whole exercise once its steps are done). When they
        hold "model" and ``together``, a last row "all together" runs the learner's backward
        everywhere in the whole model.
    sample: random directions per tensor for the finite differences.
    seed: the seed of the weights, inputs and upstream gradients the checker draws.
    progress: ``progress(items, label)`` yielding the items while it draws a bar
        (tours/progress.py).
    time_limit: seconds each exercise may take, steps included; past it, or when the learner's
        code ends its process, the exercise gets the status "timed out" or "exited" and the check
        goes on. A copy that does not import raises ImportError before anything is checked.

    The reference's side of each check (its weights, inputs and gradients) and each file text
    that compiled are kept in this process, so a second call (a notebook's checking cell) spends
    its time on the learner's side only.
    """
    keys = _checked_keys(keys, sample, time_limit, steps)
    # a missing copy is the caller's error, before any process starts
    package_dir = find_package(directory)
    directory = os.path.abspath(directory)
    broken = _broken_files(package_dir)
    units = []  # (exercise key or TOGETHER, [keys checked in its process])
    for key in keys:
        owner = STEP_KEYS[key].key if key in STEP_KEYS else key
        if units and units[-1][0] == owner:
            units[-1][1].append(key)
        else:
            units.append((owner, [key]))
    if together and "model" in keys:
        units.append((TOGETHER, [TOGETHER]))
    results = []
    for owner, unit_keys in (progress or _quietly)(units, "checking"):
        lost = [r for r in results if r.status in ("timed out", "exited")]
        if owner == TOGETHER and lost:
            results.append(
                Result(
                    TOGETHER,
                    "Transformer",
                    lost[0].status,
                    message=f"not run: {lost[0].key} {lost[0].status} first",
                )
            )
            continue
        file = BY_KEY["model" if owner == TOGETHER else owner].file
        if owner == TOGETHER and broken:
            results.append(
                Result(
                    TOGETHER,
                    "Transformer",
                    "wrong",
                    message=f"not run: {', '.join(broken)} does not compile (every backward of "
                    "yours runs here)",
                )
            )
            continue
        if file in broken:
            results += [_does_not_compile(key, owner, broken[file]) for key in unit_keys]
            continue
        results += _check_unit(
            directory, owner, unit_keys, sample, seed, time_limit, _stand_ins(broken, directory)
        )
        if owner == TOGETHER:
            _together_message(results[-1], results[:-1])
    return results


def _broken_files(package_dir):
    """{file name: SyntaxError} for each file of the copy that does not compile (compiled here,
    never run)."""
    broken = {}
    for path in sorted(Path(package_dir).glob("*.py")):
        error = _compile_error(str(path), path.read_text())
        if error is not None:
            broken[path.name] = error
    exercise_files = {exercise.file for exercise in EXERCISES}
    others = [name for name in broken if name not in exercise_files]
    if others:  # no exercise lives there: nothing can run without it
        error = broken[others[0]]
        raise ImportError(
            f"your copy in {package_dir} does not import: SyntaxError: {error.msg} at "
            f"{others[0]}:{error.lineno}"
        )
    return broken


@functools.lru_cache(maxsize=256)
def _compile_error(filename, source):
    """The SyntaxError (or ValueError) compiling ``source`` raises, or None; remembered for each
    file and text, so a check again in the same process (a notebook's checking cells, the tests)
    compiles only the files that changed."""
    try:
        compile(source, filename, "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as error:
        return error.with_traceback(None)
    return None


def _stand_ins(broken, directory):
    """{file: the stub init writes} for the files that do not compile: the other exercises run with
    it."""
    if not broken:
        return {}
    from .generate import stub_source

    return {name: stub_source(REFERENCE_SOURCES[name], name, directory) for name in broken}


def _does_not_compile(key, owner, error):
    exercise = BY_KEY[owner]
    line = (error.text or "").strip()
    result = Result(
        key,
        exercise.cls,
        "wrong",
        message=f"{exercise.file} does not compile: SyntaxError: {error.msg} at "
        f"{exercise.file}:{error.lineno}" + (f": `{line}`" if line else ""),
    )
    result.hint = (
        f"fix that line; meanwhile the other exercises run with {exercise.file} as init wrote it "
        f'(its forward, no backward), and "all together" waits for it'
    )
    return result


def _checked_keys(keys, sample, time_limit, steps=True):
    if keys is None:
        keys = [key for exercise in EXERCISES for key in exercise.step_keys() + [exercise.key]]
    if isinstance(keys, str):
        keys = [keys]
    unknown = [key for key in keys if key not in BY_KEY and key not in STEP_KEYS]
    if unknown:
        choices = [key for exercise in EXERCISES for key in [exercise.key] + exercise.step_keys()]
        raise ValueError(
            f"unknown exercise {', '.join(map(str, unknown))}; choose from: {', '.join(choices)}"
        )
    if isinstance(sample, bool) or not isinstance(sample, int) or sample < 1:
        raise ValueError(f"sample must be a positive int, got {sample!r}")
    if (
        isinstance(time_limit, bool)
        or not isinstance(time_limit, (int, float))
        or not math.isfinite(time_limit)
        or not 0 < time_limit <= TIME_LIMIT_MAX
    ):
        raise ValueError(
            f"time_limit must be a positive, finite number of seconds, at most "
            f"{TIME_LIMIT_MAX:g} (a day), got {time_limit!r}"
        )
    order = [key for exercise in EXERCISES for key in exercise.step_keys() + [exercise.key]]
    keys = [
        step
        for key in keys
        for step in (BY_KEY[key].step_keys() if steps and key in BY_KEY else []) + [key]
    ]
    return sorted(dict.fromkeys(keys), key=order.index)


def _quietly(items, label):
    return items


def _check_unit(directory, owner, keys, sample, seed, time_limit, substitutes=None):
    """One exercise (its steps and itself, as asked) in one learner's process."""
    started = time.monotonic()
    cls = "Transformer" if owner == TOGETHER else BY_KEY[owner].cls
    isolate = (
        {name: BY_CLASS[name].file for name in SUB_MODULE_FILES.get(cls, ())}
        if owner != TOGETHER
        else {}
    )
    deadline = started + time_limit
    process = workers.LearnerProcess(directory, deadline, isolate, substitutes or None)
    # for the checks that read the learner's lines (never run them)
    process.directory_path = directory
    results = []
    try:
        try:
            ready = process.ready()
        except workers.LearnerLost as lost:
            printed = process.output.text().strip().splitlines()[-3:]
            said = f"; its last words: {' | '.join(printed)}" if printed else ""
            raise ImportError(
                f"your copy in {find_package(directory)} does not import: {lost}{said}"
            ) from None
        if not ready["ready"]:
            cause = ready.get("cause") or {}
            event = process.events[0] if process.events else None
            if event is not None:
                raise ImportError(
                    f"your copy in {find_package(directory)} does not import: {_event_words(event)}"
                )
            raise ImportError(
                ready.get("error") or cause.get("text") or "your copy does not import"
            )
        setup_events = list(process.events)
        for key in keys:
            begun = time.monotonic()
            result = _verdict(
                process, owner, key, sample, seed, time_limit, setup_events, directory
            )
            result.seconds = time.monotonic() - begun
            results.append(result)
            if result.status in ("timed out", "exited"):
                for rest in keys[len(results) :]:
                    results.append(
                        Result(
                            rest,
                            cls,
                            result.status,
                            message=f"not run: {result.key} {result.status} first",
                        )
                    )
                break
    finally:
        process.stop()
    output = process.output.text().strip()
    if output and results:
        results[-1].output = output
    if results:
        results[-1].seconds = time.monotonic() - started - sum(r.seconds for r in results[:-1])
    return results


def _verdict(process, owner, key, sample, seed, time_limit, setup_events, directory):
    cls = "Transformer" if owner == TOGETHER else BY_KEY[owner].cls
    before = len(process.events)
    try:
        _numerical_by_sight(directory, key, cls)
        if key in STEP_KEYS:
            result = check_step(process, STEP_KEYS[key], key.split(".", 1)[1], seed)
        elif key == TOGETHER:
            result = check_exercise(
                process, TOGETHER, "Transformer", BY_KEY["model"].variants, sample, seed + 100
            )
        else:
            exercise = BY_KEY[key]
            result = check_exercise(process, key, exercise.cls, exercise.variants, sample, seed)
    except Unchecked as unchecked:
        result = unchecked.result
    except workers.LearnerLost as lost:
        result = Result(key, cls, lost.status, message=_lost_message(lost, time_limit))
    # an attempt while the copy imported applies to every exercise
    events = process.events[before:] or setup_events
    if events:
        result.status, result.message = events[0]["kind"], _event_words(events[0])
        result.hint, result.parting, result.tensors = "", "", []
    return result


COMPLEX_WORDS = (
    "complex",
    "imag",
    "cmath",
    "complex64",
    "complex128",
    "complex_",
    "csingle",
    "cdouble",
)


def _numerical_by_sight(directory, key, cls):
    """Unchecked("numerical") when the body (or step) of ``key`` uses complex numbers: the complex
    step."""
    import ast

    owner = STEP_KEYS[key] if key in STEP_KEYS else BY_KEY.get(key)
    if owner is None:  # all together: each exercise was looked at on its own row
        return
    path = find_package(directory) / owner.file
    try:
        source = path.read_text()
        body = next(b for b in find_marked_bodies(source, owner.file) if b.cls == owner.cls)
    except (OSError, SyntaxError, ValueError, StopIteration):
        return
    lines = source.splitlines()
    first, last = body.begin + 1, body.end - 1
    if key in STEP_KEYS:
        region = next((r for r in body.steps if r.name == key.split(".", 1)[1]), None)
        if region is None:
            return
        first, last = region.first, region.last
    from .steps import _parse_block

    try:
        tree = ast.Module(_parse_block("\n".join(lines[first : last + 1])), [])
    except SyntaxError:
        return
    for node in ast.walk(tree):
        word = None
        if isinstance(node, ast.Constant) and isinstance(node.value, complex):
            word = repr(node.value)
        elif isinstance(node, ast.Attribute) and node.attr in COMPLEX_WORDS:
            word = f".{node.attr}"
        elif isinstance(node, ast.Name) and node.id in COMPLEX_WORDS:
            word = node.id
        if word is not None:
            line = (
                lines[first + node.lineno - 2].strip()
                if 0 <= first + node.lineno - 2 < len(lines)
                else ""
            )
            where = f"{owner.file}:{first + node.lineno - 1}"
            raise Unchecked(
                Result(
                    key,
                    cls,
                    "numerical",
                    message=(
                        f"your backward steps into the complex plane ({word} at {where}: `{line}`) "
                        f"to read the gradient "
                        f"off the forward (the complex step): {NUMERICAL}"
                    ),
                )
            )


def _numerical(reply, verdict):
    """Unchecked("numerical") when the learner's backward called a forward (the learner's process
    saw it)."""
    calls = reply.get("forward_calls") or []
    if calls:
        call = calls[0]
        line = f": `{call['line']}`" if call.get("line") else ""
        verdict.status, verdict.message = (
            "numerical",
            (
                f"your backward evaluates the forward to get its gradient ({call['what']} called "
                f"at {call['where']}"
                f"{line}): {NUMERICAL}"
            ),
        )
        verdict.hint, verdict.parting, verdict.tensors = "", "", []
        raise Unchecked(verdict)


def _event_words(event):
    where = f" at {event['where']}" if event.get("where") else ""
    if event["kind"] == "borrowed":
        return (
            f"{event['what']}{where}: borrowed work is not counted; a backward is written with "
            "numpy alone (the reference, the twin, torch and autograd are off limits here)"
        )
    return (
        f"{event['what']}{where}: the checker refused it (a backward computes its gradient and "
        f"nothing else)"
    )


def _lost_message(lost, time_limit):
    if lost.status == "timed out":
        return (
            f"no answer within {time_limit:g} s: a backward that never returns (an endless loop?); "
            "the checker stopped it (raise the limit with --time-limit if your machine is slow)"
        )
    return f"{lost}: a backward must return its gradient, never end the program"


# --- one exercise ---


def check_exercise(process, key, cls, variants, sample=1, seed=0):
    """Every variant in turn under the first size set, then under the second; the first that is not
    done decides.

    The first set runs everything; the second (batch 1, pos = n_ctx, every size another) runs the
    float64 run with the recording hooks again, with every check of it: a size written as a number
    fails there.
    """
    numeric = {}
    for number, variant in enumerate(variants):
        # finite differences under the first variant, and under any variant with parameters the
        # earlier ones lack (Llama's W_gate, grouped attention's _W_K, ...)
        names = _reference_side(
            ("names", cls, repr(variant.config())),
            lambda: {n for n, _ in build(numpy_impl, cls, variant.config()).named_parameters()},
        )
        result = check_variant(
            process,
            key,
            cls,
            variant,
            sample,
            seed + 10 * number,
            finite_differences=number == 0 or not names <= set(numeric),
        )
        if result.status != "done":
            return result
        numeric.update({t.tensor: t.numeric for t in result.tensors if t.numeric is not None})
    first = result
    for sizes in SIZE_SETS[1:]:
        for number, variant in enumerate(variants):
            try:
                result = check_variant(
                    process,
                    key,
                    cls,
                    variant,
                    sample,
                    seed + 10 * number + 1000,
                    finite_differences=False,
                    sizes=sizes,
                )
            except Unchecked as unchecked:
                result = unchecked.result
            if result.status == "wrong":
                result.message = (
                    f"right with {SIZE_SETS[0].words()}; wrong with {sizes.words()}: "
                    + result.message
                )
                found, literal = hard_coded_hint(
                    _learner_body(process.directory_path, key), SIZE_SETS[0], sizes
                )
                result.hint = found if literal or not result.hint else result.hint
            if result.status != "done":
                return result
    for t in first.tensors:  # finite differences ran under the variants that first had them
        t.numeric = numeric.get(t.tensor) if t.numeric is None else t.numeric
    return first


def _learner_body(directory, key):
    """[(line number, text)] of the learner's body for exercise ``key`` (all together: every
    body)."""
    keys = [e.key for e in EXERCISES] if key == TOGETHER else [key]
    found = []
    for name in keys:
        exercise = BY_KEY[name]
        try:
            source = (find_package(directory) / exercise.file).read_text()
            body = next(
                b for b in find_marked_bodies(source, exercise.file) if b.cls == exercise.cls
            )
        except (OSError, SyntaxError, ValueError, StopIteration):
            continue
        lines = source.splitlines()
        found += [(f"{exercise.file}:{n + 1}", lines[n]) for n in range(body.begin + 1, body.end)]
    return found


def check_variant(
    process, key, cls, variant, sample, seed, finite_differences=True, sizes=SIZE_SETS[0]
):
    """One variant under one size set; under any set but the first, only the float64 run with
    recording hooks."""
    full = sizes is SIZE_SETS[0]
    verdict = Result(key, cls, "done", variant.label if full else f"{variant.label}, {sizes.label}")
    cfg = resized(variant, sizes).config()
    fields = dataclasses.asdict(cfg)
    case = (cls, repr(fields), variant.weighted, sizes.batch, sizes.pos, seed)

    def reference_case():
        reference = build(numpy_impl, cls, cfg, seed)
        weights = reference.state_dict()
        inputs = list(
            make_inputs(cls, cfg, seed + 1, variant.weighted, batch=sizes.batch, pos=sizes.pos)
        )
        out = reference.forward(*inputs)
        # random upstream gradient, never all ones
        R = np.random.default_rng(seed + 2).standard_normal(np.shape(out))
        upstream = R if np.ndim(out) else float(R)
        right = reference_run(cls, fields, weights, inputs, upstream, edit=False)
        return weights, inputs, out, R, upstream, right

    weights, inputs, out, R, upstream, right = _reference_side(("variant", *case), reference_case)
    isolate = key != TOGETHER and cls in SUB_MODULE_FILES
    request = {
        "cls": cls,
        "cfg": fields,
        "weights": weights,
        "inputs": inputs,
        "dout": upstream,
        "isolate": isolate,
    }
    input_name = (
        None
        if cls in ("TokenEmbedding", "LearnedPositionalEmbedding", "Transformer")
        else _forward_arg(cls)
    )

    # 1. float64, recording hooks, backward twice with the very same upstream array
    mine = _ask(
        process,
        {**request, "op": "run", "record": True, "twice": True},
        verdict,
        f"while checking {key}",
        right,
    )
    _numerical(mine, verdict)
    _forward_agrees(mine, right, verdict)
    tensors = _gradients(mine, right, input_name, verdict, inputs)
    _dtypes(process, {**request, "op": "run", "record": False}, tensors, "float64", verdict)
    _float32_values(tensors, verdict)
    verdict.tensors = _compare(tensors)
    if not all(t.ok for t in verdict.tensors):
        return _explain_wrong(
            process,
            verdict,
            request,
            right,
            mine,
            tensors,
            input_name,
            cfg,
            inputs,
            upstream,
        )
    _hook_points(mine, right, verdict)
    _untouched(mine, inputs, upstream, input_name, verdict)
    _side_effects(mine, verdict)
    _accumulates(mine, tensors, verdict)
    if not full:
        return verdict
    if finite_differences:
        _finite_differences(process, request, tensors, input_name, sample, seed, verdict)

    # 2. float64, no hooks at all
    bare = _ask(
        process,
        {**request, "op": "run", "record": False},
        verdict,
        f"while checking {key} without hooks",
    )
    _numerical(bare, verdict)
    _untouched(bare, inputs, upstream, input_name, verdict, run=" without hooks")
    _side_effects(bare, verdict, run=" without hooks")
    bare_tensors = _gradients(bare, right, input_name, verdict, inputs, run="without hooks")
    wrong = [t for t in _compare(bare_tensors) if not t.ok]
    if wrong:
        return _wrong(
            verdict,
            "right with the checker's recording hooks, wrong without hooks: "
            + _describe_wrong(wrong, bare_tensors)
            + ". Without hooks a hook point hands on the very array it was given, so an array your "
            "backward changes in place after using it (d *= ..., d += ...) changes someone else's "
            "too: "
            "write new arrays (d = d * ...)",
        )

    # 3. float64, a backward hook at every hook point that edits the gradient (a random factor, and
    #    noise)
    if right["hooks"]:
        edited_right = _reference_side(
            ("edited grads", *case),
            lambda: reference_run(cls, fields, weights, inputs, upstream, edit_grads=EDIT_SEED),
        )
        edited = _ask(
            process,
            {**request, "op": "run", "record": True, "edit_grads": EDIT_SEED},
            verdict,
            f"while checking {key} with hooks that edit the gradient",
        )
        edited_tensors = _gradients(
            edited,
            edited_right,
            input_name,
            verdict,
            inputs,
            run="with hooks that edit the gradient",
        )
        wrong = [t for t in _compare(edited_tensors) if not t.ok]
        if wrong:
            verdict.parting = locate(edited.get("hooks", {}), edited_right["hooks"]).short()
            _wrong(
                verdict,
                "right with hooks that only record; wrong when a backward hook edits the gradient "
                "at each hook point (times a random factor, plus noise, as a steering or "
                "attribution hook may): "
                + _describe_wrong(wrong, edited_tensors)
                + ". Each hook point's backward is called once and what it returns is used "
                "(d = self.hook_x.backward(d)); where the causal mask hides a key, the mask's "
                "backward sets the gradient to 0 whatever a hook handed back",
            )
            verdict.tensors = _compare(edited_tensors)
            return verdict

    # 4. float64, a forward hook that edits the attention pattern
    if cls in WITH_ATTENTION:
        edited_right = _reference_side(
            ("edited pattern", *case),
            lambda: reference_run(cls, fields, weights, inputs, upstream, edit=True),
        )
        edited = _ask(
            process,
            {**request, "op": "run", "record": True, "edit_pattern": True},
            verdict,
            f"while checking {key} with an edited pattern",
        )
        edited_tensors = _gradients(
            edited, edited_right, input_name, verdict, inputs, run="with an edited pattern"
        )
        wrong = [t for t in _compare(edited_tensors) if not t.ok]
        if wrong:
            _wrong(
                verdict,
                "right until a forward hook edits the attention pattern (key 1 zeroed, as an "
                "ablation "
                "does); then "
                + _describe_wrong(wrong, edited_tensors)
                + ". The softmax's backward takes probs, the softmax's own output; z was made from "
                "the edited "
                "pattern, so dv_h takes pattern",
            )
            verdict.tensors = _compare(edited_tensors)
            verdict.parting = locate(edited.get("hooks", {}), edited_right["hooks"]).short()
            return verdict

    # 5. float32
    cfg32 = dataclasses.replace(cfg, dtype="float32")
    fields32 = dataclasses.asdict(cfg32)
    request32 = {
        **request,
        "op": "run",
        "cfg": fields32,
        "record": False,
        "watch_dtypes": True,
        "weights": {name: value.astype(np.float32) for name, value in weights.items()},
        "inputs": [
            x.astype(np.float32) if np.issubdtype(x.dtype, np.floating) else x for x in inputs
        ],
        "dout": R.astype(np.float32) if np.ndim(out) else float(R),
    }
    single = _ask(process, request32, verdict, f"while checking {key} in float32")
    _float32(process, request32, single, right, input_name, verdict, inputs)
    return verdict


def _reference_side(key, compute):
    """``compute()``, the reference's side of a check (its weights, inputs and gradients), made
    once per ``key`` in this process and a copy of it handed out each time: the reference is the
    same whatever the learner wrote, so a second check in the same process (the notebook's
    checking cells, a test run) skips it. ``key`` holds everything ``compute`` depends on."""
    if key not in _references:
        if len(_references) >= REFERENCES_KEPT:
            del _references[next(iter(_references))]  # the oldest
        _references[key] = compute()
    return copy.deepcopy(_references[key])


def reference_run(cls, fields, weights, inputs, upstream, edit=False, edit_grads=None):
    """The reference's forward and backward on the same weights: out, dinput, grads, hooks (backward
    order), activations."""
    cfg = TransformerConfig(**fields)
    module = _reference_module(cls, cfg, weights)
    hooks, activations = _record(module, edit, edit_grads)
    out = module.forward(*[np.array(x, copy=True) for x in inputs])
    module.zero_grad()
    dinput = module.backward(
        np.array(upstream, copy=True) if np.ndim(upstream) else float(upstream)
    )
    return {
        "out": np.asarray(out),
        "dinput": dinput,
        "hooks": hooks,
        "activations": activations,
        "grads": {name: p.grad.copy() for name, p in module.named_parameters()},
        "parameters": {name: p.data.copy() for name, p in module.named_parameters()},
    }


def _reference_module(cls, cfg, weights):
    if cls == "CrossEntropyLoss":
        module = numpy_impl.CrossEntropyLoss()
    elif cls == "Transformer":
        module = numpy_impl.Transformer(cfg, seed=0)
    elif cls == "MultiHeadAttention":  # grouped-query when cfg.n_key_value_heads is set
        module = numpy_impl.MultiHeadAttention.for_config(cfg, 0)
    else:
        module = getattr(numpy_impl, cls)(cfg, 0)
    module.load_state_dict(weights)
    return module


def _record(module, edit, edit_grads=None):
    """Recording hooks on every hook point ({name: gradient}, in backward order; {name:
    activation}), and the edits."""
    from .learner import edit_pattern, gradient_editor

    hooks, activations = {}, {}
    for name, sub in module.named_modules():
        if isinstance(sub, numpy_impl.HookPoint):
            sub.add_hook(
                lambda x, hook, name=name: activations.__setitem__(name, np.array(x, copy=True)),
                dir="fwd",
            )
            if edit and name.split(".")[-1] == "hook_pattern":
                sub.add_hook(edit_pattern, dir="fwd")
            sub.add_hook(
                lambda x, hook, name=name: hooks.__setitem__(name, np.array(x, copy=True)),
                dir="bwd",
            )
            if edit_grads is not None:
                sub.add_hook(gradient_editor(edit_grads, name), dir="bwd")
    return hooks, activations


def _ask(process, request, verdict, doing, right=None):
    """The learner's reply, or Unchecked with the verdict it implies (not started, exited, wrong:
    raised)."""
    reply = process.ask(request, doing)
    if process.events:
        raise Unchecked(verdict)  # the events decide (see _verdict)
    if "exit" in reply:
        verdict.status = "exited"
        verdict.message = (
            f"sys.exit({reply['exit']}) was called at {reply.get('where')}; "
            "a backward must return its gradient, never end the program"
        )
        raise Unchecked(verdict)
    error = reply.get("error")
    if error is None:
        return reply
    stage = reply.get("stage")
    if error.get("type") == "SystemExit":
        where = f" at {error['where']}" if error.get("where") else ""
        verdict.status = "exited"
        verdict.message = (
            f"sys.exit({error['message']}) was called{where}; "
            "a backward must return its gradient, never end the program"
        )
        raise Unchecked(verdict)
    if stage == "backward" and error.get("not_started"):
        verdict.status = "not started"
        verdict.message = (
            f"{error.get('where', '')}: backward still raises NotImplementedError".lstrip(": ")
        )
        raise Unchecked(verdict)
    if stage == "build":
        raise Unchecked(
            _wrong(
                verdict,
                f"building {verdict.cls} raised {error['text']} (only backward is the exercise)",
            )
        )
    if stage == "forward":
        raise Unchecked(
            _wrong(verdict, f"forward raised {error['text']} (only backward is the exercise)")
        )
    if stage == "backward":
        kind = "raised" if not error.get("base") else "raised the BaseException"
        if error.get("type") == "NonFiniteError":
            verdict.message = (
                f"backward made NaN or inf from finite inputs and weights ({error['text']}): "
                "every gradient of finite values is finite"
            )
        else:
            verdict.message = f"backward {kind} {error['text']}"
        verdict.status = "wrong"
        diagnosis = diagnose_error(error, _names_of(request["cfg"], request["inputs"]))
        verdict.hint = diagnosis.hint if diagnosis else ""
        if right is not None and right["hooks"]:
            verdict.parting = locate(reply.get("hooks", {}), right["hooks"]).short()
        raise Unchecked(verdict)
    raise Unchecked(_wrong(verdict, f"the check could not run your code: {error.get('text', '')}"))


def _names_of(fields, inputs):
    """{size: axis name} of a run, from its config fields and its first input's [batch, pos]."""
    from .catalog import SizeSet

    batch, pos = np.shape(inputs[0])[:2]
    return SizeSet("", fields, int(batch), int(pos)).axis_names


def _forward_agrees(mine, right, verdict):
    out = mine.get("out")
    if isinstance(out, float):  # a loss: a number travels as a number
        out = np.asarray(out)
    if not isinstance(out, np.ndarray) or out.shape != right["out"].shape:
        raise Unchecked(
            _wrong(
                verdict,
                "forward returned something else than the reference's (only backward is the "
                "exercise)",
            )
        )
    error = _relative(out, right["out"], np.abs(right["out"]).max())
    if error > PARITY_TOLERANCE:
        raise Unchecked(
            _wrong(
                verdict,
                f"forward differs from the reference by {error:.1e} (only backward is the "
                f"exercise)",
            )
        )


def _gradients(mine, right, input_name, verdict, inputs, run=""):
    """[(name, mine, right)] for every parameter and the input; Unchecked when one is missing or not
    an array."""
    where = f" {run}" if run else ""
    pairs = []
    for name in right["grads"]:
        got = mine.get("grads", {}).get(name)
        if not isinstance(got, np.ndarray):
            what = got.get("not_an_array") if isinstance(got, dict) else "missing"
            raise Unchecked(
                _wrong(
                    verdict, f"{name}.grad is a {what}{where}, not an array: add into it with +="
                )
            )
        pairs.append((name, got, right["grads"][name]))
    dinput = mine.get("dinput")
    if input_name is None:
        if dinput is not None:
            raise Unchecked(
                _wrong(
                    verdict,
                    f"backward returned {_kind(dinput)}{where}; it must return None (tokens are "
                    f"discrete)",
                )
            )
        return pairs
    expected = tuple(np.shape(inputs[0]))
    if not isinstance(dinput, np.ndarray) or dinput.shape != expected:
        got = (
            "None"
            if dinput is None
            else (f"shape {dinput.shape}" if isinstance(dinput, np.ndarray) else _kind(dinput))
        )
        raise Unchecked(
            _wrong(
                verdict,
                f"backward returned {got}{where}; it must return d{input_name} of shape {expected}",
            )
        )
    pairs.append((input_name, dinput, right["dinput"]))
    return pairs


def _kind(value):
    if isinstance(value, dict) and "not_an_array" in value:
        return f"a {value['not_an_array']}"
    return (
        f"a {type(value).__name__}"
        if not isinstance(value, np.ndarray)
        else f"an array of shape {value.shape}"
    )


def _compare(pairs):
    largest = max((np.abs(theirs).max(initial=0.0) for _, _, theirs in pairs), default=0.0)
    return [
        TensorError(
            name,
            _relative(mine, theirs, PARITY_FLOOR * largest),
            _overall(mine, theirs, largest),
            worst=_worst_entry(mine, theirs, PARITY_FLOOR * largest),
        )
        for name, mine, theirs in pairs
    ]


def _worst_entry(mine, theirs, tiny):
    """(index, mine, right) where the relative error (as ``_relative`` measures it) is largest, or
    ()."""
    mine, theirs = np.asarray(mine, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
    if mine.shape != theirs.shape or mine.size == 0 or not np.all(np.isfinite(mine)):
        return ()
    error = np.abs(mine - theirs) / np.maximum(
        np.abs(mine) + np.abs(theirs), max(tiny, np.finfo(np.float64).tiny)
    )
    index = np.unravel_index(int(np.argmax(error)), error.shape)
    return tuple(int(i) for i in index), float(mine[index]), float(theirs[index])


TOLERANCE_WORDS = (
    "The tolerance is {tolerance:g} entry by entry, relative to |yours| + |right| (or to 1e-6 of "
    "the component's "
    "largest gradient, for entries near 0): a right backward, whatever order it sums in, stays "
    "under 1e-10, so a "
    "difference this small is rounding from somewhere: a float32 array, or a formula that "
    "subtracts nearly equal "
    "numbers"
)


DSCALE = (
    "hook_scale is the LayerNorm's denominator, scale = sqrt(var + eps) [batch, pos, 1], so its "
    "gradient is "
    "dscale = -(dnormalized * centered).sum(axis=-1, keepdims=True) / scale**2; pass it through "
    "dscale = self.hook_scale.backward(dscale) and go on from what it returns (dvar = dscale / (2 "
    "* scale)): "
    "a compact formula for dx that never forms dscale is right without hooks, and skips any hook "
    "on hook_scale"
)


def _hook_points(mine, right, verdict):
    hooks = mine.get("hooks", {})
    skipped = [name for name in right["hooks"] if name not in hooks]
    if skipped:
        _wrong(
            verdict,
            f"the gradients are right, but backward never calls "
            f"{', '.join(n + '.backward' for n in skipped)}: pass each gradient through "
            "its hook point, as the forward passes each activation",
        )
        if any(name.split(".")[-1] == "hook_scale" for name in skipped):
            verdict.hint = DSCALE
        raise Unchecked(verdict)
    twice = {name: count for name, count in (mine.get("hook_calls") or {}).items() if count > 1}
    if twice:
        raise Unchecked(
            _wrong(
                verdict,
                "backward calls "
                + ", ".join(f"{name}.backward {count} times" for name, count in twice.items())
                + " in one pass: a hook point's backward runs its hooks, so each must run once (a "
                "hook that scales "
                "the gradient would scale it twice; run_with_cache would record it twice)",
            )
        )
    largest = max((np.abs(g).max(initial=0.0) for g in right["grads"].values()), default=0.0)
    off = [
        name
        for name, theirs in right["hooks"].items()
        if _relative(
            hooks[name], theirs, PARITY_FLOOR * max(np.abs(theirs).max(initial=0.0), largest)
        )
        > PARITY_TOLERANCE
    ]
    if off:
        raise Unchecked(
            _wrong(
                verdict,
                f"the gradient handed to {', '.join(n + '.backward' for n in off)} differs from "
                "the reference's (pass each hook point the gradient of its own activation)",
            )
        )


def _untouched(mine, inputs, upstream, input_name, verdict, run=""):
    """The caller's arrays: the upstream gradient and the inputs, unchanged by forward and
    backward."""
    after = mine.get("dout_after")
    if isinstance(upstream, np.ndarray) and not (
        isinstance(after, np.ndarray) and _same_bytes(after, upstream)
    ):
        raise Unchecked(
            _wrong(
                verdict,
                f"backward changed its incoming gradient in place{run} (d += ..., d *= ... on "
                "the array it was given, or on one a hook point handed on): the caller still "
                "needs it (a residual add hands the same gradient to two branches); write a "
                "new array (d = d + ...)",
            )
        )
    for number, (x, x_after) in enumerate(zip(inputs, mine.get("inputs_after", []))):
        if isinstance(x, np.ndarray) and not (
            isinstance(x_after, np.ndarray) and _same_bytes(x, x_after)
        ):
            raise Unchecked(
                _wrong(verdict, f"the input {number} the caller passed changed in place{run}")
            )


def _same_bytes(a, b):
    """Byte for byte: the same dtype, shape and bits (-0.0 is not 0.0; a NaN is itself)."""
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _accumulates(mine, pairs, verdict):
    """A second backward, with no zero_grad and the very same upstream array, adds the same
    gradients again."""
    second = mine.get("second", {})
    if "error" in second:
        raise Unchecked(
            _wrong(
                verdict,
                f"a second backward after the same forward raised {second['error']['text']}",
            )
        )
    first = {name: value for name, value, _ in pairs}
    largest = max((np.abs(g).max(initial=0.0) for g in first.values()), default=0.0)
    if isinstance(second.get("dinput"), np.ndarray) and any(
        name not in second["grads"] for name in first if name in mine["grads"]
    ):
        raise Unchecked(_wrong(verdict, "a second backward lost a parameter's gradient"))
    changed = []
    dinput = second.get("dinput")
    for name, value, _ in pairs:
        if name in mine["grads"]:
            again = second.get("grads", {}).get(name)
            if (
                not isinstance(again, np.ndarray)
                or _relative(again, 2 * value, PARITY_FLOOR * largest) > PARITY_TOLERANCE
            ):
                changed.append(name)
        elif (
            not isinstance(dinput, np.ndarray)
            or _relative(dinput, value, PARITY_FLOOR * largest) > PARITY_TOLERANCE
        ):
            changed.append(name)
    if not changed:
        return
    replaced = [
        name
        for name in changed
        if name in mine["grads"]
        and isinstance(second["grads"].get(name), np.ndarray)
        and _relative(second["grads"][name], first[name], PARITY_FLOOR * largest)
        <= PARITY_TOLERANCE
    ]
    if replaced:
        raise Unchecked(
            _wrong(
                verdict,
                f"{', '.join(replaced)}: the second backward replaced the gradient instead of "
                "adding to it (use +=: gradients accumulate until zero_grad)",
            )
        )
    raise Unchecked(
        _wrong(
            verdict,
            f"{', '.join(changed)}: a second backward after the same forward, given the same "
            "upstream array, computed something else: backward changed an array it still "
            "needed (the cache, or its incoming gradient) in place",
        )
    )


def _finite_differences(process, request, pairs, input_name, sample, seed, verdict):
    """Directional derivatives: for random D per tensor, mine . D against central differences of the
    forward."""
    rng = np.random.default_rng(seed + 3)
    directions, analytic, sizes = [], [], []
    for name, value, _ in pairs:
        for _ in range(sample):
            D = rng.standard_normal(value.shape)
            directions.append({name: D})
            analytic.append((name, float(np.vdot(value, D))))
        sizes.append(np.linalg.norm(value))
    reply = _ask(
        process,
        {
            **request,
            "op": "fd",
            "directions": directions,
            "step": FD_STEP,
            "input_name": input_name,
        },
        verdict,
        "while taking finite differences",
    )
    tiny = max(FD_FLOOR * max(sizes, default=0.0), np.finfo(np.float64).tiny)
    worst = {}
    for (name, a), n in zip(analytic, reply["values"]):
        error = abs(a - n) / max(abs(a) + abs(n), tiny)
        worst[name] = max(worst.get(name, 0.0), error if math.isfinite(error) else math.inf)
    for t in verdict.tensors:
        t.numeric = worst.get(t.tensor)
    bad = [t for t in verdict.tensors if not t.ok]
    if bad:
        raise Unchecked(
            _wrong(
                verdict,
                ", ".join(
                    f"{t.tensor} off by {t.numeric:.2g} from finite differences of your "
                    "forward, though it matches the reference"
                    for t in bad
                ),
            )
        )


def _dtypes(process, request, pairs, dtype, verdict, step=False, hooks=None):
    """Unchecked("wrong") when a gradient is not in the model's dtype, naming the line where it
    first changed.

    hooks: {hook point: the dtype of the gradient its backward was handed}. A float64 gradient
    inside a float32 model's backward can end in float32 .grad arrays (+= keeps the target's
    dtype), and a component's call into another is not checked at its door: the hook points see
    it on the way.
    """
    other = [
        f"{name} is {mine.dtype}"
        for name, mine, _ in pairs
        if isinstance(mine, np.ndarray)
        and mine.dtype.kind in "fc"
        and mine.dtype != np.dtype(dtype)
    ]
    inside = [name for name, kind in (hooks or {}).items() if kind != dtype]
    if inside and not other:
        after = f" (and at {len(inside) - 1} hook points after it)" if len(inside) > 1 else ""
        other = [f"the gradient handed to {inside[0]}.backward is {hooks[inside[0]]}{after}"]
    if not other:
        return
    reply = process.ask(
        {**request, "trace_dtype": True}, "while looking for the line that changed the dtype"
    )
    first = reply.get("dtype_change") if not process.events else None
    where = ""
    if first:
        step = _step_of(getattr(process, "directory_path", None), verdict.key, first["where"])
        where = (
            f"; it first changed at {first['where']}{step}, `{first['line']}`, which left "
            f"{first['name']} "
            f"{first['dtype']}"
        )
    verdict.status = "wrong"
    verdict.message = (
        f"in a {dtype} model, {', '.join(other)}{where}: every gradient keeps the model's dtype "
        f"(float64 to check, float32 to train), so a {dtype} model's backward gives {dtype} "
        f"gradients"
    )
    verdict.hint = dtype_hint(first, dtype)
    verdict.tensors = []
    raise Unchecked(verdict)


def _step_of(directory, key, where):
    """ " (step attention.scores)" when ``where`` ("attention.py:128") lies in a step of exercise
    ``key``'s body."""
    exercise = BY_KEY.get(key.split(".")[0]) if key else None
    if directory is None or exercise is None or not exercise.steps or key in STEP_KEYS:
        return ""
    file, _, number = where.partition(":")
    if file != exercise.file or not number.isdigit():
        return ""
    try:
        source = (find_package(directory) / exercise.file).read_text()
        body = next(b for b in find_marked_bodies(source, exercise.file) if b.cls == exercise.cls)
    except (OSError, SyntaxError, ValueError, StopIteration):
        return ""
    region = next((r for r in body.steps if r.first <= int(number) - 1 <= r.last), None)
    return f" (step {exercise.key}.{region.name})" if region else ""


def _float32_values(pairs, verdict):
    """Unchecked("wrong") when a float64 gradient holds only float32 numbers (and the right one does
    not): it went through float32 on the way, and was added into a float64 array (+= keeps the
    target's dtype)."""
    rounded = [
        name
        for name, mine, right in pairs
        if isinstance(mine, np.ndarray)
        and mine.dtype == np.float64
        and mine.size >= 4
        and np.any(mine)
        and np.array_equal(mine, mine.astype(np.float32).astype(np.float64))
        and not np.array_equal(right, right.astype(np.float32).astype(np.float64))
    ]
    if rounded:
        verdict.status = "wrong"
        verdict.message = (
            f"in a float64 model, every entry of {', '.join(rounded)} is a float32 number: it went "
            "through float32 on the way (astype(np.float32), a float32 array) and was added into a "
            "float64 one, which keeps the float64 dtype but not the lost digits"
        )
        verdict.hint = (
            "keep every array in the model's dtype: leave astype out, and make new arrays with "
            "np.zeros_like(x) or dtype=x.dtype"
        )
        raise Unchecked(verdict)


SIDE_EFFECT_WORDS = {
    "data": "the weights ({names}): a backward computes gradients and leaves the weights as they "
    "are (an optimizer's "
    "step changes them, after backward)",
    "cache": "what forward saved ({names}): a second backward, or a hook, reads it again. An "
    "in-place edit of a "
    "cached array (np.maximum(pre, 0, out=pre), weights /= weights.sum(), x *= ...) changes it "
    "even when "
    "it gives the same gradient once: write a new array (pre = np.maximum(pre, 0))",
    "given": "the gradients this step was given ({names}): the caller still holds them; write a "
    "new array",
    "other": "the module's own arrays ({names}), which forward reads: write a new array",
}


def _side_effects(reply, verdict, run=""):
    """Unchecked("wrong") when backward changed a parameter's .data, the cache or a module's array
    in place."""
    changed = reply.get("changed") or []
    if not changed:
        return
    groups = {}
    for item in changed:
        path, cls = item["path"], item.get("cls", "")
        if cls == "given":
            kind, name = "given", path
        elif path.endswith(".data"):
            kind, name = "data", path[: -len(".data")]
        elif "cache[" in path:
            owner, _, index = path.rpartition("cache[")
            index = int(index.rstrip("]"))
            names = CACHE_NAMES.get(cls, [])
            name = owner + (names[index] if index < len(names) else f"cache[{index}]")
            kind = "cache"
        elif path.endswith("cache") or path == "cache":
            kind, name = "cache", path.replace("cache", (CACHE_NAMES.get(cls) or ["cache"])[0])
        else:
            kind, name = "other", path
        groups.setdefault(kind, []).append(name)
    words = "; ".join(
        SIDE_EFFECT_WORDS[kind].format(names=", ".join(names[:6])) for kind, names in groups.items()
    )
    raise Unchecked(_wrong(verdict, f"backward changed in place{run} {words}"))


def _float32(process, request32, single, right, input_name, verdict, inputs):
    _numerical(single, verdict)
    pairs = _gradients(single, right, input_name, verdict, inputs, run="in float32")
    _dtypes(process, request32, pairs, "float32", verdict, hooks=single.get("hook_dtypes"))
    off = []
    largest = max(np.abs(t).max(initial=0.0) for _, _, t in pairs)
    for name, mine, theirs in pairs:
        # b_K's exact gradient is zero: float32 leaves noise of about 1e-7 of the largest gradient
        # there
        scale = max(np.abs(theirs).max(initial=0.0), FLOAT32_FLOOR * largest)
        error = float(
            np.abs(mine.astype(np.float64) - theirs).max(initial=0.0) / max(scale, 1e-300)
        )
        if not error <= FLOAT32_TOLERANCE:
            off.append(f"{name} off by {error:.2g}")
    if off:
        raise Unchecked(
            _wrong(
                verdict,
                f"in float32: {', '.join(off)} (relative to the tensor's largest entry; "
                f"float32 rounding alone stays under {FLOAT32_TOLERANCE:g})",
            )
        )


def _explain_wrong(
    process,
    verdict,
    request,
    right,
    mine,
    pairs,
    input_name,
    cfg,
    inputs,
    upstream,
):
    """A wrong answer: which tensors, by how much; a hint where a mistake fits exactly; where it
    parts."""
    verdict.status = "wrong"
    verdict.message = _describe_wrong(verdict.tensors, pairs)
    hooks_mine = mine.get("hooks", {})
    verdict.parting = locate(hooks_mine, right["hooks"]).short() if right["hooks"] else ""
    # forward order; a component's own hook_in holds its input's gradient, which the hints call
    # by the input's name (x), so it is left to the input
    order = [name for name in reversed(list(right["hooks"])) if name != "hook_in"]
    evidence = Evidence(
        verdict.cls,
        cfg,
        tuple(inputs),
        np.asarray(upstream),
        {name: (a, b) for name, a, b in pairs},
        {name: (hooks_mine.get(name), right["hooks"][name]) for name in order},
        right["activations"],
        _rerun(process, request, input_name, right),
        right["parameters"],
        _names_of(request["cfg"], inputs),  # this run's sizes: a grouped run's heads included
    )
    try:
        diagnosis = diagnose(evidence)
    except workers.LearnerLost:
        raise
    # a learner's backward that fails on a rerun: no hint, the verdict stands  # noqa: BLE001
    except Exception:
        diagnosis = None
    verdict.hint = diagnosis.hint if diagnosis else ""
    return verdict


def _rerun(process, request, input_name, right):
    """rerun(R) -> (mine, right): every gradient of a fresh forward and backward of both, for
    upstream gradient R."""
    fields, weights, inputs, cls = (
        request["cfg"],
        request["weights"],
        request["inputs"],
        request["cls"],
    )

    def rerun(upstream):
        upstream = upstream if np.ndim(upstream) else float(upstream)
        reply = process.ask(
            {**request, "op": "run", "record": True, "dout": upstream}, "while looking for a hint"
        )
        if "error" in reply or process.events:
            raise RuntimeError("the rerun did not finish")
        theirs = reference_run(cls, fields, weights, inputs, upstream)
        mine = dict(reply["grads"])
        correct = dict(theirs["grads"])
        if input_name is not None:
            mine[input_name], correct[input_name] = reply["dinput"], theirs["dinput"]
        return {**mine, **reply.get("hooks", {})}, {**correct, **theirs["hooks"]}

    return rerun


def _forward_arg(cls):
    """The name of forward's first argument: x, resid_pre, logits (the name the reference gives
    it)."""
    return list(inspect.signature(getattr(numpy_impl, cls).forward).parameters)[1]


# --- one step of an exercise ---


def check_step(process, exercise, step, seed=0):
    """One ``# EXERCISE STEP`` on its own, under each variant, with and without the pattern
    edited."""
    key = f"{exercise.key}.{step}"
    body = next(
        b
        for b in find_marked_bodies(REFERENCE_SOURCES[exercise.file], exercise.file)
        if b.cls == exercise.cls
    )
    region = next(r for r in body.steps if r.name == step)
    lines = REFERENCE_SOURCES[exercise.file].splitlines()
    runs = [
        (sizes, number, variant, edit)
        for sizes in SIZE_SETS
        for number, variant in enumerate(exercise.variants)
        for edit in ((False, True) if sizes is SIZE_SETS[0] else (False,))
    ]
    for sizes, number, variant, edit in runs:
        label = (
            variant.label
            + (", pattern edited" if edit else "")
            + ("" if sizes is SIZE_SETS[0] else f", {sizes.label}")
        )
        verdict = Result(key, exercise.cls, "done", label)
        cfg = resized(variant, sizes).config()
        fields = dataclasses.asdict(cfg)

        def reference_case(cfg=cfg, fields=fields, number=number, variant=variant, sizes=sizes):
            reference = build(numpy_impl, exercise.cls, cfg, seed + 10 * number)
            weights = reference.state_dict()
            inputs = list(
                make_inputs(
                    exercise.cls,
                    cfg,
                    seed + 10 * number + 1,
                    variant.weighted,
                    batch=sizes.batch,
                    pos=sizes.pos,
                )
            )
            expected, given = _reference_step(
                exercise, body, region, lines, fields, weights, inputs, edit, seed + 10 * number + 2
            )
            prefill = {
                name: np.random.default_rng(seed + 10 * number + 5 + i).standard_normal(value.shape)
                # a step adds into what .grad holds
                for i, (name, value) in enumerate(weights.items())
            }
            expected["grads"] = {
                name: value + prefill[name] for name, value in expected["grads"].items()
            }
            return weights, inputs, expected, given, prefill

        weights, inputs, expected, given, prefill = _reference_side(
            (
                "step",
                key,
                repr(fields),
                variant.weighted,
                sizes.batch,
                sizes.pos,
                number,
                edit,
                seed,
            ),
            reference_case,
        )
        request = {
            "op": "step",
            "cls": exercise.cls,
            "cfg": fields,
            "weights": weights,
            "inputs": inputs,
            "record": True,
            "edit_pattern": edit,
            "step": step,
            "file": exercise.file,
            "given": given,
            "prefill": prefill,
        }
        reply = process.ask(request, f"while checking {key}")
        if process.events:
            return verdict
        result = _step_verdict(verdict, reply, expected, region, given, cfg, inputs, prefill)
        if result.status == "done":
            try:
                _step_dtypes(process, request, reply, region, "float64", verdict)
                if number == 0 and not edit and sizes is SIZE_SETS[0]:
                    _step_float32(process, request, expected, region, verdict)
            except Unchecked as unchecked:
                return unchecked.result
        if result.status == "wrong" and sizes is not SIZE_SETS[0]:
            result.message = (
                f"right with {SIZE_SETS[0].words()}; wrong with {sizes.words()}: " + result.message
            )
            found, literal = hard_coded_hint(
                _region_lines(process.directory_path, exercise, region.name), SIZE_SETS[0], sizes
            )
            result.hint = found if literal or not result.hint else result.hint
        if result.status != "done":
            return result
    return verdict


def _region_lines(directory, exercise, step):
    """[(where, text)] of the learner's lines of one step."""
    try:
        source = (find_package(directory) / exercise.file).read_text()
        body = next(b for b in find_marked_bodies(source, exercise.file) if b.cls == exercise.cls)
        region = next(r for r in body.steps if r.name == step)
    except (OSError, SyntaxError, ValueError, StopIteration):
        return []
    lines = source.splitlines()
    return [(f"{exercise.file}:{n + 1}", lines[n]) for n in range(region.first, region.last + 1)]


def _step_dtypes(process, request, reply, region, dtype, verdict):
    mine = reply.get("locals", {})
    pairs = [
        (name, mine[name], None)
        for name in region.outputs
        if isinstance(mine.get(name), np.ndarray)
    ]
    pairs += [
        (name + ".grad", value, None)
        for name, value in reply.get("grads", {}).items()
        if isinstance(value, np.ndarray)
    ]
    _dtypes(process, request, pairs, dtype, verdict, step=True)


def _step_float32(process, request, expected, region, verdict):
    """The step again in a float32 model: its outputs and .grad float32, within float32's
    rounding."""
    cast = lambda d: {
        n: (v.astype(np.float32) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v)
        for n, v in d.items()
    }
    request32 = {
        **request,
        "cfg": {**request["cfg"], "dtype": "float32"},
        "weights": cast(request["weights"]),
        "inputs": [x.astype(np.float32) if x.dtype.kind == "f" else x for x in request["inputs"]],
        "given": cast(request["given"]),
        "prefill": cast(request["prefill"]),
        "edit_pattern": False,
    }
    reply = process.ask(request32, f"while checking {verdict.key} in float32")
    if process.events:
        raise Unchecked(verdict)
    if reply.get("error") is not None:
        raise Unchecked(
            _wrong(verdict, f"in a float32 model this step raised {reply['error'].get('text', '')}")
        )
    _step_dtypes(process, request32, reply, region, "float32", verdict)
    mine = {
        **reply.get("locals", {}),
        **{n + ".grad": v for n, v in reply.get("grads", {}).items()},
    }
    right = {**expected["outputs"], **{n + ".grad": v for n, v in expected["grads"].items()}}
    largest = max((np.abs(v).max(initial=0.0) for v in right.values()), default=0.0)
    off = []
    for name, theirs in right.items():
        got = mine.get(name)
        if not isinstance(got, np.ndarray) or got.shape != np.shape(theirs):
            continue
        scale = max(np.abs(theirs).max(initial=0.0), FLOAT32_FLOOR * largest, 1e-300)
        error = float(np.abs(got.astype(np.float64) - theirs).max(initial=0.0) / scale)
        if not error <= FLOAT32_TOLERANCE:
            off.append(f"{name} off by {error:.2g}")
    if off:
        raise Unchecked(
            _wrong(
                verdict,
                f"in float32: {', '.join(off)} (relative to the tensor's largest entry; "
                f"float32 rounding alone stays under {FLOAT32_TOLERANCE:g})",
            )
        )


def _reference_step(exercise, body, region, lines, fields, weights, inputs, edit, seed):
    """The reference step's outputs for random incoming gradients: ({outputs, grads, hooks, locals},
    given)."""
    cfg = TransformerConfig(**fields)
    module = _reference_module(exercise.cls, cfg, weights)
    hooks, activations = _record(module, edit)
    out = module.forward(*[np.array(x, copy=True) for x in inputs])
    path = workers.PROJECT / "numpy_impl" / exercise.file
    namespace = vars(__import__(type(module).__module__, fromlist=["_"]))
    cache = prologue_values(body, lines, module, str(path), namespace)
    # the natural values at the step's start (the reference's earlier steps on a random upstream
    # gradient), for shapes
    natural = dict(cache)
    natural[body.argument] = np.random.default_rng(seed).standard_normal(np.shape(out))
    for earlier in body.steps:
        if earlier.name == region.name:
            break
        function = region_function(
            lines, earlier.first, earlier.last, earlier.inputs, str(path), namespace
        )
        natural.update(function(module, **{name: natural[name] for name in earlier.inputs}))
    rng = np.random.default_rng(seed + 1)
    given = {
        name: rng.standard_normal(np.shape(natural[name]))
        for name in region.inputs
        if name.startswith("d") and name not in cache
    }
    module.zero_grad()
    hooks.clear()
    function = region_function(
        lines, region.first, region.last, region.inputs, str(path), namespace
    )
    scope = function(module, **{name: given.get(name, natural.get(name)) for name in region.inputs})
    scope.pop("self", None)
    return {
        "outputs": {name: scope[name] for name in region.outputs},
        "locals": scope,
        "grads": {name: p.grad.copy() for name, p in module.named_parameters()},
        "hooks": dict(hooks),
        "cache": cache,
        "activations": activations,
    }, given


def _step_verdict(verdict, reply, expected, region, given, cfg, inputs, prefill=None):
    error = reply.get("error")
    if "exit" in reply or (error and error.get("type") == "SystemExit"):
        verdict.status = "exited"
        verdict.message = (
            "sys.exit was called: a backward must return its gradient, never end the program"
        )
        return verdict
    if reply.get("stage") == "markers":
        return _wrong(verdict, error["text"])
    if reply.get("stage") == "inputs":
        return _wrong(
            verdict,
            f"this step reads {', '.join(reply['missing'])}, which it is not given: each step "
            f"starts from {', '.join(region.inputs)} (and self); name what it makes "
            f"{', '.join(region.outputs)}",
        )
    if error is not None:
        if error.get("not_started"):
            verdict.status, verdict.message = (
                "not started",
                f"{error.get('where', '')}: this step still raises NotImplementedError",
            )
            return verdict
        _wrong(verdict, f"this step raised {error['text']}")
        diagnosis = diagnose_error(error, _names_of(dataclasses.asdict(cfg), inputs))
        verdict.hint = diagnosis.hint if diagnosis else ""
        return verdict
    try:
        _numerical(reply, verdict)
    except Unchecked as unchecked:
        return unchecked.result
    mine_locals = reply.get("locals", {})
    missing = [name for name in region.outputs if name not in mine_locals]
    if missing:
        return _wrong(
            verdict, f"this step must leave {', '.join(missing)} for the next lines (as arrays)"
        )
    pairs = [(name, mine_locals[name], expected["outputs"][name]) for name in region.outputs]
    held = prefill or {}  # what each .grad held before the step: the step's own part is the rest
    for name, theirs in expected["grads"].items():
        got = reply["grads"].get(name)
        before = held.get(name, 0)
        # only the .grads the step adds into (or the learner's step changed): the rest are no news
        changed = (
            not isinstance(got, np.ndarray)
            or got.shape != np.shape(theirs)
            or bool(np.any(got - before))
        )
        if np.any(theirs - before) or changed:
            if not isinstance(got, np.ndarray):
                return _wrong(verdict, f"{name}.grad is not an array: add into it with +=")
            pairs.append((name + ".grad", got, theirs))
    shaped = [
        (name, mine, theirs) for name, mine, theirs in pairs if np.shape(mine) != np.shape(theirs)
    ]
    if shaped:
        name, mine, theirs = shaped[0]
        _wrong(verdict, f"{name} has shape {np.shape(mine)}; it must have shape {np.shape(theirs)}")
        verdict.hint = group_shape_hint(name, np.shape(mine), np.shape(theirs), cfg)
        return verdict
    verdict.tensors = _compare(pairs)
    if not all(t.ok for t in verdict.tensors):
        replaced = [
            name
            for name, mine, theirs in pairs
            if name.endswith(".grad")
            and prefill
            and name[: -len(".grad")] in prefill
            and _relative(mine, theirs - prefill[name[: -len(".grad")]], PARITY_FLOOR)
            <= PARITY_TOLERANCE
        ]
        if replaced:
            return _wrong(
                verdict,
                f"{', '.join(n[: -len('.grad')] for n in replaced)}: this step replaced the "
                "gradient .grad already held instead of adding to it (use +=: gradients "
                "accumulate until zero_grad, and the checker hands each step a .grad that "
                "holds something already)",
            )
        _wrong(verdict, _describe_wrong(verdict.tensors, pairs))
        own = {
            name: (a - prefill[name[:-5]], b - prefill[name[:-5]])
            if name.endswith(".grad")
            and prefill
            # what the step itself added
            and name[:-5] in prefill
            else (a, b)
            for name, a, b in pairs
        }
        diagnosis = diagnose_step(region.name, own, mine_locals, expected, given, cfg)
        verdict.hint = diagnosis.hint if diagnosis else ""
        return verdict
    mine_hooks = reply.get("hooks", {})
    skipped = [name for name in expected["hooks"] if name not in mine_hooks]
    if skipped:
        return _wrong(
            verdict,
            f"the outputs are right, but this step never calls "
            f"{', '.join(n + '.backward' for n in skipped)}: pass the gradient through its hook "
            f"point",
        )
    try:
        _hook_points(
            {"hooks": mine_hooks, "hook_calls": reply.get("hook_calls")},
            {"hooks": {}, "grads": {}},
            verdict,
        )
        _side_effects(reply, verdict)
    except Unchecked as unchecked:
        return unchecked.result
    return verdict


# --- measures and words ---


def _relative(mine, theirs, tiny):
    """max |a - b| / max(|a| + |b|, tiny), entry by entry."""
    mine, theirs = np.asarray(mine, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
    if mine.shape != theirs.shape or not np.all(np.isfinite(mine)):
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
    """e.g. "x off by 0.35 (relative error, whole tensor); right: w, b" -- at most ``shown`` names
    of each kind."""
    mine = {name: a for name, a, _ in pairs}
    words, small = [], []
    for t in tensors:
        if t.ok:
            continue
        if not np.all(np.isfinite(mine[t.tensor])):
            words.append(f"{t.tensor} is not finite (NaN or inf)")
        elif np.shape(mine[t.tensor]) != np.shape(next(b for n, _, b in pairs if n == t.tensor)):
            words.append(f"{t.tensor} has the wrong shape")
        elif not np.any(mine[t.tensor]):
            words.append(f"{t.tensor} is all zeros (never added into?)")
        elif t.overall < 1e-6 and t.worst:
            index, a, b = t.worst
            small.append(t)
            words.append(
                f"{t.tensor} off by {t.overall:.2g} over the whole tensor, but by "
                f"{t.reference:.2g} at "
                f"entry {index} (yours {a:.10g}, right {b:.10g})"
            )
        else:
            words.append(f"{t.tensor} off by {t.overall:.2g}")
    text = ", ".join(words[:shown]) + (
        f" and {len(words) - shown} more" if len(words) > shown else ""
    )
    text += " (relative error, whole tensor)" if not small else ""
    right = [t.tensor for t in tensors if t.ok]
    if right:
        text += "; right: " + ", ".join(right[:shown]) + (", ..." if len(right) > shown else "")
    if small:
        text += ". " + TOLERANCE_WORDS.format(tolerance=PARITY_TOLERANCE)
    return text


def _wrong(verdict, message):
    verdict.status, verdict.message = "wrong", message
    return verdict


def _together_message(result, results):
    """Say which exercises the whole model waits for, or should be fixed first."""
    unfinished = list(
        dict.fromkeys(
            r.key.split(".")[0] for r in results if r.key != TOGETHER and r.status != "done"
        )
    )
    if result.status == "not started":
        result.message = f"waits for: {', '.join(unfinished)}" if unfinished else result.message
    elif result.status == "wrong" and unfinished and not result.message.startswith("fix "):
        result.message = f"fix {', '.join(unfinished)} first; " + result.message


def format_results(results, directory):
    """The check as a table a learner reads: number, exercise, status, where it went wrong."""
    lines = [
        f"Exercises in {directory}: your backward passes against the reference and finite "
        f"differences.",
        "What the statuses mean (yours are in the table below):",
        f"  done       every gradient within {PARITY_TOLERANCE:g} (relative) of both, entry by "
        "entry, under every",
        "             variant and both size sets, with and without hooks, with hooks that edit the",
        "             gradient or the pattern, in float64 and float32; every hook point handed its",
        "             gradient once; weights, cache and your inputs left as they were",
        "  numerical  your backward evaluates the forward",
        "  wrong      which tensors are off and by how much; [brackets] name the variant that "
        "failed",
        "hint: the mistake, where one fits exactly; inside: where your gradient first parts from "
        "the",
        "reference; output: what your code printed (abridged).",
        "",
    ]
    rows = [("#", "exercise", "status", "details")]
    notes = {}
    for result in results:
        details = result.message
        if result.status == "wrong" and result.variant not in ("", "default"):
            details = f"[{result.variant}] {details}"
        if result.status == "done":
            worst = max(result.tensors, key=lambda t: t.reference, default=None)
            worst_numeric = max(
                (t.numeric for t in result.tensors if t.numeric is not None), default=None
            )
            if worst is not None:
                details = f"reference {worst.reference:.0e}" + (
                    f", finite differences {worst_numeric:.0e}" if worst_numeric is not None else ""
                )
        if result.status == "not started" and result.key in BY_KEY:
            details = (
                f"{BY_KEY[result.key].file}: {result.cls}.backward still raises NotImplementedError"
            )
        label = result.key if result.key not in STEP_KEYS else "  " + result.key
        rows.append((number_of(result.key), label, result.status, details))
        notes[len(rows) - 1] = (
            ([f"hint: {result.hint}"] if result.hint else [])
            + ([f"inside: {result.parting}"] if result.parting else [])
            + (
                [f"output: {line}" for line in result.output.splitlines()[:4]]
                if result.output
                else []
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    indent = " " * (sum(widths) + 6)
    for index, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths)) + "  " + row[3])
        lines += [indent + note for note in notes.get(index, [])]
    counted = [r for r in results if r.key in BY_KEY or r.key in STEP_KEYS]
    done = sum(r.status == "done" for r in counted)
    lines.append("")
    following = next((r for r in counted if r.status != "done"), None)
    summary = f"{done} of {len(counted)} checked done."
    if following is not None:
        exercise = BY_KEY.get(following.key) or STEP_KEYS[following.key]
        summary += f" Next: {following.key} ({exercise.file}, {exercise.cls}.backward)."
    lines.append(summary)
    return "\n".join(lines)
