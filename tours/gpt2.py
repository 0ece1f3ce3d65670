"""``python demo.py gpt2 --model DIR``: a Hugging Face checkpoint (GPT-2, Llama or GPT-NeoX) in both
twins.

DIR is a folder as ``transformers``' ``save_pretrained`` writes it: ``config.json`` and
``model.safetensors`` or its shards (and, for text, GPT-2's ``vocab.json`` and ``merges.txt``, or
``tokenizer.json``); ``python demo.py checkpoint DIR --arch llama`` writes a tiny random one.
Nothing is downloaded. The tour loads the checkpoint into the NumPy reference and the torch twin,
runs the next-token loss forward and backward through both (the NumPy gradients from the
hand-written backward) and prints how far apart they are, generates greedily from both, and draws
the attention patterns (every head, the previous-token scores, the most previous-token head) and the
logit lens of the prompt.

Without a tokenizer, ``--prompt`` is token ids ("464 3290 318").
"""

import os
import time

import numpy as np

DEFAULT_TEXT = "When Mary and John went to the store, John gave a drink to"
DEFAULT_IDS = 8  # without a tokenizer and a prompt: 8 random ids, then the same 8 again
DEFAULT_NEW_TOKENS = 10  # at most; fewer where the model's n_ctx leaves less room
# a model with more heads gets a figure of the MOST_HEADS // 2 most previous-token ones
MOST_HEADS = 16


def add_arguments(parser):
    parser.add_argument(
        "--model",
        required=True,
        metavar="DIR",
        help="a GPT-2, Llama or GPT-NeoX checkpoint folder: config.json and model.safetensors "
        "(save_pretrained's)",
    )
    parser.add_argument(
        "--prompt",
        default=None,
        help=f"text (with a tokenizer in DIR; default {DEFAULT_TEXT!r}) or token ids "
        "separated by spaces or commas (default without them: random ids, repeated once)",
    )
    parser.add_argument(
        "--new-tokens",
        type=int,
        default=None,
        help=f"tokens to generate greedily (default {DEFAULT_NEW_TOKENS}, or what n_ctx leaves "
        f"room for)",
    )


def heading(text):
    print()
    print(text)
    print("-" * len(text))


def run(args):
    import numpy_impl as npi
    import torch_impl as pti

    if args.new_tokens is not None and args.new_tokens < 0:
        raise ValueError(f"--new-tokens must be a non-negative int, got {args.new_tokens}")
    os.makedirs(args.out, exist_ok=True)
    start = time.perf_counter()
    model = npi.Transformer.from_pretrained(args.model)
    twin = pti.Transformer.from_pretrained(args.model)
    cfg = model.cfg
    # as loaded: one matrix, or two
    tied = np.array_equal(model.unembed.W_U.data, model.embed.W_E.data.T)
    n_params = sum(
        p.data.size
        for name, p in model.named_parameters()
        if not (tied and name.startswith("unembed."))
    )
    print(
        f"Loaded {args.model} ({family(cfg)}) into both twins in {time.perf_counter() - start:.1f} "
        f"s:"
    )
    print(
        f"  {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads of {cfg.d_head}, "
        f"d_mlp {cfg.d_mlp}, "
        f"d_vocab {cfg.d_vocab}, n_ctx {cfg.n_ctx}, {cfg.act_fn}, {cfg.dtype}; {n_params:,} "
        f"parameters"
        + (
            " (counted as GPT-2 counts them: the unembedding is the embedding, transposed)"
            if tied
            else ""
        )
    )
    if cfg.positional == "rotary":
        print(
            f"  {cfg.normalization_type} norms, rotary on {cfg.rotary_dim} of {cfg.d_head} (base "
            f"{cfg.rotary_base:g})"
            + (f", {cfg.n_key_value_heads} key/value heads" if cfg.n_key_value_heads else "")
            + (", SwiGLU" if cfg.gated_mlp else "")
            + (", attention and MLP in parallel" if cfg.parallel_attn_mlp else "")
        )
    print(f"  tokenizer: {tokenizer_kind(model)}")

    tokens, note = prompt_tokens(model, args.prompt, args.new_tokens)
    new_tokens = (
        args.new_tokens
        if args.new_tokens is not None
        else min(DEFAULT_NEW_TOKENS, cfg.n_ctx - tokens.shape[1])
    )
    labels = token_labels(model, tokens[0])
    heading("The prompt")
    print(note)
    print(f"  tokens {tokens.shape}: {tokens[0].tolist()}")
    if model.tokenizer is not None:
        print(f"  as text pieces: {labels}")

    show_agreement(model, twin, tokens, tied)
    show_generation(model, twin, tokens, new_tokens)
    figures = show_figures(model, tokens, labels, args.out, family(cfg))
    heading("Figures")
    for path in figures:
        print(f"  {path}")


