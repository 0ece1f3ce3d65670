"""The whole model: embeddings, a stack of blocks, an optional final LayerNorm and unembedding.

Axes: batch, pos (sequence position), d_model (residual width), d_vocab (vocabulary).

    resid = W_E[tokens] + pos_embed                     the residual stream starts here
    resid = block_i(resid)      for i = 0 .. n_layers - 1
    resid = ln_final(resid)     (pre-norm only: post-norm blocks already end in a LayerNorm)
    out   = resid W_U + b_U     (unembed=True: logits; unembed=False: out = resid)
"""

import numpy as np

from foundation.contract.checks import check_config, check_seed
from foundation.files.pretrained import read_pretrained
from foundation.files.weights import load_weights, save_weights
from foundation.lens.running import RunningMixin

from .block import TransformerBlock
from .embedding import TokenEmbedding
from .hooked import HookedMixin
from .layernorm import LayerNorm
from .loss import CrossEntropyLoss
from .module import HookPoint, Module, boundary
from .positional import LearnedPositionalEmbedding, SinusoidalPositionalEncoding
from .unembed import Unembed
from .views import WeightViewsMixin


class Transformer(HookedMixin, WeightViewsMixin, RunningMixin, Module):
    """A decoder-style (or, with causal=False and unembed=False, encoder-style) transformer.

    TransformerLens's surface comes from the mixins: hooks and caches (``HookedMixin``), the
    weight views ``W_Q``, ``OV``, ... (``WeightViewsMixin``), ``return_type``, ``generate`` and
    the tokenizer helpers (``RunningMixin``).
    """

    loss_class = CrossEntropyLoss  # the next-token loss of forward(..., return_type="loss")

    def __init__(self, cfg, seed=0):
        check_seed(seed, np.random.Generator)
        rng = np.random.default_rng(seed)
        self.cfg = check_config(cfg, np.ndarray)
        self.cache = None  # the first block the last forward ran on a residual stream given
        self.embed = TokenEmbedding(cfg, rng)
        self.hook_embed = self.embed.hook_out  # [batch, pos, d_model]; TransformerLens's alias
        if cfg.positional == "learned":
            self.pos_embed = LearnedPositionalEmbedding(cfg, rng)
        elif cfg.positional == "sinusoidal":
            self.pos_embed = SinusoidalPositionalEncoding(cfg, rng)
        if cfg.positional != "rotary":  # rotary: positions enter inside attention, through q and k
            self.hook_pos_embed = self.pos_embed.hook_out  # [batch, pos, d_model]
        self.blocks = [TransformerBlock(cfg, rng) for _ in range(cfg.n_layers)]
        if cfg.normalization == "pre":
            self.ln_final = LayerNorm.for_config(cfg)
        if cfg.unembed:
            self.unembed = Unembed(cfg, rng)
            self.hook_unembed = self.unembed.hook_out  # [batch, pos, d_vocab]
        for name, module in self.named_modules():
            if isinstance(module, HookPoint) and module.name is None:
                # its own name: an alias (hook_embed) comes after it (embed.hook_out)
                module.name = name

    @boundary(
        tokens="tokens or residual",
        return_type="return_type",
        loss_per_token="flag",
        start_at_layer="start layer",
        stop_at_layer="layer",
        past_kv_cache="kv cache",
    )
    def forward(
        self,
        tokens,
        return_type="logits",
        loss_per_token=False,
        start_at_layer=None,
        stop_at_layer=None,
        past_kv_cache=None,
    ):
        """tokens [batch, pos] int -> logits [batch, pos, d_vocab] (or resid [batch, pos, d_model])

        ``return_type``: "logits" (the output), "loss" (mean next-token cross-entropy), "both"
        (logits, loss) or None; ``loss_per_token``: the loss of each predicted token
        [batch, pos - 1]. ``stop_at_layer=k``: stop before block k and return the residual stream
        entering it [batch, pos, d_model] (TransformerLens's; negative k counts from the end).
        ``start_at_layer=k``: ``tokens`` is the residual stream entering block k instead
        [batch, pos, d_model] (TransformerLens's ``input``), and blocks k and after run on it.
        ``past_kv_cache``: the keys and values of the positions before the tokens', which this run
        continues and extends (generation; foundation/lens/kv_cache.py).
        ``backward`` takes the gradient of the output, or starts from the loss (see ``backward``).
        """
        start = self._start_layer(start_at_layer)  # None: the run starts from the tokens
        self.cache = start  # backward: where the blocks began
        # the positions before the tokens, whose keys and values the cache holds (generation)
        past = 0 if past_kv_cache is None else past_kv_cache.pos_so_far
        if start is not None:
            resid = tokens  # [batch, pos, d_model]: the residual stream entering block start
        elif self.cfg.positional == "rotary":
            resid = self.embed(tokens)  # [batch, pos, d_model]
        else:
            embed = self.embed(tokens)  # [batch, pos, d_model]
            pos_embed = self.pos_embed(tokens, past)  # [batch, pos, d_model]
            resid = embed + pos_embed  # [batch, pos, d_model]
        stop = self._stop_layer(stop_at_layer)
        entries = self._cache_entries(past_kv_cache)  # each block's keys and values so far, or None
        for block, entry in zip(self.blocks[start:stop], entries[start:stop]):
            resid = block(resid, entry)  # [batch, pos, d_model]
        if stop < self.cfg.n_layers:
            return self._stopped(resid)
        if self.cfg.normalization == "pre":
            resid = self.ln_final(resid)  # [batch, pos, d_model]
        out = self.unembed(resid) if self.cfg.unembed else resid  # [batch, pos, d_vocab or d_model]
        return self._with_return_type(out, tokens, return_type, loss_per_token)

    @boundary(dout="output or loss gradient")
    def backward(self, dout=None):
        """dout shaped like the output -> None (tokens are discrete); fills every parameter's grad.

        After ``forward(resid, start_at_layer=k)``: returns d(resid) [batch, pos, d_model], the
        gradient of the residual stream given (torch: ``resid.grad``).

        After ``forward(..., return_type="loss")``: ``backward()`` backpropagates that loss, as
        ``loss.backward()``; with ``loss_per_token=True``, ``backward(dloss)`` takes the
        per-token dloss [batch, pos - 1].
        """
        if self._loss is not None and np.shape(dout) != self._output_shape:
            # forward: loss = CrossEntropyLoss(out[:, :-1], tokens[:, 1:])   (the last: no target)
            dout_loss = 1.0 if dout is None else dout  # [] or [batch, pos - 1]; None means 1
            dout = np.zeros(self._output_shape, dtype=self.cfg.dtype)  # [batch, pos, d_vocab]
            dout[:, :-1] = self._loss.backward(dout_loss)  # [batch, pos - 1, d_vocab]
        # EXERCISE BEGIN
        # forward: out = unembed(resid) if unembed else resid
        dresid = self.unembed.backward(dout) if self.cfg.unembed else dout  # [batch, pos, d_model]
        if self.cfg.normalization == "pre":
            # forward: resid = ln_final(resid)   (pre-norm only)
            dresid = self.ln_final.backward(dresid)  # [batch, pos, d_model]
        start = self.cache  # forward(..., start_at_layer=start); None: from the tokens
        for block in reversed(self.blocks[start:]):
            # forward: resid = block(resid)   (for each block; undo the last one first)
            dresid = block.backward(dresid)  # [batch, pos, d_model]
        if start is not None:
            return dresid  # [batch, pos, d_model]: the gradient of the residual stream given
        # forward: resid = embed + pos_embed   (rotary: resid = embed)
        self.embed.backward(dresid)
        if self.cfg.positional != "rotary":
            self.pos_embed.backward(dresid)
        # EXERCISE END
        return None

    def save(self, path):
        """Write the weights file (.npz or .safetensors): the state_dict and the config (JSON)."""
        save_weights(path, self.state_dict(), self.cfg)

    @classmethod
    def load(cls, path):
        """A new model with the config and weights of a weights file (saved by either twin)."""
        cfg, state_dict = load_weights(path)
        model = cls(cfg)
        model.load_state_dict(state_dict)
        return model

    @classmethod
    def from_pretrained(cls, folder, n_ctx=None):
        """A new model holding a Hugging Face checkpoint folder (GPT-2 or Llama), in its dtype.

        GPT-2: config.json + model.safetensors; with vocab.json and merges.txt, ``model.tokenizer``
        is GPT-2's byte-level BPE. Llama (``LlamaForCausalLM``): config.json + model.safetensors or
        the shards of model.safetensors.index.json; with tokenizer.json, its tokenizer. ``n_ctx``
        (Llama only) caps the longest sequence below max_position_embeddings.
        A tied checkpoint's unembedding starts as ``W_E.T`` here, a parameter of its own (``b_U``
        zeros), so a tied model's gradient is ``W_E.grad + W_U.grad.T``.
        """
        cfg, state_dict, tokenizer = read_pretrained(folder, n_ctx)
        model = cls(cfg)
        model.load_state_dict(state_dict)
        model.tokenizer = tokenizer
        return model
