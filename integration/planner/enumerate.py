"""Every candidate layout for a model on a cluster at a global batch, checked by the same rules a
training launch uses (integration.validate), then scored by the memory and time models."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

from integration.config.schema import OffloadConfig, TrainConfig
from integration.errors import ConfigError
from integration.model_size import flops_per_token
from integration.plan import model_vocab_size
from integration.planner.memory import (
    GIB,
    OFFLOAD,
    RECOMPUTE,
    ActivationShape,
    StageMemory,
    ZeroBuckets,
    describe_components,
    offload_kind,
    stage_memory,
    stage_parameters,
)
from integration.planner.settings import PlannerSettings
from integration.planner.timing import StepTime, TimeInputs, peak_flops, step_time
from integration.planner.tp2d import grid_side, parameters_2d, stage_memory_2d
from integration.validate import validate


@dataclass(frozen=True)
class Candidate:
    tp: int
    pp: int
    dp: int
    zero_stage: int
    micro_batch_size: int
    recompute: str
    """none, selective or full (model.recompute_granularity)."""
    offload: str
    """none, optimizer (ZeRO-Offload) or params (optimizer and weights, ZeRO-3 only)."""
    sequence_parallel: bool
    global_batch_size: int
    tensor_parallel_2d: bool = False
    """The tp ranks form a √tp × √tp grid (Optimus/SUMMA, integration/tp2d) instead of Megatron's 1D."""

    @property
    def micro_batches(self) -> int:
        """Gradient-accumulation steps = pipeline micro-batches per step."""
        return max(1, self.global_batch_size // (self.micro_batch_size * self.dp))

    @property
    def tensor_label(self) -> str:
        """tp as the table shows it: the size, or the grid (2x2) for 2D."""
        if self.tensor_parallel_2d:
            q = math.isqrt(self.tp)
            return f"{q}x{q}"
        return str(self.tp)

    def describe(self) -> str:
        sp = "+sp" if self.sequence_parallel else ""
        return (
            f"tp{self.tensor_label}{sp} pp{self.pp} dp{self.dp} z{self.zero_stage} mbs{self.micro_batch_size} "
            f"recompute={self.recompute} offload={self.offload}"
        )


@dataclass
class PlannedLayout:
    candidate: Candidate
    reasons: list[str] = field(default_factory=list)
    """Why the layout is rejected; empty when it is valid and fits."""
    warnings: list[str] = field(default_factory=list)
    memory: StageMemory | None = None
    """The pipeline stage with the largest footprint."""
    memory_limit: float = 0.0
    reserved: float = 0.0
    time: StepTime | None = None
    tokens_per_s: float = 0.0
    mfu: float = 0.0

    @property
    def fits(self) -> bool:
        return not self.reasons

    @property
    def memory_total(self) -> float:
        return (self.memory.total if self.memory else 0.0) + self.reserved

    @property
    def headroom(self) -> float:
        return self.memory_limit - self.memory_total


def candidates(
    world: int, global_batch_size: int, settings: PlannerSettings, offloads: tuple[str, ...] = OFFLOAD
) -> Iterator[Candidate]:
    micro_sizes = [m for m in (1, 2, 4, 8, 16, 32, 64) if m <= settings.max_micro_batch_size]
    divisors = [d for d in range(1, world + 1) if world % d == 0]
    for tp in divisors:
        for pp in [d for d in divisors if (world // tp) % d == 0]:
            dp = world // (tp * pp)
            for zero in (0, 1, 2, 3):
                for micro in micro_sizes:
                    for recompute in RECOMPUTE:
                        for offload in offloads:
                            for sp in (False, True) if tp > 1 and settings.sequence_parallel else (False,):
                                yield Candidate(
                                    tp, pp, dp, zero, micro, recompute, offload, sp, global_batch_size
                                )
    if settings.tensor_parallel_2d:
        yield from candidates_2d(world, global_batch_size, micro_sizes)


def candidates_2d(world: int, global_batch_size: int, micro_sizes: list[int]) -> Iterator[Candidate]:
    """2D layouts: tp = q² (q ≥ 2) dividing the world, without pipeline stages, sequence parallelism
    or recompute (integration.validate refuses those with 2D, so they are not enumerated); the other
    2D rules (micro-batch split over the grid rows, the model's shapes and options) are left to
    validate, which rejects with the reason."""
    for q in range(2, math.isqrt(world) + 1):
        tp = q * q
        if world % tp:
            continue
        for zero in (0, 1, 2, 3):
            for micro in micro_sizes:
                for offload in OFFLOAD:
                    yield Candidate(
                        tp, 1, world // tp, zero, micro, "none", offload, False, global_batch_size, True
                    )


def _config_for(base: TrainConfig, c: Candidate) -> TrainConfig:
    parallel = dataclasses.replace(
        base.parallel,
        name=f"plan_tp{c.tensor_label}_pp{c.pp}",
        tensor_model_parallel_size=c.tp,
        tensor_parallel_2d=c.tensor_parallel_2d,
        pipeline_model_parallel_size=c.pp,
        sequence_parallel=c.sequence_parallel,
        zero_stage=c.zero_stage,
        micro_batch_size=c.micro_batch_size,
        partition_method="uniform",
    )
    model = dataclasses.replace(
        base.model, recompute_granularity=None if c.recompute == "none" else c.recompute
    )
    # Forced: a layout over the memory limit or with tp wider than a node is ranked here, not refused.
    return dataclasses.replace(base, parallel=parallel, model=model, force_layout=True)


def requested_offloads(offload: OffloadConfig) -> tuple[str, ...]:
    """The offload kinds to plan: every kind under offload=none (the planner chooses), else the one
    the offload group sets (NVMe is planned as host offload: same device memory, the states' host
    copy is an upper bound)."""
    kind = offload_kind(offload.optimizer.device, offload.param.device)
    return OFFLOAD if kind == "none" else (kind,)


def _offload_problems(c: Candidate) -> list[str]:
    # DeepSpeed: offload_optimizer needs ZeRO 1-3; offload_param exists only in ZeRO-3.
    if c.offload == "optimizer" and c.zero_stage == 0:
        return ["offload: optimizer offload needs ZeRO 1, 2 or 3; set parallel.zero_stage>=1"]
    if c.offload == "params" and c.zero_stage != 3:
        return [f"offload: parameter offload needs ZeRO 3, not {c.zero_stage}; set parallel.zero_stage=3"]
    return []


def _split(message: str) -> list[str]:
    """validate's ConfigError message back into its problems ("N config problems:" + "  - " lines)."""
    head, *rest = message.splitlines()
    if head.endswith("config problems:") and rest:
        return [line.removeprefix("  - ") for line in rest]
    return [message]


def plan_layouts(config: TrainConfig, settings: PlannerSettings | None = None) -> list[PlannedLayout]:
    """Every candidate, fitting ones first by predicted tokens/s, then the rejected ones (those
    that only miss memory first, closest to fitting first). Raises ConfigError when the cluster
    lacks a fact the models need."""
    settings = settings or PlannerSettings()
    cluster, model, dtype = config.cluster, config.model, config.precision.dtype
    world = cluster.num_nodes * cluster.gpus_per_node
    vocab = model_vocab_size(model, config.data.tokenizer, config.data.vocab_size)
    peak = peak_flops(cluster, dtype)  # refuse early, with the cluster key to set
    if not cluster.gpu_memory_gib:
        raise ConfigError(
            f"cluster.gpu_memory_gib: not set for cluster {cluster.name!r}; set it to the memory of one device"
        )
    limit = cluster.gpu_memory_gib * GIB
    reserved = settings.reserved_gib * GIB
    on_gpu = cluster.device == "cuda"
    tokens_per_step = config.parallel.global_batch_size * model.seq_length
    model_flops = flops_per_token(model, vocab) * tokens_per_step
    plans = []
    offloads = requested_offloads(config.offload)
    buckets = ZeroBuckets.from_comm(config.comm)
    for c in candidates(world, config.parallel.global_batch_size, settings, offloads):
        plan = PlannedLayout(c, memory_limit=limit, reserved=reserved)
        plans.append(plan)
        try:
            verdict = validate(
                _config_for(config, c),
                world,
                cuda_available=on_gpu,
                planned=True,
                fused_norms_available=on_gpu,
            )
            plan.warnings = [
                w
                for w in verdict.warnings
                if not w.startswith(("pipeline: bubble", "cluster.gpu_memory_gib"))
            ]
        except ConfigError as err:
            plan.reasons += _split(str(err))
        plan.reasons += _offload_problems(c)
        if plan.reasons:
            continue
        shape = ActivationShape(
            c.micro_batch_size,
            c.tp,
            c.sequence_parallel,
            c.recompute,
            settings.flash_attention,
            dtype,
            torch_norms=not on_gpu,
        )
        stages = sorted({0, c.pp - 1})
        per_stage = [
            stage_memory(
                model,
                vocab,
                c.tp,
                c.pp,
                c.dp,
                s,
                c.zero_stage,
                c.offload,
                c.micro_batches,
                shape,
                buckets,
                not on_gpu,
            )
            for s in stages
        ]
        plan.memory = max(per_stage, key=lambda m: m.total)
        stage_params = max(
            sum(t.numel for t in stage_parameters(model, vocab, c.tp, c.pp, s)) for s in stages
        )
        if c.tensor_parallel_2d:  # other tensors per rank, other activations (tp2d.py)
            tensors = parameters_2d(model, vocab, grid_side(c.tp))
            stage_params = sum(t.numel for t in tensors)
            plan.memory = stage_memory_2d(
                model,
                vocab,
                c.tp,
                c.dp,
                c.zero_stage,
                c.offload,
                c.micro_batch_size,
                settings.flash_attention,
                dtype,
                buckets,
                not on_gpu,
            )
        plan.time = step_time(
            model,
            vocab,
            cluster,
            TimeInputs(
                c.tp,
                c.pp,
                c.dp,
                c.micro_batch_size,
                c.micro_batches,
                c.zero_stage,
                c.recompute,
                c.offload,
                c.sequence_parallel,
                dtype,
                stage_params,
                c.tensor_parallel_2d,
            ),
            settings.compute_efficiency,
            settings.cpu_adam_params_per_s,
        )
        plan.tokens_per_s = tokens_per_step / plan.time.total
        plan.mfu = model_flops / (plan.time.total * world * peak)
        if plan.memory_total > limit:
            plan.reasons.append(
                f"memory: needs {plan.memory_total / GIB:.1f} GiB per GPU on stage {plan.memory.stage} "
                f"({describe_components(plan.memory, reserved)}) > cluster.gpu_memory_gib "
                f"{cluster.gpu_memory_gib:g}"
            )
        host_need = plan.memory.states.host * cluster.gpus_per_node
        if host_need and cluster.host_memory_gib and host_need > cluster.host_memory_gib * GIB:
            plan.reasons.append(
                f"host memory: offloaded states need {host_need / GIB:.0f} GiB per node > "
                f"cluster.host_memory_gib {cluster.host_memory_gib:g}"
            )
    return sorted(plans, key=_rank_key)


def _rank_key(plan: PlannedLayout) -> tuple:
    c = plan.candidate
    # Ties (e.g. identical predicted times) go to the simpler layout: less model parallelism,
    # lower ZeRO stage, no offload, no recompute.
    simpler = (
        c.tp,
        c.tensor_parallel_2d,
        c.pp,
        c.zero_stage,
        OFFLOAD.index(c.offload),
        RECOMPUTE.index(c.recompute),
        -c.micro_batch_size,
    )
    if plan.fits:
        return (0, -plan.tokens_per_s, simpler)
    if plan.memory is not None:  # valid, but over a memory limit
        return (1, plan.memory_total, simpler)
    return (2, 0.0, simpler)
