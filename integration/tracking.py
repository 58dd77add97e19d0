"""Weights & Biases: one run per training run, created on the logging rank only.

`wandb` is imported lazily there and nowhere else. A W&B failure never stops training: it is
reported once and logging continues to metrics.jsonl alone. DeepSpeed's own W&B monitor stays off
(its step axis conflicts with ours); what it would log (lr, loss scale) is logged here.
"""

from __future__ import annotations

import importlib.metadata
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from integration.config.schema import WandbConfig
from integration.corpus import PROJECT_ROOT
from integration.layout import Layout

RUN_ID_FILE = "wandb_run_id"
PACKAGES = ("torch", "deepspeed", "megatron-core", "hydra-core", "omegaconf", "wandb")
# Our metric rows → W&B's sectioned names. Keys already sectioned ("memory/…", "stability/…") pass.
WANDB_NAMES = {
    "step": "trainer/global_step",
    "tokens": "trainer/tokens_seen",
    "loss": "train/loss",
    "lr": "train/lr",
    "grad_norm": "train/grad_norm",
    "loss_scale": "train/loss_scale",
    "tokens_per_sec": "perf/tokens_per_sec",
    "tflops_per_device": "perf/tflops_per_device",
    "mfu": "perf/mfu",
    "step_time": "perf/step_time",
    "step_interval": "perf/step_interval",
    "samples": "trainer/samples",
    "val_loss": "val/loss",
}


@dataclass(frozen=True)
class RunLabels:
    name: str
    group: str
    tags: list[str]

    @staticmethod
    def derive(
        cfg: WandbConfig,
        run_name: str,
        model_name: str,
        data_name: str,
        layout: Layout,
        zero_stage: int,
        dtype: str,
    ) -> RunLabels:
        """Name, group and tags from what distinguishes runs, unless set: runs of one model on one
        dataset share a group (a sweep over layouts lands together); tags carry the layout."""
        tags = [
            model_name,
            f"tp{layout.tensor_parallel}",
            f"pp{layout.pipeline_parallel}",
            f"dp{layout.data_parallel}",
            f"zero{zero_stage}",
            dtype,
        ]
        return RunLabels(
            name=cfg.name or run_name,
            group=cfg.group or f"{model_name}_{data_name}",
            tags=tags + [t for t in cfg.tags if t not in tags],
        )


def run_metadata(layout: Layout, overrides: list[str]) -> dict[str, Any]:
    """What makes a run reproducible and comparable beyond its config."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "overrides": overrides,
        "world_size": layout.world_size,
        "tensor_parallel": layout.tensor_parallel,
        "pipeline_parallel": layout.pipeline_parallel,
        "data_parallel": layout.data_parallel,
        "gradient_accumulation_steps": layout.gradient_accumulation_steps,
        "git_commit": commit or None,
        "versions": versions,
    }


def _warn(message: str) -> None:
    print(f"warning: W&B: {message}", file=sys.stderr, flush=True)


class WandbTracker:
    def __init__(self, run):
        self.run = run

    @staticmethod
    def create(
        cfg: WandbConfig, run_dir: Path, labels: RunLabels, config: dict[str, Any], enabled: bool
    ) -> WandbTracker | None:
        """The W&B run of this training run. Its id is kept in run_dir, so a restarted run (same
        run.dir) continues the same W&B run. With mode=online and no reachable server, init gives
        up after `init_timeout` seconds and the run is recorded offline instead."""
        if not enabled or cfg.mode == "disabled":
            return None
        try:
            import wandb

            directory = Path(cfg.dir) if cfg.dir else run_dir
            directory.mkdir(parents=True, exist_ok=True)
            id_file = run_dir / RUN_ID_FILE
            run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(4)
            init = dict(
                project=cfg.project,
                entity=cfg.entity,
                group=labels.group,
                job_type=cfg.job_type,
                name=labels.name,
                tags=labels.tags,
                dir=str(directory),
                config=config,
                id=run_id,
                resume="allow",
            )

            def start(mode: str):
                settings = wandb.Settings(
                    mode=mode,
                    init_timeout=cfg.init_timeout,
                    x_transaction_log_flush_interval=cfg.flush_interval,
                    silent=True,
                )
                return wandb.init(settings=settings, **init)

            try:
                run = start(cfg.mode)
            except Exception as err:  # noqa: BLE001 - no network, server down, bad credentials
                if cfg.mode != "online":
                    raise
                _warn(
                    f"online init failed ({type(err).__name__}: {err}); recording offline instead — "
                    f"upload later with `wandb sync {directory}/wandb/offline-run-*`"
                )
                run = start("offline")
            id_file.write_text(run.id)
            run.define_metric("trainer/global_step")
            run.define_metric("trainer/tokens_seen")
            for section in ("train/*", "perf/*", "val/*", "memory/*", "stability/*", "trainer/samples"):
                run.define_metric(section, step_metric="trainer/global_step")
            return WandbTracker(run)
        except Exception as err:  # noqa: BLE001 - W&B must never take training down
            _warn(f"disabled for this run ({type(err).__name__}: {err})")
            return None

    def log(self, row: dict[str, Any]) -> None:
        if self.run is None:
            return
        try:
            self.run.log({WANDB_NAMES.get(key, key): value for key, value in row.items()})
        except Exception as err:  # noqa: BLE001
            _warn(f"logging failed ({err}); continuing without W&B")
            self.run = None

    def finish(self) -> None:
        if self.run is not None:
            try:
                self.run.finish()
            except Exception as err:  # noqa: BLE001
                _warn(f"finish failed ({err})")
