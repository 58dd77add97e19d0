"""launch/compare.py and integration/compare.py: config differences, headline metrics, the plot,
run directories without metrics.jsonl (read from the offline W&B run), and clean errors."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from integration.compare import (
    MISSING,
    NotARunError,
    config_differences,
    format_value,
    load_run,
    run_tokens_per_sec,
    summarize,
    unique_labels,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
COMPARE = PROJECT_ROOT / "launch" / "compare.py"
STEPS = 20
GLOBAL_BATCH, SEQ = 8, 128


def loss(step: int, zero_stage: int) -> float:
    return 6.0 - 0.05 * step * (1 + zero_stage)


def rate(step: int, zero_stage: int) -> float:
    return 1000.0 * (1 + zero_stage) + step


def write_run(directory: Path, zero_stage: int, log_tokens: bool = True) -> Path:
    """A run directory as launch/train.py leaves it: config.yaml and metrics.jsonl."""
    directory.mkdir(parents=True)
    config = {
        "model": {"name": "gpt_tiny", "seq_length": SEQ},
        "parallel": {"name": "dp", "zero_stage": zero_stage, "global_batch_size": GLOBAL_BATCH},
        "optim": {"lr": 3e-4, "betas": [0.9, 0.95]},
        "run": {"name": f"gpt_tiny_dp_z{zero_stage}", "dir": str(directory)},
    }
    OmegaConf.save(OmegaConf.create(config), directory / "config.yaml")
    with open(directory / "metrics.jsonl", "w", encoding="utf-8") as handle:
        for step in range(1, STEPS + 1):
            row = {
                "step": step,
                "loss": loss(step, zero_stage),
                "lr": 3e-4,
                "tokens_per_sec": rate(step, zero_stage),
            }
            if log_tokens:
                row["tokens"] = step * GLOBAL_BATCH * SEQ
            handle.write(json.dumps(row) + "\n")
            if step % 10 == 0:
                handle.write(json.dumps({"step": step, "val_loss": loss(step, zero_stage) + 0.1}) + "\n")
    return directory


@pytest.fixture
def two_runs(tmp_path) -> tuple[Path, Path]:
    # The second run logs no `tokens`: tokens seen are derived from the config.
    return write_run(tmp_path / "z0", 0), write_run(tmp_path / "z2", 2, log_tokens=False)


def test_config_differences_are_the_keys_that_differ(two_runs):
    a, b = (load_run(path) for path in two_runs)
    assert config_differences([a.config, b.config]) == {
        "parallel.zero_stage": [0, 2],
        "run.dir": [str(two_runs[0]), str(two_runs[1])],
        "run.name": ["gpt_tiny_dp_z0", "gpt_tiny_dp_z2"],
    }
    assert config_differences([{"a": 1}, {"a": 1, "b": {"c": None}}]) == {"b.c": [MISSING, None]}
    assert config_differences([a.config, a.config]) == {}


def test_summary_of_a_run(two_runs):
    run = load_run(two_runs[1])
    assert run.label == "gpt_tiny_dp_z2"
    summary = summarize(run)
    assert summary["final loss"] == loss(STEPS, 2)
    assert summary["mean loss last 10%"] == pytest.approx((loss(STEPS - 1, 2) + loss(STEPS, 2)) / 2)
    assert summary["best val_loss"] == pytest.approx(loss(STEPS, 2) + 0.1)
    # Every step logged: the run's rate is the steps over their seconds, not the rows' mean rate.
    assert summary["tokens/s"] == pytest.approx(STEPS / sum(1 / rate(s, 2) for s in range(1, STEPS + 1)))
    assert summary["tokens/s"] < sum(rate(s, 2) for s in range(1, STEPS + 1)) / STEPS
    assert summary["steps"] == STEPS
    assert (
        summary["tokens seen"]
        == STEPS * GLOBAL_BATCH * SEQ
        == summarize(load_run(two_runs[0]))["tokens seen"]
    )


def test_the_run_rate_weighs_each_row_by_the_steps_it_covers():
    # Rows every 2 steps at 1000 then 250 tokens/s: 4 steps in 2/1000 + 2/250 s per token, 400 tokens/s
    # (the rows' mean would say 625).
    every_two = [{"step": 2, "tokens_per_sec": 1000.0}, {"step": 4, "tokens_per_sec": 250.0}]
    assert run_tokens_per_sec(every_two) == pytest.approx(400.0)
    # A last row short of the log interval covers only its own steps: 3 at 1000, then 1 at 100.
    uneven = [{"step": 3, "tokens_per_sec": 1000.0}, {"step": 4, "tokens_per_sec": 100.0}]
    assert run_tokens_per_sec(uneven, log_interval=3) == pytest.approx(4 / (3 / 1000 + 1 / 100))
    # A run resumed into a new directory: its first row covers one log interval, not its step number.
    resumed = [{"step": 102, "tokens_per_sec": 1000.0}, {"step": 104, "tokens_per_sec": 250.0}]
    assert run_tokens_per_sec(resumed, log_interval=2) == pytest.approx(400.0)
    assert run_tokens_per_sec(resumed) == pytest.approx(104 / (102 / 1000 + 2 / 250))
    # Rows with no finite positive rate are left out, and none at all is None.
    assert run_tokens_per_sec([*uneven, {"step": 5, "tokens_per_sec": float("nan")}, {"step": 6}], 3) == (
        run_tokens_per_sec(uneven, 3)
    )
    assert run_tokens_per_sec([{"step": 1, "loss": 2.0}]) is None
    assert run_tokens_per_sec([]) is None


def test_torn_last_line_and_non_finite_values(tmp_path):
    run_dir = write_run(tmp_path / "r", 0)
    with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"step": STEPS + 1, "loss": "nan", "tokens_per_sec": 1.0}) + "\n")
        handle.write('{"step": 22, "loss": 5.')  # killed mid-write
    run = load_run(run_dir)
    assert run.train_rows[-1]["step"] == STEPS + 1 and math.isnan(run.train_rows[-1]["loss"])
    assert math.isnan(summarize(run)["final loss"])


def test_same_run_names_get_told_apart(tmp_path):
    runs = [load_run(write_run(tmp_path / name, 1)) for name in ("first", "second")]
    unique_labels(runs)
    assert [r.label for r in runs] == ["gpt_tiny_dp_z1 (first)", "gpt_tiny_dp_z1 (second)"]


def test_paths_that_are_not_runs(tmp_path):
    with pytest.raises(NotARunError, match="nowhere: no such file or directory"):
        load_run(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        NotARunError, match=r"empty: not a training run: it has no config.yaml and no metrics.jsonl"
    ):
        load_run(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(NotARunError, match="notes.txt: not a run directory, nor a W&B run file"):
        load_run(tmp_path / "notes.txt")


def run_compare(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(COMPARE), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"},
    )


def test_command_prints_differences_and_metrics_and_writes_the_plot(two_runs, tmp_path):
    out = tmp_path / "plots" / "compare.png"
    result = run_compare(*two_runs, "--out", out)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    zero_row = next(line for line in lines if line.startswith("parallel.zero_stage"))
    assert zero_row.split()[1:] == ["0", "2"]
    final_row = next(line for line in lines if line.startswith("final loss"))
    assert final_row.split()[2:] == [format_value(loss(STEPS, 0)), format_value(loss(STEPS, 2))]
    assert "optim.lr" not in result.stdout  # the same in both runs
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000


def test_command_with_a_bogus_path_exits_2_without_traceback(two_runs, tmp_path):
    bogus = tmp_path / "no_such_run"
    result = run_compare(two_runs[0], bogus, "--out", tmp_path / "x.png")
    assert result.returncode == 2
    assert f"error: {bogus}: no such file or directory" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "x.png").exists()


def test_run_directory_with_only_the_wandb_run(tmp_path):
    """No metrics.jsonl or config.yaml: config and metrics come from the offline W&B run, with W&B's
    names mapped back (train/loss → loss, trainer/global_step → step, ...)."""
    home, run_dir = tmp_path / "home", tmp_path / "run"
    home.mkdir()
    run_dir.mkdir()
    script = textwrap.dedent(
        f"""
        import wandb
        config = {{"model": {{"seq_length": {SEQ}}}, "parallel": {{"zero_stage": 3, "global_batch_size": {GLOBAL_BATCH}}},
                  "run": {{"name": "from_wandb"}}}}
        run = wandb.init(project="p", dir={str(run_dir)!r}, config=config)
        run.define_metric("trainer/global_step")
        run.define_metric("train/*", step_metric="trainer/global_step")
        run.define_metric("perf/*", step_metric="trainer/global_step")
        run.define_metric("val/*", step_metric="trainer/global_step")
        for step in range(1, 6):
            run.log({{"trainer/global_step": step, "train/loss": 5.0 - step / 10, "perf/tokens_per_sec": 100.0 * step}})
        run.log({{"trainer/global_step": 5, "val/loss": 4.9}})
        run.finish()
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(home), WANDB_MODE="offline", WANDB_SILENT="true", WANDB_CONFIG_DIR=str(home / "cfg"))
    subprocess.run([sys.executable, "-c", script], env=env, cwd=home, check=True, timeout=120)

    run = load_run(run_dir)
    assert run.label == "from_wandb" and run.config_source.endswith(".wandb")
    assert run.config["parallel"]["zero_stage"] == 3
    assert [(r["step"], r["loss"], r["tokens_per_sec"]) for r in run.train_rows] == [
        (s, 5.0 - s / 10, 100.0 * s) for s in range(1, 6)
    ]
    summary = summarize(run)
    assert summary["best val_loss"] == 4.9
    assert summary["tokens seen"] == 5 * GLOBAL_BATCH * SEQ
