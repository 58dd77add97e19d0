"""Pipeline parallelism (pp > 1) on DeepSpeed's pipeline engine.

Megatron-Core's own pipeline schedules are CUDA-only, so the stages are a DeepSpeed
PipelineModule — but built from the same Megatron-Core modules as GPTModel (pp = 1): the
vocab-parallel LanguageModelEmbedding, transformer layers from the same layer spec (same seeded
class, so layer n has the same weights wherever it sits), the same final norm class, a
ColumnParallelLinear output layer and vocab_parallel_cross_entropy. Tied embeddings are a DeepSpeed
TiedLayerSpec shared by the first and last stage; DeepSpeed all-reduces the tied gradient.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import parallel_state, tensor_parallel
from megatron.core.models.common.embeddings.language_model_embedding import LanguageModelEmbedding
from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.spec_utils import ModuleSpec, build_module
from megatron.core.transformer.transformer_block import LayerNormImpl

from integration.config.schema import ModelConfig, OptimConfig, ParallelConfig, StabilityConfig
from integration.cpu_compat import apply_cpu_patches
from integration.data import BatchSampler, Datasets, collate
from integration.layout import Layout
from integration.model import TORCH_DTYPES, layer_spec, parameter_groups, transformer_config
from integration.stability.gate import StepGate
from integration.stability.hooks import install_model_hooks
from integration.stability.losses import z_loss
from integration.trainer import PreClipGradNorm, StepResult, fp16_loss_scale, masked_mean


class EmbeddingPipe(torch.nn.Module):
    """First stage: (tokens, position_ids) -> hidden [s, b, h]. When tied, the last stage holds a
    copy whose word-embedding weight DeepSpeed keeps equal to the first stage's, and uses it as
    the output layer through `lm_head`."""

    def __init__(self, config: TransformerConfig, model: ModelConfig, vocab_size: int, seed: int, tied: bool):
        super().__init__()
        torch.manual_seed(seed)  # as GPTModel: the embedding is built first from the base seed
        self.embedding = LanguageModelEmbedding(
            config=config,
            vocab_size=vocab_size,
            max_sequence_length=model.max_position_embeddings or model.seq_length,
            position_embedding_type=model.position_embedding_type,
        )
        self.output_layer = _output_layer(config, vocab_size, skip_weight=True) if tied else None

    def forward(self, inputs):
        tokens, position_ids = inputs
        return self.embedding(input_ids=tokens, position_ids=position_ids)

    def lm_head(self, hidden):
        logits, _ = self.output_layer(hidden, weight=self.embedding.word_embeddings.weight)
        return logits

    def gpt_model_path(self) -> tuple[str, str]:
        return "embedding", "embedding"


def _tied_lm_head(module: EmbeddingPipe, hidden):
    return module.lm_head(hidden)


def _output_layer(config: TransformerConfig, vocab_size: int, skip_weight: bool):
    return tensor_parallel.ColumnParallelLinear(
        config.hidden_size,
        vocab_size,
        config=config,
        init_method=config.init_method,
        bias=False,
        skip_bias_add=False,
        gather_output=False,
        skip_weight_param_allocation=skip_weight,
    )


class TransformerLayerPipe(torch.nn.Module):
    """Megatron-Core transformer layer `layer_number` (global, 1-based) from the model's spec."""

    def __init__(self, config: TransformerConfig, spec: ModuleSpec, layer_number: int, model: ModelConfig):
        super().__init__()
        self.layer = build_module(spec, config=config, layer_number=layer_number)
        self.rotary = None
        if model.position_embedding_type == "rope":
            self.rotary = RotaryEmbedding(
                kv_channels=config.kv_channels,
                rotary_percent=1.0,
                rotary_base=model.rotary_base,
                use_cpu_initialization=True,
            )

    def forward(self, hidden):
        rotary = self.rotary(hidden.shape[0]) if self.rotary is not None else None
        out, _ = self.layer(hidden_states=hidden, attention_mask=None, rotary_pos_emb=rotary)
        return out

    def gpt_model_path(self) -> tuple[str, str]:
        return "layer", f"decoder.layers.{self.layer.layer_number - 1}"


