"""The NumPy optimisers against torch.optim: the same gradients must give the same updates.

Each test builds a few float64 parameters of different shapes, gives the NumPy and torch
optimisers the same random gradients for several steps (with a learning rate that changes
between steps, as a schedule would), and compares the weights after every step.

Tolerance: both sides do the same float64 arithmetic in a slightly different order (torch
uses ``lerp`` and fused ``addcdiv``), so they differ by rounding only. We require
max |numpy - torch| / max |torch| <= 1e-12 over all parameters after each of 25 steps.
"""

import math

import numpy as np
import pytest
import torch

import numpy_impl as npi
from numpy_impl.module import Parameter
from numpy_impl.optim import SGD, Adam, AdamW, LambdaLR, clip_grad_norm, warmup_then
from parity_tests.helpers import (
    outcome,
    rel_err,
)

TOL = 1e-12
STEPS = 25
SHAPES = [(3, 5), (7,), (2, 4, 3)]


def make_twins(seed):
    """The same random float64 weights as NumPy Parameters and as torch leaf tensors."""
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(shape) for shape in SHAPES]
    numpy_params = [Parameter(a.copy()) for a in arrays]
    torch_params = [torch.tensor(a, requires_grad=True) for a in arrays]
    return numpy_params, torch_params


def set_random_grads(rng, numpy_params, torch_params, scale=1.0):
    for p, t in zip(numpy_params, torch_params):
        g = scale * rng.standard_normal(p.shape)
        p.grad[...] = g
        t.grad = torch.tensor(g)


def relative_gap(numpy_params, torch_params):
    gap = max(
        np.max(np.abs(p.data - t.detach().numpy())) for p, t in zip(numpy_params, torch_params)
    )
    size = max(np.max(np.abs(t.detach().numpy())) for t in torch_params)
    return gap / size


CASES = [
    ("sgd", SGD, torch.optim.SGD, dict(lr=0.1)),
    ("sgd momentum", SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9)),
    ("sgd momentum + L2", SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.8, weight_decay=0.1)),
    ("adam", Adam, torch.optim.Adam, dict(lr=1e-2)),
    ("adam betas eps", Adam, torch.optim.Adam, dict(lr=3e-2, betas=(0.8, 0.95), eps=1e-6)),
    ("adam + L2", Adam, torch.optim.Adam, dict(lr=1e-2, weight_decay=0.05)),
    ("adamw", AdamW, torch.optim.AdamW, dict(lr=1e-2)),
    (
        "adamw strong decay",
        AdamW,
        torch.optim.AdamW,
        dict(lr=2e-2, betas=(0.9, 0.99), weight_decay=0.3),
    ),
]


@pytest.mark.parametrize("name,numpy_cls,torch_cls,kwargs", CASES, ids=[c[0] for c in CASES])
def test_optimizer_matches_torch(name, numpy_cls, torch_cls, kwargs):
    numpy_params, torch_params = make_twins(seed=1)
    numpy_opt = numpy_cls(numpy_params, **kwargs)
    torch_opt = torch_cls(torch_params, **kwargs, foreach=False)
    rng = np.random.default_rng(2)
    worst = 0.0
    for step in range(STEPS):
        # Vary the gradient scale over orders of magnitude: Adam's eps only matters when small.
        set_random_grads(rng, numpy_params, torch_params, scale=10.0 ** rng.uniform(-4, 1))
        lr = kwargs["lr"] * (0.5 + step / STEPS)  # a changing learning rate, as a schedule gives
        numpy_opt.lr = lr
        for group in torch_opt.param_groups:
            group["lr"] = lr
        numpy_opt.step()
        torch_opt.step()
        worst = max(worst, relative_gap(numpy_params, torch_params))
    assert worst <= TOL, f"{name}: worst relative gap {worst:.2e} > {TOL:.0e}"
    # And the weights really moved: a no-op optimiser would pass the comparison above.
    start, _ = make_twins(seed=1)
    moved = max(np.max(np.abs(p.data - s.data)) for p, s in zip(numpy_params, start))
    assert moved > 1e-3


def test_named_parameters_accepted():
    """An optimiser may take ``model.named_parameters()``-style (name, Parameter) pairs."""
    numpy_params, _ = make_twins(seed=3)
    by_list = Adam([Parameter(p.data.copy()) for p in numpy_params], lr=0.1)
    by_name = Adam([(f"p{i}", p) for i, p in enumerate(numpy_params)], lr=0.1)
    rng = np.random.default_rng(4)
    for p, q in zip(by_list.params, by_name.params):
        q.grad[...] = p.grad[...] = rng.standard_normal(p.shape)
    by_list.step()
    by_name.step()
    assert (
        max(np.max(np.abs(p.data - q.data)) for p, q in zip(by_list.params, by_name.params)) == 0.0
    )


