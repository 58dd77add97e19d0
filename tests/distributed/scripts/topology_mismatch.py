"""Run by torchrun with 2 processes: Megatron-Core groups for pp=2, then a DeepSpeed topology that
splits the same ranks as dp=2. The start-up check must refuse it on every rank."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology  # noqa: E402

from integration.config.schema import ClusterConfig  # noqa: E402
from integration.distributed import LaunchEnv, init_model_parallel, init_process_group, teardown  # noqa: E402
from integration.layout import Layout  # noqa: E402
from integration.pipeline import check_topology_agrees  # noqa: E402

init_process_group(ClusterConfig(name="local_cpu"), LaunchEnv.from_environ())
init_model_parallel(Layout(2, 1, 2, 1, 1, 1, 1))
check_topology_agrees(PipeModelDataParallelTopology(num_pp=2, num_mp=1, num_dp=1))
print("agreeing topology accepted", flush=True)
try:
    check_topology_agrees(PipeModelDataParallelTopology(num_pp=1, num_mp=1, num_dp=2))
except RuntimeError as err:
    print(f"refused: {err}", flush=True)
teardown()
