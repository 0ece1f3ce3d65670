"""Mechanistic interpretability, step by step, on a small model: ``python demo.py interp``.

Uses the trained induction model (``OUT/induction.npz``, from
``python demo.py induction --out OUT``; OUT defaults to ``outputs``) when it exists, else a seeded
random model, and says which; ``--model handmade`` uses the induction circuit wired by hand in
``interp/handmade.py``, where every answer is known. Each analysis runs on the NumPy reference,
writes a figure and prints a short reading; the same numbers from the torch twin are checked at the
end.
"""

import os

import numpy as np

# in the --out folder, where `python demo.py induction --out DIR` writes it
TRAINED_MODEL = "induction.npz"
ABLATION_RANGE = 0.1  # nats: a loss change smaller than this is drawn pale in the ablation figures


def add_arguments(parser):
    parser.add_argument(
        "--model",
        default="auto",
        help=f"a weights file, 'handmade', 'random', or 'auto' (default: OUT/{TRAINED_MODEL}, "
        "OUT being --out, if it exists, else random)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the random model and the random tokens (default 0)",
    )


def choose_model(args):
    """(NumPy model, one line saying which model it is, whether tokens start with a BOS id)."""
    import numpy_impl as npi
    from interp.handmade import induction_circuit_model

    choice = args.model
    trained = os.path.join(args.out, TRAINED_MODEL)
    if choice == "auto":
        choice = trained if os.path.exists(trained) else "random"
    if choice == "handmade":
        return (
            induction_circuit_model(),
            "the induction circuit wired by hand (interp/handmade.py)",
            True,
        )
    if choice == "random":
        cfg = npi.TransformerConfig(
            d_vocab=24, d_model=32, n_heads=4, d_mlp=64, n_layers=2, n_ctx=24
        )
        note = (
            f"a seeded random model (seed {args.seed}; no {trained} yet: `python demo.py induction "
            f"--out {args.out}` "
            "makes one). "
            "Random weights have no circuits, so expect no head to stand out"
        )
        return npi.Transformer(cfg, seed=args.seed), note, False
    if os.path.isdir(choice):
        raise SystemExit(
            f"--model: {choice!r} is a folder; interp reads a weights file (.npz or .safetensors) "
            "as `python demo.py induction` writes one. A Hugging Face GPT-2 folder (for one "
            "offline: "
            "`python demo.py checkpoint DIR`) goes to `python demo.py gpt2 --model DIR`"
        )
    if not os.path.exists(choice):
        raise SystemExit(
            f"--model: no weights file at {choice!r} (or use 'handmade', 'random', 'auto')"
        )
    return npi.Transformer.load(choice), f"the trained model in {choice}", False


def top(grid):
    """(layer, head, value) of the largest entry of a [n_layers, n_heads] array."""
    from interp.scores import best_head

    return best_head(grid)


def heading(text):
    print()
    print(text)
    print("-" * len(text))


class Walk:
    """What every step of the tour shares: the model, its tokens, where figures go, what was
    found."""

    def __init__(self, model, tokens, bos, out, seed):
        self.model, self.cfg, self.tokens, self.bos, self.out, self.seed = (
            model,
            model.cfg,
            tokens,
            bos,
            out,
            seed,
        )
        self.half = (self.cfg.n_ctx - bos) // 2  # length of the random half that repeats
        self.first = int(bos)  # position of the first random token
        self.labels = [str(t) for t in tokens[0]]
        self.figures = []
        self.small_gap = False  # step 7 sets it: a clean-corrupted gap too small to divide by

    def figure(self, name):
        """The path of a new figure in the output folder, remembered for the list at the end."""
        path = os.path.join(self.out, name)
        self.figures.append(path)
        return path


