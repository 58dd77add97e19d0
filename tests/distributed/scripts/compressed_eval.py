"""Evaluate exported compressed models with nothing but the export: a fresh, uncompressed
Megatron-Core GPTModel (one process, tensor parallel 1) gets the dense weights `load_compressed`
makes of each `model.pt`, and computes the validation loss over the same batches as the training
run's evaluation (DenseStep.eval_loss).

    python compressed_eval.py '[{"path": "run_a/compressed/model.pt", "overrides": [...]}, ...]'

`overrides`: the training run's Hydra overrides (model, data, trainer); the layout is forced to
one process. stdout (last line): JSON list of {"val_loss": float, "parameters": int} per export.
"""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from integration import distributed  # noqa: E402
from integration.compression.export import load_compressed  # noqa: E402
from integration.config import register_schemas, to_typed  # noqa: E402
from integration.data import BatchSampler, build_datasets, collate  # noqa: E402
from integration.model import build_gpt  # noqa: E402
from integration.plan import model_vocab_size  # noqa: E402
from integration.trainer import masked_mean  # noqa: E402
from integration.validate import validate  # noqa: E402

exports = json.loads(sys.argv[1])
register_schemas()


def compose_config(overrides: list[str]):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return to_typed(compose("train", overrides=[*overrides, "parallel=single", "compression=none"]))


def validation_loss(path: Path, overrides: list[str]) -> dict:
    config = compose_config(overrides)
    layout = validate(config, 1, cuda_available=False).layout
    trainer = config.trainer
    datasets = build_datasets(
        config.data,
        config.model.seq_length,
        trainer.seed,
        train_samples=trainer.max_steps * layout.global_batch_size,
        valid_samples=max(1, trainer.eval_iters) * layout.global_batch_size,
    )
    vocab = model_vocab_size(config.model, config.data.tokenizer, config.data.vocab_size)
    sampler = BatchSampler(layout, data_parallel_rank=0)
    distributed.seed_everything(trainer.seed)
    gpt = build_gpt(config.model, config.parallel, "fp32", vocab, trainer.seed)
    state = load_compressed(path)
    names = {name for name, _ in gpt.named_parameters()}
    assert set(state) == names, f"export and model differ in {sorted(set(state) ^ names)}"
    gpt.load_state_dict(state, strict=False)
    gpt.eval()
    losses = []
    with torch.no_grad():
        for step in range(trainer.eval_iters):
            for micro in range(layout.gradient_accumulation_steps):
                batch = collate(datasets.valid, sampler.indices(step, micro), torch.device("cpu"))
                per_token = gpt(
                    input_ids=batch["tokens"],
                    position_ids=batch["position_ids"],
                    attention_mask=None,
                    labels=batch["labels"],
                )
                losses.append(masked_mean(per_token, batch["loss_mask"]))
    return {"val_loss": float(torch.stack(losses).mean()), "parameters": len(names)}


first = compose_config(exports[0]["overrides"])
distributed.init_process_group(first.cluster, distributed.LaunchEnv.from_environ())
try:
    distributed.init_model_parallel(validate(first, 1, cuda_available=False).layout)
    results = [validation_loss(Path(e["path"]), e["overrides"]) for e in exports]
finally:
    distributed.teardown()
print(json.dumps(results))
