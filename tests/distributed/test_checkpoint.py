"""Checkpoints: bitwise continuation after a kill -9 or a stop, verified fallback, resume on another
layout, clear refusals."""

import json
import os
import shutil
import signal
import subprocess
import time

import psutil
import pytest

from integration.checkpoint import _problem, tag_for
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
        # 2D blocks (no Megatron-Core partition_dim) through the manifest and back; one sample per
        # step keeps 4 processes on 2 cores short.
        ("tp2d", 4, ["parallel=tp2d_2x2", "parallel.global_batch_size=2"]),
        # 2D blocks in pipeline stages: per-layer files of DeepSpeed's pipeline engine, 8 processes.
        ("tp2d_pp2", 8, ["parallel=tp2d_2x2_pp2", "parallel.global_batch_size=4"]),
    ],
)
def test_resume_is_bitwise(tmp_path, name, nprocs, layout):
    """The uninterrupted run's own step-10 checkpoint, resumed in a copy of its directory (later
    checkpoints removed, as if it had died before saving step 15), gives steps 11-20 bit for bit. The stop at
    trainer.max_steps and its final save are proven in one process (test_stability_state_survives_a_resume);
    here each layout's checkpoint content is, one launch cheaper than stopping a second run."""
    overrides = RUN + layout + ["trainer.max_steps=20", "checkpoint.keep_last=0"]
    reference_dir = train(tmp_path / "reference", overrides, nprocs=nprocs).run_dir
    reference = losses_by_step(reference_dir)
    run_dir = tmp_path / "resumed"
    shutil.copytree(reference_dir, run_dir)
    for later in (15, 20):
        shutil.rmtree(run_dir / "checkpoints" / tag_for(later))
    resumed = train(run_dir, overrides, nprocs=nprocs)
    assert f"{tag_for(10)} at step 10" in resumed.output
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

    other_batch = train(
        run_dir, overrides + ["parallel.global_batch_size=16"], launcher="python", check=False
    )
    assert other_batch.returncode == 2
    assert "config error: parallel.global_batch_size: 16, but the checkpoint" in other_batch.output
    assert "set parallel.global_batch_size=8" in other_batch.output.lower()
    assert "Traceback" not in other_batch.output


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
    continued = train(run_dir, overrides + ["trainer.max_steps=20"], launcher="python")
    assert f"{tag_for(12)} at step 12" in continued.output  # the stop's own final save
    assert losses_by_step(run_dir) == losses_by_step(tmp_path / "reference")
    resumed = scores(run_dir)
    assert resumed == reference
    assert all(score != 0.0 for score, _ in (resumed[s] for s in range(13, 21)))


