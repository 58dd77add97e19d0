"""Load full, layout-free tensors (see `convert`) into the live engine of this layout: each rank cuts
its tensor-parallel shard and writes the fp32 master, Adam's moments and step count wherever its
DeepSpeed optimizer keeps them, then the model weights, the LR schedule and DeepSpeed's counters.

One writer per optimizer kind: the torch optimizer itself (fp32, ZeRO 0), DeepSpeed's
FP16_UnfusedOptimizer (bf16 at ZeRO 0), the flat partitions of ZeRO 1/2 and BF16_Optimizer
(through DeepSpeed's own per-parameter fragment addresses, `_hp_mapping`), and ZeRO 3's padded
per-parameter partitions (laid out as DeepSpeed's universal-checkpoint loader lays them out).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from integration.reshard.convert import STATE_FILE, STATES, param_file
from integration.reshard.manifest import (
    FLAT,
    TORCH,
    UNFUSED,
    ZERO3,
    canonical_names,
    local_shape,
    optimizer_kind,
    tensor_parallel_cut,
)
from integration.reshard.shards import shard_of


class _LocalShards:
    """This rank's tensor-parallel shard of every state of a parameter, read on demand."""

    def __init__(self, engine, converted: Path):
        from megatron.core import parallel_state

        self.converted = converted
        self.canonical = canonical_names(engine.module)
        self.tp_rank = parallel_state.get_tensor_model_parallel_rank()
        self.tp_world = parallel_state.get_tensor_model_parallel_world_size()

    def __call__(self, name: str, param: torch.Tensor) -> dict[str, torch.Tensor]:
        path = param_file(self.converted, self.canonical[name])
        if not path.exists():
            raise RuntimeError(
                f"{name} ({self.canonical[name]}) is not in the converted checkpoint {self.converted}"
            )
        full = torch.load(path, weights_only=True)
        partition_dim, stride = tensor_parallel_cut(param)
        shape = local_shape(param)
        shards = {
            key: shard_of(full[key], partition_dim, stride, self.tp_rank, self.tp_world) for key in STATES
        }
        for key, shard in shards.items():
            if list(shard.shape) != shape:
                raise RuntimeError(f"{name}: converted {key} shard {list(shard.shape)} != parameter {shape}")
        return shards


def load_converted(engine, converted: Path) -> dict[str, Any]:
    """Collective (ZeRO 3 gathers its persistent parameters). Returns the saved resume state:
    the step, client state (stability monitor), scheduler and counters."""
    state = torch.load(converted / STATE_FILE, weights_only=False)
    shards = _LocalShards(engine, converted)
    step = torch.tensor(float(state["adam_step"]))
    kind = optimizer_kind(engine)
    writers = {TORCH: _write_torch, UNFUSED: _write_unfused, FLAT: _write_flat, ZERO3: _write_zero3}
    if kind not in writers:
        raise RuntimeError(f"cannot load a converted checkpoint into DeepSpeed's {kind}")
    with torch.no_grad():
        writers[kind](engine, shards, step)
    if engine.lr_scheduler is not None and state.get("lr_scheduler") is not None:
        # Sets the iteration and the learning rate of every parameter group, as a step would.
        engine.lr_scheduler.step(state["lr_scheduler"]["last_batch_iteration"])
    engine.global_steps = state["global_steps"]
    engine.global_samples = state.get("global_samples", engine.global_steps * engine.train_batch_size())
    engine.skipped_steps = state["skipped_steps"]
    return state


def _names(engine) -> dict[int, str]:
    return {id(p): name for name, p in engine.module.named_parameters()}


def _adam_state(step: torch.Tensor, values: dict[str, torch.Tensor], like: torch.Tensor) -> dict[str, Any]:
    return {
        "step": step.clone(),
        **{key: values[key].reshape(like.shape).to(like.dtype).clone() for key in ("exp_avg", "exp_avg_sq")},
    }


