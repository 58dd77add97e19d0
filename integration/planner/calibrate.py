"""One-off calibration of a CPU machine for the planner's time model (timing.py): the facts a GPU
preset states from a datasheet, measured here with microbenchmarks that run no training layout.

- dense GEMM FLOP/s of one process at the model's MLP shape, alone and with n processes computing
  at once (how many cores the node's processes really get);
- the model's forward + backward on one process (our DeepSpeed engine, inside a gradient
  accumulation window) at micro-batch sizes 1-8: the slope is the FLOP/s a transformer reaches
  (compute efficiency = that / the GEMM peak), the intercept the host time per micro-batch that
  does not shrink with the batch (Python dispatch of every op: a GPU hides it behind its kernels,
  a CPU runs it on the critical path);
- the same forward + backward with every process of a 2- and a 4-process world computing at once,
  over rank 0 computing alone in that world, interleaved: how much n processes slow each other;
- the optimizer step of a one-process DeepSpeed engine over the model (torch AdamW tensor by
  tensor, clipping, bookkeeping): its effective memory bandwidth;
- gloo all-reduce at 1 KiB, 256 KiB, 4 MiB and 16 MiB, each right after a GEMM with every process of the
  world busy in groups of the link's size (as tensor and data parallel ranks are in a step), less
  the GEMM: the ring model's latency α and bandwidth β, fitted over the four (each size's median
  of three sweeps), as a training step is charged them;
- our engine's forward + backward at ZeRO-2 and ZeRO-3 against ZeRO-1 on 2 processes: DeepSpeed's
  extra work per micro-batch (gradient hooks and bucket copies; ZeRO-3's fetch and release hooks
  and gathers), less the α–β traffic the time model charges anyway, per parameter tensor.

Every measurement is the fastest of several chunks of work lasting ~0.1 s or more (the least
disturbed by other jobs on a shared machine, as timeit advises), the model's forward + backward
~0.5 s, about a step; benchmarks/planner_accuracy.py takes the fastest training steps likewise.
The all-reduces, noisier than the rest with four processes on two cores, are then the median of
three such measurements per size.

Imports torch, unlike the rest of the planner: benchmarks/planner_accuracy.py runs it; the planner
reads only the resulting numbers (`CpuCalibration.cluster`, `.settings`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from integration.config.schema import ClusterConfig
from integration.planner.settings import PlannerSettings
from integration.planner.timing import OPTIMIZER_BYTES_PER_PARAM, Link, all_gather

CHUNK_S = 0.1
"""Shortest timed chunk: a time slice of the OS scheduler is a few ms, a step a few 100 ms."""
STEP_CHUNK_S = 0.5
"""About the shortest timed chunk of the model's forward + backward (calls are rounded), about
one training step of the layouts it predicts: the fastest of twelve single micro-batches catches
quiet moments that no whole step gets (one round: 165 ms per micro-batch of 2 in the model pass,
where the slowdown's passes timed rank 0 alone at 175-196 ms at their fastest, and every
single-process step of that round ran 22-34% over its prediction)."""


def best_seconds(run: Callable[[], object], chunks: int = 7, calls: int | None = None) -> float:
    """Seconds per call of `run` in the fastest of `chunks` chunks of at least CHUNK_S (calls per
    chunk chosen from a first timed call unless given: a collective needs the same count on every
    rank)."""
    return best_seconds_interleaved({"run": run}, passes=chunks, calls=calls)["run"]


def best_seconds_interleaved(
    runs: dict,
    passes: int = 12,
    calls: int | dict | None = None,
    before_chunk: Callable[[], object] | None = None,
    chunk_s: float = CHUNK_S,
) -> dict:
    """best_seconds for several pieces of work at once: each pass times one chunk of every piece in
    turn, so a change in the machine's speed (other jobs come and go over seconds) reaches all of
    them alike instead of skewing whichever ran during it. `calls` per chunk: one count for all,
    or by key, else enough to last `chunk_s`. `before_chunk` runs untimed before each chunk (a
    barrier, so that ranks start a chunk of collectives together). Key → seconds per call of the
    fastest chunk."""
    per_chunk = {}
    for key, run in runs.items():
        start = time.perf_counter()
        run()  # warm-up, and the size of a chunk
        given = calls.get(key) if isinstance(calls, dict) else calls
        per_chunk[key] = given or max(1, round(chunk_s / max(time.perf_counter() - start, 1e-6)))
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(passes):
        for key, run in runs.items():
            if before_chunk is not None:
                before_chunk()
            start = time.perf_counter()
            for _ in range(per_chunk[key]):
                run()
            best[key] = min(best[key], (time.perf_counter() - start) / per_chunk[key])
    return best


def agreed_calls(group, run: Callable[[], object], seconds: float = CHUNK_S) -> int:
    """Calls of `run` that fill a chunk of at least `seconds` on every rank of `group`, the same
    count on each (a collective inside `run` needs it): from one timed call after a warm-up, the
    most any rank asks for."""
    run()
    start = time.perf_counter()
    run()
    count = torch.tensor([max(1, round(seconds / max(time.perf_counter() - start, 1e-6)))])
    dist.all_reduce(count, op=dist.ReduceOp.MAX, group=group)
    return int(count)


def gemm_flops(tokens: int, hidden: int, width: int, dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s of [tokens, hidden] × [hidden, width], the shape of a transformer's MLP GEMM."""
    a = torch.randn(tokens, hidden, dtype=dtype)
    b = torch.randn(hidden, width, dtype=dtype)
    return 2 * tokens * hidden * width / best_seconds(lambda: a @ b)


