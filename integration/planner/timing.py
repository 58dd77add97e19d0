"""Step time of a layout: compute at a calibrated fraction of peak, the pipeline bubble, and
communication under an α–β model on the link tier each group actually uses.

Collective costs are the ring algorithms' (Thakur, Rabenseifner & Gropp 2005, "Optimization of
Collective Communication Operations in MPICH"; what NCCL's ring does): for n ranks and B bytes on
links of latency α and bandwidth β,
    all-reduce                  2(n-1)·α + 2(n-1)/n · B/β
    reduce-scatter, all-gather   (n-1)·α +  (n-1)/n · B/β
    point to point                    α +           B/β
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from integration.config.schema import ClusterConfig, ModelConfig
from integration.errors import ConfigError
from integration.layout import Layout
from integration.model_size import flops_per_token
from integration.planner.memory import stage_parameters
from integration.planner.tensor_comm import grid_groups, seconds, tensor_parallel_collectives

OPTIMIZER_BYTES_PER_PARAM = 32
"""Adam step device-memory traffic per parameter: read 16-bit weight and gradient, fp32 master and
two moments, write them back (memory bound, so time = bytes / HBM bandwidth)."""


@dataclass(frozen=True)
class Link:
    name: str
    bandwidth: float
    """Bytes per second available to one GPU's traffic."""
    latency: float
    """Seconds per message step (α)."""


def peak_flops(cluster: ClusterConfig, dtype: str) -> float:
    """Dense peak FLOP/s per device for the training precision."""
    peaks = {
        "bf16": ("peak_tflops_bf16", cluster.peak_tflops_bf16),
        "fp16": ("peak_tflops_fp16", cluster.peak_tflops_fp16 or cluster.peak_tflops_bf16),
        "fp32": ("peak_tflops_fp32", cluster.peak_tflops_fp32),
    }
    key, value = peaks[dtype]
    if not value:
        raise ConfigError(
            f"cluster.{key}: not set for cluster {cluster.name!r}, so step times cannot be predicted; "
            f"set cluster.{key}=<dense TFLOP/s per device> or pick a GPU preset (e.g. cluster=h100_8x1)"
        )
    return value * 1e12


def intra_node_link(cluster: ClusterConfig) -> Link:
    if not cluster.intra_node_bandwidth_gb_per_s:
        raise ConfigError(
            f"cluster.intra_node_bandwidth_gb_per_s: not set for cluster {cluster.name!r}, which has "
            f"{cluster.gpus_per_node} devices per node; set it (e.g. 300 for NVLink 3, 450 for NVLink 4)"
        )
    return Link(
        "intra-node", cluster.intra_node_bandwidth_gb_per_s * 1e9, cluster.intra_node_latency_us * 1e-6
    )


def inter_node_link(cluster: ClusterConfig) -> Link:
    """Every GPU of a node talks across nodes at once in these collectives, so each gets an equal
    share of the node's adapters."""
    if not cluster.inter_node_bandwidth_gbit_per_s:
        raise ConfigError(
            f"cluster.inter_node_bandwidth_gbit_per_s: not set for cluster {cluster.name!r} with "
            f"{cluster.num_nodes} nodes; set it (Gbit/s per node, e.g. 400 for 4×100 Gb/s EFA)"
        )
    per_gpu = cluster.inter_node_bandwidth_gbit_per_s * 1e9 / 8 / cluster.gpus_per_node
    return Link("inter-node", per_gpu, cluster.inter_node_latency_us * 1e-6)


