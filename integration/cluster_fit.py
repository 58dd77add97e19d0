"""Does the requested layout fit the cluster it is launched on? The planner's memory and time
models (integration/planner) applied to the one layout of a launch or dry run, for
integration.validate. Pure arithmetic like validate itself: no torch, the same verdict on every rank.

- Memory: on a cluster that states `gpu_memory_gib`, the layout's predicted peak per GPU (the
  fullest pipeline stage: model states, activations, ZeRO buffers and the planner's reserve) must
  fit; otherwise the refusal names the predicted GiB, the largest parts and the nearest layout with
  the same tp × pp × dp that the memory model says fits (fastest first by the time model).
- Tensor parallelism wider than a node: every tensor-parallel all-reduce crosses the inter-node
  network; the refusal gives the planner's predicted share of the step spent in that traffic.

`force_layout=true` turns both refusals into warnings. A cluster without `gpu_memory_gib`
(local_cpu) gets no memory check. The layout is the one validation derived: from the cluster's
num_nodes × gpus_per_node in a dry run, from the launcher's processes in a launch (a warning says
so when a GPU cluster's size and the launch disagree).
"""

from __future__ import annotations

from dataclasses import dataclass

from integration.config.schema import TrainConfig
from integration.errors import ConfigError
from integration.layout import Layout
from integration.model_size import padded_vocab_size
from integration.planner.memory import (
    GIB,
    ActivationShape,
    StageMemory,
    ZeroBuckets,
    describe_components,
    offload_kind,
    stage_memory,
    stage_parameters,
)
from integration.planner.settings import PlannerSettings
from integration.planner.timing import StepTime, TimeInputs, step_time
from integration.tokenizer import tokenizer_vocab_size

FORCE = "force_layout=true"


@dataclass(frozen=True)
class LayoutChoice:
    """What of a layout the memory model depends on beyond tp × pp × dp."""

    zero_stage: int
    micro_batch_size: int
    recompute: str
    """none, selective or full."""

    def overrides(self, requested: LayoutChoice) -> str:
        """The overrides that turn `requested` into this choice."""
        parts = []
        if self.zero_stage != requested.zero_stage:
            parts.append(f"parallel.zero_stage={self.zero_stage}")
        if self.micro_batch_size != requested.micro_batch_size:
            parts.append(f"parallel.micro_batch_size={self.micro_batch_size}")
        if self.recompute != requested.recompute:
            recompute = "null" if self.recompute == "none" else self.recompute
            parts.append(f"model.recompute_granularity={recompute}")
        return " ".join(parts)


@dataclass(frozen=True)
class Fit:
    memory: StageMemory
    """The fullest pipeline stage."""
    total: float
    """Its predicted peak bytes per GPU, the planner's reserve included."""
    limit: float


def check_cluster_fit(
    cfg: TrainConfig, layout: Layout, planned: bool, fused_kernels_available: bool
) -> tuple[list[str], list[str]]:
    """(errors, warnings) for this layout on cfg.cluster. The attention is taken to keep no score
    matrices on CPU (torch SDPA), in a dry run (`planned`: Transformer Engine on the cluster
    assumed, as launch/plan.py does) and where Transformer Engine or Apex is importable
    (`fused_kernels_available`); otherwise Megatron's unfused attention keeps them."""
    flash_attention = cfg.cluster.device == "cpu" or planned or fused_kernels_available
    errors: list[str] = []
    warnings: list[str] = []
    cluster = cfg.cluster
    devices = cluster.num_nodes * cluster.gpus_per_node
    if not planned and cluster.gpu_memory_gib and layout.world_size != devices:
        warnings.append(
            f"cluster: {cluster.name!r} has {cluster.num_nodes} × {cluster.gpus_per_node} = {devices} devices "
            f"but the launcher started {layout.world_size} processes; the layout and its memory check use "
            f"{layout.world_size} (set cluster.num_nodes / cluster.gpus_per_node to the machines used)"
        )
    force = cfg.force_layout
    for found in (
        _memory_problem(cfg, layout, flash_attention, with_fix=not force),
        _tensor_parallel_problem(cfg, layout),
    ):
        if found is None:
            continue
        problem, fix = found
        if force:
            warnings.append(f"{problem}; launching anyway ({FORCE})")
        else:
            errors.append(f"{problem}; {fix}")
    return errors, warnings