def concurrent_seconds(group, run: Callable[[], object], seconds: float = 0.5, repeats: int = 3) -> float:
    """Seconds per call of `run` while every rank of `group` runs it at once: the same count of
    calls on every rank (rank 0's ~`seconds` worth), started together, timed until the last rank
    is done. The OS does not share the cores evenly (some ranks finish first, then the rest speed
    up); a synchronous training step waits for its slowest rank, so the rate that matters is the
    work over that makespan. The fastest of `repeats`."""
    for _ in range(3):  # warm-up: the first calls allocate
        run()
    start = time.perf_counter()
    for _ in range(3):
        run()
    count = torch.tensor([max(1, round(seconds / max((time.perf_counter() - start) / 3, 1e-6)))])
    dist.broadcast(count, src=dist.get_process_group_ranks(group)[0], group=group)
    best = float("inf")
    for _ in range(repeats):
        dist.barrier(group=group)
        start = time.perf_counter()
        for _ in range(int(count)):
            run()
        makespan = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
        dist.all_reduce(makespan, op=dist.ReduceOp.MAX, group=group)
        best = min(best, float(makespan))
    return best / int(count)


def concurrent_gemm_flops(group, tokens: int, hidden: int, width: int) -> float:
    """FLOP/s of each process while every rank of `group` runs [tokens, hidden] × [hidden, width]
    GEMMs at once (concurrent_seconds)."""
    a, b = torch.randn(tokens, hidden), torch.randn(hidden, width)
    return 2 * tokens * hidden * width / concurrent_seconds(group, lambda: a @ b)


