"""Compare finished (or killed) training runs: which config keys differ, how the runs did, and a plot.

A run is read from what it left on disk, no W&B server needed: `config.yaml` and `metrics.jsonl`
from its run directory, or, where those are missing, the offline W&B run
(`integration.wandb_records`) with W&B's metric names mapped back to ours (`train/loss` → `loss`).

Pure functions: `load_run`, `config_differences`, `summarize`, `plot` (and `format_table`);
`launch/compare.py` wires them to the command line.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from integration.tracking import WANDB_NAMES
from integration.wandb_records import WandbFileError, find_wandb_file, read_run

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
# W&B's sectioned names → our metrics.jsonl names (the tracker's mapping, inverted).
FROM_WANDB = {wandb_name: ours for ours, wandb_name in WANDB_NAMES.items()}
MISSING = "-"
MAX_CELL = 48


class NotARunError(ValueError):
    """A path that holds no training run; the message names the path and what is missing."""


@dataclass
class Run:
    """One run as loaded from disk: its resolved config and its metric rows (metrics.jsonl names)."""

    label: str
    path: Path
    config: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    config_source: str = ""
    metrics_source: str = ""

    @property
    def train_rows(self) -> list[dict[str, Any]]:
        """Rows of training steps (those with a loss), one per step (the last one written wins, so a
        restarted run that repeats steps counts them once), in step order."""
        return _by_step(r for r in self.rows if "loss" in r)

    @property
    def eval_rows(self) -> list[dict[str, Any]]:
        return _by_step(r for r in self.rows if "val_loss" in r)


def _by_step(rows) -> list[dict[str, Any]]:
    latest: dict[int, dict[str, Any]] = {}
    for row in rows:
        if "step" in row:
            latest[row["step"]] = row
    return [latest[step] for step in sorted(latest)]


def _number(value: Any) -> Any:
    """metrics.jsonl writes non-finite floats as strings ("nan", "inf"); read them back as floats."""
    if isinstance(value, str) and value.lower() in ("nan", "inf", "-inf", "infinity", "-infinity"):
        return float(value)
    return value


def _read_metrics_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                break  # a torn last line from a killed run
            rows.append({key: _number(value) for key, value in row.items()})
    return rows


def _rows_from_wandb_history(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for entry in history:
        row = {FROM_WANDB.get(k, k): v for k, v in entry.items() if not k.startswith("_")}
        if row:
            rows.append(row)
    return rows


def _read_config_yaml(path: Path) -> dict[str, Any]:
    from omegaconf import OmegaConf

    config = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    if not isinstance(config, dict):
        raise NotARunError(f"{path}: not a config mapping (got {type(config).__name__})")
    return config


def load_run(path: str | Path) -> Run:
    """A run from a training run directory (config.yaml + metrics.jsonl, optionally
    wandb/offline-run-*), an offline-run-* directory or a run-*.wandb file.

    config.yaml and metrics.jsonl win; the W&B run fills in whichever of them is missing.
    Raises NotARunError naming the path and what is missing."""
    path = Path(path)
    if not path.exists():
        raise NotARunError(f"{path}: no such file or directory")
    directory = path if path.is_dir() else None
    config_file = directory / CONFIG_FILE if directory else None
    metrics_file = directory / METRICS_FILE if directory else None
    has_config = bool(config_file and config_file.is_file())
    has_metrics = bool(metrics_file and metrics_file.is_file())

    wandb_run = None
    if not (has_config and has_metrics):
        try:
            wandb_run = read_run(find_wandb_file(path))
        except WandbFileError as err:
            if directory is None:
                raise NotARunError(f"{path}: not a run directory, nor a W&B run file ({err})") from err
            missing = [
                name
                for name, present in ((CONFIG_FILE, has_config), (METRICS_FILE, has_metrics))
                if not present
            ]
            raise NotARunError(
                f"{path}: not a training run: it has no {' and no '.join(missing)}, and no W&B run "
                "to take them from (looked for run-*.wandb, offline-run-*/ and wandb/offline-run-*/)"
            ) from err

    if has_config:
        config, config_source = _read_config_yaml(config_file), str(config_file)
    else:
        config, config_source = wandb_run.config, str(wandb_run.path)
    if has_metrics:
        rows, metrics_source = _read_metrics_jsonl(metrics_file), str(metrics_file)
    else:
        rows, metrics_source = _rows_from_wandb_history(wandb_run.history), str(wandb_run.path)

    label = (
        _get(config, "run.name")
        or (wandb_run.name if wandb_run else "")
        or (path.name if directory else path.parent.name)
    )
    return Run(
        label=str(label),
        path=path,
        config=config,
        rows=rows,
        config_source=config_source,
        metrics_source=metrics_source,
    )


def unique_labels(runs: Sequence[Run]) -> None:
    """Make run labels distinct (two runs of one config share run.name): append the directory."""
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.label] = counts.get(run.label, 0) + 1
    for run in runs:
        if counts[run.label] > 1:
            run.label = f"{run.label} ({run.path.name or run.path})"
    if len({run.label for run in runs}) < len(runs):  # the same directory name twice
        for index, run in enumerate(runs, start=1):
            run.label = f"{run.label} #{index}"


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts → dotted keys (`parallel.zero_stage`); lists and scalars are values."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def _get(config: dict[str, Any], dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def config_differences(configs: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    """Dotted key → one value per config, for every key whose value is not the same in all of
    them (a key missing from some config counts as different; its value there is MISSING)."""
    flats = [flatten(c) for c in configs]
    keys = sorted({k for flat in flats for k in flat})
    differences = {}
    for key in keys:
        values = [flat.get(key, MISSING) for flat in flats]
        if any(v != values[0] for v in values[1:]):
            differences[key] = values
    return differences


def tokens_per_step(config: dict[str, Any]) -> int | None:
    """Global batch × sequence length, when the config says both."""
    batch, seq = _get(config, "parallel.global_batch_size"), _get(config, "model.seq_length")
    if isinstance(batch, int) and isinstance(seq, int):
        return batch * seq
    return None


def tokens_seen(run: Run, row: dict[str, Any]) -> float | None:
    """Tokens consumed up to and including `row`'s step: the row's own `tokens` when logged, else
    step × global batch × sequence length from the config."""
    if isinstance(row.get("tokens"), int | float):
        return row["tokens"]
    per_step = tokens_per_step(run.config)
    return row["step"] * per_step if per_step is not None and "step" in row else None


def _finite(values) -> list[float]:
    return [v for v in values if isinstance(v, int | float) and math.isfinite(v)]


def run_tokens_per_sec(rows: list[dict], log_interval: int | None = None) -> float | None:
    """The run's tokens per second from its train rows: each row's `tokens_per_sec` covers the
    steps since the row before (the first row: since step 0, or at most `log_interval` steps, the
    config's trainer.log_interval, for a run resumed into a new directory), so the run's rate is
    those steps over their seconds, Σn / Σ(n / rate). The mean of the rows' rates overstates it
    when rows are uneven: two steps of 0.89 and 0.35 s (DP4 on 2 cores) average 1.99 steps/s where
    the run made 1.61. Rows without a finite positive rate are left out; None when none has one."""
    steps, seconds_per_token = 0, 0.0
    previous = None
    for row in rows:
        step = row["step"]
        if previous is not None:
            covered = step - previous
        else:
            covered = min(step, log_interval) if isinstance(log_interval, int) and log_interval > 0 else step
        previous = step
        rate = row.get("tokens_per_sec")
        if covered > 0 and isinstance(rate, int | float) and math.isfinite(rate) and rate > 0:
            steps += covered
            seconds_per_token += covered / rate
    return steps / seconds_per_token if steps else None


def summarize(run: Run, metric: str = "loss") -> dict[str, Any]:
    """Headline numbers of a run: final `metric`, its mean over the last 10% of steps, best
    validation loss, the run's tokens/s (run_tokens_per_sec), steps, tokens seen. None where the
    run did not log it."""
    train = [r for r in run.train_rows if metric in r] if metric != "val_loss" else run.eval_rows
    values = [r[metric] for r in train]
    tail = values[-max(1, math.ceil(len(values) / 10)) :] if values else []
    finite_tail = _finite(tail)
    val = _finite(r["val_loss"] for r in run.eval_rows)
    steps = max((r["step"] for r in run.train_rows), default=None)
    last = run.train_rows[-1] if run.train_rows else None
    return {
        f"final {metric}": values[-1] if values else None,
        f"mean {metric} last 10%": statistics.fmean(finite_tail) if finite_tail else None,
        "best val_loss": min(val) if val else None,
        "tokens/s": run_tokens_per_sec(run.train_rows, _get(run.config, "trainer.log_interval")),
        "steps": steps,
        "tokens seen": tokens_seen(run, last) if last else None,
    }


def format_value(value: Any, none: str = MISSING) -> str:
    """A table cell: compact numbers, JSON for lists and dicts, long values shortened."""
    if value is None:
        return none
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.0f}" if abs(value) >= 1e4 else f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}".replace(",", "_") if abs(value) >= 1e5 else str(value)
    text = json.dumps(value) if isinstance(value, list | dict) else str(value)
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]], none: str = MISSING) -> str:
    """A plain-text table, first column left-aligned, the others right-aligned. `none` is how a
    None cell reads (config tables say "null", to tell it from a key that is missing)."""
    cells = [list(header)] + [[format_value(v, none) if i else str(v) for i, v in enumerate(r)] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: list[str]) -> str:
        return "  ".join(
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule] + [line(row) for row in cells[1:]])


def plot(runs: Sequence[Run], out: str | Path, metric: str = "loss") -> Path:
    """A PNG with two panels: `metric` (validation loss dashed with markers when metric is loss) and
    tokens/s, both against tokens seen, one colour per run, labelled by run. Falls back to steps on
    the x axis when some run's tokens cannot be derived."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    use_tokens = all(tokens_seen(run, row) is not None for run in runs for row in run.train_rows[-1:])
    x_label = "tokens seen" if use_tokens else "step"

    def xs(run: Run, rows: list[dict[str, Any]]) -> list[float]:
        return [tokens_seen(run, r) if use_tokens else r["step"] for r in rows]

    legend_rows = math.ceil(len(runs) / 3)
    fig, (ax_metric, ax_rate) = plt.subplots(1, 2, figsize=(12, 4.6 + 0.25 * legend_rows), dpi=110)
    any_val = False
    for index, run in enumerate(runs):
        color = f"C{index % 10}"
        rows = [r for r in run.train_rows if metric in r] if metric != "val_loss" else run.eval_rows
        ax_metric.plot(xs(run, rows), [r[metric] for r in rows], color=color, label=run.label, lw=1.6)
        if metric == "loss" and run.eval_rows:
            any_val = True
            ax_metric.plot(
                xs(run, run.eval_rows),
                [r["val_loss"] for r in run.eval_rows],
                color=color,
                ls="--",
                marker="o",
                ms=4,
                lw=1,
            )
        rated = [r for r in run.train_rows if "tokens_per_sec" in r]
        ax_rate.plot(xs(run, rated), [r["tokens_per_sec"] for r in rated], color=color, lw=1.6)
    ax_metric.set(title=f"{metric} vs {x_label}", xlabel=x_label, ylabel=metric)
    ax_rate.set(title=f"throughput vs {x_label}", xlabel=x_label, ylabel="tokens/s")
    ax_rate.set_ylim(bottom=0)
    for ax in (ax_metric, ax_rate):
        ax.grid(True, alpha=0.3)
    if any_val:
        ax_metric.legend(
            handles=[
                Line2D([], [], color="0.3", lw=1.6, label="train"),
                Line2D([], [], color="0.3", ls="--", marker="o", ms=4, lw=1, label="validation"),
            ],
            fontsize=8,
        )
    handles, labels = ax_metric.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(runs), 3), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.06 * legend_rows + 0.02, 1, 1))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def available_metrics(runs: Sequence[Run]) -> list[str]:
    """Numeric metric names any run logged (what `--metric` may name)."""
    names = {
        k
        for run in runs
        for r in run.rows
        for k, v in r.items()
        if isinstance(v, int | float) and k != "step"
    }
    return sorted(names)
