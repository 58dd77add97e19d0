"""Cross-group checks, run on every rank before any process group exists.

Pure: the same config and world size give the same verdict on every rank, so a bad config stops
all ranks identically instead of leaving some of them waiting in a collective. Every problem found
is reported at once, each naming the key, the value, what is wrong and an override that fixes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from integration.compression.targets import compressible_linears, invalid_patterns, matching
from integration.config.schema import TrainConfig
from integration.errors import ConfigError
from integration.layout import Layout
from integration.model_size import padded_vocab_size, query_groups
from integration.multinode import cluster_key_problems
from integration.tokenizer import tokenizer_vocab_size

NORMALIZATIONS = ("LayerNorm", "RMSNorm")
ACTIVATIONS = ("gelu", "swiglu")
POSITION_EMBEDDINGS = ("learned_absolute", "rope")
RECOMPUTE = (None, "selective", "full")
DTYPES = ("fp32", "bf16", "fp16")
DATA_KINDS = ("indexed", "synthetic")
WANDB_MODES = ("online", "offline", "disabled")
DEVICES = ("cpu", "cuda")
BACKENDS = {"cpu": ("gloo",), "cuda": ("nccl", "gloo")}
OFFLOAD_DEVICES = ("none", "cpu", "nvme")
COMM_DTYPES = (None, "fp32", "bf16", "fp16")


@dataclass
class Verdict:
    layout: Layout
    warnings: list[str] = field(default_factory=list)


@dataclass
class _Problems:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def check(self, ok: bool, message: str) -> bool:
        if not ok:
            self.errors.append(message)
        return ok


def validate(
    cfg: TrainConfig,
    world_size: int,
    cuda_available: bool,
    planned: bool = False,
    fused_norms_available: bool = False,
) -> Verdict:
    """Raise ConfigError listing every problem, or return the derived layout and warnings.
    `planned`: the world size is the cluster's (dry run), not a launcher's process count.
    `fused_norms_available`: Transformer Engine or Apex is importable (sequence parallelism)."""
    p = _Problems()
    _check_ranges(cfg, p)
    if p.errors:  # later checks divide by these
        raise ConfigError(_format(p.errors))
    _check_parallel(cfg, world_size, planned, p)
    p.check(
        not (cfg.parallel.sequence_parallel and not fused_norms_available),
        "parallel.sequence_parallel: true needs Transformer Engine or Apex norms (Megatron-Core's torch "
        "LayerNorm fallback refuses sequence parallelism); install transformer-engine or set "
        "parallel.sequence_parallel=false",
    )
    _check_model(cfg, p)
    _check_precision_and_device(cfg, cuda_available, p)
    _check_run(cfg, p)
    _check_stability(cfg, p)
    _check_tensor_parallel_2d(cfg, p)
    _check_tensor_parallel_in_node(cfg, p)
    p.errors += cluster_key_problems(cfg.cluster)
    _check_compression(cfg, p)
    _check_offload(cfg, p)
    _check_comm(cfg, world_size, planned, p)
    if p.errors:
        raise ConfigError(_format(p.errors))
    layout = Layout.derive(cfg.parallel, world_size)
    _check_cluster_fit(cfg, layout, planned, fused_norms_available, p)
    if p.errors:
        raise ConfigError(_format(p.errors))
    return Verdict(layout=layout, warnings=p.warnings)


def _format(errors: list[str]) -> str:
    if len(errors) == 1:
        return errors[0]
    return f"{len(errors)} config problems:\n" + "\n".join(f"  - {e}" for e in errors)


def _check_ranges(cfg: TrainConfig, p: _Problems) -> None:
    par, model = cfg.parallel, cfg.model
    for key, value in [
        ("parallel.tensor_model_parallel_size", par.tensor_model_parallel_size),
        ("parallel.pipeline_model_parallel_size", par.pipeline_model_parallel_size),
        ("parallel.micro_batch_size", par.micro_batch_size),
        ("parallel.global_batch_size", par.global_batch_size),
        ("model.num_layers", model.num_layers),
        ("model.hidden_size", model.hidden_size),
        ("model.num_attention_heads", model.num_attention_heads),
        ("model.seq_length", model.seq_length),
        ("model.make_vocab_size_divisible_by", model.make_vocab_size_divisible_by),
        ("cluster.num_nodes", cfg.cluster.num_nodes),
        ("cluster.gpus_per_node", cfg.cluster.gpus_per_node),
        ("trainer.max_steps", cfg.trainer.max_steps),
        ("trainer.log_interval", cfg.trainer.log_interval),
    ]:
        p.check(value >= 1, f"{key}: {value} must be a positive integer; set {key}=1 or more")
    if model.num_query_groups is not None:
        p.check(
            model.num_query_groups >= 1,
            f"model.num_query_groups: {model.num_query_groups} must be >= 1; use null for one "
            "key/value head per attention head",
        )


def _check_parallel(cfg: TrainConfig, world_size: int, planned: bool, p: _Problems) -> None:
    par = cfg.parallel
    tp, pp = par.tensor_model_parallel_size, par.pipeline_model_parallel_size
    if not p.check(
        world_size % (tp * pp) == 0,
        f"parallel: tp({tp}) × pp({pp}) = {tp * pp} does not divide world_size({world_size}); "
        + (
            f"set cluster.gpus_per_node (× cluster.num_nodes) to a multiple of {tp * pp}"
            if planned
            else f"launch a multiple of {tp * pp} processes"
        )
        + " or choose a smaller layout (e.g. parallel=single)",
    ):
        return
    dp = world_size // (tp * pp)
    per_step = par.micro_batch_size * dp
    p.check(
        par.global_batch_size % per_step == 0,
        f"parallel.global_batch_size: {par.global_batch_size} is not a multiple of micro_batch_size"
        f"({par.micro_batch_size}) × data_parallel({dp}) = {per_step}; set "
        f"parallel.global_batch_size={max(per_step, par.global_batch_size // per_step * per_step)}",
    )
    p.check(
        par.zero_stage in (0, 1, 2, 3),
        f"parallel.zero_stage: {par.zero_stage} is not a ZeRO stage; use 0, 1, 2 or 3",
    )
    p.check(
        not (pp > 1 and par.zero_stage >= 2),
        f"parallel.zero_stage: {par.zero_stage} with pipeline_model_parallel_size({pp}) > 1 — "
        "DeepSpeed's pipeline engine supports ZeRO 0 and 1 only; set parallel.zero_stage=1",
    )
    p.check(
        not (par.sequence_parallel and tp == 1),
        "parallel.sequence_parallel: true needs tensor_model_parallel_size > 1; set "
        "parallel.sequence_parallel=false or parallel.tensor_model_parallel_size=2",
    )
    p.check(
        par.activation_checkpoint_interval >= 0,
        f"parallel.activation_checkpoint_interval: {par.activation_checkpoint_interval} must be >= 0; "
        "0 disables, N checkpoints every N transformer layers",
    )
    method = par.partition_method
    p.check(
        method in ("uniform", "parameters") or method.startswith("type:"),
        f"parallel.partition_method: {method!r} is unknown; use uniform, parameters or type:<regex>",
    )
    if pp > 1 and par.global_batch_size % per_step == 0:
        micro_batches = par.global_batch_size // per_step
        bubble = (pp - 1) / micro_batches
        if micro_batches < pp:
            p.warnings.append(
                f"pipeline: {micro_batches} micro-batches per step for {pp} stages leaves stages idle "
                f"(bubble (p-1)/m = {bubble:.2f}); raise parallel.global_batch_size to at least "
                f"{pp * per_step}"
            )
        else:
            p.warnings.append(f"pipeline: bubble fraction (p-1)/m = ({pp}-1)/{micro_batches} = {bubble:.2f}")


def _check_model(cfg: TrainConfig, p: _Problems) -> None:
    model, par = cfg.model, cfg.parallel
    tp, pp = par.tensor_model_parallel_size, par.pipeline_model_parallel_size
    heads, groups = model.num_attention_heads, query_groups(model)
    p.check(
        model.hidden_size % heads == 0,
        f"model.hidden_size: {model.hidden_size} is not divisible by num_attention_heads({heads}); "
        "choose model.num_attention_heads dividing the hidden size",
    )
    p.check(
        heads % tp == 0,
        f"model.num_attention_heads: {heads} is not divisible by tensor_model_parallel_size({tp}); "
        "use a tp that divides the heads (e.g. parallel.tensor_model_parallel_size=1)",
    )
    p.check(
        heads % groups == 0,
        f"model.num_query_groups: {groups} does not divide num_attention_heads({heads}); choose a "
        "divisor of the heads (null means one key/value head per attention head)",
    )
    p.check(
        model.num_query_groups is None or groups % tp == 0,
        f"model.num_query_groups: {groups} key/value heads are not divisible by "
        f"tensor_model_parallel_size({tp}); lower tp or raise model.num_query_groups",
    )
    ffn = model.ffn_hidden_size or 4 * model.hidden_size
    p.check(
        ffn % tp == 0,
        f"model.ffn_hidden_size: {ffn} is not divisible by tensor_model_parallel_size({tp}); set "
        f"model.ffn_hidden_size to a multiple of {tp}",
    )
    if par.partition_method == "uniform":
        p.check(
            model.num_layers % pp == 0,
            f"model.num_layers: {model.num_layers} is not divisible by pipeline_model_parallel_size"
            f"({pp}); choose pp dividing the layers"
            + ("" if par.tensor_parallel_2d else " or parallel.partition_method=parameters"),
        )
    else:
        p.check(
            model.num_layers >= pp,
            f"model.num_layers: {model.num_layers} is fewer than pipeline stages({pp}); lower "
            "parallel.pipeline_model_parallel_size",
        )
    positions = model.max_position_embeddings or model.seq_length
    p.check(
        model.seq_length <= positions,
        f"model.seq_length: {model.seq_length} exceeds max_position_embeddings({positions}); set "
        f"model.max_position_embeddings={model.seq_length} or lower model.seq_length",
    )
    p.check(
        model.normalization in NORMALIZATIONS,
        f"model.normalization: {model.normalization!r} is unknown; use one of {NORMALIZATIONS}",
    )
    p.check(
        model.activation in ACTIVATIONS,
        f"model.activation: {model.activation!r} is unknown; use one of {ACTIVATIONS}",
    )
    p.check(
        model.position_embedding_type in POSITION_EMBEDDINGS,
        f"model.position_embedding_type: {model.position_embedding_type!r} is unknown; use one of "
        f"{POSITION_EMBEDDINGS}",
    )
    p.check(
        model.recompute_granularity in RECOMPUTE,
        f"model.recompute_granularity: {model.recompute_granularity!r} is unknown; use null, "
        "selective or full",
    )
    for key, rate in [
        ("model.hidden_dropout", model.hidden_dropout),
        ("model.attention_dropout", model.attention_dropout),
    ]:
        p.check(0.0 <= rate < 1.0, f"{key}: {rate} must be in [0, 1); e.g. {key}=0.0")
    try:
        data_vocab = tokenizer_vocab_size(cfg.data.tokenizer, cfg.data.vocab_size)
    except ConfigError as err:
        p.errors.append(str(err))
        return
    vocab = model.vocab_size or data_vocab
    p.check(
        vocab >= data_vocab,
        f"model.vocab_size: {vocab} is smaller than the data's vocabulary ({data_vocab}); "
        f"set model.vocab_size={data_vocab} or null",
    )
    padded = padded_vocab_size(vocab, model.make_vocab_size_divisible_by)
    p.check(
        padded % tp == 0,
        f"model.make_vocab_size_divisible_by: {model.make_vocab_size_divisible_by} pads the vocabulary "
        f"to {padded}, which does not split over tensor_model_parallel_size({tp}); set "
        f"model.make_vocab_size_divisible_by={model.make_vocab_size_divisible_by * tp}",
    )


def _check_precision_and_device(cfg: TrainConfig, cuda_available: bool, p: _Problems) -> None:
    dtype, device, backend = cfg.precision.dtype, cfg.cluster.device, cfg.cluster.backend
    p.check(dtype in DTYPES, f"precision.dtype: {dtype!r} is unknown; use precision=fp32, bf16 or fp16")
    if not p.check(device in DEVICES, f"cluster.device: {device!r} is unknown; use cpu or cuda"):
        return
    p.check(
        not (device == "cuda" and not cuda_available),
        "cluster.device: 'cuda' but no CUDA device is visible on this machine; use cluster=local_cpu",
    )
    p.check(
        backend in BACKENDS[device],
        f"cluster.backend: {backend!r} does not work with device {device!r}; use "
        f"cluster.backend={BACKENDS[device][0]}",
    )
    p.check(
        not (dtype == "fp16" and device == "cpu"),
        "precision.dtype: 'fp16' is not supported on cpu (DeepSpeed's CPU accelerator refuses half "
        "precision); use precision=bf16 or precision=fp32",
    )


def _check_run(cfg: TrainConfig, p: _Problems) -> None:
    trainer, optim, data = cfg.trainer, cfg.optim, cfg.data
    p.check(
        trainer.eval_interval >= 0,
        f"trainer.eval_interval: {trainer.eval_interval} must be >= 0 (0 disables evaluation)",
    )
    p.check(
        not (trainer.eval_interval > 0 and trainer.eval_iters < 1),
        f"trainer.eval_iters: {trainer.eval_iters} must be >= 1 when evaluation is on; "
        "set trainer.eval_iters=1 or trainer.eval_interval=0",
    )
    p.check(optim.lr > 0, f"optim.lr: {optim.lr} must be > 0, e.g. optim.lr=3e-4")
    p.check(0.0 <= optim.min_lr_ratio <= 1.0, f"optim.min_lr_ratio: {optim.min_lr_ratio} must be in [0, 1]")
    p.check(
        len(optim.betas) == 2 and all(0.0 <= b < 1.0 for b in optim.betas),
        f"optim.betas: {list(optim.betas)} must be two numbers in [0, 1), e.g. optim.betas=[0.9,0.95]",
    )
    p.check(optim.clip_grad >= 0, f"optim.clip_grad: {optim.clip_grad} must be >= 0 (0 disables)")
    if optim.decay_steps is not None:
        p.check(
            optim.decay_steps >= 2,
            f"optim.decay_steps: {optim.decay_steps} must be >= 2 (or null for trainer.max_steps)",
        )
    decay = optim.decay_steps or trainer.max_steps
    length_key = "optim.decay_steps" if optim.decay_steps else "trainer.max_steps"
    # DeepSpeed's WarmupCosineLR silently turns a warmup of 1 into 2.
    p.check(
        2 <= optim.warmup_steps <= decay,
        f"optim.warmup_steps: {optim.warmup_steps} must be between 2 and the schedule length "
        f"({length_key} = {decay}); lower optim.warmup_steps or raise {length_key}",
    )
    p.check(
        data.kind in DATA_KINDS, f"data.kind: {data.kind!r} is unknown; use data=corpus or data=synthetic"
    )
    p.check(
        not (data.kind == "indexed" and not data.path),
        "data.path: an indexed dataset needs the .bin/.idx prefix; set data.path=... or data=corpus",
    )
    parts = data.split.split(",")
    valid_split = len(parts) == 3 and all(x.strip().replace(".", "", 1).isdigit() for x in parts)
    p.check(
        valid_split and sum(float(x) for x in parts) > 0,
        f"data.split: {data.split!r} must be three weights 'train,valid,test', e.g. data.split='98,2,0'",
    )
    if valid_split and trainer.eval_interval > 0:
        p.check(
            float(parts[1]) > 0,
            f"data.split: {data.split!r} has no validation share but trainer.eval_interval is "
            f"{trainer.eval_interval}; give it one (data.split='98,2,0') or set trainer.eval_interval=0",
        )
    for key, value in [
        ("checkpoint.interval", cfg.checkpoint.interval),
        ("checkpoint.keep_last", cfg.checkpoint.keep_last),
    ]:
        p.check(
            value >= 0,
            f"{key}: {value} must be >= 0 (0: {'only at the end' if 'interval' in key else 'keep all'})",
        )
    p.check(
        cfg.wandb.mode in WANDB_MODES,
        f"wandb.mode: {cfg.wandb.mode!r} is unknown; use online, offline or disabled",
    )


def _check_stability(cfg: TrainConfig, p: _Problems) -> None:
    st = cfg.stability
    spike, rollback = st.spike, st.rollback
    p.check(
        spike.sigma > 0, f"stability.spike.sigma: {spike.sigma} must be > 0, e.g. stability.spike.sigma=6"
    )
    p.check(
        spike.window >= 2,
        f"stability.spike.window: {spike.window} must be >= 2 steps, e.g. stability.spike.window=128",
    )
    p.check(
        2 <= spike.min_history <= spike.window,
        f"stability.spike.min_history: {spike.min_history} must be between 2 and stability.spike.window "
        f"({spike.window}); e.g. stability.spike.min_history={max(2, spike.window // 2)}",
    )
    p.check(
        not (spike.enabled and not (spike.on_loss or spike.on_grad_norm)),
        "stability.spike: enabled but neither on_loss nor on_grad_norm is set; enable one or set "
        "stability.spike.enabled=false",
    )
    p.check(
        rollback.after_consecutive_spikes >= 1,
        f"stability.rollback.after_consecutive_spikes: {rollback.after_consecutive_spikes} must be >= 1",
    )
    p.check(
        rollback.max_rollbacks >= 0,
        f"stability.rollback.max_rollbacks: {rollback.max_rollbacks} must be >= 0 (0: fail at the first one)",
    )
    p.check(
        st.z_loss >= 0,
        f"stability.z_loss: {st.z_loss} must be >= 0 (0 disables; PaLM uses stability.z_loss=1e-4)",
    )
    p.check(
        0 < st.embedding_grad_shrink <= 1,
        f"stability.embedding_grad_shrink: {st.embedding_grad_shrink} must be in (0, 1] (1 disables; "
        "GLM-130B uses stability.embedding_grad_shrink=0.1)",
    )


def _check_tensor_parallel_in_node(cfg: TrainConfig, p: _Problems) -> None:
    """Tensor parallelism all-reduces activations twice per layer in forward and backward, so its
    group belongs on the fast intra-node links (Narayanan et al. 2021, sec. 3.3). Tensor ranks are
    adjacent (layout.py), so every group stays inside a node iff tp divides gpus_per_node. A tp
    wider than a node is refused with the planner's numbers (`_check_cluster_fit`)."""
    tp, per_node = cfg.parallel.tensor_model_parallel_size, cfg.cluster.gpus_per_node
    if cfg.cluster.num_nodes > 1 and per_node % tp != 0 and tp < per_node:
        p.warnings.append(
            f"parallel.tensor_model_parallel_size: {tp} does not divide cluster.gpus_per_node({per_node}), "
            "so tensor-parallel groups span nodes and every layer's all-reduces cross the inter-node "
            f"network; use a tp dividing {per_node} and more pipeline stages "
            "(python launch/plan.py ranks the layouts)"
        )


