"""The reference: every component with an explicit forward and a hand-written backward."""

from .attention import MultiHeadAttention
from .block import TransformerBlock
from .config import TransformerConfig
from .embedding import TokenEmbedding
from .feedforward import FeedForward
from .layernorm import LayerNorm
from .loss import CrossEntropyLoss
from .model import Transformer
from .module import HookPoint, Module, Parameter
from .positional import LearnedPositionalEmbedding, SinusoidalPositionalEncoding
from .unembed import Unembed
from .weights import load_weights, save_weights

__all__ = [
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
    "load_weights",
    "save_weights",
]
