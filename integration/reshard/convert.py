"""Read a DeepSpeed checkpoint written under one layout into full, layout-free tensors.

Output, next to the checkpoints (`<checkpoint.dir>/converted/step_NNNNNNNN/`):

    params/<GPTModel name>.pt   {"fp32": master weight, "exp_avg": ..., "exp_avg_sq": ...}, full shape
    state.pt                    the step, client state (stability monitor), LR schedule, DeepSpeed's
                                counters and Adam's step count
    converted.json              written last: source tag, step, parameter names

Collective over the launching world, in two passes so that no process ever holds more than one
source file or one full parameter: (1) each rank reads a share of the source files (one per
source rank) and writes every parameter fragment it finds, keyed by (tensor rank, data rank);
(2) each rank merges a share of the parameters — fragments concatenated in data-rank order give
a tensor-parallel shard, shards merged with Megatron-Core's cut give the full tensor. The work
happens in `<tag>.partial/`, renamed into place at the end, so an interrupted conversion is redone
and the source checkpoint is only ever read.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import zlib
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from integration.reshard.manifest import FLAT, TORCH, UNFUSED, ZERO3, ParamRecord, RankManifest
from integration.reshard.shards import merge_shards

STATES = ("fp32", "exp_avg", "exp_avg_sq")
PARAMS = "params"
STATE_FILE = "state.pt"
DONE = "converted.json"
_FRAGMENTS = "fragments"
# Model-states entries that are per-layout tensors or config; the rest (scheduler, counters,
# client state) is what a resume needs.
_LAYOUT_ENTRIES = {
    "module",
    "optimizer",
    "param_shapes",
    "frozen_param_shapes",
    "shared_params",
    "frozen_param_fragments",
    "buffer_names",
    "ds_config",
}


def _load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=False)


def _marker_crc(source: Path) -> int:
    """Identifies the source checkpoint's contents (its complete.json lists every file's CRC)."""
    return zlib.crc32((source / "complete.json").read_bytes())


def is_converted(source: Path, target: Path) -> bool:
    """A finished conversion of this very checkpoint (not of an earlier one with the same tag)."""
    done = target / DONE
    return done.exists() and json.loads(done.read_text()).get("source_crc32") == _marker_crc(source)


def param_file(target: Path, canonical: str) -> Path:
    return target / PARAMS / f"{canonical}.pt"


def convert(
    source: Path, target: Path, tensor_parallel: int, data_parallel: int, pipeline_parallel: int
) -> None:
    """Collective: every rank of the world calls it with the same arguments."""
    rank, world = dist.get_rank(), dist.get_world_size()
    partial = target.with_name(target.name + ".partial")
    if rank == 0:
        shutil.rmtree(partial, ignore_errors=True)
        (partial / _FRAGMENTS).mkdir(parents=True)
        (partial / PARAMS).mkdir()
    dist.barrier()
    # Source ranks in Megatron-Core's order (tensor fastest, then data, then pipeline).
    ranks = [
        t + tensor_parallel * (d + data_parallel * p)
        for p in range(pipeline_parallel)
        for d in range(data_parallel)
        for t in range(tensor_parallel)
    ]
    first_data_rank = [r for r in ranks if (r // tensor_parallel) % data_parallel == 0]
    kind = RankManifest.read(source, 0).optimizer
    # torch / fp16_unfused: the state of a whole (tensor, pipeline) shard, saved by data rank 0.
    readers = first_data_rank if kind in (TORCH, UNFUSED) else ranks
    for source_rank in readers[rank::world]:
        _extract(source, RankManifest.read(source, source_rank), data_parallel, partial / _FRAGMENTS)
    dist.barrier()
    table = _shard_table([RankManifest.read(source, r) for r in first_data_rank], tensor_parallel)
    for canonical in sorted(table)[rank::world]:
        _merge(canonical, table[canonical], partial / _FRAGMENTS, partial)
    dist.barrier()
    if rank == 0:
        state = _resume_state(source, RankManifest.read(source, 0))
        torch.save(state, partial / STATE_FILE)
        shutil.rmtree(partial / _FRAGMENTS)
        done = {
            "source": source.name,
            "source_crc32": _marker_crc(source),
            "step": state.get("step"),
            "params": sorted(table),
        }
        (partial / DONE).write_text(json.dumps(done, indent=1))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(partial, target)
    dist.barrier()


def _wanted(record: ParamRecord, manifest: RankManifest) -> bool:
    """Replicated parameters are read from tensor rank 0, tied copies from their owning stage."""
    return not record.replica and (record.partition_dim is not None or manifest.tensor_rank == 0)


def _save_fragment(
    fragments: Path, record: ParamRecord, tensor_rank: int, data_rank: int, tensors: dict[str, torch.Tensor]
) -> None:
    directory = fragments / record.canonical
    directory.mkdir(parents=True, exist_ok=True)
    flat = {key: value.detach().reshape(-1).to(torch.float32).clone() for key, value in tensors.items()}
    torch.save(flat, directory / f"tp{tensor_rank:03d}.dp{data_rank:05d}.pt")


def _moments(state: dict[str, Any], like: torch.Tensor) -> dict[str, torch.Tensor]:
    """Adam's moments; zeros for a parameter the optimizer never stepped (no gradient yet)."""
    return {key: state[key] if key in state else torch.zeros_like(like) for key in ("exp_avg", "exp_avg_sq")}