def _check_tensor_parallel_2d(cfg: TrainConfig, p: _Problems) -> None:
    """2D tensor parallelism (integration/tp2d): a q×q grid, the batch split over grid rows, hidden,
    heads, MLP width and vocabulary over columns, vector parameters in q² pieces. The model is the
    GPT of the 1D path without the options 2D does not implement yet."""
    par, model = cfg.parallel, cfg.model
    if not par.tensor_parallel_2d:
        return
    tp = par.tensor_model_parallel_size
    q = math.isqrt(tp)
    if not p.check(
        q * q == tp,
        f"parallel.tensor_model_parallel_size: {tp} is not a square; 2D tensor parallelism needs q×q "
        "ranks (parallel=tp2d_2x2 uses 4)",
    ):
        return
    fix = "or set parallel.tensor_parallel_2d=false"
    if par.pipeline_model_parallel_size > 1:
        # The 2D stages (integration/tp2d/stages.py) are split by DeepSpeed's type: partition.
        p.check(
            par.partition_method == "uniform",
            f"parallel.partition_method: {par.partition_method!r} — pipeline stages with 2D tensor "
            f"parallelism are split uniformly (equal transformer layers per stage); set "
            f"parallel.partition_method=uniform {fix}",
        )
        p.check(
            par.activation_checkpoint_interval == 0,
            f"parallel.activation_checkpoint_interval: {par.activation_checkpoint_interval} — 2D tensor "
            f"parallelism has no activation checkpointing yet; set parallel.activation_checkpoint_interval=0 "
            f"{fix}",
        )
    p.check(
        not par.sequence_parallel,
        "parallel.sequence_parallel: true — 2D tensor parallelism already splits the tokens over grid "
        "rows; set parallel.sequence_parallel=false",
    )
    p.check(
        par.micro_batch_size % q == 0,
        f"parallel.micro_batch_size: {par.micro_batch_size} does not split over the {q} grid rows (2D "
        f"tensor parallelism splits the batch); set parallel.micro_batch_size to a multiple of {q}",
    )
    # Heads, MLP width and padded vocabulary divisible by tp = q² are checked for every layout
    # (GPT2D starts from the 1D model's full weights); hidden = heads × head_dim then is too.
    positions = model.max_position_embeddings or model.seq_length
    p.check(
        positions % q == 0,
        f"model.max_position_embeddings: {positions} positions do not split over the grid side {q}; "
        f"set model.max_position_embeddings to a multiple of {q}",
    )
    for key, value, supported in [
        ("model.normalization", model.normalization, "LayerNorm"),
        ("model.activation", model.activation, "gelu"),
        ("model.position_embedding_type", model.position_embedding_type, "learned_absolute"),
        ("model.recompute_granularity", model.recompute_granularity, None),
    ]:
        p.check(
            value == supported,
            f"{key}: {value!r} is not implemented for 2D tensor parallelism; set {key}={supported or 'null'} "
            f"{fix}",
        )
    p.check(
        query_groups(model) == model.num_attention_heads,
        f"model.num_query_groups: {model.num_query_groups} — 2D tensor parallelism implements "
        f"multi-head attention only; set model.num_query_groups=null {fix}",
    )
    for key, rate in [
        ("model.hidden_dropout", model.hidden_dropout),
        ("model.attention_dropout", model.attention_dropout),
    ]:
        p.check(rate == 0.0, f"{key}: {rate} — 2D tensor parallelism has no dropout yet; set {key}=0.0 {fix}")


