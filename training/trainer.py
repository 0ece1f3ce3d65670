"""The training loop, written once, with one small "stepper" per implementation.

Axes: ``batch`` (sequences), ``pos`` (positions with a target), ``d_vocab`` (vocabulary).

One training step is the same five lines on both sides -- zero the gradients, forward,
weighted cross-entropy, backward, clip and update -- so each side gets a stepper class with
a ``step(batch) -> loss`` method (``NumpyStepper``: the hand-written backward and
``numpy_impl.optim``; ``TorchStepper``: autograd and ``torch.optim``). Everything else --
the batches, the schedule, the evaluation, the progress bar, the history -- is ``train``
below, shared by both. Given the same initial weights and the same batches the two
steppers produce the same losses and weights (``parity_tests/test_training.py``).

Tied embeddings (``TrainConfig(tie_embeddings=True)``, for a model loaded with
``from_pretrained``): GPT-2 uses one matrix as its token embedding and, transposed, as its
unembedding. The twins keep ``unembed.W_U`` as a parameter of its own, so the steppers train
the one matrix as GPT-2 does: after the backward, ``W_E.grad += W_U.grad.T`` (a tied matrix's
gradient is the sum of its two uses); the optimiser (and the clipping) sees ``W_E`` only; after
the step, ``W_U = W_E.T``. ``b_U``, which GPT-2's tied head does not have, is not trained.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

import numpy_impl
from numpy_impl.loss import log_softmax
from numpy_impl.optim import SGD, Adam, AdamW, LambdaLR, clip_grad_norm, warmup_then

from .data import FIRST, REPEATED, Batch, batches

OPTIMIZERS = ("sgd", "adam", "adamw")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000  # optimiser steps (one batch each)
    batch_size: int = 32  # sequences per batch
    lr: float = 1e-2  # peak learning rate, reached at the end of warm-up
    warmup_steps: int = 100  # linear warm-up from lr / warmup_steps to lr
    decay: str = "constant"  # after warm-up: "constant" or "cosine" (to 0 at the last step)
    optimizer: str = "adam"  # "sgd" (with momentum), "adam" or "adamw"
    betas: tuple = (0.9, 0.999)  # Adam's running-average rates
    eps: float = 1e-8  # Adam's guard against dividing by ~0
    weight_decay: float = 0.0  # L2 (sgd, adam) or decoupled decay (adamw)
    momentum: float = 0.9  # sgd only
    # clip the global gradient norm to this; None: no clipping
    max_grad_norm: float | None = None
    data_seed: int = 0  # seeds the batch stream (the model has its own seed)
    # train W_U as W_E.T, one matrix, and leave b_U as it is (GPT-2's head)
    tie_embeddings: bool = False

    def __post_init__(self):
        for name in ("steps", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not self.lr > 0:
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be positive or None, got {self.max_grad_norm!r}")
        if not isinstance(self.tie_embeddings, bool):
            raise TypeError(f"tie_embeddings must be a bool, got {self.tie_embeddings!r}")
        self.lr_factor()  # validates warmup_steps and decay against steps

    def lr_factor(self):
        """The schedule as a function step -> multiplier of ``lr`` (shared by both trainers)."""
        return warmup_then(self.warmup_steps, total_steps=self.steps, decay=self.decay)


# W_U follows W_E; GPT-2's tied head has no bias
UNTRAINED_WHEN_TIED = ("unembed.W_U", "unembed.b_U")


def trained_parameters(model, train_cfg: TrainConfig) -> list:
    """(name, parameter) pairs the optimiser updates: all of them, or, tied, all but W_U and b_U.

    Tying needs a model whose W_U is W_E.T already (as ``from_pretrained`` loads GPT-2), so
    that training continues the tied model instead of silently replacing W_U.
    """
    named = list(model.named_parameters())
    if not train_cfg.tie_embeddings:
        return named
    if not model.cfg.unembed:
        raise ValueError("tie_embeddings=True needs a model with an unembedding (cfg.unembed=True)")
    W_E, W_U = dict(named)["embed.W_E"].data, dict(named)["unembed.W_U"].data
    if not bool((W_U == W_E.T).all()):
        raise ValueError(
            "tie_embeddings=True: unembed.W_U is not embed.W_E.T; start from a tied model "
            "(Transformer.from_pretrained gives one for a tied GPT-2 checkpoint)"
        )
    return [(name, p) for name, p in named if name not in UNTRAINED_WHEN_TIED]


class NumpyStepper:
    """One training step of the NumPy reference: hand-written backward, NumPy optimiser."""

    def __init__(self, model: numpy_impl.Transformer, train_cfg: TrainConfig):
        if not isinstance(model, numpy_impl.Transformer):
            raise TypeError(f"model must be a numpy_impl.Transformer, got {type(model).__name__}")
        self.model = model
        self.train_cfg = train_cfg
        self.loss_fn = numpy_impl.CrossEntropyLoss()
        params = trained_parameters(model, train_cfg)
        if train_cfg.optimizer == "sgd":
            self.optimizer = SGD(
                params,
                lr=train_cfg.lr,
                momentum=train_cfg.momentum,
                weight_decay=train_cfg.weight_decay,
            )
        else:
            adam = Adam if train_cfg.optimizer == "adam" else AdamW
            self.optimizer = adam(
                params,
                lr=train_cfg.lr,
                betas=train_cfg.betas,
                eps=train_cfg.eps,
                weight_decay=train_cfg.weight_decay,
            )
        self.schedule = LambdaLR(self.optimizer, train_cfg.lr_factor())

    def step(self, batch: Batch) -> float:
        self.model.zero_grad()  # every gradient, W_U's and b_U's too when they are not trained
        logits = self.model.forward(batch.inputs)  # [batch, pos, d_vocab]
        weights = batch.weights.astype(logits.dtype)  # [batch, pos]
        loss = self.loss_fn.forward(logits, batch.targets, weights)  # []
        self.model.backward(self.loss_fn.backward())
        if self.train_cfg.tie_embeddings:
            # one matrix used twice (embed.W_E, and unembed.W_U = W_E.T): its gradient is the sum of
            # both uses
            self.model.embed.W_E.grad += self.model.unembed.W_U.grad.T
        if self.train_cfg.max_grad_norm is not None:
            clip_grad_norm(self.optimizer.params, self.train_cfg.max_grad_norm)
        self.optimizer.step()
        if self.train_cfg.tie_embeddings:
            self.model.unembed.W_U.data[...] = self.model.embed.W_E.data.T
        self.schedule.step()
        return float(loss)

    def logits(self, inputs: np.ndarray) -> np.ndarray:
        return self.model.forward(inputs)  # [batch, pos, d_vocab]

    def state_dict(self) -> dict:
        return self.model.state_dict()


class TorchStepper:
    """One training step of the torch twin: autograd, ``torch.optim``."""

    def __init__(self, model, train_cfg: TrainConfig):
        import torch

        import torch_impl

        if not isinstance(model, torch_impl.Transformer):
            raise TypeError(f"model must be a torch_impl.Transformer, got {type(model).__name__}")
        self.torch = torch
        self.model = model
        self.train_cfg = train_cfg
        self.loss_fn = torch_impl.CrossEntropyLoss()
        params = [p for _, p in trained_parameters(model, train_cfg)]
        # foreach=False: the plain per-tensor loop, the same arithmetic as numpy_impl.optim
        if train_cfg.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(
                params,
                lr=train_cfg.lr,
                momentum=train_cfg.momentum,
                weight_decay=train_cfg.weight_decay,
                foreach=False,
            )
        else:
            adam = torch.optim.Adam if train_cfg.optimizer == "adam" else torch.optim.AdamW
            self.optimizer = adam(
                params,
                lr=train_cfg.lr,
                betas=train_cfg.betas,
                eps=train_cfg.eps,
                weight_decay=train_cfg.weight_decay,
                foreach=False,
            )
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, train_cfg.lr_factor())

    def step(self, batch: Batch) -> float:
        torch = self.torch
        self.model.zero_grad()  # every gradient, W_U's and b_U's too when they are not trained
        logits = self.model(torch.from_numpy(batch.inputs))  # [batch, pos, d_vocab]
        weights = torch.from_numpy(batch.weights).to(logits.dtype)  # [batch, pos]
        loss = self.loss_fn(logits, torch.from_numpy(batch.targets), weights)  # []
        loss.backward()
        if self.train_cfg.tie_embeddings:
            # one matrix used twice (embed.W_E, and unembed.W_U = W_E.T): its gradient is the sum of
            # both uses
            self.model.embed.W_E.grad += self.model.unembed.W_U.grad.T
        if self.train_cfg.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(
                self.optimizer.param_groups[0]["params"],
                self.train_cfg.max_grad_norm,
                foreach=False,
            )
        self.optimizer.step()
        if self.train_cfg.tie_embeddings:
            with torch.no_grad():
                self.model.unembed.W_U.copy_(self.model.embed.W_E.T)
        self.schedule.step()
        return loss.item()

    def logits(self, inputs: np.ndarray) -> np.ndarray:
        with self.torch.no_grad():
            return self.model(self.torch.from_numpy(inputs)).numpy()  # [batch, pos, d_vocab]

    def state_dict(self) -> dict:
        return {name: t.detach().numpy().copy() for name, t in self.model.state_dict().items()}


def per_token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log p(target) at every position: logits [batch, pos, d_vocab], targets [batch, pos] ->
    [batch, pos]"""
    log_probs = log_softmax(logits.astype(np.float64))  # [batch, pos, d_vocab]
    return -np.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]  # [batch, pos]


