"""The q×q process grid inside each tensor-parallel group.

Tensor-parallel rank r sits at row r // q, column r % q. Every rank of the world creates the row
and column groups of every tensor-parallel group, in the same order (torch.distributed.new_group is
collective over the whole world), and keeps the two it belongs to. The grid lives next to
Megatron-Core's groups: the tensor-parallel group itself (its q² ranks) stays Megatron's, which is
what DeepSpeed's mpu adapter, gradient-norm and ZeRO see.

Block layout used by every 2D layer (Optimus / SUMMA):

- an activation X[tokens, hidden] is cut into q×q blocks; rank (i, j) holds rows block i (tokens:
  the batch dimension is split over grid rows) and columns block j (hidden);
- a weight W[in, out] likewise: rank (i, j) holds W[in block i, out block j];
- a vector parameter p[n] (bias, LayerNorm gain) is cut into q² pieces: rank (i, j) holds piece j·q+i,
  i.e. sub-block i of block j; the column group all-gathers block j when it is used.

No parameter is replicated inside the grid, so every parameter is a tensor-model-parallel shard.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Grid2D:
    """This rank's place in its q×q grid and the two groups it communicates in."""

    q: int
    row: int
    col: int
    row_group: object
    """Ranks (row, 0..q-1): same token block, all hidden blocks."""
    col_group: object
    """Ranks (0..q-1, col): all token blocks, same hidden block."""
    row_ranks: tuple[int, ...]
    """Global rank of (row, k) for k = 0..q-1."""
    col_ranks: tuple[int, ...]
    """Global rank of (k, col) for k = 0..q-1."""

    @property
    def size(self) -> int:
        return self.q * self.q

    @property
    def tp_rank(self) -> int:
        return self.row * self.q + self.col


def grid_side(tensor_parallel: int) -> int:
    """q with q² = tensor_parallel, or ValueError."""
    q = math.isqrt(tensor_parallel)
    if q * q != tensor_parallel:
        raise ValueError(f"2D tensor parallelism needs a square tensor-parallel size, got {tensor_parallel}")
    return q


def build_grid(tensor_groups: list[list[int]], rank: int | None = None) -> Grid2D:
    """Create the row and column groups of every tensor-parallel group (each a list of q² global
    ranks in tensor-parallel rank order) and return this rank's grid. Collective: call on every rank
    with the same `tensor_groups`."""
    rank = dist.get_rank() if rank is None else rank
    q = grid_side(len(tensor_groups[0]))
    mine = None
    rows, cols = {}, {}
    for g, ranks in enumerate(tensor_groups):
        for i in range(q):
            members = tuple(ranks[i * q + k] for k in range(q))
            group = dist.new_group(list(members))
            rows[g, i] = (members, group)
        if rank in ranks:
            mine = g
    for g, ranks in enumerate(tensor_groups):
        for j in range(q):
            members = tuple(ranks[k * q + j] for k in range(q))
            group = dist.new_group(list(members))
            cols[g, j] = (members, group)
    if mine is None:
        raise ValueError(f"rank {rank} is in no tensor-parallel group of {tensor_groups}")
    tp_rank = tensor_groups[mine].index(rank)
    row, col = divmod(tp_rank, q)
    return Grid2D(
        q=q,
        row=row,
        col=col,
        row_group=rows[mine, row][1],
        col_group=cols[mine, col][1],
        row_ranks=rows[mine, row][0],
        col_ranks=cols[mine, col][0],
    )


def build_grid_from_megatron() -> Grid2D:
    """The grid over Megatron-Core's tensor-parallel groups (after initialize_model_parallel)."""
    from megatron.core import parallel_state

    world = dist.get_world_size()
    tp = parallel_state.get_tensor_model_parallel_world_size()
    # Megatron's default order puts tensor-parallel ranks next to each other.
    groups = [list(range(start, start + tp)) for start in range(0, world, tp)]
    own = dist.get_process_group_ranks(parallel_state.get_tensor_model_parallel_group())
    if sorted(own) not in groups:
        raise RuntimeError(f"tensor-parallel group {own} is not a block of adjacent ranks")
    return build_grid(groups)


# --- Moving full tensors in and out of the block layout (initialisation, tests, checkpoints) ------


def block(full: torch.Tensor, grid: Grid2D, row_dim: int = 0, col_dim: int = -1) -> torch.Tensor:
    """This rank's (row, col) block of a full tensor: `row_dim` cut by grid row, `col_dim` by column."""
    part = full.chunk(grid.q, dim=row_dim)[grid.row]
    return part.chunk(grid.q, dim=col_dim)[grid.col].contiguous()


def vector_piece(full: torch.Tensor, grid: Grid2D) -> torch.Tensor:
    """This rank's piece of a vector parameter: sub-block `row` of block `col`."""
    return full.chunk(grid.q)[grid.col].chunk(grid.q)[grid.row].contiguous()


def row_block(full: torch.Tensor, grid: Grid2D, dim: int = 0) -> torch.Tensor:
    """This rank's token block (the batch dimension cut by grid row), all columns."""
    return full.chunk(grid.q, dim=dim)[grid.row].contiguous()
