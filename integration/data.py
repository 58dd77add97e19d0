"""Training and validation samples, and which of them each rank reads.

Indexed data goes through Megatron-Core's own stack (memory-mapped .bin/.idx, GPTDataset with its
cached, seeded sample order and train/valid/test split), so files a user prepared for Megatron-LM
work unchanged. The global batch of step s is samples [s·G, (s+1)·G) in that order, cut into
micro-batches across data-parallel ranks exactly as Megatron's pretraining sampler does — every
layout with the same global batch sees the same samples at the same step.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from integration.config.schema import DataConfig
from integration.corpus import PROJECT_ROOT
from integration.errors import ConfigError
from integration.layout import Layout
from integration.tokenizer import ByteTokenizer, tokenizer_vocab_size

_IDX_MAGIC = b"MMIDIDX\x00\x00"


def resolve_prefix(path: str) -> Path:
    """A relative data.path is looked up from the working directory, then from the project."""
    candidate = Path(path)
    if candidate.is_absolute() or Path(str(candidate) + ".idx").exists():
        return candidate
    return PROJECT_ROOT / candidate


def check_data_files(data: DataConfig) -> None:
    """Pre-flight, on every rank before any process group: the files exist, the index is an
    indexed-dataset index, the .bin holds exactly what the index describes, and no token id
    reaches past the vocabulary. Cheap (memory-mapped), so every rank runs it."""
    if data.kind != "indexed":
        return
    prefix = resolve_prefix(data.path)
    idx, bin_ = Path(str(prefix) + ".idx"), Path(str(prefix) + ".bin")
    fix = "build it with `python launch/prepare_data.py` (bundled corpus) or point data.path at your own .bin/.idx prefix"
    for file in (idx, bin_):
        if not file.exists():
            raise ConfigError(f"data.path: {data.path!r} — {file} does not exist; {fix}")
    with open(idx, "rb") as handle:
        if handle.read(len(_IDX_MAGIC)) != _IDX_MAGIC:
            raise ConfigError(f"data.path: {idx} is not a Megatron indexed-dataset index (bad header); {fix}")
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    try:
        dataset = IndexedDataset(str(prefix), mmap=True)
        lengths = dataset.sequence_lengths
        expected = int(np.sum(lengths, dtype=np.int64)) * np.dtype(dataset.index.dtype).itemsize
    except Exception as err:  # noqa: BLE001 - any unreadable index is the same user problem
        raise ConfigError(f"data.path: {idx} cannot be read ({err}); {fix}") from None
    actual = bin_.stat().st_size
    if actual != expected:
        raise ConfigError(
            f"data.path: {bin_} holds {actual} bytes but its index describes {expected} — the file "
            f"is truncated or does not belong to this index; {fix}"
        )
    vocab = tokenizer_vocab_size(data.tokenizer, data.vocab_size)
    largest = _largest_token_id(np.memmap(bin_, dtype=dataset.index.dtype, mode="r"))
    if largest >= vocab:
        raise ConfigError(
            f"data.vocab_size: {bin_} holds token id {largest} but the vocabulary is {vocab}; set "
            f"data.vocab_size={largest + 1} or data.path to files made with data.tokenizer={data.tokenizer}"
        )


def _largest_token_id(tokens: np.ndarray, budget: int = 1 << 24) -> int:
    """Largest id in the whole file when it is small; for a large corpus, in 64 evenly spread
    windows of `budget` tokens in all — enough to catch files from another tokenizer without
    reading terabytes on every rank at start-up."""
    if tokens.size <= budget:
        return int(tokens.max()) if tokens.size else -1
    window = budget // 64
    starts = np.linspace(0, tokens.size - window, 64, dtype=np.int64)
    return max(int(tokens[start : start + window].max()) for start in starts)


class SyntheticDataset(torch.utils.data.Dataset):
    """Uniform random tokens; sample i is a pure function of (seed, i)."""

    def __init__(self, size: int, seq_length: int, vocab_size: int, seed: int):
        self.size, self.seq_length, self.vocab_size, self.seed = size, seq_length, vocab_size, seed

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        text = torch.randint(0, self.vocab_size, (self.seq_length + 1,), generator=generator)
        return {
            "tokens": text[:-1],
            "labels": text[1:],
            "loss_mask": torch.ones(self.seq_length),
            "position_ids": torch.arange(self.seq_length),
        }


@dataclass
class Datasets:
    train: torch.utils.data.Dataset
    valid: torch.utils.data.Dataset | None


def build_datasets(
    data: DataConfig, seq_length: int, seed: int, train_samples: int, valid_samples: int
) -> Datasets:
    """Call on every rank after the process group exists: Megatron builds the sample-order cache
    on rank 0 first and the others then load it."""
    seed = data.seed if data.seed is not None else seed
    vocab = tokenizer_vocab_size(data.tokenizer, data.vocab_size)
    if data.kind == "synthetic":
        return Datasets(
            train=SyntheticDataset(train_samples, seq_length, vocab, seed),
            valid=SyntheticDataset(valid_samples, seq_length, vocab, seed + 1) if valid_samples else None,
        )
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    prefix = resolve_prefix(data.path)
    config = GPTDatasetConfig(
        random_seed=seed,
        sequence_length=seq_length,
        blend=([str(prefix)], None),
        split=data.split,
        tokenizer=ByteTokenizer(),
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,
        path_to_cache=data.cache_dir or str(prefix.parent / "cache"),
    )
    train, valid, _ = BlendedMegatronDatasetBuilder(
        GPTDataset, [train_samples, valid_samples, 0], lambda: True, config
    ).build()
    return Datasets(train=train, valid=valid)


class BatchSampler:
    """Which samples this data-parallel rank reads for a given step and micro-batch."""

    def __init__(self, layout: Layout, data_parallel_rank: int):
        self.layout = layout
        self.dp_rank = data_parallel_rank

    def indices(self, step: int, micro: int) -> list[int]:
        lay = self.layout
        start = step * lay.global_batch_size + micro * lay.micro_batch_size * lay.data_parallel
        first = start + self.dp_rank * lay.micro_batch_size
        return list(range(first, first + lay.micro_batch_size))


def collate(
    dataset: torch.utils.data.Dataset, indices: list[int], device: torch.device
) -> dict[str, torch.Tensor]:
    samples = [dataset[i % len(dataset)] for i in indices]
    return {key: torch.stack([s[key] for s in samples]).to(device) for key in samples[0]}
