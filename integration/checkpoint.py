"""Checkpoints that survive crashes: saved through the DeepSpeed engine, counted only when every
rank has finished, verified before they are trusted, resumed automatically.

Layout of `checkpoint.dir` (default `<run.dir>/checkpoints`):

    step_00000050/                     DeepSpeed's files (model, ZeRO/optimizer, scheduler) + ours:
        rng_rank00000.pt               every rank's RNG streams (python, numpy, torch, Megatron tracker)
        complete.json                  written last, by rank 0, after every rank finished: the step,
                                       layout, model config and each file's size and CRC-32
        params_rank00000.json          every rank's parameter manifest (integration.reshard.manifest)
    latest                             name of the newest complete checkpoint (atomic replace)
    converted/step_00000050/           the same checkpoint as full per-parameter tensors, made when a
                                       launch with another layout resumes from it

A directory without `complete.json` (a crash or a full disk mid-save) is ignored; pruning only ever
removes checkpoints older than a newer complete one (and their converted copies).

Resuming on another layout (tensor, pipeline or data parallel size, ZeRO stage, precision, pipeline
partition) needs no manual step: the same launch command with another `parallel=` converts the
checkpoint once into `converted/<tag>/` (integration.reshard) and loads it into the new engine.
Exact in fp32: the fp32 master weights, Adam's moments and step count, the LR schedule, the step,
the stability monitor's state and DeepSpeed's counters are carried over unchanged, so the first
step after the resume differs from the old layout's only by the new layout's summation order.
The global batch must stay the same: the samples of step s are [s·G, (s+1)·G) under every layout,
so the data continues without a repeat or a gap exactly when G does (a resume that changes G is
refused). RNG streams: on the same layout every rank restores its own; on another layout every
rank takes the streams of the old rank at the same (tensor, data, pipeline) coordinate (modulo the
old sizes), and when the tensor-parallel size changed Megatron's model-parallel stream is re-seeded
from (seed + step) per tensor rank, as at start-up (no stream exists for the new ranks). With
dropout 0, as in every preset, no RNG stream enters the math.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from integration.config.schema import CheckpointConfig, ModelConfig, ParallelConfig
from integration.errors import ConfigError
from integration.layout import Layout
from integration.reshard.manifest import MANIFEST, SUPPORTED

MARKER = "complete.json"
LATEST = "latest"
CONVERTED = "converted"
_TAG_PREFIX = "step_"


def checkpoint_root(checkpoint: CheckpointConfig, run_dir: Path) -> Path:
    return Path(checkpoint.dir) if checkpoint.dir else run_dir / "checkpoints"


def tag_for(step: int) -> str:
    return f"{_TAG_PREFIX}{step:08d}"


@dataclass(frozen=True)
class LayoutRecord:
    """The parallel layout a checkpoint was written with (complete.json's `layout`)."""

    world_size: int
    tensor_parallel: int
    pipeline_parallel: int
    data_parallel: int
    micro_batch_size: int
    global_batch_size: int
    gradient_accumulation_steps: int
    zero_stage: int
    tensor_parallel_2d: bool = False
    """Checkpoints written before this was recorded are 1D."""
    dtype: str | None = None
    """fp32, bf16 or fp16; None for checkpoints written before it was recorded."""
    partition_method: str = "uniform"
    """Pipeline stage split (which layers each stage's files hold)."""

    @staticmethod
    def of(layout: Layout, parallel: ParallelConfig, dtype: str) -> LayoutRecord:
        return LayoutRecord(
            **asdict(layout),
            zero_stage=parallel.zero_stage,
            tensor_parallel_2d=parallel.tensor_parallel_2d,
            dtype=dtype,
            partition_method=parallel.partition_method,
        )

    @staticmethod
    def from_meta(raw: dict[str, Any]) -> LayoutRecord:
        return LayoutRecord(**{k: v for k, v in raw.items() if k in LayoutRecord.__dataclass_fields__})

    @property
    def layout(self) -> Layout:
        return Layout(**{k: getattr(self, k) for k in Layout.__dataclass_fields__})

    def same_files_as(self, other: LayoutRecord) -> bool:
        """Whether DeepSpeed can load the other's files as they are (rank for rank)."""
        pipeline = self.pipeline_parallel > 1 and self.partition_method != other.partition_method
        dtype = self.dtype is not None and other.dtype is not None and self.dtype != other.dtype
        keys = ("tensor_parallel", "pipeline_parallel", "data_parallel", "zero_stage", "tensor_parallel_2d")
        return all(getattr(self, k) == getattr(other, k) for k in keys) and not pipeline and not dtype

    def describe(self) -> str:
        parts = [
            f"tp {self.tensor_parallel}{' (2D)' if self.tensor_parallel_2d else ''}",
            f"pp {self.pipeline_parallel}",
            f"dp {self.data_parallel}",
            f"ZeRO {self.zero_stage}",
        ]
        if self.dtype is not None:
            parts.append(self.dtype)
        if self.pipeline_parallel > 1:
            parts.append(f"partition {self.partition_method}")
        return ", ".join(parts) + f", global batch {self.global_batch_size}"


@dataclass(frozen=True)
class ResumePoint:
    root: Path
    tag: str
    step: int
    meta: dict[str, Any]
    saved: LayoutRecord
    """The layout that wrote it."""
    convert: bool = False
    """Written under another layout: loaded through a layout-free conversion."""


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
    return crc


def _inventory(directory: Path) -> dict[str, dict[str, int]]:
    return {
        str(path.relative_to(directory)): {"bytes": path.stat().st_size, "crc32": _crc32(path)}
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != MARKER
    }


def _problem(directory: Path) -> str | None:
    """Why a checkpoint directory cannot be trusted, or None."""
    marker = directory / MARKER
    if not marker.exists():
        return "incomplete (no complete.json: the save did not finish)"
    try:
        meta = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError) as err:
        return f"unreadable {MARKER} ({err})"
    for name, expected in meta["files"].items():
        path = directory / name
        if not path.exists():
            return f"{name} is missing"
        if path.stat().st_size != expected["bytes"]:
            return f"{name} has {path.stat().st_size} bytes, {expected['bytes']} were written"
        if _crc32(path) != expected["crc32"]:
            return f"{name} is corrupted (CRC-32 mismatch)"
    return None


