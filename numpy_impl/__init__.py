"""The reference: every component with an explicit forward and a hand-written backward."""

from .attention import MultiHeadAttention
from .block import TransformerBlock
from .config import TransformerConfig
from .embedding import TokenEmbedding
from .feedforward import FeedForward
from .hooked import ActivationCache, hook_name
from .layernorm import LayerNorm
from .loss import CrossEntropyLoss
from .model import Transformer
from .module import HookPoint, Module, Parameter
from .positional import LearnedPositionalEmbedding, SinusoidalPositionalEncoding
from .unembed import Unembed
from .weights import load_weights, save_weights

__all__ = [
    "ActivationCache",
    "CrossEntropyLoss",
    "FeedForward",
    "HookPoint",
    "LayerNorm",
    "LearnedPositionalEmbedding",
    "Module",
    "MultiHeadAttention",
    "Parameter",
    "SinusoidalPositionalEncoding",
    "TokenEmbedding",
    "Transformer",
    "TransformerBlock",
    "TransformerConfig",
    "Unembed",
    "hook_name",
    "load_weights",
    "save_weights",
]