def run(args):
    from interp.common import repeated_random_tokens

    os.makedirs(args.out, exist_ok=True)
    model, note, bos = choose_model(args)
    cfg = model.cfg
    print(f"Model: {note}.")
    print(
        f"  {cfg.n_layers} layers x {cfg.n_heads} heads, d_model {cfg.d_model}, d_vocab "
        f"{cfg.d_vocab}, "
        f"n_ctx {cfg.n_ctx}, normalization {cfg.normalization}, "
        f"{'attention only' if cfg.attn_only else 'with MLPs'}"
    )
    # Repeated random tokens: a random half, then the same half again (after a BOS id if the model
    # uses one)
    half = (cfg.n_ctx - bos) // 2
    if bos:
        from interp.handmade import bos_repeated_tokens

        tokens = bos_repeated_tokens(cfg.d_vocab, half, batch=8, seed=args.seed)
    else:
        tokens = repeated_random_tokens(cfg.d_vocab, half, batch=8, seed=args.seed)
    walk = Walk(model, tokens, bos, args.out, args.seed)

    cache = show_cache(walk)
    head_scores = show_attention(walk, cache)
    show_head_scores(walk, head_scores)
    lens = show_logit_lens(walk)
    show_attribution(walk)
    ablations = show_ablation(walk)
    patched = show_patching(walk)
    show_attribution_patching(walk, patched)
    show_circuits(walk, head_scores)
    show_twin_agreement(walk, cache, head_scores, lens, ablations, patched)

    heading("Figures")
    for path in walk.figures:
        print(f"  {path}")


def show_cache(walk):
    """1. run_with_cache: every activation and its gradient, by hook name."""
    from interp.common import next_token_loss

    cfg, tokens = walk.cfg, walk.tokens
    heading("1. The cache: every activation, by TransformerLens's hook names")
    logits, cache = walk.model.run_with_cache(tokens, incl_bwd=True)
    n_grads = sum(name.endswith("_grad") for name in cache.keys())
    print(
        f"run_with_cache on tokens {tokens.shape}: {len(cache) - n_grads} activations and "
        f"{n_grads} gradients "
        "(incl_bwd=True: d loss / d activation from the hand-written backward)."
    )
    for key in [
        ("resid_pre", 0),
        ("pattern", 0),
        ("q", 0, "attn"),
        ("z", cfg.n_layers - 1),
        ("resid_post", -1),
    ]:
        print(
            f"  cache[{', '.join(map(repr, key))}] -> {cache.resolve(key):<28} "
            f"{tuple(cache[key].shape)}"
        )
    print(
        f"Next-token loss on these tokens: {next_token_loss(logits, tokens):.3f} "
        f"(uniform guessing: log {cfg.d_vocab} = {np.log(cfg.d_vocab):.3f})."
    )
    return cache


def show_attention(walk, cache):
    """2. Attention patterns of every head, and the best induction head large; returns the head
    scores."""
    from interp import plots, scores
    from interp.handmade import bos_repeated_tokens

    heading("2. Attention patterns")
    # where the repeated half starts: an orange line in the figures
    second_copy = walk.first + walk.half
    plots.plot_attention_grid(
        cache,
        walk.figure("interp_attention_grid.png"),
        token_labels=walk.labels,
        separators=[second_copy],
        separator_note=f"orange lines: the copy starts (position {second_copy})",
        title="Attention patterns of sequence 0: random tokens, then the same tokens again",
    )
    # the head scores: on the tokens `python demo.py induction` scores on too, so both print the
    # same numbers
    if walk.bos:
        score_tokens = bos_repeated_tokens(
            walk.cfg.d_vocab, walk.half, batch=scores.SCORE_BATCH, seed=walk.seed + 1
        )
    else:
        score_tokens = scores.scoring_tokens(walk.cfg, walk.seed)
    walk.score_tokens = score_tokens
    head_scores = scores.all_head_scores(walk.model, score_tokens)
    il, ih, value = top(head_scores["induction"])
    clear = value > scores.CLEAR_HEAD
    plots.plot_attention_head(
        cache["pattern", il][0, ih],
        walk.figure("interp_attention_head.png"),
        token_labels=walk.labels,
        causal=walk.cfg.causal,
        separators=[second_copy],
        separator_note=f"orange lines: the copy starts (position {second_copy})",
        title=f"Layer {il}, head {ih}: the highest induction score ({value:.2f}"
        f"{'' if clear else ', not a clear induction head'})",
    )
    print(
        f"Wrote the grid of every head, and layer {il}, head {ih} (the highest induction score) "
        f"large. The "
        f"sequence repeats after position {walk.first + walk.half - 1}: an induction head's "
        f"pattern shows a "
        f"stripe one step right of the offset-{walk.half} diagonal in the second half."
    )
    return head_scores


