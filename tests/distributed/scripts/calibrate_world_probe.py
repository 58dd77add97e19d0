"""Run by torchrun with 2 processes: the planner's multi-process calibration
(integration.planner.calibrate.calibrate_world) at a small shape, with and without the GEMM rates.
Rank 0 writes what it returned.

    torchrun --nproc_per_node 2 calibrate_world_probe.py OUT_DIR
"""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from integration.launcher_args import strip_launcher_args  # noqa: E402

strip_launcher_args(sys.argv)

import torch.distributed as dist  # noqa: E402

from integration.planner.calibrate import calibrate_world  # noqa: E402

out = Path(sys.argv[1])
dist.init_process_group("gloo")
results = {
    "with_rates": calibrate_world(2, 32, 64, 256),
    "without_rates": calibrate_world(2, 32, 64, 256, gemm_rates=False),
}
if dist.get_rank() == 0:
    (out / "calibration.json").write_text(json.dumps(results))
else:
    assert results == {"with_rates": None, "without_rates": None}
dist.destroy_process_group()
