"""Compression without a process group: the quantizer and pruning arithmetic on plain tensors, the
matrices a technique targets, the export format round trip, and the DeepSpeed fact the design
rests on (0.19.8 refuses `compression_training`). Training with it: tests/distributed/test_compression.py."""

from __future__ import annotations

import math

import pytest
import torch

from integration.compression.quantizer import (
    GroupQuantizer,
    full_row_indices,
    magnitude_mask,
    shard_of,
)
from integration.compression.targets import compressible_linears, matching
from integration.ds_config import build_deepspeed_config
from integration.plan import render_plan
from integration.validate import validate


def test_deepspeed_0_19_8_refuses_a_compression_training_block(typed_config):
    """Why integration/compression exists: DeepSpeed's own library is gone, and a leftover block
    is an error. If a future pin accepts it again, this test says so."""
    from deepspeed.runtime.config import DeepSpeedConfig, DeepSpeedConfigError

    config = typed_config(["compression=int8_qat"])
    layout = validate(config, 1, cuda_available=False).layout
    ds_config = build_deepspeed_config(
        layout, config.parallel, config.optim, config.precision, config.trainer.max_steps
    )
    assert "compression_training" not in ds_config  # compression does not touch the DeepSpeed config
    ds_config["compression_training"] = {"weight_quantization": {"shared_parameters": {"enabled": True}}}
    with pytest.raises(DeepSpeedConfigError, match="compression library has been removed"):
        DeepSpeedConfig(ds_config)


def test_symmetric_rounding_follows_deepspeeds_formula():
    # 2 bits: L = 4 levels, scale = 2·max|w| / L = 0.5, codes clamp(round(w / 0.5), -2, 1): the
    # maximum itself is clipped to the top level (1), as in DeepSpeed's SymQuantizer.
    w = torch.tensor([[1.0, -0.5], [0.25, -1.0]])
    q = GroupQuantizer(bits=2, symmetric=True, groups=1, full_rows=2)
    scale, zero_point = q.parameters(w)
    assert zero_point is None and scale.tolist() == [0.5]
    assert q.codes(w, scale, zero_point).tolist() == [[1.0, -1.0], [0.0, -2.0]]
    assert q.fake_quantize(w).tolist() == [[0.5, -0.5], [0.0, -1.0]]


def test_asymmetric_rounding_follows_deepspeeds_formula():
    # 2 bits: scale = (max - min) / 4 = 0.5, zero point round(min / scale)·scale = -1.0,
    # codes clamp(round((w - zp) / scale), 0, 3).
    w = torch.tensor([[1.0, -1.0], [0.2, 0.0]])
    q = GroupQuantizer(bits=2, symmetric=False, groups=1, full_rows=2)
    scale, zero_point = q.parameters(w)
    assert scale.tolist() == [0.5] and zero_point.tolist() == [-1.0]
    assert q.codes(w, scale, zero_point).tolist() == [[3.0, 0.0], [2.0, 2.0]]
    assert q.fake_quantize(w).tolist() == [[0.5, -1.0], [0.0, 0.0]]


@pytest.mark.parametrize(
    ("bits", "symmetric", "groups"), [(8, True, 1), (8, True, 4), (4, False, 2), (3, True, 8)]
)
def test_quantized_weights_have_at_most_2_to_the_bits_levels_per_group(bits, symmetric, groups):
    torch.manual_seed(0)
    w = torch.randn(32, 48) * torch.linspace(0.1, 3.0, 32)[:, None]  # groups with different ranges
    q = GroupQuantizer(bits, symmetric, groups, full_rows=32)
    scale, zero_point = q.parameters(w)
    codes = q.codes(w, scale, zero_point)
    low, high = q.code_range
    assert (codes == codes.round()).all() and low <= codes.min() and codes.max() <= high
    assert high - low + 1 == 2**bits
    fake = q.fake_quantize(w)
    for g, block in enumerate(fake.chunk(groups)):
        assert block.unique().numel() <= 2**bits
        # every value lies on the group's grid
        grid = (block - (0 if zero_point is None else zero_point[g])) / scale[g]
        assert torch.allclose(grid, grid.round(), atol=1e-4)
    # rounding error at most one step (the clipped top level) and half a step elsewhere on average
    step = scale[q.group_of_row][:, None]
    assert ((w - fake).abs() <= step * (1 + 1e-5)).all()
    assert (w - fake).abs().mean() < step.mean() / 2


def test_quantizer_gradient_is_straight_through():
    w = torch.randn(8, 4, requires_grad=True)
    q = GroupQuantizer(8, True, 2, full_rows=8)
    out = q(w)
    assert torch.equal(out.detach(), q.fake_quantize(w))  # exactly the grid values, not w + (q - w)
    (out * torch.arange(32.0).view(8, 4)).sum().backward()
    assert torch.equal(w.grad, torch.arange(32.0).view(8, 4))


