"""The twin: the reference's components as torch.nn.Modules; gradients come from autograd."""

from numpy_impl.config import TransformerConfig

from .attention import MultiHeadAttention
from .block import TransformerBlock
from .embedding import TokenEmbedding
from .feedforward import FeedForward
from .layernorm import LayerNorm
from .loss import CrossEntropyLoss
from .model import Transformer
from .module import HookPoint, default_rng
from .positional import LearnedPositionalEmbedding, SinusoidalPositionalEncoding
from .unembed import Unembed

__all__ = [
    "CrossEntropyLoss",
    "FeedForward",
    "HookPoint",
    "LayerNorm",
    "LearnedPositionalEmbedding",
    "MultiHeadAttention",
    "SinusoidalPositionalEncoding",
    "TokenEmbedding",
    "Transformer",
    "TransformerBlock",
    "TransformerConfig",
    "Unembed",
    "default_rng",
]