QUANTIZATION_TYPES = ("symmetric", "asymmetric")
PRUNING_METHODS = ("l1",)


def _check_compression(cfg: TrainConfig, p: _Problems) -> None:
    """Compression (integration/compression) adapts Megatron-Core's 1D tensor-parallel linear
    layers of the plain DeepSpeed engine and exports whole matrices, so it refuses the layouts it
    does not implement, and checks each enabled technique against the model's matrices."""
    comp, par = cfg.compression, cfg.parallel
    wq, sp = comp.weight_quantization, comp.sparse_pruning
    if not (wq.enabled or sp.enabled):
        return
    fix = "or compression=none"
    p.check(
        par.pipeline_model_parallel_size == 1,
        f"parallel.pipeline_model_parallel_size: {par.pipeline_model_parallel_size} — compression is "
        f"implemented for the plain DeepSpeed engine only (no pipeline stages); set "
        f"parallel.pipeline_model_parallel_size=1 {fix}",
    )
    p.check(
        not par.tensor_parallel_2d,
        f"parallel.tensor_parallel_2d: true — compression adapts Megatron-Core's 1D tensor-parallel layers, "
        f"not the 2D ones; set parallel.tensor_parallel_2d=false {fix}",
    )
    p.check(
        par.zero_stage <= 2,
        f"parallel.zero_stage: {par.zero_stage} — ZeRO-3 partitions the weights that pruning and the export "
        f"read whole; compression is implemented for ZeRO 0-2, set parallel.zero_stage=2 {fix}",
    )
    if cfg.model.hidden_size % cfg.model.num_attention_heads:
        return  # reported by _check_model; the matrix shapes are undefined
    targets = compressible_linears(cfg.model)
    names = [t.name for t in targets]
    steps = cfg.trainer.max_steps
    for key, technique in (("weight_quantization", wq), ("sparse_pruning", sp)):
        if not technique.enabled:
            continue
        prefix = f"compression.{key}"
        offset = technique.schedule_offset
        p.check(
            0 <= offset < steps,
            f"{prefix}.schedule_offset: {offset} is outside the run's steps 0..{steps - 1} (trainer.max_steps "
            f"= {steps}), so the technique would never be applied; set {prefix}.schedule_offset to a step "
            f"in 0..{steps - 1}",
        )
        bad = invalid_patterns(technique.modules)
        if not p.check(
            not bad,
            f"{prefix}.modules: {bad} are not valid regular expressions; e.g. {prefix}.modules=[linear_fc1]",
        ):
            continue
        p.check(
            bool(matching(names, technique.modules)),
            f"{prefix}.modules: {list(technique.modules)} match no transformer linear layer of model "
            f"{cfg.model.name} (decoder.layers.N.self_attention.linear_qkv/linear_proj, "
            f"decoder.layers.N.mlp.linear_fc1/linear_fc2); e.g. {prefix}.modules=[linear_qkv,linear_fc1]",
        )
    if wq.enabled:
        p.check(
            2 <= wq.target_bits <= 8,
            f"compression.weight_quantization.target_bits: {wq.target_bits} is outside 2..8 (codes are "
            "exported one per byte); e.g. compression.weight_quantization.target_bits=8",
        )
        p.check(
            wq.quantization_type in QUANTIZATION_TYPES,
            f"compression.weight_quantization.quantization_type: {wq.quantization_type!r} is unknown; use "
            "symmetric or asymmetric",
        )
        groups = wq.quantize_groups
        if p.check(
            groups >= 1,
            f"compression.weight_quantization.quantize_groups: {groups} must be >= 1 (1: one scale per matrix)",
        ) and not invalid_patterns(wq.modules):
            matched = set(matching(names, wq.modules))
            rows = sorted({t.rows for t in targets if t.name in matched})
            uneven = [r for r in rows if r % groups]
            p.check(
                not uneven,
                f"compression.weight_quantization.quantize_groups: {groups} does not divide the output rows "
                f"{uneven} of the quantized matrices (groups are blocks of whole rows); use a divisor of "
                f"{math.gcd(*rows)}, e.g. compression.weight_quantization.quantize_groups=1",
            )
    if sp.enabled:
        p.check(
            sp.method in PRUNING_METHODS,
            f"compression.sparse_pruning.method: {sp.method!r} is not implemented; use l1 (magnitude "
            "pruning; DeepSpeed's learned-score topk is not available)",
        )
        p.check(
            0 < sp.dense_ratio <= 1,
            f"compression.sparse_pruning.dense_ratio: {sp.dense_ratio} must be in (0, 1] (the fraction of "
            "weights kept); e.g. compression.sparse_pruning.dense_ratio=0.5",
        )