def engine_slowdown_passes(
    micro_batch: Callable[[], None], seconds: float = STEP_CHUNK_S, passes: int = 8
) -> list[tuple[float, float]]:
    """How much slower the model's forward + backward runs with every process of the world
    computing at once than with one: per pass, (the makespan of the same call count on every rank
    started together, rank 0's time for that count while the other ranks sleep). Each rank has its
    own engine inside a gradient-accumulation window, so no rank communicates. Call on every rank;
    the result on every rank.

    Both sides of a pass run within a second of each other in one world. Timed apart (the
    one-process world's model pass, then an n-process world minutes later), the ratio of two pairs
    of fastest times ranged 1.04-1.59 over fifteen rounds of one day while the layouts' own steps
    did not move with it: the machine's speed drifts over minutes, and each side caught a
    different moment. The other ranks sleep rather than wait in a collective: a rank timed while
    the others waited in a gloo collective ran 120-128 ms per micro-batch where a one-process
    world ran 92-103 ms.

    The together side spans the first rank's start to the last rank's end on the node's one
    monotonic clock. Taken as the longest of each rank's own duration after a barrier, one pass
    came out at 0.277 s per micro-batch where the other 23 of its run took 0.42-0.51 s (4
    processes on 2 cores running at 2.9 cores' worth): ranks that leave a barrier apart can run
    their chunks partly one after another. The call count fills `seconds` × world size together, so that
    rank 0's chunk alone, up to that many times faster, still lasts about `seconds`."""
    calls = agreed_calls(None, micro_batch, seconds * dist.get_world_size())
    leader = dist.get_rank() == 0
    timed = []
    for _ in range(passes):
        dist.barrier()
        start = time.monotonic()
        for _ in range(calls):
            micro_batch()
        # MAX of (-start, end): the earliest start and the latest end.
        span = torch.tensor([-start, time.monotonic()], dtype=torch.float64)
        dist.all_reduce(span, op=dist.ReduceOp.MAX)
        together = float(span.sum())
        # Sleep well past rank 0's chunk, which runs no slower than the makespan just measured.
        nap = 1.5 * together
        dist.barrier()
        start = time.monotonic()
        if leader:
            for _ in range(calls):
                micro_batch()
        else:
            time.sleep(nap)
        alone = torch.tensor([time.monotonic() - start], dtype=torch.float64)
        # A chunk that outlasted the others' sleep is not alone: it does not count.
        if leader and float(alone) >= nap:
            alone.fill_(float("inf"))
        dist.broadcast(alone, src=0)
        timed.append((together / calls, float(alone) / calls))
    return timed


def engine_slowdowns(passes: dict[int, list[tuple[float, float]]]) -> dict[int, float]:
    """n → how much slower the model's forward + backward runs with n processes of the node at
    once (engine_slowdown_passes in an n-process world): the fastest together over the fastest
    alone, at least 1.

    This, not the GEMM rate alone, is what n processes on a CPU node cost each other: the engine's
    step is also memory-bound element-wise work, Python dispatch and the helper threads of gloo and
    DeepSpeed, which share the cores and caches as well."""
    slowdowns = {1: 1.0}
    for n, timed in sorted(passes.items()):
        together = min(t for t, _ in timed)
        alone = min(a for _, a in timed)
        if alone == float("inf"):
            raise ValueError(f"engine_slowdowns: no pass of the {n}-process world timed rank 0 alone")
        slowdowns[n] = max(1.0, together / alone)
    return slowdowns


@dataclass(frozen=True)
class ModelPass:
    """Forward + backward of one micro-batch on one process: seconds = overhead + flops / rate."""

    flops_per_s: float
    """Hardware FLOPs (timing.hardware_flops_per_token) per second of the slope."""
    overhead_s: float
    """The intercept: host time per micro-batch, whatever its size."""
    points: tuple[tuple[int, float], ...]
    """(micro-batch size, fastest seconds) measured."""


def model_pass(
    micro_batch: Callable[[int], None], flops_per_sample: float, sizes: tuple[int, ...] = (1, 2, 4, 8)
) -> ModelPass:
    """`micro_batch(b)` runs one forward and backward of b samples through the model (our DeepSpeed
    engine on one process, inside a gradient-accumulation window: no optimizer step), in chunks of
    about a training step (STEP_CHUNK_S)."""
    best = best_seconds_interleaved({b: lambda b=b: micro_batch(b) for b in sizes}, chunk_s=STEP_CHUNK_S)
    points = sorted(best.items())
    per_sample, overhead = _line(points)
    return ModelPass(flops_per_sample / per_sample, max(0.0, overhead), tuple(points))


