"""The twin: the reference's components as torch.nn.Modules; gradients come from autograd."""

from foundation.contract.config import TransformerConfig
from foundation.files.weights import load_weights, save_weights
from foundation.lens.hooks import ActivationCache, get_act_name, hook_name

from .attention import GroupedQueryAttention, MultiHeadAttention
from .block import TransformerBlock
from .embedding import TokenEmbedding
from .feedforward import FeedForward
from .gated_feedforward import GatedFeedForward
from .hooked import HookedTransformerKeyValueCache, HookedTransformerKeyValueCacheEntry
from .layernorm import LayerNorm, LayerNormPre
from .loss import CrossEntropyLoss
from .model import Transformer
from .module import HookPoint, Module, default_rng
from .positional import LearnedPositionalEmbedding, SinusoidalPositionalEncoding
from .rmsnorm import RMSNorm
from .unembed import Unembed

__all__ = [
    "ActivationCache",
    "CrossEntropyLoss",
    "FeedForward",
    "GatedFeedForward",
    "GroupedQueryAttention",
    "HookPoint",
    "HookedTransformerKeyValueCache",
    "HookedTransformerKeyValueCacheEntry",
    "LayerNorm",
    "LayerNormPre",
    "LearnedPositionalEmbedding",
    "Module",
    "MultiHeadAttention",
    "RMSNorm",
    "SinusoidalPositionalEncoding",
    "TokenEmbedding",
    "Transformer",
    "TransformerBlock",
    "TransformerConfig",
    "Unembed",
    "default_rng",
    "get_act_name",
    "hook_name",
    "load_weights",
    "save_weights",
]
