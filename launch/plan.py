"""Rank the parallel layouts of a model on a cluster by predicted throughput; nothing is launched.

    python launch/plan.py model=gpt_1p3b cluster=aws_p4d_2node
    python launch/plan.py model=llama_7b cluster=h100_8x4 parallel.global_batch_size=512 --top 5
    python launch/plan.py model=gpt_1p3b cluster=h100_8x1 --emit      # the best layout as overrides
    python launch/plan.py model=gpt_1p3b cluster=h100_8x4 --no-2d     # Megatron's 1D tensor parallelism only

Composes conf/train.yaml exactly as launch/train.py does (same groups, same overrides); the
planner's own flags are taken off the command line before Hydra sees it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from integration.config import register_schemas, to_typed  # noqa: E402
from integration.errors import ConfigError  # noqa: E402
from integration.planner import PlannerSettings, override_line, plan_layouts, render_table  # noqa: E402


def _planner_flags(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--top", type=int, default=10, help="fitting layouts to show")
    parser.add_argument("--rejected", type=int, default=5, help="rejected layouts to show")
    parser.add_argument(
        "--emit", type=int, nargs="?", const=1, default=None, help="print layout N (default 1) as overrides"
    )
    parser.add_argument("--efficiency", type=float, default=None, help="fraction of peak FLOP/s reached")
    parser.add_argument("--unfused-attention", action="store_true", help="attention stores s×s scores")
    parser.add_argument("--no-sequence-parallel", action="store_true")
    parser.add_argument("--no-2d", action="store_true", help="leave out 2D tensor-parallel layouts")
    parser.add_argument("--max-micro-batch", type=int, default=None)
    return parser.parse_known_args(argv)


FLAGS, sys.argv[1:] = _planner_flags(sys.argv[1:])
register_schemas()


def _settings() -> PlannerSettings:
    defaults = PlannerSettings()
    return PlannerSettings(
        compute_efficiency=FLAGS.efficiency or defaults.compute_efficiency,
        flash_attention=not FLAGS.unfused_attention,
        max_micro_batch_size=FLAGS.max_micro_batch or defaults.max_micro_batch_size,
        sequence_parallel=not FLAGS.no_sequence_parallel,
        tensor_parallel_2d=not FLAGS.no_2d,
    )


@hydra.main(config_path="../conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        config = to_typed(cfg)
        plans = plan_layouts(config, _settings())
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        sys.exit(2)
    # offload=none (the default) lets the planner choose; a named offload group is planned as given.
    planner_chooses_offload = config.offload.name == "none"
    if FLAGS.emit is not None:
        fitting = [p for p in plans if p.fits]
        if len(fitting) < FLAGS.emit:
            print(
                f"error: only {len(fitting)} layouts fit; --emit {FLAGS.emit} does not exist", file=sys.stderr
            )
            sys.exit(1)
        chosen = fitting[FLAGS.emit - 1]
        print(override_line(chosen, with_offload=planner_chooses_offload))
        return
    print(render_table(plans, config, top=FLAGS.top, show_rejected=FLAGS.rejected))
    fitting = [p for p in plans if p.fits]
    if fitting:
        print(
            f"\nbest as overrides (--emit): {override_line(fitting[0], with_offload=planner_chooses_offload)}"
        )


if __name__ == "__main__":
    main()
