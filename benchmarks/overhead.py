"""Overhead of our training step over a hand-written DeepSpeed loop, and the cost of compose + validate.

    OMP_NUM_THREADS=1 python benchmarks/overhead.py [--zero-stage N] [--out result.json] [override ...]
    OMP_NUM_THREADS=1 deepspeed --num_gpus 2 benchmarks/overhead.py --zero-stage 1

In one run, on the same Megatron-Core GPT, layout, global batch, fp32 and ZeRO stage:

(a) ours  — the objects launch/train.py uses: Hydra compose → `to_typed` → `validate` →
    `init_process_group` / `init_model_parallel` / `seed_everything` → `build_datasets` →
    `build_step_runner`; timed: `runner.train_step(step)`.
(b) raw   — `deepspeed.initialize` over the same GPTModel (`integration.model.build_gpt`, same seed, so
    both start from identical weights) with a DeepSpeed config dict, parameter groups and a
    micro-batch loop written out here (no mpu adapter: TP = PP = 1), fed precomputed batches of the
    same samples that (a) reads from the dataset at the same step.
(c) compose + `to_typed` + `validate` of the default train config: cold (first in the process) and
    the median of warm repetitions.

Both engines live in one process. After warm-up the two are timed in alternating blocks
(A B, B A, A B, ...) so that drift of the machine's speed lands on both alike; the ratio of median
step times ours/raw is the headline (goal ≤ 1.02). Since both paths do the same arithmetic on the
same data, their losses must agree step for step; the script prints the largest difference.

Positional arguments are Hydra overrides for (a) and (b), appended after the benchmark's own
model-size overrides (`--tiny` drops those and times conf/model/gpt_tiny.yaml as it is).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
import warnings
from importlib import metadata
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from integration.launcher_args import strip_launcher_args  # noqa: E402

strip_launcher_args(sys.argv)  # the deepspeed runner appends --local_rank=N
for _note in (  # the same Megatron-Core import-time notes launch/train.py silences
    "Transformer Engine and Apex are not installed",
    "Apex is not installed",
    "full scope is deprecated",
    "`torch.distributed.all_gather_into_tensor` is deprecated",
):
    warnings.filterwarnings("ignore", message=_note)

from hydra import compose, initialize_config_dir  # noqa: E402

from integration.config import TrainConfig, register_schemas, to_typed  # noqa: E402
from integration.distributed import LaunchEnv  # noqa: E402
from integration.validate import validate  # noqa: E402

CONF_DIR = str(PROJECT_ROOT / "conf")
# gpt_tiny (hidden 64) spends most of a step in Python; this keeps its shape but makes the matmuls
# dominate, which is where a real run is.
MODEL_OVERRIDES = ["model.hidden_size=256", "model.ffn_hidden_size=1024", "model.num_layers=4"]
GOAL_RATIO = 1.02
GOAL_COMPOSE_S = 0.5


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--zero-stage", type=int, default=0, help="ZeRO stage for both paths (default 0)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per path first (default 3)")
    parser.add_argument(
        "--rounds", type=int, default=30, help="timed rounds of one block per path (default 30)"
    )
    parser.add_argument("--block", type=int, default=2, help="steps per timed block (default 2)")
    parser.add_argument("--compose-reps", type=int, default=20, help="warm compose+validate repetitions")
    parser.add_argument("--tiny", action="store_true", help="time gpt_tiny as it is (no size overrides)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. model.num_layers=8")
    return parser.parse_args()


# ---------------------------------------------------------------------------------------------- setup


def hardware() -> dict:
    import torch

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    versions = {
        name: metadata.version(name) for name in ("torch", "deepspeed", "megatron-core", "hydra-core")
    }
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "memory_gib": mem_gib,
        "cuda": torch.cuda.is_available(),
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "source": source_state(),
        **versions,
    }


def load_average() -> str:
    """1/5/15-minute load averages: above the core count, other processes shared the cores."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def source_state() -> str:
    """The commit measured, and whether the code under it had uncommitted changes."""
    import subprocess

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "integration", "launch", "conf")
    return f"{commit}{' + uncommitted changes in integration/ launch/ conf/' if dirty else ''}"