def find_resume_point(
    root: Path,
    model: ModelConfig,
    requested: LayoutRecord,
    report: bool = True,
    layout_bound_state: str | None = None,
) -> ResumePoint | None:
    """Pre-flight, on every rank before any process group: the newest checkpoint that verifies.
    A newer one that does not is skipped with a warning. Refuses (ConfigError) a checkpoint of a
    different model, a change of the global batch, and a layout change that cannot be converted.
    `layout_bound_state`: names run state saved per rank that the conversion does not carry (e.g.
    pruning masks); a checkpoint of another layout is then refused."""
    if not root.exists():
        return None
    tags = sorted((p for p in root.iterdir() if p.is_dir() and p.name.startswith(_TAG_PREFIX)), reverse=True)
    for directory in tags:
        problem = _problem(directory)
        if problem is not None:
            if report:
                _warn(f"checkpoint {directory} skipped: {problem}; falling back to an older one")
            continue
        meta = json.loads((directory / MARKER).read_text())
        saved = LayoutRecord.from_meta(meta["layout"])
        _check_compatible(directory, meta, model, saved, requested)
        if layout_bound_state and not saved.same_files_as(requested):
            raise ConfigError(
                f"parallel: the checkpoint {directory} was written with {saved.describe()}; this run's "
                f"{layout_bound_state} cannot be converted to another layout. Resume with the saved "
                "layout, or start a new run.dir"
            )
        return ResumePoint(
            root=root,
            tag=directory.name,
            step=int(meta["step"]),
            meta=meta,
            saved=saved,
            convert=not saved.same_files_as(requested),
        )
    return None


