"""Per-GPU memory of a layout, in bytes.

- Model states: what DeepSpeed 0.19 allocates for our generated ds_config (torch AdamW, two AdamW
  parameter groups, ZeRO defaults), partitioning and padding included, so the prediction equals a
  real run's tensors byte for byte (tests/distributed/test_planner_measured.py). In the ZeRO paper's
  terms (Rajbhandari et al. 2020, sec. 5): mixed precision keeps 2Ψ (16-bit weights) + 2Ψ (16-bit
  gradients) + KΨ with K = 12 (fp32 master 4 + Adam moments 4 + 4); fp32 training 4 + 4 + 8, plus
  the fp32 master partition that ZeRO 1-3 clone anyway. Stage 1 partitions the K part over
  data parallel, stage 2 the gradients too, stage 3 the weights too.
- Activations: Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
  Models", sec. 4 and table 2, generalised to grouped-query attention and SwiGLU widths.
- Pipeline: 1F1B keeps min(p - stage, m) micro-batches in flight on a stage (stage 0 holds p)
  (Narayanan et al. 2021, sec. 2.2; DeepSpeed TrainSchedule.num_pipe_buffers).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from integration.config.schema import CommConfig, ModelConfig
from integration.model_size import ffn_size, query_groups
from integration.planner.settings import (
    ZERO3_PARAM_PERSISTENCE_THRESHOLD,
    ZERO3_PREFETCH_BUCKET_SIZE,
    ZERO_REDUCE_BUCKET_SIZE,
)

GIB = 2**30
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
ADAM_MOMENT_BYTES = 8
"""exp_avg + exp_avg_sq, fp32 (torch AdamW on an fp32 master)."""
MASTER_BYTES = 4
FP32_BYTES = 4
RECOMPUTE = ("none", "selective", "full")
OFFLOAD = ("none", "optimizer", "params")


def offload_kind(optimizer_device: str, param_device: str) -> str:
    """The planner's offload kind of an `offload` group (NVMe is planned as host offload: the same
    device memory; the states' host copy is an upper bound)."""
    if param_device != "none":
        return "params"
    return "optimizer" if optimizer_device != "none" else "none"


# DeepSpeed ZeRO 1/2 and BF16_Optimizer pad each flattened group to a multiple of this × dp
# (stage_1_and_2.py: nccl_start_alignment_factor, "4-byte alignment/sizeof(fp16)").
NCCL_START_ALIGNMENT_FACTOR = 2


@dataclass(frozen=True)
class ParamTensor:
    """One parameter tensor as one tensor-parallel rank holds it."""

    name: str
    numel: int
    no_decay: bool
    """In the AdamW group without weight decay (integration.model.parameter_groups: 1-D tensors
    and embeddings); DeepSpeed flattens and pads each group separately."""


def layers_on_stage(num_layers: int, pp: int, stage: int) -> int:
    """Uniform split (parallel.partition_method=uniform; validation requires pp | layers)."""
    return num_layers // pp + (1 if stage < num_layers % pp else 0)


