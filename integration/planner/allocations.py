"""Measure the peak bytes of tensors a process really holds, to check the planner's whole-stage
memory prediction (memory.stage_memory(...).total) against, on CPU: torch's CPU allocator keeps no
`max_memory_allocated`, but with the profiler's memory profiling on it reports every allocation
and free, with its size, and the running sum of those is the CPU analogue of CUDA's allocated
bytes (model states, DeepSpeed's buckets, activations, gradients in flight, optimizer-step
temporaries: everything, not only the parts the planner names).

    torchrun --nproc_per_node 2 -m integration.planner.allocations OUT_DIR launch/train.py k=v ...

runs the script under the tracker in every process and writes OUT_DIR/rank{N}.json
({"peak": bytes, "end": bytes, "events": count}). Only tensors allocated while tracking count,
so the script is tracked from its first line; benchmarks/whole_peak_memory.py and
tests/distributed/test_planner_measured.py use it, the planner itself never imports torch.

It reads high, never low, by what other threads free: the allocator reports allocations and
frees only on the thread the profiler runs on, so a tensor made there and freed on another
thread (gloo's workers, a garbage collection another thread sets off) stays counted for good
(checked: a tensor freed in a `threading.Thread` leaves "Total Allocated" where it was; the
profiler's `profile_all_threads` records no memory at all).
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import tempfile
from pathlib import Path

from torch.profiler import ProfilerActivity, profile

CPU_DEVICE_TYPE = 0
"""c10::DeviceType::CPU, as the profiler's trace writes a memory record's device."""


class AllocationPeak:
    """`with AllocationPeak() as tracked: ...`, then `tracked.peak` is the largest sum of live CPU
    tensor bytes allocated inside the block (frees of tensors made before it are ignored, since
    the allocator reports them only if it saw them made) and `tracked.end` what is still live."""

    def __init__(self):
        self.peak = 0
        self.end = 0
        self.events = 0
        self._profiler = profile(activities=[ProfilerActivity.CPU], profile_memory=True)

    def __enter__(self) -> AllocationPeak:
        self._profiler.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._profiler.__exit__(*exc)
        # Each memory record carries the allocator's own running total ("Total Allocated"): read
        # it rather than re-adding the records' sizes (the two agree: checked on a training run).
        with tempfile.TemporaryDirectory() as tmp:
            trace = Path(tmp) / "trace.json"
            self._profiler.export_chrome_trace(str(trace))
            events = json.loads(trace.read_text())["traceEvents"]
        records = sorted(
            (event["ts"], event["args"]["Total Allocated"])
            for event in events
            if event.get("name") == "[memory]" and event.get("args", {}).get("Device Type") == CPU_DEVICE_TYPE
        )
        self.peak = max((total for _, total in records), default=0)
        self.end = records[-1][1] if records else 0
        self.events = len(records)


def run_tracked(script: Path, args: list[str]) -> AllocationPeak:
    """Run `script` as __main__ with `args` on its command line, tracked from its first line."""
    sys.argv = [str(script), *args]
    with AllocationPeak() as tracked:
        try:
            runpy.run_path(str(script), run_name="__main__")
        except SystemExit as stop:
            if stop.code not in (None, 0):
                raise
    return tracked


def main() -> None:
    out, script, *args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
    tracked = run_tracked(Path(script), args)
    rank = os.environ.get("RANK", "0")
    result = {"peak": tracked.peak, "end": tracked.end, "events": tracked.events}
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