def compose_typed(overrides: list[str]) -> TrainConfig:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    return to_typed(cfg)


# ------------------------------------------------------------------------------- (c) compose+validate


def compose_validate_once(world_size: int, cuda: bool) -> dict[str, float]:
    """What every rank pays before any process group: initialize + compose of conf/train.yaml,
    `to_typed`, `validate`, each part timed."""
    t0 = time.perf_counter()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        t1 = time.perf_counter()
        cfg = compose(config_name="train")
    t2 = time.perf_counter()
    config = to_typed(cfg)
    t3 = time.perf_counter()
    validate(config, world_size, cuda)
    t4 = time.perf_counter()
    return {
        "initialize": t1 - t0,
        "compose": t2 - t1,
        "to_typed": t3 - t2,
        "validate": t4 - t3,
        "total": t4 - t0,
    }


def time_compose_validate(cold: dict[str, float], reps: int, world_size: int, cuda: bool) -> dict:
    """`cold` is the process's first call (Hydra discovers its plugins and the config tree; in a
    multi-process run every rank is starting up at the same moment, as under a real launch); the
    warm repetitions run while the other ranks wait at a barrier."""
    warm = [compose_validate_once(world_size, cuda) for _ in range(reps)]
    median = {key: statistics.median(r[key] for r in warm) for key in cold}
    return {"cold": cold, "warm_median": median, "warm_total": [r["total"] for r in warm], "reps": reps}


# ------------------------------------------------------------------------------------------ (b) raw


