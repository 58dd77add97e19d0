"""Tensor-parallel shards of one parameter and the full tensor they are cut from.

Megatron-Core cuts a full matrix along `partition_dim` into `stride × tp` equal chunks and gives
rank r chunks r, r + tp, r + 2·tp, ... (`_initialize_affine_weight_cpu`). Stride is 1 except for
the fused gate/up projection of a gated MLP (SwiGLU), whose full matrix is [gate; up]: there each
rank holds [gate_r; up_r], so a plain concatenation of the shards would interleave gate and up rows
and compute another function after a tensor-parallel change. Pure torch, no process group.
"""

from __future__ import annotations

import torch


def _check_divisible(size: int, parts: int, what: str) -> None:
    if size % parts:
        raise ValueError(f"{what}: dimension of size {size} does not split into {parts} equal chunks")


def merge_shards(shards: list[torch.Tensor], partition_dim: int | None, stride: int = 1) -> torch.Tensor:
    """The full tensor from the shards of tensor-parallel ranks 0..tp-1 (in rank order).
    `partition_dim` None: the parameter is replicated over tensor parallelism; rank 0's copy."""
    if partition_dim is None:
        return shards[0].clone()
    tp = len(shards)
    for shard in shards:
        _check_divisible(shard.shape[partition_dim], stride, "merge_shards")
    pieces = [shard.chunk(stride, dim=partition_dim) for shard in shards]
    return torch.cat([pieces[rank][k] for k in range(stride) for rank in range(tp)], dim=partition_dim)


def shard_of(
    full: torch.Tensor, partition_dim: int | None, stride: int, rank: int, world: int
) -> torch.Tensor:
    """Tensor-parallel rank `rank`'s shard (of `world`) of a full tensor, as Megatron-Core cuts it."""
    if partition_dim is None:
        return full.clone()
    _check_divisible(full.shape[partition_dim], stride * world, "shard_of")
    chunks = full.chunk(stride * world, dim=partition_dim)
    return torch.cat([chunks[rank + k * world] for k in range(stride)], dim=partition_dim).contiguous()
