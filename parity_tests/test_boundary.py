"""The boundary (foundation/contract/boundary.py): bodies that are only the formulas, and no
aliasing.

Every check, copy and guard lives where every call passes (each twin's ``Module``), so:
- no component body in either twin calls a check or raises;
- changing an input in place after ``forward`` does not change the NumPy gradients (the
  boundary copied it; torch's autograd refuses such a backward instead);
- a hook that returns one reused buffer at every layer leaves nothing behind in the caches;
- what a forward returns never shares memory with what it saved for its backward.
Gradients are compared to the twin's in float64 at parity's tolerance (helpers.py).
"""

import ast
import inspect
from pathlib import Path

import numpy as np
import pytest
import torch

import numpy_impl as npi
import torch_impl as pti
from parity_tests.helpers import (
    CFG,
    TOKENS,
    assert_close,
    assert_same_grads,
    compare_grads,
    grads,
    make_cfg,
    parametrize_pairwise,
    random_dout,
    randomize,
    twins,
)

OTHER_TOKENS = np.array([[9, 8, 7, 6], [0, 1, 0, 1]])

ROOT = Path(__file__).resolve().parent.parent
COMPONENT_FILES = [
    "attention",
    "block",
    "embedding",
    "feedforward",
    "layernorm",
    "loss",
    "model",
    "positional",
    "unembed",
]
BATCH, POS = 2, 5
BASE = dict(d_mlp=14, n_ctx=POS)  # make_cfg's changes for these tests


def checks_in_bodies(source):
    """Each call of a check, and each raise, inside a forward or backward of ``source``'s
    classes."""
    found = []
    for cls in (node for node in ast.parse(source).body if isinstance(node, ast.ClassDef)):
        for method in (item for item in cls.body if isinstance(item, ast.FunctionDef)):
            if method.name not in ("forward", "backward"):
                continue
            for node in ast.walk(method):
                called = (
                    node.func.attr
                    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    else (
                        node.func.id
                        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                        else ""
                    )
                )
                if (
                    isinstance(node, ast.Raise)
                    or called.startswith(("check_", "_check"))
                    or called == "tokens_as_array"
                ):
                    found.append(f"{cls.name}.{method.name} line {node.lineno}")
    return found


@pytest.mark.parametrize("package", ["numpy_impl", "torch_impl"])
@pytest.mark.parametrize("name", COMPONENT_FILES)
def test_component_bodies_hold_no_check_and_no_raise(package, name):
    found = checks_in_bodies((ROOT / package / f"{name}.py").read_text())
    assert not found, f"{package}/{name}.py: checks or raises inside a body: {found}"


def test_the_detector_finds_a_check_in_a_body():
    """The scan above, on bodies that still check or raise: each is found, at its line; a clean body
    is not."""

    def body(*lines):
        return (
            "class A:\n    def helper(self, x):\n        check_x(x)\n    def forward(self, x):\n"
            + "".join(f"        {line}\n" for line in lines)
        )

    assert checks_in_bodies(body("check_activation(x, 'x', self.cfg, None)", "return x")) == [
        "A.forward line 5"
    ]
    assert checks_in_bodies(body("y = x", "self._check_shape(y)", "return y")) == [
        "A.forward line 6"
    ]
    assert checks_in_bodies(body("tokens = tokens_as_array(x)", "return x")) == ["A.forward line 5"]
    assert checks_in_bodies(body("if x is None:", "    raise ValueError('x')", "return x")) == [
        "A.forward line 6"
    ]
    assert checks_in_bodies(body("y = x * 2  # check_ in a comment is no call", "return y")) == []


@pytest.mark.parametrize(
    "name, overrides",
    [
        ("Unembed", {}),
        ("MultiHeadAttention", {}),
        ("FeedForward", {}),
        ("TransformerBlock", dict(normalization=None)),
        ("LayerNorm", {}),
    ],
)
def test_changing_x_after_forward_changes_no_gradient(name, overrides):
    cfg = make_cfg(BASE, **overrides)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, POS, cfg.d_model))
    out_shape = (BATCH, POS, cfg.d_vocab if name == "Unembed" else cfg.d_model)
    dout = rng.standard_normal(out_shape)
    np_module, torch_module = twins(cfg, name, seed=1)
    out = np_module.forward(x)
    x += 100.0  # the caller reuses its array before backward
    dx = np_module.backward(dout)
    x_t = torch.from_numpy(x - 100.0).requires_grad_(True)
    out_t = torch_module(x_t)
    out_t.backward(torch.from_numpy(dout))
    assert_close(f"{name} output", out, out_t.detach().numpy(), "float64")
    assert_close(f"{name} input gradient", dx, x_t.grad.numpy(), "float64")
    compare_grads(np_module, torch_module, "float64")


