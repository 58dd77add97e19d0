"""2D tensor parallelism (Optimus / SUMMA) on a q×q grid inside the tensor-parallel group."""

from integration.tp2d.comm import CommLedger, CommRecord
from integration.tp2d.grid import Grid2D, block, build_grid, build_grid_from_megatron, grid_side, vector_piece
from integration.tp2d.layers import (
    Embedding2D,
    LayerNorm2D,
    Linear2D,
    VocabProjection2D,
    cross_entropy_2d,
)

__all__ = [
    "CommLedger",
    "CommRecord",
    "Embedding2D",
    "Grid2D",
    "LayerNorm2D",
    "Linear2D",
    "VocabProjection2D",
    "block",
    "build_grid",
    "build_grid_from_megatron",
    "cross_entropy_2d",
    "grid_side",
    "vector_piece",
]
