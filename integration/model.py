"""Megatron-Core GPT built from the model group.

The one place that maps ModelConfig onto Megatron-Core's TransformerConfig and layer spec. On CPU
the core attention is torch's scaled_dot_product_attention (Megatron's stock DotProductAttention
allocates its score buffer on the current CUDA device); on a GPU the Transformer Engine spec is used
when Transformer Engine is installed, the stock local spec otherwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import ModuleSpec

from integration.config.schema import ModelConfig, ParallelConfig
from integration.cpu_compat import apply_cpu_patches

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class TorchSDPAttention(MegatronModule):
    """Core attention on torch SDPA, a drop-in for Megatron's DotProductAttention: same constructor,
    inputs [s, b, heads, head_dim] (keys/values may have fewer, grouped heads), output
    [s, b, heads·head_dim] for this tensor-parallel rank."""

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection=None,
    ):
        super().__init__(config=config)
        self.causal = attn_mask_type == AttnMaskType.causal
        self.dropout = config.attention_dropout if attention_dropout is None else attention_dropout
        self.softmax_scale = softmax_scale

    def forward(
        self,
        query,
        key,
        value,
        attention_mask,
        attn_mask_type=None,
        attention_bias=None,
        packed_seq_params=None,
    ):
        if attention_bias is not None or packed_seq_params is not None:
            raise NotImplementedError(
                "TorchSDPAttention supports neither attention_bias nor packed sequences"
            )
        seq, batch = query.shape[0], query.shape[1]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, heads, s, d]
        mask, causal = None, self.causal
        if attention_mask is not None:  # Megatron masks are True where attention is forbidden
            mask, causal = ~attention_mask, False
        dropout = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=dropout,
            is_causal=causal,
            scale=self.softmax_scale,
            enable_gqa=q.shape[1] != k.shape[1],
        )
        return out.permute(2, 0, 1, 3).reshape(seq, batch, -1)


def transformer_config(
    model: ModelConfig, parallel: ParallelConfig, dtype: str, pipeline_model_parallel_size: int | None = None
) -> TransformerConfig:
    """`pipeline_model_parallel_size` overrides the layout's pp: DeepSpeed's pipeline engine builds
    each stage's layers with pp=1 so Megatron adds no stage offset of its own to layer numbers."""
    on_gpu = torch.cuda.is_available()
    pp = (
        parallel.pipeline_model_parallel_size
        if pipeline_model_parallel_size is None
        else pipeline_model_parallel_size
    )
    swiglu = model.activation == "swiglu"
    return TransformerConfig(
        num_layers=model.num_layers,
        hidden_size=model.hidden_size,
        num_attention_heads=model.num_attention_heads,
        num_query_groups=model.num_query_groups,
        ffn_hidden_size=model.ffn_hidden_size or 4 * model.hidden_size,
        hidden_dropout=model.hidden_dropout,
        attention_dropout=model.attention_dropout,
        init_method_std=model.init_method_std,
        layernorm_epsilon=model.layernorm_epsilon,
        normalization=model.normalization,
        gated_linear_unit=swiglu,
        activation_func=F.silu if swiglu else F.gelu,
        add_bias_linear=model.add_bias_linear,
        qk_layernorm=model.qk_layernorm,
        tensor_model_parallel_size=parallel.tensor_model_parallel_size,
        pipeline_model_parallel_size=pp,
        sequence_parallel=parallel.sequence_parallel,
        params_dtype=TORCH_DTYPES[dtype],
        bf16=dtype == "bf16",
        fp16=dtype == "fp16",
        recompute_granularity=model.recompute_granularity,
        recompute_method="uniform" if model.recompute_granularity == "full" else None,
        recompute_num_layers=1 if model.recompute_granularity == "full" else None,
        # Tensor-parallel weights are initialised as one full matrix and then split, so every
        # layout starts from the same full weights; on CPU there is no other way.
        use_cpu_initialization=True,
        perform_initialization=True,
        # Fused kernels need CUDA (and some apex); the unfused paths compute the same function.
        bias_activation_fusion=on_gpu and not swiglu,
        masked_softmax_fusion=False,
        persist_layer_norm=False,
        gradient_accumulation_fusion=False,
        apply_rope_fusion=False,
    )


def layer_spec(model: ModelConfig, seed: int) -> ModuleSpec:
    """Megatron-Core's transformer-layer spec for this model, with per-layer seeding (see
    `seeded_layer`)."""
    spec = None
    if torch.cuda.is_available():
        try:
            import transformer_engine  # noqa: F401
            from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

            spec = get_gpt_layer_with_transformer_engine_spec(qk_layernorm=model.qk_layernorm)
        except ImportError:
            spec = None
    if spec is None:
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

        spec = get_gpt_layer_local_spec(qk_layernorm=model.qk_layernorm, normalization=model.normalization)
        if not torch.cuda.is_available():
            spec.submodules.self_attention.submodules.core_attention = TorchSDPAttention
    spec.module = seeded_layer(spec.module, seed)
    return spec


def layer_seed(seed: int, layer_number: int) -> int:
    return seed + 7919 * layer_number


def seeded_layer(layer_class: type, seed: int) -> type:
    """The layer class, reseeding torch before building layer n with a seed of (seed, n).

    Layer n then gets the same initial weights wherever it is built — inside GPTModel (pp = 1) or
    on any pipeline stage of any split — so every layout starts from the same full model."""

    class SeededLayer(layer_class):
        def __init__(self, config, submodules, layer_number: int = 1, *args, **kwargs):
            torch.manual_seed(layer_seed(seed, layer_number))
            super().__init__(config, submodules, layer_number, *args, **kwargs)

    SeededLayer.__name__ = SeededLayer.__qualname__ = f"Seeded{layer_class.__name__}"
    return SeededLayer


def build_gpt(
    model: ModelConfig, parallel: ParallelConfig, dtype: str, vocab_size: int, seed: int
) -> GPTModel:
    """A Megatron-Core GPTModel for this rank's tensor-parallel shard. Call after
    parallel_state.initialize_model_parallel, on every rank."""
    apply_cpu_patches()
    assert parallel_state.model_parallel_is_initialized(), "initialize model parallel groups first"
    torch.manual_seed(seed)  # the embedding's weights, as on the first pipeline stage
    gpt = GPTModel(
        config=transformer_config(model, parallel, dtype),
        transformer_layer_spec=layer_spec(model, seed),
        vocab_size=vocab_size,
        max_sequence_length=model.max_position_embeddings or model.seq_length,
        pre_process=True,
        post_process=True,
        share_embeddings_and_output_weights=model.share_embeddings_and_output_weights,
        position_embedding_type=model.position_embedding_type,
        rotary_base=model.rotary_base,
    )
    if torch.cuda.is_available():
        gpt.cuda()
    return gpt.to(TORCH_DTYPES[dtype])


def parameter_groups(module: torch.nn.Module, weight_decay: float, exempt: bool) -> list[dict]:
    """AdamW groups: biases, norm weights and embeddings get no weight decay when `exempt`."""
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        is_exempt = param.ndim < 2 or "embedding" in name
        (no_decay if exempt and is_exempt else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups
