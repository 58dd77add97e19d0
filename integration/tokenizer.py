"""Byte-level tokenizer: UTF-8 bytes are token ids 0-255, end-of-document 256, padding 257.

Needs no vocabulary file, so the bundled corpus can be tokenized on any machine without a
download. The object carries what Megatron-Core's GPTDataset asks of a tokenizer.
"""

from __future__ import annotations

from integration.errors import ConfigError

BYTE_VOCAB_SIZE = 258


class ByteTokenizer:
    vocab_size = BYTE_VOCAB_SIZE
    eod = 256
    pad = 257  # distinct from eod, so Megatron can mask padding without masking document ends
    unique_identifiers = {"class": "ByteTokenizer", "vocab_size": BYTE_VOCAB_SIZE}

    def tokenize(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def detokenize(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


def tokenizer_vocab_size(tokenizer: str, vocab_size: int | None) -> int:
    """Unpadded vocabulary of the data's tokenizer (an explicit data.vocab_size wins)."""
    if vocab_size is not None:
        return vocab_size
    if tokenizer == "byte":
        return BYTE_VOCAB_SIZE
    raise ConfigError(
        f"data.tokenizer: {tokenizer!r} is unknown; use data.tokenizer=byte, or give the vocabulary "
        "of your pre-tokenized files with data.vocab_size=N"
    )
