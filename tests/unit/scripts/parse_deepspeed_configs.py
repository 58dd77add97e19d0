"""Parse DeepSpeed configs with DeepSpeed's own `DeepSpeedConfig`, in a separate process.

DeepSpeedConfig asks deepspeed.comm for the rank before it looks at `mpu`; without an initialised
backend it silently assumes world size 1. So this script starts a one-process gloo group (never
done inside the unit-test process) and hands DeepSpeed the data-parallel size through a plain `mpu`
object, which is how the training engine hands over Megatron's groups too.

stdin: JSON list of {"config": {...}, "data_parallel": N}; stdout (last line): JSON list of results.
"""

from __future__ import annotations

import json
import os
import socket
import sys


class DataParallelSize:
    """The one thing DeepSpeedConfig asks an `mpu` for."""

    def __init__(self, data_parallel: int):
        self.data_parallel = data_parallel

    def get_data_parallel_world_size(self) -> int:
        return self.data_parallel


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _zero_and_offload(parsed) -> dict:
    """What DeepSpeed's own parser made of the offload and communication keys."""
    zero = parsed.zero_config
    offload_optimizer, offload_param = zero.offload_optimizer, zero.offload_param
    return {
        "offload_optimizer": getattr(offload_optimizer.device, "value", offload_optimizer.device)
        if offload_optimizer
        else None,
        "offload_param": getattr(offload_param.device, "value", offload_param.device)
        if offload_param
        else None,
        "nvme_path": str(offload_optimizer.nvme_path)
        if offload_optimizer and offload_optimizer.nvme_path
        else None,
        "overlap_comm": zero.overlap_comm,
        "reduce_bucket_size": zero.reduce_bucket_size,
        "zero_hpz_partition_size": zero.zero_hpz_partition_size,
        "zero_quantized_weights": zero.zero_quantized_weights,
        "zero_quantized_gradients": zero.zero_quantized_gradients,
        "grad_accum_dtype": parsed.grad_accum_dtype,
        "torch_adam": bool((parsed.optimizer_params or {}).get("torch_adam", False)),
        "aio_queue_depth": parsed.aio_config["queue_depth"],
    }


def main() -> None:
    cases = json.loads(sys.stdin.read())
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
    os.environ["MASTER_PORT"] = str(_free_port())
    import deepspeed
    import deepspeed.ops
    from deepspeed.runtime.config import DeepSpeedConfig

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # no JIT build for a parse
    deepspeed.init_distributed(dist_backend="gloo", verbose=False)
    results = []
    try:
        for case in cases:
            parsed = DeepSpeedConfig(case["config"], mpu=DataParallelSize(case["data_parallel"]))
            try:  # the same dict on one replica too many must trip DeepSpeed's batch check
                DeepSpeedConfig(case["config"], mpu=DataParallelSize(case["data_parallel"] + 1))
                wrong_world_refused = False
            except AssertionError:
                wrong_world_refused = True
            results.append(
                {
                    "world_size": parsed.world_size,
                    "train_batch_size": parsed.train_batch_size,
                    "train_micro_batch_size_per_gpu": parsed.train_micro_batch_size_per_gpu,
                    "gradient_accumulation_steps": parsed.gradient_accumulation_steps,
                    "zero_stage": int(parsed.zero_optimization_stage),
                    "bf16": parsed.bfloat16_config.enabled,
                    "fp16": parsed.float16_config.enabled,
                    "fp16_initial_scale_power": parsed.float16_config.initial_scale_power,
                    "gradient_clipping": parsed.gradient_clipping,
                    "optimizer": parsed.optimizer_name,
                    "scheduler": parsed.scheduler_name,
                    "wrong_world_refused": wrong_world_refused,
                    **_zero_and_offload(parsed),
                }
            )
    finally:
        import torch.distributed

        torch.distributed.destroy_process_group()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
