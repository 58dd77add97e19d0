"""Checkpoints that survive crashes: saved through the DeepSpeed engine, counted only when every
rank has finished, verified before they are trusted, resumed automatically.

Layout of `checkpoint.dir` (default `<run.dir>/checkpoints`):

    step_00000050/                     DeepSpeed's files (model, ZeRO/optimizer, scheduler) + ours:
        rng_rank00000.pt               every rank's RNG streams (python, numpy, torch, Megatron tracker)
        complete.json                  written last, by rank 0, after every rank finished: the step,
                                       layout, model config and each file's size and CRC-32
    latest                             name of the newest complete checkpoint (atomic replace)

A directory without `complete.json` (a crash or a full disk mid-save) is ignored; pruning only ever
removes checkpoints older than a newer complete one.
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

from integration.config.schema import CheckpointConfig, ModelConfig
from integration.errors import ConfigError
from integration.layout import Layout

MARKER = "complete.json"
LATEST = "latest"
_TAG_PREFIX = "step_"


def checkpoint_root(checkpoint: CheckpointConfig, run_dir: Path) -> Path:
    return Path(checkpoint.dir) if checkpoint.dir else run_dir / "checkpoints"


def tag_for(step: int) -> str:
    return f"{_TAG_PREFIX}{step:08d}"


@dataclass(frozen=True)
class ResumePoint:
    root: Path
    tag: str
    step: int
    meta: dict[str, Any]


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
    root: Path, model: ModelConfig, layout: Layout, zero_stage: int, report: bool = True
) -> ResumePoint | None:
    """Pre-flight, on every rank before any process group: the newest checkpoint that verifies.
    A newer one that does not is skipped with a warning. Refuses (ConfigError) a checkpoint of a
    different model, or of a different parallel layout (cross-layout resume is not supported)."""
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
        requested = {
            "tensor_parallel": layout.tensor_parallel,
            "pipeline_parallel": layout.pipeline_parallel,
            "data_parallel": layout.data_parallel,
            "zero_stage": zero_stage,
        }
        _check_compatible(directory, meta, model, requested)
        return ResumePoint(root=root, tag=directory.name, step=int(meta["step"]), meta=meta)
    return None


def _check_compatible(
    directory: Path, meta: dict[str, Any], model: ModelConfig, requested_layout: dict[str, int]
) -> None:
    saved_model, requested = meta["model"], asdict(model)
    differing = sorted(k for k in set(saved_model) | set(requested) if saved_model.get(k) != requested.get(k))
    if differing:
        details = ", ".join(f"model.{k}: {saved_model.get(k)!r} → {requested.get(k)!r}" for k in differing)
        raise ConfigError(
            f"checkpoint.dir: {directory} holds a different model ({details}); resume with the same model "
            "config, or start a new run with another run.dir (or checkpoint.resume=false)"
        )
    keys = ("tensor_parallel", "pipeline_parallel", "data_parallel", "zero_stage")
    saved_layout = {k: meta["layout"][k] for k in keys}
    if saved_layout != requested_layout:
        raise ConfigError(
            f"parallel: the checkpoint {directory} was written with "
            + ", ".join(f"{k} {v}" for k, v in saved_layout.items())
            + "; this launch asks for "
            + ", ".join(f"{k} {v}" for k, v in requested_layout.items())
            + ". Resuming on a different layout is not supported yet: relaunch with the saved layout, "
            "or start a new run.dir"
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
    """Saves every `interval` steps and at the end; restores a ResumePoint."""

    def __init__(
        self,
        engine,
        config: CheckpointConfig,
        root: Path,
        model: ModelConfig,
        layout: Layout,
        zero_stage: int,
        stateful: dict[str, Any] | None = None,
    ):
        """`stateful`: objects with state_dict()/load_state_dict() saved with every checkpoint
        under their key (the stability monitor's spike history and counters)."""
        self.engine = engine
        self.config = config
        self.root = root
        self.model = model
        self.layout = layout
        self.zero_stage = zero_stage
        self.stateful = stateful or {}
        self.last_saved: int | None = None

    def maybe_save(self, step: int, final: bool) -> None:
        interval = self.config.interval
        due = (interval > 0 and step % interval == 0) or (final and self.config.save_at_end)
        if due and self.last_saved != step:
            self.save(step)

    def save(self, step: int) -> None:
        tag = tag_for(step)
        rank = dist.get_rank()
        self.engine.save_checkpoint(
            str(self.root),
            tag=tag,
            client_state={"step": step, **{k: v.state_dict() for k, v in self.stateful.items()}},
            save_latest=False,
        )
        torch.save(_rng_state(), self.root / tag / f"rng_rank{rank:05d}.pt")
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
            "layout": {**asdict(self.layout), "zero_stage": self.zero_stage},
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

    def load(self, point: ResumePoint) -> int:
        """Restore model, optimizer, scheduler and this rank's RNG streams; returns the step."""
        load_path, client_state = self.engine.load_checkpoint(
            str(point.root), tag=point.tag, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if load_path is None:
            raise RuntimeError(f"DeepSpeed could not load checkpoint {point.root / point.tag}")
        rng_file = point.root / point.tag / f"rng_rank{dist.get_rank():05d}.pt"
        _set_rng_state(torch.load(rng_file, weights_only=False))
        for key, obj in self.stateful.items():
            if key in client_state:
                obj.load_state_dict(client_state[key])
        self.last_saved = point.step
        return int(client_state["step"])

    def newest_complete(self) -> ResumePoint | None:
        """The newest checkpoint of this run that verifies (a rollback's target)."""
        return find_resume_point(
            self.root, self.model, self.layout, self.zero_stage, report=dist.get_rank() == 0
        )


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