def _check_offload(cfg: TrainConfig, p: _Problems) -> None:
    """DeepSpeed's ZeRO-Offload rules (runtime/zero/offload_config.py, stage_1_and_2.py, stage3.py):
    optimizer states can leave the device from ZeRO 1 on, parameters only at ZeRO 3 (they must be
    partitioned to be offloaded), and NVMe swapping is ZeRO-Infinity, a ZeRO-3 feature. The
    pipeline engine runs ZeRO 0/1 only, so there optimizer offload needs exactly ZeRO 1."""
    off, zero = cfg.offload, cfg.parallel.zero_stage
    pp = cfg.parallel.pipeline_model_parallel_size
    for key, block in (("offload.optimizer", off.optimizer), ("offload.param", off.param)):
        if not p.check(
            block.device in OFFLOAD_DEVICES,
            f"{key}.device: {block.device!r} is unknown; use none, cpu or nvme (e.g. offload=optimizer_cpu)",
        ):
            return
    opt, param = off.optimizer.device, off.param.device
    p.check(
        not (opt != "none" and zero == 0),
        f"offload.optimizer.device: {opt!r} needs ZeRO 1, 2 or 3 (DeepSpeed offloads the partitioned "
        "optimizer states), but parallel.zero_stage is 0; set parallel.zero_stage="
        f"{1 if pp > 1 else 2} or offload=none",
    )
    if pp > 1:
        p.check(
            param == "none",
            f"offload.param.device: {param!r} needs ZeRO 3, which DeepSpeed's pipeline engine "
            f"(pipeline_model_parallel_size {pp}) does not run; use offload=optimizer_cpu "
            "parallel.zero_stage=1, or parallel.pipeline_model_parallel_size=1",
        )
    else:
        p.check(
            not (param != "none" and zero != 3),
            f"offload.param.device: {param!r} needs ZeRO 3 (only partitioned parameters can be offloaded), "
            f"but parallel.zero_stage is {zero}; set parallel.zero_stage=3 or offload=optimizer_cpu",
        )
    for key, block in (("offload.optimizer", off.optimizer), ("offload.param", off.param)):
        if block.device != "nvme":
            continue
        p.check(
            zero == 3,
            f"{key}.device: 'nvme' swaps through ZeRO-Infinity, which needs ZeRO 3 (parallel.zero_stage is "
            f"{zero}); set parallel.zero_stage=3 or {key}.device=cpu",
        )
        p.check(
            bool(block.nvme_path),
            f"{key}.nvme_path: not set; NVMe offload needs a directory on a fast local disk, set "
            f"{key}.nvme_path=/local_nvme (any writable directory)",
        )
        p.check(block.buffer_count >= 1, f"{key}.buffer_count: {block.buffer_count} must be >= 1")
    if "nvme" in (opt, param):
        aio = off.aio
        for key, value in [
            ("offload.aio.block_size", aio.block_size),
            ("offload.aio.queue_depth", aio.queue_depth),
            ("offload.aio.intra_op_parallelism", aio.intra_op_parallelism),
        ]:
            p.check(value >= 1, f"{key}: {value} must be a positive integer; set {key}=1 or more")
        p.check(
            not (aio.use_gds and cfg.cluster.device != "cuda"),
            "offload.aio.use_gds: true needs CUDA (GPUDirect Storage); set offload.aio.use_gds=false",
        )