def predicted_fit(cfg: TrainConfig, layout: Layout, choice: LayoutChoice, flash_attention: bool) -> Fit:
    """The planner's memory model for this layout, with the requested offload group, on its
    fullest pipeline stage (the first or the last)."""
    stages = predicted_stages(cfg, layout, choice, flash_attention, sorted({0, layout.pipeline_parallel - 1}))
    fullest = max(stages, key=lambda m: m.total)
    reserved = PlannerSettings().reserved_gib * GIB
    limit = (cfg.cluster.gpu_memory_gib or 0) * GIB
    return Fit(fullest, fullest.total + reserved, limit)


def predicted_stages(
    cfg: TrainConfig, layout: Layout, choice: LayoutChoice, flash_attention: bool, stages: list[int]
) -> list[StageMemory]:
    """The planner's memory model for these pipeline stages of the layout, without the reserve;
    2D tensor parallel layouts (one stage) by the 2D model."""
    model, par, dtype = cfg.model, cfg.parallel, cfg.precision.dtype
    on_cpu = cfg.cluster.device == "cpu"
    vocab = _vocab(cfg)
    tp, pp, dp = layout.tensor_parallel, layout.pipeline_parallel, layout.data_parallel
    micro_batches = cfg.parallel.global_batch_size // (choice.micro_batch_size * dp)
    shape = ActivationShape(
        choice.micro_batch_size,
        tp,
        par.sequence_parallel,
        choice.recompute,
        flash_attention,
        dtype,
        torch_norms=on_cpu,
    )
    offload = offload_kind(cfg.offload.optimizer.device, cfg.offload.param.device)
    buckets = ZeroBuckets.from_comm(cfg.comm)
    if par.tensor_parallel_2d:
        from integration.planner.tp2d import stage_memory_2d

        return [
            stage_memory_2d(
                model,
                vocab,
                tp,
                dp,
                choice.zero_stage,
                offload,
                choice.micro_batch_size,
                flash_attention,
                dtype,
                buckets,
                on_cpu,
            )
        ]
    return [
        stage_memory(
            model, vocab, tp, pp, dp, stage, choice.zero_stage, offload, micro_batches, shape, buckets, on_cpu
        )
        for stage in stages
    ]


def _vocab(cfg: TrainConfig) -> int:
    vocab = cfg.model.vocab_size or tokenizer_vocab_size(cfg.data.tokenizer, cfg.data.vocab_size)
    return padded_vocab_size(vocab, cfg.model.make_vocab_size_divisible_by)


def requested_choice(cfg: TrainConfig) -> LayoutChoice:
    return LayoutChoice(
        cfg.parallel.zero_stage, cfg.parallel.micro_batch_size, cfg.model.recompute_granularity or "none"
    )


def _memory_problem(
    cfg: TrainConfig, layout: Layout, flash_attention: bool, with_fix: bool
) -> tuple[str, str] | None:
    """(problem, fix), or None when the layout fits or the cluster states no device memory. The
    search for a layout that fits is skipped unless `with_fix`."""
    cluster = cfg.cluster
    if not cluster.gpu_memory_gib:
        return None
    requested = requested_choice(cfg)
    fit = predicted_fit(cfg, layout, requested, flash_attention)
    if fit.total <= fit.limit:
        return None
    reserved = PlannerSettings().reserved_gib * GIB
    what = (
        f"tp {layout.tensor_parallel} × pp {layout.pipeline_parallel} × dp {layout.data_parallel}, "
        f"ZeRO {requested.zero_stage}, micro-batch {requested.micro_batch_size}, recompute "
        f"{requested.recompute}"
    )
    problem = (
        f"cluster.gpu_memory_gib: {cluster.gpu_memory_gib:g} GiB per GPU on {cluster.name!r} is too small "
        f"for {what}: the planner predicts {fit.total / GIB:.1f} GiB on pipeline stage "
        f"{fit.memory.stage} ({describe_components(fit.memory, reserved, top=3)})"
    )
    plan = f"python launch/plan.py model={cfg.model.name} cluster={cluster.name}"
    if not with_fix:
        return problem, ""
    fits = _fitting_alternative(cfg, layout, flash_attention)
    if fits is not None:
        choice, alternative = fits
        fix = f"{choice.overrides(requested)} fits ({alternative.total / GIB:.1f} GiB); `{plan}` ranks every layout"
    else:
        fix = (
            f"nothing fits at tp {layout.tensor_parallel} × pp {layout.pipeline_parallel} × dp "
            f"{layout.data_parallel}; `{plan}` ranks the layouts that do"
        )
    return problem, f"{fix}; or set {FORCE} to launch anyway"


