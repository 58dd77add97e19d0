"""Run launch/train.py for real — under the deepspeed runner, torchrun or plain python — and read
back what it wrote. Multi-process tests go through these, never through an in-process fake."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from integration.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[2]

# Short, fast, deterministic runs: 10 steps of gpt_tiny on the bundled corpus, fp32, no W&B.
STEPS = 10
COMMON = [
    f"trainer.max_steps={STEPS}",
    "trainer.eval_interval=0",
    "optim.warmup_steps=3",
    "wandb.mode=disabled",
    "precision=fp32",
]
TRAIN = ROOT / "launch" / "train.py"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Run:
    returncode: int
    output: str
    run_dir: Path

    @property
    def train_rows(self) -> list[dict]:
        return [r for r in read_metrics(self.run_dir / "metrics.jsonl") if "loss" in r]

    @property
    def losses(self) -> list[float]:
        return [r["loss"] for r in self.train_rows]

    @property
    def val_rows(self) -> list[dict]:
        return [r for r in read_metrics(self.run_dir / "metrics.jsonl") if "val_loss" in r]


def command(launcher: str, nprocs: int, script: Path = TRAIN) -> list[str]:
    if launcher == "deepspeed":
        return ["deepspeed", "--num_gpus", str(nprocs), "--master_port", str(free_port()), str(script)]
    if launcher == "torchrun":
        return ["torchrun", "--nproc_per_node", str(nprocs), "--master_port", str(free_port()), str(script)]
    if launcher == "python":
        assert nprocs == 1
        return [sys.executable, str(script)]
    raise ValueError(launcher)


def train(
    run_dir: Path,
    overrides: list[str],
    nprocs: int = 1,
    launcher: str = "deepspeed",
    timeout: float = 300,
    check: bool = True,
    extra_env: dict[str, str] | None = None,
) -> Run:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(OMP_NUM_THREADS="1", **(extra_env or {}))
    args = command(launcher, nprocs) + [f"run.dir={run_dir}", "trainer.progress=false", *overrides]
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    run = Run(proc.returncode, proc.stdout + proc.stderr, run_dir)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}:\n{run.output[-6000:]}")
    return run


def assert_same_curve(actual: list[float], reference: list[float], rel: float = 1e-4) -> None:
    assert len(actual) == len(reference) >= 10, (actual, reference)
    for step, (a, r) in enumerate(zip(actual, reference, strict=True), start=1):
        assert abs(a - r) <= rel * abs(r), (
            f"step {step}: loss {a!r} vs reference {r!r} (rel {abs(a - r) / abs(r):.2e})"
        )
