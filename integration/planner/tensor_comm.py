"""The collectives tensor parallelism issues per micro-batch, listed call by call: Megatron-Core's 1D
layers and the 2D (Optimus/SUMMA) layers of integration/tp2d. Each list mirrors the code that
issues it, and is checked against `integration.tp2d.CommLedger`'s count of a real gpt_tiny forward
and backward on 4 processes (tests/distributed/test_planner_tp_comm.py): bytes and calls equal.

A `Collective` carries what the ledger records: operation, group, group size p and payload n (the
reduced or broadcast tensor, the gathered output of an all-gather, the input of a reduce-scatter).
Two costs follow from it:

- bytes sent per device, the ledger's convention (bandwidth-optimal algorithms averaged over the
  group): all-reduce 2(p-1)/p·n, every other operation (p-1)/p·n;
- seconds on a link of latency α and bandwidth β, NCCL's ring algorithms: all-reduce
  2(p-1)·α + 2(p-1)/p·n/β, all-gather and reduce-scatter (p-1)·α + (p-1)/p·n/β (Thakur et al.
  2005, as in timing.py), broadcast and reduce (p-1)·α + n/β: a pipelined chain in which every rank
  but the last forwards the whole payload (nccl-tests doc/PERFORMANCE.md: the bus bandwidth of
  broadcast and reduce is their algorithm bandwidth).

Pure arithmetic, no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from integration.config.schema import ModelConfig
from integration.model_size import ffn_size, query_groups
from integration.planner.memory import DTYPE_BYTES

FP32 = 4
"""Loss statistics (max, target logit, sum of exponentials, per-token loss) are fp32 in both layouts."""
_LEDGER_FACTOR = {"all_reduce": 2, "broadcast": 1, "reduce": 1, "all_gather": 1, "reduce_scatter": 1}


class LinkLike(Protocol):
    bandwidth: float
    latency: float


@dataclass(frozen=True)
class Collective:
    op: str
    """all_reduce, broadcast, reduce, all_gather or reduce_scatter."""
    group: str
    """tensor (the tensor-parallel group), or row / column of the 2D grid (q ranks each)."""
    ranks: int
    payload: float
    """Bytes n of the tensor the collective is about (see the module docstring)."""
    phase: str
    """forward or backward."""
    count: int = 1
    overlapped: bool = False
    """Issued asynchronously behind a GEMM (Megatron's sequence-parallel re-gather of a linear's
    input in backward): it moves bytes but adds no exposed time."""

    @property
    def sent(self) -> float:
        """Bytes sent per device, averaged over the group (CommLedger's `sent`)."""
        p = self.ranks
        return self.count * _LEDGER_FACTOR[self.op] * (p - 1) / p * self.payload

    def seconds(self, link: LinkLike) -> float:
        p, n = self.ranks, self.payload
        if self.overlapped or p == 1:
            return 0.0
        if self.op == "all_reduce":
            steps, volume = 2 * (p - 1), 2 * (p - 1) / p * n
        elif self.op in ("all_gather", "reduce_scatter"):
            steps, volume = p - 1, (p - 1) / p * n
        else:  # broadcast, reduce: pipelined chain
            steps, volume = p - 1, n
        return self.count * (steps * link.latency + volume / link.bandwidth)


def sent_bytes(collectives: list[Collective], phase: str | None = None) -> float:
    return sum(c.sent for c in collectives if phase is None or c.phase == phase)


def calls(collectives: list[Collective], phase: str | None = None) -> int:
    return sum(c.count for c in collectives if phase is None or c.phase == phase)


def seconds(collectives: list[Collective], links: dict[str, LinkLike]) -> float:
    return sum(c.seconds(links[c.group]) for c in collectives)


def _norm_params(model: ModelConfig) -> int:
    """Tensors of one norm: weight, and bias for LayerNorm."""
    return 1 if model.normalization == "RMSNorm" else 2


def _partial_grad_sums(model: ModelConfig, tp: int, e: int, sequence_parallel: bool) -> list[Collective]:
    """integration.stability.hooks.sum_partial_replicated_grads: one all-reduce over the tensor group
    per replicated weight that sees only this rank's part of the activations, each time its gradient
    is produced (every micro-batch's backward). QK-layernorm weights (each rank normalises its own
    heads), and with sequence parallelism the tensors Megatron marks `sequence_parallel`: both
    LayerNorms and the row-parallel biases."""
    out = []
    if model.qk_layernorm:
        head_dim = model.hidden_size // model.num_attention_heads
        out.append(Collective("all_reduce", "tensor", tp, head_dim * e, "backward", 2 * _norm_params(model)))
    if sequence_parallel:
        count = 2 * _norm_params(model) + (2 if model.add_bias_linear else 0)
        out.append(Collective("all_reduce", "tensor", tp, model.hidden_size * e, "backward", count))
    return out


# --- Megatron-Core 1D ------------------------------------------------------------------------------


def megatron_pair(tokens: int, hidden: int, tp: int, e: int) -> list[Collective]:
    """A ColumnParallelLinear followed by a RowParallelLinear (QKV → projection, fc1 → fc2) without
    sequence parallelism: the row-parallel output [tokens, hidden] all-reduced in forward, the
    column-parallel input's gradient in backward (Narayanan et al. 2021, sec. 3.2)."""
    act = tokens * hidden * e
    return [
        Collective("all_reduce", "tensor", tp, act, "forward"),
        Collective("all_reduce", "tensor", tp, act, "backward"),
    ]


def megatron_layer(
    model: ModelConfig, tokens: int, tp: int, dtype: str, sequence_parallel: bool, recompute: str
) -> list[Collective]:
    """One transformer layer, one micro-batch of `tokens` (= s·b): attention and MLP, two
    `megatron_pair`s. Sequence parallelism swaps each all-reduce for an all-gather and a
    reduce-scatter of the same activation, and the column-parallel linears re-gather their input in
    backward for the weight gradient, overlapped with the input-gradient GEMM (Korthikanti et al. 2022, sec. 4.2.2;
    megatron/core/tensor_parallel/layers.py LinearWithGradAccumulationAndAsyncCommunication). Full
    recompute runs the forward collectives again in backward."""
    if tp == 1:
        return []
    e = DTYPE_BYTES[dtype]
    act = tokens * model.hidden_size * e
    rerun = recompute == "full"
    if not sequence_parallel:
        out = megatron_pair(tokens, model.hidden_size, tp, e) * 2
        if rerun:
            out.append(Collective("all_reduce", "tensor", tp, act, "backward", 2))
    else:
        out = [
            Collective("all_gather", "tensor", tp, act, "forward", 2),
            Collective("reduce_scatter", "tensor", tp, act, "forward", 2),
            Collective("all_gather", "tensor", tp, act, "backward", 2 + (2 if rerun else 0)),
            Collective("reduce_scatter", "tensor", tp, act, "backward", 2 + (2 if rerun else 0)),
            Collective("all_gather", "tensor", tp, act, "backward", 2, overlapped=True),
        ]
    return out + _partial_grad_sums(model, tp, e, sequence_parallel)


def megatron_ends(
    model: ModelConfig, tokens: int, tp: int, dtype: str, sequence_parallel: bool
) -> tuple[list[Collective], list[Collective]]:
    """Outside the layers, per micro-batch: (first pipeline stage, last pipeline stage). The
    vocabulary-parallel embedding all-reduces its output (reduce-scatters it with sequence
    parallelism); the column-parallel output layer all-reduces its input gradient (with sequence
    parallelism: all-gathers its input, reduce-scatters the gradient, re-gathers overlapped); the
    vocabulary-parallel cross entropy all-reduces the logit maximum, the target logit and the sum of
    exponentials, fp32 per token (megatron/core/tensor_parallel/cross_entropy.py)."""
    if tp == 1:
        return [], []
    e = DTYPE_BYTES[dtype]
    act = tokens * model.hidden_size * e
    losses = [Collective("all_reduce", "tensor", tp, tokens * FP32, "forward", 3)]
    if not sequence_parallel:
        first = [Collective("all_reduce", "tensor", tp, act, "forward")]
        last = [Collective("all_reduce", "tensor", tp, act, "backward")]
    else:
        first = [
            Collective("reduce_scatter", "tensor", tp, act, "forward"),
            Collective("all_gather", "tensor", tp, act, "backward"),
        ]
        last = [
            Collective("all_gather", "tensor", tp, act, "forward"),
            Collective("reduce_scatter", "tensor", tp, act, "backward"),
            Collective("all_gather", "tensor", tp, act, "backward", overlapped=True),
        ]
        # The final LayerNorm's weights are sequence-parallel too.
        last.append(
            Collective("all_reduce", "tensor", tp, model.hidden_size * e, "backward", _norm_params(model))
        )
    return first, last + losses


# --- 2D (Optimus / SUMMA) -------------------------------------------------------------------------


def grid_groups(tensor_groups: list[list[int]], q: int) -> tuple[list[list[int]], list[list[int]]]:
    """Row and column groups of every tensor-parallel group's q×q grid (integration.tp2d.grid: tensor
    rank r sits at row r // q, column r % q)."""
    rows = [g[i * q : (i + 1) * q] for g in tensor_groups for i in range(q)]
    cols = [g[j::q] for g in tensor_groups for j in range(q)]
    return rows, cols


def summa_linear(tokens: int, fan_in: int, fan_out: int, q: int, e: int, bias: bool) -> list[Collective]:
    """Linear2D (functional._SummaAB) on a token block of tokens/q and weight blocks in/q × out/q.
    Forward, for each of the q steps: broadcast the x block along the row, the W block along the
    column; the bias block is all-gathered over the column. Backward: dX = dY·Wᵀ (q column broadcasts
    of W, q row reduces of partial dX) and dW = Xᵀ·dY (q row broadcasts of x, q column reduces of
    partial dW); the bias gradient is reduce-scattered over the column."""
    x_block = (tokens // q) * (fan_in // q) * e
    w_block = (fan_in // q) * (fan_out // q) * e
    out = [
        Collective("broadcast", "row", q, x_block, "forward", q),
        Collective("broadcast", "column", q, w_block, "forward", q),
        Collective("broadcast", "column", q, w_block, "backward", q),
        Collective("reduce", "row", q, x_block, "backward", q),
        Collective("broadcast", "row", q, x_block, "backward", q),
        Collective("reduce", "column", q, w_block, "backward", q),
    ]
    if bias:
        out += [
            Collective("all_gather", "column", q, fan_out // q * e, "forward"),
            Collective("reduce_scatter", "column", q, fan_out // q * e, "backward"),
        ]
    return out


def summa_layernorm(tokens: int, hidden: int, q: int, e: int) -> list[Collective]:
    """LayerNorm2D: the row sums and the squared deviations all-reduced over the row (one value per
    token of the block), gain and bias all-gathered over the column; backward one all-reduce of two
    row sums per token, and the two gradients reduce-scattered over the column."""
    per_token = (tokens // q) * e
    return [
        Collective("all_reduce", "row", q, per_token, "forward", 2),
        Collective("all_gather", "column", q, hidden // q * e, "forward", 2),
        Collective("all_reduce", "row", q, 2 * per_token, "backward"),
        Collective("reduce_scatter", "column", q, hidden // q * e, "backward", 2),
    ]


def summa_layer(model: ModelConfig, tokens: int, q: int, dtype: str) -> list[Collective]:
    """TransformerLayer2D (integration/tp2d/blocks.py): two LayerNorm2D, QKV and projection, fc1 and
    fc2 as Linear2D; attention and GELU are local (each column holds whole heads of its token block).
    The QK-layernorm weights are replicated over the grid: their gradients are summed over the
    tensor group (the same hook as 1D)."""
    e = DTYPE_BYTES[dtype]
    h, ffn, bias = model.hidden_size, ffn_size(model), model.add_bias_linear
    kv = query_groups(model) * (h // model.num_attention_heads)
    out = summa_layernorm(tokens, h, q, e) + summa_layernorm(tokens, h, q, e)
    out += summa_linear(tokens, h, h + 2 * kv, q, e, bias)
    out += summa_linear(tokens, h, h, q, e, bias)
    out += summa_linear(tokens, h, ffn, q, e, bias)
    out += summa_linear(tokens, ffn, h, q, e, bias)
    return out + _partial_grad_sums(model, q * q, e, sequence_parallel=False)


def summa_ends(model: ModelConfig, vocab: int, tokens: int, q: int, dtype: str) -> list[Collective]:
    """GPT2D outside the layers, per micro-batch (integration/tp2d/gpt.py, layers.py):

    - word and position Embedding2D: every rank looks up the whole batch in its vocabulary block;
      the partial rows [b, s, h/q] are reduce-scattered over the column (backward: all-gathered);
    - the final LayerNorm2D;
    - the logits (VocabProjection2D, summa_abt): per step a column broadcast of the embedding block
      and a row reduce of the partial logits [tokens/q, v/q]; backward dX by SUMMA (row broadcasts of
      logit-gradient blocks, column broadcasts of embedding blocks) and dE (row broadcasts of
      logit-gradient blocks, column reduces of partial dE);
    - the vocabulary-parallel cross entropy: the maximum and the (target logit, sum of
      exponentials) pairs all-reduced over the row, the per-token loss all-gathered over the column
      (fp32)."""
    e = DTYPE_BYTES[dtype]
    h = model.hidden_size
    rows = tokens * (h // q) * e  # the whole batch, one hidden block
    e_block = (vocab // q) * (h // q) * e
    logit_block = (tokens // q) * (vocab // q) * e
    lookups = 2 if model.position_embedding_type == "learned_absolute" else 1
    return [
        Collective("reduce_scatter", "column", q, rows, "forward", lookups),
        Collective("all_gather", "column", q, rows, "backward", lookups),
        *summa_layernorm(tokens, h, q, e),
        Collective("broadcast", "column", q, e_block, "forward", q),
        Collective("reduce", "row", q, logit_block, "forward", q),
        Collective("broadcast", "row", q, logit_block, "backward", q),
        Collective("broadcast", "column", q, e_block, "backward", q),
        Collective("broadcast", "row", q, logit_block, "backward", q),
        Collective("reduce", "column", q, e_block, "backward", q),
        Collective("all_reduce", "row", q, (tokens // q) * FP32, "forward"),
        Collective("all_reduce", "row", q, 2 * (tokens // q) * FP32, "forward"),
        Collective("all_gather", "column", q, tokens * FP32, "forward"),
    ]


def tensor_parallel_collectives(
    model: ModelConfig,
    vocab: int,
    tokens: int,
    tp: int,
    dtype: str,
    sequence_parallel: bool = False,
    recompute: str = "none",
    tensor_parallel_2d: bool = False,
) -> tuple[list[Collective], list[Collective], list[Collective]]:
    """(per layer, first pipeline stage's extra, last stage's extra) for one micro-batch of `tokens`.
    2D runs without pipeline stages: its extras are all on the one stage ("first")."""
    if tensor_parallel_2d:
        q = math.isqrt(tp)
        return summa_layer(model, tokens, q, dtype), summa_ends(model, vocab, tokens, q, dtype), []
    first, last = megatron_ends(model, tokens, tp, dtype, sequence_parallel)
    return megatron_layer(model, tokens, tp, dtype, sequence_parallel, recompute), first, last
