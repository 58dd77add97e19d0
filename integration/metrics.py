"""Rank-0 outputs of a run: metrics.jsonl, the progress display and the resolved config."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/Inf; keep the row parseable
    return value


class MetricsLog:
    """Appends one JSON object per logged step. A no-op on every rank but the logging rank."""

    def __init__(self, path: Path, enabled: bool, resume_step: int = 0):
        """Rows after `resume_step` (written before a crash, recomputed now) are dropped, so the
        file holds each step once; a fresh run (resume_step 0) starts an empty file."""
        self.path = path
        self.enabled = enabled
        if not enabled:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = (
            [r for r in read_metrics(path) if r["step"] <= resume_step]
            if resume_step and path.exists()
            else []
        )
        path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")

    def rewind(self, step: int) -> None:
        """Drop rows after `step` (a rollback recomputes them)."""
        if not self.enabled or not self.path.exists():
            return
        kept = [r for r in read_metrics(self.path) if r["step"] <= step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({k: _clean(v) for k, v in row.items()}) + "\n")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


class Progress:
    """A tqdm bar on rank 0 with the latest loss, rate and throughput; plain lines when the
    output is not a terminal (CI logs, the deepspeed runner's pipes)."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.enabled = enabled
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def update(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        text = (
            f"step {row['step']} loss {row['loss']:.4f} lr {row['lr']:.3e} grad_norm "
            f"{row['grad_norm']:.3f} tokens/s {row['tokens_per_sec']:.0f}"
        )
        if self.bar is not None:
            self.bar.set_postfix_str(text.split(" ", 2)[2], refresh=False)
            self.bar.update(row["step"] - self.bar.n)
        else:
            print(text, flush=True)

    def note(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def write_run_config(run_dir: Path, resolved_yaml: str, overrides: list[str]) -> None:
    """The resolved config (what actually ran) and the command-line overrides, for reruns."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(resolved_yaml, encoding="utf-8")
    (run_dir / "overrides.txt").write_text(
        "\n".join(overrides) + ("\n" if overrides else ""), encoding="utf-8"
    )
