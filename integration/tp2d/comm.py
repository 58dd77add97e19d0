"""Communication accounting: every collective issued while a `CommLedger` counts is recorded with
its group size, payload and the bytes each device sends, attributed to the innermost tracked
module and to forward or backward.

The ledger wraps the `torch.distributed` functions themselves (each wrapper calls the real one), so
it counts what any code issues: the 2D layers here and Megatron-Core's 1D tensor parallelism alike.

Bytes sent per device follow the bandwidth-optimal algorithms (ring / pipelined chain) for a group
of p devices and a payload of n bytes (n: the reduced or broadcast tensor; for all-gather the
gathered output; for reduce-scatter the input):

    all_reduce 2(p-1)/p·n      broadcast, reduce, all_gather, reduce_scatter, all_to_all (p-1)/p·n

averaged over the group's devices. `payload` keeps n itself.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from dataclasses import dataclass, field

import torch
import torch.distributed as dist


def _nbytes(t) -> int:
    if isinstance(t, (list, tuple)):
        return sum(_nbytes(x) for x in t)
    return t.numel() * t.element_size()


# Name → (factor k in k·(p-1)/p·n, function computing n from the call's arguments).
_COLLECTIVES = {
    "all_reduce": (2, lambda a, kw: _nbytes(a[0] if a else kw["tensor"])),
    "broadcast": (1, lambda a, kw: _nbytes(a[0] if a else kw["tensor"])),
    "reduce": (1, lambda a, kw: _nbytes(a[0] if a else kw["tensor"])),
    "all_gather": (1, lambda a, kw: _nbytes(a[0] if a else kw["tensor_list"])),
    "all_gather_into_tensor": (1, lambda a, kw: _nbytes(a[0] if a else kw["output_tensor"])),
    "_all_gather_base": (1, lambda a, kw: _nbytes(a[0] if a else kw["output_tensor"])),
    "reduce_scatter": (1, lambda a, kw: _nbytes(a[1] if len(a) > 1 else kw["input_list"])),
    "reduce_scatter_tensor": (1, lambda a, kw: _nbytes(a[1] if len(a) > 1 else kw["input"])),
    "_reduce_scatter_base": (1, lambda a, kw: _nbytes(a[1] if len(a) > 1 else kw["input"])),
    "all_to_all_single": (1, lambda a, kw: _nbytes(a[1] if len(a) > 1 else kw["input"])),
}


@dataclass(frozen=True)
class CommRecord:
    op: str
    group_size: int
    payload: int
    """Bytes of the tensor the collective is about (see module docstring)."""
    sent: float
    """Bytes sent per device (bandwidth-optimal algorithm, averaged over the group)."""
    phase: str
    """forward or backward."""
    scope: str
    """Innermost tracked module, or '' outside any."""


@dataclass
class CommLedger:
    """Records collectives while `counting()` is active."""

    records: list[CommRecord] = field(default_factory=list)
    _scopes: list[str] = field(default_factory=list)

    # -- attribution --------------------------------------------------------------------------
    @contextlib.contextmanager
    def scope(self, name: str):
        self._scopes.append(name)
        try:
            yield
        finally:
            self._scopes.pop()

    def track(self, modules: dict[str, torch.nn.Module]) -> list:
        """Attribute collectives issued inside each module's forward and backward to its name."""
        handles = []
        for name, module in modules.items():

            def push(*_args, _name=name):
                self._scopes.append(_name)

            def pop(*_args, _name=name):
                if self._scopes and self._scopes[-1] == _name:
                    self._scopes.pop()

            handles += [
                module.register_forward_pre_hook(push),
                module.register_forward_hook(pop),
                module.register_full_backward_pre_hook(push),
                module.register_full_backward_hook(pop),
            ]
        return handles

    # -- counting -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def counting(self):
        """Wrap torch.distributed's collectives; each wrapper records, then calls the real one."""
        originals = {name: getattr(dist, name) for name in _COLLECTIVES if hasattr(dist, name)}

        def wrap(name, real):
            factor, payload_of = _COLLECTIVES[name]

            def counted(*args, **kwargs):
                group = kwargs.get("group")
                p = dist.get_world_size(group) if group is not None else dist.get_world_size()
                n = payload_of(args, kwargs)
                backward = torch._C._current_graph_task_id() != -1
                self.records.append(
                    CommRecord(
                        op=name,
                        group_size=p,
                        payload=n,
                        sent=factor * (p - 1) / p * n,
                        phase="backward" if backward else "forward",
                        scope=self._scopes[-1] if self._scopes else "",
                    )
                )
                return real(*args, **kwargs)

            return counted

        for name, real in originals.items():
            setattr(dist, name, wrap(name, real))
        try:
            yield self
        finally:
            for name, real in originals.items():
                setattr(dist, name, real)

    # -- reading ------------------------------------------------------------------------------
    def sent(self, phase: str | None = None, scope: str | None = None) -> float:
        return sum(
            r.sent
            for r in self.records
            if (phase is None or r.phase == phase) and (scope is None or r.scope == scope)
        )

    def by_scope(self) -> dict[str, dict[str, float]]:
        """{scope: {forward: bytes, backward: bytes, calls: n}} per device."""
        table: dict[str, dict[str, float]] = defaultdict(
            lambda: {"forward": 0.0, "backward": 0.0, "calls": 0}
        )
        for r in self.records:
            table[r.scope][r.phase] += r.sent
            table[r.scope]["calls"] += 1
        return dict(table)

    def clear(self) -> None:
        self.records.clear()
