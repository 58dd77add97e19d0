"""2D tensor-parallel layers (Optimus). Activations are [batch/q, ..., features/q] blocks: the batch
split over grid rows, the feature dimension over grid columns (see `grid.py`).

Every parameter is a shard owned by exactly one rank of the grid (`tensor_model_parallel = True`),
so DeepSpeed's gradient norm and ZeRO count each element once and no gradient needs an extra
reduction inside the tensor-parallel group. Each layer loads full (unsharded) weights in the
convention of its torch counterpart with `load_full`, which is how initialisation from a reference
model and the exactness tests work.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from integration.tp2d import functional as f2d
from integration.tp2d.grid import Grid2D, block, vector_piece


def _check_divides(name: str, size: int, by: int) -> None:
    if size % by:
        raise ValueError(f"{name} {size} is not divisible by {by} (2D tensor parallelism)")


def _shard_parameter(data: torch.Tensor) -> nn.Parameter:
    param = nn.Parameter(data)
    param.tensor_model_parallel = True
    # Not a Megatron-Core cut (no single partition_dim): checkpoint manifests record it as a block.
    param.grid_block_2d = True
    return param


class Linear2D(nn.Module):
    """y = x·W + b with W[in, out] cut q×q (rank (i, j) holds W[in block i, out block j]) and b cut
    in q² pieces. Forward: q row broadcasts of x blocks and q column broadcasts of W blocks (SUMMA)."""

    def __init__(self, in_features: int, out_features: int, grid: Grid2D, bias: bool = True, init_std=0.02):
        super().__init__()
        q = grid.q
        _check_divides("in_features", in_features, q)
        _check_divides("out_features", out_features, q * q if bias else q)
        self.grid, self.in_features, self.out_features = grid, in_features, out_features
        self.weight = _shard_parameter(torch.empty(in_features // q, out_features // q))
        self.bias = _shard_parameter(torch.zeros(out_features // (q * q))) if bias else None
        full = torch.empty(out_features, in_features)
        nn.init.normal_(full, std=init_std)
        self.load_full(full, torch.zeros(out_features) if bias else None)

    @torch.no_grad()
    def load_full(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        """weight [out, in] (nn.Linear's convention), bias [out]."""
        self.weight.copy_(block(weight.t(), self.grid))
        if self.bias is not None and bias is not None:
            self.bias.copy_(vector_piece(bias, self.grid))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = f2d.summa_ab(x, self.weight, self.grid)
        if self.bias is not None:
            y = y + f2d.gather_column(self.bias, self.grid)
        return y


class LayerNorm2D(nn.Module):
    """LayerNorm over the hidden dimension split across the row: mean and variance all-reduced over
    the row group; gain and bias gathered over the column group."""

    def __init__(self, hidden: int, grid: Grid2D, eps: float = 1e-5):
        super().__init__()
        _check_divides("hidden size", hidden, grid.q * grid.q)
        self.grid, self.hidden, self.eps = grid, hidden, eps
        self.weight = _shard_parameter(torch.ones(hidden // grid.size))
        self.bias = _shard_parameter(torch.zeros(hidden // grid.size))

    @torch.no_grad()
    def load_full(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        self.weight.copy_(vector_piece(weight, self.grid))
        self.bias.copy_(vector_piece(bias, self.grid))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xhat = f2d.normalize(x, self.hidden, self.eps, self.grid)
        return xhat * f2d.gather_column(self.weight, self.grid) + f2d.gather_column(self.bias, self.grid)


class Embedding2D(nn.Module):
    """Vocabulary-parallel and hidden-split lookup: rank (i, j) holds E[vocab block i, hidden block j].
    Every rank looks up the full batch of ids in its vocabulary block; the column group reduce-scatters
    the partial rows so rank (i, j) ends with batch block i, hidden block j."""

    def __init__(self, num_embeddings: int, dim: int, grid: Grid2D, init_std: float = 0.02):
        super().__init__()
        _check_divides("num_embeddings", num_embeddings, grid.q)
        _check_divides("embedding dim", dim, grid.q)
        self.grid, self.num_embeddings, self.dim = grid, num_embeddings, dim
        self.part = num_embeddings // grid.q
        self.start = grid.row * self.part
        self.weight = _shard_parameter(torch.empty(self.part, dim // grid.q))
        full = torch.empty(num_embeddings, dim)
        nn.init.normal_(full, std=init_std)
        self.load_full(full)

    @torch.no_grad()
    def load_full(self, weight: torch.Tensor) -> None:
        """weight [num_embeddings, dim]."""
        self.weight.copy_(block(weight, self.grid))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids: the full batch [b, ...] (b divisible by q) → [b/q, ..., dim/q]."""
        local = ids - self.start
        outside = (local < 0) | (local >= self.part)
        rows = F.embedding(local.masked_fill(outside, 0), self.weight)
        rows = rows.masked_fill(outside.unsqueeze(-1), 0.0)
        return f2d.reduce_scatter_batch(rows, self.grid)


class VocabProjection2D(nn.Module):
    """Logits x·Eᵀ for E[vocab, hidden] in Embedding2D's layout (tied: pass the embedding; untied: a
    weight of its own). Output: batch block i, vocabulary block j."""

    def __init__(self, vocab: int, hidden: int, grid: Grid2D, tied: Embedding2D | None = None, init_std=0.02):
        super().__init__()
        _check_divides("vocabulary", vocab, grid.q)
        _check_divides("hidden size", hidden, grid.q)
        self.grid = grid
        self._tied = (tied,)  # a tuple, so the embedding is not registered twice as a submodule
        self.weight = None
        if tied is None:
            full = torch.empty(vocab, hidden)
            nn.init.normal_(full, std=init_std)
            self.weight = _shard_parameter(block(full, grid))

    @torch.no_grad()
    def load_full(self, weight: torch.Tensor) -> None:
        """weight [vocab, hidden] (untied only)."""
        self.weight.copy_(block(weight, self.grid))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tied = self._tied[0]
        weight = tied.weight if tied is not None else self.weight
        return f2d.summa_abt(x, weight, self.grid)


def cross_entropy_2d(logits: torch.Tensor, labels: torch.Tensor, grid: Grid2D) -> torch.Tensor:
    """Per-token loss for logits [b/q, ..., v/q] and the full batch of labels [b, ...]; returns the
    full [b, ...] per-token loss, identical on every rank of the grid."""
    mine = labels.chunk(grid.q, dim=0)[grid.row]
    per_token = f2d.vocab_cross_entropy(logits, mine, grid)
    return f2d.gather_batch(per_token, grid)
