"""2D (Optimus/SUMMA, 2×2 grid) vs 1D (Megatron-Core column/row parallel) tensor parallelism on 4
devices: bytes communicated per device and per-device activation/weight memory of one transformer
MLP block and one attention block, at a few hidden sizes.

    OMP_NUM_THREADS=1 torchrun --nproc_per_node 4 benchmarks/tp2d_vs_tp1d.py
    OMP_NUM_THREADS=1 torchrun --nproc_per_node 4 benchmarks/tp2d_vs_tp1d.py --hidden 512 2048 --batch 8 --seq 512

Both layouts run the same block with the same full weights and input (the outputs are compared):

- mlp:       x + fc2(gelu(fc1(ln(x)))), ffn = 4·hidden
- attention: x + proj(causal_attention(qkv(ln(x)))), head_dim 64 (at least 4 heads)

1D is Megatron-Core's ColumnParallelLinear (fc1, qkv) + RowParallelLinear (fc2, proj) at tensor
parallel 4 with a replicated LayerNorm and replicated activations (no sequence parallelism). 2D is
`integration.tp2d` on a 2×2 grid. Communication is counted from the collectives each issues
(`integration.tp2d.comm.CommLedger` wraps torch.distributed), per device, with the
bandwidth-optimal cost of each collective (all-reduce 2(p-1)/p·n, others (p-1)/p·n). Memory per
device: weights = the rank's parameters; activations = the tensors autograd saves for backward
(parameters excluded, shared storage counted once), plus the block's output.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.filterwarnings("ignore")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from integration.config.schema import ClusterConfig  # noqa: E402
from integration.distributed import LaunchEnv, init_model_parallel, init_process_group, teardown  # noqa: E402
from integration.launcher_args import strip_launcher_args  # noqa: E402
from integration.layout import Layout  # noqa: E402
from integration.tp2d import CommLedger, LayerNorm2D, block, build_grid_from_megatron  # noqa: E402
from integration.tp2d.blocks import MLP2D, SelfAttention2D  # noqa: E402


def heads_for(hidden: int) -> int:
    """Head dimension 64, at least 4 heads (tensor parallel 4 needs heads divisible by 4)."""
    return max(4, hidden // 64)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--batch", type=int, default=8, help="micro-batch (sequences), divisible by 2")
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--out", type=Path, help="also write the results as JSON")
    strip_launcher_args(sys.argv)
    return parser.parse_args()


# --- the two layouts of each block -------------------------------------------------------------


class Block2D(nn.Module):
    def __init__(self, kind: str, hidden: int, grid):
        super().__init__()
        self.ln = LayerNorm2D(hidden, grid)
        if kind == "mlp":
            self.inner = MLP2D(hidden, 4 * hidden, grid)
        else:
            self.inner = SelfAttention2D(hidden, heads_for(hidden), grid)

    def _pair(self) -> tuple[nn.Module, nn.Module]:
        if isinstance(self.inner, MLP2D):
            return self.inner.linear_fc1, self.inner.linear_fc2
        return self.inner.linear_qkv, self.inner.linear_proj

    def load_full(self, weights: dict[str, torch.Tensor]) -> None:
        self.ln.load_full(weights["ln.weight"], weights["ln.bias"])
        first, second = self._pair()
        first.load_full(weights["first.weight"], weights["first.bias"])
        second.load_full(weights["second.weight"], weights["second.bias"])

    def layers(self) -> dict[str, nn.Module]:
        first, second = self._pair()
        return {"layernorm": self.ln, "first": first, "second": second}

    def forward(self, x):
        return x + self.inner(self.ln(x))


class Block1D(nn.Module):
    """Megatron-Core tensor parallelism over the 4 ranks."""

    def __init__(self, kind: str, hidden: int, tp_rank: int, tp: int):
        super().__init__()
        from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
        from megatron.core.transformer import TransformerConfig

        config = TransformerConfig(
            num_layers=1,
            hidden_size=hidden,
            num_attention_heads=heads_for(hidden),
            tensor_model_parallel_size=tp,
            use_cpu_initialization=True,
            gradient_accumulation_fusion=False,
        )
        init = nn.init.zeros_
        width = 4 * hidden if kind == "mlp" else 3 * hidden
        self.kind, self.tp_rank, self.tp = kind, tp_rank, tp
        self.local_heads, self.head_dim = heads_for(hidden) // tp, hidden // heads_for(hidden)
        self.ln = nn.LayerNorm(hidden)
        self.first = ColumnParallelLinear(
            hidden, width, config=config, init_method=init, bias=True, gather_output=False
        )
        self.second = RowParallelLinear(
            4 * hidden if kind == "mlp" else hidden,
            hidden,
            config=config,
            init_method=init,
            bias=True,
            input_is_parallel=True,
            skip_bias_add=False,
        )

    @torch.no_grad()
    def load_full(self, weights: dict[str, torch.Tensor]) -> None:
        r, tp = self.tp_rank, self.tp
        self.ln.weight.copy_(weights["ln.weight"])
        self.ln.bias.copy_(weights["ln.bias"])
        self.first.weight.copy_(weights["first.weight"].chunk(tp, dim=0)[r])
        self.first.bias.copy_(weights["first.bias"].chunk(tp)[r])
        self.second.weight.copy_(weights["second.weight"].chunk(tp, dim=1)[r])
        self.second.bias.copy_(weights["second.bias"])

    def layers(self) -> dict[str, nn.Module]:
        return {"layernorm": self.ln, "first": self.first, "second": self.second}

    def forward(self, x):
        h, _ = self.first(self.ln(x))
        if self.kind == "mlp":
            h = F.gelu(h)
        else:
            b, s, _ = h.shape
            q, k, v = (t.transpose(1, 2) for t in h.view(b, s, self.local_heads, 3, self.head_dim).unbind(3))
            h = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            h = h.transpose(1, 2).reshape(b, s, -1)
        out, _ = self.second(h)
        return x + out


def full_weights(kind: str, hidden: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    width = 4 * hidden if kind == "mlp" else 3 * hidden
    inner = 4 * hidden if kind == "mlp" else hidden
    return {
        "ln.weight": 1 + 0.1 * torch.randn(hidden, generator=gen),
        "ln.bias": 0.1 * torch.randn(hidden, generator=gen),
        "first.weight": 0.02 * torch.randn(width, hidden, generator=gen),
        "first.bias": 0.02 * torch.randn(width, generator=gen),
        "second.weight": 0.02 * torch.randn(hidden, inner, generator=gen),
        "second.bias": 0.02 * torch.randn(hidden, generator=gen),
    }


# --- measurement ----------------------------------------------------------------------------


def measure(module: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> dict:
    ledger = CommLedger()
    handles = ledger.track(module.layers())
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    saved: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    x = x.detach().requires_grad_(True)
    with ledger.counting(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = module(x)
        out.backward(grad)
    for h in handles:
        h.remove()
    per_layer = {
        name: {"forward": v["forward"], "backward": v["backward"], "calls": v["calls"]}
        for name, v in ledger.by_scope().items()
    }
    return {
        "out": out.detach(),
        "forward_bytes": ledger.sent("forward"),
        "backward_bytes": ledger.sent("backward"),
        "calls": len(ledger.records),
        "per_layer": per_layer,
        "weight_bytes": sum(p.numel() * p.element_size() for p in module.parameters()),
        "activation_bytes": sum(saved.values()) + out.numel() * out.element_size(),
    }


# --- closed form (fp32 bytes per device), checked against the counted bytes at q = 2 -----------


def _linear_2d(tokens: int, fan_in: int, fan_out: int, q: int) -> tuple[float, float]:
    """SUMMA forward: q broadcasts of x blocks (row) and of W blocks (column), bias all-gather;
    backward: dX = dY·Wᵀ (W broadcasts + dX reduces) and dW = Xᵀ·dY (x broadcasts + dW reduces),
    bias reduce-scatter."""
    matmul = (q - 1) * (tokens * fan_in + fan_in * fan_out) / q**2 * 4
    bias = (q - 1) * fan_out / q**2 * 4
    return matmul + bias, 2 * matmul + bias


def _layernorm_2d(tokens: int, hidden: int, q: int) -> tuple[float, float]:
    """Forward: all-reduces of the row sums and squared deviations, all-gathers of gain and bias;
    backward: one all-reduce of two row sums, reduce-scatters of the two gradients."""
    vectors = 2 * (q - 1) * hidden / q**2 * 4
    return 2 * 2 * (q - 1) / q * tokens / q * 4 + vectors, 2 * (q - 1) / q * 2 * tokens / q * 4 + vectors


def closed_form(kind: str, hidden: int, tokens: int, q: int) -> dict[str, float]:
    """Bytes per device, forward and backward, of one block: 2D on a q×q grid and 1D on q² devices
    (Megatron: one all-reduce of [tokens, hidden] forward, one backward)."""
    width, inner = (4 * hidden, 4 * hidden) if kind == "mlp" else (3 * hidden, hidden)
    parts = [
        _layernorm_2d(tokens, hidden, q),
        _linear_2d(tokens, hidden, width, q),
        _linear_2d(tokens, inner, hidden, q),
    ]
    p = q * q
    one_d = 2 * (p - 1) / p * tokens * hidden * 4
    return {
        "2d_forward": sum(f for f, _ in parts),
        "2d_backward": sum(b for _, b in parts),
        "1d_forward": one_d,
        "1d_backward": one_d,
    }


def mib(n: float) -> str:
    return f"{n / 2**20:8.2f}"


def main() -> None:
    args = parse_args()
    init_process_group(ClusterConfig(name="local_cpu"), LaunchEnv.from_environ())
    world = dist.get_world_size()
    if world != 4:
        raise SystemExit(f"run with 4 processes (a 2×2 grid vs tp 4), got {world}")
    init_model_parallel(Layout(4, 4, 1, 1, 1, 1, 1))
    from megatron.core import parallel_state

    grid = build_grid_from_megatron()
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    rank0 = dist.get_rank() == 0
    rows = []
    for hidden in args.hidden:
        for kind in ("mlp", "attention"):
            weights = full_weights(kind, hidden, seed=hidden)
            gen = torch.Generator().manual_seed(1)
            x = torch.randn(args.batch, args.seq, hidden, generator=gen)
            g = torch.randn(args.batch, args.seq, hidden, generator=gen)
            two = Block2D(kind, hidden, grid)
            two.load_full(weights)
            one = Block1D(kind, hidden, tp_rank, 4)
            one.load_full(weights)
            r2 = measure(two, block(x, grid), block(g, grid))
            r1 = measure(one, x, g)
            err = torch.tensor(float((r2.pop("out") - block(r1.pop("out"), grid)).abs().max()))
            dist.all_reduce(err, op=dist.ReduceOp.MAX)
            tokens = args.batch * args.seq
            model = closed_form(kind, hidden, tokens, grid.q)
            counted = (r2["forward_bytes"], r2["backward_bytes"], r1["forward_bytes"], r1["backward_bytes"])
            predicted = (model["2d_forward"], model["2d_backward"], model["1d_forward"], model["1d_backward"])
            if any(abs(c - m) > 1e-6 * m for c, m in zip(counted, predicted, strict=True)):
                raise RuntimeError(f"{kind} {hidden}: counted {counted} != closed form {predicted}")
            at16 = closed_form(kind, hidden, tokens, 4)
            rows.append(
                {
                    "hidden": hidden,
                    "kind": kind,
                    "2d": r2,
                    "1d": r1,
                    "max_abs_diff": float(err),
                    "ratio_16_devices": (at16["2d_forward"] + at16["2d_backward"])
                    / (at16["1d_forward"] + at16["1d_backward"]),
                }
            )
    if rank0:
        report(args, rows)
    teardown()


def report(args, rows) -> None:
    tokens = args.batch * args.seq
    print(
        f"# 2D (2×2 grid) vs 1D Megatron TP4, 4 devices, micro-batch {args.batch} × seq {args.seq} = "
        f"{tokens} tokens, fp32\n# torch {torch.__version__}, {os.cpu_count()} CPU cores, gloo. "
        "Bytes are per device per forward/backward, counted from the collectives issued."
    )
    header = (
        f"{'block':>9} {'hidden':>6} | {'fwd MiB 1D':>10} {'2D':>8} | {'bwd MiB 1D':>10} {'2D':>8} | "
        f"{'total 2D/1D':>11} {'@16*':>5} | {'act MiB 1D':>10} {'2D':>8} | {'wgt MiB 1D':>10} {'2D':>8} | {'calls 1D':>8} {'2D':>4} | "
        f"{'max|Δout|':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        a, b = r["1d"], r["2d"]
        total1, total2 = a["forward_bytes"] + a["backward_bytes"], b["forward_bytes"] + b["backward_bytes"]
        print(
            f"{r['kind']:>9} {r['hidden']:>6} | {mib(a['forward_bytes']):>10} {mib(b['forward_bytes'])} | "
            f"{mib(a['backward_bytes']):>10} {mib(b['backward_bytes'])} | {total2 / total1:>11.3f} "
            f"{r['ratio_16_devices']:>5.2f} | "
            f"{mib(a['activation_bytes']):>10} {mib(b['activation_bytes'])} | "
            f"{mib(a['weight_bytes']):>10} {mib(b['weight_bytes'])} | {a['calls']:>8} {b['calls']:>4} | "
            f"{r['max_abs_diff']:>9.1e}"
        )
    print(
        "* @16: the same ratio on 16 devices (4×4 grid vs TP16), closed form; at 4 devices the closed form "
        "equals the counted bytes (checked for every row)."
    )
    last = rows[-2:]
    for r in last:
        print(f"\nper layer, {r['kind']} hidden {r['hidden']} (MiB per device, forward / backward):")
        for layout in ("1d", "2d"):
            parts = ", ".join(
                f"{name or 'other'} {mib(v['forward']).strip()}/{mib(v['backward']).strip()}"
                for name, v in sorted(r[layout]["per_layer"].items())
            )
            print(f"  {layout}: {parts}")
    if args.out:
        args.out.write_text(
            json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1)
        )


if __name__ == "__main__":
    main()
