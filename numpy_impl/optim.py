"""Optimisers, gradient clipping and a learning-rate schedule, written out in NumPy.

This file has no twin in ``torch_impl``: its twin is ``torch.optim`` itself. Each one is the
update rule ``torch.optim`` documents, one operation per line, so the torch side of training
simply uses ``torch.optim`` and the tests check that the same gradients give the same updates
(``parity_tests/test_optim.py``).

Arrays here have the shape of the parameter they belong to, so there are no named axes:
``param``, ``grad``, and the optimiser's running averages ``m`` and ``v`` all share one shape.

Usage, as with ``torch.optim``::

    optimizer = Adam(model.named_parameters(), lr=1e-2)
    schedule = LambdaLR(optimizer, warmup_then(100, total_steps=2000, decay="cosine"))
    for batch in batches:
        optimizer.zero_grad()
        ... forward, backward ...
        clip_grad_norm(model.parameters(), max_norm=1.0)
        optimizer.step()
        schedule.step()
"""

from __future__ import annotations

import math

import numpy as np

from .module import Parameter


class Optimizer:
    """What every optimiser shares: the parameter list, ``lr``, and ``zero_grad``."""

    def __init__(self, params, lr: float):
        self.params = _parameter_list(params)
        self.lr = _check_number("lr", lr, low=0.0)

    def zero_grad(self):
        """Reset every gradient to zero (``backward`` accumulates into them until then)."""
        for p in self.params:
            p.grad[...] = 0

    def step(self):
        raise NotImplementedError


class SGD(Optimizer):
    """Stochastic gradient descent with (heavy-ball) momentum, as ``torch.optim.SGD``.

        g = grad + weight_decay * param        (L2 penalty folded into the gradient)
        m = momentum * m + g                   (m starts at 0, so the first m is g)
        param = param - lr * m

    Polyak (1964), "Some methods of speeding up the convergence of iteration methods";
    the form above is the one torch uses (Sutskever et al. 2013, without Nesterov).
    """

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        super().__init__(params, lr)
        self.momentum = _check_number("momentum", momentum, low=0.0, high=1.0, high_open=True)
        self.weight_decay = _check_number("weight_decay", weight_decay, low=0.0)
        self.m = [np.zeros_like(p.data) for p in self.params]

    def step(self):
        for p, m in zip(self.params, self.m):
            g = p.grad + self.weight_decay * p.data
            m *= self.momentum
            m += g
            p.data -= self.lr * m


class Adam(Optimizer):
    """Adam, as ``torch.optim.Adam`` (Kingma & Ba 2015, "Adam", Algorithm 1).

    t = t + 1
    g = grad + weight_decay * param        (L2 penalty folded into the gradient)
    m = beta1 * m + (1 - beta1) * g        (running mean of the gradient)
    v = beta2 * v + (1 - beta2) * g * g    (running mean of its square)
    m_hat = m / (1 - beta1 ** t)           (undo the bias of starting at zero)
    v_hat = v / (1 - beta2 ** t)
    param = param - lr * m_hat / (sqrt(v_hat) + eps)
    """

    decoupled = False  # AdamW sets True: weight decay acts on the weights, not the gradient

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas=(0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ):
        super().__init__(params, lr)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        self.beta1 = _check_number("betas[0]", betas[0], low=0.0, high=1.0, high_open=True)
        self.beta2 = _check_number("betas[1]", betas[1], low=0.0, high=1.0, high_open=True)
        # eps = 0 divides 0 by 0 where v is 0
        self.eps = _check_number("eps", eps, low=0.0, low_open=True)
        self.weight_decay = _check_number("weight_decay", weight_decay, low=0.0)
        self.t = 0
        self.m = [np.zeros_like(p.data) for p in self.params]
        self.v = [np.zeros_like(p.data) for p in self.params]

    def step(self):
        self.t += 1
        correction1 = 1 - self.beta1**self.t
        correction2 = 1 - self.beta2**self.t
        for p, m, v in zip(self.params, self.m, self.v):
            g = p.grad
            if self.decoupled:
                p.data *= 1 - self.lr * self.weight_decay
            else:
                g = g + self.weight_decay * p.data
            m *= self.beta1
            m += (1 - self.beta1) * g
            v *= self.beta2
            v += (1 - self.beta2) * g * g
            m_hat = m / correction1
            v_hat = v / correction2
            p.data -= self.lr * m_hat / (np.sqrt(v_hat) + self.eps)


class AdamW(Adam):
    """Adam with decoupled weight decay, as ``torch.optim.AdamW``.

        param = param * (1 - lr * weight_decay)    (before the Adam step, which then sees
                                                    the raw gradient)

    Loshchilov & Hutter (2019), "Decoupled Weight Decay Regularization", Algorithm 2.
    The default ``weight_decay`` is torch's, 0.01.
    """

    decoupled = True

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas=(0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ):
        super().__init__(params, lr, betas, eps, weight_decay)