def test_zero_range_group_does_not_divide_by_zero():
    w = torch.zeros(4, 4)
    for symmetric in (True, False):
        fake = GroupQuantizer(8, symmetric, 2, full_rows=4).fake_quantize(w)
        assert torch.equal(fake, w)


@pytest.mark.parametrize("dense_ratio", [0.5, 0.3, 1.0])
def test_magnitude_mask_keeps_the_largest_entries(dense_ratio):
    torch.manual_seed(1)
    w = torch.randn(16, 10)
    mask = magnitude_mask(w, dense_ratio)
    keep = math.ceil(dense_ratio * w.numel())
    assert int(mask.sum()) == keep
    if keep < w.numel():
        assert w.abs()[mask].min() >= w.abs()[~mask].max()


def test_magnitude_mask_breaks_ties_by_position():
    mask = magnitude_mask(torch.ones(2, 3), 0.5)
    assert mask.tolist() == [[True, True, True], [False, False, False]]


@pytest.mark.parametrize(("stride", "world"), [(1, 2), (2, 2), (2, 4), (1, 1)])
def test_shard_rows_map_to_the_full_matrix_as_megatron_cuts_it(stride, world):
    """Megatron gives rank r the chunks r, r + world, ... of world·stride row chunks (stride 2:
    a SwiGLU fc1's gate and up halves), so a shard's groups are found through its full rows."""
    full = torch.arange(48.0).view(16, 3)
    shards = [shard_of(full, 0, r, world, stride) for r in range(world)]
    for rank, shard in enumerate(shards):
        assert torch.equal(shard, full[full_row_indices(shard.shape[0], 0, stride, rank, world)])
    assert sorted(torch.cat(shards)[:, 0].tolist()) == full[:, 0].tolist()
    # a quantizer on a shard assigns each row the group of its full-matrix row
    q_full = GroupQuantizer(8, True, 4, full_rows=16)
    for rank, shard in enumerate(shards):
        rows = full_row_indices(shard.shape[0], 0, stride, rank, world)
        q_shard = GroupQuantizer(8, True, 4, full_rows=16, rows=rows)
        assert torch.equal(q_shard.group_of_row, q_full.group_of_row[rows])


def test_targets_are_the_transformer_linear_layers(typed_config):
    gpt = {t.name: t for t in compressible_linears(typed_config(["model=gpt_tiny"]).model)}
    assert len(gpt) == 4 * 4
    layer = "decoder.layers.3"
    assert (
        gpt[f"{layer}.self_attention.linear_qkv"].rows,
        gpt[f"{layer}.self_attention.linear_qkv"].columns,
    ) == (
        192,
        64,
    )
    assert gpt[f"{layer}.self_attention.linear_proj"].partition_dim == 1
    assert (gpt[f"{layer}.mlp.linear_fc2"].rows, gpt[f"{layer}.mlp.linear_fc2"].columns) == (64, 256)
    llama = {t.name: t for t in compressible_linears(typed_config(["model=llama_tiny"]).model)}
    # grouped-query attention: 4 query heads + 2×2 key/value heads of 16; SwiGLU: gate and up
    assert llama["decoder.layers.0.self_attention.linear_qkv"].rows == (4 + 2 * 2) * 16
    assert llama["decoder.layers.0.mlp.linear_fc1"].rows == 2 * 176
    assert matching(list(gpt), ["linear_fc"]) == [
        f"decoder.layers.{i}.mlp.linear_fc{j}" for i in range(4) for j in (1, 2)
    ]
    assert matching(list(gpt), [r"layers\.0\..*qkv"]) == ["decoder.layers.0.self_attention.linear_qkv"]


def test_compression_none_is_the_default_and_leaves_the_deepspeed_config_alone(typed_config):
    default, none = typed_config([]), typed_config(["compression=none"])
    assert default.compression == none.compression
    assert not (default.compression.weight_quantization.enabled or default.compression.sparse_pruning.enabled)
    for overrides in (["compression=int8_sparse_50"], ["compression=none"]):
        config = typed_config(overrides)
        layout = validate(config, 1, cuda_available=False).layout
        assert build_deepspeed_config(
            layout, config.parallel, config.optim, config.precision, config.trainer.max_steps
        ) == build_deepspeed_config(
            layout, default.parallel, default.optim, default.precision, default.trainer.max_steps
        )


def test_dry_run_plan_names_the_compression(typed_config):
    config = typed_config(["compression=int8_sparse_50", "compression.sparse_pruning.schedule_offset=49"])
    plan = render_plan(config, validate(config, 1, cuda_available=False).layout, [])
    assert (
        "compress  int8_sparse_50: weights 8-bit symmetric (1 group(s) per matrix) from step 1 on 16 "
        "matrices; l1 pruning to 0.5 dense at step 50 on 16 matrices"
    ) in plan
    assert "compress" not in render_plan(typed_config([]), validate(typed_config([]), 1, False).layout, [])
