"""Layout planner: enumerate (tp 1D or 2D, pp, dp, ZeRO, micro-batch, recompute, offload) layouts
for a model on a cluster, predict each one's per-GPU memory and step time, and rank them.

Pure arithmetic (no torch, no DeepSpeed import): `python launch/plan.py` runs on a laptop.

- `memory.py`    per-GPU bytes: model states with DeepSpeed's own partitioning and padding,
                 activations (Korthikanti et al. 2022), pipeline in-flight micro-batches, logits
- `timing.py`    step time: FLOPs over a calibrated fraction of peak, pipeline bubble, and
                 TP/PP/DP/ZeRO/offload traffic under an α–β model on the right link tier
- `tensor_comm.py` the collectives 1D and 2D tensor parallelism issue, call by call (bytes and time)
- `tp2d.py`      per-GPU parameters, activations and memory of a 2D (q×q grid) layout
- `enumerate.py` the candidate layouts, checked by integration.validate's rules
- `table.py`     the ranked table and the `parallel.*` override line

The measuring side imports torch and is never imported by the planner itself: `calibrate.py` (this
machine's speeds), `saved_tensors.py` (activation bytes autograd keeps), `allocations.py` (a
process's peak tensor bytes).
"""

from integration.planner.enumerate import Candidate, PlannedLayout, plan_layouts
from integration.planner.settings import PlannerSettings
from integration.planner.table import override_line, render_table

__all__ = [
    "Candidate",
    "PlannedLayout",
    "PlannerSettings",
    "override_line",
    "plan_layouts",
    "render_table",
]