def show_head_scores(walk, head_scores):
    """3. Previous-token, duplicate-token and induction scores of every head."""
    from interp import plots, scores

    heading("3. Head scores: previous-token, duplicate-token, induction")
    print(f"On {scores.scoring_data(walk.half)} (the induction tour scores on the same tokens):")
    for kind, grid in head_scores.items():
        plots.plot_score_grid(grid, walk.figure(f"interp_{kind}_scores.png"), kind, walk.half)
        print(f"  {scores.head_verdict(kind, grid)}; the lowest head scores {grid.min():.2f}.")


def show_logit_lens(walk):
    """4. The logit lens after every layer; returns it."""
    from interp import analyses, plots

    heading("4. Logit lens")
    lens = analyses.logit_lens(walk.model, walk.tokens)
    plots.plot_logit_lens(lens, walk.figure("interp_logit_lens.png"))
    # positions that predict a token of the repeated half
    second = slice(walk.first + walk.half - 1, None)
    for label, logprob, top1 in zip(lens.labels, lens.next_logprob, lens.next_top1):
        print(
            f"  {label:<9} mean log p(next) {logprob.mean():7.3f}   on the repeated half "
            f"{logprob[:, second].mean():7.3f}"
            f"   top-1 {top1:.2f}"
        )
    print(
        "Reading: the layer after which log p on the repeated half jumps is where the copying "
        "happens."
    )
    return lens


def show_attribution(walk):
    """5. Direct logit attribution of the true next token (not for post-norm models)."""
    from interp import analyses, plots

    heading("5. Direct logit attribution (the true next token)")
    if walk.cfg.normalization == "post":
        print(
            "Skipped: a post-norm residual stream is re-normalised after every block, so it is not "
            "a sum of parts."
        )
        return
    dla = analyses.direct_logit_attribution(walk.model, walk.tokens)
    plots.plot_attribution(dla, walk.figure("interp_attribution.png"))
    best = int(np.argmax(dla.components))
    layer, head, value = top(dla.heads)
    print(
        f"The parts add up to the mean logit: {dla.components.sum():.3f} + bias {dla.bias:.3f} = "
        f"{dla.logit:.3f}."
    )
    print(
        f"Largest component: {dla.component_labels[best]} ({dla.components[best]:.3f}); "
        f"largest head: layer {layer}, head {head} ({value:.3f})."
    )


def show_ablation(walk):
    """6. Zero- and mean-ablation of every head; returns {kind: [n_layers, n_heads] loss change}."""
    from interp import analyses, plots
    from tours.progress import progress

    heading("6. Head ablation: how much worse is the loss without each head?")
    ablations = {
        kind: analyses.head_ablation(walk.model, walk.tokens, kind)
        for kind in progress(["zero", "mean"], "ablating")
    }
    for kind, change in ablations.items():
        plots.plot_head_scores(
            change,
            walk.figure(f"interp_ablation_{kind}.png"),
            diverging=True,
            fmt="{:+.3f}",
            min_range=ABLATION_RANGE,
            label="loss change (nats)",
            title=f"{kind}-ablation: loss change per head\n"
            f"(scale at least +-{ABLATION_RANGE} nats: noise stays pale)",
        )
        layer, head, value = top(change)
        print(
            f"  {kind}-ablation: layer {layer}, head {head} matters most (loss {value:+.3f} nats); "
            f"the smallest change is {change.min():+.3f}."
        )
    return ablations


