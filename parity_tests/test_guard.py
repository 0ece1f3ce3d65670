"""The boundary's declarations and its light guard (foundation/contract/boundary.py).

- every component method declares its arguments' kinds beside its signature, and a renamed
  argument fails when its class is defined, never losing its check;
- the non-finite guard costs the normal path one host synchronisation per forward and one per
  backward (counted here), and no tensor hook at a hook point without a hook;
- the three misses the NumPy twin once let through are refused or exact: weights changed between
  forward and backward, a backward hook that runs the model on other tokens, and a parameter
  gradient that overflows;
- ``CrossEntropyLoss(reduction="none")`` gives each token's loss, and its backward, in both twins.
Gradients are compared in float64 at parity's tolerance (helpers.py).
"""

import contextlib
import dataclasses

import numpy as np
import pytest
import torch

import numpy_impl as npi
import torch_impl as pti
from foundation.contract.boundary import NonFiniteError, boundary, guard_every_hook
from numpy_impl.optim import SGD
from parity_tests.helpers import assert_close, compare_grads, load_into_twin, randomize

BATCH, POS = 2, 5
CFG = npi.TransformerConfig(
    d_vocab=11, d_model=12, n_heads=3, d_head=4, d_mlp=14, n_layers=2, n_ctx=POS
)


def model_twins(cfg=CFG, seed=0):
    model = npi.Transformer(cfg, seed=seed)
    randomize(model, seed + 1)
    twin = pti.Transformer(cfg)
    load_into_twin(model, twin)
    return model, twin


def inputs(cfg=CFG, seed=2):
    rng = np.random.default_rng(seed)
    return rng.integers(0, cfg.d_vocab, (BATCH, POS)), rng.standard_normal(
        (BATCH, POS, cfg.d_vocab)
    )


# --- declarations ------------------------------------------------------------------------------


@pytest.mark.parametrize("package", [npi, pti], ids=["numpy", "torch"])
def test_a_renamed_argument_fails_when_its_class_is_defined(package):
    with pytest.raises(TypeError, match=r"takes \(resid\) but its boundary declares \(x\)"):

        class Renamed(package.FeedForward):
            @boundary(x="activation")
            def forward(self, resid):
                return resid


def test_an_unknown_kind_is_refused():
    with pytest.raises(TypeError, match="unknown kind"):
        boundary(x="activations")


def test_boundary_declares_a_forward_or_a_backward_only():
    def step(self, x):
        return x

    with pytest.raises(TypeError, match="boundary declares a forward or a backward only"):
        boundary(x="activation")(step)


@pytest.mark.parametrize("package", [npi, pti], ids=["numpy", "torch"])
def test_a_loss_without_logits_is_refused_at_the_call(package):
    encoder = package.Transformer(dataclasses.replace(CFG, unembed=False, causal=False))
    tokens, _ = inputs()
    for return_type in ("loss", "both"):
        with pytest.raises(ValueError, match=f"return_type='{return_type}' needs logits"):
            encoder(tokens, return_type=return_type)


@pytest.mark.parametrize("package", [npi, pti], ids=["numpy", "torch"])
def test_a_position_offset_must_be_an_int_at_or_above_zero(package):
    tokens, _ = inputs()
    tokens = tokens if package is npi else torch.from_numpy(tokens)
    pos_embed = package.LearnedPositionalEmbedding(CFG)
    for offset in (-1, True, 1.0):
        with pytest.raises(ValueError, match=r"past_kv_pos_offset must be an int >= 0"):
            pos_embed(tokens, offset)


def test_a_backward_after_stop_at_layer_is_refused():
    model, _ = model_twins()
    tokens, _ = inputs()
    resid = model(tokens, stop_at_layer=1)
    with pytest.raises(ValueError, match=r"backward after forward\(\.\.\., stop_at_layer=k\)"):
        model.backward(np.random.default_rng(3).standard_normal(resid.shape))


@pytest.mark.parametrize("package", [npi, pti], ids=["numpy", "torch"])
def test_every_component_method_declares_its_arguments(package):
    components = [
        value
        for value in vars(package).values()
        if isinstance(value, type)
        and issubclass(value, package.Module)
        and value is not package.Module
        and not issubclass(value, package.HookPoint)
    ]
    assert len(components) >= 10
    methods = ("forward", "backward") if package is npi else ("forward",)
    for cls in components:
        for name in methods:
            kinds = getattr(getattr(cls, name), "kinds", None)
            assert kinds is not None, f"{cls.__name__}.{name} declares nothing"


def test_a_declared_check_still_runs_at_the_user_s_call():
    cfg = CFG
    x = np.zeros((1, POS + 4, cfg.d_model))  # pos 9 > n_ctx 5
    with pytest.raises(ValueError, match=r"x has 9 positions but n_ctx is 5"):
        npi.FeedForward(cfg, rng=0).forward(x)
    with pytest.raises(ValueError, match=r"x has 9 positions but n_ctx is 5"):
        pti.FeedForward(cfg)(torch.from_numpy(x))


