"""Small Llama and GPT-NeoX checkpoints for the tests, made here: nothing is downloaded.

``make_llama_checkpoint`` (``tours/tiny_checkpoints.py``, which ``python demo.py gpt2 --make-tiny``
also uses) builds a random ``LlamaForCausalLM`` or ``GPTNeoXForCausalLM`` and its tokenizer.

``exact_float64`` patches ``transformers`` for the comparison, test-side only: its rotary angles
(cos and sin) and its RMSNorm compute in float32 even in a float64 model, which leaves its logits
about 1e-8 away from the exact float64 values; patched, they compute in the model's dtype.
"""

import contextlib

import numpy as np
import pytest

transformers = pytest.importorskip("transformers", reason="transformers is needed to make a Llama checkpoint "
                                                          "(pip install transformers, or the test extra)")
import torch  # noqa: E402
from transformers.models.gpt_neox import modeling_gpt_neox  # noqa: E402
from transformers.models.llama import modeling_llama  # noqa: E402

from tours.tiny_checkpoints import NEOX, SMALL, make_llama_checkpoint, random_llama, train_tokenizer  # noqa: E402,F401


def _rotary_forward(self, x, position_ids):
    """cos and sin of the rotary angles, computed in float64 from rope_theta, in x's dtype."""
    dim = 2 * self.inv_freq.shape[-1]
    base = self.config.rope_parameters["rope_theta"]
    inv_freq = 1.0 / base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)  # [dim / 2]
    freqs = position_ids[..., None].to(torch.float64) * inv_freq  # [batch, pos, dim / 2]
    emb = torch.cat((freqs, freqs), dim=-1)  # [batch, pos, dim]
    return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def _rms_norm_forward(self, hidden_states):
    """LlamaRMSNorm in the model's own dtype."""
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


@contextlib.contextmanager
def exact_float64():
    """transformers' Llama and GPT-NeoX with rotary angles and RMSNorm in the model's dtype (float32 otherwise)."""
    saved = (modeling_llama.LlamaRotaryEmbedding.forward, modeling_llama.LlamaRMSNorm.forward,
             modeling_gpt_neox.GPTNeoXRotaryEmbedding.forward)
    modeling_llama.LlamaRotaryEmbedding.forward = _rotary_forward
    modeling_llama.LlamaRMSNorm.forward = _rms_norm_forward
    modeling_gpt_neox.GPTNeoXRotaryEmbedding.forward = _rotary_forward
    try:
        yield
    finally:
        (modeling_llama.LlamaRotaryEmbedding.forward, modeling_llama.LlamaRMSNorm.forward,
         modeling_gpt_neox.GPTNeoXRotaryEmbedding.forward) = saved
