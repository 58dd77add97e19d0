"""Read an offline W&B run straight from its `run-<id>.wandb` file: no server, no `wandb.Api()`.

The file format (wandb 0.31, checked against real files and `wandb leet inspect --json`):

- A 7-byte file header: the bytes `:W&B`, the magic 0xBEE1 as a little-endian uint16 (bytes
  `e1 be`) and a version byte, 0.
- Then LevelDB-log framing. The file is cut into 32 KiB blocks counted from the start of the file
  (the file header sits in block 0). Each fragment has a 7-byte header: CRC-32 (little-endian
  uint32; plain zlib/IEEE CRC-32 of the type byte followed by the payload, **not** LevelDB's masked
  CRC-32C), payload length (little-endian uint16) and type (FULL=1, FIRST=2, MIDDLE=3, LAST=4). A
  fragment never crosses a block boundary; fewer than 7 bytes left in a block are zero padding.
- Each reassembled payload is one `wandb.proto.wandb_internal_pb2.Record`.

Items of history, summary and config records name their key with `key` or `nested_key` (a path; a
logged `{"a": {"b": 1}}` arrives as `["a", "b"]`) and carry the value as JSON in `value_json`
(NaN and ±Infinity spelled as JavaScript does, which `json.loads` accepts).

A run that was killed leaves a file that ends mid-fragment: reading stops at the first incomplete
or corrupt fragment and returns everything before it (`OfflineRun.truncated` says so).
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FILE_IDENT = b":W&B"
FILE_MAGIC = 0xBEE1
FILE_VERSION = 0
FILE_HEADER = struct.Struct("<4sHB")  # ident, magic, version: 7 bytes
BLOCK_SIZE = 32 * 1024
FRAGMENT_HEADER = struct.Struct("<IHB")  # crc32, length, type: 7 bytes
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4

# The key W&B keeps its own bookkeeping under in config and summary; not part of a user's config.
WANDB_INTERNAL_KEY = "_wandb"


class WandbFileError(ValueError):
    """A path that is not a readable W&B run file (or run directory)."""


@dataclass
class OfflineRun:
    """What an offline run recorded, as plain Python values."""

    path: Path
    """The `.wandb` file that was read."""
    run_id: str = ""
    name: str = ""
    project: str = ""
    entity: str = ""
    group: str = ""
    job_type: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    """The run's config (every config update applied in order), without W&B's own `_wandb` key."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """One dict per logged row, keys as W&B shows them (nested keys joined with '.'), including
    W&B's `_step`, `_runtime`, `_timestamp`."""
    summary: dict[str, Any] = field(default_factory=dict)
    """The final summary (every summary update and removal applied in order); nested keys nest."""
    exit_code: int | None = None
    """The exit code the run finished with; None when the file has no exit record (killed)."""
    truncated: bool = False
    """True when the file ends in an incomplete or corrupt fragment (a killed or crashed run)."""


def _check_file_header(data: bytes, path: Path) -> None:
    if len(data) < FILE_HEADER.size:
        raise WandbFileError(f"{path}: {len(data)} bytes, shorter than the 7-byte W&B file header")
    ident, magic, version = FILE_HEADER.unpack_from(data)
    if ident != FILE_IDENT or magic != FILE_MAGIC:
        raise WandbFileError(
            f"{path}: not a W&B run file (header {data[: FILE_HEADER.size]!r}, expected "
            f"{FILE_IDENT!r} + magic 0x{FILE_MAGIC:04X})"
        )
    if version != FILE_VERSION:
        raise WandbFileError(
            f"{path}: W&B file format version {version}; this reader knows version {FILE_VERSION}"
        )


def scan_payloads(data: bytes) -> tuple[list[bytes], bool]:
    """The record payloads of a whole `.wandb` file's bytes (file header included), in order, and
    whether the data ended cleanly. Reading stops at the first fragment that is incomplete, has a
    bad checksum or is out of sequence (clean is then False): a killed run's file yields every
    record written before its torn tail."""
    payloads: list[bytes] = []
    pending: list[bytes] | None = None
    pos = FILE_HEADER.size
    while True:
        left_in_block = BLOCK_SIZE - pos % BLOCK_SIZE
        if left_in_block < FRAGMENT_HEADER.size:
            pos += left_in_block  # trailer: zero padding up to the next block
            continue
        if pos >= len(data):
            return payloads, pending is None
        if pos + FRAGMENT_HEADER.size > len(data):
            return payloads, False
        crc, length, kind = FRAGMENT_HEADER.unpack_from(data, pos)
        start = pos + FRAGMENT_HEADER.size
        end = start + length
        if kind == 0 and length == 0 and crc == 0:
            # Zeros where a fragment should start: pre-allocated or never-written space.
            return payloads, pending is None and not any(data[pos:])
        if length > left_in_block - FRAGMENT_HEADER.size or end > len(data):
            return payloads, False
        payload = data[start:end]
        if zlib.crc32(payload, zlib.crc32(bytes([kind]))) != crc:
            return payloads, False
        pos = end
        if kind == FULL and pending is None:
            payloads.append(payload)
        elif kind == FIRST and pending is None:
            pending = [payload]
        elif kind == MIDDLE and pending is not None:
            pending.append(payload)
        elif kind == LAST and pending is not None:
            pending.append(payload)
            payloads.append(b"".join(pending))
            pending = None
        else:
            return payloads, False  # a fragment out of sequence or of an unknown type


