"""Pre-flight data checks, the per-rank batch sampler and the synthetic dataset."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from integration.config.schema import DataConfig, ParallelConfig
from integration.corpus import write_indexed
from integration.data import BatchSampler, SyntheticDataset, check_data_files
from integration.errors import ConfigError
from integration.layout import Layout

DOCUMENTS = [
    "Hydra composes the configuration from groups.",
    "DeepSpeed runs the optimizer step; Megatron-Core builds the model.",
    "Non-ASCII text is several bytes per character: café, naïve, Größe.",
    "A fourth, slightly longer document so the index holds a few different lengths of sequence.",
]
PREPARE_FIX = re.escape("python launch/prepare_data.py")


def indexed(path: Path, **overrides) -> DataConfig:
    return DataConfig(name="test", kind="indexed", path=str(path), **overrides)


@pytest.fixture
def prefix(tmp_path) -> Path:
    prefix = tmp_path / "x"
    stats = write_indexed(DOCUMENTS, prefix, progress=False)
    assert stats.documents == len(DOCUMENTS)
    assert stats.tokens == sum(len(d.encode("utf-8")) + 1 for d in DOCUMENTS)  # + end-of-document
    return prefix


def test_valid_indexed_dataset_passes(prefix):
    check_data_files(indexed(prefix))  # raises on any problem
    tokens = np.fromfile(str(prefix) + ".bin", dtype=np.uint16)
    assert tokens.size == sum(len(d.encode("utf-8")) + 1 for d in DOCUMENTS)
    assert int(tokens.max()) == 256  # end-of-document, inside the byte vocabulary (258)


def test_synthetic_data_needs_no_files(tmp_path):
    check_data_files(DataConfig(name="synthetic", kind="synthetic", path=str(tmp_path / "absent")))


@pytest.mark.parametrize("missing", [".idx", ".bin"])
def test_missing_file(prefix, missing):
    Path(str(prefix) + missing).unlink()
    pattern = rf"data\.path: '{re.escape(str(prefix))}' — {re.escape(str(prefix) + missing)} does not exist; .*{PREPARE_FIX}"
    with pytest.raises(ConfigError, match=pattern):
        check_data_files(indexed(prefix))


def test_missing_prefix(tmp_path):
    with pytest.raises(ConfigError, match=rf"data\.path: .*nope\.idx does not exist; .*{PREPARE_FIX}"):
        check_data_files(indexed(tmp_path / "nope"))


def test_bad_index_header(prefix):
    idx = Path(str(prefix) + ".idx")
    idx.write_bytes(b"NOTANIDX!" + idx.read_bytes()[9:])
    pattern = rf"data\.path: {re.escape(str(idx))} is not a Megatron indexed-dataset index \(bad header\); .*{PREPARE_FIX}"
    with pytest.raises(ConfigError, match=pattern):
        check_data_files(indexed(prefix))


def test_truncated_bin(prefix):
    bin_ = Path(str(prefix) + ".bin")
    size = bin_.stat().st_size
    with open(bin_, "r+b") as handle:
        handle.truncate(size - 6)
    pattern = (
        rf"data\.path: {re.escape(str(bin_))} holds {size - 6} bytes but its index describes {size} — "
        rf"the file is truncated .*{PREPARE_FIX}"
    )
    with pytest.raises(ConfigError, match=pattern):
        check_data_files(indexed(prefix))


def test_bin_from_another_index(prefix, tmp_path):
    other = tmp_path / "other"
    write_indexed(DOCUMENTS[:2], other, progress=False)
    Path(str(other) + ".bin").replace(str(prefix) + ".bin")
    with pytest.raises(ConfigError, match=r"does not belong to this index"):
        check_data_files(indexed(prefix))


def test_token_id_beyond_the_vocabulary(prefix):
    # The byte files hold ids up to 256 (end-of-document); a 200-token vocabulary cannot embed them.
    with pytest.raises(
        ConfigError,
        match=r"data\.vocab_size: .*\.bin holds token id 256 but the vocabulary is 200; set data\.vocab_size=257",
    ):
        check_data_files(indexed(prefix, vocab_size=200))


def test_token_id_beyond_the_tokenizer_vocabulary(tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    prefix = tmp_path / "wide"
    builder = IndexedDatasetBuilder(str(prefix) + ".bin", dtype=np.uint16)
    builder.add_document(torch.tensor([1, 2, 3, 1000]), [4])
    builder.finalize(str(prefix) + ".idx")
    with pytest.raises(
        ConfigError, match=r"token id 1000 but the vocabulary is 258; set data\.vocab_size=1001"
    ):
        check_data_files(indexed(prefix))
    check_data_files(indexed(prefix, vocab_size=1001))  # the suggested fix works


# --- which samples each rank reads ----------------------------------------------------------------


def layout(dp: int, micro: int = 2, global_batch: int = 8) -> Layout:
    parallel = ParallelConfig(name="t", micro_batch_size=micro, global_batch_size=global_batch)
    return Layout.derive(parallel, world_size=dp)


def step_samples(lay: Layout, step: int) -> list[int]:
    """Every sample index read at `step`, over all data-parallel ranks and micro-batches."""
    samplers = [BatchSampler(lay, rank) for rank in range(lay.data_parallel)]
    return [
        i
        for micro in range(lay.gradient_accumulation_steps)
        for sampler in samplers
        for i in sampler.indices(step, micro)
    ]


@pytest.mark.parametrize(("dp", "accumulation"), [(1, 4), (2, 2), (4, 1)])
@pytest.mark.parametrize("step", [0, 1, 7])
def test_each_global_batch_is_read_exactly_once(dp, accumulation, step):
    lay = layout(dp)
    assert lay.gradient_accumulation_steps == accumulation
    samples = step_samples(lay, step)
    assert len(samples) == len(set(samples)) == 8
    assert sorted(samples) == list(range(8 * step, 8 * step + 8))


def test_samples_per_step_do_not_depend_on_the_layout_split():
    for step in range(3):
        by_layout = {dp: set(step_samples(layout(dp), step)) for dp in (1, 2, 4)}
        assert by_layout[1] == by_layout[2] == by_layout[4]


def test_micro_batches_follow_megatrons_pretraining_sampler():
    # Micro-batch m of a step is the next micro×dp samples, cut by data-parallel rank.
    lay = layout(2)
    assert BatchSampler(lay, 0).indices(step=1, micro=0) == [8, 9]
    assert BatchSampler(lay, 1).indices(step=1, micro=0) == [10, 11]
    assert BatchSampler(lay, 0).indices(step=1, micro=1) == [12, 13]
    assert BatchSampler(lay, 1).indices(step=1, micro=1) == [14, 15]


def test_steps_do_not_overlap():
    lay = layout(2)
    seen = [i for step in range(5) for i in step_samples(lay, step)]
    assert sorted(seen) == list(range(40))


# --- synthetic data -------------------------------------------------------------------------------


def test_synthetic_dataset_is_deterministic_per_index():
    a = SyntheticDataset(size=16, seq_length=12, vocab_size=258, seed=5)
    b = SyntheticDataset(size=16, seq_length=12, vocab_size=258, seed=5)
    later = [b[i] for i in reversed(range(16))][::-1]  # other access order, other instance
    for i in range(16):
        for key in ("tokens", "labels", "loss_mask", "position_ids"):
            assert torch.equal(a[i][key], later[i][key])
            assert torch.equal(a[i][key], a[i][key])
    assert not torch.equal(a[0]["tokens"], a[1]["tokens"])
    other_seed = SyntheticDataset(size=16, seq_length=12, vocab_size=258, seed=6)
    assert not torch.equal(a[0]["tokens"], other_seed[0]["tokens"])


def test_synthetic_sample_shapes_and_shift():
    dataset = SyntheticDataset(size=4, seq_length=12, vocab_size=50, seed=0)
    assert len(dataset) == 4
    sample = dataset[3]
    assert sample["tokens"].shape == sample["labels"].shape == (12,)
    assert torch.equal(sample["tokens"][1:], sample["labels"][:-1])  # labels are the next tokens
    assert int(sample["tokens"].max()) < 50 and int(sample["tokens"].min()) >= 0
    assert torch.equal(sample["position_ids"], torch.arange(12))
    assert torch.equal(sample["loss_mask"], torch.ones(12))
