"""What the stability hooks cost per training step, measured side by side in one process.

    OMP_NUM_THREADS=1 python benchmarks/stability_overhead.py [--rounds 6] [--block 5] [override ...]

Three runners over the same GPT shape, data and seed, built exactly as launch/train.py builds them
(`build_training_runner`), stepped in alternating blocks so machine drift lands on all alike:

  off      stability=off
  gate     stability=off + spike detection + non-finite guard: the step gate alone. The arithmetic
           is the one of `off`, so the losses must be identical (printed).
  default  stability=default: gate + z-loss + QK-layernorm (a slightly different model).

Prints the median step time of each and the ratios gate/off and default/off.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.filterwarnings("ignore")

MODEL_OVERRIDES = ["model.hidden_size=256", "model.ffn_hidden_size=1024", "model.num_layers=4"]
VARIANTS = {
    "off": ["stability=off"],
    "gate": ["stability=off", "stability.spike.enabled=true", "stability.nonfinite_guard=true"],
    "default": ["stability=default"],
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--block", type=int, default=5)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    import torch
    from deepspeed.utils import logger as ds_logger
    from hydra import compose, initialize_config_dir

    from integration import distributed
    from integration.config import register_schemas, to_typed
    from integration.steps import build_training_runner
    from integration.validate import validate

    ds_logger.setLevel("WARNING")
    register_schemas()
    steps = args.warmup + args.rounds * args.block
    common = [*MODEL_OVERRIDES, f"trainer.max_steps={steps}", "optim.warmup_steps=2", *args.overrides]
    configs = {}
    with initialize_config_dir(
        config_dir=str(Path(__file__).resolve().parents[1] / "conf"), version_base="1.3"
    ):
        for name, extra in VARIANTS.items():
            configs[name] = to_typed(compose("train", overrides=[*common, *extra]))
    env = distributed.LaunchEnv.from_environ()
    layouts = {
        name: validate(c, env.world_size, torch.cuda.is_available()).layout for name, c in configs.items()
    }
    first = configs["off"]
    distributed.init_process_group(first.cluster, env)
    distributed.init_model_parallel(layouts["off"])
    runners = {}
    for name, config in configs.items():
        distributed.seed_everything(config.trainer.seed)
        runners[name] = build_training_runner(
            config.model,
            config.parallel,
            config.optim,
            config.precision,
            config.data,
            config.trainer,
            config.stability,
            layouts[name],
            torch.device("cpu"),
        )
    losses = {name: {} for name in runners}
    times = {name: [] for name in runners}

    def block(name: str, start: int, count: int, timed: bool) -> None:
        for step in range(start, start + count):
            t0 = time.perf_counter()
            result = runners[name].train_step(step, step)
            if timed:
                times[name].append(time.perf_counter() - t0)
            losses[name][step] = result.loss

    for name in runners:
        block(name, 0, args.warmup, timed=False)
    order = list(runners)
    for round_index in range(args.rounds):
        start = args.warmup + round_index * args.block
        for name in order if round_index % 2 == 0 else reversed(order):
            block(name, start, args.block, timed=True)
    median = {name: statistics.median(t) for name, t in times.items()}
    if env.rank == 0:
        print(
            f"stability hooks, {env.world_size} process(es), OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}"
        )
        print(f"shape: {' '.join(MODEL_OVERRIDES)}, {len(times['off'])} timed steps per variant")
        for name in runners:
            print(
                f"  {name:8s} median step {median[name] * 1e3:8.2f} ms  last loss {losses[name][steps - 1]:.5f}"
            )
        print(f"ratio gate/off    {median['gate'] / median['off']:.4f}")
        print(f"ratio default/off {median['default'] / median['off']:.4f}")
        diff = max(abs(losses["gate"][s] - losses["off"][s]) for s in losses["off"])
        print(f"max |loss(gate) - loss(off)| over {steps} steps: {diff:.3e}")
    distributed.teardown()


if __name__ == "__main__":
    main()
