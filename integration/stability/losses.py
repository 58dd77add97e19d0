"""z-loss (PaLM, Chowdhery et al. 2022, §5): c · mean(logsumexp(logits)²) keeps the softmax
normaliser near 1, so logits cannot drift to values where bf16 loses precision.

Logits are vocab-parallel — each tensor-parallel rank holds a slice of the vocabulary — so the
log-sum-exp is reduced over the tensor-parallel group: the max through an all-reduce(MAX) (a
constant shift, no gradient), the sum of exponentials through Megatron's
reduce_from_tensor_model_parallel_region (all-reduce forward, identity backward: each rank's
slice receives its own softmax share of the gradient).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def vocab_parallel_logsumexp(logits: torch.Tensor) -> torch.Tensor:
    """log Σ_v exp(logits[..., v]) over the full vocabulary, from this rank's slice [..., v/tp]."""
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel.mappings import reduce_from_tensor_model_parallel_region

    logits = logits.float()
    shift = logits.detach().amax(dim=-1, keepdim=True)
    if parallel_state.get_tensor_model_parallel_world_size() > 1:
        dist.all_reduce(shift, op=dist.ReduceOp.MAX, group=parallel_state.get_tensor_model_parallel_group())
        sum_exp = reduce_from_tensor_model_parallel_region((logits - shift).exp().sum(dim=-1))
    else:
        sum_exp = (logits - shift).exp().sum(dim=-1)
    return sum_exp.log() + shift.squeeze(-1)


def z_loss(logits: torch.Tensor, loss_mask: torch.Tensor, coefficient: float) -> torch.Tensor:
    """c · masked mean of logsumexp². `logits` is [s, b, v/tp] (Megatron's layout), `loss_mask`
    [b, s]; tokens the cross entropy ignores are ignored here too."""
    lse = vocab_parallel_logsumexp(logits).transpose(0, 1)  # [b, s]
    mask = loss_mask.to(lse.dtype)
    return coefficient * (lse.square() * mask).sum() / mask.sum().clamp(min=1)
