"""2D tensor-parallel operations as torch.autograd Functions (Optimus, Xu et al. 2021; SUMMA,
van de Geijn & Watts 1997). See `grid.py` for the block layout.

Matrix products over blocks, for A, B cut q×q and C the result:

- `summa_ab`   C = A·B:   for l: broadcast A[i,l] along the row, B[l,j] along the column; C[i,j] += A[i,l]·B[l,j]
- `summa_abt`  C = A·Bᵀ:  for l: broadcast B[l,j] along the column; A[i,j]·B[l,j]ᵀ reduced along the row to (i,l)
- `summa_atb`  C = Aᵀ·B:  for l: broadcast A[i,l] along the row; A[i,l]ᵀ·B[i,j] reduced along the column to (l,j)

with backward passes built from the same three (d(AB) → ABᵀ and AᵀB; d(ABᵀ) → AB and AᵀB). Every
collective goes through `torch.distributed` by attribute, so a `CommLedger` sees it.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from integration.tp2d.grid import Grid2D


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])


def _recv_like(local: torch.Tensor, mine: bool) -> torch.Tensor:
    return local.contiguous() if mine else torch.empty_like(local, memory_format=torch.contiguous_format)


# --- raw block products (no autograd) -------------------------------------------------------------


def _ab(a: torch.Tensor, b: torch.Tensor, grid: Grid2D) -> torch.Tensor:
    out = a.new_zeros(a.shape[0], b.shape[1])
    for step in range(grid.q):
        a_blk = _recv_like(a, grid.col == step)
        dist.broadcast(a_blk, src=grid.row_ranks[step], group=grid.row_group)
        b_blk = _recv_like(b, grid.row == step)
        dist.broadcast(b_blk, src=grid.col_ranks[step], group=grid.col_group)
        out.addmm_(a_blk, b_blk)
    return out


def _abt(a: torch.Tensor, b: torch.Tensor, grid: Grid2D) -> torch.Tensor:
    out = None
    for step in range(grid.q):
        b_blk = _recv_like(b, grid.row == step)
        dist.broadcast(b_blk, src=grid.col_ranks[step], group=grid.col_group)
        partial = a @ b_blk.t()
        dist.reduce(partial, dst=grid.row_ranks[step], group=grid.row_group)
        if grid.col == step:
            out = partial
    return out


def _atb(a: torch.Tensor, b: torch.Tensor, grid: Grid2D) -> torch.Tensor:
    out = None
    for step in range(grid.q):
        a_blk = _recv_like(a, grid.col == step)
        dist.broadcast(a_blk, src=grid.row_ranks[step], group=grid.row_group)
        partial = a_blk.t() @ b
        dist.reduce(partial, dst=grid.col_ranks[step], group=grid.col_group)
        if grid.row == step:
            out = partial
    return out


# --- autograd ---------------------------------------------------------------------------------


class _SummaAB(torch.autograd.Function):
    """x[..., in/q] (token block i, in block j) · w[in/q, out/q] → [..., out/q]."""

    @staticmethod
    def forward(ctx, x, w, grid):
        ctx.grid = grid
        ctx.shape = x.shape
        x2 = _flat(x).contiguous()
        ctx.save_for_backward(x2, w)
        return _ab(x2, w.contiguous(), grid).reshape(*x.shape[:-1], w.shape[1])

    @staticmethod
    def backward(ctx, grad):
        x2, w = ctx.saved_tensors
        g2 = _flat(grad).contiguous()
        dx = dw = None
        if ctx.needs_input_grad[0]:
            dx = _abt(g2, w.contiguous(), ctx.grid).reshape(ctx.shape)
        if ctx.needs_input_grad[1]:
            dw = _atb(x2, g2, ctx.grid)
        return dx, dw, None


class _SummaABT(torch.autograd.Function):
    """x[..., h/q] (token block i, hidden block j) · e[n/q, h/q]ᵀ → [..., n/q] (token block i, n block j)."""

    @staticmethod
    def forward(ctx, x, e, grid):
        ctx.grid = grid
        ctx.shape = x.shape
        x2 = _flat(x).contiguous()
        ctx.save_for_backward(x2, e)
        return _abt(x2, e.contiguous(), grid).reshape(*x.shape[:-1], e.shape[0])

    @staticmethod
    def backward(ctx, grad):
        x2, e = ctx.saved_tensors
        g2 = _flat(grad).contiguous()
        dx = de = None
        if ctx.needs_input_grad[0]:
            dx = _ab(g2, e.contiguous(), ctx.grid).reshape(ctx.shape)
        if ctx.needs_input_grad[1]:
            de = _atb(g2, x2, ctx.grid)
        return dx, de, None


def summa_ab(x: torch.Tensor, w: torch.Tensor, grid: Grid2D) -> torch.Tensor:
    """Block of X·W for X[tokens, in] and W[in, out] in the 2D layout."""
    return _SummaAB.apply(x, w, grid)


def summa_abt(x: torch.Tensor, e: torch.Tensor, grid: Grid2D) -> torch.Tensor:
    """Block of X·Eᵀ for X[tokens, h] and E[n, h] in the 2D layout (the tied output projection)."""
    return _SummaABT.apply(x, e, grid)


class _GatherColumn(torch.autograd.Function):
    """A vector parameter's pieces → its block for this column (all-gather over the column group).
    Every rank of the column uses the block on its own tokens, so the gradients are summed over the
    column and each rank keeps its piece (reduce-scatter)."""

    @staticmethod
    def forward(ctx, piece, grid):
        ctx.grid = grid
        parts = [torch.empty_like(piece) for _ in range(grid.q)]
        dist.all_gather(parts, piece.contiguous(), group=grid.col_group)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grid = ctx.grid
        out = torch.empty_like(grad.chunk(grid.q)[0])
        dist.reduce_scatter(out, [c.contiguous() for c in grad.chunk(grid.q)], group=grid.col_group)
        return out, None


def gather_column(piece: torch.Tensor, grid: Grid2D) -> torch.Tensor:
    return _GatherColumn.apply(piece, grid)


class _ReduceScatterBatch(torch.autograd.Function):
    """Partial sums over the column group, full batch [b, ...] → summed token block [b/q, ...] for
    this grid row. Backward: all-gather the token blocks."""

    @staticmethod
    def forward(ctx, x, grid):
        ctx.grid = grid
        parts = [c.contiguous() for c in x.chunk(grid.q, dim=0)]
        out = torch.empty_like(parts[0])
        dist.reduce_scatter(out, parts, group=grid.col_group)
        return out

    @staticmethod
    def backward(ctx, grad):
        grid = ctx.grid
        parts = [torch.empty_like(grad) for _ in range(grid.q)]
        dist.all_gather(parts, grad.contiguous(), group=grid.col_group)
        return torch.cat(parts, dim=0), None


def reduce_scatter_batch(x: torch.Tensor, grid: Grid2D) -> torch.Tensor:
    return _ReduceScatterBatch.apply(x, grid)


class _GatherBatch(torch.autograd.Function):
    """Token blocks → the full batch on every rank (all-gather over the column group), for values
    that are already identical along the row (per-token losses). Every rank then computes the same
    function of the full batch, so backward keeps this row's block of the gradient."""

    @staticmethod
    def forward(ctx, x, grid):
        ctx.grid = grid
        parts = [torch.empty_like(x) for _ in range(grid.q)]
        dist.all_gather(parts, x.contiguous(), group=grid.col_group)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad):
        return grad.chunk(ctx.grid.q, dim=0)[ctx.grid.row].contiguous(), None