def show_patching(walk):
    """7. Activation patching per position and per head; returns (clean, corrupted, answer, wrong,
    heads)."""
    from interp import patching, plots

    cfg, bos, first, half = walk.cfg, walk.bos, walk.first, walk.half
    heading("7. Activation patching")
    # clean: ... r_j ... r_(j-1) at the end, predicting r_j; corrupted: r_j replaced by a token
    # absent from the row
    j = first + half // 2
    length = first + half + (j - first)  # the last position holds the second copy of r_(j-1)
    clean = walk.tokens[:, :length].copy()
    corrupted = clean.copy()
    rng = np.random.default_rng(walk.seed)
    for row in corrupted:
        unused = np.setdiff1d(np.arange(cfg.d_vocab - bos), row)
        row[j] = rng.choice(unused) if len(unused) else (row[j] + 1) % (cfg.d_vocab - bos)
    answer, wrong = clean[:, j], corrupted[:, j]
    setup = patching.patching_setup(walk.model, clean, corrupted, answer, wrong)
    print(
        f"Clean: position {j} holds the answer and the last position ({length - 1}) repeats the "
        f"token before it."
    )
    print(
        f"Corrupted: position {j} replaced. Logit difference answer - wrong at the last position: "
        f"clean "
        f"{setup.clean_logit_diff:.3f}, corrupted {setup.corrupted_logit_diff:.3f}."
    )
    walk.small_gap = abs(setup.clean_logit_diff - setup.corrupted_logit_diff) < 0.1
    if walk.small_gap:
        print(
            "  A small gap: this model barely uses the earlier token, and every normalised number "
            "below is"
        )
        print("  divided by that gap, so values far outside [0, 1] are noise, not structure.")
    grid = patching.patch_positions(walk.model, clean, corrupted, answer, wrong, "resid_pre")
    plots.plot_patching(
        grid,
        walk.figure("interp_patching_positions.png"),
        token_labels=[str(t) for t in clean[0]],
        title="Patching resid_pre per layer and position (1 = clean answer restored)",
    )
    heads = patching.patch_heads(walk.model, clean, corrupted, answer, wrong)
    plots.plot_head_scores(
        heads,
        walk.figure("interp_patching_heads.png"),
        diverging=True,
        min_range=1.0,
        title="Patching each head's output (all positions)",
        label="restored fraction of the logit difference\n(1 = clean answer restored)",
    )
    layer, head, value = top(heads)
    print(
        f"  resid_pre, layer 0: {grid[0, j]:.2f} at position {j} (the embeddings differ only "
        f"there) and "
        f"{np.abs(np.delete(grid[0], j)).max():.2f} elsewhere; layer {cfg.n_layers - 1}: "
        f"{grid[-1, j]:.2f} at {j}, {grid[-1, -1]:.2f} at the last position."
    )
    print(f"  per head: layer {layer}, head {head} restores the most ({value:.2f}).")
    walk.resid_patching = grid  # [n_layers, pos], for the attribution step
    return clean, corrupted, answer, wrong, heads


IG_STEPS = 16  # integrated gradients: runs with the embeddings between corrupted and clean


