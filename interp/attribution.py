"""Attribution patching: activation patching's first-order estimate, from one backward pass.

Axes: batch, pos (sequence position), layer, head, d_head, d_model; q_pos / k_pos (query and key
positions); up / down (upstream and downstream nodes of the edge graph).

Activation patching (``patching.py``) reruns the corrupted tokens once per patched activation.
Attribution patching (Nanda 2023, "Attribution Patching"; Syed et al. 2023) replaces each rerun
by a first-order Taylor step around the corrupted run. With M the normalised logit difference of
``patching.py`` (1 = clean, 0 = corrupted) and a an activation at one hook point,

    node score  = sum over the summed axes of (a_clean - a_corrupted) * dM/da (corrupted run)

from one clean forward and one corrupted forward and backward (the NumPy twin's hand-written
backward, autograd on the torch twin). The batch axis and the hook's feature axis (d_model,
d_head, d_mlp, d_vocab, the 1 of a LayerNorm scale) are summed; what stays is [pos], [pos, head]
for q, k, v and z, or [head, q_pos, k_pos] for scores and patterns. Patching several entries at
once is estimated by the sum of their scores, so ``heads("z")`` (summed over pos) estimates
``patch_heads`` and ``positions("resid_pre")`` estimates ``patch_positions``. Where M is linear
in the activation (say the last layer's z in a model without LayerNorm, MLPs or later attention),
the estimate is exact.

Edges (Syed et al. 2023's edge attribution patching). The residual stream is a sum of what the
upstream nodes write, and each downstream node reads that sum:

    upstream:   embed (hook_embed), pos_embed (hook_pos_embed), each head's output z_h W_O[h],
                each MLP's output (hook_mlp_out)
    downstream: each head's query, key and value input (the residual stream as head h's W_Q[h],
                W_K[h], W_V[h] reads it, through ln1; a key/value head in grouped attention),
                each MLP's input (through ln2), the final residual stream (through ln_final, into
                the unembedding)

    edge score  = sum over batch, pos, d_model of (u_clean - u_corrupted) * dM/d(input of d)

where the gradient is the part of the residual stream's gradient that flows into d alone. Every
edge into d adds up to d's input node score (``ln1.hook_in``, ``ln2.hook_in``,
``ln_final.hook_in``), and every edge out of u to u's node score. Pre-norm models and models
without normalization; a post-norm stream is re-normalised after every block, so it is no sum.

Integrated gradients (``steps``; EAP-IG, Hanna et al. 2024). The gradient is averaged over
``steps`` runs whose activation at the hook ``at`` (by default ``hook_embed``, the token
embeddings) is moved from its corrupted to its clean value, at the midpoints
alpha = (k + 1/2) / steps, k = 0 .. steps - 1, each run one forward and one backward:

    score = (a_clean - a_corrupted) * mean over k of dM/da,
            at the run where a_at = a_at,corrupted + alpha_k (a_at,clean - a_at,corrupted)

With ``at`` any other hook, only that hook is scored: the sum of all its scores tends to the
effect of patching the whole activation (the path integral), with an error that falls as
1 / steps**2.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from foundation.lens.hooks import hook_name

from .common import native_like, native_tokens, weights
from .patching import patching_setup

INPUT = "hook_embed"  # where integrated gradients interpolates by default: the token embeddings


# ---------------------------------------------------------------------------------------------
# The runs: clean and corrupted activations, and the metric's gradient
# ---------------------------------------------------------------------------------------------


def metric_gradient(setup, logits_shape):
    """dM/dlogits [batch, pos, d_vocab] of M = (LD - LD_corrupted) / (LD_clean - LD_corrupted),
    with LD the batch mean of logit[answer] - logit[wrong] at the last position."""
    batch = logits_shape[0]
    rows = np.arange(batch)
    step = 1.0 / (batch * (setup.clean_logit_diff - setup.corrupted_logit_diff))
    dout = np.zeros(logits_shape)  # [batch, pos, d_vocab]
    dout[rows, -1, setup.answer] += step
    dout[rows, -1, setup.wrong] -= step
    return dout


def _own_names(model):
    """{every name the model answers to: the hook point's own name}."""
    return {name: point.name for name, point in model.hook_dict.items()}


def _run(model, tokens, dout=None, fwd_hooks=()):
    """One run of either twin: {own hook name: activation} and, with ``dout``, {own name: grad},
    all as float64 ndarrays."""
    own = set(_own_names(model).values())
    with model.hooks(fwd_hooks=list(fwd_hooks)):
        _, cache = model.run_with_cache(
            native_tokens(model, tokens), incl_bwd=dout is not None, dout=dout
        )
    cache = cache.to_numpy()
    acts = {name: np.asarray(cache[name], dtype=np.float64) for name in own if name in cache}
    grads = {
        name: np.asarray(cache[name + "_grad"], dtype=np.float64)
        for name in own
        if name + "_grad" in cache
    }
    return acts, grads


def _check_steps(steps):
    if steps is None:
        return None
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)):
        raise TypeError(f"steps must be None or an int >= 1, got {type(steps).__name__}")
    if steps < 1:
        raise ValueError(f"steps must be None or an int >= 1, got {steps}")
    return int(steps)