class RawLoop:
    """The hand-written baseline: deepspeed.initialize, then per micro-batch forward with labels,
    masked mean loss, engine.backward, engine.step (DeepSpeed steps the optimizer at the
    accumulation boundary)."""

    def __init__(self, gpt, batches, zero_stage: int, config: TrainConfig, layout, max_steps: int):
        import deepspeed

        optim = config.optim
        decay, no_decay = [], []
        for name, param in gpt.named_parameters():
            (no_decay if param.ndim < 2 or "embedding" in name else decay).append(param)
        groups = [
            {"params": decay, "weight_decay": optim.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        ds_config = {
            "train_batch_size": layout.global_batch_size,
            "train_micro_batch_size_per_gpu": layout.micro_batch_size,
            "gradient_accumulation_steps": layout.gradient_accumulation_steps,
            "gradient_clipping": optim.clip_grad,
            "zero_optimization": {"stage": zero_stage},
            "optimizer": {
                "type": "AdamW",
                "params": {
                    "lr": optim.lr,
                    "betas": list(optim.betas),
                    "eps": optim.eps,
                    "weight_decay": optim.weight_decay,
                    "torch_adam": True,
                    "adam_w_mode": True,
                },
            },
            "scheduler": {
                "type": "WarmupCosineLR",
                "params": {
                    "total_num_steps": max_steps,
                    "warmup_num_steps": optim.warmup_steps,
                    "warmup_type": "linear",
                    "warmup_min_ratio": 0.0,
                    "cos_min_ratio": optim.min_lr_ratio,
                },
            },
            "steps_per_print": 10**9,
        }
        self.engine, _, _, _ = deepspeed.initialize(model=gpt, model_parameters=groups, config=ds_config)
        # Same schedule position as ours (integration.engine.start_schedule), so the losses of the two
        # paths can be compared step for step; it changes no work done per step.
        self.engine.lr_scheduler.step(1)
        self.batches = batches
        self.ds_config = ds_config

    def train_step(self, step: int) -> float:
        import torch

        engine = self.engine
        losses = []
        for batch in self.batches[step]:
            per_token = engine(
                input_ids=batch["tokens"],
                position_ids=batch["position_ids"],
                attention_mask=None,
                labels=batch["labels"],
            )
            mask = batch["loss_mask"]
            loss = (per_token.float() * mask).sum() / mask.sum()
            engine.backward(loss)
            engine.step()
            losses.append(loss.detach())
        return float(torch.stack(losses).mean())


def precompute_batches(dataset, steps: int, layout, dp_rank: int) -> list[list[dict]]:
    """This rank's micro-batches for steps 0..steps-1: the global batch of step s is samples
    [s·G, (s+1)·G), micro-batch m of DP rank r is the mbs samples starting at s·G + (m·dp + r)·mbs —
    the samples `runner.train_step(s)` reads."""
    import torch

    mbs, dp, gbs = layout.micro_batch_size, layout.data_parallel, layout.global_batch_size
    keys = ("tokens", "labels", "loss_mask", "position_ids")
    batches = []
    for step in range(steps):
        micros = []
        for micro in range(layout.gradient_accumulation_steps):
            first = step * gbs + (micro * dp + dp_rank) * mbs
            samples = [dataset[i % len(dataset)] for i in range(first, first + mbs)]
            micros.append({k: torch.stack([torch.as_tensor(s[k]) for s in samples]) for k in keys})
        batches.append(micros)
    return batches


# ------------------------------------------------------------------------------------------- timing


def timed_block(train_step, first: int, count: int, times: list[float], losses: dict[int, float]) -> None:
    import torch.distributed as dist

    dist.barrier()  # ranks start a block together
    for step in range(first, first + count):
        start = time.perf_counter()
        result = train_step(step)
        times.append(time.perf_counter() - start)
        losses[step] = result if isinstance(result, float) else result.loss


def isolated_extras(runner, layout, zero_stage: int, reps: int = 20) -> dict[str, float]:
    """Median cost (s) of what `runner.train_step` does per step beyond the raw loop, each timed alone
    (the step-time ratio on a shared, noisy machine cannot resolve 1 %): collating micro-batches from
    the dataset, the data-parallel loss mean, reading the lr, and — at ZeRO 0 only, where DeepSpeed
    reports no norm — the extra pre-clip gradient-norm pass (on stand-in gradients of the model's
    shapes; the engine's own gradients are cleared after its step)."""
    import torch

    from integration.data import collate
    from integration.trainer import data_parallel_mean, global_grad_norm

    def median_of(fn) -> float:
        samples = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - start)
        return statistics.median(samples)

    micros = range(layout.gradient_accumulation_steps)
    extras = {
        "collate": median_of(
            lambda: [
                collate(runner.datasets.train, runner.sampler.indices(0, m), runner.device) for m in micros
            ]
        ),
        "dp_mean_loss": median_of(
            lambda: float(data_parallel_mean(torch.stack([torch.ones(())] * 4).mean()))
        ),
        "get_lr": median_of(lambda: runner.engine.get_lr()),
        "grad_norm": 0.0,
    }
    if zero_stage == 0:
        stand_ins = []
        for param in runner.engine.module.parameters():
            stand_in = torch.nn.Parameter(torch.empty_like(param))
            stand_in.grad = torch.ones_like(param)
            stand_ins.append(stand_in)
        extras["grad_norm"] = median_of(lambda: global_grad_norm(stand_ins))
    extras["total"] = sum(extras.values())
    return extras


def summarize(times: list[float]) -> dict:
    return {
        "median_s": statistics.median(times),
        "mean_s": statistics.fmean(times),
        "min_s": min(times),
        "max_s": max(times),
        "steps": len(times),
    }


def main() -> None:
    args = parse_args()
    env = LaunchEnv.from_environ()
    rank0 = env.rank == 0
    say = print if rank0 else (lambda *a, **k: None)
    register_schemas()

    import torch

    cuda = torch.cuda.is_available()
    started = dt.datetime.now(dt.UTC)
    # (c) cold: this must be the process's first compose
    cold_compose = compose_validate_once(env.world_size, cuda)

    total_steps = args.warmup + args.rounds * args.block
    overrides = [
        # The raw loop has no stability hooks; z-loss and QK-norm would change the arithmetic.
        # Pass stability.spike.enabled=true stability.nonfinite_guard=true to time the step gate
        # (same arithmetic).
        "stability=off",
        *([] if args.tiny else MODEL_OVERRIDES),
        f"parallel.zero_stage={args.zero_stage}",
        f"trainer.max_steps={total_steps}",
        *args.overrides,
    ]
    config = compose_typed(overrides)
    config.trainer.max_steps = max(config.trainer.max_steps, config.optim.warmup_steps)
    verdict = validate(config, env.world_size, cuda)
    layout = verdict.layout
    if layout.tensor_parallel != 1 or layout.pipeline_parallel != 1:
        sys.exit("overhead.py: the raw loop has no mpu adapter; use tensor/pipeline parallel size 1")

    from deepspeed.utils import logger as ds_logger

    from integration import distributed
    from integration.data import build_datasets, check_data_files
    from integration.ds_config import build_deepspeed_config
    from integration.model import build_gpt
    from integration.plan import model_vocab_size
    from integration.steps import build_step_runner

    ds_logger.setLevel("WARNING")  # deepspeed.initialize's INFO lines, for both paths alike
    check_data_files(config.data)
    trainer = config.trainer
    vocab = model_vocab_size(config.model, config.data.tokenizer, config.data.vocab_size)

    # (a) exactly as launch/train.py's train() builds it
    distributed.init_process_group(config.cluster, env)
    try:
        distributed.init_model_parallel(layout)
        distributed.seed_everything(trainer.seed)
        device = torch.device(f"cuda:{env.local_rank}" if config.cluster.device == "cuda" else "cpu")
        datasets = build_datasets(
            config.data,
            config.model.seq_length,
            trainer.seed,
            train_samples=trainer.max_steps * layout.global_batch_size,
            valid_samples=max(1, trainer.eval_iters) * layout.global_batch_size,
        )
        ours_ds_config = build_deepspeed_config(
            layout, config.parallel, config.optim, config.precision, trainer.max_steps
        )
        t0 = time.perf_counter()
        runner = build_step_runner(
            config.model,
            config.parallel,
            config.optim,
            config.precision.dtype,
            vocab_size=vocab,
            ds_config=ours_ds_config,
            datasets=datasets,
            layout=layout,
            device=device,
            seed=trainer.seed,
            stability=config.stability,
        )
        build_ours_s = time.perf_counter() - t0

        # (b) the same model (same seed → same weights), the same samples, a hand-written loop
        batches = precompute_batches(datasets.train, total_steps, layout, torch.distributed.get_rank())
        t0 = time.perf_counter()
        gpt = build_gpt(config.model, config.parallel, config.precision.dtype, vocab, trainer.seed)
        raw = RawLoop(gpt, batches, args.zero_stage, config, layout, trainer.max_steps)
        build_raw_s = time.perf_counter() - t0
        params = sum(p.numel() for p in gpt.parameters())

        say(header(args, hardware(), config, layout, overrides, params, started))

        load_before = load_average()
        times = {"ours": [], "raw": []}
        losses = {"ours": {}, "raw": {}}
        step_fn = {"ours": lambda step: runner.train_step(step, step), "raw": raw.train_step}
        warm_times = {"ours": [], "raw": []}
        for name in ("ours", "raw"):
            timed_block(step_fn[name], 0, args.warmup, warm_times[name], losses[name])
        blocks = []
        for r in range(args.rounds):
            order = ("ours", "raw") if r % 2 == 0 else ("raw", "ours")
            first = args.warmup + r * args.block
            means = {}
            for name in order:
                before = len(times[name])
                timed_block(step_fn[name], first, args.block, times[name], losses[name])
                means[name] = statistics.fmean(times[name][before:])
            blocks.append({"order": list(order), **{f"{k}_mean_s": v for k, v in means.items()}})
            say(
                f"  round {r + 1}/{args.rounds} ({order[0]} first): ours {means['ours']:.4f} s/step, "
                f"raw {means['raw']:.4f} s/step, ratio {means['ours'] / means['raw']:.4f}"
            )
        load_after = load_average()
        extras = isolated_extras(runner, layout, args.zero_stage)
        # (c) warm, on rank 0 alone: the other ranks wait at the barrier and take no CPU
        compose_result = None
        if rank0:
            compose_result = time_compose_validate(cold_compose, args.compose_reps, env.world_size, cuda)
        torch.distributed.barrier()
        # ours reports the data-parallel mean loss, raw the rank's own: average raw's once, untimed
        raw_steps = sorted(losses["raw"])
        mean = torch.tensor([losses["raw"][s] for s in raw_steps], dtype=torch.float32)
        torch.distributed.all_reduce(mean)
        losses["raw"] = dict(
            zip(raw_steps, (mean / torch.distributed.get_world_size()).tolist(), strict=True)
        )
    finally:
        distributed.teardown()

    ours, raw_s = summarize(times["ours"]), summarize(times["raw"])
    ratio = ours["median_s"] / raw_s["median_s"]
    round_ratios = [b["ours_mean_s"] / b["raw_mean_s"] for b in blocks]
    paired = statistics.median(round_ratios)
    q1, _, q3 = statistics.quantiles(round_ratios, n=4) if len(round_ratios) > 1 else (paired,) * 3
    loss_diff = max(abs(losses["ours"][s] - losses["raw"][s]) for s in losses["raw"])
    result = {
        "benchmark": "overhead",
        "date_utc": started.isoformat(timespec="seconds"),
        "hardware": hardware(),
        "world_size": env.world_size,
        "overrides": overrides,
        "model": {
            "hidden_size": config.model.hidden_size,
            "ffn_hidden_size": config.model.ffn_hidden_size,
            "num_layers": config.model.num_layers,
            "num_attention_heads": config.model.num_attention_heads,
            "seq_length": config.model.seq_length,
            "vocab_padded": vocab,
            "parameters": params,
        },
        "layout": layout.describe(),
        "zero_stage": args.zero_stage,
        "dtype": config.precision.dtype,
        "data": config.data.name,
        "schedule": {"warmup": args.warmup, "rounds": args.rounds, "block": args.block},
        "build_s": {"ours": build_ours_s, "raw": build_raw_s},
        "ours": ours,
        "raw": raw_s,
        "ratio_ours_over_raw": ratio,
        "paired_block_ratio_median": paired,
        "paired_block_ratio_quartiles": [q1, q3],
        "load_average_before_after": [load_before, load_after],
        "goal_ratio": GOAL_RATIO,
        "max_abs_loss_diff": loss_diff,
        "isolated_extras_s": extras,
        "isolated_extras_fraction_of_raw": extras["total"] / raw_s["median_s"],
        "losses": {k: [v[s] for s in sorted(v)] for k, v in losses.items()},
        "step_times_s": times,
        "blocks": blocks,
        "raw_ds_config": raw.ds_config,
        "ours_ds_config": ours_ds_config,
        "compose_validate": compose_result,
        "goal_compose_s": GOAL_COMPOSE_S,
    }
    if rank0:
        print(report(result))
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=2) + "\n")
            print(f"results written to {args.out}")