def gather_batch(x: torch.Tensor, grid: Grid2D) -> torch.Tensor:
    return _GatherBatch.apply(x, grid)


class _Normalize(torch.autograd.Function):
    """(x - mean) / sqrt(var + eps) over the full hidden dimension, which is split over the row."""

    @staticmethod
    def forward(ctx, x, hidden, eps, grid):
        ctx.grid, ctx.hidden = grid, hidden
        total = x.sum(-1, keepdim=True)
        dist.all_reduce(total, group=grid.row_group)
        centered = x - total / hidden
        sq = centered.square().sum(-1, keepdim=True)
        dist.all_reduce(sq, group=grid.row_group)
        rstd = torch.rsqrt(sq / hidden + eps)
        xhat = centered * rstd
        ctx.save_for_backward(xhat, rstd)
        return xhat

    @staticmethod
    def backward(ctx, grad):
        xhat, rstd = ctx.saved_tensors
        sums = torch.cat([grad.sum(-1, keepdim=True), (grad * xhat).sum(-1, keepdim=True)], dim=-1)
        dist.all_reduce(sums, group=ctx.grid.row_group)
        mean_g, mean_gx = (sums / ctx.hidden).split(1, dim=-1)
        return rstd * (grad - mean_g - xhat * mean_gx), None, None, None


