"""Cross-entropy loss over next-token logits, optionally weighted per token
(the negative log-likelihood of the data; Goodfellow, Bengio & Courville, "Deep Learning", §6.2.1.1).

Axes: batch, pos (sequence position), d_vocab (vocabulary).

    log_probs = logits - logsumexp(logits)          (row by row over d_vocab)
    nll[b, p] = -log_probs[b, p, targets[b, p]]
    loss = sum(weights * nll) / sum(weights)       (weights all 1: the plain mean)
"""

import numpy as np

from .module import Module


def log_softmax(logits):
    """logits [..., d_vocab] -> log_probs [..., d_vocab], row by row, the row max subtracted first."""
    logits_max = logits.max(axis=-1, keepdims=True)  # [..., 1]
    shifted = logits - logits_max  # [..., d_vocab]
    log_sum_exp = np.log(np.exp(shifted).sum(axis=-1, keepdims=True))  # [..., 1]
    log_probs = shifted - log_sum_exp  # [..., d_vocab]
    return log_probs


class CrossEntropyLoss(Module):
    """Mean negative log-likelihood of the targets; ``weights`` make it a weighted mean."""

    def __init__(self):
        self.cache = None

    def forward(self, logits, targets, weights=None):
        """logits [batch, pos, d_vocab], targets [batch, pos], weights [batch, pos] or None -> loss []"""
        if weights is None:
            weights = np.ones(targets.shape, dtype=logits.dtype)  # [batch, pos]
        log_probs = log_softmax(logits)  # [batch, pos, d_vocab]
        nll = -np.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]  # [batch, pos]
        loss = (weights * nll).sum() / weights.sum()  # []
        self.cache = (log_probs, targets, weights)
        return loss

    def backward(self, dloss=1.0):
        """dloss (a scalar, 1 by default) -> dlogits [batch, pos, d_vocab]."""
        log_probs, targets, weights = self.cache
        # EXERCISE BEGIN
        # forward: loss = sum(weights * nll) / sum(weights)
        dnll = dloss * weights / weights.sum()  # [batch, pos]
        # forward: nll = -log_probs[targets]
        dlog_probs = np.zeros_like(log_probs)  # [batch, pos, d_vocab]
        np.put_along_axis(dlog_probs, targets[..., None], -dnll[..., None], axis=-1)
        # forward: log_probs = logits - logsumexp(logits); d logsumexp / d logits = softmax(logits)
        probs = np.exp(log_probs)  # [batch, pos, d_vocab]
        dlogits = dlog_probs - probs * dlog_probs.sum(axis=-1, keepdims=True)  # [batch, pos, d_vocab]
        # EXERCISE END
        return dlogits