class FinalNormPipe(torch.nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.norm = build_module(
            LayerNormImpl, config=config, hidden_size=config.hidden_size, eps=config.layernorm_epsilon
        )

    def forward(self, hidden):
        return self.norm(hidden)

    def gpt_model_path(self) -> tuple[str, str]:
        return "norm", "decoder.final_layernorm"


class OutputPipe(torch.nn.Module):
    """Untied output layer: hidden [s, b, h] -> vocab-parallel logits [s, b, v/tp]."""

    def __init__(self, config: TransformerConfig, vocab_size: int):
        super().__init__()
        self.output_layer = _output_layer(config, vocab_size, skip_weight=False)

    def forward(self, hidden):
        logits, _ = self.output_layer(hidden)
        return logits

    def gpt_model_path(self) -> tuple[str, str]:
        return "output_layer", "output_layer"


class LanguageModelLoss:
    """The last stage's loss function: masked mean token cross entropy from vocab-parallel logits
    [s, b, v/tp], as GPTModel computes it, plus the z-loss term while training. Keeps this step's
    sums so the trainer can report cross entropy and z-loss separately."""

    def __init__(self, z_loss_coefficient: float):
        self.z_loss = z_loss_coefficient
        self.reset()

    def reset(self) -> None:
        self.cross_entropy_sum = 0.0
        self.z_loss_sum = 0.0
        self.micro_batches = 0

    @property
    def wants_z_loss(self) -> bool:
        return self.z_loss > 0 and torch.is_grad_enabled()

    def terms(self, logits, tokens, loss_mask):
        """(masked mean cross entropy, z-loss term or None) of one micro-batch."""
        # First: the cross entropy below overwrites the logits with probabilities in place.
        z_term = z_loss(logits, loss_mask, self.z_loss) if self.wants_z_loss else None
        per_token = tensor_parallel.vocab_parallel_cross_entropy(logits, tokens.transpose(0, 1).contiguous())
        return masked_mean(per_token.transpose(0, 1), loss_mask), z_term

    def __call__(self, logits, labels):
        tokens, loss_mask = labels
        loss, z_term = self.terms(logits, tokens, loss_mask)
        self.cross_entropy_sum = self.cross_entropy_sum + loss.detach().float()
        self.micro_batches += 1
        if z_term is None:
            return loss
        self.z_loss_sum = self.z_loss_sum + z_term.detach()
        return loss + z_term


@dataclass(frozen=True)
class StageClasses:
    """The module classes the stages are built from, each taking the 1D class's constructor
    arguments plus `extra` as keywords, and each naming its GPTModel path (`gpt_model_path`)."""

    embedding: type
    layer: type
    final_norm: type
    output: type
    extra: dict[str, Any] = field(default_factory=dict)


MEGATRON_STAGES = StageClasses(EmbeddingPipe, TransformerLayerPipe, FinalNormPipe, OutputPipe)


def build_pipeline_module(
    model: ModelConfig,
    parallel: ParallelConfig,
    dtype: str,
    vocab_size: int,
    seed: int,
    layout: Layout,
    loss_fn: LanguageModelLoss,
    stages: StageClasses = MEGATRON_STAGES,
):
    from deepspeed.pipe import LayerSpec, PipelineModule, TiedLayerSpec
    from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology

    apply_cpu_patches()
    # Stage layers are built with pp = 1 so Megatron adds no offset of its own to layer numbers;
    # the global layer number is passed explicitly.
    config = transformer_config(model, parallel, dtype, pipeline_model_parallel_size=1)
    spec = layer_spec(model, seed)
    tied = model.share_embeddings_and_output_weights
    extra = stages.extra
    embed = (
        TiedLayerSpec(
            "embed",
            stages.embedding,
            config,
            model,
            vocab_size,
            seed,
            True,
            tied_weight_attr="embedding.word_embeddings.weight",
            **extra,
        )
        if tied
        else LayerSpec(stages.embedding, config, model, vocab_size, seed, False, **extra)
    )
    layers: list[Any] = [embed]
    layers += [
        LayerSpec(stages.layer, config, spec, n, model, **extra) for n in range(1, model.num_layers + 1)
    ]
    layers.append(LayerSpec(stages.final_norm, config, **extra))
    if tied:
        layers.append(
            TiedLayerSpec(
                "embed",
                stages.embedding,
                config,
                model,
                vocab_size,
                seed,
                True,
                forward_fn=_tied_lm_head,
                tied_weight_attr="embedding.word_embeddings.weight",
                **extra,
            )
        )
    else:
        layers.append(LayerSpec(stages.output, config, vocab_size, **extra))
    topology = PipeModelDataParallelTopology(
        num_pp=layout.pipeline_parallel, num_mp=layout.tensor_parallel, num_dp=layout.data_parallel
    )
    layer_class = stages.layer.__name__
    method = f"type:{layer_class}" if parallel.partition_method == "uniform" else parallel.partition_method
    module = PipelineModule(
        layers=layers,
        topology=topology,
        loss_fn=loss_fn,
        partition_method=method,
        activation_checkpoint_interval=parallel.activation_checkpoint_interval,
        # The embedding stage's inputs need no grad; reentrant checkpointing of it would break.
        checkpointable_layers=[layer_class],
    )
    check_topology_agrees(topology)
    if torch.cuda.is_available():
        module.cuda()
    return module.to(TORCH_DTYPES[dtype])


def dense_parameter_names(module) -> dict[str, str]:
    """This stage's parameter names (`tied_modules.embed.embedding...`, `3.layer...`) mapped to
    GPTModel's (`embedding...`, `decoder.layers.2...`): each stage module holds its GPTModel
    counterpart under one attribute (`gpt_model_path`), so only the path differs. Checkpoint
    conversion across layouts goes through these."""
    names = {}
    for prefix, part in module.named_modules():
        if not hasattr(part, "gpt_model_path"):
            continue
        attribute, dense = part.gpt_model_path()
        names.update(
            (f"{prefix}.{attribute}.{n}", f"{dense}.{n}")
            for n, _ in getattr(part, attribute).named_parameters()
        )
    unmapped = sorted({name for name, _ in module.named_parameters()} - set(names))
    if unmapped:
        raise RuntimeError(f"pipeline parameters with no GPTModel name: {unmapped}")
    return names


def check_topology_agrees(topology) -> None:
    """Every rank: DeepSpeed's pipeline topology and Megatron-Core's groups must put this rank in
    the same tensor, pipeline and data-parallel rank sets; otherwise gradients would be reduced over
    the wrong ranks, silently."""
    rank = dist.get_rank()
    pairs = {
        "tensor": ("model", parallel_state.get_tensor_model_parallel_group()),
        "pipeline": ("pipe", parallel_state.get_pipeline_model_parallel_group()),
        "data": ("data", parallel_state.get_data_parallel_group()),
    }
    for name, (axis, group) in pairs.items():
        megatron_ranks = sorted(dist.get_process_group_ranks(group))
        deepspeed_ranks = next(sorted(r) for r in topology.get_axis_comm_lists(axis) if rank in r)
        if megatron_ranks != deepspeed_ranks:
            raise RuntimeError(
                f"rank {rank}: {name}-parallel group differs — Megatron-Core {megatron_ranks}, "
                f"DeepSpeed topology {deepspeed_ranks}; the two rank orders disagree"
            )


class PipelineStep:
    """pp > 1: one `train_batch` of DeepSpeed's pipeline engine per step (1F1B over the
    gradient-accumulation micro-batches). The loss exists only on the last stage; before the
    optimizer step it is agreed over the whole world (stability gate), which also gives every
    rank the value to report."""

    def __init__(
        self,
        engine,
        datasets: Datasets,
        layout: Layout,
        data_parallel_rank: int,
        device,
        stability: StabilityConfig,
        loss_fn: LanguageModelLoss,
    ):
        self.engine = engine
        self.datasets = datasets
        self.layout = layout
        self.sampler = BatchSampler(layout, data_parallel_rank)
        self.device = device
        self.loss_fn = loss_fn
        self.is_logging_rank = dist.get_rank() == 0
        # Tied copies on the non-owning stage carry the same gradient; count it once.
        self.grad_norm = PreClipGradNorm(
            engine,
            lambda: (p for p in engine.module.parameters() if not getattr(p, "ds_pipe_replicated", False)),
        )
        self.gate = StepGate(engine, stability, self.grad_norm)
        self._agreed = (float("nan"), float("nan"))
        self._hook_optimizer_step()

    def _hook_optimizer_step(self) -> None:
        """The pipeline engine runs its optimizer step as the schedule's last instruction, looked up
        in a class-level map; an instance-level copy of the map routes it through the gate. Every
        stage reaches that instruction after its last backward pass and gradient reduction, so the
        world-wide loss reduction there cannot cross a pipeline send."""
        from deepspeed.runtime.pipe import schedule

        engine_class = type(self.engine)
        original = engine_class._INSTRUCTION_MAP[schedule.OptimizerStep]
        step_runner = self

        def optimizer_step(engine, lr_kwargs=None):
            step_runner._agreed = step_runner._agree_losses()
            step_runner.gate.before_update(step_runner._agreed[0])
            return original(engine, lr_kwargs=lr_kwargs)

        self.engine._INSTRUCTION_MAP = {
            **engine_class._INSTRUCTION_MAP,
            schedule.OptimizerStep: optimizer_step,
        }

    def _agree_losses(self) -> tuple[float, float]:
        """Mean cross entropy and z-loss of this step over data parallel, from the last stage's
        tensor rank 0 (the other tensor ranks hold the same values)."""
        fn = self.loss_fn
        owner = self.engine.is_last_stage() and parallel_state.get_tensor_model_parallel_rank() == 0
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        if owner and fn.micro_batches:
            sums[0] = torch.as_tensor(fn.cross_entropy_sum, dtype=torch.float64)
            sums[1] = torch.as_tensor(fn.z_loss_sum, dtype=torch.float64)
            sums[2] = fn.micro_batches
        dist.all_reduce(sums)
        return float(sums[0] / sums[2]), float(sums[1] / sums[2])

    @staticmethod
    def build(
        model: ModelConfig,
        parallel: ParallelConfig,
        optim: OptimConfig,
        dtype: str,
        vocab_size: int,
        ds_config: dict[str, Any],
        datasets: Datasets,
        layout: Layout,
        device,
        seed: int,
        stability: StabilityConfig,
    ) -> PipelineStep:
        import deepspeed

        from integration.engine import start_schedule

        if parallel.tensor_parallel_2d:
            from integration.tp2d.stages import stages_2d

            stages, loss_fn = stages_2d(stability.z_loss)
        else:
            stages, loss_fn = MEGATRON_STAGES, LanguageModelLoss(stability.z_loss)
        module = build_pipeline_module(model, parallel, dtype, vocab_size, seed, layout, loss_fn, stages)
        lookups = [
            part.embedding.word_embeddings for part in module.modules() if isinstance(part, stages.embedding)
        ]
        install_model_hooks(module, lookups, stability)
        groups = parameter_groups(module, optim.weight_decay, optim.no_decay_on_embeddings_norms_biases)
        engine, _, _, _ = deepspeed.initialize(model=module, model_parameters=groups, config=ds_config)
        start_schedule(engine)
        return PipelineStep(
            engine, datasets, layout, parallel_state.get_data_parallel_rank(), device, stability, loss_fn
        )

    def _micro_batches(self, dataset, step: int):
        for micro in range(self.layout.gradient_accumulation_steps):
            batch = collate(dataset, self.sampler.indices(step, micro), self.device)
            yield (batch["tokens"], batch["position_ids"]), (batch["labels"], batch["loss_mask"])

    def train_step(self, step: int, data_step: int) -> StepResult:
        lr = self.engine.get_lr()[0]
        self.loss_fn.reset()
        self.engine.train_batch(data_iter=self._micro_batches(self.datasets.train, data_step))
        outcome = self.gate.after_update()
        loss, z_term = self._agreed
        return StepResult(
            loss=loss,
            grad_norm=self.grad_norm.read(),
            lr=float(lr),
            loss_scale=fp16_loss_scale(self.engine),
            z_loss=z_term if self.loss_fn.z_loss > 0 else None,
            outcome=outcome,
        )

    @torch.no_grad()
    def eval_loss(self, iters: int) -> float:
        self.loss_fn.reset()
        for step in range(iters):
            self.engine.eval_batch(data_iter=self._micro_batches(self.datasets.valid, step))
        return self._agree_losses()[0]