def _extract(source: Path, manifest: RankManifest, data_parallel: int, fragments: Path) -> None:
    if manifest.optimizer in (TORCH, UNFUSED):
        _extract_per_parameter(source, manifest, fragments)
    elif manifest.optimizer == FLAT:
        _extract_flat(source, manifest, fragments)
    elif manifest.optimizer == ZERO3:
        _extract_zero3(source, manifest, data_parallel, fragments)
    else:
        raise RuntimeError(f"cannot read optimizer state written by {manifest.optimizer}")


def _extract_per_parameter(source: Path, manifest: RankManifest, fragments: Path) -> None:
    """`torch`: masters are the module weights, state in a torch state dict. `fp16_unfused`:
    masters and torch state dict in DeepSpeed's FP16_UnfusedOptimizer state."""
    model = _load(source / manifest.model_file)
    saved = model["optimizer"]
    if manifest.optimizer == UNFUSED:
        inner, masters = saved["optimizer_state_dict"], saved["fp32_groups"]
    else:
        inner, masters = saved, None
    files = {manifest.model_file: model["module"]}

    def module_weight(record: ParamRecord) -> torch.Tensor:
        file, key = record.weight
        if file not in files:
            files[file] = _load(source / file)
        return files[file][key]

    for g, (names, group) in enumerate(zip(manifest.groups, inner["param_groups"], strict=True)):
        for i, (name, index) in enumerate(zip(names, group["params"], strict=True)):
            record = manifest.params[name]
            if not _wanted(record, manifest):
                continue
            master = masters[g][i] if masters is not None else module_weight(record)
            state = inner["state"].get(index, {})
            tensors = {"fp32": master, **_moments(state, master)}
            _save_fragment(fragments, record, manifest.tensor_rank, 0, tensors)


def _extract_flat(source: Path, manifest: RankManifest, fragments: Path) -> None:
    """ZeRO 1/2, BF16_Optimizer: DeepSpeed's `param_slice_mappings` give each parameter's slice of
    this data rank's flat partition."""
    saved = _load(source / manifest.optimizer_file)["optimizer_state_dict"]
    base = saved["base_optimizer_state"]
    if not isinstance(base, dict):
        raise RuntimeError(f"{manifest.optimizer_file}: elastic ZeRO checkpoints are not supported")
    for g, mapping in enumerate(saved["param_slice_mappings"]):
        partition = saved["single_partition_of_fp32_groups"][g]
        state = base["state"].get(base["param_groups"][g]["params"][0], {})
        flat = {"fp32": partition, **_moments(state, partition)}
        for name, address in mapping.items():
            record = manifest.params[name]
            if _wanted(record, manifest):
                pieces = {key: value.narrow(0, address.start, address.numel) for key, value in flat.items()}
                _save_fragment(fragments, record, manifest.tensor_rank, manifest.data_rank, pieces)