def group_link(groups: list[list[int]], cluster: ClusterConfig) -> Link:
    """The slowest link a collective over these rank groups crosses: inter-node as soon as one
    group has ranks on two nodes (ranks are numbered node by node, gpus_per_node to a node)."""
    per_node = cluster.gpus_per_node
    if all(len({rank // per_node for rank in group}) == 1 for group in groups):
        return intra_node_link(cluster)
    return inter_node_link(cluster)


def tensor_parallel_links(
    tensor_groups: list[list[int]], tensor_parallel_2d: bool, cluster: ClusterConfig
) -> dict[str, Link]:
    """The link each tensor-parallel collective crosses, by tensor_comm group name. A 2D grid's rows
    are q adjacent ranks and its columns stride q, so a grid wider than a node keeps its rows (and
    their traffic) inside one node while its columns cross nodes."""
    links = {"tensor": group_link(tensor_groups, cluster)}
    if tensor_parallel_2d:
        rows, columns = grid_groups(tensor_groups, math.isqrt(len(tensor_groups[0])))
        links.update(row=group_link(rows, cluster), column=group_link(columns, cluster))
    return links


def neighbour_pairs(groups: list[list[int]]) -> list[list[int]]:
    """Adjacent pipeline stages: the pairs that exchange activations."""
    return [[g[i], g[i + 1]] for g in groups for i in range(len(g) - 1)]


def all_reduce(nbytes: float, n: int, link: Link) -> float:
    if n == 1:
        return 0.0
    return 2 * (n - 1) * link.latency + 2 * (n - 1) / n * nbytes / link.bandwidth


def all_gather(nbytes: float, n: int, link: Link) -> float:
    """Also reduce-scatter: the same cost. `nbytes` is the full (gathered) size."""
    if n == 1:
        return 0.0
    return (n - 1) * link.latency + (n - 1) / n * nbytes / link.bandwidth


def point_to_point(nbytes: float, link: Link) -> float:
    return link.latency + nbytes / link.bandwidth


def shared_core_slowdown(cluster: ClusterConfig) -> float:
    """A CPU node running more processes (cluster.gpus_per_node) than it has cores
    (cluster.cores_per_node): each process computes at cores/processes of its speed. 1 on GPUs."""
    if not cluster.cores_per_node:
        return 1.0
    return max(1.0, cluster.gpus_per_node / cluster.cores_per_node)


def hardware_flops_per_token(model: ModelConfig, vocab: int, recompute: str) -> float:
    """Training FLOPs per token including recomputation. Model FLOPs are Megatron's formula
    (integration.model_size.flops_per_token, Narayanan et al. 2021 appendix: 3 × forward); full
    recompute runs every layer's forward twice (4 × forward for the layers, their eq. with 96
    instead of 72); selective recompute reruns only the attention-score matmuls, 2·2·s·h per token
    per layer (Korthikanti et al. 2022, sec. 5)."""
    total = flops_per_token(model, vocab)
    logits = 3 * 2 * model.hidden_size * vocab
    if recompute == "full":
        return total + (total - logits) / 3
    if recompute == "selective":
        return total + model.num_layers * 2 * 2 * model.seq_length * model.hidden_size
    return total


@dataclass(frozen=True)
class StepTime:
    compute: float
    """Pipeline schedule of compute, tensor-parallel and stage-to-stage traffic, bubble included."""
    bubble_fraction: float
    """(p-1)/m: idle share of the pipeline schedule relative to its busy time."""
    tensor_parallel: float
    pipeline: float
    data_parallel: float
    """Exposed gradient/parameter traffic over data parallel (ZeRO)."""
    optimizer: float
    offload: float

    @property
    def total(self) -> float:
        return self.compute + self.data_parallel + self.optimizer + self.offload


@dataclass(frozen=True)
class TimeInputs:
    tp: int
    pp: int
    dp: int
    micro_batch_size: int
    micro_batches: int
    zero_stage: int
    recompute: str
    offload: str
    sequence_parallel: bool
    dtype: str
    stage_params: int
    """Parameters of the largest pipeline stage on one tensor rank."""
    tensor_parallel_2d: bool = False
    """2D tensor parallelism (Optimus/SUMMA) on a √tp × √tp grid instead of Megatron's 1D."""


def step_time(
    model: ModelConfig,
    vocab: int,
    cluster: ClusterConfig,
    x: TimeInputs,
    efficiency: float,
    cpu_adam_rate: float,
) -> StepTime:
    """Seconds per optimizer step on every GPU (they proceed in lockstep)."""
    e = 2 if x.dtype in ("bf16", "fp16") else 4
    s, b, h = model.seq_length, x.micro_batch_size, model.hidden_size
    m, layers = x.micro_batches, model.num_layers // x.pp
    peak = peak_flops(cluster, x.dtype) * efficiency
    slowdown = shared_core_slowdown(cluster)

    # One micro-batch on one stage: its share of the FLOPs (layers split evenly over pp, every
    # GEMM split over tp), and on a CPU the host time of its layers' ops, which tp does not split.
    compute_micro = hardware_flops_per_token(model, vocab, x.recompute) * s * b / (x.tp * x.pp) / peak
    passes = 4 / 3 if x.recompute == "full" else 1.0  # full recompute reruns every layer's forward
    host_micro = cluster.host_overhead_per_layer_us * 1e-6 * layers * passes
    compute_micro = (compute_micro + host_micro) * slowdown
    # Tensor parallelism: the collectives each layer (and the embedding and logits around them)
    # issues per micro-batch, 1D or 2D, listed call by call in tensor_comm.py.
    # Megatron-Core's rank order (layout.py): tensor ranks adjacent, then data, then pipeline.
    layout = Layout(x.tp * x.pp * x.dp, x.tp, x.pp, x.dp, b, b * m * x.dp, m)
    tp_micro = 0.0
    if x.tp > 1:
        links = tensor_parallel_links(layout.tensor_groups(), x.tensor_parallel_2d, cluster)
        layer, first, last = tensor_parallel_collectives(
            model, vocab, s * b, x.tp, x.dtype, x.sequence_parallel, x.recompute, x.tensor_parallel_2d
        )
        # The embedding's traffic is on the first stage, the logits' on the last; with pipeline
        # stages the slower of the two paces the schedule.
        ends = [seconds(first, links), seconds(last, links)]
        tp_micro = layers * seconds(layer, links) + (sum(ends) if x.pp == 1 else max(ends))
    # DeepSpeed's pipeline engine sends the full activation forward and its gradient back per
    # micro-batch (no scatter-gather split over tp).
    pp_micro = 0.0
    if x.pp > 1:
        pp_link = group_link(neighbour_pairs(layout.pipeline_groups()), cluster)
        pp_micro = 2 * point_to_point(s * b * h * e, pp_link)
    micro = compute_micro + tp_micro + pp_micro
    # 1F1B: m micro-batches plus (p-1) fill/drain slots (Narayanan et al. 2021, sec. 2.2).
    schedule = (m + x.pp - 1) * micro

    psi = x.stage_params
    grad_bytes = psi * e
    dp_link = group_link(layout.data_groups(), cluster) if x.dp > 1 else None
    dp_time = 0.0
    if dp_link:
        # ZeRO paper (Rajbhandari et al. 2020, sec. 7): stage 0/1 move 2Ψ per step (all-reduce, or
        # reduce-scatter + all-gather of the updated weights); DeepSpeed's stage 2 reduce-scatters
        # in every micro-batch's backward; stage 3 also all-gathers the weights for each forward
        # and backward (3Ψ per micro-batch).
        if x.zero_stage in (0, 1):
            dp_time = all_reduce(grad_bytes, x.dp, dp_link)
        elif x.zero_stage == 2:
            dp_time = (m + 1) * all_gather(grad_bytes, x.dp, dp_link)
        else:
            dp_time = 3 * m * all_gather(grad_bytes, x.dp, dp_link)
        # DeepSpeed's own work per parameter tensor (hooks, bucket copies, partition
        # bookkeeping): 0 on a GPU, where kernels hide it; measured on a CPU. Stage 2 pays its
        # reduction path every micro-batch; stage 1 walks every parameter through the same path
        # once per step, at the accumulation boundary (DeepSpeed's reduce_gradients): uncharged,
        # ZeRO-1 came out faster than ZeRO-0 (half the optimizer step) where it measured 18-28 ms
        # per step slower on 2 CPU processes. Not so for bf16 with comm.grad_accum_dtype=fp32,
        # which DeepSpeed runs on its BF16_Optimizer and an all-reduce; TimeInputs does not carry
        # that setting.
        per_tensor_us, times = {
            1: (cluster.zero2_tensor_overhead_us, 1),
            2: (cluster.zero2_tensor_overhead_us, m),
            3: (cluster.zero3_tensor_overhead_us, m),
        }.get(x.zero_stage, (0.0, 0))
        if per_tensor_us:
            tensors = len(stage_parameters(model, vocab, x.tp, x.pp, 0))
            dp_time += times * tensors * per_tensor_us * 1e-6
    # Counted as exposed: DeepSpeed's overlap_comm is off by default for stages 1/2 and stage 0
    # reduces after backward; ZeRO-3's prefetch hides part of its gathers, so this is its upper bound.

    partition = psi / x.dp if x.zero_stage >= 1 else psi
    optimizer = offload = 0.0
    if x.offload == "none":
        if not cluster.gpu_memory_bandwidth_gb_per_s:
            raise ConfigError(
                f"cluster.gpu_memory_bandwidth_gb_per_s: not set for cluster {cluster.name!r}; set it "
                "(e.g. 1555 for A100 40GB, 3350 for H100 SXM)"
            )
        optimizer = (
            partition * OPTIMIZER_BYTES_PER_PARAM / (cluster.gpu_memory_bandwidth_gb_per_s * 1e9) * slowdown
        )
    else:
        if not cluster.host_to_device_bandwidth_gb_per_s:
            raise ConfigError(
                f"cluster.host_to_device_bandwidth_gb_per_s: not set for cluster {cluster.name!r}; set "
                "it (PCIe per device, e.g. 25 for Gen4 x16) to plan ZeRO-Offload"
            )
        pcie = cluster.host_to_device_bandwidth_gb_per_s * 1e9
        # ZeRO-Offload (Ren et al. 2021, sec. 4): gradients down and updated weights up once per
        # step; the node's CPUs run Adam for all of its GPUs.
        optimizer = partition * cluster.gpus_per_node / cpu_adam_rate
        offload = 2 * partition * e / pcie
        if x.offload == "params":  # ZeRO-Infinity: the partitions come up for every gather
            offload += 2 * m * partition * e / pcie
    return StepTime(
        compute=schedule,
        bubble_fraction=(x.pp - 1) / m,
        tensor_parallel=(m + x.pp - 1) * tp_micro,
        pipeline=(m + x.pp - 1) * pp_micro,
        data_parallel=dp_time,
        optimizer=optimizer,
        offload=offload,
    )
