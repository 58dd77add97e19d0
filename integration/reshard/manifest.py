"""What every rank records next to its DeepSpeed checkpoint files, so that the checkpoint can be
read back under another layout: for each of its parameters the layout-independent name
(Megatron-Core GPTModel's), the tensor-parallel cut (dimension and stride, as Megatron-Core set
them on the parameter), whether it is the pipeline's second copy of a tied weight, and which
DeepSpeed files hold its state. DeepSpeed's own files name parameters only by the module path of
the layout that wrote them (`decoder.layers.2...` dense, `3.layer...` on a pipeline stage) and do
not say how a tensor-parallel shard was cut.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

MANIFEST = "params_rank{rank:05d}.json"

TORCH = "torch"
"""No DeepSpeed wrapper (fp32, ZeRO 0): the torch optimizer holds the state of the model's own
parameters, saved in the model-states file next to the weights."""
UNFUSED = "fp16_unfused"
"""DeepSpeed's FP16_UnfusedOptimizer (bf16 or fp16 at ZeRO 0 on the plain engine): one fp32 master
per parameter, torch optimizer state on the masters."""
FLAT = "flat"
"""ZeRO 1/2 and BF16_Optimizer: fp32 masters and optimizer state in one flat buffer per parameter
group, cut evenly over data parallel; DeepSpeed records each parameter's slice."""
ZERO3 = "zero3"
"""ZeRO 3: every parameter cut evenly (padded) over data parallel, fp32 masters and state in one
flat buffer per sub-group."""
SUPPORTED = (TORCH, UNFUSED, FLAT, ZERO3)


@dataclass(frozen=True)
class ParamRecord:
    canonical: str
    """Megatron-Core GPTModel's name for the parameter, the same under every layout."""
    shape: list[int]
    """This rank's tensor-parallel shard (before any ZeRO partitioning)."""
    partition_dim: int | None
    """Dimension cut over tensor parallelism; None: replicated on every tensor-parallel rank."""
    stride: int = 1
    """Megatron-Core's partition stride (2 for the fused gate/up projection of a gated MLP)."""
    replica: bool = False
    """The pipeline's copy of a tied weight on a stage that does not own it (its state equals the
    owner's)."""
    weight: list[str] | None = None
    """(file, key) of the parameter in the saved module weights; only for the `torch` kind, whose
    fp32 masters are the module weights."""
    grid_block: bool = False
    """A block of 2D tensor parallelism's q×q grid (integration.tp2d), cut along two dimensions, so
    `partition_dim` (None) does not describe it. 2D checkpoints are never converted
    (checkpoint._check_convertible refuses it); the record only names the parameter."""


@dataclass(frozen=True)
class RankManifest:
    rank: int
    tensor_rank: int
    data_rank: int
    pipeline_rank: int
    optimizer: str
    """One of SUPPORTED (or DeepSpeed's class name for a wrapper conversion cannot read)."""
    model_file: str
    """DeepSpeed's model-states file of this rank's (tensor, pipeline) coordinate (written by data
    rank 0 except at ZeRO 3): scheduler, counters, client state, and for `torch`/`fp16_unfused`
    the optimizer."""
    optimizer_file: str | None
    """This rank's ZeRO/BF16 optimizer file (`flat`, `zero3`)."""
    groups: list[list[str]] = field(default_factory=list)
    """Optimizer parameter groups in order, local parameter names (`torch`, `fp16_unfused`: their
    optimizer state is indexed by position)."""
    params: dict[str, ParamRecord] = field(default_factory=dict)
    """Local (module path) name -> record."""

    def write(self, directory: Path) -> None:
        path = directory / MANIFEST.format(rank=self.rank)
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(json.dumps(asdict(self), indent=0))
        os.replace(temporary, path)

    @staticmethod
    def read(directory: Path, rank: int) -> RankManifest:
        raw = json.loads((directory / MANIFEST.format(rank=rank)).read_text())
        raw["params"] = {name: ParamRecord(**record) for name, record in raw["params"].items()}
        return RankManifest(**raw)


