"""Derived parallel layout: data-parallel size, gradient accumulation and the rank groups.

Pure arithmetic (no torch, no process group) so the dry run, the validator and the planner can use
it. Rank order is Megatron-Core's default "tp-cp-ep-dp-pp": tensor-parallel ranks are adjacent,
then data-parallel, then pipeline stages. DeepSpeed's PipeModelDataParallelTopology(pp, mp, dp)
enumerates ranks in the same order, which the pipeline path checks at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass

from integration.config.schema import ParallelConfig


@dataclass(frozen=True)
class Layout:
    world_size: int
    tensor_parallel: int
    pipeline_parallel: int
    data_parallel: int
    micro_batch_size: int
    global_batch_size: int
    gradient_accumulation_steps: int

    @staticmethod
    def derive(parallel: ParallelConfig, world_size: int) -> Layout:
        """Fill in the derived sizes. Assumes `validate` accepted the config (exact divisions)."""
        model_parallel = parallel.tensor_model_parallel_size * parallel.pipeline_model_parallel_size
        data_parallel = max(1, world_size // model_parallel)
        per_step = parallel.micro_batch_size * data_parallel
        return Layout(
            world_size=world_size,
            tensor_parallel=parallel.tensor_model_parallel_size,
            pipeline_parallel=parallel.pipeline_model_parallel_size,
            data_parallel=data_parallel,
            micro_batch_size=parallel.micro_batch_size,
            global_batch_size=parallel.global_batch_size,
            gradient_accumulation_steps=max(1, parallel.global_batch_size // per_step),
        )

    def coordinates(self, rank: int) -> tuple[int, int, int]:
        """(tp_rank, dp_rank, pp_rank) of a global rank."""
        tp_rank = rank % self.tensor_parallel
        dp_rank = (rank // self.tensor_parallel) % self.data_parallel
        pp_rank = rank // (self.tensor_parallel * self.data_parallel)
        return tp_rank, dp_rank, pp_rank

    def rank_at(self, tp_rank: int, dp_rank: int, pp_rank: int) -> int:
        return tp_rank + self.tensor_parallel * (dp_rank + self.data_parallel * pp_rank)

    def tensor_groups(self) -> list[list[int]]:
        return [
            [self.rank_at(t, d, p) for t in range(self.tensor_parallel)]
            for p in range(self.pipeline_parallel)
            for d in range(self.data_parallel)
        ]

    def data_groups(self) -> list[list[int]]:
        return [
            [self.rank_at(t, d, p) for d in range(self.data_parallel)]
            for p in range(self.pipeline_parallel)
            for t in range(self.tensor_parallel)
        ]

    def pipeline_groups(self) -> list[list[int]]:
        return [
            [self.rank_at(t, d, p) for p in range(self.pipeline_parallel)]
            for d in range(self.data_parallel)
            for t in range(self.tensor_parallel)
        ]

    def describe(self) -> str:
        return (
            f"world {self.world_size} = tp {self.tensor_parallel} × pp {self.pipeline_parallel} × "
            f"dp {self.data_parallel}; global batch {self.global_batch_size} = micro "
            f"{self.micro_batch_size} × accumulation {self.gradient_accumulation_steps} × dp "
            f"{self.data_parallel}"
        )