def _check_compatible(
    directory: Path, meta: dict[str, Any], model: ModelConfig, saved: LayoutRecord, requested: LayoutRecord
) -> None:
    saved_model, wanted = meta["model"], asdict(model)
    differing = sorted(k for k in set(saved_model) | set(wanted) if saved_model.get(k) != wanted.get(k))
    if differing:
        details = ", ".join(f"model.{k}: {saved_model.get(k)!r} → {wanted.get(k)!r}" for k in differing)
        raise ConfigError(
            f"checkpoint.dir: {directory} holds a different model ({details}); resume with the same model "
            "config, or start a new run with another run.dir (or checkpoint.resume=false)"
        )
    if saved.global_batch_size != requested.global_batch_size:
        raise ConfigError(
            f"parallel.global_batch_size: {requested.global_batch_size}, but the checkpoint {directory} was "
            f"trained with {saved.global_batch_size}; step s reads samples [s·G, (s+1)·G) and the LR "
            "schedule counts steps, so another G would repeat or skip data. Set "
            f"parallel.global_batch_size={saved.global_batch_size} (micro_batch_size and the layout may "
            "change), or start a new run.dir"
        )
    if not saved.same_files_as(requested):
        _check_convertible(directory, saved, requested)


def _check_convertible(directory: Path, saved: LayoutRecord, requested: LayoutRecord) -> None:
    """A layout change the converter (integration.reshard) cannot make is refused here, before any
    process group, rather than failing inside a load."""
    change = f"the checkpoint {directory} was written with {saved.describe()}; this launch asks for {requested.describe()}"
    back = (
        f"relaunch with the saved layout (parallel.tensor_model_parallel_size={saved.tensor_parallel} "
        f"parallel.pipeline_model_parallel_size={saved.pipeline_parallel} parallel.zero_stage={saved.zero_stage} "
        f"parallel.tensor_parallel_2d={str(saved.tensor_parallel_2d).lower()} on "
        f"{saved.world_size} processes), or start a new run.dir"
    )
    if saved.tensor_parallel_2d or requested.tensor_parallel_2d:
        raise ConfigError(
            f"parallel.tensor_parallel_2d: {change}. A 2D tensor-parallel checkpoint holds SUMMA blocks, "
            f"not Megatron-Core shards, and is not converted to or from another layout; {back}"
        )
    if "fp16" in (saved.dtype, requested.dtype):
        raise ConfigError(
            f"precision: {change}. fp16 checkpoints resume only on the layout that wrote them (the "
            f"dynamic loss scale is not converted); {back}"
        )
    missing = [r for r in range(saved.world_size) if not (directory / MANIFEST.format(rank=r)).exists()]
    if missing:
        raise ConfigError(
            f"parallel: {change}. The checkpoint has no parameter manifest for rank(s) {missing[:8]} "
            f"(written before checkpoints recorded one), so it resumes only on its own layout; {back}"
        )
    kind = json.loads((directory / MANIFEST.format(rank=0)).read_text())[
        "optimizer"
    ]  # one class for all ranks
    if kind not in SUPPORTED:
        raise ConfigError(
            f"parallel: {change}. Its optimizer state was written by DeepSpeed's {kind}, which the "
            f"converter cannot read; {back}"
        )


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _rng_state() -> dict[str, Any]:
    from megatron.core import tensor_parallel

    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "megatron_tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    from megatron.core import tensor_parallel

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["megatron_tracker"])


