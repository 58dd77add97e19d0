"""Module hooks the stability options install on the model."""

from __future__ import annotations

import torch
import torch.distributed as dist


def install_model_hooks(model: torch.nn.Module, word_embeddings: list[torch.nn.Module], stability) -> None:
    """The stability options that act on the model itself, for every way of building it: the
    embedding-gradient shrink on the given word-embedding lookups, and the tensor-parallel sum of
    partial gradients of replicated weights (QK-layernorm)."""
    if stability.embedding_grad_shrink != 1.0:
        for lookup in word_embeddings:
            shrink_embedding_gradient(lookup, stability.embedding_grad_shrink)
    sum_partial_replicated_grads(model)


def shrink_embedding_gradient(word_embeddings: torch.nn.Module, alpha: float):
    """GLM-130B (Zeng et al. 2022, §3.3): out·α + out.detach()·(1−α) on the word-embedding lookup.
    The forward value is unchanged (up to rounding) and the gradient reaching the embedding table
    through the *input* is scaled by α; a tied output layer reads the weight directly, not through
    this module, so its gradient is untouched."""

    def hook(_module, _inputs, output):
        return output * alpha + output.detach() * (1.0 - alpha)

    return word_embeddings.register_forward_hook(hook)


def sum_partial_replicated_grads(module: torch.nn.Module) -> list:
    """Parameters replicated over the tensor-parallel group but fed only this rank's part of the
    activations get a partial gradient on each rank: QK-layernorm weights (each rank normalises
    its own heads) and, with sequence parallelism, every LayerNorm (each rank sees its own tokens).
    Megatron's DDP all-reduces these in finalize_model_grads; DeepSpeed does not know them, so
    their gradients are summed over the tensor-parallel group as they are produced. The backward
    graph is identical on every tensor rank, so the hooks fire in the same order everywhere."""
    from megatron.core import parallel_state

    if parallel_state.get_tensor_model_parallel_world_size() == 1:
        return []
    group = parallel_state.get_tensor_model_parallel_group()

    def all_reduce(grad):
        grad = grad.clone()
        dist.all_reduce(grad, group=group)
        return grad

    handles = []
    for name, param in module.named_parameters():
        partial = (
            getattr(param, "sequence_parallel", False) or ".q_layernorm." in name or ".k_layernorm." in name
        )
        if partial and param.requires_grad:
            handles.append(param.register_hook(all_reduce))
    return handles
