"""Stability hooks under planted faults, on real multi-process DeepSpeed + Megatron-Core runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from integration.metrics import read_metrics
from tests.distributed.launch import ROOT, free_port

PROBE = ROOT / "tests" / "distributed" / "scripts" / "stability_probe.py"
UNITS = ROOT / "tests" / "distributed" / "scripts" / "stability_units.py"
# A short window so spikes are judged after 4 steps; a schedule longer than the run so the LR
# moves every step (a skipped step must still advance it).
FAST = [
    "trainer.max_steps=10",
    "trainer.eval_interval=0",
    "optim.warmup_steps=3",
    "optim.decay_steps=40",
    "stability=default",
    "stability.spike.min_history=4",
    "stability.spike.window=8",
    "stability.rollback.enabled=false",
    "wandb.mode=disabled",
]


def _run(args: list[str], check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-6000:]}"
        )
    return proc


def probe(tmp_path: Path, plan: dict, overrides: list[str], nprocs: int = 2, check: bool = True):
    out = tmp_path / "probe.json"
    proc = _run(
        [
            "deepspeed",
            "--num_gpus",
            str(nprocs),
            "--master_port",
            str(free_port()),
            str(PROBE),
            str(out),
            json.dumps(plan),
        ]
        + [f"run.dir={tmp_path / 'run'}", *overrides],
        check=check,
    )
    reports = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("probe.rank*.json"))]
    return proc, reports


LAYOUTS = {
    "dp2_zero1": ["parallel=dp", "parallel.zero_stage=1", "precision=fp32"],
    "dp2_zero2": ["parallel=dp", "parallel.zero_stage=2", "precision=fp32"],
    "dp2_zero0": ["parallel=dp", "parallel.zero_stage=0", "precision=fp32"],
    "dp2_zero3": ["parallel=dp", "parallel.zero_stage=3", "precision=fp32"],
    "dp2_zero1_bf16": ["parallel=dp", "parallel.zero_stage=1", "precision=bf16"],
    "tp2": ["parallel=tp2", "precision=fp32"],
    "pp2": ["parallel=pp2", "precision=fp32"],
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_planted_spike_and_nan_skip_the_step_everywhere_and_change_nothing(tmp_path, layout):
    """Step 6: loss and gradients ×1e3 on every rank. Step 8: a NaN in one gradient element of
    rank 1 only. Both steps are skipped on every rank with master weights, Adam moments, Adam's
    step counter and the model bit-identical, while the LR schedule advances; the clean steps
    around them (the controls) do change the state."""
    _, reports = probe(tmp_path, {"spike": [6], "nan": [8]}, [*FAST, *LAYOUTS[layout]])
    assert len(reports) == 2
    for report in reports:
        steps = {s["step"]: s for s in report["steps"]}
        assert len(steps) == 10
        for step, s in steps.items():
            where = f"rank {report['rank']} step {step}: {s}"
            if step == 6:
                assert not s["applied"] and s["reason"] == "spike" and s["spike_score"] > 6, where
            elif step == 8:
                assert not s["applied"] and s["reason"] == "nonfinite", where
            else:
                assert s["applied"] and s["reason"] is None, where
            assert s["state_unchanged"] == (step in (6, 8)), where
            assert s["lr_after"] != s["lr_before"], where  # the schedule advances, skipped or not
        assert [steps[k]["skipped_steps"] for k in (5, 6, 7, 8, 9)] == [0, 1, 1, 2, 2]
    decisions = [[(s["applied"], s["reason"]) for s in r["steps"]] for r in reports]
    assert decisions[0] == decisions[1]


def test_rollback_restores_the_checkpoint_and_skips_the_window(tmp_path):
    """Spikes on batches 7 and 8 with rollback after 2 in a row: the run reloads the checkpoint of
    step 6 (bit-identical state), skips batches 6-8, and finishes all 12 steps on later data."""
    overrides = [
        *FAST,
        "parallel=dp",
        "parallel.zero_stage=1",
        "precision=fp32",
        "trainer.max_steps=12",
        "checkpoint.interval=3",
        "stability.rollback.enabled=true",
        "stability.rollback.after_consecutive_spikes=2",
    ]
    _, reports = probe(tmp_path, {"rollback": True, "spike": [7, 8]}, overrides)
    for report in reports:
        taken = [(s["step"], s["data_step"], s["applied"], s["reason"]) for s in report["steps"]]
        assert taken[:9] == [(k, k, k not in (7, 8), "spike" if k in (7, 8) else None) for k in range(9)]
        assert taken[9:] == [(k, k + 3, True, None) for k in range(6, 12)]
        assert report["restored"] == [{"step": 6, "identical_to_checkpoint": True}]
        assert report["rollbacks"] == 1 and report["data_offset"] == 3
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, 13))  # rolled-back rows were rewound
    assert rows[-1]["stability/rollbacks"] == 1
    assert rows[-1]["stability/skipped_steps"] == 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["checkpoint.interval=0", "checkpoint.save_at_end=false"], "no complete checkpoint to roll back to"),
        (["checkpoint.interval=3", "stability.rollback.max_rollbacks=1"], "after 1 rollbacks"),
    ],
    ids=["no-checkpoint", "gives-up"],
)
def test_rollback_that_cannot_recover_stops_every_rank_with_a_clear_error(tmp_path, extra, message):
    overrides = [
        *FAST,
        "parallel=dp",
        "parallel.zero_stage=1",
        "precision=fp32",
        "trainer.max_steps=12",
        "stability.rollback.enabled=true",
        "stability.rollback.after_consecutive_spikes=2",
        *extra,
    ]
    proc, reports = probe(tmp_path, {"rollback": True, "spike": list(range(7, 16))}, overrides, check=False)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert output.count(message) >= 2, output[-4000:]  # raised on both ranks, nothing hung
    assert "stability.rollback" in output
    assert not reports


def test_loss_terms_and_model_hooks(tmp_path):
    """z-loss, vocab-parallel logsumexp, embedding-gradient shrink and QK-norm, on 2 processes."""
    out = tmp_path / "units.json"
    _run(["torchrun", "--nproc_per_node", "2", "--master_port", str(free_port()), str(UNITS), str(out)])
    result = json.loads(out.read_text())
    # TP2 logsumexp equals the single-rank value.
    assert result["lse_tp2_vs_full_max_rel"] < 1e-6
    # Logits shifted by +30: cross entropy unchanged, z-term = c·30² (the unshifted logits are
    # log-probabilities, whose logsumexp is 0).
    assert abs(result["ce_shifted"] - result["ce"]) < 1e-5
    assert result["z_unshifted"] < 1e-10
    assert result["z_shifted"] == pytest.approx(1e-4 * 30**2, rel=1e-5)
    # The z-term pulls logsumexp toward 0 (cross entropy alone does not move it down).
    assert result["lse_one_step_with_z"] < result["lse_one_step_without_z"]
    assert result["lse_trained_with_z"] < 0.5 * 30 < 30 < result["lse_trained_without_z"]
    assert result["ce_trained_with_z"] < 1.0 and result["ce_trained_without_z"] < 1.0
    # Embedding-gradient shrink: the input embedding's gradient is α times the unshrunk one.
    assert result["embedding_grad_norm_ratio"] == pytest.approx(0.1, rel=1e-6)
    assert result["embedding_grad_is_alpha_times"]
    assert result["other_grads_max_rel_diff"] < 1e-5
    # QK-norm weights: partial gradients per tensor rank, summed over TP by the hook.
    assert result["qk_partial_grads_differ_across_tp"]
    assert result["qk_summed_grads_equal_across_tp"] and result["qk_summed_is_sum_of_partials"]
    assert result["non_qk_grads_untouched"]
    # QK-norm reaches the built layers.
    assert result["qk_layernorm_modules"] == 2 * result["num_layers"] * 2  # q and k, per layer, per rank
    assert result["transformer_config_qk_layernorm"]


def test_qk_layernorm_at_tp2_matches_one_process(tmp_path):
    """TP2 with QK-norm trains to the single-process curve. (Adam's early updates are nearly
    sign(gradient), so a missing TP sum of the QK-norm gradients hides in a 10-step curve: the sum
    itself is checked gradient by gradient in test_loss_terms_and_model_hooks.)"""
    from tests.distributed.launch import COMMON, assert_same_curve, train

    common = [*COMMON, "stability=off", "model.qk_layernorm=true"]
    reference = train(tmp_path / "single", common, nprocs=1, launcher="python")
    tp2 = train(tmp_path / "tp2", [*common, "parallel=tp2"], nprocs=2)
    assert_same_curve(tp2.losses, reference.losses)
    grad_norms = [r["grad_norm"] for r in tp2.train_rows]
    reference_norms = [r["grad_norm"] for r in reference.train_rows]
    assert grad_norms == pytest.approx(reference_norms, rel=1e-3)


def test_clipping_at_tp2_matches_one_process(tmp_path):
    """Clip at 0.05 (every step clips: the pre-clip norms are ~2): a replicated parameter counted on
    both tensor ranks would change the clip factor, and the TP2 curve would leave the reference."""
    from tests.distributed.launch import COMMON, assert_same_curve, train

    common = [*COMMON, "stability=default", "optim.clip_grad=0.05"]
    reference = train(tmp_path / "single", common, nprocs=1, launcher="python")
    tp2 = train(tmp_path / "tp2", [*common, "parallel=tp2"], nprocs=2)
    assert min(r["grad_norm"] for r in reference.train_rows) > 0.5  # clipping was active
    assert_same_curve(tp2.losses, reference.losses)
    # Adam undoes most of a uniform gradient scale, so clipping moves the curve only a little; a
    # double-counted norm would move it by as much again — far more than TP2 differs from one process.
    unclipped = train(
        tmp_path / "unclipped",
        [*COMMON, "stability=default", "optim.clip_grad=0"],
        nprocs=1,
        launcher="python",
    )
    tp_gap = max(abs(a - b) for a, b in zip(tp2.losses, reference.losses, strict=True))
    clip_effect = max(abs(a - b) for a, b in zip(unclipped.losses, reference.losses, strict=True))
    assert tp_gap < 0.1 * clip_effect, (tp_gap, clip_effect)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))
