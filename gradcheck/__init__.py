"""Gradient checking: finite differences against the hand-written backward, and the component
factory."""

from .factory import BASE, BATCH, POS, Variant, build, make_inputs, randomize_parameters
from .finite_diff import (
    FLOOR,
    STEP,
    TOLERANCE,
    GradcheckReport,
    GradcheckRow,
    format_rows,
    gradcheck,
)

__all__ = [
    "BASE",
    "BATCH",
    "FLOOR",
    "GradcheckReport",
    "GradcheckRow",
    "POS",
    "STEP",
    "TOLERANCE",
    "Variant",
    "build",
    "format_rows",
    "gradcheck",
    "make_inputs",
    "randomize_parameters",
]