def _check_at(model, at):
    if not isinstance(at, str):
        raise TypeError(f"at must be a hook name (str), got {type(at).__name__}")
    names = _own_names(model)
    full = at if at in names else hook_name(at)
    if full not in names:
        raise ValueError(
            f"at={at!r}: the model has no such hook point (model.hook_dict lists them)"
        )
    own = names[full]
    if own in ("embed.hook_in", "pos_embed.hook_in"):
        raise ValueError(f"at={at!r}: token and position ids cannot be interpolated")
    return own


def _gradient_runs(model, setup, steps, at, each=None):
    """(clean activations, corrupted activations, [what ``each`` makes of every backward run]).

    ``steps=None``: one corrupted forward and backward. Else ``steps`` runs with the activation at
    ``at`` moved to the midpoints between its corrupted and clean values. ``each(acts, grads)``
    turns one run into what is averaged (default: its gradients).
    """
    each = each or (lambda acts, grads: grads)
    clean, _ = _run(model, setup.clean_tokens)
    # [batch, pos, d_vocab], in the model's dtype
    dout = metric_gradient(setup, clean["unembed.hook_out"].shape).astype(model.cfg.dtype)
    if steps is None:
        acts, grads = _run(model, setup.corrupted_tokens, dout)
        return clean, acts, [each(acts, grads)]
    corrupted, _ = _run(model, setup.corrupted_tokens)
    start, end = corrupted[at], clean[at]
    results = []
    for k in range(steps):
        alpha = (k + 0.5) / steps
        point = start + alpha * (end - start)  # the activation at ``at`` on the straight path

        def interpolate(x, hook, point=point):
            return native_like(point, x)

        acts, grads = _run(model, setup.corrupted_tokens, dout, [(at, interpolate)])
        results.append(each(acts, grads))
    return clean, corrupted, results


def _mean(results):
    """The mean over runs of dicts (or arrays) of arrays."""
    if isinstance(results[0], dict):
        return {name: sum(r[name] for r in results) / len(results) for name in results[0]}
    return sum(results) / len(results)


def _difference(clean, corrupted):
    """clean - corrupted, 0 where they are equal (masked scores: -inf in both)."""
    with np.errstate(invalid="ignore"):  # -inf - -inf where both are masked
        return np.where(clean == corrupted, 0.0, clean - corrupted)


# ---------------------------------------------------------------------------------------------
# Node attribution
# ---------------------------------------------------------------------------------------------


def _kept_axes(name, shape):
    """The axes of a hook's activation that a node score keeps (the batch and features go)."""
    if name.endswith(("hook_attn_scores", "hook_pattern")):
        return ("head", "q_pos", "k_pos")
    if len(shape) == 4:
        return ("pos", "head")
    return ("pos",)


