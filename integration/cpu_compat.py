"""Megatron-Core 0.16 reaches for torch.cuda in a few places that have nothing GPU-specific about
them. On a machine without CUDA these are routed to the CPU; with CUDA nothing is touched.

Each patch is idempotent and applied once per process, before the model is built.
"""

from __future__ import annotations

import torch

_applied = False


def apply_cpu_patches() -> None:
    global _applied
    if _applied or torch.cuda.is_available():
        return
    _route_rng_tracker_to_cpu()
    _keep_rope_frequencies_on_cpu()
    _applied = True


def _route_rng_tracker_to_cpu() -> None:
    """The model-parallel RNG tracker (dropout inside TP regions, activation recompute) stores and
    swaps CUDA generator states; on CPU it swaps the CPU generator's state instead."""
    from megatron.core.tensor_parallel import random as mcore_random

    def get_state(*_args, **_kwargs):
        return torch.get_rng_state()

    def set_state(state, *_args, **_kwargs):
        torch.set_rng_state(state)

    def add(self, name: str, seed: int) -> None:
        if seed in self.seeds_:
            raise Exception(f"seed {seed} already exists")
        if name in self.states_:
            raise Exception(f"rng state {name} already exists")
        self.seeds_.add(seed)
        saved = torch.get_rng_state()
        torch.manual_seed(seed)
        self.states_[name] = torch.get_rng_state()
        torch.set_rng_state(saved)

    mcore_random._get_cuda_rng_state = get_state
    mcore_random._set_cuda_rng_state = set_state
    mcore_random.CudaRNGStatesTracker.add = add


def _keep_rope_frequencies_on_cpu() -> None:
    """RotaryEmbedding.get_emb moves inv_freq to the current CUDA device on first use."""
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding

    def get_emb(self, max_seq_len: int, offset: int = 0) -> torch.Tensor:
        freqs = self.get_freqs_non_repeated(max_seq_len, offset)
        if not self.rotary_interleaved:
            emb = torch.cat((freqs, freqs), dim=-1)
        else:
            emb = torch.stack((freqs.view(-1, 1), freqs.view(-1, 1)), dim=-1).view(freqs.shape[0], -1)
        return emb[:, None, None, :]

    RotaryEmbedding.get_emb = get_emb