def test_zero_grad_clears_every_gradient():
    numpy_params, _ = make_twins(seed=5)
    opt = SGD(numpy_params, lr=0.1)
    for p in numpy_params:
        p.grad[...] = 1.5
    opt.zero_grad()
    assert all(np.max(np.abs(p.grad)) == 0.0 for p in numpy_params)


@pytest.mark.parametrize("max_norm", [0.5, 1e3], ids=["clips", "leaves alone"])
def test_clip_grad_norm_matches_torch(max_norm):
    numpy_params, torch_params = make_twins(seed=6)
    set_random_grads(np.random.default_rng(7), numpy_params, torch_params, scale=3.0)
    numpy_norm = clip_grad_norm(numpy_params, max_norm)
    torch_norm = torch.nn.utils.clip_grad_norm_(torch_params, max_norm, foreach=False).item()
    assert abs(numpy_norm - torch_norm) <= TOL * torch_norm
    gap = max(np.max(np.abs(p.grad - t.grad.numpy())) for p, t in zip(numpy_params, torch_params))
    size = max(np.max(np.abs(t.grad.numpy())) for t in torch_params)
    assert gap <= TOL * size
    clipped = math.sqrt(sum(np.sum(p.grad**2) for p in numpy_params))
    assert clipped <= max_norm * (1 + 1e-9)


@pytest.mark.parametrize(
    "warmup,total,decay,final",
    [
        (10, None, "constant", 0.0),
        (10, 40, "cosine", 0.0),
        (5, 30, "cosine", 0.1),
        (0, 20, "cosine", 0.0),
    ],
)
def test_schedule_matches_torch_lambda_lr(warmup, total, decay, final):
    """The NumPy LambdaLR gives torch's learning rate at every step (the same lambda drives
    both)."""
    factor = warmup_then(warmup, total_steps=total, decay=decay, final_factor=final)
    numpy_params, torch_params = make_twins(seed=8)
    numpy_opt = Adam(numpy_params, lr=0.01)
    torch_opt = torch.optim.Adam(torch_params, lr=0.01)
    numpy_sched = LambdaLR(numpy_opt, factor)
    torch_sched = torch.optim.lr_scheduler.LambdaLR(torch_opt, factor)
    lrs = []
    for _ in range(50):
        assert abs(numpy_opt.lr - torch_opt.param_groups[0]["lr"]) <= 1e-15
        lrs.append(numpy_opt.lr)
        torch_opt.step()  # torch warns if the scheduler steps before the optimiser
        numpy_sched.step()
        torch_sched.step()
    # The shape itself: a rise over the warm-up, the full rate at its end, then flat or falling.
    if warmup:
        assert lrs[0] == pytest.approx(0.01 / warmup, rel=1e-12)
        assert np.all(np.diff(lrs[:warmup]) > 0)
    assert lrs[warmup] == pytest.approx(0.01, rel=1e-12)
    if decay == "constant":
        assert lrs[-1] == pytest.approx(0.01, rel=1e-12)
    else:
        assert np.all(np.diff(lrs[warmup:total]) < 0)
        assert lrs[-1] == pytest.approx(0.01 * final, abs=1e-15)


@pytest.mark.parametrize(
    "build,message",
    [
        (lambda ps: SGD(ps, lr=-0.1), "lr"),
        (lambda ps: SGD(ps, lr=0.1, momentum=1.0), "momentum"),
        (lambda ps: Adam(ps, betas=(0.9, 1.0)), r"betas\[1\]"),
        (lambda ps: Adam(ps, betas=0.9), "betas"),
        (lambda ps: Adam(ps, eps="small"), "eps"),
        (lambda ps: AdamW(ps, weight_decay=-1), "weight_decay"),
        (lambda ps: Adam([], lr=0.1), "params"),
        (lambda ps: Adam(ps[0], lr=0.1), "params"),
        (lambda ps: Adam([ps[0].data], lr=0.1), "params"),
        (lambda ps: Adam([ps[0], ps[0]], lr=0.1), "params"),
        (lambda ps: clip_grad_norm(ps, 0.0), "max_norm"),
        (lambda ps: warmup_then(-1), "warmup_steps"),
        (lambda ps: warmup_then(10, decay="linear"), "decay"),
        (lambda ps: warmup_then(10, total_steps=None, decay="cosine"), "total_steps"),
        (lambda ps: warmup_then(10, total_steps=10, decay="cosine"), "total_steps"),
        (lambda ps: LambdaLR(ps, lambda s: 1.0), "optimizer"),
    ],
)
def test_bad_input_names_the_argument(build, message):
    numpy_params, _ = make_twins(seed=9)
    with pytest.raises((ValueError, TypeError), match=message):
        build(numpy_params)


