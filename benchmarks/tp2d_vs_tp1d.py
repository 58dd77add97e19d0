"""2D (Optimus/SUMMA, 2×2 grid) vs 1D (Megatron-Core column/row parallel) tensor parallelism on 4
devices: bytes communicated per device and per-device activation/weight memory, counted from what
each layout really issues and holds, side by side with the layout planner's predictions
(integration/planner: tensor_comm.py for the collectives, memory.py / tp2d.py for the memory).

    OMP_NUM_THREADS=1 torchrun --nproc_per_node 4 benchmarks/tp2d_vs_tp1d.py
    OMP_NUM_THREADS=1 torchrun --nproc_per_node 4 benchmarks/tp2d_vs_tp1d.py --hidden 512 2048 --batch 8 --seq 512

Three kinds of rows, each built twice from the same full weights and input (the outputs are compared):

- mlp:       x + fc2(gelu(fc1(ln(x)))), ffn = 4·hidden
- attention: x + proj(causal_attention(qkv(ln(x)))), head_dim 64 (at least 4 heads)
- layer:     the project's own GPT transformer layer: Megatron-Core's TransformerLayer from the model's
             layer spec (integration.model.build_gpt, tensor parallel 4) and TransformerLayer2D
             (integration.tp2d.gpt.build_gpt2d), gpt_tiny resized to the hidden size, fp32

For mlp/attention, 1D is Megatron-Core's ColumnParallelLinear (fc1, qkv) + RowParallelLinear (fc2,
proj) at tensor parallel 4 with a replicated LayerNorm and replicated activations (no sequence
parallelism); 2D is `integration.tp2d` on a 2×2 grid. Communication is counted from the collectives
each issues (`integration.tp2d.comm.CommLedger` wraps torch.distributed), per device, with the
bandwidth-optimal cost of each collective (all-reduce 2(p-1)/p·n, others (p-1)/p·n), and must equal
the planner's call-by-call lists (the script stops otherwise). Memory per device: weights = the
rank's parameters; activations = the tensors autograd saves for backward (parameters excluded, shared
storage counted once; mlp/attention rows add the block's output, layer rows do not, as the planner's
per-layer count). Last, the planner's view at 16 and 64 H100s (arithmetic only).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.filterwarnings("ignore")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from torch import nn  # noqa: E402

from integration.config import TrainConfig, register_schemas, to_typed  # noqa: E402
from integration.config.schema import ClusterConfig  # noqa: E402
from integration.distributed import (  # noqa: E402
    LaunchEnv,
    init_model_parallel,
    init_process_group,
    seed_everything,
    teardown,
)
from integration.launcher_args import strip_launcher_args  # noqa: E402
from integration.layout import Layout  # noqa: E402
from integration.model import build_gpt  # noqa: E402
from integration.plan import model_vocab_size  # noqa: E402
from integration.planner import PlannerSettings, plan_layouts  # noqa: E402
from integration.planner.memory import ActivationShape, layer_activation_bytes, stage_parameters  # noqa: E402
from integration.planner.tensor_comm import (  # noqa: E402
    calls,
    megatron_layer,
    megatron_pair,
    seconds,
    sent_bytes,
    summa_layer,
    summa_layernorm,
    summa_linear,
    tensor_parallel_collectives,
)
from integration.planner.timing import tensor_parallel_links  # noqa: E402
from integration.planner.tp2d import layer_activation_bytes_2d, parameters_2d  # noqa: E402
from integration.tp2d import CommLedger, LayerNorm2D, block, build_grid_from_megatron  # noqa: E402
from integration.tp2d.blocks import MLP2D, SelfAttention2D  # noqa: E402
from integration.tp2d.gpt import build_gpt2d  # noqa: E402

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


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
    parser.add_argument("--no-planner-view", action="store_true", help="skip the 16/64-device planner lines")
    parser.add_argument(
        "--view-global-batch", type=int, default=512, help="global batch of the full planner runs (sequences)"
    )
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


def measure(module: nn.Module, x: torch.Tensor, grad: torch.Tensor, with_output: bool = True) -> dict:
    """Collectives and memory of one forward and backward. `with_output`: count the output among
    the activations (a block's output is the next block's input; a layer's is left out, as the
    planner's per-layer count leaves it to the next layer)."""
    ledger = CommLedger()
    handles = ledger.track(module.layers()) if hasattr(module, "layers") else []
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
        out = out[0] if isinstance(out, tuple) else out  # Megatron's layer: (output, context)
        out.backward(grad)
    for h in handles:
        h.remove()
    per_layer = {
        name: {"forward": v["forward"], "backward": v["backward"], "calls": v["calls"]}
        for name, v in ledger.by_scope().items()
    }
    output = out.numel() * out.element_size() if with_output else 0
    return {
        "out": out.detach(),
        "forward_bytes": ledger.sent("forward"),
        "backward_bytes": ledger.sent("backward"),
        "calls": len(ledger.records),
        "per_layer": per_layer,
        "weight_bytes": sum(p.numel() * p.element_size() for p in module.parameters()),
        "activation_bytes": sum(saved.values()) + output,
    }


# --- the planner's predictions ----------------------------------------------------------------

FP32 = 4


def planned_block(kind: str, hidden: int, tokens: int, q: int) -> dict[str, list]:
    """The planner's collectives for one mlp/attention block (the pieces of its per-layer lists):
    2D on a q×q grid, 1D on q² devices."""
    width, inner = (4 * hidden, 4 * hidden) if kind == "mlp" else (3 * hidden, hidden)
    return {
        "2d": summa_layernorm(tokens, hidden, q, FP32)
        + summa_linear(tokens, hidden, width, q, FP32, True)
        + summa_linear(tokens, inner, hidden, q, FP32, True),
        "1d": megatron_pair(tokens, hidden, q * q, FP32),
    }


def compose_typed(overrides: list[str]) -> TrainConfig:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return to_typed(compose(config_name="train", overrides=overrides))


def layer_config(hidden: int, batch: int, seq: int) -> TrainConfig:
    """gpt_tiny resized: one layer of the given width, head_dim 64, 4h MLP, fp32, stability off."""
    return compose_typed(
        [
            "model=gpt_tiny",
            "model.num_layers=1",
            f"model.hidden_size={hidden}",
            f"model.num_attention_heads={heads_for(hidden)}",
            f"model.ffn_hidden_size={4 * hidden}",
            f"model.seq_length={seq}",
            "precision=fp32",
            "stability=off",
            "parallel=tp2d_2x2",
            f"parallel.micro_batch_size={batch}",
            f"parallel.global_batch_size={batch}",
        ]
    )


def planned_layer(config: TrainConfig, vocab: int, tokens: int) -> dict[str, dict]:
    """The planner's bytes, calls, activations and weights of transformer layer 0, per device."""
    model, batch = config.model, config.parallel.micro_batch_size

    def weights(tensors) -> int:
        return FP32 * sum(t.numel for t in tensors if t.name.startswith("decoder.layers.0."))

    one = megatron_layer(model, tokens, 4, "fp32", False, "none")
    two = summa_layer(model, tokens, 2, "fp32")
    # CPU attention is torch SDPA's flash kernel: it keeps the log-sum-exp, not the scores.
    return {
        "1d": {
            "bytes": sent_bytes(one),
            "calls": calls(one),
            "activation_bytes": layer_activation_bytes(
                model, ActivationShape(batch, 4, False, "none", True, "fp32")
            ),
            "weight_bytes": weights(stage_parameters(model, vocab, 4, 1, 0)),
        },
        "2d": {
            "bytes": sent_bytes(two),
            "calls": calls(two),
            "activation_bytes": layer_activation_bytes_2d(model, batch, 2, True, "fp32"),
            "weight_bytes": weights(parameters_2d(model, vocab, 2)),
        },
    }


def mib(n: float) -> str:
    return f"{n / 2**20:8.2f}"


def check_equal(what: str, counted: float, planned: float) -> None:
    if abs(counted - planned) > 1e-9 * max(1.0, planned):
        raise RuntimeError(f"{what}: counted {counted} != planned {planned}")


def block_rows(args, grid, tp_rank: int) -> list[dict]:
    rows = []
    tokens = args.batch * args.seq
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
            planned = planned_block(kind, hidden, tokens, grid.q)
            for name, r in (("1d", r1), ("2d", r2)):
                for phase in ("forward", "backward"):
                    check_equal(
                        f"{kind} {hidden} {name} {phase}",
                        r[f"{phase}_bytes"],
                        sent_bytes(planned[name], phase),
                    )
                check_equal(f"{kind} {hidden} {name} calls", r["calls"], calls(planned[name]))
            at16 = planned_block(kind, hidden, tokens, 4)
            rows.append(
                {
                    "hidden": hidden,
                    "kind": kind,
                    "2d": r2,
                    "1d": r1,
                    "planned_bytes": {name: sent_bytes(c) for name, c in planned.items()},
                    "max_abs_diff": float(err),
                    "ratio_16_devices": sent_bytes(at16["2d"]) / sent_bytes(at16["1d"]),
                }
            )
    return rows


def layer_rows(args, grid) -> list[dict]:
    rows = []
    for hidden in args.hidden:
        config = layer_config(hidden, args.batch, args.seq)
        model = config.model
        vocab = model_vocab_size(model, config.data.tokenizer, config.data.vocab_size)
        seed_everything(config.trainer.seed)
        one = build_gpt(model, config.parallel, "fp32", vocab, config.trainer.seed).decoder.layers[0]
        two = build_gpt2d(model, config.parallel, "fp32", vocab, config.trainer.seed).decoder.layers[0]
        gen = torch.Generator().manual_seed(2)
        x = torch.randn(args.seq, args.batch, hidden, generator=gen)  # Megatron's [s, b, h]
        g = torch.randn(args.seq, args.batch, hidden, generator=gen)
        r1 = measure(one, x, g, with_output=False)
        r2 = measure(two, block(x.transpose(0, 1), grid), block(g.transpose(0, 1), grid), with_output=False)
        err = torch.tensor(float((r2.pop("out") - block(r1.pop("out").transpose(0, 1), grid)).abs().max()))
        dist.all_reduce(err, op=dist.ReduceOp.MAX)
        planned = planned_layer(config, vocab, args.batch * args.seq)
        for name, r in (("1d", r1), ("2d", r2)):
            check_equal(
                f"layer {hidden} {name}", r["forward_bytes"] + r["backward_bytes"], planned[name]["bytes"]
            )
            check_equal(f"layer {hidden} {name} calls", r["calls"], planned[name]["calls"])
        rows.append({"hidden": hidden, "1d": r1, "2d": r2, "planned": planned, "max_abs_diff": float(err)})
    return rows


# --- the planner's view at 16 and 64 devices ---------------------------------------------------

VIEW_MODELS = {
    "gpt_1p3b": ["model=gpt_1p3b"],
    "39B (h8192)": [
        "model=gpt_1p3b",
        "model.hidden_size=8192",
        "model.num_attention_heads=64",
        "model.num_layers=48",
    ],
}


def planner_view(global_batch: int) -> list[str]:
    """Per micro-batch tensor-parallel time of 2D over 1D at the same tp (the whole planner's
    collective lists, default stability preset, bf16), on H100 nodes of 8 (cluster=h100_8x4 with 1,
    2 or 8 nodes); then the full planner's best 1D and best 2D layout at 16 and 64 devices."""
    lines = [
        "planner's view, H100 nodes of 8 (NVLink 450 GB/s per GPU, 3.2 Tb/s per node), bf16: tensor-parallel "
        "time per micro-batch, 2D / 1D at the same tp (the tensor group on 1, 2 or 8 nodes):",
        f"  {'model':<15} {'tp':>3} {'nodes':>5}  "
        + "  ".join(f"{'mbs=' + m:>8}" for m in ("q", "4q", "16q")),
    ]
    for label, overrides in VIEW_MODELS.items():
        config = compose_typed([*overrides, "cluster=h100_8x4"])
        model = config.model
        vocab = model_vocab_size(model, config.data.tokenizer, config.data.vocab_size)
        for tp, nodes in ((4, 1), (16, 2), (64, 8)):
            q = math.isqrt(tp)
            cluster = dataclasses.replace(config.cluster, num_nodes=nodes)
            ratios = []
            for mbs in (q, 4 * q, 16 * q):
                per_micro = {}
                for two_d in (False, True):
                    layout = Layout(tp, tp, 1, 1, mbs, mbs, 1)
                    links = tensor_parallel_links(layout.tensor_groups(), two_d, cluster)
                    layer, first, last = tensor_parallel_collectives(
                        model, vocab, mbs * model.seq_length, tp, "bf16", tensor_parallel_2d=two_d
                    )
                    per_micro[two_d] = model.num_layers * seconds(layer, links) + seconds(first + last, links)
                ratios.append(per_micro[True] / per_micro[False])
            valid = (
                ""
                if model.num_attention_heads % tp == 0
                else "  (heads do not split over tp: not a valid layout)"
            )
            lines.append(
                f"  {label:<15} {tp:>3} {nodes:>5}  " + "  ".join(f"{r:>8.2f}" for r in ratios) + valid
            )
    lines.append(
        "  39B (h8192): gpt_1p3b resized to hidden 8192, 64 heads, 48 layers; mbs in sequences of 2048"
    )
    for nodes in (2, 8):
        config = compose_typed(
            [
                "model=gpt_1p3b",
                "cluster=h100_8x4",
                f"cluster.num_nodes={nodes}",
                f"parallel.global_batch_size={global_batch}",
            ]
        )
        fitting = [p for p in plan_layouts(config, PlannerSettings()) if p.fits]
        best = {}
        for rank, plan in enumerate(fitting, start=1):
            best.setdefault(plan.candidate.tensor_parallel_2d, (rank, plan))
        parts = []
        for two_d in (False, True):
            if two_d in best:
                rank, plan = best[two_d]
                parts.append(
                    f"best {'2D' if two_d else '1D'} #{rank} {plan.candidate.describe()} {plan.tokens_per_s:,.0f} tokens/s"
                )
        lines.append(
            f"  full planner, gpt_1p3b on {nodes * 8} GPUs, global batch {global_batch} × 2048: "
            + "; ".join(parts)
        )
    return lines


def main() -> None:
    args = parse_args()
    register_schemas()
    init_process_group(ClusterConfig(name="local_cpu"), LaunchEnv.from_environ())
    world = dist.get_world_size()
    if world != 4:
        raise SystemExit(f"run with 4 processes (a 2×2 grid vs tp 4), got {world}")
    init_model_parallel(Layout(4, 4, 1, 1, 1, 1, 1))
    from megatron.core import parallel_state

    grid = build_grid_from_megatron()
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    rank0 = dist.get_rank() == 0
    blocks = block_rows(args, grid, tp_rank)
    layers = layer_rows(args, grid)
    teardown()
    if rank0:
        view = [] if args.no_planner_view else planner_view(args.view_global_batch)
        report(args, blocks, layers, view)


def report(args, rows, layers, view) -> None:
    tokens = args.batch * args.seq
    print(
        f"# 2D (2×2 grid) vs 1D Megatron TP4, 4 devices, micro-batch {args.batch} × seq {args.seq} = "
        f"{tokens} tokens, fp32\n# torch {torch.__version__}, {os.cpu_count()} CPU cores, gloo. "
        "Bytes are per device per forward+backward, counted from the collectives issued; 'plan' is the "
        "planner's prediction (equal to the count, checked call by call for every row)."
    )
    header = (
        f"{'block':>9} {'hidden':>6} | {'MiB 1D':>8} {'plan':>8} | {'MiB 2D':>8} {'plan':>8} | "
        f"{'2D/1D':>5} {'@16*':>5} | {'act MiB 1D':>10} {'2D':>8} | {'wgt MiB 1D':>10} {'2D':>8} | "
        f"{'calls 1D':>8} {'2D':>4} | {'max|Δout|':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        a, b = r["1d"], r["2d"]
        total1, total2 = a["forward_bytes"] + a["backward_bytes"], b["forward_bytes"] + b["backward_bytes"]
        print(
            f"{r['kind']:>9} {r['hidden']:>6} | {mib(total1)} {mib(r['planned_bytes']['1d'])} | "
            f"{mib(total2)} {mib(r['planned_bytes']['2d'])} | {total2 / total1:>5.2f} "
            f"{r['ratio_16_devices']:>5.2f} | "
            f"{mib(a['activation_bytes']):>10} {mib(b['activation_bytes'])} | "
            f"{mib(a['weight_bytes']):>10} {mib(b['weight_bytes'])} | {a['calls']:>8} {b['calls']:>4} | "
            f"{r['max_abs_diff']:>9.1e}"
        )
    print("* @16: the planner's ratio on 16 devices (4×4 grid vs TP16).")
    print(
        "\nfull transformer layer (the project's GPT layer, one micro-batch), per device: measured | planner"
    )
    header = (
        f"{'hidden':>6} | {'MiB 1D':>7} {'plan':>7} {'2D':>7} {'plan':>7} | {'calls 1D':>8} {'2D':>4} | "
        f"{'act MiB 1D':>10} {'plan':>7} {'2D':>7} {'plan':>7} | {'wgt MiB 1D':>10} {'plan':>7} {'2D':>7} "
        f"{'plan':>7} | {'max|Δout|':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in layers:
        a, b, p = r["1d"], r["2d"], r["planned"]

        def m(n: float) -> str:
            return f"{n / 2**20:7.2f}"

        print(
            f"{r['hidden']:>6} | {m(a['forward_bytes'] + a['backward_bytes'])} {m(p['1d']['bytes'])} "
            f"{m(b['forward_bytes'] + b['backward_bytes'])} {m(p['2d']['bytes'])} | {a['calls']:>8} "
            f"{b['calls']:>4} | {m(a['activation_bytes']):>10} {m(p['1d']['activation_bytes'])} "
            f"{m(b['activation_bytes'])} {m(p['2d']['activation_bytes'])} | {m(a['weight_bytes']):>10} "
            f"{m(p['1d']['weight_bytes'])} {m(b['weight_bytes'])} {m(p['2d']['weight_bytes'])} | "
            f"{r['max_abs_diff']:>9.1e}"
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
    if view:
        print()
        print("\n".join(view))
    if args.out:
        for r in layers:
            for layout in ("1d", "2d"):
                r[layout].pop("per_layer", None)
        args.out.write_text(
            json.dumps(
                {"args": {k: str(v) for k, v in vars(args).items()}, "blocks": rows, "layers": layers},
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