def test_torch_refuses_a_backward_through_x_changed_in_place():
    _, torch_module = twins(make_cfg(BASE), "FeedForward", seed=1)
    x_t = torch.randn(BATCH, POS, 12, dtype=torch.float64, requires_grad=True)
    x_leaf = x_t * 1.0
    out = torch_module(x_leaf)
    with torch.no_grad():
        x_leaf += 1.0
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.backward(torch.ones_like(out) * 0.5)


def test_changing_targets_and_weights_after_the_loss_changes_no_gradient():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((BATCH, POS, 11))
    targets = rng.integers(0, 11, (BATCH, POS))
    weights = rng.uniform(0.5, 1.5, (BATCH, POS))
    loss_fn = npi.CrossEntropyLoss()
    loss = loss_fn.forward(logits, targets, weights)
    expected_targets, expected_weights = targets.copy(), weights.copy()
    targets[:] = 0
    weights[:] = 1.0
    dlogits = loss_fn.backward(0.7)
    logits_t = torch.from_numpy(logits).requires_grad_(True)
    loss_t = pti.CrossEntropyLoss()(
        logits_t, torch.from_numpy(expected_targets), torch.from_numpy(expected_weights)
    )
    loss_t.backward(torch.tensor(0.7, dtype=torch.float64))
    assert_close("loss", loss, loss_t.detach().numpy(), "float64")
    assert_close("logits gradient", dlogits, logits_t.grad.numpy(), "float64")


def test_a_hook_returning_one_buffer_for_every_layer_leaves_the_caches_alone():
    cfg = make_cfg(BASE, n_layers=3, normalization="pre")
    model, twin = twins(cfg, seed=1)
    tokens = np.random.default_rng(2).integers(0, cfg.d_vocab, (BATCH, POS))
    dout = np.random.default_rng(3).standard_normal((BATCH, POS, cfg.d_vocab))
    buffer = {}

    def reuse(z, hook):
        array = buffer.setdefault("z", np.empty(tuple(z.shape)))
        array[...] = z.detach().numpy() if hasattr(z, "detach") else z
        array[..., 0] *= 0.5  # an edit, so the hook's value replaces the activation
        return array if isinstance(z, np.ndarray) else torch.from_numpy(array)

    for i in range(cfg.n_layers):
        model.blocks[i].attn.hook_z.add_hook(reuse)
        twin.blocks[i].attn.hook_z.add_hook(reuse)
    model.forward(tokens)
    model.backward(dout)
    buffer.clear()
    twin(tokens).backward(torch.from_numpy(dout))
    compare_grads(model, twin, "float64")


@pytest.mark.parametrize(
    "name", ["LayerNorm", "MultiHeadAttention", "FeedForward", "Unembed", "TransformerBlock"]
)
@pytest.mark.parametrize("normalization", ["pre", "post", None])
def test_outputs_share_no_memory_with_what_forward_saved(name, normalization):
    cfg = make_cfg(BASE, normalization=normalization)
    module = getattr(npi, name)(cfg, rng=0)
    x = np.random.default_rng(4).standard_normal((BATCH, POS, cfg.d_model))
    out = module.forward(x)
    saved = []
    for _, sub in module.named_modules():
        cache = vars(sub).get("cache")
        saved += [
            a
            for a in (cache if isinstance(cache, tuple) else (cache,))
            if isinstance(a, np.ndarray)
        ]
    assert saved or name == "TransformerBlock"
    assert not any(np.shares_memory(out, a) for a in saved + [x])


def test_the_model_s_tokens_are_its_own():
    cfg = make_cfg(BASE, positional="learned")
    model, twin = twins(cfg, seed=1)
    tokens = np.random.default_rng(5).integers(0, cfg.d_vocab, (BATCH, POS))
    dout = np.random.default_rng(6).standard_normal((BATCH, POS, cfg.d_vocab))
    model.forward(tokens)
    expected = tokens.copy()
    tokens[:] = 0
    model.backward(dout)
    twin(expected).backward(torch.from_numpy(dout))
    compare_grads(model, twin, "float64")


