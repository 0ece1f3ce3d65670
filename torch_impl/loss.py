"""Cross-entropy loss over next-token logits, optionally weighted per token (the negative
log-likelihood of the data; Goodfellow, Bengio & Courville, "Deep Learning", §6.2.1.1).

Axes: batch, pos (sequence position), d_vocab (vocabulary).

    log_probs = logits - logsumexp(logits)          (row by row over d_vocab)
    nll[b, p] = -log_probs[b, p, targets[b, p]]
    loss = sum(weights * nll) / sum(weights)       (reduction="mean"; weights all 1: the plain mean)
    loss = weights * nll                            (reduction="none": one loss per token)
"""

import torch

from foundation.contract.checks import check_reduction

from .module import Module, boundary


def log_softmax(logits):
    """logits [..., d_vocab] -> log_probs [..., d_vocab] by row, the row max subtracted first."""
    logits_max = logits.max(dim=-1, keepdim=True).values.detach()  # [..., 1]; a constant shift
    shifted = logits - logits_max  # [..., d_vocab]
    log_sum_exp = torch.log(torch.exp(shifted).sum(dim=-1, keepdim=True))  # [..., 1]
    log_probs = shifted - log_sum_exp  # [..., d_vocab]
    return log_probs


class CrossEntropyLoss(Module):
    """Mean negative log-likelihood of the targets; ``weights`` make it a weighted mean.

    ``reduction="none"``: each token's loss [batch, pos] (times its weight), as torch's.
    """

    def __init__(self, reduction="mean"):
        super().__init__()
        self.reduction = check_reduction(reduction)

    @boundary(logits="logits", targets="targets", weights="weights")
    def forward(self, logits, targets, weights=None):
        """logits [batch, pos, d_vocab], targets [batch, pos], weights [batch, pos] or None -> loss

        loss is [] (the weighted mean), or [batch, pos] for reduction="none".
        """
        if weights is None:
            weights = torch.ones_like(targets, dtype=logits.dtype)  # [batch, pos]
        log_probs = log_softmax(logits)  # [batch, pos, d_vocab]
        nll = -torch.take_along_dim(log_probs, targets[..., None], dim=-1)[..., 0]  # [batch, pos]
        if self.reduction == "mean":
            loss = (weights * nll).sum() / weights.sum()  # []
        else:
            loss = weights * nll  # [batch, pos]
        return loss