@dataclass
class NodeAttribution:
    """Attribution scores at every hook point, in units of the normalised metric (1 = clean).

    scores:   {own hook name: array}: [pos], [pos, head] (q, k, v, z, rotary q and k) or
              [head, q_pos, k_pos] (attn_scores, pattern), summed over batch and features
    axes:     {own hook name: the names of the kept axes}
    aliases:  {every name the model answers to: its hook point's own name}
    method:   "attribution" or "integrated gradients, N steps at HOOK"
    n_layers: the model's layer count (for the short names, as in the cache)
    """

    scores: dict
    axes: dict
    aliases: dict
    method: str
    n_layers: int

    def _own(self, name, layer=None):
        full = name if layer is None and name in self.aliases else hook_name(name, layer)
        own = self.aliases.get(full, full)
        if own not in self.scores:
            raise ValueError(
                f"name {name!r} (layer {layer}): no attribution score there; scored: "
                f"{sorted(self.scores)}"
            )
        return own

    def __getitem__(self, key):
        """``result["blocks.1.attn.hook_z"]``, ``result["z", 1]`` (TransformerLens short names)."""
        name, layer = (key[0], key[1]) if isinstance(key, tuple) else (key, None)
        if layer is not None and layer < 0:
            layer += self.n_layers
        return self.scores[self._own(name, layer)]

    def __contains__(self, name):
        return self.aliases.get(name, name) in self.scores

    def heads(self, name="z"):
        """[n_layers, n_heads]: each head's score at ``name`` (q, k, v or z), summed over pos:
        the estimate of ``patch_heads`` (for z)."""
        return np.stack([self[name, layer].sum(axis=0) for layer in range(self.n_layers)])

    def head_positions(self, name="z"):
        """[n_layers, pos, n_heads]: each head's score at ``name`` per position: the estimate of
        ``patch_head_positions`` (for z)."""
        return np.stack([self[name, layer] for layer in range(self.n_layers)])

    def positions(self, name="resid_pre"):
        """[n_layers, pos]: each layer's score at ``name`` (a [pos] hook) per position: the
        estimate of ``patch_positions``."""
        return np.stack([self[name, layer] for layer in range(self.n_layers)])


def _node_scores(names, clean, corrupted, gradient):
    scores, axes = {}, {}
    for name in names:
        delta = _difference(clean[name], corrupted[name])  # like the activation
        product = delta * gradient[name]  # like the activation
        kept = _kept_axes(name, product.shape)
        if kept == ("head", "q_pos", "k_pos"):
            scores[name] = product.sum(axis=0)  # [head, q_pos, k_pos]
        else:
            scores[name] = product.sum(axis=(0, -1))  # [pos] or [pos, head]
        axes[name] = kept
    return scores, axes


def attribution_patching(
    model, clean_tokens, corrupted_tokens, answer, wrong, steps=None, at=INPUT
):
    """Node attribution scores at every hook point (``NodeAttribution``), for the metric of
    ``patching.py``: M = (LD - LD_corrupted) / (LD_clean - LD_corrupted), LD the logit
    difference answer - wrong at the last position.

    ``steps=None``: attribution patching, (a_clean - a_corr) * dM/da at the corrupted run, from one
    clean forward and one corrupted forward and backward. ``steps=N``: integrated gradients, the
    gradient averaged over N runs with the activation at ``at`` (default ``hook_embed``: the
    token embeddings) interpolated from corrupted to clean at the midpoints (k + 1/2) / N. With
    ``at="hook_embed"`` every hook is scored; with another ``at``, only that hook. The token
    and position ids (``embed.hook_in``, ``pos_embed.hook_in``) have no gradient and no score.
    """
    setup = patching_setup(model, clean_tokens, corrupted_tokens, answer, wrong)
    steps = _check_steps(steps)
    at = _check_at(model, at)
    if steps is None and at != _own_names(model)[INPUT]:
        raise ValueError(f"at={at!r} chooses where integrated gradients interpolate: pass steps")
    clean, corrupted, runs = _gradient_runs(model, setup, steps, at)
    gradient = _mean(runs)
    names = [name for name in gradient if name in clean]
    if steps is not None and at != _own_names(model)[INPUT]:
        names = [at]
    scores, axes = _node_scores(names, clean, corrupted, gradient)
    method = "attribution" if steps is None else f"integrated gradients, {steps} steps at {at}"
    return NodeAttribution(scores, axes, _own_names(model), method, model.cfg.n_layers)


# ---------------------------------------------------------------------------------------------
# Edge attribution
# ---------------------------------------------------------------------------------------------


