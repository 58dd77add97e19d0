"""Run by torchrun with 2 processes (tensor parallel 2): the stability loss terms and model hooks
measured against their definitions. Writes one JSON object (from rank 0)."""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from megatron.core import parallel_state, tensor_parallel  # noqa: E402

from integration.config.schema import ClusterConfig, ModelConfig, ParallelConfig  # noqa: E402
from integration.distributed import LaunchEnv, init_model_parallel, init_process_group, teardown  # noqa: E402
from integration.layout import Layout  # noqa: E402
from integration.model import build_gpt  # noqa: E402
from integration.stability.hooks import shrink_embedding_gradient, sum_partial_replicated_grads  # noqa: E402
from integration.stability.losses import vocab_parallel_logsumexp, z_loss  # noqa: E402

out = Path([a for a in sys.argv[1:] if not a.startswith("--local_rank")][0])
init_process_group(ClusterConfig(name="local_cpu"), LaunchEnv.from_environ())
init_model_parallel(Layout(2, 2, 1, 1, 1, 1, 1))
tp_rank, tp = parallel_state.get_tensor_model_parallel_rank(), 2
result = {}


def shard(full: torch.Tensor) -> torch.Tensor:
    """This rank's vocabulary slice of full logits [s, b, v]."""
    width = full.shape[-1] // tp
    return full[..., tp_rank * width : (tp_rank + 1) * width].contiguous()


def cross_entropy(full: torch.Tensor, labels: torch.Tensor) -> float:
    per_token = tensor_parallel.vocab_parallel_cross_entropy(shard(full).clone(), labels.t().contiguous())
    return float(per_token.mean())


generator = torch.Generator().manual_seed(0)
seq, batch, vocab = 16, 3, 64
full = torch.randn(seq, batch, vocab, generator=generator) * 4
labels = torch.randint(0, vocab, (batch, seq), generator=generator)
mask = torch.ones(batch, seq)

# 1. Vocab-parallel logsumexp = the single-rank value.
lse = vocab_parallel_logsumexp(shard(full))
reference = torch.logsumexp(full.double(), dim=-1)
result["lse_tp2_vs_full_max_rel"] = float(((lse.double() - reference) / reference).abs().max())

# 2. Log-probabilities (logsumexp 0) shifted by +30.
log_probs = torch.log_softmax(full, dim=-1)
c = 1e-4
result["ce"] = cross_entropy(log_probs, labels)
result["ce_shifted"] = cross_entropy(log_probs + 30, labels)
result["z_unshifted"] = float(z_loss(shard(log_probs), mask, c))
result["z_shifted"] = float(z_loss(shard(log_probs + 30), mask, c))

# 3. Gradient descent from the shifted logits, with and without the z-term. Cross entropy is
# shift-invariant, so only the z-term moves logsumexp toward 0. One step at the default c shows the
# direction; a longer run at a larger c shows where it goes.


def descend(coefficient: float, steps: int, lr: float) -> tuple[float, float]:
    logits = torch.nn.Parameter(shard(log_probs + 30).clone())
    optimizer = torch.optim.SGD([logits], lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        objective = tensor_parallel.vocab_parallel_cross_entropy(
            logits.clone(), labels.t().contiguous()
        ).mean()
        if coefficient:
            objective = objective + z_loss(logits, mask, coefficient)
        objective.backward()
        optimizer.step()
    final = logits.detach()
    ce = tensor_parallel.vocab_parallel_cross_entropy(final.clone(), labels.t().contiguous()).mean()
    return float(vocab_parallel_logsumexp(final).mean()), float(ce)


result["lse_one_step_without_z"], _ = descend(0.0, 1, 1.0)
result["lse_one_step_with_z"], _ = descend(c, 1, 1.0)
result["lse_trained_without_z"], result["ce_trained_without_z"] = descend(0.0, 1000, 100.0)
result["lse_trained_with_z"], result["ce_trained_with_z"] = descend(1e-2, 1000, 100.0)

# 4. Embedding-gradient shrink on an untied GPT at TP2, same weights and batch with and without.
model = ModelConfig(
    name="probe",
    num_layers=2,
    hidden_size=64,
    num_attention_heads=4,
    seq_length=seq,
    share_embeddings_and_output_weights=False,
    qk_layernorm=True,
)
parallel = ParallelConfig(name="tp2", tensor_model_parallel_size=2)
tokens = torch.randint(0, 256, (batch, seq), generator=generator)
positions = torch.arange(seq).expand(batch, seq)


def gradients(alpha: float | None, sum_partial: bool = False) -> dict[str, torch.Tensor]:
    gpt = build_gpt(model, parallel, "fp32", 256, seed=7)
    if alpha is not None:
        shrink_embedding_gradient(gpt.embedding.word_embeddings, alpha)
    if sum_partial:
        sum_partial_replicated_grads(gpt)
    loss = gpt(input_ids=tokens, position_ids=positions, attention_mask=None, labels=labels % 256).mean()
    loss.backward()
    return {n: p.grad.clone() for n, p in gpt.named_parameters()}, gpt


plain, gpt = gradients(None)
shrunk, _ = gradients(0.1)
name = "embedding.word_embeddings.weight"
result["embedding_grad_norm_ratio"] = float(shrunk[name].norm() / plain[name].norm())
result["embedding_grad_is_alpha_times"] = torch.allclose(
    shrunk[name], 0.1 * plain[name], rtol=1e-4, atol=1e-9
)
# The forward value out·α + out·(1−α) equals out only up to rounding, so the other gradients
# agree to rounding, not bit for bit.
result["other_grads_max_rel_diff"] = max(
    float((shrunk[n] - plain[n]).norm() / plain[n].norm())
    for n in plain
    if n != name and plain[n].norm() > 1e-6
)  # k_layernorm.bias has a zero gradient in exact arithmetic (softmax ignores a shift of all keys)

# 5. QK-norm weights are replicated over TP but each rank normalises only its own heads: without
# the hook each rank holds a partial gradient; with it, every rank holds the sum (the full gradient).
summed, _ = gradients(None, sum_partial=True)
qk_names = [n for n in plain if "q_layernorm" in n or "k_layernorm" in n]


def gathered(tensor: torch.Tensor) -> list[torch.Tensor]:
    parts = [torch.empty_like(tensor) for _ in range(tp)]
    dist.all_gather(parts, tensor.contiguous())
    return parts


result["qk_partial_grads_differ_across_tp"] = any(
    not torch.equal(*gathered(plain[n])) for n in qk_names if "bias" not in n
)
result["qk_summed_grads_equal_across_tp"] = all(torch.equal(*gathered(summed[n])) for n in qk_names)
result["qk_summed_is_sum_of_partials"] = all(
    torch.allclose(summed[n], sum(gathered(plain[n])), rtol=1e-6, atol=1e-12) for n in qk_names
)
result["non_qk_grads_untouched"] = all(torch.equal(summed[n], plain[n]) for n in plain if n not in qk_names)

# 6. QK-norm modules in the built layers (not identity placeholders), on both ranks.
norms = sum(
    1
    for n, module in gpt.named_modules()
    if n.endswith(("q_layernorm", "k_layernorm")) and any(True for _ in module.parameters())
)
counted = torch.tensor([norms])
dist.all_reduce(counted)
result["qk_layernorm_modules"] = int(counted)
result["num_layers"] = model.num_layers
result["transformer_config_qk_layernorm"] = bool(gpt.config.qk_layernorm)

if dist.get_rank() == 0:
    out.write_text(json.dumps(result))
teardown()
