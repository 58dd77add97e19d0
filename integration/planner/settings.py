"""The planner's own knobs: calibrations and assumptions, not hardware facts (those are the
cluster group's) and not the model's."""

from __future__ import annotations

from dataclasses import dataclass

# DeepSpeed 0.19 ZeRO defaults (deepspeed/runtime/zero/config.py) for the keys our generated
# ds_config leaves unset; the memory model allocates what DeepSpeed allocates with them.
ZERO_REDUCE_BUCKET_SIZE = 500_000_000
"""reduce_bucket_size: elements of each contiguous gradient bucket (ZeRO 1-3)."""
ZERO3_PARAM_PERSISTENCE_THRESHOLD = 100_000
"""stage3_param_persistence_threshold: parameters this small stay gathered on every rank."""
ZERO3_PREFETCH_BUCKET_SIZE = 50_000_000
"""stage3_prefetch_bucket_size: elements gathered ahead of the layer that needs them."""


@dataclass(frozen=True)
class PlannerSettings:
    compute_efficiency: float = 0.5
    """Fraction of the dense peak that a transformer's GEMMs reach in practice. Megatron-LM reports
    52% of A100 peak for GPT-3 175B (Narayanan et al. 2021, table 1) and ~42-57% across sizes;
    recalibrate against a measured run (metrics.jsonl `mfu`)."""
    flash_attention: bool = True
    """Core attention never stores the s×s score matrices (Transformer Engine / flash attention,
    what Megatron-Core uses on a GPU with TE). False: Megatron's unfused attention, the 5as²b term of
    Korthikanti et al. 2022, which selective recompute removes."""
    reserved_gib: float = 2.0
    """Per GPU, outside the model: CUDA context, NCCL buffers, allocator fragmentation."""
    max_micro_batch_size: int = 16
    """Largest micro-batch tried (powers of two up to it)."""
    cpu_adam_params_per_s: float = 1.0e9
    """Parameters per second one node's CPU updates with Adam under ZeRO-Offload (shared by its
    GPUs' processes). DeepSpeed's CPU-Adam is ~5-7x torch's (Ren et al. 2021, ZeRO-Offload, sec. 5),
    and it is what our ds_config selects under offload (integration/ds_config.py)."""
    sequence_parallel: bool = True
    """Also try Megatron sequence parallelism when tp > 1 (needs Transformer Engine or Apex norms
    on the cluster)."""
    tensor_parallel_2d: bool = True
    """Also try 2D tensor parallelism (parallel.tensor_parallel_2d: Optimus/SUMMA on a q×q grid) where
    tp = q² ≥ 4 divides the world; validation rejects it for models 2D does not implement yet."""
