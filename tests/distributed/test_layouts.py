"""Same seed, same initial full weights, same data: every layout trains to the same losses as one
process (fp32, within 1e-4 relative over 10 steps), and the loss goes down on the real corpus."""

import pytest

from tests.distributed.launch import COMMON, STEPS, assert_same_curve, train


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The reference: one process under plain python, parallel=single, evaluation on."""
    run_dir = tmp_path_factory.mktemp("single") / "run"
    return train(run_dir, COMMON + ["parallel=single", "trainer.eval_interval=5"], launcher="python")


def assert_learns(losses: list[float]) -> None:
    assert sum(losses[-3:]) / 3 < losses[0] - 0.2, f"loss did not go down: {losses}"


def test_single_process_writes_the_run_directory(single):
    rows = single.train_rows
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    for row in rows:
        assert set(row) >= {"step", "loss", "lr", "grad_norm", "tokens_per_sec", "samples"}
        assert row["grad_norm"] > 0 and row["tokens_per_sec"] > 0
        assert row["samples"] == row["step"] * 8
        # a row per step (log_interval 1, the default): the interval is the step and the logging before it
        assert row["step_interval"] >= row["step_time"] > 0
    assert [r["step"] for r in single.val_rows] == [5, 10]
    assert all(r["val_loss"] > 0 for r in single.val_rows)
    assert (single.run_dir / "config.yaml").read_text().count("tensor_model_parallel_size: 1") == 1
    assert "trainer.max_steps=10" in (single.run_dir / "overrides.txt").read_text()
    assert_learns(single.losses)


@pytest.mark.parametrize(
    ("name", "nprocs", "launcher", "overrides"),
    [
        ("dp-zero0", 2, "deepspeed", ["parallel=dp", "parallel.zero_stage=0"]),
        ("dp-zero1-torchrun", 2, "torchrun", ["parallel=dp", "parallel.zero_stage=1"]),
        ("dp-zero2", 2, "deepspeed", ["parallel=dp", "parallel.zero_stage=2"]),
        ("dp-zero3", 2, "deepspeed", ["parallel=dp", "parallel.zero_stage=3"]),
        ("tp2", 2, "deepspeed", ["parallel=tp2"]),
        ("single-deepspeed-1proc", 1, "deepspeed", ["parallel=single"]),
    ],
)
def test_layout_matches_single_process(single, tmp_path, name, nprocs, launcher, overrides):
    run = train(tmp_path / name, COMMON + overrides, nprocs=nprocs, launcher=launcher)
    assert_learns(run.losses)
    assert_same_curve(run.losses, single.losses)
    assert all(r["step_interval"] >= r["step_time"] > 0 for r in run.train_rows)
    grad_norms = [r["grad_norm"] for r in run.train_rows]
    reference_norms = [r["grad_norm"] for r in single.train_rows]
    assert grad_norms == pytest.approx(reference_norms, rel=1e-3)
