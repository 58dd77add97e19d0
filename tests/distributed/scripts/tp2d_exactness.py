"""Run by torchrun with 4 processes (a 2×2 grid, tensor parallel 4): every 2D layer against its
unsharded torch counterpart with the same full weights — forward output, input gradient and
weight gradients. Writes one JSON object (rank 0): for each check the largest absolute error over
all ranks."""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from integration.config.schema import ClusterConfig  # noqa: E402
from integration.distributed import LaunchEnv, init_model_parallel, init_process_group, teardown  # noqa: E402
from integration.layout import Layout  # noqa: E402
from integration.tp2d import (  # noqa: E402
    CommLedger,
    Embedding2D,
    LayerNorm2D,
    Linear2D,
    VocabProjection2D,
    block,
    build_grid_from_megatron,
    cross_entropy_2d,
    vector_piece,
)

out = Path([a for a in sys.argv[1:] if not a.startswith("--local_rank")][0])
init_process_group(ClusterConfig(name="local_cpu"), LaunchEnv.from_environ())
init_model_parallel(Layout(4, 4, 1, 1, 1, 1, 1))
grid = build_grid_from_megatron()
errors: dict[str, float] = {}


def record(name: str, local: torch.Tensor, reference: torch.Tensor) -> None:
    assert local.shape == reference.shape, (name, local.shape, reference.shape)
    errors[name] = max(errors.get(name, 0.0), float((local.detach() - reference.detach()).abs().max()))


def blk(full: torch.Tensor) -> torch.Tensor:
    """Batch block by grid row, last dimension by grid column."""
    return block(full, grid, row_dim=0, col_dim=-1)


def leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_(True)


gen = torch.Generator().manual_seed(0)
B, S, H, OUT, V = 4, 6, 16, 24, 20


def randn(*shape):
    return torch.randn(*shape, generator=gen)


# 1. Linear: y = x Wᵀ + b (nn.Linear convention for the full weight).
ref = torch.nn.Linear(H, OUT)
with torch.no_grad():
    ref.weight.copy_(randn(OUT, H))
    ref.bias.copy_(randn(OUT))
x, g = randn(B, S, H), randn(B, S, OUT)
xf = leaf(x)
ref(xf).backward(g)
layer = Linear2D(H, OUT, grid)
layer.load_full(ref.weight, ref.bias)
xl = leaf(blk(x))
y = layer(xl)
y.backward(blk(g))
record("linear.out", y, blk(ref(x)))
record("linear.grad_input", xl.grad, blk(xf.grad))
record("linear.grad_weight", layer.weight.grad, block(ref.weight.grad.t(), grid))
record("linear.grad_bias", layer.bias.grad, vector_piece(ref.bias.grad, grid))

# 2. LayerNorm over a hidden dimension split across the row.
ref = torch.nn.LayerNorm(H, eps=1e-5)
with torch.no_grad():
    ref.weight.copy_(1 + 0.1 * randn(H))
    ref.bias.copy_(randn(H))
x, g = 3 * randn(B, S, H) + 1, randn(B, S, H)
xf = leaf(x)
ref(xf).backward(g)
layer = LayerNorm2D(H, grid)
layer.load_full(ref.weight, ref.bias)
xl = leaf(blk(x))
y = layer(xl)
y.backward(blk(g))
record("layernorm.out", y, blk(ref(x)))
record("layernorm.grad_input", xl.grad, blk(xf.grad))
record("layernorm.grad_weight", layer.weight.grad, vector_piece(ref.weight.grad, grid))
record("layernorm.grad_bias", layer.bias.grad, vector_piece(ref.bias.grad, grid))

# 3. Embedding: vocabulary-parallel, hidden split; ids are the full batch on every rank.
ref = torch.nn.Embedding(V, H)
with torch.no_grad():
    ref.weight.copy_(randn(V, H))
ids = torch.randint(0, V, (B, S), generator=gen)
g = randn(B, S, H)
ref(ids).backward(g)
layer = Embedding2D(V, H, grid)
layer.load_full(ref.weight)
y = layer(ids)
y.backward(blk(g))
record("embedding.out", y, blk(ref(ids)))
record("embedding.grad_weight", layer.weight.grad, block(ref.weight.grad, grid))

# 4. Vocabulary projection, untied (own weight) and tied (the embedding's).
weight = randn(V, H)
x, g = randn(B, S, H), randn(B, S, V)
wf, xf = leaf(weight), leaf(x)
(xf @ wf.t()).backward(g)
proj = VocabProjection2D(V, H, grid)
proj.load_full(weight)
xl = leaf(blk(x))
y = proj(xl)
y.backward(blk(g))
record("projection.out", y, blk(x @ weight.t()))
record("projection.grad_input", xl.grad, blk(xf.grad))
record("projection.grad_weight", proj.weight.grad, block(wf.grad, grid))
emb = Embedding2D(V, H, grid)
emb.load_full(weight)
tied = VocabProjection2D(V, H, grid, tied=emb)
xl = leaf(blk(x))
tied(xl).backward(blk(g))
record("projection_tied.grad_input", xl.grad, blk(xf.grad))
record("projection_tied.grad_weight", emb.weight.grad, block(wf.grad, grid))
assert [n for n, _ in tied.named_parameters()] == [], "a tied projection owns no parameter"

