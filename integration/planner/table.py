"""The ranked table of planned layouts, and a chosen layout as command-line overrides."""

from __future__ import annotations

from collections import Counter

from integration.config.schema import TrainConfig
from integration.planner.enumerate import PlannedLayout
from integration.planner.memory import GIB

HEADER = (
    f"{'#':>3}  {'tp':>3} {'pp':>3} {'dp':>3} {'sp':>2} {'zero':>4} {'mbs':>4} {'m':>4}  "
    f"{'recompute':<9} {'offload':<9} {'mem GiB':>7} {'free GiB':>8} {'tokens/s':>10} {'MFU':>5} "
    f"{'step s':>7} {'bubble':>6}  notes"
)


def _row(rank: int, plan: PlannedLayout) -> str:
    c, t = plan.candidate, plan.time
    notes = []
    if t is not None and t.tensor_parallel > 0.15 * t.total:
        notes.append(f"TP comm {t.tensor_parallel / t.total:.0%}")
    if t is not None and t.data_parallel > 0.15 * t.total:
        notes.append(f"DP comm {t.data_parallel / t.total:.0%}")
    if t is not None and t.offload + t.optimizer > 0.15 * t.total:
        notes.append(f"optimizer/offload {(t.offload + t.optimizer) / t.total:.0%}")
    if any(w.startswith("parallel.tensor_model_parallel_size") for w in plan.warnings):
        notes.append("tp spans nodes")
    if not plan.fits:
        notes.append(plan.reasons[0])
    return (
        f"{rank:>3}  {c.tensor_label:>3} {c.pp:>3} {c.dp:>3} {'y' if c.sequence_parallel else '-':>2} "
        f"{c.zero_stage:>4} {c.micro_batch_size:>4} {c.micro_batches:>4}  {c.recompute:<9} {c.offload:<9} "
        + (
            f"{plan.memory_total / GIB:>7.1f} {plan.headroom / GIB:>8.1f} "
            f"{plan.tokens_per_s:>10,.0f} {plan.mfu:>5.1%} {t.total:>7.3f} {t.bubble_fraction:>6.2f}"
            if t is not None and plan.memory is not None
            else f"{'-':>7} {'-':>8} {'-':>10} {'-':>5} {'-':>7} {'-':>6}"
        )
        + f"  {'; '.join(notes)}"
    )


def render_table(
    plans: list[PlannedLayout], config: TrainConfig, top: int = 10, show_rejected: int = 5
) -> str:
    cluster, model = config.cluster, config.model
    world = cluster.num_nodes * cluster.gpus_per_node
    fitting = [p for p in plans if p.fits]
    rejected = [p for p in plans if not p.fits]
    lines = [
        f"layouts for {model.name} on {cluster.name}: {cluster.num_nodes} node(s) × {cluster.gpus_per_node} "
        f"{cluster.gpu_type or cluster.device} ({cluster.gpu_memory_gib:g} GiB), global batch "
        f"{config.parallel.global_batch_size} × {model.seq_length} tokens, {config.precision.dtype}",
        f"{len(plans)} candidates: {len(fitting)} fit, {len(rejected)} rejected; world {world}",
        "",
        HEADER,
    ]
    lines += [_row(i, p) for i, p in enumerate(fitting[:top], start=1)]
    if not fitting:
        lines.append("  (no layout fits; the closest rejected ones are below)")
    if rejected and show_rejected:
        lines += ["", "rejected (closest to fitting first):", HEADER]
        lines += [_row(i, p) for i, p in enumerate(rejected[:show_rejected], start=1)]
        counts = Counter(r.split(":", 1)[0] for p in rejected for r in p.reasons[:1])
        lines += ["", "rejections by first reason: " + ", ".join(f"{k} {n}" for k, n in counts.most_common())]
    return "\n".join(lines)


# Planner offload kind -> the conf/offload group that sets it.
OFFLOAD_GROUPS = {"optimizer": "optimizer_cpu", "params": "params_cpu"}


def override_line(plan: PlannedLayout, with_offload: bool = True) -> str:
    """The layout as launch/train.py overrides (the cluster and model are the ones planned for).
    `with_offload`: add `offload=<group>` when the layout offloads (False when the offload group was
    given to the planner, so the user's command already has it)."""
    c = plan.candidate
    recompute = "null" if c.recompute == "none" else c.recompute
    name = f"tp2d_{c.tensor_label}" if c.tensor_parallel_2d else f"tp{c.tp}_pp{c.pp}"
    parts = [
        f"parallel.name={name}",
        f"parallel.tensor_model_parallel_size={c.tp}",
        f"parallel.tensor_parallel_2d={str(c.tensor_parallel_2d).lower()}",
        f"parallel.pipeline_model_parallel_size={c.pp}",
        f"parallel.sequence_parallel={str(c.sequence_parallel).lower()}",
        f"parallel.zero_stage={c.zero_stage}",
        f"parallel.micro_batch_size={c.micro_batch_size}",
        f"parallel.global_batch_size={c.global_batch_size}",
        f"model.recompute_granularity={recompute}",
    ]
    if with_offload and c.offload in OFFLOAD_GROUPS:
        parts.append(f"offload={OFFLOAD_GROUPS[c.offload]}")
    return " ".join(parts)
