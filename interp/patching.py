"""Activation patching: which activations carry the difference between a clean and a corrupted run?

Axes: batch, pos (sequence position), layer, head, d_head.

Run the model on clean tokens (the model gets the answer right) and on corrupted tokens (it
does not). Then rerun the corrupted tokens with one activation taken from the clean run, and
measure how much of the answer comes back. The metric is the logit difference at the last
position, logit[answer] - logit[wrong], averaged over the batch, normalised so that

    0 = no better than the corrupted run,   1 = as good as the clean run:
    patched_metric = (ld_patched - ld_corrupted) / (ld_clean - ld_corrupted)

(Meng et al. 2022, "causal tracing"; Wang et al. 2022's IOI logit difference; TransformerLens's
``patching`` module computes the same grids.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from foundation.lens.hooks import hook_name

from .common import check_model, check_token_array, native_like, run_cache, run_hooked

RESID_COMPONENTS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")


@dataclass
class PatchingSetup:
    """Both runs' logit differences, ready to normalise a patched one."""

    clean_tokens: np.ndarray
    corrupted_tokens: np.ndarray
    answer: np.ndarray
    wrong: np.ndarray
    clean_logit_diff: float
    corrupted_logit_diff: float

    def normalise(self, logits):
        """Patched logits [batch, pos, d_vocab] -> the normalised metric (1 = clean, 0 =
        corrupted)."""
        return (logit_diff(logits, self.answer, self.wrong) - self.corrupted_logit_diff) / (
            self.clean_logit_diff - self.corrupted_logit_diff
        )


def logit_diff(logits, answer, wrong):
    """Mean over the batch of logits[b, -1, answer[b]] - logits[b, -1, wrong[b]]."""
    last = np.asarray(logits)[:, -1]  # [batch, d_vocab]
    rows = np.arange(last.shape[0])
    return float((last[rows, answer] - last[rows, wrong]).mean())


def _ids(ids, batch, d_vocab, name):
    ids = np.full(batch, ids) if np.ndim(ids) == 0 else np.asarray(ids)
    if not np.issubdtype(ids.dtype, np.integer) or ids.shape != (batch,):
        raise ValueError(
            f"{name} must be a token id or {batch} token ids (one per sequence), got {ids!r}"
        )
    if ids.min() < 0 or ids.max() >= d_vocab:
        raise ValueError(f"{name} must lie in [0, d_vocab={d_vocab}), got {ids!r}")
    return ids


def patching_setup(model, clean_tokens, corrupted_tokens, answer, wrong):
    """Check the inputs and measure the clean and corrupted logit differences."""
    check_model(model)
    cfg = model.cfg
    if not cfg.unembed:
        raise ValueError("activation patching reads logits: it needs cfg.unembed=True")
    clean = check_token_array(clean_tokens, cfg, "clean_tokens")
    corrupted = check_token_array(corrupted_tokens, cfg, "corrupted_tokens")
    if clean.shape != corrupted.shape:
        raise ValueError(
            f"clean_tokens {clean.shape} and corrupted_tokens {corrupted.shape} must have the same "
            f"shape"
        )
    answer = _ids(answer, clean.shape[0], cfg.d_vocab, "answer")
    wrong = _ids(wrong, clean.shape[0], cfg.d_vocab, "wrong")
    clean_logits, _ = run_cache(model, clean, names_filter=[])
    corrupted_logits, _ = run_cache(model, corrupted, names_filter=[])
    clean_ld, corrupted_ld = (
        logit_diff(clean_logits, answer, wrong),
        logit_diff(corrupted_logits, answer, wrong),
    )
    if abs(clean_ld - corrupted_ld) < 1e-12 * max(1.0, abs(clean_ld)):
        raise ValueError(
            "corrupted_tokens: the clean and corrupted runs give the same logit difference, "
            f"{clean_ld:.6g}, so there is nothing to restore"
        )
    return PatchingSetup(clean, corrupted, answer, wrong, clean_ld, corrupted_ld)


def patch_positions(model, clean_tokens, corrupted_tokens, answer, wrong, component="resid_pre"):
    """[n_layers, pos]: the normalised metric after patching one layer's ``component`` at one
    position.

    ``component`` is one of resid_pre, resid_mid, resid_post, attn_out, mlp_out.
    """
    if component not in RESID_COMPONENTS:
        raise ValueError(f"component must be one of {RESID_COMPONENTS}, got {component!r}")
    setup = patching_setup(model, clean_tokens, corrupted_tokens, answer, wrong)
    cfg = model.cfg
    if component in ("resid_mid", "mlp_out") and cfg.attn_only:
        raise ValueError(
            f"component {component!r}: an attn_only model has no MLP (and no resid_mid)"
        )
    names = [hook_name(component, layer) for layer in range(cfg.n_layers)]
    _, clean_cache = run_cache(model, setup.clean_tokens, names_filter=names)
    pos = setup.clean_tokens.shape[1]
    result = np.zeros((cfg.n_layers, pos))  # [n_layers, pos]
    for layer, name in enumerate(names):
        for p in range(pos):
            clean_value = clean_cache[name][:, p]  # [batch, d_model]

            def patch(x, hook, p=p, clean_value=clean_value):
                x[:, p] = native_like(clean_value, x)
                return x

            result[layer, p] = setup.normalise(
                run_hooked(model, setup.corrupted_tokens, [(name, patch)])
            )
    return result


def patch_heads(model, clean_tokens, corrupted_tokens, answer, wrong):
    """[n_layers, n_heads]: the normalised metric after patching one head's output z at every
    position."""
    setup, clean_z = _clean_z(model, clean_tokens, corrupted_tokens, answer, wrong)
    cfg = model.cfg
    result = np.zeros((cfg.n_layers, cfg.n_heads))  # [n_layers, n_heads]
    for layer in range(cfg.n_layers):
        for head in range(cfg.n_heads):
            result[layer, head] = _patched_z(model, setup, clean_z, layer, np.s_[:, :, head])
    return result


def patch_head_positions(model, clean_tokens, corrupted_tokens, answer, wrong):
    """[n_layers, pos, n_heads]: the normalised metric after patching one head's output z at one
    position."""
    setup, clean_z = _clean_z(model, clean_tokens, corrupted_tokens, answer, wrong)
    cfg = model.cfg
    pos = setup.clean_tokens.shape[1]
    result = np.zeros((cfg.n_layers, pos, cfg.n_heads))  # [n_layers, pos, n_heads]
    for layer in range(cfg.n_layers):
        for p in range(pos):
            for head in range(cfg.n_heads):
                index = np.s_[:, p, head]
                result[layer, p, head] = _patched_z(model, setup, clean_z, layer, index)
    return result


def _clean_z(model, clean_tokens, corrupted_tokens, answer, wrong):
    """(the patching setup, the clean run's cache of every layer's hook_z)."""
    setup = patching_setup(model, clean_tokens, corrupted_tokens, answer, wrong)
    _, clean_z = run_cache(
        model, setup.clean_tokens, names_filter=lambda name: name.endswith("hook_z")
    )
    return setup, clean_z


def _patched_z(model, setup, clean_z, layer, index):
    """The normalised metric of the corrupted run with ``z[index]`` of one layer's hook_z
    [batch, pos, head, d_head] taken from the clean run."""
    clean_value = clean_z["z", layer][index]

    def patch(z, hook):
        z[index] = native_like(clean_value, z)
        return z

    name = f"blocks.{layer}.attn.hook_z"
    return setup.normalise(run_hooked(model, setup.corrupted_tokens, [(name, patch)]))
