"""Training entry point for the deepspeed runner, torchrun, or plain python.

    deepspeed --num_gpus 2 launch/train.py model=gpt_tiny parallel=tp2 trainer.max_steps=50
    python launch/train.py dry_run=true cluster.gpus_per_node=8 parallel=tp2_pp2

Sequences the work only: compose → validate → init → build → loop → teardown.
"""

from __future__ import annotations

import sys
import warnings
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from integration.launcher_args import strip_launcher_args  # noqa: E402

strip_launcher_args(sys.argv)  # the deepspeed runner appends --local_rank=N, which Hydra rejects
# Megatron-Core says this once per import site; the local fallbacks are what we use on CPU anyway.
for _note in (
    "Transformer Engine and Apex are not installed",
    "Apex is not installed",
    "full scope is deprecated",
    "`torch.distributed.all_gather_into_tensor` is deprecated",
):
    warnings.filterwarnings("ignore", message=_note)

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from integration.config import TrainConfig, register_schemas, to_typed  # noqa: E402
from integration.distributed import LaunchEnv  # noqa: E402
from integration.errors import ConfigError, report_and_exit  # noqa: E402
from integration.layout import Layout  # noqa: E402

if TYPE_CHECKING:
    from integration.checkpoint import ResumePoint
from integration.plan import render_plan  # noqa: E402
from integration.validate import validate  # noqa: E402

register_schemas()


@hydra.main(config_path="../conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    env = LaunchEnv.from_environ()
    try:
        import torch

        config = to_typed(cfg)
        cluster = config.cluster
        world_size = cluster.num_nodes * cluster.gpus_per_node if config.dry_run else env.world_size

        verdict = validate(
            config,
            world_size,
            torch.cuda.is_available(),
            planned=config.dry_run,
            fused_norms_available=any(find_spec(m) for m in ("transformer_engine", "apex")),
        )
        if config.dry_run:
            print(render_plan(config, verdict.layout, verdict.warnings))
            return
        if env.is_rank0:
            for note in verdict.warnings:
                print(f"warning: {note}", file=sys.stderr)
        from integration.checkpoint import LayoutRecord, checkpoint_root, find_resume_point
        from integration.data import check_data_files
        from integration.offload import check_offload_environment

        check_data_files(config.data)
        check_offload_environment(config.offload, report=env.local_rank == 0)
        resume = None
        if config.checkpoint.resume:
            resume = find_resume_point(
                checkpoint_root(config.checkpoint, Path(config.run.dir)),
                config.model,
                LayoutRecord.of(verdict.layout, config.parallel, config.precision.dtype),
                report=env.local_rank == 0,
                layout_bound_state="pruning masks (saved per tensor-parallel shard)"
                if config.compression.sparse_pruning.enabled
                else None,
            )
    except ConfigError as err:
        report_and_exit(f"config error: {err}", 2, speaker=env.local_rank == 0)

    from integration.stability.monitor import TrainingDiverged

    try:
        train(
            config,
            verdict.layout,
            env,
            resume,
            OmegaConf.to_yaml(cfg, resolve=True),
            list(HydraConfig.get().overrides.task),
        )
    except TrainingDiverged as err:
        report_and_exit(f"error: {err}", 3, speaker=env.is_rank0)


def train(
    config: TrainConfig,
    layout: Layout,
    env: LaunchEnv,
    resume: ResumePoint | None,
    resolved_yaml: str,
    overrides: list[str],
) -> None:
    import torch

    from integration import distributed
    from integration.checkpoint import Checkpointer, LayoutRecord, checkpoint_root
    from integration.metrics import MetricsLog, Progress, write_run_config
    from integration.model_size import flops_per_token
    from integration.perf import Throughput
    from integration.plan import model_vocab_size
    from integration.stability.monitor import StabilityMonitor
    from integration.steps import build_training_runner
    from integration.tracking import RunLabels, WandbTracker, run_metadata
    from integration.trainer import TrainLoop

    distributed.init_process_group(config.cluster, env)
    try:
        distributed.init_model_parallel(layout)
        distributed.seed_everything(config.trainer.seed)
        device = torch.device(f"cuda:{env.local_rank}" if config.cluster.device == "cuda" else "cpu")
        trainer = config.trainer
        vocab_size = model_vocab_size(config.model, config.data.tokenizer, config.data.vocab_size)
        runner = build_training_runner(
            config.model,
            config.parallel,
            config.optim,
            config.precision,
            config.data,
            trainer,
            config.stability,
            layout,
            device,
            compression=config.compression,
            offload=config.offload,
            comm=config.comm,
        )
        compression = getattr(runner, "compression", None)  # the schedule, when a technique is on
        monitor = StabilityMonitor(config.stability, runner.gate.detector)
        run_dir = Path(config.run.dir)
        logging_rank = runner.is_logging_rank
        checkpointer = Checkpointer(
            runner.engine,
            config.checkpoint,
            checkpoint_root(config.checkpoint, run_dir),
            config.model,
            LayoutRecord.of(layout, config.parallel, config.precision.dtype),
            seed=config.trainer.seed,
            stateful={"stability": monitor, **({"compression": compression} if compression else {})},
        )
        first_step = checkpointer.load(resume) if resume is not None else 0
        if logging_rank and resume is not None:
            print(f"resumed from {resume.root / resume.tag} at step {first_step}", flush=True)
        if logging_rank:
            write_run_config(run_dir, resolved_yaml, overrides)
        labels = RunLabels.derive(
            config.wandb,
            config.run.name,
            config.model.name,
            config.data.name,
            layout,
            config.parallel.zero_stage,
            config.precision.dtype,
        )
        tracker = WandbTracker.create(
            config.wandb,
            run_dir,
            labels,
            {**OmegaConf.to_container(OmegaConf.create(resolved_yaml)), **run_metadata(layout, overrides)},
            enabled=logging_rank,
        )
        cluster = config.cluster
        loop = TrainLoop(
            runner,
            trainer,
            layout,
            Throughput(
                tokens_per_step=layout.global_batch_size * config.model.seq_length,
                flops_per_token=flops_per_token(config.model, vocab_size),
                devices=layout.world_size,
                peak_tflops=cluster.peak_tflops_fp32
                if config.precision.dtype == "fp32"
                else cluster.peak_tflops_bf16,
            ),
            metrics=MetricsLog(run_dir / "metrics.jsonl", enabled=logging_rank, resume_step=first_step),
            progress=Progress(trainer.max_steps, first_step, enabled=logging_rank and trainer.progress),
            monitor=monitor,
            tracker=tracker,
            first_step=first_step,
            device=device,
            checkpointer=checkpointer,
        )
        loop.run()
        if compression is not None:
            from integration.compression.export import export_after_training

            export_after_training(
                runner.engine.module,
                compression,
                config.compression,
                run_dir,
                config.model,
                vocab_size,
                logging_rank,
            )
        if tracker is not None:
            tracker.finish()
    finally:
        distributed.teardown()


if __name__ == "__main__":
    main()
