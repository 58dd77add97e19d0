"""The planner's 2D tensor-parallel layouts: the collective lists and their costs, the per-rank
parameters and activations of a q×q grid, the link tier of grid rows and columns, which 2D layouts
are enumerated and rejected, and the overrides emitted for one. No process group, no torch (the
counted side is tests/distributed/test_planner_tp_comm.py)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from integration.layout import Layout
from integration.model_size import parameter_count
from integration.plan import model_vocab_size
from integration.planner import PlannerSettings, override_line, plan_layouts
from integration.planner.memory import ActivationShape, layer_activation_bytes, stage_parameters
from integration.planner.table import render_table
from integration.planner.tensor_comm import (
    Collective,
    calls,
    grid_groups,
    megatron_layer,
    seconds,
    sent_bytes,
    summa_ends,
    summa_layer,
    summa_linear,
)
from integration.planner.timing import (
    Link,
    TimeInputs,
    all_gather,
    all_reduce,
    step_time,
    tensor_parallel_links,
)
from integration.planner.tp2d import layer_activation_bytes_2d, parameters_2d, stage_memory_2d
from integration.validate import validate

ROOT = Path(__file__).resolve().parents[2]
LINK = Link("x", bandwidth=100e9, latency=5e-6)


def _vocab(config) -> int:
    return model_vocab_size(config.model, config.data.tokenizer, config.data.vocab_size)


# --- collectives ----------------------------------------------------------------------------------


def test_collective_bytes_follow_the_ledger_and_times_the_ring_formulas():
    n = 1e6
    assert Collective("all_reduce", "tensor", 4, n, "forward").sent == 2 * 3 / 4 * n
    for op in ("broadcast", "reduce", "all_gather", "reduce_scatter"):
        assert Collective(op, "row", 4, n, "forward", count=3).sent == 3 * 3 / 4 * n
    assert Collective("all_reduce", "tensor", 8, n, "forward").seconds(LINK) == all_reduce(n, 8, LINK)
    assert Collective("all_gather", "tensor", 8, n, "forward").seconds(LINK) == all_gather(n, 8, LINK)
    assert Collective("reduce_scatter", "tensor", 8, n, "forward").seconds(LINK) == all_gather(n, 8, LINK)
    # A pipelined chain: p - 1 hops of latency, and the whole payload through every link but one.
    assert Collective("broadcast", "row", 4, n, "forward").seconds(LINK) == pytest.approx(
        3 * 5e-6 + n / 100e9
    )
    assert Collective("all_gather", "tensor", 8, n, "backward", overlapped=True).seconds(LINK) == 0.0
    assert Collective("all_reduce", "tensor", 1, n, "forward").seconds(LINK) == 0.0


def test_summa_linear_closed_form():
    """q broadcasts of x and W blocks forward ((q-1)(T·in + in·out)/q² per device), twice that
    backward (dX and dW each broadcast and reduce), the bias gathered and reduce-scattered."""
    tokens, fan_in, fan_out, q, e = 64, 16, 24, 2, 4
    c = summa_linear(tokens, fan_in, fan_out, q, e, bias=True)
    matmul = (q - 1) * (tokens * fan_in + fan_in * fan_out) / q**2 * e
    bias = (q - 1) * fan_out / q**2 * e
    assert sent_bytes(c, "forward") == matmul + bias
    assert sent_bytes(c, "backward") == 2 * matmul + bias
    assert calls(c, "forward") == 2 * q + 1 and calls(c, "backward") == 4 * q + 1


def test_megatron_layer_is_four_all_reduces_of_the_block_activation(typed_config):
    model = dataclasses.replace(typed_config(["model=gpt_1p3b", "stability=off"]).model, qk_layernorm=False)
    tokens, tp = 2048 * 2, 8
    act = tokens * model.hidden_size * 2
    plain = megatron_layer(model, tokens, tp, "bf16", False, "none")
    assert sent_bytes(plain) == 4 * 2 * (tp - 1) / tp * act
    assert seconds(plain, {"tensor": LINK}) == pytest.approx(4 * all_reduce(act, tp, LINK))
    full = megatron_layer(model, tokens, tp, "bf16", False, "full")  # the forward again in backward
    assert seconds(full, {"tensor": LINK}) == pytest.approx(6 * all_reduce(act, tp, LINK))
    # Sequence parallelism: each all-reduce becomes a reduce-scatter + all-gather (the same time);
    # the backward re-gather of the column-parallel inputs is overlapped with the input-gradient GEMM.
    # With it Megatron marks both LayerNorms and the row-parallel biases `sequence_parallel`, and
    # their partial gradients are summed too: 6 all-reduces of h elements.
    sp = megatron_layer(model, tokens, tp, "bf16", True, "none")
    hooks = 6 * all_reduce(model.hidden_size * 2, tp, LINK)
    assert seconds(sp, {"tensor": LINK}) == pytest.approx(4 * all_reduce(act, tp, LINK) + hooks)
    assert sent_bytes(sp) > sent_bytes(plain)
    # QK-layernorm: the partial gradients of the replicated weights are summed, 4 tensors per layer.
    qk = megatron_layer(dataclasses.replace(model, qk_layernorm=True), tokens, tp, "bf16", False, "none")
    assert calls(qk) == calls(plain) + 4


def test_2d_beats_1d_on_bytes_per_device_only_as_q_grows(typed_config):
    """The per-layer 2D bytes per device fall as 1/q while 1D's stay ~8·T·h·e: at q = 2 (tp 4) 2D
    sends more than 1D, at q = 4 (tp 16) and q = 8 (tp 64) less (gpt_1p3b, micro-batch 4)."""
    model = dataclasses.replace(typed_config(["model=gpt_1p3b"]).model, qk_layernorm=False)
    tokens = 4 * model.seq_length
    ratio = {
        q: sent_bytes(summa_layer(model, tokens, q, "bf16"))
        / sent_bytes(megatron_layer(model, tokens, q * q, "bf16", False, "none"))
        for q in (2, 4, 8)
    }
    assert ratio[2] > 1 > ratio[4] > ratio[8]


def test_2d_logits_move_vocabulary_sized_blocks(typed_config):
    """The 2D output projection reduces partial logits [T/q, v/q] over the row (q steps forward)
    and broadcasts the logit gradients backward: vocabulary-sized traffic that 1D never sends."""
    config = typed_config(["model=gpt_1p3b"])
    vocab, tokens, q = _vocab(config), 2 * 2048, 2
    logit_block = tokens // q * vocab // q * 2
    reduces = [
        c for c in summa_ends(config.model, vocab, tokens, q, "bf16") if c.op == "reduce" and c.group == "row"
    ]
    assert reduces == [Collective("reduce", "row", q, logit_block, "forward", q)]


# --- memory ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("q", [2, 4])
def test_2d_ranks_hold_a_q_squared_share_of_every_parameter(typed_config, q):
    config = typed_config(["model=gpt_1p3b", "stability=off"])
    model, vocab = config.model, _vocab(config)
    per_rank = sum(t.numel for t in parameters_2d(model, vocab, q))
    assert per_rank * q * q == parameter_count(model, vocab)
    # 1D at the same tp replicates LayerNorms, position embeddings and the row-parallel biases.
    one_d = sum(t.numel for t in stage_parameters(model, vocab, q * q, 1, 0))
    assert one_d > per_rank
    # QK-layernorm weights are replicated over the grid.
    qk = dataclasses.replace(model, qk_layernorm=True)
    extra = sum(t.numel for t in parameters_2d(qk, vocab, q)) - per_rank
    assert extra == model.num_layers * 4 * (model.hidden_size // model.num_attention_heads)


@pytest.mark.parametrize("flash", [True, False])
def test_2d_activations_are_the_1d_count_divided_by_q_squared(typed_config, flash):
    """Every activation term is a [b/q, s, ·/q] block: the 1D layer count with tensor and sequence
    parallelism at t = q² (no dropout), where 1D without sequence parallelism keeps the block
    inputs whole."""
    model = typed_config(["model=gpt_1p3b"]).model  # no dropout: 2D has none
    for q in (2, 4):
        two_d = layer_activation_bytes_2d(model, 4, q, flash, "bf16")
        sp = layer_activation_bytes(model, ActivationShape(4, q * q, True, "none", flash, "bf16"))
        no_sp = layer_activation_bytes(model, ActivationShape(4, q * q, False, "none", flash, "bf16"))
        assert two_d == pytest.approx(sp)
        assert two_d < no_sp


def test_2d_stage_memory_uses_deepspeed_states_of_the_2d_tensors(typed_config):
    config = typed_config(["model=gpt_1p3b", "cluster=h100_8x4"])
    model, vocab = config.model, _vocab(config)
    m = stage_memory_2d(model, vocab, 16, 2, 1, "none", 4, True, "bf16")
    numel = sum(t.numel for t in parameters_2d(model, vocab, 4))
    assert m.states.parameters >= numel * 2  # padded flat bf16 buffer
    assert m.states.optimizer == pytest.approx(numel * 8 / 2, rel=1e-3)  # ZeRO-1 over dp 2
    assert m.activations == model.num_layers * layer_activation_bytes_2d(model, 4, 4, True, "bf16")
    assert m.output_layer == 4 * model.seq_length * 4 * vocab / 16


# --- links and step time --------------------------------------------------------------------------


def test_grid_rows_stay_in_a_node_when_the_grid_spans_nodes(typed_config):
    cluster = typed_config(["cluster=h100_8x4"]).cluster  # 4 nodes × 8
    tensor_groups = Layout(32, 16, 1, 2, 1, 2, 1).tensor_groups()
    rows, cols = grid_groups(tensor_groups, 4)
    assert rows[0] == [0, 1, 2, 3] and cols[0] == [0, 4, 8, 12]
    links = tensor_parallel_links(tensor_groups, True, cluster)
    assert (links["tensor"].name, links["row"].name, links["column"].name) == (
        "inter-node",
        "intra-node",
        "inter-node",
    )
    inside = tensor_parallel_links(Layout(32, 4, 1, 8, 1, 8, 1).tensor_groups(), True, cluster)
    assert {link.name for link in inside.values()} == {"intra-node"}


def test_2d_step_time_differs_from_1d_only_in_tensor_parallel_traffic(typed_config):
    config = typed_config(["model=gpt_1p3b", "cluster=h100_8x4"])
    model, vocab, cluster = config.model, _vocab(config), config.cluster
    x1 = TimeInputs(16, 1, 2, 4, 8, 1, "none", "none", False, "bf16", 10**8)
    x2 = dataclasses.replace(x1, tensor_parallel_2d=True)
    t1, t2 = (step_time(model, vocab, cluster, x, 0.5, 1e9) for x in (x1, x2))
    assert t1.compute - t1.tensor_parallel == pytest.approx(t2.compute - t2.tensor_parallel)
    assert (t1.data_parallel, t1.optimizer) == (t2.data_parallel, t2.optimizer)
    links = tensor_parallel_links(Layout(32, 16, 1, 2, 4, 64, 8).tensor_groups(), True, cluster)
    tokens = 4 * model.seq_length
    per_micro = model.num_layers * seconds(summa_layer(model, tokens, 4, "bf16"), links) + seconds(
        summa_ends(model, vocab, tokens, 4, "bf16"), links
    )
    assert t2.tensor_parallel == pytest.approx(8 * per_micro)
    # Across two nodes the grid keeps its row traffic on NVLink: 2D's tensor-parallel time is the
    # lower one at tp 16 (per micro-batch of 4 × 2048 tokens).
    assert t2.tensor_parallel < t1.tensor_parallel


# --- enumeration, ranking, overrides --------------------------------------------------------------


@pytest.fixture(scope="module")
def plans_with_2d():
    from tests.conftest import typed_train

    config = typed_train(["model=gpt_1p3b", "cluster=h100_8x4", "parallel.global_batch_size=64"])
    return config, plan_layouts(config, PlannerSettings(max_micro_batch_size=4))


def test_2d_candidates_are_square_grids_without_pipeline_stages(plans_with_2d):
    _, plans = plans_with_2d
    two_d = [p.candidate for p in plans if p.candidate.tensor_parallel_2d]
    assert {c.tp for c in two_d} == {4, 16}  # 9 and 25 do not divide 32
    assert all(c.pp == 1 and not c.sequence_parallel and c.recompute == "none" for c in two_d)
    assert {c.tensor_label for c in two_d} == {"2x2", "4x4"}


def test_2d_layouts_are_validated_and_planned(plans_with_2d):
    _, plans = plans_with_2d
    fitting = [p for p in plans if p.fits and p.candidate.tensor_parallel_2d]
    assert fitting
    assert all(p.candidate.micro_batch_size % int(p.candidate.tp**0.5) == 0 for p in fitting)
    assert all(p.time.tensor_parallel > 0 and p.memory.activations > 0 for p in fitting)
    odd = next(p for p in plans if p.candidate.tensor_parallel_2d and p.candidate.micro_batch_size == 1)
    assert any("does not split over the 2 grid rows" in r for r in odd.reasons)
    # Same tp, micro-batch and ZeRO stage: 2D needs less memory than 1D (activations / q², not / tp
    # for the split half only; no replicated tensors).
    by = {
        (
            p.candidate.tp,
            p.candidate.tensor_parallel_2d,
            p.candidate.pp,
            p.candidate.zero_stage,
            p.candidate.micro_batch_size,
            p.candidate.recompute,
            p.candidate.offload,
            p.candidate.sequence_parallel,
        ): p
        for p in plans
        if p.memory is not None
    }
    pairs = [(by[k], by[(k[0], False, *k[2:])]) for k in by if k[1] and (k[0], False, *k[2:]) in by]
    assert pairs
    assert all(two.memory.total < one.memory.total for two, one in pairs)


def test_models_2d_does_not_implement_are_rejected_with_the_reason(typed_config):
    config = typed_config(["model=llama_7b", "cluster=h100_8x1", "parallel.global_batch_size=16"])
    plans = plan_layouts(config, PlannerSettings(max_micro_batch_size=2))
    two_d = [p for p in plans if p.candidate.tensor_parallel_2d]
    assert two_d and not any(p.fits for p in two_d)
    assert all(any(r.startswith("model.normalization: 'RMSNorm'") for r in p.reasons) for p in two_d)


def test_no_2d_setting_leaves_them_out(typed_config):
    config = typed_config(["model=gpt_125m", "cluster=h100_8x1"])
    plans = plan_layouts(config, PlannerSettings(max_micro_batch_size=2, tensor_parallel_2d=False))
    assert not any(p.candidate.tensor_parallel_2d for p in plans)


def test_a_2d_row_is_marked_and_its_overrides_validate_to_the_same_layout(plans_with_2d, typed_config):
    config, plans = plans_with_2d
    plan = next(p for p in plans if p.fits and p.candidate.tensor_parallel_2d and p.candidate.tp == 4)
    line = override_line(plan)
    assert "parallel.tensor_parallel_2d=true" in line and "parallel.name=tp2d_2x2" in line
    again = typed_config(["model=gpt_1p3b", "cluster=h100_8x4", *line.split()])
    layout = validate(again, 32, cuda_available=True, planned=True, fused_norms_available=True).layout
    c = plan.candidate
    assert again.parallel.tensor_parallel_2d
    assert (layout.tensor_parallel, layout.pipeline_parallel, layout.data_parallel) == (c.tp, c.pp, c.dp)
    table = render_table([plan], config)
    assert any(row.split()[:2] == ["1", "2x2"] for row in table.splitlines())
    # 1D overrides switch 2D off explicitly (the base config may be parallel=tp2d_2x2).
    one_d = next(p for p in plans if p.fits and not p.candidate.tensor_parallel_2d)
    assert "parallel.tensor_parallel_2d=false" in override_line(one_d)


def test_plan_command_ranks_2d_layouts_and_no_2d_removes_them():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    args = [
        sys.executable,
        "launch/plan.py",
        "model=gpt_125m",
        "cluster=h100_8x1",
        "parallel.global_batch_size=16",
        "--max-micro-batch",
        "4",
        "--top",
        "2000",
        "--rejected",
        "0",
    ]
    runs = [
        subprocess.run(a, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        for a in (args, [*args, "--no-2d"])
    ]
    assert all(r.returncode == 0 for r in runs), [r.stderr for r in runs]
    with_2d, without = (sum(line.split()[1:2] == ["2x2"] for line in r.stdout.splitlines()) for r in runs)
    assert with_2d > 0 and without == 0


def test_launch_memory_check_uses_the_2d_model_for_2d_layouts(typed_config):
    """Validation's fit check (integration/cluster_fit.py) prices a 2D launch with the 2D memory
    model, which keeps 1/q² of every activation, not with the 1D model at tp = q²."""
    from integration.cluster_fit import LayoutChoice, predicted_fit

    config = typed_config(
        ["model=gpt_1p3b", "cluster=h100_8x1", "parallel=tp2d_2x2", "parallel.zero_stage=1"]
    )
    layout = validate(config, 8, cuda_available=True, planned=True).layout
    choice = LayoutChoice(1, config.parallel.micro_batch_size, "none")
    fit = predicted_fit(config, layout, choice, flash_attention=True)
    expected = stage_memory_2d(
        config.model, _vocab(config), 4, 2, 1, "none", config.parallel.micro_batch_size, True, "bf16"
    )
    assert fit.memory.total == expected.total
    one_d = predicted_fit(
        dataclasses.replace(config, parallel=dataclasses.replace(config.parallel, tensor_parallel_2d=False)),
        layout,
        choice,
        flash_attention=True,
    )
    assert fit.memory.activations < one_d.memory.activations
