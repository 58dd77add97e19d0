"""Pipeline stages of 2D tensor parallelism: the modules DeepSpeed's pipeline engine runs when
`parallel.tensor_parallel_2d` and pp > 1 (`integration.pipeline` builds the PipelineModule from
them exactly as from the 1D stage modules).

Each 2D stage module first builds its 1D counterpart from `integration.pipeline` — same
constructor arguments, so the same seeds and the same draws of the random stream — gathers its
weights to their full shape over the tensor-parallel group and cuts them into this rank's 2D
blocks (as `GPT2D` does for the whole model). Layer n therefore starts from the same full weights
as in every other layout, on whichever stage it sits. The 2D layers' own random initialisation
runs on a forked stream, so the modules built after them (an untied output layer) draw what they
draw in the 1D pipeline.

Between stages travels each rank's [b/q, s, h/q] block, from a rank to the rank at the same grid
coordinate of the next stage (DeepSpeed's topology and Megatron's groups agree; the grid is cut
from Megatron's tensor-parallel groups, one per stage). The blocks differ across the tensor group,
so DeepSpeed's `pipe_partitioned`/`grad_partitioned`, which cut one replicated activation over the
tensor group and all-gather it on the next stage, are switched off (`integration.ds_config`).
"""

from __future__ import annotations

import torch
from torch import nn

from integration.pipeline import (
    EmbeddingPipe,
    FinalNormPipe,
    LanguageModelLoss,
    OutputPipe,
    StageClasses,
    TransformerLayerPipe,
)
from integration.tp2d import functional as f2d
from integration.tp2d.gpt import (
    LanguageModelEmbedding2D,
    gather_full_parameters,
    load_full_state,
    transformer_layer_2d,
)
from integration.tp2d.grid import Grid2D, build_grid_from_megatron
from integration.tp2d.layers import LayerNorm2D, VocabProjection2D, cross_entropy_2d
from integration.trainer import masked_mean


def _cut_from(stage_2d: nn.Module, stage_1d: nn.Module) -> None:
    """Load the 1D stage module's weights, gathered to full shape, into the 2D one (same paths)."""
    load_full_state(stage_2d, gather_full_parameters(stage_1d))


class EmbeddingPipe2D(nn.Module):
    """First stage (and, tied, the last stage's output projection): the full micro-batch of
    (tokens, position_ids) on every grid rank → [b/q, s, h/q]."""

    def __init__(self, config, model, vocab_size: int, seed: int, tied: bool, *, grid: Grid2D):
        super().__init__()
        reference = EmbeddingPipe(config, model, vocab_size, seed, tied)
        with torch.random.fork_rng(devices=[]):
            positions = model.max_position_embeddings or model.seq_length
            self.embedding = LanguageModelEmbedding2D(
                vocab_size, positions, model.hidden_size, grid, model.init_method_std
            )
            self.output_layer = (
                VocabProjection2D(vocab_size, model.hidden_size, grid, self.embedding.word_embeddings)
                if tied
                else None
            )
        _cut_from(self, reference)

    def forward(self, inputs):
        tokens, position_ids = inputs
        return self.embedding(tokens, position_ids)

    def lm_head(self, hidden):
        """Logits block [b/q, s, v/q] from the (tied) word-embedding blocks."""
        return self.output_layer(hidden)

    def gpt_model_path(self) -> tuple[str, str]:
        return "embedding", "embedding"


class TransformerLayerPipe2D(nn.Module):
    """Transformer layer `layer_number` (global, 1-based) in the 2D layout."""

    def __init__(self, config, spec, layer_number: int, model, *, grid: Grid2D):
        super().__init__()
        reference = TransformerLayerPipe(config, spec, layer_number, model)
        self.layer_number = layer_number
        with torch.random.fork_rng(devices=[]):
            self.layer = transformer_layer_2d(model, grid)
        _cut_from(self, reference)

    def forward(self, hidden):
        return self.layer(hidden)

    def gpt_model_path(self) -> tuple[str, str]:
        return "layer", f"decoder.layers.{self.layer_number - 1}"


class FinalNormPipe2D(nn.Module):
    def __init__(self, config, *, grid: Grid2D):
        super().__init__()
        reference = FinalNormPipe(config)
        self.norm = LayerNorm2D(config.hidden_size, grid, config.layernorm_epsilon)
        _cut_from(self, reference)

    def forward(self, hidden):
        return self.norm(hidden)

    def gpt_model_path(self) -> tuple[str, str]:
        return "norm", "decoder.final_layernorm"


class OutputPipe2D(nn.Module):
    """Untied output projection: [b/q, s, h/q] → logits block [b/q, s, v/q]."""

    def __init__(self, config, vocab_size: int, *, grid: Grid2D):
        super().__init__()
        reference = OutputPipe(config, vocab_size)
        with torch.random.fork_rng(devices=[]):
            self.output_layer = VocabProjection2D(vocab_size, config.hidden_size, grid)
        _cut_from(self, reference)

    def forward(self, hidden):
        return self.output_layer(hidden)

    def gpt_model_path(self) -> tuple[str, str]:
        return "output_layer", "output_layer"


class LanguageModelLoss2D(LanguageModelLoss):
    """The last stage's loss from the logits block [b/q, s, v/q] and the full micro-batch of labels
    and loss mask: the 2D cross entropy gathers the per-token loss of the whole micro-batch, so every
    grid rank holds the same full-batch loss (as `Dense2DStep`); the z-loss is reduced over the
    grid."""

    def __init__(self, z_loss_coefficient: float, grid: Grid2D):
        super().__init__(z_loss_coefficient)
        self.grid = grid

    def terms(self, logits, tokens, loss_mask):
        z_term = f2d.z_loss(logits, loss_mask, self.z_loss, self.grid) if self.wants_z_loss else None
        return masked_mean(cross_entropy_2d(logits, tokens, self.grid), loss_mask), z_term


def stages_2d(z_loss_coefficient: float) -> tuple[StageClasses, LanguageModelLoss2D]:
    """The 2D stage classes and loss over this rank's grid. Collective (creates the grid's row and
    column groups of every tensor-parallel group): call on every rank, after
    parallel_state.initialize_model_parallel."""
    grid = build_grid_from_megatron()
    stages = StageClasses(
        EmbeddingPipe2D, TransformerLayerPipe2D, FinalNormPipe2D, OutputPipe2D, extra={"grid": grid}
    )
    return stages, LanguageModelLoss2D(z_loss_coefficient, grid)