def _line(points: list[tuple[float, float]], weights: list[float] | None = None) -> tuple[float, float]:
    """Least-squares slope and intercept of seconds over size (micro-batch size, bytes), each point
    weighted by `weights` (default equal)."""
    weighted = list(zip(weights or [1.0] * len(points), points, strict=True))
    total = sum(w for w, _ in weighted)
    mean_b = sum(w * b for w, (b, _) in weighted) / total
    mean_t = sum(w * t for w, (_, t) in weighted) / total
    slope = sum(w * (b - mean_b) * (t - mean_t) for w, (b, t) in weighted) / sum(
        w * (b - mean_b) ** 2 for w, (b, _) in weighted
    )
    return slope, mean_t - slope * mean_b


def optimizer_step_bytes_per_s(engine, micro_batch: Callable[[], None], parameters: int) -> float:
    """The real optimizer step of a one-process DeepSpeed engine (integration.engine.build_engine
    over the model, ZeRO 0, one micro-batch per step): torch AdamW tensor by tensor, gradient
    clipping and the engine's bookkeeping, in bytes of OPTIMIZER_BYTES_PER_PARAM per parameter per
    second: the bandwidth timing.py divides the step's parameters by. `micro_batch` runs one
    forward and backward (untimed) before each timed step."""
    best = float("inf")
    for i in range(8):
        micro_batch()
        start = time.perf_counter()
        engine.step()
        if i >= 1:  # the first step builds the optimizer state
            best = min(best, time.perf_counter() - start)
    return parameters * OPTIMIZER_BYTES_PER_PARAM / best


def adam_bytes_per_s(numel: int) -> float:
    """torch AdamW (what our ds_config runs, `torch_adam`) over one flat fp32 tensor, in bytes of
    OPTIMIZER_BYTES_PER_PARAM per parameter per second: the bandwidth timing.py divides by."""
    param = torch.nn.Parameter(torch.randn(numel))
    param.grad = torch.randn(numel)
    optimizer = torch.optim.AdamW([param], lr=1e-4)
    return numel * OPTIMIZER_BYTES_PER_PARAM / best_seconds(optimizer.step)


def zero_micro_batch_seconds(
    micro_batch: dict[int, Callable[[], None]], calls: int = 3, passes: int = 12
) -> dict[int, float]:
    """DeepSpeed ZeRO-2's and ZeRO-3's extra seconds per micro-batch over ZeRO-1, by stage:
    `micro_batch[stage]` runs one forward + backward of the model through an engine at that stage
    (inside a gradient accumulation window, where ZeRO-1 does not communicate, ZeRO-2
    reduce-scatters every gradient through its bucket, and ZeRO-3 also gathers every weight in
    forward and backward). All timed in turn, the same call count on every rank (the reductions
    are collectives), each chunk begun by a barrier: ZeRO-1's chunk does not communicate, so the
    ranks leave it apart, and without one the next stage's first reduction would absorb the gap.
    Call on every rank of a data-parallel world.

    Measured on the model itself, not on a toy: Megatron-Core's modules nest several deep and
    ZeRO-3 hooks every one of them; a stack of Linear layers showed half of the cost or less."""
    best = best_seconds_interleaved(micro_batch, passes=passes, calls=calls, before_chunk=dist.barrier)
    return {stage: max(0.0, seconds - best[1]) for stage, seconds in best.items() if stage != 1}


@dataclass(frozen=True)
class Collective:
    size: int
    """Ranks in the group."""
    latency_s: float
    """α of the ring model t = 2(n-1)α + 2(n-1)/n · B/β (ring_fit)."""
    bandwidth: float
    """β in bytes/s."""
    processes: int = 0
    """Processes of the node busy while it was measured (all in groups of `size`); 0: unknown."""
    points: tuple[tuple[int, float], ...] = ()
    """(bytes, exposed seconds) the fit was made from, kept so that a result file shows why α or β
    came out as it did; empty in results written before they were kept."""
    sweeps: tuple[tuple[tuple[int, float], ...], ...] = ()
    """Each sweep's (bytes, exposed seconds) where `points` are their medians (median_points);
    empty in results written before sweeps were repeated, where `points` is the one sweep."""