def _fitting_alternative(
    cfg: TrainConfig, layout: Layout, flash_attention: bool
) -> tuple[LayoutChoice, Fit] | None:
    """Same processes (tp, pp, dp), another ZeRO stage, micro-batch or recompute: the fitting one
    the time model predicts fastest (fewest changes where the cluster lacks the timing facts)."""
    requested = requested_choice(cfg)
    stages = [s for s in range(requested.zero_stage, 4) if layout.pipeline_parallel == 1 or s <= 1]
    micro_sizes = []
    size = requested.micro_batch_size
    while size >= 1:
        micro_sizes.append(size)
        size = size // 2 if size % 2 == 0 else 0
    options = []
    for zero in stages:
        for micro in micro_sizes:
            for recompute in ("none", "selective", "full"):
                choice = LayoutChoice(zero, micro, recompute)
                fit = predicted_fit(cfg, layout, choice, flash_attention)
                if fit.total <= fit.limit and choice != requested:
                    changes = sum(
                        (
                            zero != requested.zero_stage,
                            micro != requested.micro_batch_size,
                            recompute != requested.recompute,
                        )
                    )
                    options.append((_seconds(cfg, layout, choice), changes, choice, fit))
    if not options:
        return None
    _, _, choice, fit = min(options, key=lambda o: (o[0], o[1]))
    return choice, fit


def predicted_step(
    cfg: TrainConfig,
    layout: Layout,
    choice: LayoutChoice | None = None,
    settings: PlannerSettings | None = None,
) -> StepTime | None:
    """The planner's step time for this layout on cfg.cluster (`choice`: ZeRO stage, micro-batch and
    recompute if not the config's), or None where the cluster lacks a fact the time model needs."""
    choice = choice or requested_choice(cfg)
    model, vocab = cfg.model, _vocab(cfg)
    tp, pp, dp = layout.tensor_parallel, layout.pipeline_parallel, layout.data_parallel
    stage_params = max(
        sum(t.numel for t in stage_parameters(model, vocab, tp, pp, s)) for s in sorted({0, pp - 1})
    )
    inputs = TimeInputs(
        tp,
        pp,
        dp,
        choice.micro_batch_size,
        cfg.parallel.global_batch_size // (choice.micro_batch_size * dp),
        choice.zero_stage,
        choice.recompute,
        "none",
        cfg.parallel.sequence_parallel,
        cfg.precision.dtype,
        stage_params,
    )
    settings = settings or PlannerSettings()
    try:
        return step_time(
            model, vocab, cfg.cluster, inputs, settings.compute_efficiency, settings.cpu_adam_params_per_s
        )
    except ConfigError:
        return None


def _seconds(cfg: TrainConfig, layout: Layout, choice: LayoutChoice) -> float:
    predicted = predicted_step(cfg, layout, choice)
    return predicted.total if predicted is not None else 0.0


def _tensor_parallel_problem(cfg: TrainConfig, layout: Layout) -> tuple[str, str] | None:
    """(problem, fix). Tensor ranks are adjacent (layout.py): with tp > gpus_per_node every tensor
    group spans nodes (Narayanan et al. 2021, sec. 3.3: keep tensor parallelism inside a node)."""
    cluster, tp = cfg.cluster, layout.tensor_parallel
    if cluster.num_nodes == 1 or tp <= cluster.gpus_per_node:
        return None
    message = (
        f"parallel.tensor_model_parallel_size: {tp} > cluster.gpus_per_node({cluster.gpus_per_node}), so "
        "every tensor-parallel all-reduce (4 per layer per micro-batch) crosses the inter-node network"
    )
    predicted = predicted_step(cfg, layout)
    if predicted is not None and predicted.total > 0:
        message += (
            f": the planner predicts {predicted.tensor_parallel:.3g} s of tensor-parallel traffic in a "
            f"{predicted.total:.3g} s step ({predicted.tensor_parallel / predicted.total:.0%})"
        )
    fix = (
        f"use parallel.tensor_model_parallel_size<={cluster.gpus_per_node} with more pipeline stages "
        f"(python launch/plan.py ranks the layouts) or set {FORCE}"
    )
    return message, fix
