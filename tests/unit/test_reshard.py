"""Cross-layout resume, the parts that need no process group: Megatron-Core's tensor-parallel cut
and its inverse, the layout record of old and new checkpoints, and the pre-flight refusals."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch

from integration.checkpoint import MARKER, LayoutRecord, find_resume_point
from integration.config.schema import ModelConfig
from integration.errors import ConfigError
from integration.reshard.manifest import MANIFEST
from integration.reshard.shards import merge_shards, shard_of


def megatron_shards(full: torch.Tensor, dim: int, stride: int, world: int) -> list[torch.Tensor]:
    """What megatron.core.tensor_parallel.layers._initialize_affine_weight_cpu gives each rank."""
    chunks = torch.split(full, full.shape[dim] // (stride * world), dim=dim)
    return [torch.cat(chunks[rank::world], dim=dim) for rank in range(world)]


@pytest.mark.parametrize(("dim", "stride", "world"), [(0, 1, 2), (1, 1, 4), (0, 2, 2), (0, 2, 4), (1, 1, 1)])
def test_shards_are_megatrons_cut_and_merge_back(dim, stride, world):
    full = torch.arange(8 * 16, dtype=torch.float32).reshape(8, 16)
    expected = megatron_shards(full, dim, stride, world)
    shards = [shard_of(full, dim, stride, rank, world) for rank in range(world)]
    for got, want in zip(shards, expected, strict=True):
        assert torch.equal(got, want)
    assert torch.equal(merge_shards(shards, dim, stride), full)


def test_gated_mlp_shards_keep_gate_and_up_apart_across_a_tensor_parallel_change():
    """SwiGLU's fc1 is [gate; up]; each rank holds [gate_r; up_r]. Merging TP2 shards and cutting
    for TP4 must give every TP4 rank its own gate rows followed by its own up rows."""
    gate, up = torch.arange(8.0), 100 + torch.arange(8.0)
    full = torch.cat([gate, up])
    tp2 = [shard_of(full, 0, 2, rank, 2) for rank in range(2)]
    assert torch.equal(tp2[1], torch.cat([gate[4:], up[4:]]))
    rebuilt = merge_shards(tp2, 0, 2)
    assert torch.equal(rebuilt, full)
    assert torch.equal(shard_of(rebuilt, 0, 2, 3, 4), torch.cat([gate[6:], up[6:]]))


def test_replicated_parameters_are_copied():
    full = torch.randn(5)
    assert torch.equal(shard_of(full, None, 1, 1, 2), full)
    assert torch.equal(merge_shards([full, full + 1], None), full)


def test_uneven_cut_is_an_error():
    with pytest.raises(ValueError, match="does not split into 4 equal chunks"):
        shard_of(torch.zeros(6, 2), 0, 1, 0, 4)


def record(tp=1, pp=1, dp=1, zero=0, two_d=False, dtype="fp32", batch=8, partition="uniform") -> LayoutRecord:
    world = tp * pp * dp
    return LayoutRecord(
        world_size=world,
        tensor_parallel=tp,
        pipeline_parallel=pp,
        data_parallel=dp,
        micro_batch_size=2,
        global_batch_size=batch,
        gradient_accumulation_steps=batch // (2 * dp),
        zero_stage=zero,
        tensor_parallel_2d=two_d,
        dtype=dtype,
        partition_method=partition,
    )


def test_old_checkpoints_are_1d_with_unknown_precision():
    old = {
        k: v
        for k, v in asdict(record(tp=4)).items()
        if k not in ("tensor_parallel_2d", "dtype", "partition_method")
    }
    saved = LayoutRecord.from_meta(old)
    assert saved.tensor_parallel_2d is False and saved.dtype is None
    assert saved.same_files_as(record(tp=4, dtype="bf16"))  # unknown precision: as before, not compared
    assert not saved.same_files_as(record(tp=4, two_d=True))


def test_what_counts_as_another_layout():
    base = record(pp=2, zero=1)
    assert base.same_files_as(replace(base, micro_batch_size=1, gradient_accumulation_steps=8))
    for other in (
        replace(base, data_parallel=2, world_size=4),
        replace(base, zero_stage=0),
        replace(base, dtype="bf16"),
        replace(base, partition_method="parameters"),
        replace(base, tensor_parallel=2, world_size=4),
    ):
        assert not base.same_files_as(other), other


MODEL = ModelConfig(name="m", num_layers=2, hidden_size=8, num_attention_heads=2, seq_length=4)


def write_checkpoint(root: Path, saved: LayoutRecord, manifests: bool = True) -> Path:
    """A checkpoint directory as far as the pre-flight reads it: complete.json and the manifests."""
    directory = root / "step_00000004"
    directory.mkdir(parents=True)
    meta = {"step": 4, "tag": directory.name, "model": asdict(MODEL), "layout": asdict(saved), "files": {}}
    (directory / MARKER).write_text(json.dumps(meta))
    if manifests:
        for rank in range(saved.world_size):
            (directory / MANIFEST.format(rank=rank)).write_text(json.dumps({"optimizer": "flat"}))
    return directory


def test_same_layout_resumes_natively_and_another_is_converted(tmp_path):
    write_checkpoint(tmp_path, record(tp=2, zero=1))
    same = find_resume_point(tmp_path, MODEL, record(tp=2, zero=1), report=False)
    other = find_resume_point(tmp_path, MODEL, record(pp=2, zero=1), report=False)
    assert same.step == 4 and not same.convert
    assert other.convert and other.saved == record(tp=2, zero=1)


@pytest.mark.parametrize(
    ("saved", "requested", "manifests", "pattern"),
    [
        (
            record(tp=4),
            record(tp=4, two_d=True),
            True,
            r"parallel\.tensor_parallel_2d: the checkpoint .* was written with tp 4, .*; this launch asks for "
            r"tp 4 \(2D\), .* not converted to or from another layout; relaunch with the saved layout "
            r"\(parallel\.tensor_model_parallel_size=4 .* parallel\.tensor_parallel_2d=false on 4 processes\)",
        ),
        (
            record(tp=4, two_d=True),
            record(tp=2, dp=2),
            True,
            r"parallel\.tensor_parallel_2d: .* tp 4 \(2D\).*parallel\.tensor_parallel_2d=true on 4 processes",
        ),
        (
            record(dp=2),
            record(dp=2, batch=16),
            True,
            r"parallel\.global_batch_size: 16, but the checkpoint .* was trained with 8; .* Set "
            r"parallel\.global_batch_size=8",
        ),
        (
            record(dp=2, dtype="fp16"),
            record(),
            True,
            r"precision: .* fp16 checkpoints resume only on the layout",
        ),
        (
            record(dp=2),
            record(),
            False,
            r"parallel: .* no parameter manifest for rank\(s\) \[0, 1\] .* resumes only on its own layout",
        ),
    ],
    ids=["1d-to-2d", "2d-to-1d", "global-batch", "fp16", "no-manifest"],
)
def test_refusals_name_the_key_the_change_and_the_fix(tmp_path, saved, requested, manifests, pattern):
    write_checkpoint(tmp_path, saved, manifests)
    with pytest.raises(ConfigError, match=pattern):
        find_resume_point(tmp_path, MODEL, requested, report=False)


def test_state_tied_to_the_layout_refuses_a_conversion_but_not_a_native_resume(tmp_path):
    write_checkpoint(tmp_path, record(tp=2, zero=1))
    bound = "pruning masks (saved per tensor-parallel shard)"
    same = find_resume_point(tmp_path, MODEL, record(tp=2, zero=1), report=False, layout_bound_state=bound)
    assert same.step == 4 and not same.convert
    with pytest.raises(
        ConfigError,
        match=r"parallel: the checkpoint .* was written with tp 2, .*; this run's pruning masks \(saved per "
        r"tensor-parallel shard\) cannot be converted to another layout\. Resume with the saved layout",
    ):
        find_resume_point(tmp_path, MODEL, record(dp=2, zero=1), report=False, layout_bound_state=bound)