def test_the_boundary_wraps_every_forward_and_backward():
    for cls in (npi.LayerNorm, npi.MultiHeadAttention, npi.Transformer, npi.CrossEntropyLoss):
        assert cls.forward.__name__ == "forward" and hasattr(cls.forward, "__wrapped__")
        assert hasattr(cls.backward, "__wrapped__")
    for cls in (pti.LayerNorm, pti.MultiHeadAttention, pti.Transformer, pti.CrossEntropyLoss):
        assert hasattr(cls.forward, "__wrapped__")
    # the bodies' own signatures are what help() shows
    assert list(inspect.signature(npi.LayerNorm.forward).parameters) == ["self", "x"]


# ---------------------------------------------------------------- stale state: a backward that does
# not belong to the last forward


def test_backward_before_forward():
    with pytest.raises(ValueError, match=r"Transformer.backward\(\) called before"):
        npi.Transformer(CFG).backward(np.zeros((1, 2, 11)))
    with pytest.raises(ValueError, match=r"LayerNorm.backward\(\) called before"):
        npi.LayerNorm(CFG).backward(np.zeros((1, 2, 12)))
    with pytest.raises(ValueError, match=r"CrossEntropyLoss.backward\(\) called before"):
        npi.CrossEntropyLoss().backward()


def test_backward_from_a_hook_inside_its_own_forward_is_refused():
    model, _ = twins()

    def backward_now(x, hook):
        model.backward(random_dout((2, 4, 11)))

    with pytest.raises(ValueError, match=r"Transformer.backward\(\) called while .* still running"):
        model.run_with_hooks(TOKENS, fwd_hooks=[("blocks.0.hook_resid_mid", backward_now)])


class Boom(Exception):
    pass


def raise_boom(x, hook):
    raise Boom(hook.name)


def component_cases():
    """(name, component, good input, other input of the same shape, the hook point to break or
    None)."""
    cfgs = {
        "pre": CFG,
        "post": make_cfg(n_layers=1, normalization="post"),
        "none-relu": make_cfg(n_layers=1, normalization=None, act_fn="relu"),
        "attn-only": make_cfg(n_layers=1, attn_only=True),
    }
    rng = np.random.default_rng(0)
    x1, x2 = rng.standard_normal((2, 2, 4, 12))
    cases = [
        ("LayerNorm", npi.LayerNorm(CFG), x1, x2, "hook_normalized"),
        ("MultiHeadAttention", npi.MultiHeadAttention(CFG, 0), x1, x2, "hook_pattern"),
        ("FeedForward", npi.FeedForward(CFG, 0), x1, x2, "hook_post"),
        ("FeedForward-relu", npi.FeedForward(cfgs["none-relu"], 0), x1, x2, "hook_pre"),
        ("Unembed", npi.Unembed(CFG, 0), x1, x2, None),
        ("TokenEmbedding", npi.TokenEmbedding(CFG, 0), TOKENS, OTHER_TOKENS, None),
        (
            "LearnedPositionalEmbedding",
            npi.LearnedPositionalEmbedding(CFG, 0),
            TOKENS,
            OTHER_TOKENS,
            None,
        ),
        (
            "SinusoidalPositionalEncoding",
            npi.SinusoidalPositionalEncoding(CFG),
            TOKENS,
            OTHER_TOKENS,
            None,
        ),
    ]
    for key, cfg in cfgs.items():
        block = npi.TransformerBlock(cfg, 0)
        point = "hook_resid_post" if cfg.attn_only else "hook_mlp_out"
        cases.append((f"TransformerBlock-{key}", block, x1, x2, point))
        cases.append(
            (f"TransformerBlock-{key}-attn", npi.TransformerBlock(cfg, 0), x1, x2, "attn.hook_z")
        )
    return cases


COMPONENTS = component_cases()


def hook_point(module, dotted):
    for name in dotted.split("."):
        module = getattr(module, name)
    return module


