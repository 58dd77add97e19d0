"""Per-GPU memory of a 2D tensor-parallel layout (`parallel.tensor_parallel_2d`, integration/tp2d:
Optimus, Xu et al. 2021, "An Efficient 2D Method for Training Super-Large Deep Learning Models").
Its communication is in tensor_comm.py; everything else (ZeRO, data parallel, the optimizer step)
is the 1D model's, since the grid lives inside Megatron's tensor-parallel group and DeepSpeed sees
the same groups.

On a q×q grid (tp = q²) no parameter is replicated: each weight W[in, out] is cut into q×q blocks,
each vector (bias, LayerNorm gain) into q² pieces, so a rank holds 1/q² of every tensor — where 1D
replicates LayerNorms, position embeddings and the row-parallel biases. The activations are
[batch/q, seq, hidden/q] blocks, so every activation a layer keeps is 1/q² of the unsharded one —
where 1D keeps the LayerNorm inputs and outputs (the block inputs) whole on every rank.
"""

from __future__ import annotations

import math

from integration.config.schema import ModelConfig
from integration.model_size import ffn_size
from integration.planner.memory import (
    DEEPSPEED_BUCKETS,
    DTYPE_BYTES,
    ParamTensor,
    StageMemory,
    ZeroBuckets,
    logits_bytes,
    model_states,
    step_transient_bytes,
    zero_buffers,
)


def grid_side(tp: int) -> int:
    return math.isqrt(tp)


def parameters_2d(model: ModelConfig, vocab: int, q: int) -> tuple[ParamTensor, ...]:
    """The parameters one rank of the grid holds, in GPT2D's `named_parameters()` order (the order
    DeepSpeed flattens them in). AdamW groups as integration.model.parameter_groups: tensors of
    fewer than 2 dimensions and the embeddings without weight decay."""
    h, ffn, qq = model.hidden_size, ffn_size(model), q * q
    head_dim = h // model.num_attention_heads
    bias = model.add_bias_linear

    def layernorm(prefix: str) -> list[ParamTensor]:
        return [ParamTensor(f"{prefix}.weight", h // qq, True), ParamTensor(f"{prefix}.bias", h // qq, True)]

    def linear(prefix: str, fan_in: int, fan_out: int) -> list[ParamTensor]:
        out = [ParamTensor(f"{prefix}.weight", (fan_in // q) * (fan_out // q), False)]
        if bias:
            out.append(ParamTensor(f"{prefix}.bias", fan_out // qq, True))
        return out

    positions = model.max_position_embeddings or model.seq_length
    tensors = [
        ParamTensor("embedding.word_embeddings.weight", (vocab // q) * (h // q), True),
        ParamTensor("embedding.position_embeddings.weight", (positions // q) * (h // q), True),
    ]
    for n in range(model.num_layers):
        p = f"decoder.layers.{n}"
        tensors += layernorm(f"{p}.input_layernorm")
        tensors += linear(f"{p}.self_attention.linear_qkv", h, 3 * h)
        tensors += linear(f"{p}.self_attention.linear_proj", h, h)
        if model.qk_layernorm:  # replicated: plain nn.LayerNorm over one head
            for name in ("q_layernorm", "k_layernorm"):
                tensors += [
                    ParamTensor(f"{p}.self_attention.{name}.weight", head_dim, True),
                    ParamTensor(f"{p}.self_attention.{name}.bias", head_dim, True),
                ]
        tensors += layernorm(f"{p}.pre_mlp_layernorm")
        tensors += linear(f"{p}.mlp.linear_fc1", h, ffn)
        tensors += linear(f"{p}.mlp.linear_fc2", ffn, h)
    tensors += layernorm("decoder.final_layernorm")
    if not model.share_embeddings_and_output_weights:
        tensors.append(ParamTensor("output_layer.weight", (vocab // q) * (h // q), False))
    return tuple(tensors)


def layer_activation_bytes_2d(
    model: ModelConfig, micro_batch_size: int, q: int, flash_attention: bool, dtype: str
) -> float:
    """What one TransformerLayer2D keeps for backward per micro-batch, from the layer code
    (integration/tp2d/blocks.py, functional.py), each term on the rank's [b/q, s, ·/q] block:

    - each LayerNorm2D's normalised input (functional._Normalize saves x̂) and its output (the next
      Linear2D's saved input): 2 × 2 · sbh/q²
    - Q, K, V (the QKV output, saved by attention): 3 · sbh/q²
    - the attention output (the projection's saved input): sbh/q²
    - fc1's output (GELU's input) and GELU's output (fc2's saved input): 2 · s·b·ffn/q²
    - with QK-layernorm, the normalised Q and K the attention keeps (the norms' inputs are views of
      the QKV output): 2 · sbh/q², as in the 1D count
    - attention itself: with flash attention the fp32 log-sum-exp per query and head
      (4·a·s·b/q² bytes); unfused, the softmax probabilities a·s²·b/q² elements

    i.e. 16·sbh/q² elements for a 4h MLP: Korthikanti et al.'s 1D count without dropout with every
    term divided by tp = q², the same as Megatron's tensor + sequence parallelism. 2D has no dropout
    yet (validation refuses it), so no masks; per-token statistics (1/h of a term) are left out, as
    in the 1D model."""
    s, b, h = model.seq_length, micro_batch_size, model.hidden_size
    a, e = model.num_attention_heads, DTYPE_BYTES[dtype]
    ffn = ffn_size(model)
    elements = s * b * (2 * 2 * h + 3 * h + h + 2 * ffn + (2 * h if model.qk_layernorm else 0))
    scores = a * s * b * 4 if flash_attention else a * s * s * b * e
    return (elements * e + scores) / (q * q)


def stage_memory_2d(
    model: ModelConfig,
    vocab: int,
    tp: int,
    dp: int,
    zero_stage: int,
    offload: str,
    micro_batch_size: int,
    flash_attention: bool,
    dtype: str,
    buckets: ZeroBuckets = DEEPSPEED_BUCKETS,
    on_cpu: bool = False,
) -> StageMemory:
    """Peak bytes on one GPU of a 2D layout (one pipeline stage: 2D runs without pipeline
    parallelism). Model states and ZeRO buffers are DeepSpeed's for these tensors (memory.py); the
    cross entropy keeps its fp32 softmax of the [b/q, s, v/q] logits block, 4·s·b·v/q² bytes, the
    1D formula at t = q²."""
    q = grid_side(tp)
    tensors = parameters_2d(model, vocab, q)
    states = model_states(tensors, zero_stage, dp, dtype, offload)
    buffers = zero_buffers(tensors, zero_stage, dtype, buckets=buckets)
    activations = model.num_layers * layer_activation_bytes_2d(
        model, micro_batch_size, q, flash_attention, dtype
    )
    logits = logits_bytes(model, vocab, micro_batch_size, tp)
    step = step_transient_bytes(tensors, zero_stage, dp, dtype, offload, False, on_cpu)
    return StageMemory(0, states, buffers, activations, logits, step=step)
