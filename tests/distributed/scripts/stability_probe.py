"""Run under the deepspeed runner: train for real (DeepSpeed engine, Megatron-Core GPT, gloo) and
plant faults at chosen steps, then report per rank what the stability hooks did to the model and
optimizer state. Faults are planted from outside the library: a loss multiplied by 1e3 (which
also scales the gradients by 1e3) and a NaN written into one data-parallel rank's gradient.

    deepspeed --num_gpus 2 stability_probe.py OUT.json '{"spike": [6], "nan": [8]}' parallel=dp ...

Steps listed under "spike" / "nan" get the fault; every other step is a clean control step.
With "rollback": true the loop is the real TrainLoop with a Checkpointer, and the listed steps
are batches (data steps): a rollback that skips them leaves the rest of the run clean.
"""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from integration import distributed  # noqa: E402
from integration.config import register_schemas, to_typed  # noqa: E402
from integration.stability.monitor import StabilityMonitor  # noqa: E402
from integration.steps import build_training_runner  # noqa: E402
from integration.validate import validate  # noqa: E402

args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
out_path, plan, overrides = Path(args[0]), json.loads(args[1]), args[2:]
register_schemas()
with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
    config = to_typed(compose("train", overrides=overrides))
env = distributed.LaunchEnv.from_environ()
layout = validate(config, env.world_size, cuda_available=False).layout
distributed.init_process_group(config.cluster, env)
distributed.init_model_parallel(layout)
distributed.seed_everything(config.trainer.seed)
trainer = config.trainer
runner = build_training_runner(
    config.model,
    config.parallel,
    config.optim,
    config.precision,
    config.data,
    trainer,
    config.stability,
    layout,
    torch.device("cpu"),
)
engine = runner.engine
from megatron.core import parallel_state  # noqa: E402

dp_rank = parallel_state.get_data_parallel_rank()
current = {"step": -1}

# Fault 1: the loss (and so every gradient) ×1e3 on every rank. The pipeline's last stage reports
# the cross entropy it computed before the fault, so there the spike shows in the gradient norm.
if hasattr(runner, "loss_fn"):
    original_loss_fn = engine.module.loss_fn

    def loss_fn_with_planted_spike(logits, labels):
        loss = original_loss_fn(logits, labels)
        return loss * 1e3 if current["step"] in plan.get("spike", []) else loss

    engine.module.loss_fn = loss_fn_with_planted_spike
else:
    original_loss = runner._loss

    def loss_with_planted_spike(batch):
        loss = original_loss(batch)
        return loss * 1e3 if current["step"] in plan.get("spike", []) else loss

    runner._loss = loss_with_planted_spike

# Fault 2: NaN in one gradient element, on one rank only (global rank plan["nan_rank"], default 1).
first_param = next(p for p in engine.module.parameters() if p.requires_grad)


def grad_with_planted_nan(grad):
    if current["step"] in plan.get("nan", []) and dist.get_rank() == plan.get("nan_rank", 1):
        grad = grad.clone()
        grad.view(-1)[0] = float("nan")
    return grad


first_param.register_hook(grad_with_planted_nan)


def snapshot() -> list[torch.Tensor]:
    """Master weights, every optimizer state tensor (Adam moments and step counter) and the
    model's own parameters (this rank's ZeRO-3 partition)."""
    base = engine.basic_optimizer
    tensors = []
    for group in base.param_groups:
        for param in group["params"]:
            tensors.append(param.detach().clone())
            state = base.state.get(param, {})
            for key in sorted(state):
                value = state[key]
                tensors.append(value.detach().clone() if torch.is_tensor(value) else torch.tensor(value))
    for param in engine.module.parameters():
        tensors.append(getattr(param, "ds_tensor", param).detach().clone())
    return tensors


def identical(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


report = {"rank": dist.get_rank(), "dp_rank": dp_rank, "steps": []}
if plan.get("rollback"):
    from integration.checkpoint import Checkpointer, LayoutRecord, checkpoint_root
    from integration.metrics import MetricsLog, Progress
    from integration.perf import Throughput
    from integration.trainer import TrainLoop

    monitor = StabilityMonitor(config.stability, runner.gate.detector)
    run_dir = Path(config.run.dir)
    checkpointer = Checkpointer(
        engine,
        config.checkpoint,
        checkpoint_root(config.checkpoint, run_dir),
        config.model,
        LayoutRecord.of(layout, config.parallel, config.precision.dtype),
        seed=config.trainer.seed,
        stateful={"stability": monitor},
    )
    saved = {}
    original_save = checkpointer.save

    def save_and_remember(step):
        original_save(step)
        saved[step] = snapshot()

    checkpointer.save = save_and_remember
    original_train_step = runner.train_step
    restored_checks = []

    def train_step(step, data_step):
        if step in saved and any(r["step"] == step for r in report["steps"]):
            # Re-running a step after a rollback: the state must be the checkpoint's.
            restored_checks.append(
                {"step": step, "identical_to_checkpoint": identical(snapshot(), saved[step])}
            )
        current["step"] = data_step  # faults belong to batches: a rollback skips them
        result = original_train_step(step, data_step)
        report["steps"].append(
            {
                "step": step,
                "data_step": data_step,
                "applied": result.outcome.applied,
                "reason": result.outcome.reason,
            }
        )
        return result

    runner.train_step = train_step
    loop = TrainLoop(
        runner,
        trainer,
        layout,
        Throughput(tokens_per_step=1, flops_per_token=1, devices=layout.world_size, peak_tflops=None),
        metrics=MetricsLog(run_dir / "metrics.jsonl", enabled=runner.is_logging_rank),
        progress=Progress(trainer.max_steps, 0, enabled=False),
        monitor=monitor,
        checkpointer=checkpointer,
    )
    loop.run()
    report.update(restored=restored_checks, rollbacks=monitor.rollbacks, data_offset=monitor.data_offset)
else:
    monitor = StabilityMonitor(config.stability, runner.gate.detector)
    for step in range(trainer.max_steps):
        current["step"] = step
        before = snapshot()
        lr_before = engine.get_lr()[0]
        result = runner.train_step(step, step)
        monitor.observe(result.loss, result.outcome)
        report["steps"].append(
            {
                "step": step,
                "loss": result.loss,
                "grad_norm": result.grad_norm,
                "applied": result.outcome.applied,
                "reason": result.outcome.reason,
                "spike_score": result.outcome.spike_score,
                "state_unchanged": identical(before, snapshot()),
                "lr_before": lr_before,
                "lr_after": engine.get_lr()[0],
                "skipped_steps": monitor.skipped_steps,
            }
        )
out_path.with_name(f"{out_path.stem}.rank{dist.get_rank()}.json").write_text(json.dumps(report))
distributed.teardown()
