"""Typed schema of every config group. Imports nothing heavy: composing and validating a config
must not pay for torch, DeepSpeed or Megatron-Core.

Each YAML file under conf/ is merged onto these dataclasses, so a typo'd key or a value of the
wrong type fails at compose time. Field names mirror the upstream APIs they feed
(Megatron-Core TransformerConfig, DeepSpeed's config JSON).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING


@dataclass
class ModelConfig:
    name: str = MISSING
    """Preset name, used in run names and W&B tags."""
    num_layers: int = MISSING
    hidden_size: int = MISSING
    num_attention_heads: int = MISSING
    num_query_groups: int | None = None
    """Key/value heads for grouped-query attention; None means one per attention head (MHA)."""
    ffn_hidden_size: int | None = None
    """MLP width; None means 4 × hidden_size."""
    seq_length: int = MISSING
    """Tokens per training sample."""
    max_position_embeddings: int | None = None
    """Size of the learned position table (or RoPE's maximum); None means seq_length."""
    vocab_size: int | None = None
    """Unpadded vocabulary; None means the data's tokenizer vocabulary."""
    make_vocab_size_divisible_by: int = 128
    """The vocabulary is padded to a multiple of this × tensor_model_parallel_size (Megatron rule)."""
    normalization: str = "LayerNorm"
    """LayerNorm or RMSNorm."""
    activation: str = "gelu"
    """gelu or swiglu."""
    position_embedding_type: str = "learned_absolute"
    """learned_absolute or rope."""
    rotary_base: int = 10000
    add_bias_linear: bool = True
    share_embeddings_and_output_weights: bool = True
    """Tie the input embedding and the output layer."""
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    init_method_std: float = 0.02
    layernorm_epsilon: float = 1e-5
    qk_layernorm: bool = False
    """Normalise queries and keys before attention (reaches TransformerConfig and the layer spec)."""
    recompute_granularity: str | None = None
    """Activation recompute: null, selective or full."""


@dataclass
class ParallelConfig:
    name: str = MISSING
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    sequence_parallel: bool = False
    """Megatron sequence parallelism inside the tensor-parallel group (needs tp > 1)."""
    tensor_parallel_2d: bool = False
    """2D tensor parallelism (Optimus/SUMMA, integration.tp2d) instead of Megatron's 1D: the
    tensor-parallel ranks form a q×q grid, tensor_model_parallel_size = q²."""
    zero_stage: int = 0
    """DeepSpeed ZeRO stage 0-3 over the data-parallel group."""
    micro_batch_size: int = 2
    """Samples per forward pass per data-parallel rank."""
    global_batch_size: int = 8
    """Samples per optimizer step over all data-parallel ranks. Data-parallel size and gradient
    accumulation are derived from it, never set."""
    partition_method: str = "uniform"
    """Pipeline stage split: uniform, parameters, or type:<regex> (DeepSpeed PipelineModule)."""
    activation_checkpoint_interval: int = 0
    """Pipeline engine: checkpoint every N transformer layers; 0 disables."""


@dataclass
class ClusterConfig:
    name: str = MISSING
    num_nodes: int = 1
    gpus_per_node: int = 1
    """Processes per node. With a launcher running, the real world size comes from it."""
    device: str = "cpu"
    """cpu or cuda."""
    backend: str = "gloo"
    """torch.distributed backend: gloo (CPU) or nccl (CUDA)."""
    gpu_type: str | None = None
    gpu_memory_gib: float | None = None
    peak_tflops_bf16: float | None = None
    """Dense bf16 peak per device, for MFU."""
    peak_tflops_fp32: float | None = None
    launcher: str = "pdsh"
    """The deepspeed runner's multi-node launcher (`deepspeed --launcher`): pdsh (ssh), slurm
    (srun), openmpi, mpich, impi or mvapich."""
    hosts: list[str] = field(default_factory=list)
    """Node names or addresses, node 0 first; launch/launch.py writes the first num_nodes of them to
    run.dir/launch/hostfile (`host slots=gpus_per_node`). Empty: cluster.hostfile, else for
    launcher slurm the nodes of the allocation launch.py runs in (SLURM_JOB_NODELIST), else this
    machine when num_nodes is 1."""
    master_addr: str | None = None
    """Address at which every node reaches node 0 for the torch.distributed rendezvous
    (`deepspeed --master_addr`); None: the first host."""
    master_port: int = 29500
    """TCP port of that rendezvous (`deepspeed --master_port`; 29500 is the runner's default)."""
    ssh_port: int | None = None
    """Port of sshd on every host (`deepspeed --ssh_port`: pdsh, the runner's ssh check and Open MPI's
    mpirun; slurm uses no ssh); None: ssh's own default (22, or ~/.ssh/config)."""
    launcher_args: str = ""
    """Extra arguments for the launcher program itself (`deepspeed --launcher_args`), e.g.
    "--partition gpu" for srun."""
    env: dict[str, str] = field(default_factory=dict)
    """Environment exported to every rank (NCCL and fabric settings)."""
    # Hardware facts the layout planner (integration/planner/) reads; None where unknown.
    peak_tflops_fp16: float | None = None
    """Dense fp16 peak per device; None means peak_tflops_bf16."""
    gpu_memory_bandwidth_gb_per_s: float | None = None
    """Device memory (HBM) bandwidth per device, GB/s (optimizer step time)."""
    intra_node_bandwidth_gb_per_s: float | None = None
    """Per device, one direction, inside a node (NVLink/NVSwitch), GB/s."""
    intra_node_latency_us: float = 5.0
    """Per-message latency (α) of a collective step inside a node, microseconds."""
    inter_node_bandwidth_gbit_per_s: float | None = None
    """Per node, all network adapters together, one direction, Gbit/s (e.g. 400 for 4×100 Gb/s EFA)."""
    inter_node_latency_us: float = 15.0
    """Per-message latency (α) of a collective step between nodes, microseconds."""
    host_memory_gib: float | None = None
    """CPU memory per node (ZeRO-Offload keeps optimizer states and parameters there)."""
    host_to_device_bandwidth_gb_per_s: float | None = None
    """PCIe bandwidth per device, one direction, GB/s (ZeRO-Offload transfers)."""
    hostfile: str | None = None
    """An existing hostfile (lines `host slots=N`) instead of cluster.hosts: its first num_nodes
    hosts, each with at least gpus_per_node slots, are used as if listed in cluster.hosts."""
    # CPU machines (device cpu), measured by integration/planner/calibrate.py; a GPU needs neither.
    host_overhead_per_layer_us: float = 0.0
    """Host (Python, dispatch) time per transformer layer per micro-batch, forward + backward, that
    does not shrink with the batch. A GPU hides it behind its kernels (0); on a CPU it is on the
    critical path."""
    cores_per_node: float | None = None
    """CPU cores the node's processes share; with more processes than cores each computes at
    cores/processes of its speed. None: every process has its own device."""
    zero2_tensor_overhead_us: float = 0.0
    """DeepSpeed ZeRO-2 host time per parameter tensor per micro-batch (gradient hooks, bucket
    copies, the reduce calls), beyond the α-β traffic; ZeRO-1 pays it once per step (the same
    reduction at the accumulation boundary). Hidden on a GPU (0); measured on a CPU."""
    zero3_tensor_overhead_us: float = 0.0
    """DeepSpeed ZeRO-3 host time per parameter tensor per micro-batch (fetch/release hooks, the
    gather and gradient reduce-scatter calls), beyond the α-β traffic. Hidden on a GPU (0);
    measured on a CPU."""


@dataclass
class OptimConfig:
    name: str = "adamw"
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    """Cosine decay ends at lr × min_lr_ratio."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.1
    no_decay_on_embeddings_norms_biases: bool = True
    warmup_steps: int = 10
    decay_steps: int | None = None
    """Steps of warmup + cosine; None means trainer.max_steps."""
    clip_grad: float = 1.0
    """Global gradient-norm clipping; 0 disables."""


@dataclass
class PrecisionConfig:
    name: str = MISSING
    dtype: str = "fp32"
    """fp32, bf16 or fp16."""
    initial_loss_scale_power: int = 16
    """fp16 only: dynamic loss scale starts at 2**this."""
    loss_scale_window: int = 1000
    hysteresis: int = 2
    min_loss_scale: float = 1.0


@dataclass
class DataConfig:
    name: str = MISSING
    kind: str = "indexed"
    """indexed: Megatron .bin/.idx token files; synthetic: random tokens."""
    path: str | None = None
    """Prefix of the .bin/.idx pair (without extension); relative paths resolve from the project."""
    tokenizer: str = "byte"
    """byte: UTF-8 bytes + end-of-document + padding tokens (vocabulary 258)."""
    vocab_size: int | None = None
    """Tokenizer vocabulary (unpadded); None means the tokenizer's own."""
    split: str = "98,2,0"
    """Train/validation/test weights, Megatron style."""
    seed: int | None = None
    """Sample-order seed; None means trainer.seed."""
    cache_dir: str | None = None
    """Where sample-order indices are cached; None means a cache/ folder next to the data files."""


@dataclass
class CheckpointConfig:
    interval: int = 0
    """Save every N steps; 0 saves only at the end (see save_at_end)."""
    keep_last: int = 2
    """Complete checkpoints kept; older ones are deleted after a newer one completes. 0 keeps all."""
    dir: str | None = None
    """None means <run.dir>/checkpoints."""
    resume: bool = True
    """Launching into a run.dir with a complete checkpoint continues from the newest one."""
    save_at_end: bool = True


@dataclass
class SpikeConfig:
    """OLMo-core's SkipStep rule: a step whose loss or pre-clip gradient norm lies more than `sigma`
    standard deviations above the mean of the last `window` applied steps is not applied."""

    enabled: bool = True
    sigma: float = 6.0
    window: int = 128
    """Applied steps the mean and standard deviation are taken over."""
    min_history: int = 64
    """No step is judged before this many applied steps are in the window."""
    on_loss: bool = True
    on_grad_norm: bool = True


@dataclass
class RollbackConfig:
    """PaLM/OPT-style recovery: reload the newest complete checkpoint and skip the data that led
    to the divergence."""

    enabled: bool = True
    after_consecutive_spikes: int = 3
    """Roll back after this many skipped spikes in a row (a non-finite loss rolls back at once)."""
    max_rollbacks: int = 3
    """Give up (stop with an error) after this many rollbacks in one run."""


@dataclass
class StabilityConfig:
    name: str = "off"
    spike: SpikeConfig = field(default_factory=lambda: SpikeConfig(enabled=False))
    rollback: RollbackConfig = field(default_factory=lambda: RollbackConfig(enabled=False))
    nonfinite_guard: bool = True
    """A NaN/Inf loss or gradient on any rank skips the step on every rank (bf16/fp32; fp16 has
    DeepSpeed's dynamic loss scaling)."""
    z_loss: float = 0.0
    """PaLM's auxiliary loss c·mean(logsumexp(logits)²); 1e-4 in the paper, 0 disables."""
    qk_layernorm: bool = False
    """Normalise queries and keys (ORs with model.qk_layernorm)."""
    embedding_grad_shrink: float = 1.0
    """GLM-130B's α: the input embedding's gradient is scaled by α (its tied output use is not);
    1.0 disables, 0.1 in the paper."""


DECODER_LINEARS = ["linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"]


@dataclass
class WeightQuantizationConfig:
    """Quantization-aware training of weights, after DeepSpeed Compression's `weight_quantization`
    (quantize_weight_in_forward mode): the forward pass multiplies with the weight rounded to
    `target_bits` levels, the backward pass is the straight-through estimator."""

    enabled: bool = False
    schedule_offset: int = 0
    """Optimizer steps trained unquantized first: 0-based step s runs quantized iff s >= offset."""
    target_bits: int = 8
    """Bits per weight, 2-8 (the exported codes are stored one per int8/uint8)."""
    quantization_type: str = "symmetric"
    """symmetric (codes -2^(b-1) .. 2^(b-1)-1, one scale per group) or asymmetric (codes
    0 .. 2^b-1, a scale and a zero point per group)."""
    quantize_groups: int = 1
    """Scales per weight matrix: the full (unsharded) matrix's output rows in this many equal
    blocks, so a group and its scale are the same under every tensor-parallel size."""
    modules: list[str] = field(default_factory=lambda: list(DECODER_LINEARS))
    """Regular expressions searched in module names (DeepSpeed's `modules`); each transformer
    linear layer whose name matches one is quantized."""


@dataclass
class SparsePruningConfig:
    """Unstructured magnitude pruning, after DeepSpeed Compression's `sparse_pruning` with
    method l1: at step `schedule_offset` each matched weight matrix keeps its `dense_ratio`
    largest-magnitude entries; the rest are masked to zero in every later forward pass."""

    enabled: bool = False
    schedule_offset: int = 0
    """0-based optimizer step at which the mask is taken from the weights and starts to apply."""
    method: str = "l1"
    """l1: keep the largest |w| of the full matrix (DeepSpeed's learned-score `topk` is not
    implemented)."""
    dense_ratio: float = 0.5
    """Fraction of each matrix's entries kept, in (0, 1]; ceil(dense_ratio × entries) survive."""
    modules: list[str] = field(default_factory=lambda: list(DECODER_LINEARS))
    """Regular expressions searched in module names, as for weight_quantization.modules."""


@dataclass
class CompressionConfig:
    """Compression during training and export after it (integration/compression). DeepSpeed
    0.19.8 removed its compression library and refuses a `compression_training` block, so these
    techniques are implemented here on Megatron-Core's tensor-parallel linear layers, with
    DeepSpeed's key names and semantics."""

    name: str = "none"
    weight_quantization: WeightQuantizationConfig = field(default_factory=WeightQuantizationConfig)
    sparse_pruning: SparsePruningConfig = field(default_factory=SparsePruningConfig)
    export: bool = True
    """With a technique enabled: write the compressed model (integer codes and scales, pruned
    weights) and a report of bit widths and sparsity at the end of training."""
    export_dir: str | None = None
    """None means <run.dir>/compressed."""


@dataclass
class OffloadOptimizerConfig:
    """DeepSpeed `zero_optimization.offload_optimizer` (ZeRO-Offload / ZeRO-Infinity): the fp32
    master partition and the Adam moments live off the device and DeepSpeed's CPU Adam updates them."""

    device: str = "none"
    """none, cpu or nvme. Needs ZeRO 1, 2 or 3 (nvme: ZeRO 3)."""
    nvme_path: str | None = None
    """device=nvme: a directory on a fast local disk; DeepSpeed swaps the optimizer states there."""
    pin_memory: bool = True
    """Page-locked host buffers: full-bandwidth, asynchronous device<->host copies (a no-op on CPU)."""
    buffer_count: int = 4
    """device=nvme: swap buffers; at least the states kept per parameter (4 for Adam)."""
    pipeline_read: bool = False
    """device=nvme: read the next tile while the current one is updated."""
    pipeline_write: bool = False
    """device=nvme: write the previous tile while the current one is updated."""
    fast_init: bool = False
    """device=nvme: skip the initial swap-out of zero-filled states."""


@dataclass
class OffloadParamConfig:
    """DeepSpeed `zero_optimization.offload_param` (ZeRO-Infinity): the 16-bit parameter partitions
    live off the device and are brought up for each gather. ZeRO 3 only."""

    device: str = "none"
    """none, cpu or nvme."""
    nvme_path: str | None = None
    """device=nvme: a directory on a fast local disk for the parameter swap files."""
    pin_memory: bool = True
    """Page-locked host buffers (a no-op on CPU)."""
    buffer_count: int = 5
    """device=nvme: buffers in the parameter swap pool."""
    buffer_size: int = 100_000_000
    """device=nvme: elements per swap buffer; must hold the largest parameter."""
    max_in_cpu: int = 1_000_000_000
    """device=nvme: parameter elements kept in host memory."""


@dataclass
class AioConfig:
    """DeepSpeed's top-level `aio` block: the libaio settings NVMe offload reads and writes with."""

    block_size: int = 1_048_576
    """Bytes per I/O request."""
    queue_depth: int = 8
    """Requests in flight."""
    intra_op_parallelism: int = 1
    """Threads per swap operation."""
    single_submit: bool = False
    """Submit requests one at a time instead of in batches."""
    overlap_events: bool = True
    """Overlap request submission with completion polling."""
    use_gds: bool = False
    """NVIDIA GPUDirect Storage (CUDA only)."""


@dataclass
class OffloadConfig:
    """Where ZeRO keeps the optimizer states and parameters. Maps onto DeepSpeed's
    `zero_optimization.offload_optimizer` / `offload_param` and, for NVMe, the `aio` block; the
    default (`offload=none`) adds nothing to the generated DeepSpeed config."""

    name: str = "none"
    """Preset name, used in the run name when not none."""
    optimizer: OffloadOptimizerConfig = field(default_factory=OffloadOptimizerConfig)
    """zero_optimization.offload_optimizer."""
    param: OffloadParamConfig = field(default_factory=OffloadParamConfig)
    """zero_optimization.offload_param."""
    aio: AioConfig = field(default_factory=AioConfig)
    """Top-level aio block; emitted only when something is offloaded to NVMe."""


@dataclass
class CommConfig:
    """ZeRO's communication settings, one-to-one with DeepSpeed's `zero_optimization` keys (plus
    `data_types.grad_accum_dtype` and `communication_data_type`). None leaves DeepSpeed's default in
    place and adds nothing to the generated config, so `comm=default` changes nothing."""

    name: str = "default"
    """Preset name, used in the run name when not default."""
    overlap_comm: bool | None = None
    """Reduce gradients while the backward pass still runs (double-buffered buckets). DeepSpeed's
    default: on for ZeRO 3, off for ZeRO 1/2."""
    contiguous_gradients: bool | None = None
    """Copy gradients into one contiguous buffer as they are produced (DeepSpeed default: true)."""
    reduce_scatter: bool | None = None
    """ZeRO 1/2: reduce-scatter the gradients instead of all-reducing them (default: true)."""
    reduce_bucket_size: int | None = None
    """Elements reduced per collective (default 5e8). Smaller: less memory, more messages."""
    allgather_partitions: bool | None = None
    """ZeRO 1/2: all-gather the updated partitions (true, default) or broadcast each one."""
    allgather_bucket_size: int | None = None
    """ZeRO 1/2: elements all-gathered per collective after the step (default 5e8)."""
    use_multi_rank_bucket_allreduce: bool | None = None
    """ZeRO 1/2: all-reduce each gradient bucket whole (true, DeepSpeed's default) instead of
    reducing each rank's slice to its owner; false gives the ZeRO paper's 2Ψ volume."""
    stage3_prefetch_bucket_size: int | None = None
    """ZeRO 3: parameter elements fetched ahead of the layer that needs them (default 5e7)."""
    stage3_param_persistence_threshold: int | None = None
    """ZeRO 3: tensors of at most this many elements stay whole on every rank and are never
    gathered (default 1e5). 0 partitions everything (the ZeRO paper's 3Ψ traffic)."""
    stage3_max_live_parameters: int | None = None
    """ZeRO 3: gathered parameter elements kept before any is released (default 1e9)."""
    stage3_max_reuse_distance: int | None = None
    """ZeRO 3: a gathered parameter used again within this many elements is not released between
    its uses (default 1e9, so a model under 1e9 parameters is gathered once per step, not once in
    forward and once in backward); 0 re-gathers it for the backward pass (the paper's 3Ψ)."""
    zero_quantized_weights: bool = False
    """ZeRO++ qwZ: all-gather ZeRO-3 weights quantized to int8 (block quantization). CUDA kernels."""
    zero_quantized_gradients: bool = False
    """ZeRO++ qgZ: reduce ZeRO-3 gradients by an int4 all-to-all instead of a reduce-scatter. CUDA
    kernels."""
    zero_hpz_partition_size: int = 1
    """ZeRO++ hpZ: ranks in the secondary (intra-node) weight partition, so the backward
    all-gather stays inside a node; typically cluster.gpus_per_node. 1 disables."""
    grad_accum_dtype: str | None = None
    """data_types.grad_accum_dtype: dtype gradients accumulate and are reduced in (fp32, bf16,
    fp16); None means the model's dtype."""
    communication_data_type: str | None = None
    """dtype of the gradient reduction (fp32, bf16, fp16); None: DeepSpeed picks (the gradient
    dtype)."""


@dataclass
class TrainerConfig:
    max_steps: int = 100
    seed: int = 1234
    log_interval: int = 1
    eval_interval: int = 0
    """Evaluate on the validation split every N steps (and at the end); 0 disables."""
    eval_iters: int = 2
    """Global batches per evaluation."""
    progress: bool = True
    """Progress bar on rank 0."""


@dataclass
class RunConfig:
    name: str = "default"
    dir: str = "outputs/${run.name}"
    """Output directory shared by every rank (resolved config, metrics.jsonl, W&B files)."""


@dataclass
class WandbConfig:
    mode: str = "offline"
    """online, offline or disabled."""
    project: str = "hydraspeed"
    entity: str | None = None
    group: str | None = None
    job_type: str = "train"
    name: str | None = None
    """None means run.name."""
    tags: list[str] = field(default_factory=list)
    dir: str | None = None
    """None means run.dir."""
    init_timeout: float = 30.0
    flush_interval: float = 5.0


@dataclass
class TrainConfig:
    model: ModelConfig = MISSING
    parallel: ParallelConfig = MISSING
    cluster: ClusterConfig = MISSING
    optim: OptimConfig = MISSING
    precision: PrecisionConfig = MISSING
    data: DataConfig = MISSING
    wandb: WandbConfig = field(default_factory=WandbConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    stability: StabilityConfig = field(default_factory=StabilityConfig)
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    offload: OffloadConfig = field(default_factory=OffloadConfig)
    comm: CommConfig = field(default_factory=CommConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    run: RunConfig = field(default_factory=RunConfig)
    dry_run: bool = False
    """Validate and print the plan (groups, DeepSpeed config, parameter count) without training."""
    force_layout: bool = False
    """Launch a layout that validation refuses on the cluster's facts — predicted not to fit
    cluster.gpu_memory_gib, or tensor parallelism wider than cluster.gpus_per_node — with a warning
    that gives the planner's numbers instead of the refusal."""
