"""The dry-run plan: resolved layout, rank groups, DeepSpeed config and parameter count."""

from __future__ import annotations

import json

from integration.compression.targets import describe
from integration.config.schema import ModelConfig, TrainConfig
from integration.ds_config import build_deepspeed_config
from integration.layout import Layout
from integration.model_size import padded_vocab_size, parameter_count
from integration.tokenizer import tokenizer_vocab_size


def model_vocab_size(model: ModelConfig, tokenizer: str, data_vocab_size: int | None) -> int:
    """Padded vocabulary the model is built with."""
    vocab = model.vocab_size or tokenizer_vocab_size(tokenizer, data_vocab_size)
    return padded_vocab_size(vocab, model.make_vocab_size_divisible_by)


def _groups(name: str, groups: list[list[int]], limit: int = 8) -> str:
    shown = ", ".join(str(g) for g in groups[:limit])
    more = f", … ({len(groups)} groups)" if len(groups) > limit else ""
    return f"  {name:<9}{shown}{more}"


def _compression_lines(config: TrainConfig) -> list[str]:
    line = describe(config.compression, config.model)
    return [f"  compress  {line}"] if line else []


def render_plan(config: TrainConfig, layout: Layout, warnings: list[str]) -> str:
    vocab = model_vocab_size(config.model, config.data.tokenizer, config.data.vocab_size)
    params = parameter_count(config.model, vocab)
    ds_config = build_deepspeed_config(
        layout,
        config.parallel,
        config.optim,
        config.precision,
        config.trainer.max_steps,
        offload=config.offload,
        comm=config.comm,
    )
    lines = [
        f"plan for run {config.run.name!r} -> {config.run.dir}",
        f"  model     {config.model.name}: {params:,} parameters ({params / 1e6:.1f} M), "
        f"vocabulary {vocab} (padded), sequence {config.model.seq_length}",
        f"  layout    {layout.describe()}",
        f"  cluster   {config.cluster.name}: {config.cluster.num_nodes} node(s) × "
        f"{config.cluster.gpus_per_node} {config.cluster.device} process(es), backend {config.cluster.backend}",
        f"  engine    {'DeepSpeed pipeline engine' if layout.pipeline_parallel > 1 else 'DeepSpeed engine'}, "
        f"ZeRO {config.parallel.zero_stage}, {config.precision.dtype}",
        *_compression_lines(config),
        "rank groups (global ranks):",
        _groups("tensor", layout.tensor_groups()),
        _groups("pipeline", layout.pipeline_groups()),
        _groups("data", layout.data_groups()),
        "DeepSpeed config:",
        json.dumps(ds_config, indent=2),
    ]
    lines += [f"warning: {w}" for w in warnings]
    return "\n".join(lines)