def header(args, hw: dict, config: TrainConfig, layout, overrides, params: int, started) -> str:
    model = config.model
    return "\n".join(
        [
            "=" * 100,
            "hydraspeed overhead benchmark: ours (build_step_runner) vs raw (hand-written DeepSpeed loop)",
            f"date        {started.strftime('%Y-%m-%d %H:%M:%S')} UTC",
            f"cpu         {hw['cpu']}; {hw['logical_cores']} logical cores ({hw['usable_cores']} usable); "
            f"{hw['memory_gib']} GiB; cuda: {hw['cuda']}",
            f"software    python {hw['python']}, torch {hw['torch']}, deepspeed {hw['deepspeed']}, "
            f"megatron-core {hw['megatron-core']}, hydra-core {hw['hydra-core']}; {hw['os']}",
            f"source      {hw['source']}",
            f"threads     torch {hw['torch_threads']} per process, OMP_NUM_THREADS={hw['OMP_NUM_THREADS']}",
            f"overrides   {' '.join(overrides)}" + ("  (--tiny: gpt_tiny as is)" if args.tiny else ""),
            f"model       {model.name}{'' if args.tiny else ' resized'}: {model.num_layers} layers, hidden "
            f"{model.hidden_size}, ffn {model.ffn_hidden_size or 4 * model.hidden_size}, "
            f"{model.num_attention_heads} heads, seq {model.seq_length}, {params:,} parameters",
            f"layout      {layout.describe()}",
            f"training    {config.precision.dtype}, ZeRO {args.zero_stage}, AdamW (torch_adam), clip "
            f"{config.optim.clip_grad}, data={config.data.name}",
            f"schedule    {args.warmup} warm-up steps per path, then {args.rounds} rounds × "
            f"{args.block} steps per path, alternating order (AB, BA, ...)",
            "=" * 100,
        ]
    )