def exposed_all_reduce_seconds(group, nbytes: int, compute: Callable[[], object]) -> float:
    """Seconds an all-reduce of `nbytes` over `group` adds to the work before it: `compute` then the
    all-reduce, less `compute` alone (interleaved, fastest chunks, each chunk begun by a barrier of
    the group so that no rank's first all-reduce absorbs the others' drift over the chunk before;
    each side's calls per chunk from agreed_calls).

    At 256 KiB between 2 CPU processes, gloo's all-reduce took 0.61-0.85 ms back to back and added
    1.25-2.61 ms after a GEMM; with a second pair busy the same way, 1.19-1.68 against 1.68-4.17 ms
    (measured before the barriers and agreed counts,
    benchmarks/results/collective_after_compute_2026-12-01_cpu-2core.txt: the ranks reach it apart
    and wake from a blocking wait on shared cores). In a step the tensor-parallel all-reduces each
    follow a layer's GEMMs and the data-parallel ones follow the backward, so that is the cost to
    charge."""
    buffer = torch.ones(nbytes // 4)

    def compute_then_reduce() -> None:
        compute()
        dist.all_reduce(buffer, group=group)

    best = best_seconds_interleaved(
        {"alone": compute, "with": compute_then_reduce},
        passes=7,
        calls={"alone": agreed_calls(group, compute), "with": agreed_calls(group, compute_then_reduce)},
        before_chunk=lambda: dist.barrier(group=group),
    )
    return max(best["with"] - best["alone"], 1e-9)


def own_group(size: int):
    """This rank's group when the world is cut into groups of `size` consecutive ranks (every rank
    creates every group, in the same order, as torch.distributed.new_group requires)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    if world % size:
        raise ValueError(
            f"groups of {size} ranks do not tile a world of {world}; launch a multiple of {size}"
        )
    groups = [dist.new_group(list(range(first, first + size))) for first in range(0, world, size)]
    return groups[rank // size]


ALL_REDUCE_SIZES = (1 << 10, 256 << 10, 4 << 20, 16 << 20)
"""Bytes the all-reduce is timed at: latency-bound, one tensor-parallel all-reduce of the step-time
benchmark's model (256 tokens × hidden 256 × 4 bytes), and two bandwidth-bound sizes (a gradient
all-reduce is megabytes), two so that no one noisy time sets β."""


def all_reduce_alpha_beta(
    size: int, compute: Callable[[], object], sizes: tuple[int, ...] = ALL_REDUCE_SIZES, sweeps: int = 3
) -> Collective:
    """α and β of all-reduces over groups of `size` consecutive ranks, every rank of the world in one
    and all measuring at once (exposed_all_reduce_seconds at each of `sizes`), fitted by ring_fit to
    each size's median over `sweeps` sweeps of all sizes. Call on every rank; the world size a
    multiple of `size`. The result is rank 0's group's.

    With four processes on two cores one sweep's fit is a draw from a wide spread: a pair's α came
    out 2180 µs in one round against 761 and 1082 in the others (its 1 KiB and 256 KiB times 4.36
    and 6.58 ms; planner_accuracy_2026-12-01_cpu-2core_step-interval, round 3), and in the first
    run with sweeps the nine sweeps' own fits gave 602-2467 µs where the three rounds' medians
    gave 669-1556 µs (planner_accuracy_2026-12-01_cpu-2core_sweep-medians). Slow and fast
    sweeps came mixed, not in stretches, so a median of sweeps narrows the spread rather than
    removing it."""
    group = own_group(size)
    measured = []
    for _ in range(sweeps):
        sweep = []
        for nbytes in sizes:
            dist.barrier()
            sweep.append((nbytes, exposed_all_reduce_seconds(group, nbytes, compute)))
        measured.append(tuple(sweep))
    dist.barrier()
    points = median_points(measured)
    alpha, bandwidth = ring_fit(size, points)
    return Collective(
        size, alpha, bandwidth, processes=dist.get_world_size(), points=tuple(points), sweeps=tuple(measured)
    )


def median_points(sweeps: list[tuple[tuple[int, float], ...]]) -> list[tuple[int, float]]:
    """Per size, the median of the sweeps' (bytes, seconds) (the upper of the middle two for an
    even count, so that every point is one that was measured); the sweeps list the same sizes in
    the same order."""
    if not sweeps:
        raise ValueError("median_points: no sweeps to take medians of")
    sizes = [nbytes for nbytes, _ in sweeps[0]]
    if any([nbytes for nbytes, _ in sweep] != sizes for sweep in sweeps):
        raise ValueError(f"sweeps over different sizes cannot be combined: {sweeps}")
    return [
        (nbytes, sorted(sweep[i][1] for sweep in sweeps)[len(sweeps) // 2]) for i, nbytes in enumerate(sizes)
    ]


def ring_fit(size: int, seconds: list[tuple[int, float]]) -> tuple[float, float]:
    """α and β (bytes/s) of the ring model t = 2(n-1)α + 2(n-1)/n · B/β fitted to (bytes, seconds)
    of all-reduces over `size` ranks: least squares weighted by 1/t², i.e. on relative error, so
    that the latency-bound sizes set α and the bandwidth-bound ones β. From two sizes alone (the
    small one's time taken as latency, the large one's excess as bandwidth) β once came out at
    6.1 GB/s against 0.5-1.5 GB/s in the other rounds: that round's 4 MiB time was 5.05 ms against
    7.98-11.78 ms in the others (planner_accuracy_2026-12-01_cpu-2core_exposed-collectives_zero0).

    Kept physical where noise tilts the line:
    - a time of 1 µs or less is no measurement (the GEMM alone ran slower than the GEMM and the
      all-reduce) and is left out;
    - α lies between 0 (a negative intercept: the line refitted through the origin) and the
      fastest time's share;
    - at the largest size the bandwidth term is at least half the time measured there (those sizes
      are chosen bandwidth-bound, so a flatter line is noise): β at most twice what that time
      alone implies."""
    steps = 2 * (size - 1)
    measured = [(nbytes, t) for nbytes, t in seconds if t > 1e-6]
    if len(measured) < 2:
        raise ValueError(
            f"all-reduce over {size} ranks: fewer than two sizes took over 1 µs after compute ({seconds}); "
            "the machine was too busy to measure it, calibrate again"
        )
    weights = [1 / t**2 for _, t in measured]
    slope, intercept = _line(measured, weights)
    if intercept < 0:
        weighted = list(zip(weights, measured, strict=True))
        slope = sum(w * b * t for w, (b, t) in weighted) / sum(w * b * b for w, (b, _) in weighted)
        intercept = 0.0
    largest, largest_s = max(measured)
    slope = max(slope, largest_s / (2 * largest))
    alpha = min(intercept, min(t for _, t in measured)) / steps
    return alpha, steps / size / slope


@dataclass(frozen=True)
class CpuCalibration:
    gemm_flops_per_process: dict[int, float]
    """n → GEMM FLOP/s of each of n processes computing at once (n = 1: alone)."""
    model: ModelPass
    adam_bytes_per_s: float
    """torch AdamW alone over one flat buffer (for reference)."""
    collectives: tuple[Collective, ...]
    """All-reduce α and β by group size and the processes busy at the time (see `collective`)."""
    zero3_tensor_s: float = 0.0
    """DeepSpeed ZeRO-3's extra seconds per micro-batch over ZeRO-1 (zero_micro_batch_seconds)
    over the model's parameter tensors, traffic included."""
    zero3_tensors: int = 0
    zero3_gathered_bytes: float = 0.0
    """The parameter tensors and full gradient bytes of the model the ZeRO stages were measured
    on: with them the α–β traffic of the measurement (per micro-batch, timing.py: ZeRO-2 one
    reduce-scatter, ZeRO-3 that and two gathers of the weights) is taken out of zero2_tensor_s and
    zero3_tensor_s, since the time model charges that traffic itself. 0: not taken out."""
    zero2_tensor_s: float = 0.0
    """As zero3_tensor_s for ZeRO-2."""
    optimizer_step_bytes_per_s: float = 0.0
    """The engine's whole optimizer step (optimizer_step_bytes_per_s); 0: use adam_bytes_per_s."""
    engine_slowdown: dict[int, float] = dataclasses.field(default_factory=dict)
    """n → how much slower the model's forward + backward runs with n processes at once
    (engine_slowdowns); empty: judge by the GEMM rates alone."""
    cpu_count: int = 0
    """CPUs the calibrating process could run on (os.sched_getaffinity); 0: unknown."""

    def cores(self, processes: int | None = None) -> float:
        """Cores `processes` processes effectively get: computing at once, each runs 1/slowdown(n)
        as fast as one process alone, so together like n/slowdown(n) lone processes, capped at n
        and at the machine's CPUs (four processes on two CPUs once measured a slowdown of 1.97, 2.03
        cores: noise in the timing, not a third core). The slowdown is the model's own
        (engine_slowdown) where measured, else the GEMMs' (rate(1)/rate(n)). The nearest measured n
        at or above `processes`; None: the largest."""
        slowdowns = self.engine_slowdown or {
            n: self.gemm_flops_per_process[1] / rate for n, rate in self.gemm_flops_per_process.items()
        }
        n = min((k for k in slowdowns if processes is not None and k >= processes), default=max(slowdowns))
        return min(float(n), n / slowdowns[n], float(self.cpu_count or n))

    def settings(self, base: PlannerSettings | None = None) -> PlannerSettings:
        """compute_efficiency: the model's rate over the GEMM peak."""
        base = base or PlannerSettings()
        efficiency = self.model.flops_per_s / self.gemm_flops_per_process[1]
        return dataclasses.replace(base, compute_efficiency=efficiency)

    def cluster(
        self,
        base: ClusterConfig,
        dtype: str,
        num_layers: int,
        processes: int | None = None,
        link_size: int = 2,
    ) -> ClusterConfig:
        """`base` (e.g. local_cpu) with the measured facts, for `processes` processes on the node
        (gpus_per_node; cores_per_node as measured at that count). The link's α and β are those of
        the all-reduce over `link_size` ranks (the tensor and data groups of 2-4 CPU processes)."""
        link = self.collective(link_size, processes)
        zero_link = self.collective(2, 2)  # the conditions the ZeRO stages were measured under
        sized = {"num_nodes": 1, "gpus_per_node": processes} if processes else {}
        return dataclasses.replace(
            base,
            **sized,
            **{f"peak_tflops_{dtype}": self.gemm_flops_per_process[1] / 1e12},
            gpu_memory_bandwidth_gb_per_s=(self.optimizer_step_bytes_per_s or self.adam_bytes_per_s) / 1e9,
            intra_node_bandwidth_gb_per_s=link.bandwidth / 1e9,
            intra_node_latency_us=link.latency_s * 1e6,
            host_overhead_per_layer_us=self.model.overhead_s / num_layers * 1e6,
            cores_per_node=self.cores(processes),
            zero2_tensor_overhead_us=self.zero_overhead_s(2, zero_link) * 1e6,
            zero3_tensor_overhead_us=self.zero_overhead_s(3, zero_link) * 1e6,
        )

    def collective(self, size: int, processes: int | None = None) -> Collective:
        """The all-reduce over `size` ranks measured with the fewest processes busy at or above
        `processes` (the most where none is, or for None)."""
        sized = [c for c in self.collectives if c.size == size]
        if not sized:
            raise ValueError(f"no all-reduce over {size} ranks was measured (have: {self.collectives})")
        at_least = [c for c in sized if processes is not None and c.processes >= processes]
        if at_least:
            return min(at_least, key=lambda c: c.processes)
        return max(sized, key=lambda c: c.processes)

    def zero_overhead_s(self, stage: int, link: Collective) -> float:
        """ZeRO-`stage`'s per-tensor cost beyond the traffic timing.py charges on `link`."""
        measured = {2: self.zero2_tensor_s, 3: self.zero3_tensor_s}[stage]
        if not self.zero3_tensors:
            return measured
        wire = Link("calibration", link.bandwidth, link.latency_s)
        traffic = {2: 1, 3: 3}[stage] * all_gather(self.zero3_gathered_bytes, link.size, wire)
        return max(0.0, measured - traffic / self.zero3_tensors)

    def as_dict(self) -> dict:
        measured = self.engine_slowdown or self.gemm_flops_per_process
        return {**dataclasses.asdict(self), "cores": {n: self.cores(n) for n in measured}}

    @staticmethod
    def from_dict(data: dict) -> CpuCalibration:
        return CpuCalibration(
            gemm_flops_per_process={int(k): v for k, v in data["gemm_flops_per_process"].items()},
            model=ModelPass(
                data["model"]["flops_per_s"],
                data["model"]["overhead_s"],
                tuple(tuple(p) for p in data["model"]["points"]),
            ),
            adam_bytes_per_s=data["adam_bytes_per_s"],
            collectives=_collectives(data["collectives"]),
            zero3_tensor_s=data.get("zero3_tensor_s", 0.0),
            zero3_tensors=data.get("zero3_tensors", 0),
            zero3_gathered_bytes=data.get("zero3_gathered_bytes", 0.0),
            zero2_tensor_s=data.get("zero2_tensor_s", 0.0),
            optimizer_step_bytes_per_s=data.get("optimizer_step_bytes_per_s", 0.0),
            engine_slowdown={int(k): v for k, v in data.get("engine_slowdown", {}).items()},
            cpu_count=data.get("cpu_count", 0),
        )


