"""Weights & Biases: one run per training run, created on the logging rank only.

`wandb` is imported lazily there and nowhere else. A W&B failure never stops training: it is
reported once and logging continues to metrics.jsonl alone.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

from integration.config.schema import WandbConfig


class WandbTracker:
    def __init__(self, run):
        self.run = run

    @staticmethod
    def create(
        cfg: WandbConfig, run_dir: Path, run_name: str, config: dict[str, Any], enabled: bool
    ) -> WandbTracker | None:
        if not enabled or cfg.mode == "disabled":
            return None
        try:
            import wandb

            directory = Path(cfg.dir) if cfg.dir else run_dir
            directory.mkdir(parents=True, exist_ok=True)
            settings = wandb.Settings(
                init_timeout=cfg.init_timeout,
                x_transaction_log_flush_interval=cfg.flush_interval,
                silent=True,
            )
            run = wandb.init(
                mode=cfg.mode,
                project=cfg.project,
                entity=cfg.entity,
                group=cfg.group,
                job_type=cfg.job_type,
                name=cfg.name or run_name,
                tags=list(cfg.tags),
                dir=str(directory),
                config=config,
                settings=settings,
            )
            run.define_metric("trainer/global_step")
            run.define_metric("trainer/tokens_seen")
            for section in ("train/*", "perf/*", "val/*"):
                run.define_metric(section, step_metric="trainer/global_step")
            return WandbTracker(run)
        except Exception as err:  # noqa: BLE001 - W&B must never take training down
            warnings.warn(f"W&B disabled for this run: {err}", stacklevel=1)
            return None

    def _log(self, data: dict[str, Any]) -> None:
        try:
            self.run.log(data)
        except Exception as err:  # noqa: BLE001
            print(f"warning: W&B logging failed ({err}); continuing without it", file=sys.stderr)
            self.run = None

    def log_train(self, row: dict[str, Any], tokens_seen: int) -> None:
        if self.run is None:
            return
        self._log(
            {
                "trainer/global_step": row["step"],
                "trainer/tokens_seen": tokens_seen,
                "train/loss": row["loss"],
                "train/lr": row["lr"],
                "train/grad_norm": row["grad_norm"],
                "perf/tokens_per_sec": row["tokens_per_sec"],
            }
        )

    def log_eval(self, step: int, val_loss: float) -> None:
        if self.run is not None:
            self._log({"trainer/global_step": step, "val/loss": val_loss})

    def finish(self) -> None:
        if self.run is not None:
            try:
                self.run.finish()
            except Exception as err:  # noqa: BLE001
                print(f"warning: W&B finish failed ({err})", file=sys.stderr)
