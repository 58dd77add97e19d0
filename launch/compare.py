"""Compare training runs from what they left on disk (no W&B server needed).

    python launch/compare.py outputs/run_a outputs/run_b [--out compare.png] [--metric loss]

Each argument is a run directory (config.yaml + metrics.jsonl, optionally wandb/offline-run-*/), an
offline-run-* directory or a run-*.wandb file. Prints the config keys that differ and a table of
headline metrics, and writes a PNG of the metric and of tokens/s against tokens seen.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from integration.compare import (  # noqa: E402
    FROM_WANDB,
    NotARunError,
    available_metrics,
    config_differences,
    format_table,
    load_run,
    plot,
    summarize,
    unique_labels,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories or W&B offline runs")
    parser.add_argument("--out", type=Path, default=Path("compare.png"), help="PNG to write")
    parser.add_argument("--metric", default="loss", help="metric to plot and summarize (default loss)")
    args = parser.parse_args(argv)

    try:
        runs = [load_run(path) for path in args.runs]
    except NotARunError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    unique_labels(runs)
    metric = FROM_WANDB.get(args.metric, args.metric)
    if metric not in available_metrics(runs):
        print(
            f"error: --metric {args.metric}: no run logged it; logged: {', '.join(available_metrics(runs))}",
            file=sys.stderr,
        )
        return 2

    labels = [run.label for run in runs]
    for run in runs:
        print(f"{run.label}: config {run.config_source}, metrics {run.metrics_source}")
    differences = config_differences([run.config for run in runs])
    print(f"\nconfig keys that differ ({len(differences)}):")
    if differences:
        print(
            format_table(
                ["key", *labels], [[key, *values] for key, values in differences.items()], none="null"
            )
        )
    else:
        print("  (none: the configs are identical)")

    summaries = [summarize(run, metric) for run in runs]
    print("\nmetrics:")
    print(format_table(["", *labels], [[name, *(s[name] for s in summaries)] for name in summaries[0]]))

    out = plot(runs, args.out, metric)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
