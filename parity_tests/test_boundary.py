"""The boundary (foundation/contract/boundary.py): bodies that are only the formulas, and no aliasing.

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
from parity_tests.helpers import assert_close, compare_grads, make_cfg, twins

ROOT = Path(__file__).resolve().parent.parent
COMPONENT_FILES = ["attention", "block", "embedding", "feedforward", "layernorm", "loss", "model", "positional", "unembed"]
BATCH, POS = 2, 5
BASE = dict(d_mlp=14, n_ctx=POS)  # make_cfg's changes for these tests




def checks_in_bodies(source):
    """Each call of a check, and each raise, inside a forward or backward of ``source``'s classes."""
    found = []
    for cls in (node for node in ast.parse(source).body if isinstance(node, ast.ClassDef)):
        for method in (item for item in cls.body if isinstance(item, ast.FunctionDef)):
            if method.name not in ("forward", "backward"):
                continue
            for node in ast.walk(method):
                called = node.func.attr if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) else (
                    node.func.id if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) else "")
                if isinstance(node, ast.Raise) or called.startswith(("check_", "_check")) or called == "tokens_as_array":
                    found.append(f"{cls.name}.{method.name} line {node.lineno}")
    return found


@pytest.mark.parametrize("package", ["numpy_impl", "torch_impl"])
@pytest.mark.parametrize("name", COMPONENT_FILES)
def test_component_bodies_hold_no_check_and_no_raise(package, name):
    found = checks_in_bodies((ROOT / package / f"{name}.py").read_text())
    assert not found, f"{package}/{name}.py: checks or raises inside a body: {found}"


def test_the_detector_finds_a_check_in_a_body():
    """The scan above, on bodies that still check or raise: each is found, at its line; a clean body is not."""
    def body(*lines):
        return "class A:\n    def helper(self, x):\n        check_x(x)\n    def forward(self, x):\n" + "".join(
            f"        {line}\n" for line in lines)

    assert checks_in_bodies(body("check_activation(x, 'x', self.cfg, None)", "return x")) == ["A.forward line 5"]
    assert checks_in_bodies(body("y = x", "self._check_shape(y)", "return y")) == ["A.forward line 6"]
    assert checks_in_bodies(body("tokens = tokens_as_array(x)", "return x")) == ["A.forward line 5"]
    assert checks_in_bodies(body("if x is None:", "    raise ValueError('x')", "return x")) == ["A.forward line 6"]
    assert checks_in_bodies(body("y = x * 2  # check_ in a comment is no call", "return y")) == []


@pytest.mark.parametrize("name, overrides", [
    ("Unembed", {}),
    ("MultiHeadAttention", {}),
    ("FeedForward", {}),
    ("TransformerBlock", dict(normalization=None)),
    ("LayerNorm", {}),
])
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
    loss_t = pti.CrossEntropyLoss()(logits_t, torch.from_numpy(expected_targets), torch.from_numpy(expected_weights))
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


@pytest.mark.parametrize("name", ["LayerNorm", "MultiHeadAttention", "FeedForward", "Unembed", "TransformerBlock"])
@pytest.mark.parametrize("normalization", ["pre", "post", None])
def test_outputs_share_no_memory_with_what_forward_saved(name, normalization):
    cfg = make_cfg(BASE, normalization=normalization)
    module = getattr(npi, name)(cfg, rng=0)
    x = np.random.default_rng(4).standard_normal((BATCH, POS, cfg.d_model))
    out = module.forward(x)
    saved = []
    for _, sub in module.named_modules():
        cache = vars(sub).get("cache")
        saved += [a for a in (cache if isinstance(cache, tuple) else (cache,)) if isinstance(a, np.ndarray)]
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
