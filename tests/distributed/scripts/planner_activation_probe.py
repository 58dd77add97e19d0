"""Run by torchrun with 2 processes: for each case, build the real Megatron-Core GPTModel
(integration.model.build_gpt) at the case's tensor-parallel size (tp 1 runs as 2 data-parallel
replicas), run one micro-batch forward (with labels: the vocab-parallel cross entropy) and
backward under integration.planner.saved_tensors.SavedTensorMeter, and write per rank the peak
bytes of saved activations next to the planner's prediction (memory.stage_memory's
peak_activations for one stage, one micro-batch in flight).

    torchrun --nproc_per_node 2 planner_activation_probe.py OUT_DIR '<json list of cases>'

A case: {"model": "gpt_tiny", "tp": 2, "recompute": "none|selective|full", "dtype": "fp32",
"micro_batch_size": 2, "overrides": [...]}.
"""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

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
from integration.planner.memory import ActivationShape, stage_memory  # noqa: E402
from integration.planner.saved_tensors import measure_micro_batch  # noqa: E402
from tests.conftest import typed_train  # noqa: E402

args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
out, cases = Path(args[0]), json.loads(args[1])
env = LaunchEnv.from_environ()


def probe(case: dict) -> dict:
    recompute = case["recompute"]
    config = typed_train(
        [
            f"model={case['model']}",
            "stability=off",
            f"precision={case['dtype']}",
            f"parallel.tensor_model_parallel_size={case['tp']}",
            f"parallel.micro_batch_size={case['micro_batch_size']}",
            f"model.recompute_granularity={'null' if recompute == 'none' else recompute}",
            *case.get("overrides", []),
        ]
    )
    model, dtype = config.model, config.precision.dtype
    layout = Layout.derive(config.parallel, env.world_size)
    init_process_group(config.cluster, env)
    init_model_parallel(layout)
    seed_everything(config.trainer.seed)
    vocab = model_vocab_size(model, config.data.tokenizer, config.data.vocab_size)
    gpt = build_gpt(model, config.parallel, dtype, vocab, config.trainer.seed)
    measured = measure_micro_batch(gpt, layout.micro_batch_size, model.seq_length, seed=env.rank)
    shape = ActivationShape(
        layout.micro_batch_size, layout.tensor_parallel, False, recompute, True, dtype, torch_norms=True
    )
    predicted = stage_memory(
        model, vocab, layout.tensor_parallel, 1, layout.data_parallel, 0, 0, "none", 1, shape
    )
    teardown()
    return {
        **case,
        "rank": env.rank,
        "measured_peak": measured.peak,
        "measured_after_forward": measured.after_forward,
        "released": measured.released,
        "predicted_peak": predicted.peak_activations,
        "predicted_parts": {
            "layers": predicted.activations,
            "output_layer": predicted.output_layer,
            "recompute": predicted.recompute,
        },
    }


results = [probe(case) for case in cases]
(out / f"rank{env.rank}.json").write_text(json.dumps(results, indent=1))
dist.barrier()
