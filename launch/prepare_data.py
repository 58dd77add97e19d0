"""Build the bundled training corpus: English text that ships with every Python install (the
interpreter's help pages, `pydoc_data.topics`, plus the standard library's module docstrings),
byte-tokenized into Megatron-Core's memory-mapped .bin/.idx format. No download.

    python launch/prepare_data.py                      # -> data/pydoc/pydoc_text.{bin,idx}
    python launch/prepare_data.py --input my.txt --output data/mine/mine   # your own text, one document per blank-line-separated block
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from integration.corpus import DEFAULT_CORPUS_PREFIX, bundled_documents, text_file_documents, write_indexed  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--input", type=Path, help="UTF-8 text file; blank-line-separated blocks become documents"
    )
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_CORPUS_PREFIX, help="output prefix (no extension)"
    )
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    documents = text_file_documents(args.input) if args.input else bundled_documents()
    stats = write_indexed(documents, args.output, progress=not args.quiet)
    print(f"wrote {stats.documents} documents, {stats.tokens:,} tokens -> {args.output}.bin/.idx")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
