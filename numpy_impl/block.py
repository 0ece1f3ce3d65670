"""One transformer block: attention, then the MLP, each added into the residual stream.

Axes: batch, pos (sequence position), d_model (residual width).

    normalization="pre" (GPT-2):
        resid_mid  = resid_pre + attn(ln1(resid_pre))
        resid_post = resid_mid + mlp(ln2(resid_mid))
    normalization="post" (Vaswani et al.):
        resid_mid  = ln1(resid_pre + attn(resid_pre))
        resid_post = ln2(resid_mid + mlp(resid_mid))
    normalization=None: the "pre" equations without ln1 and ln2.
    attn_only: no MLP and no ln2, so resid_post is the line that makes resid_mid above.
    parallel_attn_mlp (GPT-NeoX):
        resid_post = resid_pre + attn(ln1(resid_pre)) + mlp(ln2(resid_pre)),
        with no resid_mid: attention and the MLP read the same stream, side by side.

Hook points, as TransformerLens 4 names them: ``hook_in`` (resid_pre, alias ``hook_resid_pre``),
``hook_out`` (resid_post, alias ``hook_resid_post``); ``hook_attn_out`` and ``hook_mlp_out`` are
``attn.hook_out`` and ``mlp.hook_out``. ``hook_resid_mid`` is a point of its own, on the residual
stream between the two: its gradient is the whole residual stream's (both paths onward), where
``ln2.hook_in``'s is the part that flows through ln2 (TransformerLens 4.3 makes hook_resid_mid an
alias of ln2.hook_in, so its hook_resid_mid_grad is that part alone).
"""

import numpy as np

from foundation.contract.checks import check_config

from .attention import MultiHeadAttention
from .feedforward import FeedForward
from .layernorm import LayerNorm
from .module import HookPoint, Module, boundary


class TransformerBlock(Module):
    """Residual block; which LayerNorms exist and where they sit follows ``cfg.normalization``."""

    def __init__(self, cfg, rng=None):
        rng = np.random.default_rng(rng)
        self.cfg = check_config(cfg, np.ndarray)
        self.hook_in = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_pre = self.hook_in  # TransformerLens's alias: one point, two names
        if cfg.normalization is not None:
            self.ln1 = LayerNorm.for_config(cfg)
        self.attn = MultiHeadAttention.for_config(cfg, rng)
        self.hook_attn_out = self.attn.hook_out  # [batch, pos, d_model]
        if not cfg.attn_only:
            if not cfg.parallel_attn_mlp:
                self.hook_resid_mid = HookPoint()  # [batch, pos, d_model]; its own (docstring)
            if cfg.normalization is not None:
                self.ln2 = LayerNorm.for_config(cfg)
            self.mlp = FeedForward.for_config(cfg, rng)
            self.hook_mlp_out = self.mlp.hook_out  # [batch, pos, d_model]
        self.hook_out = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_post = self.hook_out

    @boundary(resid_pre="activation", past_kv_cache_entry="kv cache entry")
    def forward(self, resid_pre, past_kv_cache_entry=None):
        """resid_pre [batch, pos, d_model] -> resid_post [batch, pos, d_model]

        ``past_kv_cache_entry``: the attention's keys and values so far (generation).
        """
        norm = self.cfg.normalization
        resid_pre = self.hook_in(resid_pre)
        attn_in = self.ln1(resid_pre) if norm == "pre" else resid_pre  # [batch, pos, d_model]
        attn_out = self.attn(attn_in, past_kv_cache_entry)  # [batch, pos, d_model]
        resid_mid = resid_pre + attn_out  # [batch, pos, d_model]
        if self.cfg.parallel_attn_mlp:  # the MLP reads resid_pre too, beside attention
            mlp_in = self.ln2(resid_pre) if norm == "pre" else resid_pre  # [batch, pos, d_model]
            mlp_out = self.mlp(mlp_in)  # [batch, pos, d_model]
            resid_post = resid_mid + mlp_out  # [batch, pos, d_model]
            return self.hook_out(resid_post)
        if norm == "post":
            resid_mid = self.ln1(resid_mid)  # [batch, pos, d_model]
        if self.cfg.attn_only:
            return self.hook_out(resid_mid)
        resid_mid = self.hook_resid_mid(resid_mid)
        mlp_in = self.ln2(resid_mid) if norm == "pre" else resid_mid  # [batch, pos, d_model]
        mlp_out = self.mlp(mlp_in)  # [batch, pos, d_model]
        resid_post = resid_mid + mlp_out  # [batch, pos, d_model]
        if norm == "post":
            resid_post = self.ln2(resid_post)  # [batch, pos, d_model]
        return self.hook_out(resid_post)

    @boundary(dresid_post="gradient")
    def backward(self, dresid_post):
        """dresid_post [batch, pos, d_model] -> dresid_pre [batch, pos, d_model]; fills every grad.

        A residual connection copies its input to two places, so its gradient is the sum of both.
        """
        # EXERCISE BEGIN
        norm = self.cfg.normalization
        dresid_post = self.hook_out.backward(dresid_post)
        if self.cfg.parallel_attn_mlp:
            # forward: resid_post = resid_pre + attn_out + mlp_out, mlp_out = mlp(ln2(resid_pre))
            dmlp_in = self.mlp.backward(dresid_post)  # [batch, pos, d_model]
            dattn_in = self.attn.backward(dresid_post)  # [batch, pos, d_model]
            if norm == "pre":
                dmlp_in = self.ln2.backward(dmlp_in)  # [batch, pos, d_model]
                dattn_in = self.ln1.backward(dattn_in)  # [batch, pos, d_model]
            return self.hook_in.backward(dresid_post + dattn_in + dmlp_in)
        if self.cfg.attn_only:
            # forward: resid_post = resid_mid   (attn_only: no MLP)
            dresid_mid = dresid_post  # [batch, pos, d_model]
        else:
            if norm == "post":
                # forward: resid_post = ln2(resid_post)   (post-norm only)
                dresid_post = self.ln2.backward(dresid_post)  # [batch, pos, d_model]
            # forward: resid_post = resid_mid + mlp_out
            dmlp_in = self.mlp.backward(dresid_post)  # [batch, pos, d_model]
            # forward: mlp_in = ln2(resid_mid) if pre else resid_mid
            if norm == "pre":
                dmlp_in = self.ln2.backward(dmlp_in)  # [batch, pos, d_model]; now at resid_mid
            dresid_mid = dresid_post + dmlp_in  # [batch, pos, d_model]
            dresid_mid = self.hook_resid_mid.backward(dresid_mid)
        if norm == "post":
            # forward: resid_mid = ln1(resid_mid)   (post-norm only)
            dresid_mid = self.ln1.backward(dresid_mid)  # [batch, pos, d_model]
        # forward: resid_mid = resid_pre + attn_out
        dattn_in = self.attn.backward(dresid_mid)  # [batch, pos, d_model]
        # forward: attn_in = ln1(resid_pre) if pre else resid_pre
        if norm == "pre":
            dattn_in = self.ln1.backward(dattn_in)  # [batch, pos, d_model]; now at resid_pre
        dresid_pre = dresid_mid + dattn_in  # [batch, pos, d_model]
        dresid_pre = self.hook_in.backward(dresid_pre)
        # EXERCISE END
        return dresid_pre
