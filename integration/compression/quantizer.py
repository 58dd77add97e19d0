"""The arithmetic of weight quantization and magnitude pruning, on plain tensors.

Quantization follows DeepSpeed Compression's SymQuantizer/AsymQuantizer (deepspeed/compression/
utils.py before its removal), with L = 2^bits levels and a group's statistics taken over its rows:
  symmetric:  scale = 2·max|w| / L,  code = clamp(round(w / scale), -L/2, L/2 - 1),  w_q = code·scale
  asymmetric: scale = (max - min) / L,  zp = round(min / scale)·scale,
              code = clamp(round((w - zp) / scale), 0, L - 1),  w_q = code·scale + zp
computed in fp32. One deviation: a group whose range is 0 (all equal) gets scale 1 instead of a
division by zero.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist


class StraightThrough(torch.autograd.Function):
    """Forward: the quantized weight, exactly. Backward: the gradient passes to the real weight
    unchanged (DeepSpeed's quantizers' backward). `w + (q - w).detach()` would not be exactly q."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
        return quantized

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


class GroupQuantizer:
    """Quantizes one weight matrix, or this rank's shard of it, with the groups of the full matrix:
    `groups` equal blocks of the full matrix's `full_rows` output rows. `rows` are the full-matrix
    indices of the rows this tensor holds (all of them by default; see `full_row_indices`); the
    group statistics of a shard are completed with a MAX all-reduce over `group` (the
    tensor-parallel group), so every rank uses the scale of the full block."""

    def __init__(
        self,
        bits: int,
        symmetric: bool,
        groups: int,
        full_rows: int,
        rows: torch.Tensor | None = None,
        group=None,
    ):
        if full_rows % groups:
            raise ValueError(f"{groups} groups do not divide {full_rows} rows")
        self.bits = bits
        self.levels = 2**bits
        self.symmetric = symmetric
        self.groups = groups
        rows = torch.arange(full_rows) if rows is None else rows
        self.group_of_row = rows // (full_rows // groups)
        self.group = group if group is not None and dist.get_world_size(group) > 1 else None

    @property
    def code_range(self) -> tuple[int, int]:
        return (-self.levels // 2, self.levels // 2 - 1) if self.symmetric else (0, self.levels - 1)

    @torch.no_grad()
    def parameters(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-group scale and (asymmetric) zero point, fp32, shape [groups]."""
        w = weight.detach().float()
        rows = self.group_of_row.to(w.device)
        if self.symmetric:
            row_stats = w.abs().amax(dim=1)[None]
            stats = torch.zeros(1, self.groups, device=w.device)
        else:
            row_stats = torch.stack([w.amax(dim=1), -w.amin(dim=1)])
            stats = torch.full((2, self.groups), -math.inf, device=w.device)
        stats = stats.scatter_reduce(1, rows.expand(row_stats.shape[0], -1), row_stats, "amax")
        if self.group is not None:
            dist.all_reduce(stats, op=dist.ReduceOp.MAX, group=self.group)
        if self.symmetric:
            scale = 2 * stats[0] / self.levels
            return torch.where(scale > 0, scale, torch.ones_like(scale)), None
        high, low = stats[0], -stats[1]
        scale = (high - low) / self.levels
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return scale, (low / scale).round() * scale

    def _per_row(self, values: torch.Tensor, device) -> torch.Tensor:
        return values[self.group_of_row.to(device)][:, None]

    @torch.no_grad()
    def codes(
        self, weight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None
    ) -> torch.Tensor:
        """Integer codes (as fp32 values) of the weight."""
        w = weight.detach().float()
        low, high = self.code_range
        if self.symmetric:
            return (w / self._per_row(scale, w.device)).round().clamp(low, high)
        shifted = w - self._per_row(zero_point, w.device)
        return (shifted / self._per_row(scale, w.device)).round().clamp(low, high)

    def dequantize(
        self, codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None
    ) -> torch.Tensor:
        values = codes.float() * self._per_row(scale, codes.device)
        if zero_point is not None:
            values = values + self._per_row(zero_point, codes.device)
        return values

    @torch.no_grad()
    def fake_quantize(self, weight: torch.Tensor) -> torch.Tensor:
        """The weight rounded to its group's grid, in the weight's dtype."""
        scale, zero_point = self.parameters(weight)
        return self.dequantize(self.codes(weight, scale, zero_point), scale, zero_point).to(weight.dtype)

    def __call__(self, weight: torch.Tensor) -> torch.Tensor:
        """Fake quantization with the straight-through gradient, for the forward pass."""
        return StraightThrough.apply(weight, self.fake_quantize(weight))


@torch.no_grad()
def magnitude_mask(weight: torch.Tensor, dense_ratio: float) -> torch.Tensor:
    """DeepSpeed's l1 sparse pruning (TopKBinarizer over |w|): True for the ceil(dense_ratio·n)
    largest magnitudes of the whole matrix, ties broken by position (stable sort)."""
    flat = weight.detach().float().abs().flatten()
    keep = math.ceil(dense_ratio * flat.numel())
    order = torch.sort(flat, descending=True, stable=True).indices
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=weight.device)
    mask[order[:keep]] = True
    return mask.view_as(weight)


def full_row_indices(local_rows: int, partition_dim: int, stride: int, rank: int, world: int) -> torch.Tensor:
    """Full-matrix row index of each row of a tensor-parallel shard. Megatron cuts a matrix split
    on its rows (partition_dim 0) into world·stride equal chunks and gives rank r the chunks
    r, r + world, ... (`_initialize_affine_weight_cpu`; stride 2 for a SwiGLU fc1, whose rank
    holds its part of both the gate and the up projection). A column split keeps every row."""
    local = torch.arange(local_rows)
    if partition_dim != 0 or world == 1:
        return local
    chunk = local_rows // stride
    return (local // chunk * world + rank) * chunk + local % chunk


def gather_full(shard: torch.Tensor, partition_dim: int, group, stride: int = 1) -> torch.Tensor:
    """The full tensor from its tensor-parallel shards, on every rank of `group` (the inverse of
    `shard_of`)."""
    if group is None or dist.get_world_size(group) == 1:
        return shard
    parts = [torch.empty_like(shard) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, shard.contiguous(), group=group)
    chunks = [part.chunk(stride, dim=partition_dim) for part in parts]
    return torch.cat([c[k] for k in range(stride) for c in chunks], dim=partition_dim)


def shard_of(full: torch.Tensor, partition_dim: int, rank: int, world: int, stride: int = 1) -> torch.Tensor:
    """Rank `rank`'s shard of a full tensor, as Megatron cuts it (see `full_row_indices`)."""
    chunks = full.chunk(world * stride, dim=partition_dim)
    return torch.cat(chunks[rank::world], dim=partition_dim).contiguous()
