"""The DeepSpeed config dict, generated from the typed groups.

Batch keys are derived from the layout (never set twice by the user); everything else is a
one-to-one mapping from our field names onto DeepSpeed's JSON keys.
"""

from __future__ import annotations

from typing import Any

from integration.config.schema import OptimConfig, ParallelConfig, PrecisionConfig
from integration.layout import Layout

# DeepSpeed prints its own step line every steps_per_print; our progress display replaces it.
_QUIET = 10**9


def build_deepspeed_config(
    layout: Layout,
    parallel: ParallelConfig,
    optim: OptimConfig,
    precision: PrecisionConfig,
    max_steps: int,
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
    return config