def show_attribution_patching(walk, patched):
    """7b. Attribution patching: the patching grids again from gradients (node and edge, and
    integrated gradients), against activation patching on two corruptions."""
    import torch_impl as pti
    from foundation.contract.agreement import rel_err
    from interp import attribution, patching

    clean, corrupted, answer, wrong, heads = patched
    cfg, bos, first, half = walk.cfg, walk.bos, walk.first, walk.half
    heading("7b. Attribution patching")
    print(
        "The patching grids again, from gradients: (clean - corrupted activation) x the metric's "
        "gradient at the corrupted run (one forward and one backward); and integrated gradients, "
        f"the gradient averaged over {IG_STEPS} runs with the token embeddings moved from "
        "corrupted to clean. Pearson r and the largest miss against activation patching:"
    )
    args = (clean, corrupted, answer, wrong)
    print(f"  Position {first + half // 2} replaced (as in 7):")
    if walk.small_gap:
        print(
            "    As in 7, the logit difference barely moves with this token, and both sides of "
            "each row are\n    divided by that small gap: these r values and misses are noise, "
            "not structure."
        )
    compare_with_patching(
        walk, args, heads, walk.resid_patching, "interp_attribution_patching.png", "one token"
    )
    # the whole first half replaced: no earlier occurrence is left for the induction head to find
    rng = np.random.default_rng(walk.seed + 1)
    every = clean.copy()
    ids = cfg.d_vocab - bos  # a BOS id, when there is one, is the last
    for row in every:
        fresh = rng.permutation(ids)[:half] if half <= ids else rng.integers(0, ids, half)
        row[first : first + half] = fresh
    every_args = (clean, every, answer, every[:, first + half // 2])
    print(f"  Every token of the first half (positions {first} to {first + half - 1}) replaced:")
    compare_with_patching(
        walk,
        every_args,
        patching.patch_heads(walk.model, *every_args),
        patching.patch_positions(walk.model, *every_args, component="resid_pre"),
        "interp_attribution_patching_first_half.png",
        "the whole first half",
    )
    edges = attribution.edge_attribution_patching(walk.model, *args)
    print("  Edges (upstream -> downstream input), largest |score|, one token replaced:")
    for up, down, score in edges.top(5):
        print(f"    {up:>9} -> {down:<9} {score:+.3f}")
    twin = pti.Transformer.from_twin(walk.model)
    ours = attribution.attribution_patching(walk.model, *args).heads("z")
    worst = max(
        rel_err(ours, attribution.attribution_patching(twin, *args).heads("z")),
        rel_err(
            np.nan_to_num(edges.scores),  # NaN where there is no edge, in both
            np.nan_to_num(attribution.edge_attribution_patching(twin, *args).scores),
        ),
    )
    print(f"  The torch twin's node and edge scores: relative {worst:.1e} ({cfg.dtype}).")


def compare_with_patching(walk, args, heads, positions, figure, replaced):
    """Node attribution and integrated gradients against activation patching per head
    ([n_layers, n_heads]) and per layer and position of resid_pre ([n_layers, pos]): a table
    and a figure."""
    from interp import attribution, plots

    cfg = walk.cfg
    plain = attribution.attribution_patching(walk.model, *args)
    integrated = attribution.attribution_patching(walk.model, *args, steps=IG_STEPS)
    ig = f"integrated gradients, {IG_STEPS} steps"
    rows = [
        {
            "name": "one head's z, all positions",
            "patched": heads,
            "estimates": {"attribution": plain.heads("z"), ig: integrated.heads("z")},
            "groups": np.arange(cfg.n_layers * cfg.n_heads),
            "group_names": [
                plots.head_name(layer, head)
                for layer in range(cfg.n_layers)
                for head in range(cfg.n_heads)
            ],
        },
        {
            "name": "resid_pre at one layer and position",
            "patched": positions,
            "estimates": {
                "attribution": plain.positions("resid_pre"),
                ig: integrated.positions("resid_pre"),
            },
            "groups": np.repeat(np.arange(cfg.n_layers), positions.shape[1]),
            "group_names": [f"layer {layer}" for layer in range(cfg.n_layers)],
        },
    ]
    plots.plot_attribution_patching(
        rows,
        walk.figure(figure),
        title=f"Attribution patching against activation patching: {replaced} replaced",
    )
    for row, short in zip(rows, ("per head", "per layer and position"), strict=True):
        for label, estimate in row["estimates"].items():
            r = np.corrcoef(np.ravel(row["patched"]), np.ravel(estimate))[0, 1]
            error = np.abs(np.asarray(estimate) - row["patched"]).max()
            print(f"    {short:<24}{label:<32} r {r:6.3f}   max |error| {error:.3f}")


def show_circuits(walk, head_scores):
    """8. Circuits read from the weights: copying scores, the full OV and positional QK circuits,
    composition."""
    from interp import circuits, plots, scores

    model, cfg = walk.model, walk.cfg
    heading("8. Circuits read from the weights")
    il, ih, induction = top(head_scores["induction"])
    copying = circuits.copying_scores(model)
    baseline = circuits.copying_baseline(model, seed=walk.seed)
    plots.plot_head_scores(
        copying,
        walk.figure("interp_copying_scores.png"),
        baseline=baseline,
        vmax=1,
        baseline_note="random OV",
        label="copying score: sum(eig) / sum(|eig|)",
        title="Copying score of each head's full OV circuit\n(white: no higher than a head "
        "with random W_V, W_O\nscores 95% of the time)",
    )
    _, cache = model.run_with_cache(walk.tokens)
    ov, with_norms = circuits.full_ov_logits(model, il, ih, cache)
    plots.plot_matrix(
        ov,
        walk.figure("interp_full_ov.png"),
        title=f"Full OV circuit of layer {il}, head {ih}: "
        + ("LN1(W_E) W_V W_O LN_final W_U" if with_norms else "W_E W_V W_O W_U"),
        xlabel="logit of token",
        ylabel="attended token",
        min_range=plots.MIN_LOGIT_RANGE,
        label="logit added when the head attends fully to the row's token"
        + ("\n(LayerNorm scales measured on these tokens)" if with_norms else ""),
    )
    pl, ph, _ = top(head_scores["previous_token"])
    later_keys = np.triu(np.ones((cfg.n_ctx, cfg.n_ctx), dtype=bool), k=1) if cfg.causal else None
    plots.plot_matrix(
        circuits.positional_qk_circuit(model, pl, ph),
        walk.figure("interp_positional_qk.png"),
        title=f"Positional QK circuit of layer {pl}, head {ph}: W_pos W_Q W_K^T W_pos^T",
        xlabel="key position",
        ylabel="query position",
        label="attention score (unscaled)",
        mask=later_keys,
        mask_note="key after query, never attended",
    )
    which = (
        "the clear induction head"
        if induction > scores.CLEAR_HEAD
        else "the highest induction score, no clear one"
    )
    verdict = "copies" if copying[il, ih] > baseline else "no more than a random head would"
    print(
        f"Copying score of layer {il}, head {ih} ({which}): {copying[il, ih]:+.2f} (+1: raises the "
        f"logit of "
        f"the token it attends to; a head with random W_V, W_O scores up to {baseline:+.2f} here): "
        f"{verdict}."
    )
    print(
        f"  Its full OV circuit, with the LayerNorms put back, adds up to {np.abs(ov).max():.1f} "
        f"to a logit."
    )
    if cfg.n_layers < 2:
        return
    composition = {
        kind: circuits.composition_scores(model, kind) for kind in circuits.COMPOSITION_KINDS
    }
    baseline = 1 / np.sqrt(cfg.d_model)
    plots.plot_composition(composition, walk.figure("interp_composition.png"), baseline=baseline)
    print(
        f"Composition scores (interp_composition.png; random matrices score about 1/sqrt(d_model) "
        f"= "
        f"{baseline:.3f}, so a score means something only well above it):"
    )
    for kind, grid in composition.items():
        a, b = np.unravel_index(np.argmax(grid), grid.shape)
        if grid[a, b] > baseline:
            print(
                f"  {kind.upper()}-composition: strongest layer 0 head {a} -> layer 1 head {b} = "
                f"{grid[a, b]:.3f}, "
                f"{grid[a, b] - baseline:.3f} above the baseline"
            )
        else:
            print(
                f"  {kind.upper()}-composition: no pair above the baseline (the highest, layer 0 "
                f"head {a} -> "
                f"layer 1 head {b}, "
                f"is {grid[a, b]:.3f})"
            )
    above = {
        kind: grid.max() - baseline for kind, grid in composition.items() if grid.max() > baseline
    }
    strongest = max(above, key=above.get) if above else None
    if strongest is None:
        print(
            "Reading: no head in layer 1 reads a layer-0 head's output more than random matrices "
            "would: "
            "no composition, so no induction circuit of two heads."
        )
    elif strongest == "k":
        print(
            "Reading: K-composition is the strongest: the layer-1 head finds its keys through a "
            "layer-0 "
            "head's output, as an induction head reads a previous-token head."
        )
    else:
        print(
            f"Reading: {strongest.upper()}-composition is the strongest here, not K-composition: "
            f"no sign yet "
            "of an induction head reading a previous-token head through its keys."
        )


def show_twin_agreement(walk, cache, head_scores, lens, ablations, patched):
    """9. The same analyses on the torch twin, as relative errors per tensor."""
    import torch_impl as pti
    from foundation.contract.agreement import rel_err
    from interp import analyses, patching, scores
    from interp.common import run_cache

    tokens = walk.tokens
    clean, corrupted, answer, wrong, heads = patched
    heading("9. The torch twin gives the same numbers")
    twin = pti.Transformer.from_twin(walk.model)
    checks = {
        "induction scores": (
            head_scores["induction"],
            scores.induction_scores(twin, walk.score_tokens),
        ),
        "logit lens": (lens.logits, analyses.logit_lens(twin, tokens).logits),
        "zero ablation": (ablations["zero"], analyses.head_ablation(twin, tokens, "zero")),
        "patching per head": (heads, patching.patch_heads(twin, clean, corrupted, answer, wrong)),
    }
    _, twin_cache = run_cache(twin, tokens)
    # masked attention scores are -inf in both
    finite = lambda x: np.where(np.isfinite(x), x, 0.0)  # noqa: E731
    worst = max(
        rel_err(finite(cache[name]), finite(twin_cache[name])) for name in twin_cache.keys()
    )
    print(f"  ({walk.cfg.dtype}; relative = max |numpy - torch| / max |torch|, per tensor)")
    print(f"  {'every cached activation':<24} relative {worst:.1e}")
    for name, (ours, theirs) in checks.items():
        print(
            f"  {name:<24} relative "
            f"{rel_err(finite(np.asarray(ours)), finite(np.asarray(theirs))):.1e}"
        )
