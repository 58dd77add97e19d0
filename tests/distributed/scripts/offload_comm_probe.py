"""Run under the deepspeed runner: train several configurations one after the other in the same
processes (one launch, one set of process groups) and report each one's loss curve.

    deepspeed --num_gpus 2 offload_comm_probe.py OUT.json CASES_JSON parallel=dp ...

CASES_JSON maps a case name to its extra Hydra overrides (e.g. {"z2_offload":
["parallel.zero_stage=2", "offload=optimizer_cpu"]}); the trailing arguments are common to all.
Every case goes through what a launch does after the process groups exist: validate, the
offload preflight (integration.offload), reseed, `build_training_runner` (real DeepSpeed engine
from the generated config, Megatron-Core GPT, gloo), then `trainer.max_steps` steps. A case that
fails records its error instead of stopping the others.
"""

import json
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from integration import distributed  # noqa: E402
from integration.config import register_schemas, to_typed  # noqa: E402
from integration.offload import check_offload_environment  # noqa: E402
from integration.steps import build_training_runner  # noqa: E402
from integration.validate import validate  # noqa: E402

args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
out_path, cases, common = Path(args[0]), json.loads(args[1]), args[2:]
register_schemas()


def compose_case(overrides: list[str]):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return to_typed(compose("train", overrides=[*common, *overrides]))


env = distributed.LaunchEnv.from_environ()
first = compose_case(next(iter(cases.values())))
layout = validate(first, env.world_size, cuda_available=False).layout
distributed.init_process_group(first.cluster, env)
distributed.init_model_parallel(layout)

report = {"rank": dist.get_rank(), "cases": {}}
for name, overrides in cases.items():
    try:
        config = compose_case(overrides)
        case_layout = validate(config, env.world_size, cuda_available=False).layout
        assert case_layout == layout, f"{name}: every case must share the layout"
        check_offload_environment(config.offload, report=False)
        distributed.seed_everything(config.trainer.seed)
        runner = build_training_runner(
            config.model,
            config.parallel,
            config.optim,
            config.precision,
            config.data,
            config.trainer,
            config.stability,
            layout,
            torch.device("cpu"),
            offload=config.offload,
            comm=config.comm,
        )
        engine = runner.engine
        results = [runner.train_step(step, step) for step in range(config.trainer.max_steps)]
        report["cases"][name] = {
            "losses": [r.loss for r in results],
            "grad_norms": [r.grad_norm for r in results],
            "optimizer": type(engine.basic_optimizer).__name__,
            "zero_stage": engine.zero_optimization_stage(),
            "offload_optimizer": str(engine.zero_offload_optimizer().device)
            if engine.zero_offload_optimizer()
            else None,
            "offload_param": str(engine.zero_offload_param().device) if engine.zero_offload_param() else None,
            "overlap_comm": engine.zero_overlap_comm(),
            "hpz": engine.zero_hpz_partition_size(),
        }
        engine.destroy()
        del runner, engine
    except Exception as err:  # noqa: BLE001 - reported per case, the test decides
        report["cases"][name] = {
            "error": f"{type(err).__name__}: {err}",
            "trace": traceback.format_exc()[-3000:],
        }
    dist.barrier()
out_path.with_name(f"{out_path.stem}.rank{dist.get_rank()}.json").write_text(json.dumps(report))
distributed.teardown()
