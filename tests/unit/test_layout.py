"""Layout.derive and the rank groups, against Megatron-Core's and DeepSpeed's own rank order."""

from __future__ import annotations

import itertools

import pytest

from integration.config.schema import ParallelConfig
from integration.layout import Layout

SHAPES = [  # (tp, pp, dp)
    (1, 1, 1),
    (2, 1, 1),
    (1, 2, 1),
    (1, 1, 4),
    (2, 2, 2),
    (2, 1, 3),
    (4, 2, 1),
    (1, 4, 2),
    (2, 3, 2),
]


def layout(tp: int, pp: int, dp: int, micro: int = 2, accumulation: int = 2) -> Layout:
    parallel = ParallelConfig(
        name="t",
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        micro_batch_size=micro,
        global_batch_size=micro * accumulation * dp,
    )
    return Layout.derive(parallel, world_size=tp * pp * dp)


def test_derive_world_8_tp2_pp2():
    parallel = ParallelConfig(
        name="t",
        tensor_model_parallel_size=2,
        pipeline_model_parallel_size=2,
        micro_batch_size=2,
        global_batch_size=16,
    )
    lay = Layout.derive(parallel, world_size=8)
    assert lay == Layout(
        world_size=8,
        tensor_parallel=2,
        pipeline_parallel=2,
        data_parallel=2,
        micro_batch_size=2,
        global_batch_size=16,
        gradient_accumulation_steps=4,
    )
    assert lay.describe() == (
        "world 8 = tp 2 × pp 2 × dp 2; global batch 16 = micro 2 × accumulation 4 × dp 2"
    )


@pytest.mark.parametrize(("tp", "pp", "dp"), SHAPES)
def test_derive_sizes(tp, pp, dp):
    lay = layout(tp, pp, dp, micro=3, accumulation=5)
    assert lay.data_parallel == dp
    assert lay.gradient_accumulation_steps == 5
    assert lay.global_batch_size == 3 * 5 * dp
    assert lay.tensor_parallel * lay.pipeline_parallel * lay.data_parallel == lay.world_size


def test_groups_world_8_tp2_pp2_match_megatron_default_order():
    lay = layout(2, 2, 2)
    assert lay.tensor_groups() == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert lay.data_groups() == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert lay.pipeline_groups() == [[0, 4], [1, 5], [2, 6], [3, 7]]


@pytest.mark.parametrize(("tp", "pp", "dp"), SHAPES)
def test_every_rank_is_in_exactly_one_group_of_each_family(tp, pp, dp):
    lay = layout(tp, pp, dp)
    for groups, size in (
        (lay.tensor_groups(), tp),
        (lay.data_groups(), dp),
        (lay.pipeline_groups(), pp),
    ):
        assert all(len(g) == size for g in groups)
        assert sorted(itertools.chain.from_iterable(groups)) == list(range(lay.world_size))


@pytest.mark.parametrize(("tp", "pp", "dp"), SHAPES)
def test_groups_equal_megatron_core_rank_generator(tp, pp, dp):
    from megatron.core.parallel_state import RankGenerator

    # The order initialize_model_parallel uses by default (no context or expert parallelism).
    ranks = RankGenerator(tp=tp, ep=1, dp=dp, pp=pp, cp=1, order="tp-cp-ep-dp-pp")
    lay = layout(tp, pp, dp)
    assert sorted(lay.tensor_groups()) == sorted(ranks.get_ranks("tp"))
    assert sorted(lay.data_groups()) == sorted(ranks.get_ranks("dp"))
    assert sorted(lay.pipeline_groups()) == sorted(ranks.get_ranks("pp"))


@pytest.mark.parametrize(("tp", "pp", "dp"), SHAPES)
def test_groups_equal_deepspeed_pipeline_topology(tp, pp, dp):
    from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology

    topology = PipeModelDataParallelTopology(num_pp=pp, num_mp=tp, num_dp=dp)
    lay = layout(tp, pp, dp)
    assert sorted(lay.tensor_groups()) == sorted(topology.get_axis_comm_lists("model"))
    assert sorted(lay.data_groups()) == sorted(topology.get_axis_comm_lists("data"))
    assert sorted(lay.pipeline_groups()) == sorted(topology.get_axis_comm_lists("pipe"))
    for rank in range(lay.world_size):
        tp_rank, dp_rank, pp_rank = lay.coordinates(rank)
        assert topology.get_rank(pipe=pp_rank, data=dp_rank, model=tp_rank) == rank


@pytest.mark.parametrize(("tp", "pp", "dp"), SHAPES)
def test_coordinates_and_rank_at_round_trip(tp, pp, dp):
    lay = layout(tp, pp, dp)
    seen = set()
    for rank in range(lay.world_size):
        coords = lay.coordinates(rank)
        assert 0 <= coords[0] < tp and 0 <= coords[1] < dp and 0 <= coords[2] < pp
        assert lay.rank_at(*coords) == rank
        seen.add(coords)
    assert len(seen) == lay.world_size
    for t, d, p in itertools.product(range(tp), range(dp), range(pp)):
        assert lay.coordinates(lay.rank_at(t, d, p)) == (t, d, p)


def test_coordinates_world_8_tp2_pp2():
    lay = layout(2, 2, 2)
    assert [lay.coordinates(r) for r in range(8)] == [
        (0, 0, 0),
        (1, 0, 0),
        (0, 1, 0),
        (1, 1, 0),
        (0, 0, 1),
        (1, 0, 1),
        (0, 1, 1),
        (1, 1, 1),
    ]