# ---------------------------------------------------------------- bad arguments, and gradients at
# the dtype's edges


def params():
    return [npi.Parameter(np.zeros(3))]


OPTIMIZER_BAD = {
    "Adam eps=0": lambda: Adam(params(), eps=0.0),
    "AdamW eps=0": lambda: AdamW(params(), eps=0),
    "Adam eps<0": lambda: Adam(params(), eps=-1e-8),
    "Adam eps=nan": lambda: Adam(params(), eps=float("nan")),
    "Adam lr=nan": lambda: Adam(params(), lr=float("nan")),
    "Adam lr=inf": lambda: Adam(params(), lr=float("inf")),
    "Adam lr=-1": lambda: Adam(params(), lr=-1.0),
    "Adam lr as str": lambda: Adam(params(), lr="0.1"),
    "Adam lr as array": lambda: Adam(params(), lr=np.array([0.1])),
    "Adam betas=1": lambda: Adam(params(), betas=(0.9, 1.0)),
    "Adam betas as str": lambda: Adam(params(), betas="ab"),
    "Adam betas three": lambda: Adam(params(), betas=(0.9, 0.99, 0.9)),
    "Adam weight_decay=-1": lambda: Adam(params(), weight_decay=-1),
    "SGD momentum=1": lambda: SGD(params(), lr=0.1, momentum=1.0),
    "SGD momentum=nan": lambda: SGD(params(), lr=0.1, momentum=float("nan")),
    "SGD no params": lambda: SGD([], lr=0.1),
    "SGD params a dict": lambda: SGD({"a": 1}, lr=0.1),
    "SGD params an array": lambda: SGD(np.zeros(3), lr=0.1),
    "SGD lr bool": lambda: SGD(params(), lr=True),
    "clip max_norm=0": lambda: clip_grad_norm(params(), 0.0),
    "clip max_norm=nan": lambda: clip_grad_norm(params(), float("nan")),
    "clip max_norm str": lambda: clip_grad_norm(params(), "1"),
    "LambdaLR lambda returns str": lambda: LambdaLR(SGD(params(), lr=0.1), lambda step: "x"),
    "LambdaLR lambda returns nan": lambda: LambdaLR(
        SGD(params(), lr=0.1), lambda step: float("nan")
    ),
    "LambdaLR lambda returns -1": lambda: LambdaLR(SGD(params(), lr=0.1), lambda step: -1.0),
    "LambdaLR not callable": lambda: LambdaLR(SGD(params(), lr=0.1), 3),
}


@pytest.mark.parametrize("case", sorted(OPTIMIZER_BAD))
def test_optimiser_arguments_of_the_wrong_kind(case):
    kind, message = outcome(OPTIMIZER_BAD[case])
    assert kind in ("TypeError", "ValueError"), (kind, message)


def test_adam_with_a_zero_gradient_stays_finite():
    p = npi.Parameter(np.ones(3))
    optimizer = Adam([p], lr=0.1)
    optimizer.step()
    assert np.all(np.isfinite(p.data))


@pytest.mark.parametrize(
    "dtype,size",
    [
        ("float64", 1e200),
        ("float64", 1e300),
        ("float32", 1e30),
        ("float32", 1e37),
        ("float64", 1e-300),
    ],
)
def test_clip_grad_norm_of_huge_or_tiny_gradients(dtype, size):
    params = [npi.Parameter(np.zeros((3, 4), dtype=dtype)), npi.Parameter(np.zeros(5, dtype=dtype))]
    rng = np.random.default_rng(0)
    for p in params:
        p.grad[...] = rng.standard_normal(p.shape) * size
    directions = [p.grad.astype(np.float64) / size for p in params]
    originals = [p.grad.copy() for p in params]
    total = clip_grad_norm(params, max_norm=1.0)
    true_norm = np.sqrt(sum((d**2).sum() for d in directions))
    clipped = np.sqrt(sum((p.grad.astype(np.float64) ** 2).sum() for p in params))
    for p in params:
        assert np.all(np.isfinite(p.grad))
    if size > 1:
        assert abs(clipped - 1.0) < 1e-5
        for p, d in zip(params, directions):  # the direction is kept
            assert rel_err(p.grad / clipped, d / true_norm) < 1e-5
    else:  # no clipping below max_norm
        assert all(np.array_equal(p.grad, original) for p, original in zip(params, originals))
    expected_total = true_norm * size
    if np.isfinite(np.array(expected_total, dtype=np.float64)):
        assert abs(total - expected_total) <= 1e-5 * expected_total