@dataclass
class EdgeAttribution:
    """Edge scores between components, in units of the normalised metric (1 = clean).

    scores:     [up, down]; NaN where there is no edge (u does not write before d reads)
    upstream:   labels: "embed", "pos_embed", "L0H1" (a head's output), "MLP0", ...
    downstream: labels: "L1H0.q", "L1H0.k", "L1H0.v" (a head's input; "L1KV0.k" for a
                grouped key/value head), "MLP1.in", "final"
    method:     "attribution" or "integrated gradients, N steps at hook_embed"
    """

    scores: np.ndarray
    upstream: list
    downstream: list
    method: str

    def score(self, up, down):
        """The score of the edge ``up`` -> ``down`` (labels)."""
        for label, labels, arg in ((up, self.upstream, "up"), (down, self.downstream, "down")):
            if label not in labels:
                raise ValueError(f"{arg}={label!r} is no node; nodes: {labels}")
        return float(self.scores[self.upstream.index(up), self.downstream.index(down)])

    def top(self, k=10):
        """The k edges of largest |score|: [(up, down, score)]."""
        flat = np.where(np.isnan(self.scores), 0.0, np.abs(self.scores)).ravel()
        order = np.argsort(-flat, kind="stable")[:k]
        rows, cols = np.unravel_index(order, self.scores.shape)
        return [
            (self.upstream[r], self.downstream[c], float(self.scores[r, c]))
            for r, c in zip(rows, cols, strict=True)
        ]


def _upstream(cfg, W_O, clean, corrupted):
    """(labels, layer of each, [up, batch, pos, d_model] what each writes, clean - corrupted)."""
    labels, layers, deltas = (
        ["embed"],
        [-1],
        [clean["embed.hook_out"] - corrupted["embed.hook_out"]],
    )
    if "pos_embed.hook_out" in clean:
        labels.append("pos_embed")
        layers.append(-1)
        deltas.append(clean["pos_embed.hook_out"] - corrupted["pos_embed.hook_out"])
    for layer in range(cfg.n_layers):
        z = f"blocks.{layer}.attn.o.hook_in"
        dz = clean[z] - corrupted[z]  # [batch, pos, head, d_head]
        for head in range(cfg.n_heads):
            labels.append(f"L{layer}H{head}")
            layers.append(layer)
            deltas.append(dz[:, :, head] @ W_O[layer, head])  # [batch, pos, d_model]
        if not cfg.attn_only:
            out = f"blocks.{layer}.mlp.hook_out"
            labels.append(f"MLP{layer}")
            layers.append(layer)
            deltas.append(clean[out] - corrupted[out])  # [batch, pos, d_model]
    return labels, layers, np.stack(deltas)