def loss_by_kind(stepper, batch: Batch) -> dict:
    """Mean per-token loss on repeated tokens and on first occurrences (forward only)."""
    nll = per_token_nll(stepper.logits(batch.inputs), batch.targets)  # [batch, pos]
    return {
        "repeated": float(nll[batch.target_kinds == REPEATED].mean()),
        "first": float(nll[batch.target_kinds == FIRST].mean()),
    }


@dataclass
class History:
    """What a training run recorded: the loss at every step and evaluations every few steps."""

    loss: list = field(default_factory=list)  # training loss (weighted) per step
    eval_steps: list = field(default_factory=list)  # steps at which the evaluations ran
    evals: dict = field(default_factory=dict)  # name -> {"repeated": [...], "first": [...]}
    seconds: float = 0.0  # wall time of the training loop


def train(
    stepper,
    train_cfg: TrainConfig,
    seq_len: int,
    d_vocab: int,
    eval_batches=None,
    eval_every: int = 50,
    progress=None,
    batch_stream=None,
    label: str = "",
) -> History:
    """Run ``train_cfg.steps`` steps of ``stepper`` on the induction data; return the ``History``.

    ``eval_batches`` ({name: Batch}) are scored with ``loss_by_kind`` every ``eval_every``
    steps and after the last. ``batch_stream`` replaces the default seeded data (it must
    yield at least ``steps`` batches). ``progress``, when given, wraps the steps to
    show a bar: ``progress(steps, label, total=..., status=...)`` (the tours pass theirs), headed by
    ``label`` and ending with the latest loss.
    """
    if not isinstance(train_cfg, TrainConfig):
        raise TypeError(f"train_cfg must be a TrainConfig, got {type(train_cfg).__name__}")
    if isinstance(eval_every, bool) or not isinstance(eval_every, int) or eval_every <= 0:
        raise ValueError(f"eval_every must be a positive int, got {eval_every!r}")
    eval_batches = eval_batches or {}
    if batch_stream is None:
        batch_stream = batches(
            train_cfg.data_seed, train_cfg.steps, train_cfg.batch_size, seq_len, d_vocab
        )
    history = History(evals={name: {"repeated": [], "first": []} for name in eval_batches})
    steps = zip(range(train_cfg.steps), batch_stream)
    if progress:
        steps = progress(
            steps,
            label or "training",
            total=train_cfg.steps,
            status=lambda: f"loss {history.loss[-1]:.3f}",
        )
    start = time.perf_counter()
    for step, batch in steps:
        history.loss.append(stepper.step(batch))
        last = step == train_cfg.steps - 1
        if eval_batches and (step % eval_every == 0 or last):
            history.eval_steps.append(step)
            for name, eval_batch in eval_batches.items():
                for kind, value in loss_by_kind(stepper, eval_batch).items():
                    history.evals[name][kind].append(value)
        if not math.isfinite(history.loss[-1]):
            raise FloatingPointError(f"training loss became {history.loss[-1]} at step {step}")
    history.seconds = time.perf_counter() - start
    if len(history.loss) < train_cfg.steps:
        raise ValueError(
            f"batch_stream ran out after {len(history.loss)} of {train_cfg.steps} steps"
        )
    return history
