"""Run by torchrun with 2 processes (data parallel 2): build gpt_tiny's real DeepSpeed engine at
each ZeRO stage and precision given, train one step, run the next backward, and write per rank
the bytes DeepSpeed holds — parameters, gradients, fp32 master, Adam moments — next to the
planner's prediction (integration.planner.memory.model_states).

Measured = the distinct storages reachable from the model and the optimizer (a view into a flat
buffer counts the buffer once, padding included).

    torchrun --nproc_per_node 2 planner_memory_probe.py OUT_DIR fp32:0 fp32:1 bf16:3 ...
"""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from integration.distributed import (  # noqa: E402
    LaunchEnv,
    init_model_parallel,
    init_process_group,
    seed_everything,
    teardown,
)
from integration.ds_config import build_deepspeed_config  # noqa: E402
from integration.engine import build_engine  # noqa: E402
from integration.layout import Layout  # noqa: E402
from integration.model import build_gpt  # noqa: E402
from integration.plan import model_vocab_size  # noqa: E402
from integration.planner.memory import model_states, stage_parameters  # noqa: E402
from tests.conftest import typed_train  # noqa: E402

args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
out, runs = Path(args[0]), [tuple(a.split(":")) for a in args[1:]]
env = LaunchEnv.from_environ()


class Storages:
    """Bytes of distinct storages, each counted once, in the first category that reaches it."""

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.bytes: dict[str, int] = {}

    def add(self, category: str, tensors) -> None:
        total = self.bytes.setdefault(category, 0)
        for t in tensors:
            if t is None or t.numel() == 0:
                continue
            storage = t.untyped_storage()
            if storage.data_ptr() in self.seen:
                continue
            self.seen.add(storage.data_ptr())
            total += storage.nbytes()
        self.bytes[category] = total


def tensors_in(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from tensors_in(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from tensors_in(v)


def measure(engine, model) -> dict[str, int]:
    opt = engine.optimizer
    params = list(model.parameters())
    found = Storages()
    parameter_buffers = [p.data for p in params]
    parameter_buffers += [getattr(p, "ds_tensor", None) for p in params]
    parameter_buffers += list(getattr(opt, "bit16_groups_flat", []))
    parameter_buffers += list(getattr(opt, "fp16_partitioned_groups_flat", []))
    found.add("parameters", parameter_buffers)
    masters = list(getattr(opt, "single_partition_of_fp32_groups", []))
    masters += list(getattr(opt, "fp32_partitioned_groups_flat", []))
    masters += [t for group in getattr(opt, "fp32_groups", []) for t in group]  # FP16_UnfusedOptimizer
    found.add("master", masters)
    inner = getattr(opt, "optimizer", opt)
    moments = [
        v for state in inner.state.values() for k, v in state.items() if k in ("exp_avg", "exp_avg_sq")
    ]
    found.add("optimizer", moments)
    grads = [p.grad for p in params]
    grads.append(getattr(opt, "grads_in_partition", None))
    grads.append(getattr(opt, "grad_partitions_flat_buffer", None))
    # ZeRO 1/2 hand the reduced gradients of this rank's partition over to `all_grad_tensors`.
    grads += list(tensors_in(getattr(opt, "all_grad_tensors", None)))
    grads += list(tensors_in(getattr(opt, "averaged_gradients", None)))
    found.add("gradients", grads)
    return found.bytes


def backward(engine, micro: int, seq: int, generator: torch.Generator) -> None:
    tokens = torch.randint(0, 256, (micro, seq + 1), generator=generator)
    positions = torch.arange(seq).expand(micro, seq)
    per_token = engine(
        input_ids=tokens[:, :-1], position_ids=positions, attention_mask=None, labels=tokens[:, 1:]
    )
    engine.backward(per_token.float().mean())


def probe(dtype: str, stage: int) -> dict:
    config = typed_train(
        ["model=gpt_tiny", f"precision={dtype}", "parallel=dp", f"parallel.zero_stage={stage}"]
    )
    layout = Layout.derive(config.parallel, 2)
    init_process_group(config.cluster, env)
    init_model_parallel(layout)
    seed_everything(config.trainer.seed)
    vocab = model_vocab_size(config.model, config.data.tokenizer, config.data.vocab_size)
    gpt = build_gpt(config.model, config.parallel, dtype, vocab, config.trainer.seed)
    ds_config = build_deepspeed_config(layout, config.parallel, config.optim, config.precision, 10)
    engine = build_engine(gpt, ds_config, config.optim)
    generator = torch.Generator().manual_seed(env.rank)
    shape = (layout.micro_batch_size, config.model.seq_length, generator)
    for _ in range(layout.gradient_accumulation_steps):
        backward(engine, *shape)
        engine.step()
    for _ in range(layout.gradient_accumulation_steps):  # the next step's gradients, before its update
        backward(engine, *shape)
    measured = measure(engine, engine.module)
    tensors = stage_parameters(config.model, vocab, 1, 1, 0)
    predicted = model_states(tensors, stage, layout.data_parallel, dtype, dp_rank=env.rank)
    optimizer_class = type(engine.optimizer).__name__
    engine.destroy()
    teardown()
    return {
        "dtype": dtype,
        "zero_stage": stage,
        "rank": env.rank,
        "optimizer_class": optimizer_class,
        "measured": measured,
        "predicted": {
            "parameters": predicted.parameters,
            "gradients": predicted.gradients,
            "master": predicted.master,
            "optimizer": predicted.optimizer,
        },
    }


results = [probe(dtype, int(stage)) for dtype, stage in runs]
(out / f"rank{env.rank}.json").write_text(json.dumps(results, indent=1))
dist.barrier()