def _check_comm(cfg: TrainConfig, world_size: int, planned: bool, p: _Problems) -> None:
    """ZeRO communication keys and ZeRO++ (Wang et al. 2023), against the layout and the device."""
    comm, par = cfg.comm, cfg.parallel
    zero, tp, pp = par.zero_stage, par.tensor_model_parallel_size, par.pipeline_model_parallel_size
    for key, value in [
        ("comm.reduce_bucket_size", comm.reduce_bucket_size),
        ("comm.allgather_bucket_size", comm.allgather_bucket_size),
        ("comm.stage3_prefetch_bucket_size", comm.stage3_prefetch_bucket_size),
    ]:
        p.check(
            value is None or value >= 1,
            f"{key}: {value} must be a positive number of elements (or null for DeepSpeed's default)",
        )
    for key, value in [
        ("comm.stage3_param_persistence_threshold", comm.stage3_param_persistence_threshold),
        ("comm.stage3_max_live_parameters", comm.stage3_max_live_parameters),
        ("comm.stage3_max_reuse_distance", comm.stage3_max_reuse_distance),
    ]:
        p.check(value is None or value >= 0, f"{key}: {value} must be >= 0 (or null for DeepSpeed's default)")
    quantized = [
        key
        for key, on in (
            ("comm.zero_quantized_weights", comm.zero_quantized_weights),
            ("comm.zero_quantized_gradients", comm.zero_quantized_gradients),
        )
        if on
    ]
    for key in quantized:
        p.check(
            zero == 3,
            f"{key}: true is ZeRO++, which quantizes ZeRO-3 collectives, but parallel.zero_stage is {zero}; "
            f"set parallel.zero_stage=3 or {key}=false",
        )
        p.check(
            cfg.cluster.device == "cuda",
            f"{key}: true needs DeepSpeed's CUDA quantizer kernels (QuantizerBuilder is not implemented for "
            f"its CPU accelerator in deepspeed 0.19.8); set {key}=false (comm=overlap on CPU)",
        )
    p.check(
        not (comm.zero_quantized_gradients and comm.reduce_scatter is False),
        "comm.zero_quantized_gradients: true replaces ZeRO-3's reduce-scatter, which DeepSpeed requires "
        "on (stage3.py); set comm.reduce_scatter=null or comm.zero_quantized_gradients=false",
    )
    if comm.zero_quantized_gradients and cfg.cluster.num_nodes == 1:
        p.warnings.append(
            "comm.zero_quantized_gradients: DeepSpeed uses the quantized all-to-all only between nodes; on "
            "one node (cluster.num_nodes=1) it reduce-scatters the gradients as without qgZ"
        )
    hpz = comm.zero_hpz_partition_size
    if p.check(hpz >= 1, f"comm.zero_hpz_partition_size: {hpz} must be >= 1 (1 disables hpZ)") and hpz > 1:
        nodes = max(1, cfg.cluster.num_nodes)
        per_node = cfg.cluster.gpus_per_node if planned else world_size // nodes
        dp = world_size // (tp * pp) if world_size % (tp * pp) == 0 else world_size
        p.check(
            zero == 3,
            f"comm.zero_hpz_partition_size: {hpz} (ZeRO++ hpZ) partitions a second copy of the ZeRO-3 "
            f"weights, but parallel.zero_stage is {zero}; set parallel.zero_stage=3 or "
            "comm.zero_hpz_partition_size=1",
        )
        p.check(
            tp == 1,
            f"comm.zero_hpz_partition_size: {hpz} with tensor_model_parallel_size {tp} — DeepSpeed forms hpZ "
            "groups from consecutive global ranks, which are tensor-parallel peers here; set "
            "comm.zero_hpz_partition_size=1 or parallel.tensor_model_parallel_size=1",
        )
        p.check(
            dp % hpz == 0,
            f"comm.zero_hpz_partition_size: {hpz} does not divide the data-parallel size {dp}; use a "
            f"divisor of {dp} (typically the GPUs per node)",
        )
        p.check(
            per_node % hpz == 0,
            f"comm.zero_hpz_partition_size: {hpz} does not divide the {per_node} processes per node, so "
            f"hpZ groups would span nodes; set comm.zero_hpz_partition_size={per_node}",
        )
    dtype = cfg.precision.dtype
    accum = comm.grad_accum_dtype
    if p.check(
        accum in COMM_DTYPES,
        f"comm.grad_accum_dtype: {accum!r} is unknown; use fp32, bf16, fp16 or null (the model's dtype)",
    ) and accum not in (None, dtype):
        p.check(
            accum == "fp32" and dtype != "fp32",
            f"comm.grad_accum_dtype: {accum!r} with precision {dtype} — gradients accumulate in fp32 or in "
            "the model's dtype; set comm.grad_accum_dtype=fp32 or null",
        )
        p.check(
            zero >= 1,
            f"comm.grad_accum_dtype: {accum!r} differs from the {dtype} model, which DeepSpeed supports only "
            'with ZeRO ("unsupported mix" at stage 0); set parallel.zero_stage=1 or comm.grad_accum_dtype=null',
        )
    p.check(
        comm.communication_data_type in COMM_DTYPES,
        f"comm.communication_data_type: {comm.communication_data_type!r} is unknown; use fp32, bf16, "
        "fp16 or null",
    )


def _check_cluster_fit(
    cfg: TrainConfig, layout: Layout, planned: bool, fused_norms_available: bool, p: _Problems
) -> None:
    """The planner's memory and time models on this one layout (integration/cluster_fit.py):
    refused when predicted not to fit cluster.gpu_memory_gib or when tp is wider than a node,
    warned instead under force_layout=true. Imported here: the planner imports this module."""
    from integration.cluster_fit import check_cluster_fit

    errors, warnings = check_cluster_fit(cfg, layout, planned, fused_norms_available)
    p.errors += errors
    p.warnings += warnings
