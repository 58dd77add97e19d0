"""Build Megatron-Core GPTModels with `integration.model.build_gpt` and count their parameters.

Building needs Megatron's model-parallel state, which needs a torch.distributed group, so this runs
as its own process (a one-process gloo group), never inside the unit-test process.

stdin: JSON list of {"model": <ModelConfig fields>, "vocab_size": N}; stdout (last line): JSON list
of {"numel": total unique parameters, "names": {parameter name: numel}}.
"""

from __future__ import annotations

import json
import socket
import sys


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    cases = json.loads(sys.stdin.read())
    import torch

    from integration.config.schema import ModelConfig, ParallelConfig
    from integration.distributed import init_model_parallel, seed_everything, teardown
    from integration.layout import Layout
    from integration.model import build_gpt

    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1
    )
    results = []
    try:
        parallel = ParallelConfig(name="single")
        init_model_parallel(Layout.derive(parallel, world_size=1))
        for case in cases:
            seed_everything(1234)
            model = build_gpt(ModelConfig(**case["model"]), parallel, "fp32", case["vocab_size"], seed=1234)
            results.append(
                {
                    "numel": sum(p.numel() for p in model.parameters()),  # shared weights once
                    "names": {name: p.numel() for name, p in model.named_parameters()},
                }
            )
    finally:
        teardown()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