def report(r: dict) -> str:
    ours, raw = r["ours"], r["raw"]
    ok = "PASS" if r["ratio_ours_over_raw"] <= GOAL_RATIO else "FAIL"
    lines = [
        "",
        f"build: ours {r['build_s']['ours']:.2f} s, raw {r['build_s']['raw']:.2f} s (model + engine)",
        f"load average (1/5/15 min) before timing: {r['load_average_before_after'][0]}, after: "
        f"{r['load_average_before_after'][1]} on {r['hardware']['usable_cores']} cores",
        f"losses (data-parallel mean) agree step for step: max |ours - raw| = {r['max_abs_loss_diff']:.3g} "
        f"over {len(r['losses']['raw'])} steps",
        "",
        f"{'path':<34}{'median s/step':>14}{'mean':>10}{'min':>10}{'max':>10}{'steps':>7}",
    ]
    for label, s in (("ours: runner.train_step", ours), ("raw: hand-written loop", raw)):
        lines.append(
            f"{label:<34}{s['median_s']:>14.4f}{s['mean_s']:>10.4f}{s['min_s']:>10.4f}"
            f"{s['max_s']:>10.4f}{s['steps']:>7}"
        )
    lines += [
        "",
        f"RATIO ours/raw (median step time): {r['ratio_ours_over_raw']:.4f}   goal <= {GOAL_RATIO}   {ok}",
        f"  (median of per-round block ratios: {r['paired_block_ratio_median']:.4f}, quartiles "
        f"{r['paired_block_ratio_quartiles'][0]:.4f}-{r['paired_block_ratio_quartiles'][1]:.4f}; "
        f"ratio of fastest steps: {ours['min_s'] / raw['min_s']:.4f})",
    ]
    e = r["isolated_extras_s"]
    lines.append(
        f"  ours' per-step extras timed alone: {e['total'] * 1e3:.2f} ms = "
        f"{r['isolated_extras_fraction_of_raw'] * 100:.2f} % of raw's median step (collate "
        f"{e['collate'] * 1e3:.2f}, dp-mean loss {e['dp_mean_loss'] * 1e3:.2f}, get_lr {e['get_lr'] * 1e3:.2f}, "
        f"ZeRO-0 grad norm {e['grad_norm'] * 1e3:.2f} ms)"
    )
    c = r["compose_validate"]
    if c is not None:
        w, cold = c["warm_median"], c["cold"]
        ok_c = "PASS" if w["total"] <= GOAL_COMPOSE_S else "FAIL"
        lines += [
            "",
            f"COMPOSE+VALIDATE (warm, median of {c['reps']}): {w['total']:.4f} s   "
            f"goal <= {GOAL_COMPOSE_S} s   {ok_c}",
            f"  initialize {w['initialize']:.4f} + compose {w['compose']:.4f} + to_typed "
            f"{w['to_typed']:.4f} + validate {w['validate']:.4f} s",
            f"COMPOSE+VALIDATE cold (first in process): {cold['total']:.4f} s "
            f"(initialize {cold['initialize']:.4f}, compose {cold['compose']:.4f}, to_typed "
            f"{cold['to_typed']:.4f}, validate {cold['validate']:.4f})",
        ]
    lines += [
        "",
        "summary",
        f"  {'metric':<44}{'value':>12}  {'goal':<10}",
        f"  {'ours median step [s]':<44}{ours['median_s']:>12.4f}",
        f"  {'raw median step [s]':<44}{raw['median_s']:>12.4f}",
        f"  {'ratio ours/raw':<44}{r['ratio_ours_over_raw']:>12.4f}  {'<= ' + str(GOAL_RATIO):<10}{ok}",
    ]
    if c is not None:
        lines += [
            f"  {'compose+validate warm median [s]':<44}{c['warm_median']['total']:>12.4f}  "
            f"{'<= ' + str(GOAL_COMPOSE_S):<10}{ok_c}",
            f"  {'compose+validate cold [s]':<44}{c['cold']['total']:>12.4f}",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
