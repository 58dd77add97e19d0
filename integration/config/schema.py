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
    """deepspeed runner's multi-node launcher: pdsh, openmpi, slurm, ..."""
    hosts: list[str] = field(default_factory=list)
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
    """deepspeed runner --hostfile (lines `host slots=N`); None: the runner's default /job/hostfile."""
    # CPU machines (device cpu), measured by integration/planner/calibrate.py; a GPU needs neither.
    host_overhead_per_layer_us: float = 0.0
    """Host (Python, dispatch) time per transformer layer per micro-batch, forward + backward, that
    does not shrink with the batch. A GPU hides it behind its kernels (0); on a CPU it is on the
    critical path."""
    cores_per_node: float | None = None
    """CPU cores the node's processes share; with more processes than cores each computes at
    cores/processes of its speed. None: every process has its own device."""
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
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    run: RunConfig = field(default_factory=RunConfig)
    dry_run: bool = False
    """Validate and print the plan (groups, DeepSpeed config, parameter count) without training."""
    force_layout: bool = False
    """Launch a layout that validation refuses on the cluster's facts — predicted not to fit
    cluster.gpu_memory_gib, or tensor parallelism wider than cluster.gpus_per_node — with a warning
    that gives the planner's numbers instead of the refusal."""
