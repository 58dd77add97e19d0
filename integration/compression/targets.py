"""Which weight matrices of the GPT model a compression technique acts on. No torch: validation
uses it before any process exists, and the runtime checks the built model against it.

The compressible matrices are the transformer linear layers Megatron-Core builds as
ColumnParallelLinear (`linear_qkv`, `linear_fc1`: output rows split over tensor parallel) and
RowParallelLinear (`linear_proj`, `linear_fc2`: input columns split). Shapes are the full,
unsharded ones [rows = outputs, columns = inputs].
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from integration.config.schema import CompressionConfig, ModelConfig
from integration.model_size import ffn_size, query_groups


@dataclass(frozen=True)
class LinearTarget:
    name: str
    """Module name inside Megatron-Core's GPTModel, e.g. decoder.layers.0.mlp.linear_fc1."""
    rows: int
    columns: int
    partition_dim: int
    """0: rows split over tensor parallel (column-parallel), 1: columns split (row-parallel)."""


def compressible_linears(model: ModelConfig) -> list[LinearTarget]:
    h = model.hidden_size
    head_dim = h // model.num_attention_heads
    qkv_rows = (model.num_attention_heads + 2 * query_groups(model)) * head_dim
    ffn = ffn_size(model)
    fc1_rows = 2 * ffn if model.activation == "swiglu" else ffn
    targets = []
    for layer in range(model.num_layers):
        prefix = f"decoder.layers.{layer}"
        targets += [
            LinearTarget(f"{prefix}.self_attention.linear_qkv", qkv_rows, h, 0),
            LinearTarget(f"{prefix}.self_attention.linear_proj", h, model.num_attention_heads * head_dim, 1),
            LinearTarget(f"{prefix}.mlp.linear_fc1", fc1_rows, h, 0),
            LinearTarget(f"{prefix}.mlp.linear_fc2", h, ffn, 1),
        ]
    return targets


def invalid_patterns(patterns: list[str]) -> list[str]:
    bad = []
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error:
            bad.append(pattern)
    return bad


def matching(names: list[str], patterns: list[str]) -> list[str]:
    """The names in which one of the patterns is found (DeepSpeed's `re.search` rule)."""
    compiled = [re.compile(p) for p in patterns]
    return [name for name in names if any(c.search(name) for c in compiled)]


def describe(config: CompressionConfig, model: ModelConfig) -> str | None:
    """One line for the dry-run plan; None without compression."""
    wq, sp = config.weight_quantization, config.sparse_pruning
    names = [t.name for t in compressible_linears(model)]
    parts = []
    if wq.enabled:
        parts.append(
            f"weights {wq.target_bits}-bit {wq.quantization_type} ({wq.quantize_groups} group(s) per matrix) "
            f"from step {wq.schedule_offset + 1} on {len(matching(names, wq.modules))} matrices"
        )
    if sp.enabled:
        parts.append(
            f"{sp.method} pruning to {sp.dense_ratio:g} dense at step {sp.schedule_offset + 1} on "
            f"{len(matching(names, sp.modules))} matrices"
        )
    return f"{config.name}: " + "; ".join(parts) if parts else None
