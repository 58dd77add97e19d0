"""Launcher arguments are removed before Hydra parses the command line."""

from __future__ import annotations

import pytest

from integration.launcher_args import strip_launcher_args


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["train.py", "--local_rank=3", "parallel=tp2"], ["train.py", "parallel=tp2"]),
        (["train.py", "--local_rank", "3", "parallel=tp2"], ["train.py", "parallel=tp2"]),
        (["train.py", "parallel=tp2", "--local-rank=0"], ["train.py", "parallel=tp2"]),
        (["train.py", "--local-rank", "1", "model=llama_tiny"], ["train.py", "model=llama_tiny"]),
        (
            ["train.py", "model=gpt_tiny", "--local_rank=7", "trainer.max_steps=5", "+experiment=x"],
            ["train.py", "model=gpt_tiny", "trainer.max_steps=5", "+experiment=x"],
        ),
        (["train.py", "dry_run=true"], ["train.py", "dry_run=true"]),
        (["train.py"], ["train.py"]),
    ],
    ids=["equals", "separate", "dash-equals", "dash-separate", "middle", "nothing-to-strip", "empty"],
)
def test_strip_launcher_args(argv, expected):
    strip_launcher_args(argv)  # in place
    assert argv == expected


def test_program_name_is_kept_even_if_it_looks_like_a_flag():
    argv = ["--local_rank=0", "--local_rank=1", "a=1"]
    strip_launcher_args(argv)
    assert argv == ["--local_rank=0", "a=1"]


def test_similar_overrides_are_kept():
    argv = ["train.py", "cluster.env.local_rank=3", "+local_rank_note=x"]
    strip_launcher_args(argv)
    assert argv == ["train.py", "cluster.env.local_rank=3", "+local_rank_note=x"]
