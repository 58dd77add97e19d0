"""Run by torchrun with 4 processes: one forward and backward of a 1-layer gpt_tiny (default
stability preset, so QK-layernorm and its gradient hooks are on, fp32) as Megatron-Core's 1D
tensor parallel 4 and as 2D on a 2×2 grid, every collective counted by CommLedger; next to it the
planner's predictions (integration.planner.tensor_comm) for the same shapes, and the planner's list
of each rank's 2D parameters (integration.planner.tp2d) next to GPT2D's own. Writes one JSON file
per rank.

    torchrun --nproc_per_node 4 planner_tp_comm_probe.py OUT_DIR
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
from integration.layout import Layout  # noqa: E402
from integration.model import build_gpt  # noqa: E402
from integration.plan import model_vocab_size  # noqa: E402
from integration.planner.memory import stage_parameters  # noqa: E402
from integration.planner.tensor_comm import calls, sent_bytes, tensor_parallel_collectives  # noqa: E402
from integration.planner.tp2d import parameters_2d  # noqa: E402
from integration.stability.hooks import install_model_hooks  # noqa: E402
from integration.tp2d import CommLedger, block  # noqa: E402
from integration.tp2d.gpt import build_gpt2d  # noqa: E402
from tests.conftest import typed_train  # noqa: E402

MICRO_BATCH = 2  # split over the 2 grid rows

out = Path([a for a in sys.argv[1:] if not a.startswith("--local_rank")][0])
env = LaunchEnv.from_environ()
config = typed_train(["model=gpt_tiny", "model.num_layers=1", "precision=fp32", "parallel=tp2d_2x2"])
model, dtype = config.model, config.precision.dtype
init_process_group(config.cluster, env)
init_model_parallel(Layout(4, 4, 1, 1, MICRO_BATCH, MICRO_BATCH, 1))
seed_everything(config.trainer.seed)
vocab = model_vocab_size(model, config.data.tokenizer, config.data.vocab_size)
tokens = MICRO_BATCH * model.seq_length


def layer_input(gpt) -> torch.Tensor:
    """A [s, b, h] activation for Megatron's layer; this rank's [b/q, s, h/q] block for 2D."""
    generator = torch.Generator().manual_seed(1)
    full = torch.randn(model.seq_length, MICRO_BATCH, model.hidden_size, generator=generator)
    if not hasattr(gpt, "grid"):
        return full
    return block(full.transpose(0, 1), gpt.grid)


def count(gpt) -> dict:
    """Collectives per device of one forward and backward: of the whole model on a micro-batch, and
    of its transformer layer alone (called directly, so every collective counted is the layer's)."""
    install_model_hooks(gpt, [gpt.embedding.word_embeddings], config.stability)
    generator = torch.Generator().manual_seed(0)  # the same full batch on every rank
    ids = torch.randint(0, vocab, (MICRO_BATCH, model.seq_length + 1), generator=generator)
    positions = torch.arange(model.seq_length).expand(MICRO_BATCH, -1)
    whole = CommLedger()
    with whole.counting():
        per_token = gpt(ids[:, :-1], positions, None, labels=ids[:, 1:])
        per_token.float().mean().backward()
    x = layer_input(gpt).requires_grad_(True)
    layer = CommLedger()
    with layer.counting():
        out = gpt.decoder.layers[0](x)
        out = out[0] if isinstance(out, tuple) else out  # Megatron's layer returns (output, context)
        out.backward(torch.ones_like(out))
    return {
        "layer": {
            phase: {"bytes": layer.sent(phase), "calls": sum(r.phase == phase for r in layer.records)}
            for phase in ("forward", "backward")
        },
        "all": {"bytes": whole.sent(), "calls": len(whole.records)},
        "layer_calls": sorted([r.op, r.group_size, r.payload, r.phase] for r in layer.records),
        "all_calls": sorted([r.op, r.group_size, r.payload, r.phase] for r in whole.records),
    }


def each_call(collectives) -> list:
    """[op, group size, payload, phase] once per call, sorted (what the ledger records)."""
    return sorted([c.op, c.ranks, c.payload, c.phase] for c in collectives for _ in range(c.count))


def predicted(tensor_parallel_2d: bool) -> dict:
    layer, first, last = tensor_parallel_collectives(
        model, vocab, tokens, 4, dtype, tensor_parallel_2d=tensor_parallel_2d
    )
    everything = layer + first + last
    return {
        "layer": {
            phase: {"bytes": sent_bytes(layer, phase), "calls": calls(layer, phase)}
            for phase in ("forward", "backward")
        },
        "all": {"bytes": sent_bytes(everything), "calls": calls(everything)},
        "layer_calls": each_call(layer),
        "all_calls": each_call(everything),
    }


def parameters(gpt) -> list:
    return [[name, p.numel()] for name, p in gpt.named_parameters()]


one_d = build_gpt(model, config.parallel, dtype, vocab, config.trainer.seed)
result = {
    "1d": {
        "counted": count(one_d),
        "predicted": predicted(False),
        "parameters": parameters(one_d),
        "planned_parameters": [[t.name, t.numel] for t in stage_parameters(model, vocab, 4, 1, 0)],
    }
}
two_d = build_gpt2d(model, config.parallel, dtype, vocab, config.trainer.seed)
result["2d"] = {
    "counted": count(two_d),
    "predicted": predicted(True),
    "parameters": parameters(two_d),
    "planned_parameters": [[t.name, t.numel] for t in parameters_2d(model, vocab, 2)],
}
(out / f"rank{env.rank}.json").write_text(json.dumps(result, indent=1))
dist.barrier()
teardown()
