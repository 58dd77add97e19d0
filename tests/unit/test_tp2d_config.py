"""2D tensor parallelism: the layout option validates, its limits are refused with a fix, and the
block layout tiles full tensors (no process group)."""

from __future__ import annotations

import pytest
import torch

from integration.errors import ConfigError
from integration.tp2d.grid import Grid2D, block, grid_side, vector_piece
from integration.validate import validate

TP2D = ["parallel=tp2d_2x2"]


def test_tp2d_2x2_validates_on_4_and_8_processes(typed_config):
    config = typed_config(TP2D)
    assert config.parallel.tensor_parallel_2d is True
    assert validate(config, 4, cuda_available=False).layout.tensor_parallel == 4
    layout = validate(typed_config([*TP2D, "parallel.global_batch_size=16"]), 8, cuda_available=False).layout
    assert (layout.tensor_parallel, layout.data_parallel) == (4, 2)


def test_tp2d_2x2_pp2_validates_on_8_processes(typed_config):
    layout = validate(typed_config(["parallel=tp2d_2x2_pp2"]), 8, cuda_available=False).layout
    assert (layout.tensor_parallel, layout.pipeline_parallel, layout.data_parallel) == (4, 2, 1)


def test_1d_is_the_default(typed_config):
    assert typed_config([]).parallel.tensor_parallel_2d is False
    assert typed_config(["parallel=tp2"]).parallel.tensor_parallel_2d is False


@pytest.mark.parametrize(
    ("overrides", "world_size", "pattern"),
    [
        (["parallel.tensor_model_parallel_size=2"], 2, r"tensor_model_parallel_size: 2 is not a square"),
        (
            ["parallel.micro_batch_size=1", "parallel.global_batch_size=4"],
            4,
            r"micro_batch_size: 1 does not split",
        ),
        (
            ["parallel.pipeline_model_parallel_size=2", "parallel.partition_method=parameters"],
            8,
            r"partition_method: 'parameters' — pipeline stages with 2D",
        ),
        (
            ["parallel.pipeline_model_parallel_size=2", "parallel.activation_checkpoint_interval=1"],
            8,
            r"activation_checkpoint_interval: 1 — 2D tensor parallelism has no activation checkpointing",
        ),
        (["model.activation=swiglu"], 4, r"model\.activation: 'swiglu' is not implemented for 2D"),
        (["model.position_embedding_type=rope"], 4, r"position_embedding_type: 'rope' is not implemented"),
        (["model.num_query_groups=2"], 4, r"multi-head attention only"),
        (["model.hidden_dropout=0.1"], 4, r"hidden_dropout: 0\.1 — 2D tensor parallelism has no dropout"),
    ],
    ids=[
        "not-square",
        "odd-micro-batch",
        "pipeline-partition",
        "pipeline-recompute",
        "swiglu",
        "rope",
        "gqa",
        "dropout",
    ],
)
def test_unsupported_2d_configs_are_refused(typed_config, overrides, world_size, pattern):
    config = typed_config([*TP2D, *overrides])
    with pytest.raises(ConfigError, match=pattern):
        validate(config, world_size, cuda_available=False)
    # The same overrides without the 2D switch are not refused for a 2D reason.
    try:
        validate(typed_config([*TP2D, *overrides, "parallel.tensor_parallel_2d=false"]), world_size, False)
    except ConfigError as err:
        assert "2D" not in str(err) and "square" not in str(err)


def grids(q: int) -> list[Grid2D]:
    return [Grid2D(q, r, c, None, None, (), ()) for r in range(q) for c in range(q)]


@pytest.mark.parametrize("q", [1, 2, 3])
def test_blocks_tile_the_full_tensor(q):
    full = torch.arange(6 * q * 4 * q, dtype=torch.float32).reshape(6 * q, 4 * q)
    pieces = {(g.row, g.col): block(full, g) for g in grids(q)}
    rows = [torch.cat([pieces[r, c] for c in range(q)], dim=1) for r in range(q)]
    assert torch.equal(torch.cat(rows, dim=0), full)
    vector = torch.arange(5 * q * q, dtype=torch.float32)
    # Column j's ranks, in row order, hold consecutive pieces of block j.
    order = sorted(grids(q), key=lambda g: (g.col, g.row))
    assert torch.equal(torch.cat([vector_piece(vector, g) for g in order]), vector)


def test_grid_side_needs_a_square():
    assert grid_side(4) == 2 and grid_side(9) == 3 and grid_side(1) == 1
    with pytest.raises(ValueError, match="square"):
        grid_side(8)
