"""The induction experiment: train a 2-layer attention-only model in NumPy until induction heads
form.

Axes: ``batch``, ``pos`` / ``q_pos`` / ``k_pos`` (positions), ``layer``, ``head``.

An induction head predicts repeated text: at a token that appeared before, it attends to
the token that *followed* the earlier occurrence and copies it. It needs two heads in
different layers (Elhage et al. 2021, "A Mathematical Framework for Transformer Circuits";
Olsson et al. 2022, "In-context Learning and Induction Heads"):

- a *previous-token head* in layer 0 writes "the token before me was A" into each position;
- the *induction head* in layer 1 looks, from the current token A, for a key whose previous
  token was A -- the position just after A's earlier occurrence -- and copies its token.

``run_induction`` trains ``INDUCTION_CONFIG`` on ``training.data``'s repeated segments,
evaluates on held-out data of a shape never trained on, scores every head, draws the
figures and returns the numbers.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace

import numpy as np

import interp
import numpy_impl
from numpy_impl import TransformerConfig

from . import plots
from .data import FIRST, heldout_batch, induction_batch
from .trainer import History, NumpyStepper, TrainConfig, loss_by_kind, train

# The training recipe; it grows induction heads on every seed we tried.
INDUCTION_CONFIG = TransformerConfig(
    d_vocab=128,  # random tokens: a first occurrence carries ln 128 = 4.85 nats
    d_model=64,
    n_heads=2,
    d_head=32,
    n_layers=2,  # the smallest depth with an induction circuit (two heads composing)
    n_ctx=48,
    attn_only=True,  # no MLPs: the circuit is all in the attention heads
    normalization="pre",  # with a final LayerNorm
    positional="learned",
    causal=True,
    dtype="float32",  # float32 halves the time of a step; parity checks use float64
)
INDUCTION_TRAINING = TrainConfig(
    steps=2000,
    batch_size=32,
    lr=1e-2,
    warmup_steps=100,
    optimizer="adam",
    betas=(0.9, 0.999),
    eps=1e-8,
    weight_decay=0.0,
)
# tokens per training sequence: n_ctx inputs, each with a target
SEQ_LEN = INDUCTION_CONFIG.n_ctx + 1
EVAL_SIZE = 64  # sequences per evaluation batch during training
FINAL_EVAL_SIZE = 512  # sequences for the final held-out numbers
# the scores' sequences: 24 random tokens, then the same 24
SCORE_SEGMENT = INDUCTION_CONFIG.n_ctx // 2


@dataclass
class InductionResult:
    seed: int
    seconds: float  # wall time of the training loop
    repeated_loss: float  # held-out, nats, on predictable repeated tokens
    first_loss: float  # held-out, nats, on first occurrences of the repeated segment
    prev_token_scores: np.ndarray  # [layer, head]
    induction_scores: np.ndarray  # [layer, head]
    formed_at: int | None  # first evaluation step with held-out repeated loss < 1 nat
    history: History
    files: dict  # what -> path

    @property
    def prev_token_head(self):
        """(layer, head) of the best previous-token head in layer 0."""
        return 0, int(np.argmax(self.prev_token_scores[0]))

    @property
    def induction_head(self):
        """(layer, head) of the best induction head in a layer above 0."""
        layer, head = np.unravel_index(
            np.argmax(self.induction_scores[1:]), self.induction_scores[1:].shape
        )
        return int(layer) + 1, int(head)


def run_induction(
    seed: int = 0,
    out_dir: str = "outputs",
    steps: int | None = None,
    cfg: TransformerConfig = INDUCTION_CONFIG,
    progress=None,
    figures: bool = True,
) -> InductionResult:
    """Train a model from ``seed`` (weights and data), evaluate it, save weights and figures."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    train_cfg = replace(
        INDUCTION_TRAINING, data_seed=seed, **({} if steps is None else {"steps": steps})
    )
    model = numpy_impl.Transformer(cfg, seed=seed)
    # Evaluation data from its own generator: never among the training batches.
    eval_rng = np.random.default_rng([seed, 1])
    eval_batches = {
        "train-like": induction_batch(eval_rng, EVAL_SIZE, SEQ_LEN, cfg.d_vocab),
        "held-out": heldout_batch(eval_rng, EVAL_SIZE, SEQ_LEN, cfg.d_vocab),
    }
    stepper = NumpyStepper(model, train_cfg)
    history = train(
        stepper,
        train_cfg,
        SEQ_LEN,
        cfg.d_vocab,
        eval_batches=eval_batches,
        eval_every=25,
        progress=progress,
        label="NumPy",
    )
    final = loss_by_kind(stepper, heldout_batch(eval_rng, FINAL_EVAL_SIZE, SEQ_LEN, cfg.d_vocab))
    # The head scores of the interpretability package, on the tokens `python demo.py interp` scores
    # on too: 24 random tokens, then the same 24 again (longer than any training segment, without
    # repeats inside the 24, so each stripe is unambiguous).
    score_tokens = interp.scores.scoring_tokens(cfg, seed)
    scores = interp.all_head_scores(model, score_tokens, kinds=("previous_token", "induction"))
    prev_scores, ind_scores = scores["previous_token"], scores["induction"]
    held = history.evals["held-out"]["repeated"]
    formed_at = next((s for s, loss in zip(history.eval_steps, held) if loss < 1.0), None)
    files = {}
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        files["weights"] = os.path.join(out_dir, "induction.npz")
        model.save(files["weights"])
        if figures:
            files.update(
                _draw_figures(out_dir, model, history, prev_scores, ind_scores, eval_rng, seed)
            )
    return InductionResult(
        seed,
        history.seconds,
        final["repeated"],
        final["first"],
        prev_scores,
        ind_scores,
        formed_at,
        history,
        files,
    )


