"""Compression on the live model: the layer adapter, the schedule, and the step-runner wrapper.

DeepSpeed's library swapped each matched layer for a `LinearLayer_Compress` (or its
`ColumnParallelLinear_Compress`/`RowParallelLinear_Compress`, written for Megatron-LM's old mpu
classes), which Megatron-Core 0.16's layers could not have used anyway. Here the layers stay
Megatron-Core's own modules, parameters and names unchanged (so checkpoints, ZeRO partitioning
and the parameter count do not move); `CompressedLinear` only changes the weight the layer
multiplies with, at the one place both layer classes pass it on: `_forward_impl(input=...,
weight=...)`.
"""

from __future__ import annotations

import sys
from typing import Any

import torch

from integration.compression.quantizer import (
    GroupQuantizer,
    full_row_indices,
    gather_full,
    magnitude_mask,
    shard_of,
)
from integration.compression.targets import LinearTarget, compressible_linears, matching
from integration.config.schema import CompressionConfig, ModelConfig
from integration.errors import ConfigError


class CompressedLinear:
    """A Megatron-Core ColumnParallelLinear/RowParallelLinear whose forward pass multiplies with
    the fake-quantized and/or masked weight (DeepSpeed's order: quantize, then mask)."""

    def __init__(
        self, target: LinearTarget, module: torch.nn.Module, quantizer: GroupQuantizer | None, group
    ):
        from megatron.core import parallel_state

        self.target = target
        self.module = module
        self.quantizer = quantizer
        self.group = group
        self.tp_rank = parallel_state.get_tensor_model_parallel_rank()
        self.tp_size = parallel_state.get_tensor_model_parallel_world_size()
        self.quantizing = False
        self.pruning = False
        self.stride = getattr(module.weight, "partition_stride", 1)
        self.mask: torch.Tensor | None = None
        """This rank's shard of the full matrix's keep-mask, once taken."""
        original = module._forward_impl

        def forward_impl(*args, **kwargs):
            # A tied output layer passes the embedding's weight in; only our own weight changes.
            if kwargs.get("weight") is module.weight:
                kwargs["weight"] = self.effective_weight(module.weight)
            return original(*args, **kwargs)

        module._forward_impl = forward_impl

    def effective_weight(self, weight: torch.Tensor) -> torch.Tensor:
        if self.quantizing:
            weight = self.quantizer(weight)
        if self.pruning and self.mask is not None:
            weight = weight * self.mask.to(weight.dtype)
        return weight

    def take_mask(self, dense_ratio: float) -> None:
        """The l1 mask of the full matrix from the current weights (a collective over tensor
        parallel), cut to this rank's shard: the same mask under every tensor-parallel size."""
        full = self.gather(self.module.weight.detach())
        mask = magnitude_mask(full, dense_ratio)
        self.mask = shard_of(mask, self.target.partition_dim, self.tp_rank, self.tp_size, self.stride)

    def gather(self, shard: torch.Tensor) -> torch.Tensor:
        """The full matrix of one of this layer's shard-shaped tensors (collective)."""
        return gather_full(shard, self.target.partition_dim, self.group, self.stride)


