"""Checkpoints: bitwise continuation after a kill -9 or a stop, verified fallback, clear refusals."""

import json
import os
import signal
import subprocess
import time

import psutil
import pytest

from tests.distributed.launch import ROOT, command, train

# 20 steps with a schedule that does not depend on trainer.max_steps, so a run stopped at step 12
# and continued to 20 must reproduce the uninterrupted run exactly.
RUN = [
    "trainer.eval_interval=0",
    "optim.warmup_steps=3",
    "optim.decay_steps=20",
    "wandb.mode=disabled",
    "checkpoint.interval=5",
]
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def losses_by_step(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "loss" in r]
    assert len(steps) == len(set(steps)), f"a step was logged twice: {steps}"
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_kill_minus_nine_then_relaunch_continues_bit_for_bit(tmp_path):
    overrides = RUN + ["parallel=dp", "trainer.max_steps=20"]
    reference = losses_by_step(train(tmp_path / "reference", overrides, nprocs=2).run_dir)

    run_dir = tmp_path / "killed"
    args = command("deepspeed", 2) + [f"run.dir={run_dir}", "trainer.progress=false", *overrides]
    launcher = subprocess.Popen(args, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    metrics = run_dir / "metrics.jsonl"
    victim = None
    deadline = time.monotonic() + 240
    while victim is None and time.monotonic() < deadline and launcher.poll() is None:
        if metrics.exists() and any(
            json.loads(line)["step"] >= 13 for line in metrics.read_text().splitlines()
        ):
            ranks = [
                p
                for p in psutil.Process(launcher.pid).children(recursive=True)
                if "--local_rank=1" in " ".join(p.cmdline())
            ]
            victim = ranks[0]
            os.kill(victim.pid, signal.SIGKILL)
        time.sleep(0.02)
    assert victim is not None, "the run finished or stalled before step 13"
    launcher.wait(timeout=120)
    assert launcher.returncode != 0
    assert max(losses_by_step(run_dir)) < 20, "the kill came too late to interrupt the run"

    resumed = train(run_dir, overrides, nprocs=2)
    assert "resumed from" in resumed.output
    after = losses_by_step(run_dir)
    assert sorted(after) == list(range(1, 21))
    for step in range(14, 21):
        assert after[step] == reference[step], f"step {step}: {after[step]!r} != {reference[step]!r}"


@pytest.mark.parametrize(
    ("name", "nprocs", "layout"),
    [
        ("tp2", 2, ["parallel=tp2"]),
        ("pp2", 2, ["parallel=pp2"]),
        ("zero3", 2, ["parallel=dp", "parallel.zero_stage=3"]),
    ],
)
def test_stop_and_resume_is_bitwise(tmp_path, name, nprocs, layout):
    reference = losses_by_step(
        train(tmp_path / "reference", RUN + layout + ["trainer.max_steps=20"], nprocs=nprocs).run_dir
    )
    run_dir = tmp_path / "stopped"
    train(run_dir, RUN + layout + ["trainer.max_steps=12"], nprocs=nprocs)
    resumed = train(run_dir, RUN + layout + ["trainer.max_steps=20"], nprocs=nprocs)
    assert "at step 12" in resumed.output
    assert losses_by_step(run_dir) == reference


def test_corrupted_newest_checkpoint_falls_back_to_the_previous(tmp_path):
    overrides = RUN + ["parallel=single"]
    reference = losses_by_step(
        train(tmp_path / "reference", overrides + ["trainer.max_steps=20"], launcher="python").run_dir
    )
    run_dir = tmp_path / "run"
    train(run_dir, overrides + ["trainer.max_steps=12"], launcher="python")
    newest = run_dir / "checkpoints" / "step_00000012" / "mp_rank_00_model_states.pt"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))

    resumed = train(run_dir, overrides + ["trainer.max_steps=20"], launcher="python")
    assert "step_00000012 skipped: mp_rank_00_model_states.pt is corrupted" in resumed.output
    assert "resumed from" in resumed.output and "step_00000010 at step 10" in resumed.output
    assert losses_by_step(run_dir) == reference


def test_unfinished_save_is_ignored_and_resume_refuses_another_model_or_layout(tmp_path):
    run_dir = tmp_path / "run"
    overrides = RUN + ["parallel=single", "trainer.max_steps=10"]
    train(run_dir, overrides, launcher="python")
    (run_dir / "checkpoints" / "step_00000010" / "complete.json").unlink()  # as if killed mid-save

    other_model = train(run_dir, overrides + ["model.ffn_hidden_size=128"], launcher="python", check=False)
    assert other_model.returncode == 2
    assert "config error: checkpoint.dir:" in other_model.output
    assert "model.ffn_hidden_size: 256 → 128" in other_model.output
    assert "step_00000010 skipped: incomplete" in other_model.output  # the newest was not trusted
    assert "Traceback" not in other_model.output

    other_layout = train(run_dir, overrides, nprocs=2, check=False)
    assert other_layout.returncode == 2
    assert "data_parallel 1, zero_stage 0; this launch asks for" in other_layout.output
    assert "Traceback" not in other_layout.output


def test_stability_state_survives_a_resume(tmp_path):
    """The spike detector's history and the skip counters are in the checkpoint: after a resume at
    step 12 the spike scores of steps 13-20 equal the uninterrupted run's (a fresh history would
    score 0 until min_history steps were seen again)."""
    stability = ["stability=default", "stability.spike.min_history=4", "stability.spike.window=8"]
    overrides = RUN + stability + ["parallel=single"]

    def scores(run_dir):
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return {
            r["step"]: (r["stability/spike_score"], r["stability/skipped_steps"]) for r in rows if "loss" in r
        }

    reference = scores(
        train(tmp_path / "reference", overrides + ["trainer.max_steps=20"], launcher="python").run_dir
    )
    run_dir = tmp_path / "run"
    train(run_dir, overrides + ["trainer.max_steps=12"], launcher="python")
    train(run_dir, overrides + ["trainer.max_steps=20"], launcher="python")
    resumed = scores(run_dir)
    assert resumed == reference
    assert all(score != 0.0 for score, _ in (resumed[s] for s in range(13, 21)))
