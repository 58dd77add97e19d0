"""Measure the activation bytes a model really keeps for backward, to check the planner's
activation model (memory.py) against: the storages autograd saves, each counted once, live from
the moment a tensor is saved until autograd releases it.

Imports torch, unlike the rest of the planner: tests and benchmarks/planner_accuracy.py use it, the
planner itself never does.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch


class SavedTensorMeter:
    """Inside `with SavedTensorMeter(model.parameters()) as meter:` every tensor autograd saves is
    wrapped in a small holder; a storage is live while any holder of it is (autograd drops the
    holders of a node once its backward has run), so `meter.peak` is the largest sum of live saved
    storages over forward and backward — recomputation in backward (activation checkpointing)
    included, since the hooks also apply to tensors saved while backward reruns a forward.

    Views share their storage and count once (Q, K and V are views of one QKV output); the
    parameters' storages (saved by every linear layer for its weight gradient) are not
    activations and are left out.
    """

    def __init__(self, parameters: Iterable[torch.Tensor]):
        self._parameters = {p.untyped_storage().data_ptr() for p in parameters}
        self._holders: dict[int, int] = {}
        self._sizes: dict[int, int] = {}
        self.live = 0
        """Bytes of saved storages alive now."""
        self.peak = 0
        """The most `live` has been."""
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def __enter__(self) -> SavedTensorMeter:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)

    def _pack(self, tensor: torch.Tensor):
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key in self._parameters:
            return tensor
        if not self._holders.get(key):
            self._sizes[key] = storage.nbytes()
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
        self._holders[key] = self._holders.get(key, 0) + 1
        return _Held(self, key, tensor)

    @staticmethod
    def _unpack(packed):
        return packed.tensor if isinstance(packed, _Held) else packed

    def _release(self, key: int) -> None:
        self._holders[key] -= 1
        if not self._holders[key]:
            self.live -= self._sizes.pop(key)


class _Held:
    """A saved tensor as autograd stores it while the meter is on; its end is the tensor's release."""

    __slots__ = ("meter", "key", "tensor")

    def __init__(self, meter: SavedTensorMeter, key: int, tensor: torch.Tensor):
        self.meter, self.key, self.tensor = meter, key, tensor

    def __del__(self) -> None:
        self.meter._release(self.key)


@dataclass(frozen=True)
class ActivationMeasurement:
    peak: int
    """Most bytes of saved activations alive at once, forward and backward of one micro-batch."""
    after_forward: int
    """Alive when forward has finished."""
    released: bool
    """Nothing was left alive after backward (the meter saw every release)."""


def measure_micro_batch(
    gpt: torch.nn.Module, micro_batch_size: int, seq_length: int, seed: int
) -> ActivationMeasurement:
    """One micro-batch of random tokens through a Megatron-Core GPTModel with labels (the
    vocab-parallel cross entropy included) and back, under a SavedTensorMeter."""
    b, s = micro_batch_size, seq_length
    tokens = torch.randint(0, 256, (b, s + 1), generator=torch.Generator().manual_seed(seed))
    with SavedTensorMeter(gpt.parameters()) as meter:
        per_token = gpt(
            input_ids=tokens[:, :-1],
            position_ids=torch.arange(s).expand(b, s),
            attention_mask=None,
            labels=tokens[:, 1:],
        )
        after_forward = meter.live
        per_token.float().mean().backward()
    return ActivationMeasurement(meter.peak, after_forward, meter.live == 0)
