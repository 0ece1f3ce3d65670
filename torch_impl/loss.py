"""Cross-entropy loss over next-token logits, optionally weighted per token
(the negative log-likelihood of the data; Goodfellow, Bengio & Courville, "Deep Learning", §6.2.1.1).

Axes: batch, pos (sequence position), d_vocab (vocabulary).

    log_probs = logits - logsumexp(logits)          (row by row over d_vocab)
    nll[b, p] = -log_probs[b, p, targets[b, p]]
    loss = sum(weights * nll) / sum(weights)       (weights all 1: the plain mean)
"""

import torch

from .module import Module


def log_softmax(logits):
    """logits [..., d_vocab] -> log_probs [..., d_vocab], row by row, the row max subtracted first."""
    logits_max = logits.max(dim=-1, keepdim=True).values.detach()  # [..., 1]; a constant shift
    shifted = logits - logits_max  # [..., d_vocab]
    log_sum_exp = torch.log(torch.exp(shifted).sum(dim=-1, keepdim=True))  # [..., 1]
    log_probs = shifted - log_sum_exp  # [..., d_vocab]
    return log_probs


class CrossEntropyLoss(Module):
    """Mean negative log-likelihood of the targets; ``weights`` make it a weighted mean."""

    def __init__(self):
        super().__init__()

    def forward(self, logits, targets, weights=None):
        """logits [batch, pos, d_vocab], targets [batch, pos], weights [batch, pos] or None -> loss []"""
        if weights is None:
            weights = torch.ones(targets.shape, dtype=logits.dtype, device=logits.device)  # [batch, pos]
        log_probs = log_softmax(logits)  # [batch, pos, d_vocab]
        nll = -torch.take_along_dim(log_probs, targets[..., None], dim=-1)[..., 0]  # [batch, pos]
        loss = (weights * nll).sum() / weights.sum()  # []
        return loss