def _norm(cfg, state, name):
    """The reference's own norm component (LayerNorm, LayerNormPre or RMSNorm) holding the
    weights ``state`` has for ``name`` ("blocks.0.ln1"), in float64 as the rest of the analysis."""
    from numpy_impl.layernorm import LayerNorm

    norm = LayerNorm.for_config(replace(cfg, dtype="float64"))
    prefix = name + "."
    norm.load_state_dict(
        {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
    )
    return norm


def _through_norm(norm, x, pieces):
    """Gradients [n, batch, pos, d_model] at a norm's output -> at its input x [batch, pos,
    d_model], each on its own: the norm's backward is linear in the gradient it is given."""
    if norm is None:
        return pieces
    n = pieces.shape[0]
    norm.forward(np.tile(x, (n, 1, 1)))  # [n * batch, pos, d_model]
    dx = norm.backward(pieces.reshape((-1,) + pieces.shape[2:]))  # [n * batch, pos, d_model]
    return dx.reshape(pieces.shape)  # [n, batch, pos, d_model]


def _downstream_labels(cfg):
    labels, layers = [], []
    kv_heads = cfg.n_key_value_heads or cfg.n_heads
    kv = "KV" if cfg.n_key_value_heads is not None else "H"
    for layer in range(cfg.n_layers):
        for part, count in (("q", cfg.n_heads), ("k", kv_heads), ("v", kv_heads)):
            prefix = "H" if part == "q" else kv
            labels += [f"L{layer}{prefix}{head}.{part}" for head in range(count)]
            layers += [(layer, "attn")] * count
        if not cfg.attn_only:
            labels.append(f"MLP{layer}.in")
            layers.append((layer, "mlp"))
    labels.append("final")
    layers.append((cfg.n_layers, "final"))
    return labels, layers


def _downstream(model, projections, norms, acts, grads):
    """[down, batch, pos, d_model]: the residual stream's gradient into each downstream node."""
    cfg = model.cfg
    pre = cfg.normalization == "pre"
    pieces = []
    for layer in range(cfg.n_layers):
        attn = f"blocks.{layer}.attn"
        parts = []
        for part in ("q", "k", "v"):
            dpart = grads[f"{attn}.{part}.hook_out"]  # [batch, pos, head, d_head]
            W = projections[part][layer]  # [head, d_model, d_head]
            # forward: part = x W[h] + b[h], per head
            parts += [dpart[:, :, h] @ W[h].T for h in range(W.shape[0])]  # [batch, pos, d_model]
        x = acts[f"blocks.{layer}.ln1.hook_in"] if pre else None
        pieces.append(_through_norm(norms.get(f"blocks.{layer}.ln1"), x, np.stack(parts)))
        if not cfg.attn_only:
            mlp_in = f"blocks.{layer}.ln2.hook_in" if pre else f"blocks.{layer}.mlp.hook_in"
            pieces.append(grads[mlp_in][None])  # [1, batch, pos, d_model]
    final = "ln_final.hook_in" if pre else "unembed.hook_in"
    pieces.append(grads[final][None])  # [1, batch, pos, d_model]
    return np.concatenate(pieces)  # [down, batch, pos, d_model]


def _projections(cfg, state):
    """{"q": W_Q, "k": W_K, "v": W_V}, each [n_layers, head (or kv_head), d_model, d_head]."""
    kv = "_" if cfg.n_key_value_heads is not None else ""  # grouped: TransformerLens's _W_K, _W_V
    names = {"q": "W_Q", "k": kv + "W_K", "v": kv + "W_V"}
    return {
        part: np.stack([state[f"blocks.{layer}.attn.{name}"] for layer in range(cfg.n_layers)])
        for part, name in names.items()
    }


def edge_attribution_patching(model, clean_tokens, corrupted_tokens, answer, wrong, steps=None):
    """Edge attribution scores between components (``EdgeAttribution``), for the metric of
    ``attribution_patching``.

    Upstream nodes write into the residual stream: the embeddings, each head's output
    z_h W_O[h] (b_O is the same in both runs), each MLP's output. Downstream nodes read it: each
    head's query, key and value input, each MLP's input, the final stream. The score of u -> d is
    (u_clean - u_corrupted) . dM/d(the stream as d reads it), summed over batch and positions.
    ``steps=N`` averages the gradient over N runs with the token embeddings interpolated from
    corrupted to clean (integrated gradients, as ``attribution_patching``).
    """
    setup = patching_setup(model, clean_tokens, corrupted_tokens, answer, wrong)
    cfg = model.cfg
    if cfg.normalization == "post":
        raise ValueError(
            "edge_attribution_patching needs normalization 'pre' or None: a post-norm residual "
            "stream is re-normalised after every block, so it is not a sum of what nodes write"
        )
    steps = _check_steps(steps)
    state = {key: value.astype(np.float64) for key, value in weights(model).items()}
    projections = _projections(cfg, state)
    norms = {}
    if cfg.normalization == "pre":
        norms = {
            f"blocks.{layer}.ln1": _norm(cfg, state, f"blocks.{layer}.ln1")
            for layer in range(cfg.n_layers)
        }

    def downstream(acts, grads):
        return _downstream(model, projections, norms, acts, grads)

    at = _own_names(model)[INPUT]
    clean, corrupted, runs = _gradient_runs(model, setup, steps, at, each=downstream)
    gradient = _mean(runs)  # [down, batch, pos, d_model]
    # [n_layers, head, d_head, d_model]
    W_O = np.stack([state[f"blocks.{layer}.attn.W_O"] for layer in range(cfg.n_layers)])
    up_labels, up_layers, deltas = _upstream(cfg, W_O, clean, corrupted)
    down_labels, down_layers = _downstream_labels(cfg)
    # [up, down]: sum over batch, pos and d_model
    scores = np.einsum("ubpm,dbpm->ud", deltas, gradient, optimize=True)
    for u, (label, up_layer) in enumerate(zip(up_labels, up_layers, strict=True)):
        for d, (down_layer, kind) in enumerate(down_layers):
            same_layer_head = (
                kind == "mlp"
                and up_layer == down_layer
                and not label.startswith("MLP")
                and not cfg.parallel_attn_mlp
            )
            if not (up_layer < down_layer or same_layer_head):
                scores[u, d] = np.nan
    method = "attribution" if steps is None else f"integrated gradients, {steps} steps at {at}"
    return EdgeAttribution(scores, up_labels, down_labels, method)