def _collectives(data: list | dict) -> tuple[Collective, ...]:
    """A list of Collective fields; results written before 44f2351 keyed them by group size, with
    the processes busy unknown (0)."""
    if isinstance(data, dict):
        data = list(data.values())
    return tuple(
        Collective(
            **{
                **c,
                "points": tuple(map(tuple, c.get("points", ()))),
                "sweeps": tuple(tuple(map(tuple, sweep)) for sweep in c.get("sweeps", ())),
            }
        )
        for c in data
    )


def calibrate_world(
    micro_batch_size: int, seq_length: int, hidden: int, ffn: int, gemm_rates: bool = True
) -> dict | None:
    """The part that needs several processes, run on every rank of a CPU world (2 or 4
    processes): GEMM rates with 1, 2 and all ranks at once (when `gemm_rates`), and
    all-reduce α/β over groups of 2 and of all ranks with every rank busy (all_reduce_alpha_beta,
    each all-reduce after one GEMM of the model's MLP shape). The result on rank 0, None elsewhere."""
    rank, world = dist.get_rank(), dist.get_world_size()
    tokens = micro_batch_size * seq_length
    rates = {}
    together = sorted({1, 2, world}) if gemm_rates else []
    for n in together:
        group = dist.new_group(list(range(n)))
        dist.barrier()
        if rank < n:
            rates[n] = concurrent_gemm_flops(group, tokens, hidden, ffn)
        dist.barrier()
    a, b = torch.randn(tokens, hidden), torch.randn(hidden, ffn)
    collectives = [all_reduce_alpha_beta(n, lambda: a @ b) for n in sorted({2, world})]
    if rank != 0:
        return None
    return {
        **({"gemm_flops_per_process": rates} if gemm_rates else {}),
        "collectives": [dataclasses.asdict(c) for c in collectives],
    }