# --- the light guard ----------------------------------------------------------------------------


class Counter:
    """Counts the torch calls that read a value back to the host, and tensor hooks registered."""

    SYNCS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__")

    def __init__(self, monkeypatch):
        self.syncs, self.hooks = [], 0
        for name in self.SYNCS:
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._counted(name, original))
        register_hook = torch.Tensor.register_hook

        def counted_register_hook(tensor, hook):
            self.hooks += 1
            return register_hook(tensor, hook)

        monkeypatch.setattr(torch.Tensor, "register_hook", counted_register_hook)

    def _counted(self, name, original):
        def counted(tensor, *args, **kwargs):
            self.syncs.append(name)
            return original(tensor, *args, **kwargs)

        return counted


def test_a_twin_forward_and_backward_synchronise_once_each(monkeypatch):
    _, twin = model_twins()
    tokens, dout = inputs()
    dout_t = torch.from_numpy(dout)
    counter = Counter(monkeypatch)
    out = twin(tokens)
    forward_syncs, forward_hooks = len(counter.syncs), counter.hooks
    out.backward(dout_t)
    assert forward_syncs == 1, f"forward: {counter.syncs}"
    assert len(counter.syncs) == 2, f"forward + backward: {counter.syncs}"
    assert (
        forward_hooks == 1 and counter.hooks == 1
    )  # one, on the output: it starts the backward's look
    # with every hook point guarded, as before: a look (and a tensor hook) at every hook point
    counter.syncs.clear()
    counter.hooks = 0
    twin.zero_grad()
    with guard_every_hook():
        twin(tokens).backward(dout_t)
    # an alias is one point; embed.hook_in holds token ids, which have no gradient
    points = len({id(point) for name, point in twin.hook_dict.items() if name != "embed.hook_in"})
    assert len(counter.syncs) > 2 * points and counter.hooks >= points


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_guard_every_hook_names_what_the_replay_names():
    cfg = npi.TransformerConfig(
        d_vocab=13, d_model=12, n_heads=3, d_mlp=20, n_layers=1, n_ctx=POS, dtype="float32"
    )
    x = ((np.random.default_rng(0).standard_normal((BATCH, POS, cfg.d_model)) + 3.0) * 1e30).astype(
        "float32"
    )
    message = "LayerNorm.forward: hook_scale holds inf although every input and weight was finite"
    for layer_norm, x_in in ((npi.LayerNorm(cfg), x), (pti.LayerNorm(cfg), torch.from_numpy(x))):
        with pytest.raises(NonFiniteError, match=message):
            layer_norm(x_in)
        with guard_every_hook(), pytest.raises(NonFiniteError, match=message):
            layer_norm(x_in)


def test_a_nan_dloss_is_the_caller_s():
    loss = npi.CrossEntropyLoss()
    rng = np.random.default_rng(0)
    loss.forward(rng.standard_normal((BATCH, POS, 7)), rng.integers(0, 7, (BATCH, POS)))
    assert np.isnan(loss.backward(float("nan"))).all()


# --- the three misses ---------------------------------------------------------------------------


@pytest.mark.parametrize("change", ["SGD.step", "load_state_dict", "p.data -= ..."])
def test_weights_changed_between_forward_and_backward_are_refused(change):
    model, twin = model_twins()
    tokens, dout = inputs()
    other = {name: value * 1.5 for name, value in model.state_dict().items()}
    model.forward(tokens)
    if change == "SGD.step":
        model.backward(dout)
        SGD(model.parameters(), lr=0.1).step()
    elif change == "load_state_dict":
        model.load_state_dict(other)
    else:
        model.blocks[0].attn.W_Q.data -= 0.1
    with pytest.raises(
        ValueError, match=r"Transformer\.backward\(\): a weight was changed in place"
    ):
        model.backward(dout)
    # a fresh forward makes backward possible again
    model.forward(tokens)
    model.backward(dout)
    # the torch twin refuses the same
    out = twin(tokens)
    if change == "load_state_dict":
        twin.load_state_dict(other)
    else:
        with torch.no_grad():  # as an optimizer's step: every weight, in place
            for p in twin.parameters():
                p.mul_(1.5)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.backward(torch.from_numpy(dout))