@pytest.mark.parametrize("case", COMPONENTS, ids=[c[0] for c in COMPONENTS])
def test_backward_after_a_forward_that_raised_is_refused(case):
    name, module, good, other, point = case
    randomize(module, seed=3)
    out = module(good)
    if point is None:
        # fails the input check
        bad = other[..., :1] if other.ndim == 3 else np.full_like(other, 99)
        with pytest.raises((ValueError, TypeError)):
            module(bad)
    else:
        hook_point(module, point).add_hook(raise_boom)
        with pytest.raises(Boom):
            module(other)
        hook_point(module, point).remove_hooks()
    dout = random_dout(out.shape)
    component = name.split("-")[0]
    with pytest.raises(ValueError, match=rf"{component}\.backward\(\).*{component}\.forward\(\)"):
        module.backward(dout)


@pytest.mark.parametrize(
    "point",
    ["hook_embed", "blocks.0.attn.hook_pattern", "blocks.1.mlp.hook_post", "ln_final.hook_scale"],
)
def test_model_backward_after_a_forward_that_raised_is_refused(point):
    model, _ = twins()
    out = model(TOKENS)
    with pytest.raises(Boom):
        model.run_with_hooks(OTHER_TOKENS, fwd_hooks=[(point, raise_boom)])
    with pytest.raises(ValueError, match=r"Transformer\.backward\(\).*Transformer\.forward\(\)"):
        model.backward(random_dout(out.shape))
    # a fresh forward makes backward possible again, and right
    out = model(OTHER_TOKENS)
    model.backward(random_dout(out.shape))


def test_loss_backward_after_a_forward_that_raised_is_refused():
    loss = npi.CrossEntropyLoss()
    logits = random_dout((2, 4, 11))
    loss(logits, TOKENS % 11)
    with pytest.raises(ValueError):
        loss(logits, np.full((2, 4), 11))
    with pytest.raises(
        ValueError, match=r"CrossEntropyLoss\.backward\(\).*CrossEntropyLoss\.forward\(\)"
    ):
        loss.backward()


NESTED_POINTS = [
    "hook_embed",
    "blocks.0.hook_resid_mid",
    "blocks.1.hook_resid_pre",
    "blocks.1.attn.hook_q",
    "blocks.1.hook_resid_post",
    "ln_final.hook_normalized",
]


@parametrize_pairwise(
    side=["numpy", "torch"],
    inner=["forward", "run_with_cache", "run_with_hooks"],
    point=NESTED_POINTS,
)
def test_a_hook_that_runs_the_same_model_again(point, inner, side):
    """The outer backward's gradients are those of the run without the nested one."""
    np_model, torch_model = twins()
    model = np_model if side == "numpy" else torch_model
    dout = random_dout((2, 4, 11))
    model.zero_grad()
    model.run_with_hooks(TOKENS, dout=dout)
    expected = grads(model)
    calls = []

    def run_again(x, hook):
        if not calls:  # once: the hook is still on during the inner run
            calls.append(hook.name)
            if inner == "forward":
                model(OTHER_TOKENS)
            elif inner == "run_with_cache":
                model.run_with_cache(OTHER_TOKENS)
            else:
                model.run_with_hooks(
                    OTHER_TOKENS, fwd_hooks=[("blocks.0.hook_attn_out", lambda a, hook: a * 0)]
                )

    model.zero_grad()
    model.run_with_hooks(TOKENS, fwd_hooks=[(point, run_again)], dout=dout)
    assert calls == [model.hook_dict[point].name]  # hook_embed is embed.hook_out (an alias), ...
    assert_same_grads(grads(model), expected)


def test_a_backward_of_the_inner_run_inside_a_hook():
    """Exact in both twins: the inner run's backward and the outer one's add into the gradients."""
    np_model, torch_model = twins()
    dout = random_dout((2, 4, 11))
    for model in (np_model, torch_model):
        calls = []

        def inner_backward(x, hook, model=model, calls=calls):
            if not calls:
                calls.append(hook.name)
                model.run_with_cache(OTHER_TOKENS, incl_bwd=True)

        model.zero_grad()
        model.run_with_hooks(
            TOKENS, fwd_hooks=[("blocks.1.hook_resid_pre", inner_backward)], dout=dout
        )
        assert calls == ["blocks.1.hook_in"]  # the alias's point, under its own name
    assert_same_grads(grads(np_model), grads(torch_model))
