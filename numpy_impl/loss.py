"""Cross-entropy loss over next-token logits, optionally weighted per token (the negative
log-likelihood of the data; Goodfellow, Bengio & Courville, "Deep Learning", §6.2.1.1).

Axes: batch, pos (sequence position), d_vocab (vocabulary).

    log_probs = logits - logsumexp(logits)          (row by row over d_vocab)
    nll[b, p] = -log_probs[b, p, targets[b, p]]
    loss = sum(weights * nll) / sum(weights)       (reduction="mean"; weights all 1: the plain mean)
    loss = weights * nll                            (reduction="none": one loss per token)
"""

import numpy as np

from foundation.contract.checks import check_reduction

from .module import Module, boundary


def log_softmax(logits):
    """logits [..., d_vocab] -> log_probs [..., d_vocab] by row, the row max subtracted first."""
    logits_max = logits.max(axis=-1, keepdims=True)  # [..., 1]
    shifted = logits - logits_max  # [..., d_vocab]
    log_sum_exp = np.log(np.exp(shifted).sum(axis=-1, keepdims=True))  # [..., 1]
    log_probs = shifted - log_sum_exp  # [..., d_vocab]
    return log_probs


class CrossEntropyLoss(Module):
    """Mean negative log-likelihood of the targets; ``weights`` make it a weighted mean.

    ``reduction="none"``: each token's loss [batch, pos] (times its weight), as torch's.
    """

    def __init__(self, reduction="mean"):
        self.reduction = check_reduction(reduction)
        self.cache = None

    @boundary(logits="logits", targets="targets", weights="weights")
    def forward(self, logits, targets, weights=None):
        """logits [batch, pos, d_vocab], targets [batch, pos], weights [batch, pos] or None -> loss

        loss is [] (the weighted mean), or [batch, pos] for reduction="none".
        """
        if weights is None:
            weights = np.ones_like(targets, dtype=logits.dtype)  # [batch, pos]
        log_probs = log_softmax(logits)  # [batch, pos, d_vocab]
        nll = -np.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]  # [batch, pos]
        if self.reduction == "mean":
            loss = (weights * nll).sum() / weights.sum()  # []
        else:
            loss = weights * nll  # [batch, pos]
        self.cache = (log_probs, targets, weights)
        return loss

    @boundary(dloss="gradient")
    def backward(self, dloss=1.0):
        """dloss (a scalar, or [batch, pos] for reduction="none") -> dlogits [batch, pos, d_vocab]

        dloss is 1 by default: the gradient of the loss itself.
        """
        log_probs, targets, weights = self.cache
        # EXERCISE BEGIN
        if self.reduction == "mean":
            # forward: loss = sum(weights * nll) / sum(weights)
            dnll = dloss * weights / weights.sum()  # [batch, pos]
        else:
            # forward: loss = weights * nll
            dnll = dloss * weights  # [batch, pos]
        # forward: nll = -log_probs[targets]
        dlog_probs = np.zeros_like(log_probs)  # [batch, pos, d_vocab]
        np.put_along_axis(dlog_probs, targets[..., None], -dnll[..., None], axis=-1)
        # forward: log_probs = logits - logsumexp(logits); d logsumexp / d logits = softmax(logits)
        probs = np.exp(log_probs)  # [batch, pos, d_vocab]
        dlog_probs_sum = dlog_probs.sum(axis=-1, keepdims=True)  # [batch, pos, 1]
        dlogits = dlog_probs - probs * dlog_probs_sum  # [batch, pos, d_vocab]
        # EXERCISE END
        return dlogits