@pytest.mark.parametrize(
    "point", ["blocks.1.hook_resid_post", "blocks.0.attn.hook_pattern", "hook_embed"]
)
def test_a_backward_hook_that_runs_the_model_on_other_tokens_is_exact(point):
    model, twin = model_twins()
    tokens, dout = inputs()
    other, _ = inputs(seed=7)
    model.zero_grad()
    model.run_with_hooks(tokens, dout=dout)
    expected = {name: p.grad.copy() for name, p in model.named_parameters()}
    for m in (model, twin):

        def run_other(grad, hook, m=m):
            m(other)  # another forward, inside the backward: the outer backward must not see it

        m.zero_grad()
        m.run_with_hooks(tokens, bwd_hooks=[(point, run_other)], dout=dout)
    for name, p in model.named_parameters():
        assert_close(
            f"{name}.grad against the run without the hook", p.grad, expected[name], "float64"
        )
    compare_grads(model, twin, "float64")


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_a_parameter_gradient_that_overflows_is_named():
    # W_U.grad = sum over batch and pos of x * dlogits: about 1e20 * 1e20 overflows float32,
    # while the logits (x W_U) and the input gradient (dlogits W_U^T) stay near 1e20
    cfg = npi.TransformerConfig(
        d_vocab=13, d_model=12, n_heads=3, d_mlp=20, n_layers=1, n_ctx=POS, dtype="float32"
    )
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((BATCH, POS, cfg.d_model)) * 1e20).astype("float32")
    dlogits = (rng.standard_normal((BATCH, POS, cfg.d_vocab)) * 1e20).astype("float32")
    unembed, unembed_t = npi.Unembed(cfg, rng=0), pti.Unembed(cfg)
    load_into_twin(unembed, unembed_t)
    message = (
        "Unembed.backward: the gradient of W_U holds (-)?inf although every input and "
        "weight was finite"
    )
    out = unembed.forward(x)
    assert np.isfinite(out).all()
    with pytest.raises(NonFiniteError, match=message):
        unembed.backward(dlogits)
    out_t = unembed_t(torch.from_numpy(x))
    with pytest.raises(NonFiniteError, match=message):
        out_t.backward(torch.from_numpy(dlogits))


# --- the per-token loss ---------------------------------------------------------------------------


def test_the_per_token_loss_and_its_backward_in_both_twins():
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((BATCH, POS, 11))
    targets = rng.integers(0, 11, (BATCH, POS))
    weights = rng.uniform(0.5, 1.5, (BATCH, POS))
    dloss = rng.standard_normal((BATCH, POS))
    loss_fn = npi.CrossEntropyLoss(reduction="none")
    loss = loss_fn.forward(logits, targets, weights)
    dlogits = loss_fn.backward(dloss)
    logits_t = torch.from_numpy(logits).requires_grad_(True)
    loss_t = pti.CrossEntropyLoss(reduction="none")(
        logits_t, torch.from_numpy(targets), torch.from_numpy(weights)
    )
    loss_t.backward(torch.from_numpy(dloss))
    reference = torch.nn.functional.cross_entropy(
        torch.from_numpy(logits).permute(0, 2, 1), torch.from_numpy(targets), reduction="none"
    ) * torch.from_numpy(weights)
    assert loss.shape == (BATCH, POS)
    assert_close("per-token loss against torch's cross_entropy", loss, reference.numpy(), "float64")
    assert_close("torch twin per-token loss", loss_t.detach().numpy(), loss, "float64")
    assert_close("logits gradient", dlogits, logits_t.grad.numpy(), "float64")
    with pytest.raises(ValueError, match="reduction must be 'mean' or 'none'"):
        npi.CrossEntropyLoss(reduction="sum")


def test_the_model_s_per_token_loss_backward_is_the_twin_s():
    model, twin = model_twins()
    tokens, _ = inputs()
    dloss = np.random.default_rng(4).standard_normal((BATCH, POS - 1))
    loss = model.forward(tokens, return_type="loss", loss_per_token=True)
    model.backward(dloss)
    loss_t = twin(tokens, return_type="loss", loss_per_token=True)
    loss_t.backward(torch.from_numpy(dloss))
    assert_close("per-token loss", loss, loss_t.detach().numpy(), "float64")
    compare_grads(model, twin, "float64")


@pytest.mark.parametrize("switch", ["default", "guard_every_hook"])
def test_a_nan_a_backward_hook_puts_in_is_the_hook_s(switch):
    """A backward hook that returns a NaN: what follows from it is not the formula's doing, so no
    NonFiniteError, by default or with every hook point guarded; the NaN reaches the gradients
    in both twins, as it would in plain autograd."""
    model, twin = model_twins()
    tokens, dout = inputs()

    def put_nan(grad, hook):
        grad = grad.clone() if isinstance(grad, torch.Tensor) else grad.copy()
        grad[0, 0, 0] = float("nan")
        return grad

    for m in (model, twin):
        m.zero_grad()
        with guard_every_hook() if switch == "guard_every_hook" else contextlib.nullcontext():
            m.run_with_hooks(tokens, bwd_hooks=[("blocks.1.hook_resid_mid", put_nan)], dout=dout)
        grads = [p.grad for _, p in m.named_parameters()]
        assert any(np.isnan(np.asarray(torch.as_tensor(g).detach())).any() for g in grads)