def clip_grad_norm(parameters, max_norm: float) -> float:
    """Scale all gradients together so their global L2 norm is at most ``max_norm``.

        total_norm = sqrt(sum over parameters of sum(grad ** 2))
        grad = grad * min(1, max_norm / (total_norm + 1e-6))

    Returns ``total_norm`` measured before clipping, as ``torch.nn.utils.clip_grad_norm_``
    (whose 1e-6 this copies). Pascanu et al. (2013), "On the difficulty of training RNNs".
    """
    params = _parameter_list(parameters)
    max_norm = _check_number("max_norm", max_norm, low=0.0, low_open=True)
    # the norm as largest * norm(grad / largest), in float64: squares of huge (or tiny) entries
    # would overflow to inf (or underflow to 0), and clipping would zero every gradient
    # NaN if any entry is NaN
    largest = float(np.max([np.max(np.abs(p.grad), initial=0.0) for p in params]))
    if largest == 0:
        return 0.0
    # inf or NaN gradients have no finite answer: scale as torch does
    if not math.isfinite(largest):
        total_norm = largest
        for p in params:
            p.grad *= max_norm / (total_norm + 1e-6)
        return total_norm
    relative_norm = math.sqrt(
        sum(float(np.sum(np.square(p.grad / largest, dtype=np.float64))) for p in params)
    )
    total_norm = largest * relative_norm  # inf only when the true norm exceeds the float64 range
    scale = (
        min(1.0, max_norm / (total_norm + 1e-6))
        if math.isfinite(total_norm)
        else max_norm / largest / relative_norm
    )
    for p in params:
        p.grad *= scale
    return total_norm


def warmup_then(
    warmup_steps: int,
    total_steps: int | None = None,
    decay: str = "constant",
    final_factor: float = 0.0,
):
    """The learning-rate multiplier as a function of the step: a linear warm-up, then a plateau.

        step < warmup_steps:   factor = (step + 1) / warmup_steps
        afterwards, "constant": factor = 1
                    "cosine":   factor = final + (1 - final) * (1 + cos(pi * progress)) / 2,
                                progress = (step - warmup_steps) / (total_steps - warmup_steps),
                                held at 1 once the schedule ends

    The returned function is what ``torch.optim.lr_scheduler.LambdaLR`` takes, so one
    schedule serves both trainers (the NumPy one through ``LambdaLR`` below). Warm-up starts
    at ``1 / warmup_steps`` rather than 0 so that the very first step moves the weights.
    Cosine decay: Loshchilov & Hutter (2017), "SGDR".
    """
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ValueError(f"warmup_steps must be an int >= 0, got {warmup_steps!r}")
    if decay not in ("constant", "cosine"):
        raise ValueError(f"decay must be 'constant' or 'cosine', got {decay!r}")
    if decay == "cosine":
        if isinstance(total_steps, bool) or not isinstance(total_steps, int):
            raise TypeError(f"total_steps must be an int for cosine decay, got {total_steps!r}")
        if total_steps <= warmup_steps:
            raise ValueError(
                f"total_steps ({total_steps}) must exceed warmup_steps ({warmup_steps}) "
                "for cosine decay"
            )
    final_factor = _check_number("final_factor", final_factor, low=0.0, high=1.0)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if decay == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
        return final_factor + (1 - final_factor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


class LambdaLR:
    """Set ``optimizer.lr = base_lr * lr_lambda(step)``, as ``torch.optim.lr_scheduler.LambdaLR``.

    The factor for step 0 applies from construction; each ``step()`` (called after
    ``optimizer.step()``) moves on to the next one.
    """

    def __init__(self, optimizer: Optimizer, lr_lambda):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(
                f"optimizer must be a numpy_impl Optimizer, got {type(optimizer).__name__}"
            )
        if not callable(lr_lambda):
            raise TypeError(f"lr_lambda must be callable, got {type(lr_lambda).__name__}")
        self.optimizer = optimizer
        self.lr_lambda = lr_lambda
        self.base_lr = optimizer.lr
        self.last_step = 0
        optimizer.lr = self.base_lr * self._factor(0)

    def step(self):
        self.last_step += 1
        self.optimizer.lr = self.base_lr * self._factor(self.last_step)

    def _factor(self, step):
        return _check_number(f"lr_lambda({step})", self.lr_lambda(step), low=0.0)

    def get_last_lr(self) -> float:
        return self.optimizer.lr


def _parameter_list(params) -> list:
    """Parameters from a list of ``Parameter``s or of ``(name, Parameter)`` pairs."""
    if isinstance(params, Parameter):
        raise TypeError(
            "params must be an iterable of Parameters, got a single Parameter; wrap it in a list"
        )
    try:
        items = list(params)
    except TypeError:
        raise TypeError(
            f"params must be an iterable of Parameters, got {type(params).__name__}"
        ) from None
    if not items:
        raise ValueError("params is empty: the optimiser has nothing to update")
    result = []
    for item in items:
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            item = item[1]
        if not isinstance(item, Parameter):
            raise TypeError(
                f"params must hold Parameters or (name, Parameter) pairs, got {type(item).__name__}"
            )
        result.append(item)
    if len({id(p) for p in result}) != len(result):
        raise ValueError("params lists the same Parameter more than once")
    return result


def _check_number(name, value, low=None, high=None, low_open=False, high_open=False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    bad_low = low is not None and (value <= low if low_open else value < low)
    bad_high = high is not None and (value >= high if high_open else value > high)
    if not math.isfinite(value) or bad_low or bad_high:
        interval = (
            ("(" if low_open else "[")
            + f"{low}, {high if high is not None else 'inf'}"
            + (")" if high_open or high is None else "]")
        )
        raise ValueError(f"{name} must be in {interval}, got {value}")
    return value