def stage_parameters(model: ModelConfig, vocab: int, tp: int, pp: int, stage: int) -> tuple[ParamTensor, ...]:
    """The parameters one (tp rank, pipeline stage) holds, in the order of the module's
    `named_parameters()` (the order DeepSpeed flattens them in). pp = 1 is Megatron-Core's
    GPTModel; pp > 1 is our DeepSpeed PipelineModule, where a tied embedding is a second copy on
    the last stage (DeepSpeed TiedLayerSpec)."""
    h = model.hidden_size
    head_dim = h // model.num_attention_heads
    kv = query_groups(model) * head_dim
    ffn = ffn_size(model)
    ffn_in = ffn * (2 if model.activation == "swiglu" else 1)
    bias = model.add_bias_linear
    layer_norm = model.normalization != "RMSNorm"

    def norm(prefix: str, width: int = h) -> list[ParamTensor]:
        out = [ParamTensor(f"{prefix}.weight", width, True)]
        if layer_norm:
            out.append(ParamTensor(f"{prefix}.bias", width, True))
        return out

    def linear(prefix: str, rows: int, cols: int, bias_width: int) -> list[ParamTensor]:
        out = [ParamTensor(f"{prefix}.weight", rows * cols, False)]
        if bias:
            out.append(ParamTensor(f"{prefix}.bias", bias_width, True))
        return out

    def layer(n: int) -> list[ParamTensor]:
        p = f"decoder.layers.{n}"
        out = norm(f"{p}.input_layernorm")
        # Row-parallel output projections split their input dimension; their bias is whole.
        out += linear(f"{p}.self_attention.linear_proj", h, h // tp, h)
        out += linear(f"{p}.self_attention.linear_qkv", (h + 2 * kv) // tp, h, (h + 2 * kv) // tp)
        if model.qk_layernorm:
            out += norm(f"{p}.self_attention.q_layernorm", head_dim)
            out += norm(f"{p}.self_attention.k_layernorm", head_dim)
        out += norm(f"{p}.pre_mlp_layernorm")
        out += linear(f"{p}.mlp.linear_fc1", ffn_in // tp, h, ffn_in // tp)
        out += linear(f"{p}.mlp.linear_fc2", h, ffn // tp, h)
        return out

    def embedding() -> list[ParamTensor]:
        out = [ParamTensor("embedding.word_embeddings.weight", vocab // tp * h, True)]
        if model.position_embedding_type == "learned_absolute":
            positions = model.max_position_embeddings or model.seq_length
            out.append(ParamTensor("embedding.position_embeddings.weight", positions * h, True))
        return out

    first, last = stage == 0, stage == pp - 1
    tensors: list[ParamTensor] = embedding() if first else []
    start = sum(layers_on_stage(model.num_layers, pp, s) for s in range(stage))
    for n in range(start, start + layers_on_stage(model.num_layers, pp, stage)):
        tensors += layer(n)
    if last:
        tensors += norm("decoder.final_layernorm")
        if not model.share_embeddings_and_output_weights:
            tensors.append(ParamTensor("output_layer.weight", vocab // tp * h, False))
        elif pp > 1:
            tensors += embedding()  # the tied copy
    return tuple(tensors)


def adamw_groups(tensors: tuple[ParamTensor, ...]) -> list[list[int]]:
    """Numels per AdamW parameter group as DeepSpeed sees them (empty groups dropped)."""
    decay = [t.numel for t in tensors if not t.no_decay]
    no_decay = [t.numel for t in tensors if t.no_decay]
    return [g for g in (decay, no_decay) if g]


@dataclass(frozen=True)
class ModelStates:
    """Bytes of the model states on one GPU, and what ZeRO-Offload keeps in host memory instead."""

    parameters: int
    """Working-precision weights (ZeRO 1/2: the padded flat buffer; ZeRO 3: the partitions plus the
    parameters small enough to persist whole)."""
    gradients: int
    master: int
    """fp32 master weights where they are a separate copy."""
    optimizer: int
    """Adam's two moments."""
    host: int = 0
    """Offloaded to CPU memory."""

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.master + self.optimizer


def _zero12_flat(group: list[int], dp: int) -> int:
    """Elements of one flattened, padded group (stage_1_and_2.py: aligned to 2·dp)."""
    alignment = NCCL_START_ALIGNMENT_FACTOR * dp
    return math.ceil(sum(group) / alignment) * alignment


def _zero2_gradient_partition(groups: list[list[int]], dp: int, rank: int) -> int:
    """Gradient elements a ZeRO-2 rank keeps after reduction (`all_grad_tensors`, the size of
    `grads_in_partition`): every parameter that starts in, or reaches into, this rank's slice of
    each flat group counts whole (stage_1_and_2.py get_partition_info)."""
    total = 0
    for group in groups:
        size = _zero12_flat(group, dp) // dp
        start, end, offset = size * rank, size * (rank + 1), 0
        for numel in group:
            if start <= offset < end or offset < start < offset + numel:
                total += numel
            offset += numel
    return total


def model_states(
    tensors: tuple[ParamTensor, ...],
    zero_stage: int,
    dp: int,
    dtype: str,
    offload: str = "none",
    pipeline: bool = False,
    dp_rank: int | None = None,
) -> ModelStates:
    """DeepSpeed's model-state bytes on one data-parallel rank (`dp_rank`; None: the largest).
    `pipeline`: DeepSpeed's pipeline engine, which runs bf16 at ZeRO 0 through BF16_Optimizer."""
    weight = DTYPE_BYTES[dtype]
    groups = adamw_groups(tensors)
    numel = sum(sum(g) for g in groups)
    mixed = dtype != "fp32"
    if zero_stage == 0 and not (pipeline and dtype == "bf16"):
        # fp32: torch AdamW directly on the model. bf16/fp16: FP16_UnfusedOptimizer keeps an
        # unpadded fp32 copy of every parameter (engine._configure_fp16_optimizer).
        return ModelStates(
            parameters=numel * weight,
            gradients=numel * weight,
            master=numel * MASTER_BYTES if mixed else 0,
            optimizer=numel * ADAM_MOMENT_BYTES,
        )
    if zero_stage in (0, 1, 2):
        flat = sum(_zero12_flat(g, dp) for g in groups)
        partition = flat // dp
        if zero_stage == 2:
            ranks = range(dp) if dp_rank is None else [dp_rank]
            gradients = max(_zero2_gradient_partition(groups, dp, r) for r in ranks) * weight
        elif zero_stage == 0:  # BF16_Optimizer: a padded flat gradient buffer of every parameter
            gradients = flat * weight
        else:  # ZeRO-1: the model's own .grad tensors, whole
            gradients = numel * weight
        # The master partition is a clone even in fp32 (single_partition_of_fp32_groups).
        master, moments = partition * MASTER_BYTES, partition * ADAM_MOMENT_BYTES
        if offload == "none":
            return ModelStates(flat * weight, gradients, master, moments)
        # ZeRO-Offload: master, moments and (stage 2) the fp32 gradient partition live on the CPU.
        gpu_grads = gradients if zero_stage < 2 else 0
        host = master + moments + partition * MASTER_BYTES
        return ModelStates(flat * weight, gpu_grads, 0, 0, host=host)
    # ZeRO-3 (partition_parameters.py): each tensor padded to a multiple of dp, then partitioned;
    # tensors at or below the persistence threshold also stay whole on every rank.
    parts = [math.ceil(t.numel / dp) for t in tensors]
    persistent = sum(t.numel for t in tensors if t.numel <= ZERO3_PARAM_PERSISTENCE_THRESHOLD)
    partition = sum(parts)
    persistent_parts = sum(
        p for p, t in zip(parts, tensors, strict=True) if t.numel <= ZERO3_PARAM_PERSISTENCE_THRESHOLD
    )
    # A separate fp32 master even in fp32: stage3.py's in-place branch compares a torch.device with
    # the string device name, which is never equal (measured: tests/distributed/test_planner_measured.py).
    master = partition * MASTER_BYTES
    states = ModelStates(
        parameters=(partition + persistent) * weight,
        gradients=partition * weight,  # grad_partitions_flat_buffer
        master=master,
        optimizer=partition * ADAM_MOMENT_BYTES,
    )
    if offload == "none":
        return states
    host = partition * (MASTER_BYTES + ADAM_MOMENT_BYTES) + partition * weight
    parameters = states.parameters
    if offload == "params":  # persistent partitions stay on the device (ds_persist)
        host += (partition - persistent_parts) * weight
        parameters = (persistent_parts + persistent) * weight
    return ModelStates(parameters=parameters, gradients=0, master=0, optimizer=0, host=host)


@dataclass(frozen=True)
class ZeroBuckets:
    """The ZeRO communication settings that size DeepSpeed's buffers (the comm group's keys;
    unset keys are DeepSpeed's defaults)."""

    reduce_bucket_size: int = ZERO_REDUCE_BUCKET_SIZE
    prefetch_bucket_size: int = ZERO3_PREFETCH_BUCKET_SIZE
    overlap_comm: bool = False
    """At ZeRO 1/2 (DeepSpeed's default there: off; ZeRO-3's buffers are counted apart)."""
    contiguous_gradients: bool = True
    """At ZeRO 1/2 the buckets exist only with it (DeepSpeed's default: on)."""

    @staticmethod
    def from_comm(comm: CommConfig) -> ZeroBuckets:
        return ZeroBuckets(
            comm.reduce_bucket_size or ZERO_REDUCE_BUCKET_SIZE,
            comm.stage3_prefetch_bucket_size or ZERO3_PREFETCH_BUCKET_SIZE,
            bool(comm.overlap_comm),
            comm.contiguous_gradients is not False,
        )


DEEPSPEED_BUCKETS = ZeroBuckets()
"""DeepSpeed's defaults, which the comm group's default preset keeps."""


def zero_buffers(
    tensors: tuple[ParamTensor, ...],
    zero_stage: int,
    dtype: str,
    pipeline: bool = False,
    buckets: ZeroBuckets = DEEPSPEED_BUCKETS,
) -> int:
    """DeepSpeed's working buffers besides the model states. ZeRO 1/2: one contiguous gradient
    bucket of reduce_bucket_size elements, two with overlap_comm (`setup_buckets` double-buffers,
    deepspeed/runtime/zero/stage_1_and_2.py); under the pipeline engine two either way (measured
    on CPU, overlap_comm on and off: a PP2 rank's peak holds two buckets where a DP2 rank's holds
    one, not three with overlap_comm; its backward runs outside ZeRO, and
    `reduce_gradients(pipeline_parallel=True)` allocates a bucket of its own;
    benchmarks/whole_peak_memory.py). None without contiguous_gradients (`setup_buckets` and
    `reduce_gradients` allocate only with it; read, not measured). Not modelled: a
    comm.grad_accum_dtype other than the model's (DeepSpeed may then stage the bucket in it).
    ZeRO 3: that bucket, plus the parameters gathered for the running layer and the prefetched
    ones (stage3_prefetch_bucket_size)."""
    weight = DTYPE_BYTES[dtype]
    if zero_stage == 0:
        return 0
    # Allocated whole (torch.empty(reduce_bucket_size)) whatever the model's size.
    bucket = buckets.reduce_bucket_size * weight
    if zero_stage < 3:
        if not buckets.contiguous_gradients:
            return 0
        return bucket * (2 if pipeline or buckets.overlap_comm else 1)
    per_module: dict[str, int] = {}
    for t in tensors:
        module = ".".join(t.name.split(".")[:3]) if t.name.startswith("decoder.layers.") else t.name
        per_module[module] = per_module.get(module, 0) + t.numel
    numel = sum(per_module.values())
    gathered = max(per_module.values()) + min(buckets.prefetch_bucket_size, numel)
    return bucket + gathered * weight


ALLREDUCE_BUCKET_SIZE = 500_000_000
"""Elements per flattened bucket of DeepSpeed's data-parallel gradient all-reduce without ZeRO
partitioning (engine.allreduce_gradients: MEMORY_OPT_ALLREDUCE_SIZE)."""


def step_transient_bytes(
    tensors: tuple[ParamTensor, ...],
    zero_stage: int,
    dp: int,
    dtype: str,
    offload: str,
    pipeline: bool,
    on_cpu: bool,
) -> int:
    """Bytes allocated for the step on top of the model states (and ZeRO's buffers), once
    backward has freed the activations. Measured on CPU with integration.planner.allocations
    (tests/distributed/test_planner_measured.py), where the whole-process peak sat inside these:
    - ZeRO 0: the gradient all-reduce flattens the gradients into one copy, per bucket of
      ALLREDUCE_BUCKET_SIZE elements (engine.buffered_allreduce_fallback), also at dp 1
      (measured peak in `flatten_dense_tensors`, full recompute: within 0.1%).
    - ZeRO 1/2: the step flattens each AdamW group's gradient partition into an fp32 copy (the
      16-bit one is freed by `.to(fp32)`; stage_1_and_2.py `step`), and torch's Adam makes
      temporaries of that size: two in the per-tensor loop torch uses on CPU (`exp_avg_sq.sqrt()`
      and its quotient, `_single_tensor_adam`), one in the foreach loop it uses on CUDA
      (`_foreach_sqrt`, then in place; read from torch/optim/adam.py, not measured). One group is
      stepped at a time, so the largest counts (measured peak in `aten::div` of AdamW.step: TP2,
      and a pipeline's last stage).
    Not modelled: ZeRO 3's step, BF16_Optimizer (bf16 at ZeRO 0), offloaded steps (host side)."""
    if offload != "none" or zero_stage == 3 or (zero_stage == 0 and pipeline and dtype == "bf16"):
        return 0
    groups = adamw_groups(tensors)
    if zero_stage == 0:
        numel = sum(sum(g) for g in groups)
        return min(numel, ALLREDUCE_BUCKET_SIZE) * DTYPE_BYTES[dtype]
    largest = max(_zero12_flat(g, dp) for g in groups if g) // dp
    temporaries = 2 if on_cpu else 1
    return (1 + temporaries) * largest * FP32_BYTES


@dataclass(frozen=True)
class ActivationShape:
    micro_batch_size: int
    tensor_parallel: int
    sequence_parallel: bool
    recompute: str
    flash_attention: bool
    """Core attention keeps no s×s score matrices: flash / Transformer Engine attention on a GPU, and
    torch's SDPA on CPU (integration.model.TorchSDPAttention; unmasked, so torch runs its CPU flash
    kernel, which keeps its output and the log-sum-exp)."""
    dtype: str
    torch_norms: bool = False
    """Megatron-Core's torch fallback norms (WrappedTorchNorm: no Transformer Engine or Apex, always
    the case on CPU). torch's RMSNorm is composite there and also keeps the normalised input; its
    LayerNorm keeps what Transformer Engine's does."""


def layer_activation_bytes(model: ModelConfig, shape: ActivationShape) -> float:
    """Activations one transformer layer keeps for backward, per micro-batch (Korthikanti et al.
    2022, table 2). For GPT shapes (MHA, 4h MLP, dropout on, 16-bit, unfused attention):
      no parallelism       sbh(34 + 5as/h)
      tensor parallel      sbh(10 + 24/t + 5as/(ht))
      + sequence parallel  sbh/t (34 + 5as/h)
      selective recompute  drops the 5as/h term (attention scores are recomputed)
      full recompute       2sbh (/t with sequence parallel): only the layer input is kept.
    Beyond the paper, what Megatron-Core 0.16 itself keeps in our model (measured tensor by tensor
    with autograd's saved-tensor hooks: tests/distributed/test_planner_measured.py):
      RoPE / QK-norm       rotated or normalised copies of Q and K, (h + kv)·sb (rope unfused:
                           transformer_config sets apply_rope_fusion=False)
      QK-norm with GQA     the query reshaped into a copy that the norm keeps, h·sb
      SwiGLU               glu() (mlp.py) keeps silu(x₁) and x₂ + glu_linear_offset, two more
                           ffn·sb beyond the fc1 output and the fc2 input
      torch RMSNorm        composite (torch_norms): it keeps the input upcast to fp32 (the input
                           itself in fp32) and the fp32 normalised input, 8 bytes per element
    Per-token norm statistics (mean, 1/σ) are left out: 2-4 elements per token, not per channel."""
    s, b, h = model.seq_length, shape.micro_batch_size, model.hidden_size
    a, t = model.num_attention_heads, shape.tensor_parallel
    e = DTYPE_BYTES[shape.dtype]  # the paper's 2-byte elements; dropout masks are 1 byte
    kv = query_groups(model) * (h // a)
    ffn = ffn_size(model)
    swiglu = model.activation == "swiglu"
    ffn_in = ffn * (2 if swiglu else 1)
    hidden_mask = 1 if model.hidden_dropout > 0 else 0
    attention_mask = 1 if model.attention_dropout > 0 else 0
    composite_rms = shape.torch_norms and model.normalization == "RMSNorm"
    sbh = s * b * h
    if shape.recompute == "full":
        return sbh * e / (t if shape.sequence_parallel else 1)
    norm = 2 * FP32_BYTES if composite_rms else e  # kept per element of a norm's input
    # Outside the tensor-parallel regions (replicated over tp unless sequence parallel): the two
    # norm inputs, the QKV and MLP inputs (norm outputs) and two dropout masks: 10sbh at 2 bytes.
    replicated = sbh * (2 * norm + 2 * e + 2 * hidden_mask)
    # Inside them (split over tp): Q, K, V, the attention output (projection input), the MLP
    # activation's input and output: 24sbh at 2 bytes for MHA and a 4h GeLU MLP.
    mlp = ffn_in + ffn * (3 if swiglu else 1)
    split = s * b * (h + 2 * kv + h + mlp) * e
    if model.position_embedding_type == "rope" or model.qk_layernorm:
        split += s * b * (h + kv) * e  # the rotated / normalised Q and K core attention keeps
    if model.qk_layernorm:
        query_copy = h * e if kv != h else 0  # otherwise the norms' inputs are views of the QKV output
        if composite_rms:
            upcast = (h + kv) * FP32_BYTES if e < FP32_BYTES else query_copy
            split += s * b * ((h + kv) * FP32_BYTES + upcast)
        else:
            split += s * b * query_copy
    if shape.recompute == "selective":
        scores = 0  # core attention is recomputed, its softmax statistics too
    elif shape.flash_attention:
        scores = a * s * b * 4  # only the fp32 softmax log-sum-exp per query
    else:  # softmax output, dropout mask and dropout output: 5as²b at 2 bytes
        scores = a * s * s * b * (e + attention_mask * (1 + e))
    replicated_share = replicated / t if shape.sequence_parallel else replicated
    return replicated_share + (split + scores) / t


def recompute_working_bytes(model: ModelConfig, shape: ActivationShape) -> float:
    """Full recompute: backward reruns one layer at a time and holds all of that layer's activations
    while it back-propagates through it; the layer input among them is the checkpoint already kept."""
    if shape.recompute != "full":
        return 0.0
    whole = layer_activation_bytes(model, dataclasses.replace(shape, recompute="none"))
    return whole - layer_activation_bytes(model, shape)


def output_layer_bytes(model: ModelConfig, vocab: int, shape: ActivationShape) -> float:
    """The last stage's activations after the transformer layers (Korthikanti et al. 2022, sec. 4.3:
    4sbh/t·(1 + v/h) with sequence parallelism, 2-byte elements): the final norm's input and the
    output layer's input, sbh each (replicated over tp unless sequence parallel; a torch RMSNorm keeps
    8 bytes per element, see layer_activation_bytes), and the fp32 logits the vocab-parallel cross
    entropy keeps."""
    s, b, h = model.seq_length, shape.micro_batch_size, model.hidden_size
    t = shape.tensor_parallel
    e = DTYPE_BYTES[shape.dtype]
    norm = 2 * FP32_BYTES if shape.torch_norms and model.normalization == "RMSNorm" else e
    inputs = s * b * h * (norm + e)
    return inputs / (t if shape.sequence_parallel else 1) + logits_bytes(model, vocab, b, t)


def logits_bytes(model: ModelConfig, vocab: int, micro_batch_size: int, tp: int) -> float:
    """fp32 logits of one micro-batch for the vocab-parallel cross entropy: 4·s·b·v/t
    (Korthikanti et al. 2022, sec. 4.3)."""
    return 4 * model.seq_length * micro_batch_size * vocab / tp


@dataclass(frozen=True)
class StageMemory:
    stage: int
    states: ModelStates
    buffers: int
    activations: float
    """Kept by the stage's transformer layers for every micro-batch in flight."""
    output_layer: float
    """Last stage: final norm and output-layer inputs and the fp32 logits (output_layer_bytes)."""
    recompute: float = 0.0
    """Full recompute: the one layer being recomputed in backward (recompute_working_bytes)."""
    step: float = 0.0
    """Allocated for the step after backward (step_transient_bytes)."""

    @property
    def peak_activations(self) -> float:
        """Activations at the stage's peak. The output layer's tensors are freed by its own backward,
        before any layer is recomputed, so the two extras never coexist (measured: the peak of
        live saved tensors, tests/distributed/test_planner_measured.py)."""
        return self.activations + max(self.output_layer, self.recompute)

    @property
    def step_is_peak(self) -> bool:
        return self.step > self.peak_activations

    @property
    def total(self) -> float:
        return self.states.total + self.buffers + max(self.peak_activations, self.step)


def stage_memory(
    model: ModelConfig,
    vocab: int,
    tp: int,
    pp: int,
    dp: int,
    stage: int,
    zero_stage: int,
    offload: str,
    micro_batches: int,
    shape: ActivationShape,
    buckets: ZeroBuckets = DEEPSPEED_BUCKETS,
    on_cpu: bool = False,
) -> StageMemory:
    """Peak bytes on one GPU (`on_cpu`: one CPU process) of pipeline stage `stage`."""
    tensors = stage_parameters(model, vocab, tp, pp, stage)
    states = model_states(tensors, zero_stage, dp, shape.dtype, offload, pipeline=pp > 1)
    buffers = zero_buffers(tensors, zero_stage, shape.dtype, pipeline=pp > 1, buckets=buckets)
    in_flight = min(pp - stage, micro_batches)
    layers = layers_on_stage(model.num_layers, pp, stage)
    activations = layers * layer_activation_bytes(model, shape) * in_flight
    recompute = recompute_working_bytes(model, shape) if layers else 0.0
    output = output_layer_bytes(model, vocab, shape) if stage == pp - 1 else 0.0
    step = step_transient_bytes(tensors, zero_stage, dp, shape.dtype, offload, pp > 1, on_cpu)
    return StageMemory(stage, states, buffers, activations, output, recompute, step)


def memory_components(memory: StageMemory, reserved: float) -> list[tuple[str, float]]:
    """The parts of a stage's peak, largest first."""
    parts = [
        ("model states", memory.states.total),
        ("activations", memory.activations),
        ("output layer", memory.output_layer),
        ("recomputed layer", memory.recompute),
        ("ZeRO buffers", memory.buffers),
        ("reserved", reserved),
    ]
    if memory.recompute > memory.output_layer:  # only the larger of the two is in the peak
        parts.remove(("output layer", memory.output_layer))
    else:
        parts.remove(("recomputed layer", memory.recompute))
    if memory.step_is_peak:  # after backward: the activations are gone
        parts = [p for p in parts if p[0] not in ("activations", "output layer", "recomputed layer")]
        parts.append(("step transient", memory.step))
    return sorted((p for p in parts if p[1] > 0), key=lambda p: -p[1])


def describe_components(memory: StageMemory, reserved: float, top: int | None = None) -> str:
    """'model states 12.3, activations 4.5, ...' in GiB, largest first (the `top` largest)."""
    parts = memory_components(memory, reserved)[:top]
    return ", ".join(f"{name} {value / GIB:.1f}" for name, value in parts)
