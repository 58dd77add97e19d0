"""A GPT built from the 2D layers, with Megatron-Core's GPTModel math and module names: learned
word and position embeddings (summed), pre-LN transformer layers, a final LayerNorm, logits from
the (optionally tied) word embedding, per-token cross entropy.

Start from the same full weights as every other layout: `build_gpt2d` builds the project's
Megatron-Core GPTModel (1D tensor parallel over the same ranks, same seed), gathers each parameter
to its full shape and cuts it into this rank's 2D blocks.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from integration.config.schema import ModelConfig, ParallelConfig
from integration.tp2d.blocks import TransformerLayer2D
from integration.tp2d.grid import Grid2D, build_grid_from_megatron
from integration.tp2d.layers import Embedding2D, LayerNorm2D, Linear2D, VocabProjection2D, cross_entropy_2d


class LanguageModelEmbedding2D(nn.Module):
    """Megatron's learned word + position embedding: the full batch of ids in, [b/q, s, h/q] out."""

    def __init__(self, vocab: int, positions: int, hidden: int, grid: Grid2D, std: float):
        super().__init__()
        self.word_embeddings = Embedding2D(vocab, hidden, grid, std)
        self.position_embeddings = Embedding2D(positions, hidden, grid, std)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        return self.word_embeddings(input_ids) + self.position_embeddings(position_ids)


def transformer_layer_2d(model: ModelConfig, grid: Grid2D) -> TransformerLayer2D:
    """One transformer layer of the model in the 2D layout (random weights; load the full ones)."""
    std = model.init_method_std
    return TransformerLayer2D(
        model.hidden_size,
        model.num_attention_heads,
        model.ffn_hidden_size or 4 * model.hidden_size,
        grid,
        bias=model.add_bias_linear,
        eps=model.layernorm_epsilon,
        init_std=std,
        output_std=std / (2.0 * model.num_layers) ** 0.5,
        qk_layernorm=model.qk_layernorm,
    )


class _Decoder(nn.Module):
    def __init__(self, model: ModelConfig, grid: Grid2D):
        super().__init__()
        self.layers = nn.ModuleList(transformer_layer_2d(model, grid) for _ in range(model.num_layers))
        self.final_layernorm = LayerNorm2D(model.hidden_size, grid, model.layernorm_epsilon)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.final_layernorm(x)


class GPT2D(nn.Module):
    """Inputs are the full micro-batch on every rank of the grid (as tensor parallelism is fed);
    inside, activations are [batch/q, seq, hidden/q] blocks. Returns the full per-token loss [b, s]
    (or this rank's logits block [b/q, s, vocab/q] without labels), like Megatron's GPTModel."""

    def __init__(self, model: ModelConfig, vocab_size: int, grid: Grid2D):
        super().__init__()
        self.grid = grid
        positions = model.max_position_embeddings or model.seq_length
        self.embedding = LanguageModelEmbedding2D(
            vocab_size, positions, model.hidden_size, grid, model.init_method_std
        )
        self.decoder = _Decoder(model, grid)
        tied = self.embedding.word_embeddings if model.share_embeddings_and_output_weights else None
        self.output_layer = VocabProjection2D(
            vocab_size, model.hidden_size, grid, tied, model.init_method_std
        )

    def forward(self, input_ids, position_ids, attention_mask=None, labels=None):
        if attention_mask is not None:
            raise NotImplementedError("GPT2D applies a causal mask itself; pass attention_mask=None")
        hidden = self.decoder(self.embedding(input_ids, position_ids))
        logits = self.output_layer(hidden)
        if labels is None:
            return logits
        return cross_entropy_2d(logits, labels, self.grid)

    def load_full_state(self, full: dict[str, torch.Tensor]) -> None:
        """Full (unsharded) parameters under Megatron-Core GPTModel's names and conventions."""
        load_full_state(self, full)


@torch.no_grad()
def load_full_state(module: nn.Module, full: dict[str, torch.Tensor]) -> None:
    """Cut full (unsharded) parameters, named as the 2D module's own paths in Megatron-Core's
    conventions, into this rank's blocks. Every entry must be used."""
    used = set()

    def take(name: str) -> torch.Tensor:
        used.add(name)
        return full[name]

    for name, part in module.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(part, VocabProjection2D):
            if part.weight is not None:  # untied
                part.load_full(take(prefix + "weight"))
        elif isinstance(part, Embedding2D):
            part.load_full(take(prefix + "weight"))
        elif isinstance(part, (Linear2D, LayerNorm2D)):
            bias = take(prefix + "bias") if part.bias is not None else None
            part.load_full(take(prefix + "weight"), bias)
        elif isinstance(part, nn.LayerNorm):  # QK-layernorm, replicated
            part.weight.copy_(take(prefix + "weight"))
            part.bias.copy_(take(prefix + "bias"))
    unused = sorted(set(full) - used)
    if unused:
        raise ValueError(f"parameters with no 2D counterpart: {unused}")


def gather_full_parameters(module: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter of a Megatron-Core model at its full shape: tensor-parallel shards are
    all-gathered over the tensor-parallel group along their `partition_dim`. Collective."""
    from megatron.core import parallel_state

    group = parallel_state.get_tensor_model_parallel_group()
    tp = parallel_state.get_tensor_model_parallel_world_size()
    full = {}
    for name, param in module.named_parameters():
        data = param.detach()
        if tp > 1 and getattr(param, "tensor_model_parallel", False):
            parts = [torch.empty_like(data) for _ in range(tp)]
            dist.all_gather(parts, data.contiguous(), group=group)
            data = torch.cat(parts, dim=param.partition_dim)
        full[name] = data.clone()
    return full


def build_gpt2d(
    model: ModelConfig, parallel: ParallelConfig, dtype: str, vocab_size: int, seed: int
) -> GPT2D:
    """This rank's 2D shard of the project's GPT, initialised with exactly the full weights every
    other layout starts from. Call after parallel_state.initialize_model_parallel, on every rank."""
    from integration.model import TORCH_DTYPES, build_gpt

    grid = build_grid_from_megatron()
    reference = build_gpt(model, parallel, "fp32", vocab_size, seed)
    full = gather_full_parameters(reference)
    del reference
    gpt = GPT2D(model, vocab_size, grid)
    gpt.load_full_state(full)
    if torch.cuda.is_available():
        gpt.cuda()
    return gpt.to(TORCH_DTYPES[dtype])
