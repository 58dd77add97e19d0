"""Unit tests run in one process and never start a process group (the model build and DeepSpeed's
config parser, which need one, run in child processes: see tests/unit/scripts/)."""

from __future__ import annotations

import sys

import pytest


@pytest.fixture(autouse=True)
def no_process_group():
    yield
    if "torch" in sys.modules:  # without torch imported, nothing can have started one
        assert not sys.modules["torch"].distributed.is_initialized(), "a unit test started a process group"
