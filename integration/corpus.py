"""The bundled real-text corpus and writing token files in Megatron-Core's indexed format."""

from __future__ import annotations

import ast
import sysconfig
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from integration.tokenizer import ByteTokenizer

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS_PREFIX = PROJECT_ROOT / "data" / "pydoc" / "pydoc_text"

# Installed third-party code and the interpreter's own test suite are not part of the corpus.
_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idlelib", "turtledemo", "lib2to3"}


@dataclass(frozen=True)
class CorpusStats:
    documents: int
    tokens: int


def bundled_documents() -> list[str]:
    """Python's help topics and, per standard-library module, its docstrings (module, classes,
    functions) read with `ast` from the source files, without importing anything. Real English
    prose and examples, identical on every machine with the same Python version."""
    import pydoc_data.topics

    docs = [pydoc_data.topics.topics[key] for key in sorted(pydoc_data.topics.topics)]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for source in sorted(stdlib.rglob("*.py")):
        relative = source.relative_to(stdlib)
        if relative.parts[0] in _SKIP_DIRS or any(part.startswith("test") for part in relative.parts):
            continue
        doc = _docstrings(source)
        if len(doc) >= 200:
            docs.append(doc)
    return docs


def _docstrings(source: Path) -> str:
    try:
        tree = ast.parse(source.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return ""
    nodes = [tree] + [
        n for n in ast.walk(tree) if isinstance(n, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
    ]
    return "\n\n".join(d for d in (ast.get_docstring(n) for n in nodes) if d)


def text_file_documents(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    return [block.strip() for block in text.split("\n\n") if block.strip()]


def write_indexed(documents: Iterable[str], prefix: Path, progress: bool = True) -> CorpusStats:
    """Tokenize and write <prefix>.bin/.idx with Megatron-Core's IndexedDatasetBuilder."""
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
    from tqdm import tqdm

    tokenizer = ByteTokenizer()
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    documents = list(documents)
    builder = IndexedDatasetBuilder(str(prefix) + ".bin", dtype=np.uint16)
    tokens = 0
    for doc in _progress(documents, progress, tqdm):
        ids = tokenizer.tokenize(doc) + [tokenizer.eod]
        builder.add_document(torch.tensor(ids, dtype=torch.int64), [len(ids)])
        tokens += len(ids)
    builder.finalize(str(prefix) + ".idx")
    return CorpusStats(documents=len(documents), tokens=tokens)


def _progress(items: list[str], enabled: bool, tqdm) -> Iterator[str]:
    yield from tqdm(items, desc="tokenizing", unit="doc", disable=not enabled)
