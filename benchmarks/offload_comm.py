"""ZeRO communication options and ZeRO-Offload, measured side by side in one launch.

    OMP_NUM_THREADS=1 deepspeed --num_gpus 4 benchmarks/offload_comm.py
    OMP_NUM_THREADS=1 deepspeed --num_gpus 4 benchmarks/offload_comm.py --steps 3 --out r.json model.num_layers=8

Every case is a real DeepSpeed engine built from the generated config (`build_training_runner`,
the path `launch/train.py` takes) over the same Megatron-Core GPT (gpt_tiny resized to hidden 256,
3.3 M parameters), pure data parallelism over all processes, one micro-batch per rank per step
(gradient accumulation 1, so a step is one forward and one backward), fp32 unless the case says
otherwise, stability hooks off. Cases run one after the other in the same processes; each first
trains one untimed step, then `--steps` measured ones.

1. Communication: every collective DeepSpeed issues is counted at its communication backend
   (`deepspeed.comm`'s `cdb`, below ZeRO and above torch.distributed), with its group size p and
   payload n (the reduced or gathered tensor), and priced as bytes sent per rank under the
   bandwidth-optimal algorithms: all-reduce 2(p-1)/p·n, the others (p-1)/p·n. Next to it, the ZeRO
   paper's volume per rank (Rajbhandari et al. 2020, sec. 7): 2Ψ for ZeRO 1/2 (reduce-scatter the
   gradients, all-gather the parameters), 3Ψ for ZeRO 3 (a parameter all-gather in forward and in
   backward, a gradient reduce-scatter), in elements of Ψ parameters at the model's bytes per
   element, and that volume's ring share ×(p-1)/p, which is what a bandwidth-optimal run sends.
   ZeRO++'s quantized weights/gradients need CUDA; on CPU their rows show the refusal.
2. Offload: per offload option, the memory the case added — peak allocated device memory on a GPU
   (torch.cuda.max_memory_allocated, reset before the case), resident memory growth of the process
   on CPU (where the "device" is host memory, so offload cannot lower it: the number shows what it
   costs) — next to the layout planner's per-rank prediction of model-state bytes on the device and
   in host memory (integration.planner.memory.model_states) for the same model and layout.
3. Fit: the largest gpt_* preset that the planner fits on one GPU of a given memory, without and
   with offload (integration.planner.plan_layouts on cluster=one_a100_40g with its memory
   overridden). Measured only where a GPU of that size is available.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from integration.launcher_args import strip_launcher_args  # noqa: E402

strip_launcher_args(sys.argv)
for _note in (
    "Transformer Engine and Apex are not installed",
    "Apex is not installed",
    "full scope is deprecated",
    "`torch.distributed.all_gather_into_tensor` is deprecated",
):
    warnings.filterwarnings("ignore", message=_note)

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from benchmarks.overhead import hardware, load_average  # noqa: E402
from integration.config import TrainConfig, register_schemas, to_typed  # noqa: E402
from integration.distributed import (  # noqa: E402
    LaunchEnv,
    init_model_parallel,
    init_process_group,
    seed_everything,
    teardown,
)
from integration.errors import ConfigError  # noqa: E402
from integration.model_size import parameter_count  # noqa: E402
from integration.offload import check_offload_environment  # noqa: E402
from integration.plan import model_vocab_size  # noqa: E402
from integration.planner import PlannerSettings, plan_layouts  # noqa: E402
from integration.planner.memory import GIB, model_states, stage_parameters  # noqa: E402
from integration.steps import build_training_runner  # noqa: E402
from integration.validate import validate  # noqa: E402

CONF_DIR = str(PROJECT_ROOT / "conf")
MODEL_OVERRIDES = [
    "model=gpt_tiny",
    "model.hidden_size=256",
    "model.ffn_hidden_size=1024",
    "model.num_layers=4",
]
MiB = 2**20

# (name, overrides): the communication cases, then the offload cases.
PAPER_Z3 = [  # every tensor partitioned and re-gathered for backward: the ZeRO paper's ZeRO-3
    "parallel.zero_stage=3",
    "comm.stage3_param_persistence_threshold=0",
    "comm.stage3_max_reuse_distance=0",
    "comm.stage3_max_live_parameters=0",
]
COMM_CASES = [
    ("z1", ["parallel.zero_stage=1"]),
    ("z1 comm=overlap", ["parallel.zero_stage=1", "comm=overlap"]),
    ("z1 multi_rank_ar=false", ["parallel.zero_stage=1", "comm.use_multi_rank_bucket_allreduce=false"]),
    ("z2", ["parallel.zero_stage=2"]),
    ("z2 comm=overlap", ["parallel.zero_stage=2", "comm=overlap"]),
    ("z2 multi_rank_ar=false", ["parallel.zero_stage=2", "comm.use_multi_rank_bucket_allreduce=false"]),
    ("z2 reduce_scatter=false", ["parallel.zero_stage=2", "comm.reduce_scatter=false"]),
    ("z2 bf16 reduction", ["parallel.zero_stage=2", "comm.communication_data_type=bf16"]),
    ("z2 precision=bf16", ["parallel.zero_stage=2", "precision=bf16"]),
    ("z3", ["parallel.zero_stage=3"]),
    ("z3 no overlap", ["parallel.zero_stage=3", "comm.overlap_comm=false"]),
    ("z3 paper (re-gather)", PAPER_Z3),
    ("z3 paper + hpZ=2", [*PAPER_Z3, "comm.zero_hpz_partition_size=2"]),
    ("z3 paper + qwZ", [*PAPER_Z3, "comm.zero_quantized_weights=true"]),
    ("z3 paper + qgZ", [*PAPER_Z3, "comm.zero_quantized_gradients=true"]),
]
OFFLOAD_CASES = [
    ("z1 offload=none", ["parallel.zero_stage=1"]),
    ("z1 offload=optimizer_cpu", ["parallel.zero_stage=1", "offload=optimizer_cpu"]),
    ("z2 offload=none", ["parallel.zero_stage=2"]),
    ("z2 offload=optimizer_cpu", ["parallel.zero_stage=2", "offload=optimizer_cpu"]),
    ("z3 offload=none", ["parallel.zero_stage=3"]),
    ("z3 offload=optimizer_cpu", ["parallel.zero_stage=3", "offload=optimizer_cpu"]),
    ("z3 offload=params_cpu", ["parallel.zero_stage=3", "offload=params_cpu"]),
]
FIT_MEMORY_GIB = [8, 12, 16, 24, 40]
GPT_PRESETS = ["gpt_tiny", "gpt_125m", "gpt_350m", "gpt_1p3b"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=3, help="measured steps per case (default 3)")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    parser.add_argument(
        "--sections", nargs="+", choices=("comm", "offload", "fit"), default=["comm", "offload", "fit"]
    )
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every case")
    return parser.parse_args()


# ---------------------------------------------------------------------------- counting collectives


def _nbytes(value) -> int:
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    return value.numel() * value.element_size()


# DeepSpeed backend method -> (k in k·(p-1)/p·n, its parameters in order, the one holding n).
# (deepspeed/comm/torch.py TorchBackend; its decorators hide the signatures from inspect.)
_BACKEND_COLLECTIVES = {
    "all_reduce": (2, ("tensor", "op", "group", "async_op"), "tensor"),
    "inference_all_reduce": (2, ("tensor", "op", "group"), "tensor"),
    "all_reduce_coalesced": (2, ("tensors", "op", "group", "async_op"), "tensors"),
    "reduce": (1, ("tensor", "dst", "op", "group", "async_op"), "tensor"),
    "broadcast": (1, ("tensor", "src", "group", "async_op"), "tensor"),
    "reduce_scatter_tensor": (
        1,
        ("output_tensor", "input_tensor", "op", "group", "async_op"),
        "input_tensor",
    ),
    "reduce_scatter": (1, ("output", "input_list", "op", "group", "async_op"), "input_list"),
    "all_gather_into_tensor": (1, ("output_tensor", "input_tensor", "group", "async_op"), "output_tensor"),
    "all_gather": (1, ("tensor_list", "tensor", "group", "async_op"), "tensor_list"),
    "all_gather_coalesced": (1, ("output_tensors", "input_tensors", "group", "async_op"), "output_tensors"),
    "all_to_all_single": (
        1,
        ("output", "input", "output_split_sizes", "input_split_sizes", "group", "async_op"),
        "input",
    ),
}


@dataclass
class CollectiveCounter:
    """Wraps the methods of DeepSpeed's communication backend object (`deepspeed.comm.comm.cdb`):
    every deepspeed.comm call ZeRO makes reaches one of them exactly once."""

    counting: bool = False
    sent: dict[str, float] = field(default_factory=dict)
    """op@group size -> bytes sent by this rank."""
    calls: dict[str, int] = field(default_factory=dict)

    def install(self) -> None:
        import deepspeed.comm.comm as ds_comm

        backend = ds_comm.cdb
        for name, (factor, parameters, payload_name) in _BACKEND_COLLECTIVES.items():
            method = getattr(backend, name, None)
            if method is not None:
                setattr(backend, name, self._wrap(backend, name, method, factor, parameters, payload_name))

    def _wrap(self, backend, name, method, factor, parameters, payload_name):
        def counted(*args, **kwargs):
            if self.counting:
                arguments = {**dict(zip(parameters, args, strict=False)), **kwargs}
                payload = _nbytes(arguments[payload_name])
                p = backend.get_world_size(arguments.get("group"))
                key = f"{name}@{p}"
                self.sent[key] = self.sent.get(key, 0.0) + factor * (p - 1) / p * payload
                self.calls[key] = self.calls.get(key, 0) + 1
            return method(*args, **kwargs)

        return counted

    def reset(self) -> None:
        self.sent.clear()
        self.calls.clear()


# ------------------------------------------------------------------------------------------ cases


def compose_case(overrides: list[str]) -> TrainConfig:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return to_typed(compose("train", overrides=overrides))


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)


def model_state_bytes(engine) -> dict[str, dict[str, int]]:
    """{category: {device type: bytes}} of the model states DeepSpeed holds on this rank (the
    categories of tests/distributed/scripts/planner_memory_probe.py, split by device):
    parameters (model, ZeRO-3 partitions, flat 16-bit groups), gradients (the model's, ZeRO's
    partitions and buffers, the master weights' .grad under offload), fp32 master partitions, Adam
    moments. Distinct storages, each counted once in the first category reaching it (padding
    included; a view into a flat buffer counts the buffer)."""
    opt, model = engine.optimizer, engine.module
    params = list(model.parameters())
    masters = list(getattr(opt, "single_partition_of_fp32_groups", []))
    masters += list(getattr(opt, "fp32_partitioned_groups_flat", []))
    masters += [t for group in getattr(opt, "fp32_groups", []) for t in group]
    inner = getattr(opt, "optimizer", opt)
    categories = {
        "parameters": [p.data for p in params]
        + [getattr(p, "ds_tensor", None) for p in params]
        + list(getattr(opt, "bit16_groups_flat", []))
        + list(getattr(opt, "fp16_partitioned_groups_flat", [])),
        "master": masters,
        "optimizer": [
            v for st in inner.state.values() for k, v in st.items() if k in ("exp_avg", "exp_avg_sq")
        ],
        "gradients": [p.grad for p in params]
        + [m.grad for m in masters]
        + [getattr(opt, "grads_in_partition", None), getattr(opt, "grad_partitions_flat_buffer", None)]
        + list(_tensors(getattr(opt, "all_grad_tensors", None)))
        + list(_tensors(getattr(opt, "averaged_gradients", None))),
    }
    seen: set[int] = set()
    found: dict[str, dict[str, int]] = {}
    for category, tensors in categories.items():
        by_device = found.setdefault(category, {})
        for t in tensors:
            if t is None or t.numel() == 0:
                continue
            storage = t.untyped_storage()
            if storage.data_ptr() in seen:
                continue
            seen.add(storage.data_ptr())
            by_device[t.device.type] = by_device.get(t.device.type, 0) + storage.nbytes()
    return found


def run_case(config: TrainConfig, layout, device, steps: int, counter: CollectiveCounter) -> dict:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    seed_everything(config.trainer.seed)
    runner = build_training_runner(
        config.model,
        config.parallel,
        config.optim,
        config.precision,
        config.data,
        config.trainer,
        config.stability,
        layout,
        device,
        offload=config.offload,
        comm=config.comm,
    )
    runner.train_step(0, 0)  # untimed: ZeRO-3 traces its fetch order, CPU Adam allocates its state
    counter.reset()
    counter.counting = True
    times, losses, in_step, after_backward = [], [], [], []
    engine = runner.engine
    engine_step = engine.step

    def measured_step(*args, **kwargs):
        if engine.is_gradient_accumulation_boundary():
            after_backward.append(model_state_bytes(engine))
        return engine_step(*args, **kwargs)

    for step in range(1, steps + 1):
        if step == steps:  # the last step: states after its backward, and just before Adam runs
            engine.step = measured_step
            hook = engine.basic_optimizer.register_step_pre_hook(
                lambda *_: in_step.append(model_state_bytes(engine))
            )
        start = time.perf_counter()
        losses.append(runner.train_step(step, step).loss)
        times.append(time.perf_counter() - start)
    hook.remove()
    engine.step = engine_step
    counter.counting = False
    result = {
        "sent_per_step": {k: v / steps for k, v in counter.sent.items()},
        "calls_per_step": {k: v / steps for k, v in counter.calls.items()},
        "step_s": statistics.median(times),
        "losses": losses,
        "states_after_backward": after_backward[-1],
        "states_in_step": max(in_step, key=lambda b: sum(n for d in b.values() for n in d.values())),
        "optimizer": type(runner.engine.basic_optimizer).__name__,
    }
    if device.type == "cuda":
        result["peak_allocated"] = torch.cuda.max_memory_allocated(device)
    runner.engine.destroy()
    del runner
    gc.collect()
    return result


def planner_states(config: TrainConfig, dp: int, rank: int) -> dict[str, int]:
    vocab = model_vocab_size(config.model, config.data.tokenizer, config.data.vocab_size)
    offload = (
        "params"
        if config.offload.param.device != "none"
        else ("optimizer" if config.offload.optimizer.device != "none" else "none")
    )
    states = model_states(
        stage_parameters(config.model, vocab, 1, 1, 0),
        config.parallel.zero_stage,
        dp,
        config.precision.dtype,
        offload,
        dp_rank=rank,
    )
    return {"device": states.total, "host": states.host}


def largest_fitting(memory_gib: float) -> dict[str, str]:
    """Largest gpt_* preset with a fitting layout on one GPU of `memory_gib`, by offload policy."""
    best = {"none": "-", "offload": "-"}
    detail = {"none": "", "offload": ""}
    for preset in GPT_PRESETS:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            config = to_typed(
                compose(
                    "train",
                    overrides=[
                        f"model={preset}",
                        "cluster=one_a100_40g",
                        f"cluster.gpu_memory_gib={memory_gib}",
                    ],
                )
            )
        plans = plan_layouts(config, PlannerSettings(max_micro_batch_size=4))
        for policy, allowed in (("none", ("none",)), ("offload", ("none", "optimizer", "params"))):
            fitting = [p for p in plans if p.fits and p.candidate.offload in allowed]
            if fitting:
                top = fitting[0]
                best[policy] = preset
                detail[policy] = (
                    f"z{top.candidate.zero_stage} offload={top.candidate.offload} "
                    f"{top.memory_total / GIB:.1f} GiB"
                )
    return {
        "no offload": best["none"],
        "no offload layout": detail["none"],
        "with offload": best["offload"],
        "with offload layout": detail["offload"],
    }


# ----------------------------------------------------------------------------------------- report


def paper_volume(config: TrainConfig, params: int) -> float:
    """The ZeRO paper's per-rank volume: 2Ψ (ZeRO 1/2) or 3Ψ (ZeRO 3) elements, in bytes."""
    element = 2 if config.precision.dtype in ("bf16", "fp16") else 4
    return (3 if config.parallel.zero_stage == 3 else 2) * params * element


def fmt_ops(sent: dict[str, float]) -> str:
    return ", ".join(f"{k} {v / MiB:.2f}" for k, v in sorted(sent.items(), key=lambda kv: -kv[1]) if v > 0)


def main() -> None:
    args = parse_args()
    started = dt.datetime.now(dt.UTC)
    register_schemas()
    env = LaunchEnv.from_environ()
    cuda = torch.cuda.is_available()
    world = env.world_size
    device_overrides = ["cluster.device=cuda", "cluster.backend=nccl"] if cuda else []
    base = [
        *MODEL_OVERRIDES,
        "parallel=dp",
        "parallel.micro_batch_size=1",
        f"parallel.global_batch_size={world}",
        "precision=fp32",
        "stability=off",
        "wandb.mode=disabled",
        "trainer.eval_interval=0",
        f"trainer.max_steps={args.steps + 8}",
        "optim.warmup_steps=2",
        *device_overrides,
        *args.overrides,
    ]
    first = compose_case(base)
    layout = validate(first, world, cuda_available=cuda).layout
    init_process_group(first.cluster, env)
    init_model_parallel(layout)
    device = torch.device(f"cuda:{env.local_rank}" if cuda else "cpu")
    vocab = model_vocab_size(first.model, first.data.tokenizer, first.data.vocab_size)
    params = parameter_count(first.model, vocab)
    counter = CollectiveCounter()
    counter.install()
    rank = dist.get_rank()

    rows = []
    for section, cases in (("comm", COMM_CASES), ("offload", OFFLOAD_CASES)):
        if section not in args.sections:
            continue
        for name, overrides in cases:
            config = compose_case([*base, *overrides])
            row = {
                "section": section,
                "case": name,
                "overrides": overrides,
                "zero": config.parallel.zero_stage,
            }
            try:
                validate(config, world, cuda_available=cuda)
                check_offload_environment(config.offload, report=False)
            except ConfigError as err:
                row["refused"] = str(err).splitlines()[-1].removeprefix("  - ")
                rows.append(row)
                continue
            row.update(run_case(config, layout, device, args.steps, counter))
            row["paper"] = paper_volume(config, params)
            row["planner"] = planner_states(config, layout.data_parallel, layout.coordinates(rank)[1])
            gathered = [None] * world
            dist.all_gather_object(gathered, sum(row["sent_per_step"].values()))
            row["sent_all_ranks"] = gathered
            rows.append(row)
    fit = {m: largest_fitting(m) for m in FIT_MEMORY_GIB} if rank == 0 and "fit" in args.sections else {}
    fit_batch = compose_case(["cluster=one_a100_40g"]).parallel.global_batch_size
    if rank == 0:
        report(args, first, layout, params, rows, fit, fit_batch, started, cuda)
        if args.out:
            args.out.write_text(json.dumps({"rows": rows, "fit": fit, "params": params}, indent=1))
    dist.barrier()
    teardown()


def report(args, config: TrainConfig, layout, params: int, rows, fit, fit_batch, started, cuda: bool) -> None:
    hw = hardware()
    p = layout.data_parallel
    model = config.model
    out = [
        "=" * 110,
        "hydraspeed offload + comm benchmark (benchmarks/offload_comm.py)",
        f"date        {started.strftime('%Y-%m-%d %H:%M:%S')} UTC; load average {load_average()}",
        f"cpu         {hw['cpu']}; {hw['logical_cores']} logical cores; {hw['memory_gib']} GiB; cuda: {hw['cuda']}",
        f"software    torch {hw['torch']}, deepspeed {hw['deepspeed']}, megatron-core {hw['megatron-core']}",
        f"source      {hw['source']}",
        f"model       {model.name} resized: {model.num_layers} layers, hidden {model.hidden_size}, "
        f"ffn {model.ffn_hidden_size}, seq {model.seq_length}; Ψ = {params:,} parameters",
        f"layout      {layout.describe()}; micro-batch 1, accumulation 1; {args.steps} measured steps per case "
        f"after 1 untimed",
        "=" * 110,
        "",
        f"1. Communication per rank per step (MiB sent, bandwidth-optimal pricing), p = {p}",
        f"   paper = 2Ψ (ZeRO 1/2) or 3Ψ (ZeRO 3) × bytes/element; ring = paper × (p-1)/p = {(p - 1) / p:.2f}",
        f"{'case':<24} {'sent':>8} {'paper':>8} {'ring':>8} {'sent/ring':>9} {'step s':>7}  by op@group size (MiB)",
    ]
    for r in (r for r in rows if r["section"] == "comm"):
        if "refused" in r:
            out.append(f"{r['case']:<24} {'refused':>8}  {r['refused']}")
            continue
        sent = sum(r["sent_per_step"].values())
        ring = r["paper"] * (p - 1) / p
        out.append(
            f"{r['case']:<24} {sent / MiB:>8.2f} {r['paper'] / MiB:>8.2f} {ring / MiB:>8.2f} {sent / ring:>9.3f} "
            f"{r['step_s']:>7.3f}  {fmt_ops(r['sent_per_step'])}"
        )
    out += [
        "",
        "2. Offload: model-state bytes DeepSpeed holds on rank 0 (parameters, gradients, fp32 master, Adam",
        "   moments) after the last backward and inside the optimizer step just before Adam runs (ZeRO then",
        "   adds the fp32 gradient of the rank's partition), by where they live, next to the planner's",
        "   prediction for the same model, layout and offload (MiB). On CPU the device is host memory: offload",
        "   moves nothing there, and the totals are what compares."
        + (" peak = torch.cuda.max_memory_allocated over the case." if cuda else ""),
        f"{'case':<26} {'optimizer':<17} {'after backward':<22} {'in step':<22} {'planner device':>14} "
        f"{'host':>6} {'total':>6} {'step s':>7}" + ("  peak" if cuda else ""),
    ]

    def where(states: dict) -> str:
        by_device: dict[str, int] = {}
        for devices in states.values():
            for kind, n in devices.items():
                by_device[kind] = by_device.get(kind, 0) + n
        return " ".join(f"{k} {v / MiB:.1f}" for k, v in sorted(by_device.items()))

    for r in (r for r in rows if r["section"] == "offload"):
        if "refused" in r:
            out.append(f"{r['case']:<26} refused: {r['refused']}")
            continue
        planned = r["planner"]
        out.append(
            f"{r['case']:<26} {r['optimizer']:<17} {where(r['states_after_backward']):<22} "
            f"{where(r['states_in_step']):<22} {planned['device'] / MiB:>14.1f} {planned['host'] / MiB:>6.1f} "
            f"{(planned['device'] + planned['host']) / MiB:>6.1f} {r['step_s']:>7.3f}"
            + (f"  {r['peak_allocated'] / MiB:.1f}" if cuda else "")
        )
    out += [
        "",
        "3. Largest gpt_* preset with a fitting layout on one GPU (planner, cluster=one_a100_40g with its memory "
        f"set, global batch {fit_batch}, bf16); measured: {'see section 2' if cuda else 'no GPU here'}",
        f"{'GPU GiB':>7}  {'no offload':<10} {'(best layout)':<28} {'with offload':<12} (best layout)",
    ]
    for memory, f in fit.items():
        out.append(
            f"{memory:>7}  {f['no offload']:<10} {f['no offload layout']:<28} {f['with offload']:<12} "
            f"{f['with offload layout']}"
        )
    print("\n".join(out), flush=True)


if __name__ == "__main__":
    main()