def _extract_zero3(source: Path, manifest: RankManifest, data_parallel: int, fragments: Path) -> None:
    """ZeRO 3: in each sub-group's flat partition every parameter takes ceil(numel / dp) elements,
    of which this rank's share of the real ones come first (the rest is padding)."""
    saved = _load(source / manifest.optimizer_file)["optimizer_state_dict"]
    shapes = _load(source / manifest.model_file)["param_shapes"]
    inner = saved["optimizer_state_dict"]
    groups_meta = saved.get("ds_zero_partition_groups") or []
    for sub, named_shapes in enumerate(shapes):
        meta = groups_meta[sub] if sub < len(groups_meta) else {}
        count = meta.get("partition_count", data_parallel)
        part_rank = meta.get("partition_rank", manifest.data_rank)
        partition = saved["fp32_flat_groups"][sub]
        state = inner["state"].get(inner["param_groups"][sub]["params"][0], {})
        flat = {"fp32": partition, **_moments(state, partition)}
        offset = 0
        for name, shape in named_shapes.items():
            numel = math.prod(shape)
            size = math.ceil(numel / count)
            real = max(0, min(size, numel - part_rank * size))
            record = manifest.params[name]
            if real and _wanted(record, manifest):
                pieces = {key: value.narrow(0, offset, real) for key, value in flat.items()}
                _save_fragment(fragments, record, manifest.tensor_rank, part_rank, pieces)
            offset += size


def _shard_table(manifests: list[RankManifest], tensor_parallel: int) -> dict[str, dict[int, ParamRecord]]:
    """GPTModel name -> tensor rank -> that rank's record (one per tensor rank; replicated
    parameters only rank 0), from the manifests of data rank 0."""
    table: dict[str, dict[int, ParamRecord]] = defaultdict(dict)
    for manifest in manifests:
        if manifest.data_rank != 0:
            raise RuntimeError(
                f"rank {manifest.rank}: data rank {manifest.data_rank}, expected 0 (rank order)"
            )
        for record in manifest.params.values():
            if _wanted(record, manifest):
                table[record.canonical][manifest.tensor_rank] = record
    for canonical, shards in table.items():
        expected = set(range(tensor_parallel)) if shards[min(shards)].partition_dim is not None else {0}
        if set(shards) != expected:
            raise RuntimeError(
                f"{canonical}: tensor-parallel shards {sorted(shards)} recorded, {sorted(expected)} expected"
            )
    return dict(table)


def _merge(canonical: str, shards: dict[int, ParamRecord], fragments: Path, target: Path) -> None:
    per_key: dict[str, list[torch.Tensor]] = {key: [] for key in STATES}
    for tensor_rank in sorted(shards):
        record = shards[tensor_rank]
        files = sorted((fragments / canonical).glob(f"tp{tensor_rank:03d}.dp*.pt"))
        pieces = [torch.load(f, weights_only=True) for f in files]
        for key in STATES:
            flat = torch.cat([piece[key] for piece in pieces]) if pieces else torch.empty(0)
            if flat.numel() != math.prod(record.shape):
                raise RuntimeError(
                    f"{canonical}: tensor rank {tensor_rank} has {flat.numel()} {key} elements in "
                    f"{len(pieces)} fragments, its shard {record.shape} needs {math.prod(record.shape)}"
                )
            per_key[key].append(flat.reshape(record.shape))
    first = shards[min(shards)]
    full = {key: merge_shards(per_key[key], first.partition_dim, first.stride) for key in STATES}
    torch.save(full, param_file(target, canonical))


def _adam_step(source: Path, manifest: RankManifest) -> int:
    """Adam's step count (steps applied; skipped steps do not count), the same for every parameter."""
    if manifest.optimizer in (TORCH, UNFUSED):
        saved = _load(source / manifest.model_file)["optimizer"]
        states = (saved["optimizer_state_dict"] if manifest.optimizer == UNFUSED else saved)["state"]
    else:
        saved = _load(source / manifest.optimizer_file)["optimizer_state_dict"]
        inner = saved["base_optimizer_state"] if manifest.optimizer == FLAT else saved["optimizer_state_dict"]
        states = inner["state"]
    steps = [int(float(state["step"])) for state in states.values() if "step" in state]
    return max(steps, default=0)


def _resume_state(source: Path, manifest: RankManifest) -> dict[str, Any]:
    model = _load(source / manifest.model_file)
    state = {key: value for key, value in model.items() if key not in _LAYOUT_ENTRIES}
    state["adam_step"] = _adam_step(source, manifest)
    return state
