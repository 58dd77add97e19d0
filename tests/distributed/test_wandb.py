"""W&B, read back from disk: what was logged equals metrics.jsonl; labels, config and metadata are
there; a restart continues the same W&B run id; no network never stops training."""

import time

from integration.metrics import read_metrics
from integration.wandb_records import read_run
from tests.distributed.launch import COMMON, train

WANDB_COMMON = [o for o in COMMON if not o.startswith("wandb.")] + [
    "wandb=offline",
    "trainer.eval_interval=5",
]


def offline_runs(run_dir):
    return sorted((run_dir / "wandb").glob("offline-run-*"))


def test_logged_history_config_and_labels_read_back(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    run = train(
        tmp_path / "run",
        WANDB_COMMON + ["parallel=tp2", "wandb.tags=[nightly]"],
        nprocs=2,
        extra_env={"HOME": str(home)},
    )
    [offline] = offline_runs(run.run_dir)
    logged = read_run(offline)

    rows = read_metrics(run.run_dir / "metrics.jsonl")
    train_rows = {r["step"]: r for r in rows if "loss" in r}
    history = {h["trainer/global_step"]: h for h in logged.history if "train/loss" in h}
    assert sorted(history) == sorted(train_rows) == list(range(1, 11))
    for step, row in train_rows.items():
        assert history[step]["train/loss"] == row["loss"]
        assert history[step]["train/lr"] == row["lr"]
        assert history[step]["train/grad_norm"] == row["grad_norm"]
        assert history[step]["perf/tokens_per_sec"] == row["tokens_per_sec"]
        assert history[step]["trainer/tokens_seen"] == row["tokens"] == step * 8 * 128
        assert "memory/peak_rss_gib" in history[step] and "perf/tflops_per_device" in history[step]
        assert history[step]["stability/skipped_steps"] == row["stability/skipped_steps"] == 0
        assert history[step]["stability/z_loss"] == row["stability/z_loss"] > 0
    val = {h["trainer/global_step"]: h["val/loss"] for h in logged.history if "val/loss" in h}
    assert val == {r["step"]: r["val_loss"] for r in rows if "val_loss" in r} and sorted(val) == [5, 10]

    assert logged.name == "gpt_tiny_tp2_z1_fp32"
    assert logged.group == "gpt_tiny_corpus"
    assert set(logged.tags) == {"gpt_tiny", "tp2", "pp1", "dp1", "zero1", "fp32", "nightly"}
    assert logged.config["model"]["name"] == "gpt_tiny"
    assert logged.config["parallel"]["tensor_model_parallel_size"] == 2
    assert logged.config["tensor_parallel"] == 2 and logged.config["world_size"] == 2
    assert "parallel=tp2" in logged.config["overrides"]
    assert logged.config["versions"]["deepspeed"] == "0.19.8"
    assert len(logged.config["git_commit"]) == 40
    assert logged.run_id == (run.run_dir / "wandb_run_id").read_text().strip()


def test_restarted_run_continues_the_same_wandb_run_id(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    run_dir = tmp_path / "run"
    overrides = WANDB_COMMON + ["parallel=single", "optim.decay_steps=20"]
    train(run_dir, overrides + ["trainer.max_steps=10"], launcher="python", extra_env={"HOME": str(home)})
    train(run_dir, overrides + ["trainer.max_steps=20"], launcher="python", extra_env={"HOME": str(home)})
    first, second = (read_run(path) for path in offline_runs(run_dir))
    assert first.run_id == second.run_id
    steps = [h["trainer/global_step"] for h in second.history if "train/loss" in h]
    assert steps == list(range(11, 21))


def test_online_without_network_falls_back_to_offline_and_finishes(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    start = time.monotonic()
    overrides = [o for o in COMMON if not o.startswith("wandb.")] + ["wandb=online", "wandb.init_timeout=10"]
    run = train(
        tmp_path / "run",
        overrides,
        launcher="python",
        extra_env={"HOME": str(home), "WANDB_API_KEY": "x" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9"},
    )
    elapsed = time.monotonic() - start
    assert "online init failed" in run.output and "recording offline instead" in run.output
    assert len(run.train_rows) == 10
    assert len(offline_runs(run.run_dir)) == 1
    assert elapsed < 120, f"took {elapsed:.0f} s"


def test_multirun_sweep_makes_one_wandb_run_per_job_in_one_group(tmp_path):
    """`-m parallel=dp,tp2 parallel.zero_stage=0,1` under the deepspeed runner: four jobs in the same
    two processes, four run directories, one offline W&B run each, all in one group."""
    import os
    import subprocess

    from tests.distributed.launch import ROOT, TRAIN, free_port

    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(OMP_NUM_THREADS="1", HOME=str(home))
    sweep = tmp_path / "sweep"
    args = [
        "deepspeed",
        "--num_gpus",
        "2",
        "--master_port",
        str(free_port()),
        str(TRAIN),
        "-m",
        "parallel=dp,tp2",
        "parallel.zero_stage=0,1",
        "trainer.progress=false",
        f"hydra.sweep.dir={tmp_path / 'multirun'}",
        f"run.dir={sweep}/${{run.name}}",
        *[o for o in WANDB_COMMON if not o.startswith(("trainer.max_steps", "trainer.eval_interval"))],
        "trainer.max_steps=4",
        "optim.warmup_steps=2",
        "trainer.eval_interval=0",
    ]
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    run_dirs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in run_dirs] == [
        "gpt_tiny_dp_z0_fp32",
        "gpt_tiny_dp_z1_fp32",
        "gpt_tiny_tp2_z0_fp32",
        "gpt_tiny_tp2_z1_fp32",
    ]
    groups, names = set(), set()
    for run_dir in run_dirs:
        [offline] = offline_runs(run_dir)
        logged = read_run(offline)
        groups.add(logged.group)
        names.add(logged.name)
        rows = [r for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]
        assert [h["train/loss"] for h in logged.history if "train/loss" in h] == [r["loss"] for r in rows]
        assert len(rows) == 4
        tp = 2 if "_tp2_" in run_dir.name else 1
        assert logged.config["tensor_parallel"] == tp and logged.config["data_parallel"] == 2 // tp
    assert groups == {"gpt_tiny_corpus"} and len(names) == 4