def normalize(x: torch.Tensor, hidden: int, eps: float, grid: Grid2D) -> torch.Tensor:
    return _Normalize.apply(x, hidden, eps, grid)


class _VocabCrossEntropy(torch.autograd.Function):
    """Per-token cross entropy of logits [..., v/q] (token block i, vocab block j) against labels
    [...] (global ids, this token block). Max, target logit and sum of exponentials are reduced over
    the row group; the result is the same on every rank of the row."""

    @staticmethod
    def forward(ctx, logits, labels, grid):
        part = logits.shape[-1]
        start = grid.col * part
        ctx.dtype = logits.dtype
        logits = logits.float()
        peak = logits.max(dim=-1).values
        dist.all_reduce(peak, op=dist.ReduceOp.MAX, group=grid.row_group)
        shifted = logits - peak.unsqueeze(-1)
        local = labels - start
        outside = (local < 0) | (local >= part)
        local = local.masked_fill(outside, 0)
        target = shifted.gather(-1, local.unsqueeze(-1)).squeeze(-1).masked_fill(outside, 0.0)
        exp = shifted.exp()
        sums = torch.stack([target, exp.sum(-1)], dim=-1)
        dist.all_reduce(sums, group=grid.row_group)
        target, total = sums.unbind(-1)
        ctx.save_for_backward(exp / total.unsqueeze(-1), local, outside)
        return total.log() - target

    @staticmethod
    def backward(ctx, grad):
        softmax, local, outside = ctx.saved_tensors
        one_hot = torch.zeros_like(softmax).scatter_(-1, local.unsqueeze(-1), 1.0)
        one_hot.masked_fill_(outside.unsqueeze(-1), 0.0)
        return ((softmax - one_hot) * grad.unsqueeze(-1)).to(ctx.dtype), None, None


def vocab_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, grid: Grid2D) -> torch.Tensor:
    return _VocabCrossEntropy.apply(logits, labels, grid)


class _SumOverGroup(torch.autograd.Function):
    """All-reduce (sum) forward, identity backward: for a sum every rank of the group then uses
    identically, so each rank's part receives the common gradient once."""

    @staticmethod
    def forward(ctx, x, group):
        x = x.clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def vocab_logsumexp(logits: torch.Tensor, grid: Grid2D) -> torch.Tensor:
    """log Σ_v exp(logits) over the full vocabulary from a block [..., v/q] (vocabulary split over
    the row); the result is identical on every rank of the row."""
    logits = logits.float()
    shift = logits.detach().amax(dim=-1, keepdim=True)
    dist.all_reduce(shift, op=dist.ReduceOp.MAX, group=grid.row_group)
    total = _SumOverGroup.apply((logits - shift).exp().sum(dim=-1), grid.row_group)
    return total.log() + shift.squeeze(-1)


def z_loss(logits: torch.Tensor, loss_mask: torch.Tensor, coefficient: float, grid: Grid2D) -> torch.Tensor:
    """PaLM's c · masked mean of logsumexp² for logits [b/q, s, v/q] and the full loss mask [b, s]:
    each row sums its token block, the column group adds the rows."""
    lse = vocab_logsumexp(logits, grid)
    mask = loss_mask.chunk(grid.q, dim=0)[grid.row].to(lse.dtype)
    partial = (lse.square() * mask).sum()
    total = _SumOverGroup.apply(partial, grid.col_group)
    return coefficient * total / loss_mask.to(lse.dtype).sum().clamp(min=1)
