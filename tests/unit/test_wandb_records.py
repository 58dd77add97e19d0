"""Reading an offline W&B run file ourselves: a real run written by wandb, read back exactly, and
truncated copies (a killed run) read up to the cut."""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pytest

from integration.wandb_records import (
    BLOCK_SIZE,
    WandbFileError,
    find_wandb_file,
    iter_records,
    read_run,
    scan_payloads,
)

RUN_ID = "rec0test"
CONFIG = {
    "x": 1,
    "lr": 0.25,
    "nested": {"y": 2, "z": [1, 2]},
    "label": "text",
    "nothing": None,
    # Larger than two 32 KiB blocks: the run record is written as FIRST, MIDDLE..., LAST fragments.
    "blob": "w" * 70_000,
}
STEPS = range(1, 301)


def loss_at(step: int) -> float:
    return 1.0 / (step + 1)


def offline_env(home: Path) -> dict[str, str]:
    """An environment where wandb writes nothing outside `home` and needs no login or network."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(
        HOME=str(home),
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        WANDB_DIR=str(home),
        WANDB_CONFIG_DIR=str(home / ".config" / "wandb"),
        WANDB_CACHE_DIR=str(home / ".cache" / "wandb"),
        WANDB_DATA_DIR=str(home / ".local" / "wandb"),
    )
    return env


@pytest.fixture(scope="module")
def wandb_file(tmp_path_factory) -> Path:
    """A real offline run, written by wandb in its own process."""
    home = tmp_path_factory.mktemp("wandb_home")
    script = textwrap.dedent(
        f"""
        import json, wandb
        run = wandb.init(project="p", dir={str(home)!r}, id={RUN_ID!r}, name="my-run", group="g1",
                         job_type="train", tags=["a", "b"], config=json.loads({json.dumps(CONFIG)!r}))
        run.define_metric("trainer/global_step")
        run.define_metric("train/*", step_metric="trainer/global_step")
        for step in {list(STEPS)!r}:
            row = {{"trainer/global_step": step, "train/loss": 1.0 / (step + 1)}}
            if step == 2:
                row.update({{"train/nested": {{"a": 1}}, "train/odd": float("nan"), "train/flag": True}})
            run.log(row)
        run.config.update({{"late": "added"}})
        run.summary["note"] = "done"
        run.finish()
        """
    )
    subprocess.run([sys.executable, "-c", script], env=offline_env(home), cwd=home, check=True, timeout=120)
    return find_wandb_file(home / "wandb")


def test_file_header_is_ident_magic_version(wandb_file):
    assert wandb_file.read_bytes()[:7] == b":W&B" + struct.pack("<HB", 0xBEE1, 0)


def test_reads_back_what_the_run_logged(wandb_file):
    run = read_run(wandb_file)
    assert (run.run_id, run.name, run.project, run.group, run.job_type) == (
        RUN_ID,
        "my-run",
        "p",
        "g1",
        "train",
    )
    assert run.tags == ["a", "b"]
    assert run.config == {**CONFIG, "late": "added"}
    steps = [row for row in run.history if "train/loss" in row]
    assert [row["trainer/global_step"] for row in steps] == list(STEPS)
    assert [row["train/loss"] for row in steps] == [loss_at(s) for s in STEPS]
    assert [row["_step"] for row in run.history] == list(range(len(STEPS)))
    second = steps[1]
    assert second["train/nested.a"] == 1 and second["train/flag"] is True
    assert math.isnan(second["train/odd"])
    assert run.summary["train/loss"] == loss_at(STEPS[-1])
    assert run.summary["trainer/global_step"] == STEPS[-1]
    assert run.summary["note"] == "done"
    assert run.exit_code == 0 and not run.truncated


def test_finds_the_file_from_its_directories(wandb_file):
    offline_dir = wandb_file.parent
    for path in (wandb_file, offline_dir, offline_dir.parent, offline_dir.parent.parent):
        assert find_wandb_file(path) == wandb_file
    with pytest.raises(WandbFileError, match="no W&B run here"):
        find_wandb_file(offline_dir / "files")


def test_a_file_cut_in_the_middle_yields_the_records_before_the_cut(wandb_file, tmp_path):
    data = wandb_file.read_bytes()
    assert len(data) > 2 * BLOCK_SIZE
    full = list(iter_records(wandb_file))
    cut = tmp_path / wandb_file.name
    cut.write_bytes(data[: len(data) // 2])

    partial = list(iter_records(cut))
    assert 0 < len(partial) < len(full)
    assert "run" in {record.WhichOneof("record_type") for record in partial}
    assert partial == full[: len(partial)]
    run = read_run(cut)
    assert run.truncated and run.exit_code is None
    assert run.config == {k: v for k, v in CONFIG.items()}  # the late config update was after the cut
    assert 0 < len(run.history) < len(STEPS)
    assert run.history == read_run(wandb_file).history[: len(run.history)]


def test_every_cut_point_yields_a_prefix(wandb_file):
    data = wandb_file.read_bytes()
    full, clean = scan_payloads(data)
    assert clean
    clean_cuts = set()
    for cut in [*range(7, 200), *range(200, len(data), 1499), len(data)]:
        payloads, clean = scan_payloads(data[:cut])
        assert payloads == full[: len(payloads)], cut
        if clean:
            clean_cuts.add(cut)
    assert len(data) in clean_cuts
    assert len(clean_cuts) < 40  # a cut almost always tears a fragment, and that is reported


def test_a_corrupt_fragment_stops_reading_there(wandb_file):
    data = bytearray(wandb_file.read_bytes())
    full, _ = scan_payloads(bytes(data))
    data[len(data) // 2] ^= 0xFF
    payloads, clean = scan_payloads(bytes(data))
    assert not clean and 0 < len(payloads) < len(full) and payloads == full[: len(payloads)]


def frame(payloads: list[bytes]) -> bytes:
    """LevelDB-log framing as wandb writes it: 32 KiB blocks from the start of the file, zero
    trailer when fewer than 7 bytes are left, CRC-32 of type byte + payload."""
    out = bytearray(b":W&B" + struct.pack("<HB", 0xBEE1, 0))
    for payload in payloads:
        first, rest = True, payload
        while True:
            left = BLOCK_SIZE - len(out) % BLOCK_SIZE
            if left < 7:
                out += b"\0" * left
                continue
            chunk, rest = rest[: left - 7], rest[left - 7 :]
            kind = (1 if not rest else 2) if first else (4 if not rest else 3)
            out += struct.pack("<IHB", zlib.crc32(chunk, zlib.crc32(bytes([kind]))), len(chunk), kind)
            out += chunk
            first = False
            if not rest:
                break
    return bytes(out)


@pytest.mark.parametrize("trailer", [0, 1, 6, 7])
def test_block_trailer_padding(trailer):
    """A record that leaves `trailer` bytes in the first block; the next one starts a new block
    (trailer < 7: zero padding) or is a zero-length fragment in those last 7 bytes."""
    first = b"a" * (BLOCK_SIZE - 7 - 7 - trailer)
    payloads = [first, b"second", b"x" * (2 * BLOCK_SIZE + 5), b"last"]
    data = frame(payloads)
    assert scan_payloads(data) == (payloads, True)


def test_not_a_wandb_file(tmp_path):
    bogus = tmp_path / "run-x.wandb"
    bogus.write_bytes(b"PK\x03\x04 not a wandb file")
    with pytest.raises(WandbFileError, match="not a W&B run file"):
        read_run(bogus)
    bogus.write_bytes(b":W&B" + struct.pack("<HB", 0xBEE1, 9))
    with pytest.raises(WandbFileError, match="version 9"):
        read_run(bogus)
