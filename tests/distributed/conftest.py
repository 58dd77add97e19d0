import pytest

from integration.corpus import DEFAULT_CORPUS_PREFIX, bundled_documents, write_indexed


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/distributed" in str(item.fspath):
            item.add_marker(pytest.mark.distributed)


@pytest.fixture(scope="session", autouse=True)
def bundled_corpus():
    """The real-text corpus the runs train on (built once, as `python launch/prepare_data.py` does)."""
    if not DEFAULT_CORPUS_PREFIX.with_suffix(".idx").exists():
        write_indexed(bundled_documents(), DEFAULT_CORPUS_PREFIX, progress=False)
    return DEFAULT_CORPUS_PREFIX
