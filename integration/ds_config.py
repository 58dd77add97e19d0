"""The DeepSpeed config dict, generated from the typed groups.

Batch keys are derived from the layout (never set twice by the user); everything else is a
one-to-one mapping from our field names onto DeepSpeed's JSON keys.
"""

from __future__ import annotations

from typing import Any

from integration.config.schema import (
    CommConfig,
    OffloadConfig,
    OptimConfig,
    ParallelConfig,
    PrecisionConfig,
)
from integration.layout import Layout

# DeepSpeed prints its own step line every steps_per_print; our progress display replaces it.
_QUIET = 10**9


def build_deepspeed_config(
    layout: Layout,
    parallel: ParallelConfig,
    optim: OptimConfig,
    precision: PrecisionConfig,
    max_steps: int,
    offload: OffloadConfig | None = None,
    comm: CommConfig | None = None,
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "train_batch_size": layout.global_batch_size,
        "train_micro_batch_size_per_gpu": layout.micro_batch_size,
        "gradient_accumulation_steps": layout.gradient_accumulation_steps,
        "gradient_clipping": optim.clip_grad,
        "zero_optimization": {"stage": parallel.zero_stage},
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": optim.lr,
                "betas": list(optim.betas),
                "eps": optim.eps,
                "weight_decay": optim.weight_decay,
                # torch's AdamW instead of DeepSpeed's FusedAdam: same math, no JIT build.
                "torch_adam": True,
                "adam_w_mode": True,
            },
        },
        "scheduler": {
            "type": "WarmupCosineLR",
            "params": {
                "total_num_steps": optim.decay_steps or max_steps,
                "warmup_num_steps": optim.warmup_steps,
                "warmup_type": "linear",
                "warmup_min_ratio": 0.0,
                "cos_min_ratio": optim.min_lr_ratio,
            },
        },
        "steps_per_print": _QUIET,
        "wall_clock_breakdown": False,
    }
    if parallel.tensor_parallel_2d and layout.pipeline_parallel > 1:
        # DeepSpeed's defaults (true) send 1/tp of an activation it assumes replicated over the
        # tensor group and all-gather it on the next stage; 2D blocks differ on every grid rank.
        config["pipeline"] = {"pipe_partitioned": False, "grad_partitioned": False}
    if precision.dtype == "bf16":
        config["bf16"] = {"enabled": True}
    elif precision.dtype == "fp16":
        config["fp16"] = {
            "enabled": True,
            "loss_scale": 0,
            "initial_scale_power": precision.initial_loss_scale_power,
            "loss_scale_window": precision.loss_scale_window,
            "hysteresis": precision.hysteresis,
            "min_loss_scale": precision.min_loss_scale,
        }
    if offload is not None:
        _apply_offload(config, offload)
    if comm is not None:
        _apply_comm(config, comm)
    return config


def _apply_offload(config: dict[str, Any], offload: OffloadConfig) -> None:
    """zero_optimization.offload_optimizer / offload_param, and the aio block for NVMe. Nothing for
    device none, so offload=none leaves the config as it was."""
    zero = config["zero_optimization"]
    opt, param = offload.optimizer, offload.param
    if opt.device != "none":
        block: dict[str, Any] = {"device": opt.device, "pin_memory": opt.pin_memory}
        if opt.device == "nvme":
            block.update(
                nvme_path=opt.nvme_path,
                buffer_count=opt.buffer_count,
                pipeline_read=opt.pipeline_read,
                pipeline_write=opt.pipeline_write,
                fast_init=opt.fast_init,
            )
        zero["offload_optimizer"] = block
        # DeepSpeed builds its vectorised CPU Adam (DeepSpeedCPUAdam, adamw_mode from adam_w_mode,
        # each parameter group's own weight decay) only when torch_adam is off; torch's AdamW
        # would run the update on the host several times slower.
        del config["optimizer"]["params"]["torch_adam"]
    if param.device != "none":
        block = {"device": param.device, "pin_memory": param.pin_memory}
        if param.device == "nvme":
            block.update(
                nvme_path=param.nvme_path,
                buffer_count=param.buffer_count,
                buffer_size=param.buffer_size,
                max_in_cpu=param.max_in_cpu,
            )
        zero["offload_param"] = block
    if "nvme" in (opt.device, param.device):
        aio = offload.aio
        config["aio"] = {
            "block_size": aio.block_size,
            "queue_depth": aio.queue_depth,
            "intra_op_parallelism": aio.intra_op_parallelism,
            "single_submit": aio.single_submit,
            "overlap_events": aio.overlap_events,
            "use_gds": aio.use_gds,
        }


# CommConfig field -> DeepSpeed zero_optimization key, emitted only when set (None: DeepSpeed's default).
_ZERO_COMM_KEYS = (
    "overlap_comm",
    "contiguous_gradients",
    "reduce_scatter",
    "reduce_bucket_size",
    "allgather_partitions",
    "allgather_bucket_size",
    "use_multi_rank_bucket_allreduce",
    "stage3_prefetch_bucket_size",
    "stage3_param_persistence_threshold",
    "stage3_max_live_parameters",
    "stage3_max_reuse_distance",
)


def _apply_comm(config: dict[str, Any], comm: CommConfig) -> None:
    """ZeRO communication keys and ZeRO++; only what differs from DeepSpeed's defaults, so
    comm=default leaves the config as it was."""
    zero = config["zero_optimization"]
    for key in _ZERO_COMM_KEYS:
        value = getattr(comm, key)
        if value is not None:
            zero[key] = value
    if comm.zero_quantized_weights:
        zero["zero_quantized_weights"] = True
    if comm.zero_quantized_gradients:
        zero["zero_quantized_gradients"] = True
    if comm.zero_hpz_partition_size > 1:
        zero["zero_hpz_partition_size"] = comm.zero_hpz_partition_size
    if comm.grad_accum_dtype is not None:
        config["data_types"] = {"grad_accum_dtype": comm.grad_accum_dtype}
    if comm.communication_data_type is not None:
        config["communication_data_type"] = comm.communication_data_type