def optimizer_kind(engine) -> str:
    from deepspeed.runtime.bf16_optimizer import BF16_Optimizer
    from deepspeed.runtime.fp16.unfused_optimizer import FP16_UnfusedOptimizer
    from deepspeed.runtime.zero.stage3 import DeepSpeedZeroOptimizer_Stage3
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    optimizer = engine.optimizer
    if isinstance(optimizer, DeepSpeedZeroOptimizer_Stage3):
        return ZERO3
    if isinstance(optimizer, (DeepSpeedZeroOptimizer, BF16_Optimizer)):
        return FLAT
    if isinstance(optimizer, FP16_UnfusedOptimizer):
        return UNFUSED
    if optimizer is engine.basic_optimizer and isinstance(optimizer, torch.optim.Optimizer):
        return TORCH
    return type(optimizer).__name__


def canonical_names(module: torch.nn.Module) -> dict[str, str]:
    """Local parameter name -> GPTModel name. The dense model (GPTModel, GPT2D) already uses
    them; a pipeline stage maps its layer paths."""
    from deepspeed.pipe import PipelineModule

    if isinstance(module, PipelineModule):
        from integration.pipeline import dense_parameter_names

        return dense_parameter_names(module)
    return {name: name for name, _ in module.named_parameters()}


def tensor_parallel_cut(param: torch.Tensor) -> tuple[int | None, int]:
    """(partition_dim or None when replicated, stride) as Megatron-Core set them."""
    if not getattr(param, "tensor_model_parallel", False):
        return None, 1
    return int(param.partition_dim), int(getattr(param, "partition_stride", 1))


def local_shape(param: torch.Tensor) -> list[int]:
    """The tensor-parallel shard's shape, also when ZeRO 3 has partitioned the data away."""
    return list(getattr(param, "ds_shape", param.shape))


def _module_weight_locations(engine, root: Path, tag: str, model_file: str) -> dict[int, list[str]]:
    """id(parameter) -> (file, key) where DeepSpeed saved its weight: the model-states file
    (plain engine) or the pipeline's per-layer files."""
    from deepspeed.pipe import PipelineModule

    module = engine.module
    if not isinstance(module, PipelineModule):
        return {id(p): [model_file, name] for name, p in module.named_parameters()}
    locations = {}
    for index, layer in enumerate(module.forward_funcs):
        if not isinstance(layer, torch.nn.Module):
            continue  # e.g. the tied output head on the last stage: saved with its owner
        layer_file = Path(module.ckpt_layer_path(str(root / tag), index)).name
        for key, param in layer.named_parameters():
            locations[id(param)] = [layer_file, key]
    return locations


def record(engine, root: Path, tag: str) -> RankManifest:
    """This rank's manifest for the checkpoint `root/tag` DeepSpeed has just written; written into
    the checkpoint directory (so complete.json lists and checks it)."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    kind = optimizer_kind(engine)
    module = engine.module
    names = {id(p): name for name, p in module.named_parameters()}
    canonical = canonical_names(module)
    model_file = Path(engine._get_ckpt_name(str(root), tag)).name
    optimizer_file = Path(engine._get_zero_ckpt_name(str(root), tag)).name if kind in (FLAT, ZERO3) else None
    groups: list[list[str]] = []
    if kind == TORCH:
        groups = [[names[id(p)] for p in group["params"]] for group in engine.optimizer.param_groups]
    elif kind == UNFUSED:
        groups = [[names[id(p)] for p in group] for group in engine.optimizer.fp16_groups]
    weights = _module_weight_locations(engine, root, tag, model_file) if kind == TORCH else {}
    params = {}
    for name, param in module.named_parameters():
        grid_block = bool(getattr(param, "grid_block_2d", False))
        partition_dim, stride = (None, 1) if grid_block else tensor_parallel_cut(param)
        params[name] = ParamRecord(
            canonical=canonical[name],
            shape=local_shape(param),
            partition_dim=partition_dim,
            stride=stride,
            replica=bool(getattr(param, "ds_pipe_replicated", False)),
            weight=weights.get(id(param)),
            grid_block=grid_block,
        )
    manifest = RankManifest(
        rank=dist.get_rank(),
        tensor_rank=parallel_state.get_tensor_model_parallel_rank(),
        data_rank=parallel_state.get_data_parallel_rank(),
        pipeline_rank=parallel_state.get_pipeline_model_parallel_rank(),
        optimizer=kind,
        model_file=model_file,
        optimizer_file=optimizer_file,
        groups=groups,
        params=params,
    )
    manifest.write(root / tag)
    return manifest