class Checkpointer:
    """Saves every `interval` steps and at the end; restores a ResumePoint (converting it first
    when it was written under another layout)."""

    def __init__(
        self,
        engine,
        config: CheckpointConfig,
        root: Path,
        model: ModelConfig,
        layout: LayoutRecord,
        seed: int,
        stateful: dict[str, Any] | None = None,
    ):
        """`layout`: this launch's. `seed`: trainer.seed (re-seeds Megatron's model-parallel RNG
        stream after a tensor-parallel change). `stateful`: objects with state_dict() /
        load_state_dict() saved with every checkpoint under their key (the stability monitor's
        spike history and counters)."""
        self.engine = engine
        self.config = config
        self.root = root
        self.model = model
        self.layout = layout
        self.seed = seed
        self.stateful = stateful or {}
        self.last_saved: int | None = None

    def maybe_save(self, step: int, final: bool) -> None:
        interval = self.config.interval
        due = (interval > 0 and step % interval == 0) or (final and self.config.save_at_end)
        if due and self.last_saved != step:
            self.save(step)

    def save(self, step: int) -> None:
        from integration.reshard.manifest import record

        tag = tag_for(step)
        rank = dist.get_rank()
        self.engine.save_checkpoint(
            str(self.root),
            tag=tag,
            client_state={"step": step, **{k: v.state_dict() for k, v in self.stateful.items()}},
            save_latest=False,
        )
        torch.save(_rng_state(), self.root / tag / f"rng_rank{rank:05d}.pt")
        record(self.engine, self.root, tag)
        dist.barrier()
        if rank == 0:
            self._mark_complete(step, tag)
            self._prune()
        dist.barrier()
        self.last_saved = step

    def _mark_complete(self, step: int, tag: str) -> None:
        directory = self.root / tag
        meta = {
            "step": step,
            "tag": tag,
            "model": asdict(self.model),
            "layout": asdict(self.layout),
            "files": _inventory(directory),
        }
        _write_atomically(directory / MARKER, json.dumps(meta, indent=1))
        _write_atomically(self.root / LATEST, tag)

    def _prune(self) -> None:
        complete = sorted(p for p in self.root.iterdir() if p.is_dir() and (p / MARKER).exists())
        keep = set(complete[-self.config.keep_last :]) if self.config.keep_last > 0 else set(complete)
        newest = complete[-1].name
        for directory in self.root.iterdir():
            # Never touch a save newer than the newest complete one: another launch may own it.
            stale = (
                directory.name.startswith(_TAG_PREFIX) and directory.name < newest and directory not in keep
            )
            if directory.is_dir() and stale:
                shutil.rmtree(directory, ignore_errors=True)
        converted = self.root / CONVERTED
        if converted.is_dir():
            for copy in converted.iterdir():
                if not (self.root / copy.name.removesuffix(".partial")).is_dir():
                    shutil.rmtree(copy, ignore_errors=True)

    def load(self, point: ResumePoint) -> int:
        """Restore model, optimizer, scheduler and this rank's RNG streams; returns the step.
        Collective. A checkpoint of another layout is converted first (once; reused after)."""
        if point.convert:
            client_state = self._load_converted(point)
        else:
            load_path, client_state = self.engine.load_checkpoint(
                str(point.root), tag=point.tag, load_optimizer_states=True, load_lr_scheduler_states=True
            )
            if load_path is None:
                raise RuntimeError(f"DeepSpeed could not load checkpoint {point.root / point.tag}")
        step = int(client_state["step"])
        self._restore_rng(point, step)
        for key, obj in self.stateful.items():
            if key in client_state:
                obj.load_state_dict(client_state[key])
        self.last_saved = point.step
        return step

    def _load_converted(self, point: ResumePoint) -> dict[str, Any]:
        import time

        from integration.reshard.convert import convert, is_converted
        from integration.reshard.inject import load_converted

        saved = point.saved
        target = point.root / CONVERTED / point.tag
        if not is_converted(point.root / point.tag, target):
            start = time.perf_counter()
            convert(
                point.root / point.tag,
                target,
                saved.tensor_parallel,
                saved.data_parallel,
                saved.pipeline_parallel,
            )
            if dist.get_rank() == 0:
                print(
                    f"converted {point.tag} ({saved.describe()}) to full tensors in {target} "
                    f"({time.perf_counter() - start:.1f} s)",
                    file=sys.stderr,
                    flush=True,
                )
        state = load_converted(self.engine, target)
        if dist.get_rank() == 0:
            print(f"loaded {point.tag} onto {self.layout.describe()}", file=sys.stderr, flush=True)
        return state

    def _restore_rng(self, point: ResumePoint, step: int) -> None:
        """Same layout: this rank's own streams. Another layout: see the module docstring."""
        rank = dist.get_rank()
        source_rank = rank
        if point.convert:
            tp, dp, pp = self.layout.layout.coordinates(rank)
            old = point.saved.layout
            source_rank = old.rank_at(
                tp % old.tensor_parallel, dp % old.data_parallel, pp % old.pipeline_parallel
            )
        state = torch.load(point.root / point.tag / f"rng_rank{source_rank:05d}.pt", weights_only=False)
        if point.convert and point.saved.tensor_parallel != self.layout.tensor_parallel:
            from megatron.core import tensor_parallel

            tensor_parallel.model_parallel_cuda_manual_seed(self.seed + step)
            state = {**state, "megatron_tracker": tensor_parallel.get_cuda_rng_tracker().get_states()}
        _set_rng_state(state)

    def newest_complete(self) -> ResumePoint | None:
        """The newest checkpoint of this run that verifies (a rollback's target)."""
        return find_resume_point(self.root, self.model, self.layout, report=dist.get_rank() == 0)


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