def family(cfg):
    """The checkpoint's family, from what its config computes."""
    if cfg.positional != "rotary":
        return "GPT-2"
    return "GPT-NeoX" if cfg.parallel_attn_mlp or cfg.normalization_type == "LN" else "Llama"


def tokenizer_kind(model):
    if model.tokenizer is None:
        return "none (token ids)"
    if hasattr(model.tokenizer, "END_OF_TEXT"):
        return "byte-level BPE from vocab.json and merges.txt"
    return "tokenizer.json (tokenizers)"


def prompt_tokens(model, prompt, new_tokens):
    """(tokens [1, pos] int64, one line saying where they came from); a prompt that cannot run is a
    ValueError.

    The defaults fit any model: the default text is cut to leave room for a few new tokens
    within n_ctx, and (in ``run``) the default number of new tokens is what n_ctx leaves.
    """
    cfg = model.cfg
    if prompt is not None:
        try:
            prompt.encode("utf-8")  # a non-UTF-8 argument arrives with lone surrogates in it
        except UnicodeEncodeError as error:
            raise ValueError(
                f"--prompt is not UTF-8 text (at character {error.start}: "
                f"{ascii(prompt[error.start])})"
            ) from None
    # for the new tokens
    room = min(DEFAULT_NEW_TOKENS, cfg.n_ctx // 4) if new_tokens is None else new_tokens
    if model.tokenizer is not None:
        text = DEFAULT_TEXT if prompt is None else prompt
        if not text.strip():
            raise ValueError("--prompt is empty")
        # [1, pos], <|endoftext|> first, as TransformerLens does
        tokens = np.asarray(model.to_tokens(text))
        bos = model.tokenizer.bos_token
        kind = "byte-level BPE" if hasattr(model.tokenizer, "END_OF_TEXT") else "tokenizer.json"
        note = f"{text!r}, {kind}, {f'{bos} prepended' if bos else 'no BOS'}"
        if prompt is None and tokens.shape[1] + room > cfg.n_ctx:
            tokens = tokens[:, : max(2, cfg.n_ctx - room)]  # [1, pos]: the default text, cut to fit
            note += f"; cut to its first {tokens.shape[1]} tokens to fit n_ctx {cfg.n_ctx}"
    elif prompt is None:
        # both copies and the new tokens fit
        length = max(1, min(DEFAULT_IDS, (cfg.n_ctx - room) // 2))
        half = np.random.default_rng(0).integers(0, cfg.d_vocab, length)
        tokens = np.concatenate([half, half])[None, :]  # [1, 2 * length]
        note = (
            f"no tokenizer in the folder, and no --prompt: {length} random ids, then the same "
            "again (a trained GPT-2's induction heads attend along the copy)"
        )
    else:
        pieces = prompt.replace(",", " ").split()
        if not pieces or not all(p.isascii() and p.isdigit() for p in pieces):
            raise ValueError(
                f"--prompt must be token ids separated by spaces or commas (the folder has no "
                f"tokenizer: no vocab.json "
                f"and merges.txt), got {prompt!r}"
            )
        too_large = next((p for p in pieces if len(p) > 18 or int(p) >= cfg.d_vocab), None)
        if too_large is not None:  # before the ids become int64, which a long one would overflow
            shown = too_large if len(too_large) <= 30 else too_large[:27] + "..."
            raise ValueError(f"--prompt: token id {shown} is not in [0, {cfg.d_vocab})")
        tokens = np.array([[int(p) for p in pieces]], dtype=np.int64)
        note = "token ids from --prompt"
    if tokens.shape[1] < 2:
        raise ValueError("--prompt must give at least 2 tokens (position p predicts token p + 1)")
    if tokens.shape[1] + (new_tokens or 0) > cfg.n_ctx:
        raise ValueError(
            f"the prompt has {tokens.shape[1]} tokens; with --new-tokens {new_tokens or 0} that "
            f"exceeds "
            f"the model's n_ctx ({cfg.n_ctx})"
        )
    return tokens.astype(np.int64), note


def token_labels(model, row):
    """Each token as its text (with the tokenizer) or its id."""
    if model.tokenizer is None:
        return [str(int(t)) for t in row]
    return model.to_str_tokens(row)


# gradient groups of the agreement table: label -> which parameter names it holds; a label ending
# in ":" is followed by the names the model has (an RMSNorm has no b, GPT-NeoX no W_gate)
GROUPS = [
    ("W_E + W_U.T (the tied matrix)", lambda name: name == "tied"),
    ("W_E", lambda name: name == "embed.W_E"),
    ("W_U", lambda name: name == "unembed.W_U"),
    ("pos_embed.W_pos", lambda name: name == "pos_embed.W_pos"),
    ("attention:", lambda name: ".attn.W_" in name or ".attn._W_" in name),
    (
        "attention:",
        lambda name: (".attn.b_" in name or ".attn._b_" in name) and not name.endswith("b_K"),
    ),
    ("attention:", lambda name: name.endswith(("attn.b_K", "attn._b_K"))),
    ("MLP:", lambda name: ".mlp." in name),
    ("norms:", lambda name: ".ln" in name or name.startswith("ln_final")),
    ("unembed.b_U (not in the file)", lambda name: name == "unembed.b_U"),
]


def group_label(label, names):
    """The row's label: ``label``, or for "attention:", "MLP:", "norms:" the names present
    (grouped-query attention's ``_W_K`` as ``W_K``, the name its property reads it by)."""
    if not label.endswith(":"):
        return label
    # in the model's order
    short = dict.fromkeys(name.rsplit(".", 1)[-1].lstrip("_") for name in names)
    return f"{label[:-1]} {', '.join(short)}"


def show_agreement(model, twin, tokens, tied=True):
    """Forward and backward of the next-token loss in both twins; a table of the largest
    differences."""
    import torch

    from foundation.contract.agreement import TOL, rel_err, relative_errors

    heading("The twins agree: next-token loss, forward and backward")
    start = time.perf_counter()
    logits = model(tokens)  # [1, pos, d_vocab]
    loss_fn = type(model).loss_class()
    loss = loss_fn.forward(logits[:, :-1], tokens[:, 1:])  # position p predicts token p + 1
    dlogits = np.zeros_like(logits)
    dlogits[:, :-1] = loss_fn.backward()
    model.zero_grad()
    model.backward(dlogits)
    numpy_s = time.perf_counter() - start
    start = time.perf_counter()
    twin.zero_grad()
    logits_t, loss_t = twin(torch.from_numpy(tokens), return_type="both")
    loss_t.backward()
    torch_s = time.perf_counter() - start
    grads = {name: p.grad for name, p in model.named_parameters()}
    twin_grads = {name: p.grad.numpy() for name, p in twin.named_parameters()}
    # one matrix used twice: its gradient is the sum of both uses
    for side in (grads, twin_grads) if tied else ():
        side["tied"] = side.pop("embed.W_E") + side.pop("unembed.W_U").T
    errors = relative_errors(grads, twin_grads)
    print(
        f"NumPy (hand-written backward) {numpy_s:.2f} s, torch (autograd) {torch_s:.2f} s; "
        f"loss {float(loss):.6f} (NumPy), {loss_t.item():.6f} (torch)"
    )
    print(f"  {'tensor':<34} {'max |numpy - torch|':>20} {'relative':>10}")
    rows = [
        ("logits", np.abs(logits - logits_t.detach().numpy()).max(), rel_err(logits, logits_t)),
        (
            "loss",
            abs(float(loss) - loss_t.item()),
            rel_err(np.asarray(float(loss)), loss_t.detach()),
        ),
    ]
    # b_K's exact gradient is zero when the keys are not rotated: measured against the largest
    starred = model.cfg.positional != "rotary"
    for label, member in GROUPS:
        names = [name for name in grads if member(name)]
        if names:
            star = " *" if starred and all(n.endswith("b_K") for n in names) else ""
            rows.append(
                (
                    f"grad {group_label(label, names)}{star}",
                    max(np.abs(grads[n] - twin_grads[n]).max() for n in names),
                    max(errors[n] for n in names),
                )
            )
    for label, gap, relative in rows:
        print(f"  {label:<34} {gap:>20.2e} {relative:>10.1e}")
    worst = max(relative for _, _, relative in rows)
    print(
        f"  worst relative difference: {worst:.1e} ({model.cfg.dtype}; the parity tests require "
        f"<= {TOL[model.cfg.dtype]:.0e})"
    )
    if any(label.endswith(" *") for label, _, _ in rows):
        print(
            "  * b_K's exact gradient is zero (softmax ignores a shift shared by every key): it is"
        )
        print("    measured against the largest gradient in the model.")
    if tied:
        print("  A tied matrix's gradient is W_E.grad + W_U.grad.T.")


def show_generation(model, twin, tokens, new_tokens):
    """Greedy generation from both twins, side by side."""
    import torch

    heading(f"Greedy generation: {new_tokens} new tokens from each twin")
    greedy = dict(max_new_tokens=new_tokens, do_sample=False, verbose=False)
    generated = {
        "NumPy": np.asarray(model.generate(tokens, **greedy)),
        "torch": twin.generate(torch.from_numpy(tokens), **greedy).numpy(),
    }
    for side, row in generated.items():
        new = row[0, tokens.shape[1] :]
        text = f"  -> {model.to_string(row[0])!r}" if model.tokenizer is not None else ""
        print(f"  {side:<6} new ids {new.tolist()}{text}")
    same = np.array_equal(generated["NumPy"], generated["torch"])
    if same:
        made = generated["NumPy"].shape[1] - tokens.shape[1]
        print(
            f"  The same {made} tokens from both twins."
            + (" (an end-of-sequence token stopped them)" if made < new_tokens else "")
        )
    else:
        first = int(np.argmax(generated["NumPy"][0] != generated["torch"][0]))
        print(
            f"  The twins part at position {first}: two logits that close differ in the last "
            f"digits "
            f"({model.cfg.dtype} rounding), and greedy picks one each."
        )


def show_figures(model, tokens, labels, out, name="GPT-2"):
    """Attention patterns, previous-token scores, the logit lens (NumPy reference); returns the
    paths."""
    prefix = name.lower().replace("-", "")  # gpt2, llama, gptneox
    from interp import analyses, plots, scores

    heading("Figures: attention patterns and the logit lens (NumPy reference)")
    _, cache = model.run_with_cache(tokens)
    cfg = model.cfg
    previous = scores.previous_token_scores(cache, tokens)  # [n_layers, n_heads]
    if cfg.n_layers * cfg.n_heads <= MOST_HEADS:
        heads, title = None, f"{name}: attention patterns of every head"
    else:  # a readable subset: the most previous-token heads, in layer order
        ranked = np.argsort(previous, axis=None)[::-1][: MOST_HEADS // 2]
        heads = sorted((int(i // cfg.n_heads), int(i % cfg.n_heads)) for i in ranked)
        title = (
            f"{name}: attention patterns of the {len(heads)} heads (of "
            f"{cfg.n_layers * cfg.n_heads}) "
            "with the highest previous-token score"
        )
        print(
            f"The model has {cfg.n_layers * cfg.n_heads} heads: {prefix}_attention.png shows the "
            f"{len(heads)} with the "
            "highest previous-token score."
        )
    paths = [
        plots.plot_attention_grid(
            cache,
            os.path.join(out, f"{prefix}_attention.png"),
            token_labels=labels,
            heads=heads,
            title=title,
        )
    ]
    paths.append(
        plots.plot_head_scores(
            previous,
            os.path.join(out, f"{prefix}_previous_token_scores.png"),
            vmin=0,
            vmax=1,
            title="Previous-token score of every head",
            label="attention on the position just before",
        )
    )
    layer, head, value = scores.best_head(previous)
    paths.append(
        plots.plot_attention_head(
            cache["pattern", int(layer)][0, head],
            os.path.join(out, f"{prefix}_attention_head.png"),
            token_labels=labels,
            causal=True,
            title=f"Layer {layer}, head {head}: the highest previous-token "
            f"score here ({value:.2f})",
        )
    )
    print(
        f"The head that attends most to the position just before: "
        f"{scores.head_verdict('previous_token', previous)}."
    )
    lens = analyses.logit_lens(cache)
    paths.append(
        plots.plot_logit_lens(
            lens,
            os.path.join(out, f"{prefix}_logit_lens.png"),
            title=f"{name} logit lens: the true next token after each layer",
        )
    )
    print(
        "What the unembedding reads at the last position, layer by layer (the logit lens's top "
        "token):"
    )
    for label, layer_logits in zip(lens.labels, lens.logits[:, 0, -1]):
        top = int(np.argmax(layer_logits))
        print(f"  {label:<9} {token_labels(model, [top])[0]!r}")
    return paths