def _pb():
    from wandb.proto import wandb_internal_pb2

    return wandb_internal_pb2


def iter_records(path: str | Path) -> Iterator[Any]:
    """The `wandb_internal_pb2.Record`s of a `.wandb` file, in the order they were written."""
    path = Path(path)
    data = path.read_bytes()
    _check_file_header(data, path)
    record_type = _pb().Record
    for payload in scan_payloads(data)[0]:
        yield record_type.FromString(payload)


def find_wandb_file(path: str | Path) -> Path:
    """The `.wandb` file for `path`: the file itself, an `offline-run-*`/`run-*` directory, a `wandb/`
    directory, or a training run directory holding `wandb/`. With several runs (a restarted
    training run starts a new offline directory each time) the newest is taken."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise WandbFileError(f"{path}: no such file or directory")
    own = sorted(path.glob("run-*.wandb"))
    if own:
        return own[-1]
    for wandb_dir in (path / "wandb", path):
        runs = sorted(
            (d for pattern in ("offline-run-*", "run-*") for d in wandb_dir.glob(pattern) if d.is_dir()),
            key=lambda d: d.name.removeprefix("offline-"),
        )
        files = [f for run in runs for f in sorted(run.glob("run-*.wandb"))]
        if files:
            return files[-1]
    raise WandbFileError(
        f"{path}: no W&B run here (looked for run-*.wandb, offline-run-*/run-*.wandb and "
        "wandb/offline-run-*/run-*.wandb)"
    )


def _item_path(item: Any) -> list[str]:
    return list(item.nested_key) if item.nested_key else [item.key]


def _decode(value_json: str) -> Any:
    return json.loads(value_json) if value_json else None


def _history_value(item: Any) -> Any:
    if item.value_json:
        return json.loads(item.value_json)
    # HistoryItem also has a typed `value` oneof; wandb 0.31 writes value_json, other writers may not.
    typed = item.WhichOneof("value")
    if typed == "json":
        return json.loads(item.json)
    return None if typed in (None, "none") else getattr(item, typed)


def _set_nested(target: dict[str, Any], keys: Sequence[str], value: Any) -> None:
    for key in keys[:-1]:
        child = target.get(key)
        if not isinstance(child, dict):
            child = target[key] = {}
        target = child
    target[keys[-1]] = value


def _remove_nested(target: dict[str, Any], keys: Sequence[str]) -> None:
    for key in keys[:-1]:
        target = target.get(key)
        if not isinstance(target, dict):
            return
    target.pop(keys[-1], None)


def _apply_updates(target: dict[str, Any], record: Any) -> None:
    """A config or summary record: `update` items set (nested) keys, `remove` items delete them."""
    for item in record.update:
        _set_nested(target, _item_path(item), _decode(item.value_json))
    for item in record.remove:
        _remove_nested(target, _item_path(item))


def read_run(path: str | Path) -> OfflineRun:
    """Everything an offline run recorded: identity, config, history rows, summary, exit code.

    `path` is a `.wandb` file or a directory holding one (see `find_wandb_file`)."""
    wandb_file = find_wandb_file(path)
    data = wandb_file.read_bytes()
    _check_file_header(data, wandb_file)
    payloads, clean = scan_payloads(data)
    run = OfflineRun(path=wandb_file, truncated=not clean)
    record_type = _pb().Record
    for payload in payloads:
        record = record_type.FromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            info = record.run
            run.run_id = info.run_id or run.run_id
            run.name = info.display_name or run.name
            run.project = info.project or run.project
            run.entity = info.entity or run.entity
            run.group = info.run_group or run.group
            run.job_type = info.job_type or run.job_type
            run.tags = list(info.tags) or run.tags
            _apply_updates(run.config, info.config)
            _apply_updates(run.summary, info.summary)
        elif kind == "config":
            _apply_updates(run.config, record.config)
        elif kind == "summary":
            _apply_updates(run.summary, record.summary)
        elif kind == "history":
            run.history.append(
                {".".join(_item_path(item)): _history_value(item) for item in record.history.item}
            )
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
    run.config.pop(WANDB_INTERNAL_KEY, None)
    return run