# Resume on another layout. A run on the old layout saves at step 5 and goes on to step 10 (the
# reference); a copy of its run directory cut back to the step-5 checkpoint is relaunched with the
# new layout, the same command otherwise.
CROSS = RUN + ["checkpoint.keep_last=0", "trainer.max_steps=10"]
CROSS_STOP, CROSS_END = 5, 10
LAYOUTS = {  # name: (processes, launcher, overrides)
    "single": (1, "python", ["parallel=single"]),  # ZeRO 0: torch optimizer
    "dp": (2, "deepspeed", ["parallel=dp"]),  # DP2, ZeRO 1
    "tp2": (2, "deepspeed", ["parallel=tp2"]),  # TP2, ZeRO 1
    "pp2": (2, "deepspeed", ["parallel=pp2"]),  # pipeline engine, ZeRO 1
    "dp-zero3": (2, "deepspeed", ["parallel=dp", "parallel.zero_stage=3"]),
    "tp2-zero3": (2, "deepspeed", ["parallel=tp2", "parallel.zero_stage=3"]),
    "single-bf16": (1, "python", ["parallel=single", "precision=bf16"]),  # FP16_UnfusedOptimizer
    "dp-bf16": (2, "deepspeed", ["parallel=dp", "precision=bf16"]),  # ZeRO 1 in bf16
    "tp2-pp2": (4, "deepspeed", ["parallel=tp2_pp2"]),  # pipeline engine with tensor parallel stages
    # ZeRO-Offload: master weights and Adam moments in DeepSpeedCPUAdam's host partitions
    "dp-offload": (2, "deepspeed", ["parallel=dp", "parallel.zero_stage=2", "offload=optimizer_cpu"]),
}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Reference runs on the old layouts, each launched once for the whole module."""
    runs = {}

    def run(name):
        if name not in runs:
            nprocs, launcher, overrides = LAYOUTS[name]
            run_dir = tmp_path_factory.mktemp(name) / "run"
            runs[name] = train(run_dir, CROSS + overrides, nprocs=nprocs, launcher=launcher).run_dir
        return runs[name]

    return run


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("dp", "single"),  # data parallel 2 -> 1, ZeRO 1 -> 0
        ("single", "tp2"),  # tensor parallel 1 -> 2, ZeRO 0 -> 1
        ("dp", "pp2"),  # plain engine -> pipeline engine
        ("pp2", "single"),  # pipeline engine -> plain engine, ZeRO 1 -> 0
        ("dp-zero3", "tp2-zero3"),  # ZeRO 3 across a tensor-parallel change
        ("dp-zero3", "tp2-pp2"),  # the example: data parallel -> 3D layout
        ("single-bf16", "dp-bf16"),  # bf16: fp32 masters carried over, bf16 weights cut from them
        ("dp-offload", "tp2"),  # out of CPU Adam's host partitions into a device optimizer
        ("single", "dp-offload"),  # and into them
    ],
)
def test_resume_on_another_layout_continues_the_old_curve(uninterrupted, tmp_path, old, new):
    reference_dir = uninterrupted(old)
    reference = losses_by_step(reference_dir)
    run_dir = tmp_path / "run"
    shutil.copytree(reference_dir, run_dir)
    shutil.rmtree(run_dir / "checkpoints" / tag_for(CROSS_END))
    source = run_dir / "checkpoints" / tag_for(CROSS_STOP)
    source_files = json.loads((source / "complete.json").read_text())["files"]

    nprocs, launcher, overrides = LAYOUTS[new]
    resumed = train(run_dir, CROSS + overrides, nprocs=nprocs, launcher=launcher)
    assert f"converted {tag_for(CROSS_STOP)}" in resumed.output
    assert f"at step {CROSS_STOP}" in resumed.output

    after = losses_by_step(run_dir)  # also: no step logged twice
    assert sorted(after) == list(range(1, CROSS_END + 1))
    first = CROSS_STOP + 1
    assert after[first] == pytest.approx(reference[first], rel=1e-4, abs=0), "first step after the resume"
    for step in range(first, CROSS_END + 1):
        assert after[step] == pytest.approx(reference[step], rel=1e-4, abs=0), f"step {step}"
    # A repeated or skipped batch would show: no resumed loss also matches a neighbouring step's.
    for step in range(first, CROSS_END + 1):
        for neighbour in (step - 1, step + 1):
            if neighbour in reference:
                assert after[step] != pytest.approx(reference[neighbour], rel=1e-4, abs=0), (step, neighbour)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["samples"] for r in rows if r["step"] >= first] == [8 * s for s in range(first, CROSS_END + 1)]

    assert _problem(source) is None  # the source checkpoint still verifies, untouched
    assert json.loads((source / "complete.json").read_text())["files"] == source_files
    written = json.loads((run_dir / "checkpoints" / tag_for(CROSS_END) / "complete.json").read_text())
    new_layout = resumed_layout(run_dir)
    assert {k: written["layout"][k] for k in new_layout} == new_layout


def resumed_layout(run_dir):
    """tp/pp/dp/ZeRO of the resolved config the resumed launch wrote."""
    config = (run_dir / "config.yaml").read_text()

    def value(key):
        return int(
            next(line.split(":")[1] for line in config.splitlines() if line.strip().startswith(key + ":"))
        )

    return {
        "tensor_parallel": value("tensor_model_parallel_size"),
        "pipeline_parallel": value("pipeline_model_parallel_size"),
        "zero_stage": value("zero_stage"),
    }


def test_1d_checkpoint_is_not_resumed_as_2d(tmp_path):
    """Both layouts have tp = 4; without the recorded flag the load used to fail on shapes."""
    run_dir = tmp_path / "run"
    tp4 = ["parallel=tp2", "parallel.tensor_model_parallel_size=4", "parallel.zero_stage=0"]
    train(run_dir, RUN + tp4 + ["trainer.max_steps=2"], nprocs=4)
    meta = json.loads((run_dir / "checkpoints" / tag_for(2) / "complete.json").read_text())
    assert meta["layout"]["tensor_parallel_2d"] is False

    as_2d = train(run_dir, RUN + ["parallel=tp2d_2x2", "trainer.max_steps=4"], nprocs=4, check=False)
    assert as_2d.returncode == 2
    assert "config error: parallel.tensor_parallel_2d: the checkpoint" in as_2d.output
    assert "not converted to or from another layout" in as_2d.output
    assert "Traceback" not in as_2d.output