def _draw_figures(out_dir, model, history, prev_scores, ind_scores, rng, seed):
    cfg = model.cfg
    files = {}
    files["loss curve"] = plots.plot_induction_losses(
        os.path.join(out_dir, "induction_loss.png"),
        history,
        cfg.d_vocab,
        f"Induction experiment (seed {seed}): loss on first occurrences vs repeated tokens",
    )
    files["previous-token scores"] = interp.plots.plot_score_grid(
        prev_scores,
        os.path.join(out_dir, "induction_prev_token_scores.png"),
        "previous_token",
        SCORE_SEGMENT,
    )
    files["induction scores"] = interp.plots.plot_score_grid(
        ind_scores,
        os.path.join(out_dir, "induction_induction_scores.png"),
        "induction",
        SCORE_SEGMENT,
    )
    example = heldout_batch(rng, 1, SEQ_LEN, cfg.d_vocab)
    # positions of the segment's first occurrence
    first = np.flatnonzero(example.kinds[0, :-1] == FIRST)
    _, cache = model.run_with_cache(example.inputs)
    files["attention patterns"] = interp.plot_attention_grid(
        cache,
        os.path.join(out_dir, "induction_patterns.png"),
        separators=[first[0], first[-1] + 1],
        separator_note=f"orange lines: the segment starts (position {first[0]}) and its copy "
        f"starts "
        f"(position {first[-1] + 1})",
        title=f"Attention on a held-out sequence: a segment at positions {first[0]}..{first[-1]}, "
        f"repeated from {first[-1] + 1}",
    )
    return files


def reading(result: InductionResult, d_vocab: int) -> str:
    """The printed summary: what was found, the losses, and where the figures are."""
    steps = len(result.history.loss)
    lines = [
        f"Trained {steps} steps in {result.seconds:.1f} s ({1e3 * result.seconds / steps:.1f} ms a "
        f"step with the "
        f"periodic evaluations, NumPy, hand-written backward), seed {result.seed}.",
        f"Held-out data ({FINAL_EVAL_SIZE} sequences; segments of 21..24 tokens copied 21..24 "
        f"places back, "
        "lengths and distances never trained on):",
        f"  loss on repeated tokens     {result.repeated_loss:6.3f} nats",
        f"  loss on first occurrences   {result.first_loss:6.3f} nats   (chance: ln {d_vocab} = "
        f"{math.log(d_vocab):.3f})",
        "  (a first occurrence is a uniformly random token: any prediction but the uniform one "
        "costs more",
        "  than ln d_vocab on it, and a model that expects repeats bets on tokens it has already "
        "seen)",
        f"Attention scores on {interp.scores.scoring_data(SCORE_SEGMENT)}:",
        f"  previous-token (layer 0): "
        f"{interp.scores.head_verdict('previous_token', result.prev_token_scores[:1])}",
        f"  induction (layer 1 up):   "
        f"{interp.scores.head_verdict('induction', result.induction_scores, 1)}",
    ]
    il, ih = result.induction_head
    if result.formed_at is not None:
        lines.append(
            f"The held-out repeated-token loss first fell below 1 nat at step {result.formed_at}: "
            "the induction circuit works."
        )
    else:
        lines.append(
            f"No working induction circuit yet: the held-out repeated-token loss never fell below "
            f"1 nat "
            f"(it ends at {result.repeated_loss:.2f}), whatever layer {il}, head {ih}'s attention "
            f"(score {result.induction_scores[il, ih]:.2f}) already looks like."
        )
    for what, path in result.files.items():
        lines.append(f"  {what + ':':24s} {path}")
    return "\n".join(lines)