def _write_torch(engine, shards: _LocalShards, step: torch.Tensor) -> None:
    names, optimizer = _names(engine), engine.optimizer
    for group in optimizer.param_groups:
        for param in group["params"]:
            values = shards(names[id(param)], param)
            param.data.copy_(values["fp32"].view_as(param))
            optimizer.state[param] = _adam_state(step, values, param)


def _write_unfused(engine, shards: _LocalShards, step: torch.Tensor) -> None:
    names, optimizer = _names(engine), engine.optimizer
    for model_group, master_group in zip(optimizer.fp16_groups, optimizer.fp32_groups, strict=True):
        for param, master in zip(model_group, master_group, strict=True):
            values = shards(names[id(param)], param)
            master.data.copy_(values["fp32"].view_as(master))
            param.data.copy_(master.data.to(param.dtype))
            optimizer.optimizer.state[master] = _adam_state(step, values, master)


def _write_flat(engine, shards: _LocalShards, step: torch.Tensor) -> None:
    """Each model parameter knows which slice of which flat fp32 partition it owns on this data
    rank (`_hp_mapping`: fragment addresses in the parameter and in the partition)."""
    optimizer = engine.optimizer
    inner = optimizer.optimizer
    partitions = [group["params"][0] for group in inner.param_groups]
    moments = [{key: torch.zeros_like(flat) for key in ("exp_avg", "exp_avg_sq")} for flat in partitions]
    for name, param in engine.module.named_parameters():
        values = shards(name, param)
        param.data.copy_(values["fp32"].view_as(param).to(param.dtype))
        mapping = getattr(param, "_hp_mapping", None)
        if mapping is None:
            continue  # none of this parameter lies in this rank's partition
        source, dest = mapping.lp_fragment_address, mapping.hp_fragment_address
        group = mapping.param_group_index
        for key, target in (("fp32", partitions[group]), *moments[group].items()):
            piece = values[key].reshape(-1).narrow(0, source.start, source.numel)
            target.data.narrow(0, dest.start, dest.numel).copy_(piece)
    for flat, group_moments in zip(partitions, moments, strict=True):
        inner.state[flat] = {"step": step.clone(), **group_moments}
    # The per-parameter views into the optimizer state are linked on the next step.
    optimizer._hp_optimizer_states_linked = False
    optimizer._lazy_init_hp_params_optimizer_state()


def _write_zero3(engine, shards: _LocalShards, step: torch.Tensor) -> None:
    """Every parameter takes ceil(numel / dp) elements of its sub-group's flat partition; the
    model's own partitions are refreshed from the fp32 masters and the persistent (always
    gathered) parameters re-gathered, as DeepSpeed's checkpoint loading does."""
    import torch.distributed as dist

    names, optimizer = _names(engine), engine.optimizer
    optimizer.checkpoint_event_prologue()
    for sub, params in enumerate(optimizer.fp16_groups):
        fp32 = optimizer.fp32_partitioned_groups_flat[sub]
        flats = {key: torch.zeros_like(fp32) for key in STATES}
        offset = 0
        for param in params:
            values = shards(names[id(param)], param)
            group = optimizer._get_param_partition_group(param)
            world, rank = dist.get_world_size(group=group), dist.get_rank(group=group)
            size = math.ceil(param.ds_numel / world)
            for key, flat in flats.items():
                padded = torch.zeros(size * world, dtype=flat.dtype)
                padded[: param.ds_numel] = values[key].reshape(-1)
                flat.narrow(0, offset, size).copy_(padded.narrow(0, rank * size, size))
            offset += size
        fp32.data.copy_(flats["fp32"])
        optimizer.optimizer.state[fp32] = {
            "step": step.clone(),
            "exp_avg": flats["exp_avg"],
            "exp_avg_sq": flats["exp_avg_sq"],
        }
        optimizer.fp16_partitioned_groups_flat[sub].data.copy_(fp32.data)
        updated = optimizer.unflatten(
            optimizer.fp16_partitioned_groups_flat[sub], optimizer.fp16_partitioned_groups[sub]
        )
        for partitioned, data in zip(optimizer.fp16_partitioned_groups[sub], updated, strict=True):
            partitioned.data = data.data
    optimizer.checkpoint_event_epilogue()