class CompressionScheduler:
    """DeepSpeed's `compression_scheduler` rule: 0-based optimizer step s runs a technique iff
    s >= its schedule_offset. The pruning masks are taken the first time pruning is on (at
    the offset, from the weights trained so far) and are this object's state, saved with every
    checkpoint (per tensor-parallel rank) and restored on resume and rollback."""

    def __init__(self, config: CompressionConfig, layers: dict[str, CompressedLinear]):
        self.config = config
        self.layers = layers
        wq, sp = config.weight_quantization, config.sparse_pruning
        self.quantized = [n for n, layer in layers.items() if layer.quantizer is not None]
        self.pruned = matching(list(layers), sp.modules) if sp.enabled else []
        self._wq, self._sp = wq, sp

    def on_step(self, step: int) -> bool:
        """Set each technique on or off for optimizer step `step`; True when the pruning masks
        were taken now."""
        quantize = self._wq.enabled and step >= self._wq.schedule_offset
        for name in self.quantized:
            self.layers[name].quantizing = quantize
        prune = self._sp.enabled and step >= self._sp.schedule_offset
        taken = prune and any(self.layers[n].mask is None for n in self.pruned)
        if taken:
            for name in self.pruned:  # the same order on every rank: take_mask is a collective
                self.layers[name].take_mask(self._sp.dense_ratio)
        for name in self.pruned:
            self.layers[name].pruning = prune
        return taken

    def state_dict(self) -> dict[str, Any]:
        return {"masks": {n: self.layers[n].mask for n in self.pruned if self.layers[n].mask is not None}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        masks = state.get("masks", {})
        for name in self.pruned:
            self.layers[name].mask = masks.get(name)


def install_compression(
    gpt: torch.nn.Module, model: ModelConfig, config: CompressionConfig
) -> CompressionScheduler | None:
    """Adapt the matched linear layers of a Megatron-Core GPTModel (pp = 1, 1D tensor parallel);
    None when no technique is enabled (the model is then untouched)."""
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear

    wq, sp = config.weight_quantization, config.sparse_pruning
    if not (wq.enabled or sp.enabled):
        return None
    targets = {t.name: t for t in compressible_linears(model)}
    quantized = set(matching(list(targets), wq.modules)) if wq.enabled else set()
    pruned = set(matching(list(targets), sp.modules)) if sp.enabled else set()
    modules = dict(gpt.named_modules())
    group = parallel_state.get_tensor_model_parallel_group()
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    tp_size = parallel_state.get_tensor_model_parallel_world_size()
    layers = {}
    for name, target in targets.items():
        if name not in quantized | pruned:
            continue
        module = modules.get(name)
        if not isinstance(module, (ColumnParallelLinear, RowParallelLinear)):
            raise ConfigError(
                f"compression: {name} is a {type(module).__name__}, not Megatron-Core's "
                "ColumnParallelLinear/RowParallelLinear that compression adapts (a Transformer Engine "
                "layer spec is used on GPUs where transformer_engine is installed); set compression=none"
            )
        expected = [target.rows, target.columns]
        expected[target.partition_dim] //= tp_size
        if list(module.weight.shape) != expected or module.weight.partition_dim != target.partition_dim:
            raise RuntimeError(
                f"{name}: weight {tuple(module.weight.shape)} split on dim {module.weight.partition_dim}, "
                f"expected {tuple(expected)} split on dim {target.partition_dim} (integration/compression/targets.py)"
            )
        quantizer = None
        if name in quantized:
            stride = getattr(module.weight, "partition_stride", 1)
            rows = full_row_indices(module.weight.shape[0], target.partition_dim, stride, tp_rank, tp_size)
            quantizer = GroupQuantizer(
                wq.target_bits,
                wq.quantization_type == "symmetric",
                wq.quantize_groups,
                full_rows=target.rows,
                rows=rows,
                group=group,
            )
        layers[name] = CompressedLinear(target, module, quantizer, group)
    return CompressionScheduler(config, layers)


class CompressedStep:
    """A step runner whose model carries compressed layers: the schedule is advanced before each
    optimizer step (DeepSpeed's engine stepped its compression scheduler in engine.step when it
    still read `compression_training`)."""

    def __init__(self, runner, compression: CompressionScheduler):
        self.runner = runner
        self.compression = compression
        self.engine = runner.engine
        self.is_logging_rank = runner.is_logging_rank
        self.gate = runner.gate

    def train_step(self, step: int, data_step: int):
        if self.compression.on_step(step) and self.is_logging_rank:
            print(
                f"compression: step {step + 1}: pruning masks taken, keeping "
                f"{self.compression.config.sparse_pruning.dense_ratio:.0%} of each pruned matrix",
                file=sys.stderr,
                flush=True,
            )
        return self.runner.train_step(step, data_step)

    def eval_loss(self, iters: int) -> float:
        return self.runner.eval_loss(iters)