# 5. Vocabulary-parallel cross entropy: full per-token loss on every rank, logits gradient.
logits, g = 4 * randn(B, S, V), randn(B, S)
labels = torch.randint(0, V, (B, S), generator=gen)
lf = leaf(logits)
loss = F.cross_entropy(lf.reshape(-1, V), labels.reshape(-1), reduction="none").reshape(B, S)
loss.backward(g)
ll = leaf(blk(logits))
per_token = cross_entropy_2d(ll, labels, grid)
per_token.backward(g)
record("cross_entropy.loss", per_token, loss.detach())
record("cross_entropy.grad_logits", ll.grad, blk(lf.grad))

# 6. Composition (a GPT-shaped stack): embed → LN → Linear → GELU → Linear → LN → tied logits → CE,
# every parameter's gradient and the loss.
ref_emb, ref_ln1 = torch.nn.Embedding(V, H), torch.nn.LayerNorm(H)
ref_fc1, ref_fc2, ref_ln2 = torch.nn.Linear(H, 4 * H), torch.nn.Linear(4 * H, H), torch.nn.LayerNorm(H)
with torch.no_grad():
    for m in (ref_emb, ref_ln1, ref_fc1, ref_fc2, ref_ln2):
        for p in m.parameters():
            p.copy_(randn(*p.shape) * (0.3 if p.ndim > 1 else 1.0))


def ref_forward(ids):
    h = ref_emb(ids)
    h = h + ref_fc2(F.gelu(ref_fc1(ref_ln1(h))))
    logits = ref_ln2(h) @ ref_emb.weight.t()
    return F.cross_entropy(logits.reshape(-1, V), labels.reshape(-1), reduction="none").reshape(B, S)


ref_loss = ref_forward(ids).mean()
ref_loss.backward()
emb2, ln1, ln2 = Embedding2D(V, H, grid), LayerNorm2D(H, grid), LayerNorm2D(H, grid)
fc1, fc2 = Linear2D(H, 4 * H, grid), Linear2D(4 * H, H, grid)
emb2.load_full(ref_emb.weight)
ln1.load_full(ref_ln1.weight, ref_ln1.bias)
ln2.load_full(ref_ln2.weight, ref_ln2.bias)
fc1.load_full(ref_fc1.weight, ref_fc1.bias)
fc2.load_full(ref_fc2.weight, ref_fc2.bias)
head = VocabProjection2D(V, H, grid, tied=emb2)
ledger = CommLedger()
with ledger.counting():
    h = emb2(ids)
    h = h + fc2(F.gelu(fc1(ln1(h))))
    loss = cross_entropy_2d(head(ln2(h)), labels, grid).mean()
    loss.backward()
record("stack.loss", loss.detach(), ref_loss.detach())
record("stack.grad.embedding", emb2.weight.grad, block(ref_emb.weight.grad, grid))
for name, mine, theirs in [("fc1", fc1, ref_fc1), ("fc2", fc2, ref_fc2)]:
    record(f"stack.grad.{name}.weight", mine.weight.grad, block(theirs.weight.grad.t(), grid))
    record(f"stack.grad.{name}.bias", mine.bias.grad, vector_piece(theirs.bias.grad, grid))
for name, mine, theirs in [("ln1", ln1, ref_ln1), ("ln2", ln2, ref_ln2)]:
    record(f"stack.grad.{name}.weight", mine.weight.grad, vector_piece(theirs.weight.grad, grid))
    record(f"stack.grad.{name}.bias", mine.bias.grad, vector_piece(theirs.bias.grad, grid))

# 7. Accounting: a Linear2D forward sends q broadcasts of x blocks along the row and q of W blocks
# along the column; each broadcast costs (q-1)/q of its payload per device.
ledger = CommLedger()
layer = Linear2D(H, OUT, grid, bias=False)
xl = leaf(blk(randn(B, S, H)))
with ledger.counting():
    y = layer(xl)
    y.backward(torch.ones_like(y))
q = grid.q
x_bytes, w_bytes, y_bytes = B * S * H // q**2 * 4, H * OUT // q**2 * 4, B * S * OUT // q**2 * 4
accounting = {
    "forward": ledger.sent("forward"),
    "forward_expected": (q - 1) / q * q * (x_bytes + w_bytes),
    # dX = dY·Wᵀ: q W-block broadcasts + q reduces of dX blocks; dW = Xᵀ·dY: q X-block broadcasts +
    # q reduces of dW blocks.
    "backward": ledger.sent("backward"),
    "backward_expected": (q - 1) / q * q * (w_bytes + x_bytes + x_bytes + w_bytes),
    "calls": len(ledger.records),
    "y_bytes": y_bytes,
}

names = sorted(errors)
worst = torch.tensor([errors[n] for n in names], dtype=torch.float64)
dist.all_reduce(worst, op=dist.ReduceOp.MAX)
if dist.get_rank() == 0:
    out.write_text(
        json.dumps(
            {"errors": dict(zip(names, worst.tolist(), strict=True)), "accounting": accounting}, indent=1
        )
    )
teardown()
