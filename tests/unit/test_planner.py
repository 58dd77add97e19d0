"""The layout planner: its formulas against hand-computed values and the papers' own numbers, the
ranking, and the reasons a layout is rejected. No process group, no torch."""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from integration.errors import ConfigError
from integration.layout import Layout
from integration.model_size import flops_per_token, parameter_count
from integration.plan import model_vocab_size
from integration.planner import PlannerSettings, override_line, plan_layouts
from integration.planner.memory import (
    ActivationShape,
    ParamTensor,
    ZeroBuckets,
    adamw_groups,
    layer_activation_bytes,
    logits_bytes,
    model_states,
    output_layer_bytes,
    stage_parameters,
    step_transient_bytes,
    zero_buffers,
)
from integration.planner.settings import ZERO_REDUCE_BUCKET_SIZE
from integration.planner.timing import (
    Link,
    TimeInputs,
    all_gather,
    all_reduce,
    group_link,
    hardware_flops_per_token,
    neighbour_pairs,
    point_to_point,
    step_time,
)
from integration.validate import validate

ROOT = Path(__file__).resolve().parents[2]
GB = 1e9


def _vocab(config) -> int:
    return model_vocab_size(config.model, config.data.tokenizer, config.data.vocab_size)


# --- model states ---------------------------------------------------------------------------------


def test_zero_paper_7p5b_example():
    """Rajbhandari et al. 2020, figure 1: Ψ = 7.5B, K = 12, Nd = 64 in mixed precision."""
    # 7500 tensors of 1M parameters: above ZeRO-3's persistence threshold, and small enough that
    # ZeRO-2's whole straddling tensors (DeepSpeed's real allocation) add only ~2 MB to 14Ψ/Nd.
    tensors = tuple(ParamTensor(f"w{i}", 1_000_000, False) for i in range(7500))
    per_gpu = {stage: model_states(tensors, stage, 64, "bf16").total / GB for stage in range(4)}
    assert round(per_gpu[0], 1) == 120.0  # baseline (2 + 2 + 12)Ψ
    assert round(per_gpu[1], 1) == 31.4  # P_os: 2Ψ + 2Ψ + 12Ψ/Nd
    assert round(per_gpu[2], 1) == 16.6  # P_os+g: 2Ψ + 14Ψ/Nd
    assert round(per_gpu[3], 1) == 1.9  # P_os+g+p: 16Ψ/Nd


def test_zero_1_and_2_pad_each_group_to_twice_dp_and_stage_2_counts_straddling_gradients():
    # One AdamW group of two tensors (5 and 7 elements), dp 4: flat = ceil(12 / 8) · 8 = 16,
    # partition 4. fp32: params 16·4, master 4·4, moments 4·8.
    tensors = (ParamTensor("a", 5, False), ParamTensor("b", 7, False))
    z1 = model_states(tensors, 1, 4, "fp32")
    assert (z1.parameters, z1.gradients, z1.master, z1.optimizer) == (64, 48, 16, 32)
    # ZeRO-2 gradient partitions, elements: rank 0 [0,4) holds a (5); rank 1 [4,8) a (straddles)
    # + b = 12; rank 2 [8,12) b (straddles) = 7; rank 3 [12,16) only padding = 0.
    per_rank = [model_states(tensors, 2, 4, "fp32", dp_rank=r).gradients // 4 for r in range(4)]
    assert per_rank == [5, 12, 7, 0]
    assert model_states(tensors, 2, 4, "fp32").gradients == 12 * 4  # the largest rank


def test_zero_3_pads_each_tensor_and_keeps_small_ones_whole():
    big, small = ParamTensor("big", 1_000_003, False), ParamTensor("small", 10, True)
    states = model_states((big, small), 3, 4, "bf16")
    parts = math.ceil(1_000_003 / 4) + math.ceil(10 / 4)
    assert states.parameters == (parts + 10) * 2  # partitions + the persistent tensor whole
    assert states.gradients == parts * 2
    assert states.master == parts * 4
    assert states.optimizer == parts * 8
    # fp32: DeepSpeed still clones an fp32 master partition.
    assert model_states((big, small), 3, 4, "fp32").master == parts * 4


def test_offload_moves_optimizer_states_to_host():
    tensors = tuple(ParamTensor(f"w{i}", 1_000_000, False) for i in range(10))
    on_gpu = model_states(tensors, 2, 8, "bf16")
    offloaded = model_states(tensors, 2, 8, "bf16", offload="optimizer")
    assert offloaded.master == offloaded.optimizer == offloaded.gradients == 0
    assert offloaded.parameters == on_gpu.parameters
    assert offloaded.host > 0
    params = model_states(tensors, 3, 8, "bf16", offload="params")
    assert params.parameters == 0  # no tensor small enough to persist


@pytest.mark.parametrize("name", ["gpt_tiny", "gpt_125m", "gpt_1p3b", "llama_tiny", "llama_7b"])
def test_stage_parameters_add_up_to_the_closed_form_count(typed_config, name):
    config = typed_config([f"model={name}"])
    vocab = _vocab(config)
    one = sum(t.numel for t in stage_parameters(config.model, vocab, 1, 1, 0))
    assert one == parameter_count(config.model, vocab)
    # Two stages: the same parameters, plus DeepSpeed's tied copy of the embedding on the last.
    two = sum(t.numel for s in (0, 1) for t in stage_parameters(config.model, vocab, 1, 2, s))
    tied = config.model.share_embeddings_and_output_weights
    embedding = sum(t.numel for t in stage_parameters(config.model, vocab, 1, 2, 0) if "embedding" in t.name)
    assert two == one + (embedding if tied else 0)


# --- activations ----------------------------------------------------------------------------------

S, B, H, A, T = 2048, 2, 2048, 16, 4
SBH = S * B * H


@pytest.fixture
def gpt_shape(typed_config):
    """A GPT-3-shaped layer with dropout on: the paper's assumptions exactly."""
    config = typed_config(["model=gpt_1p3b", "stability=off"])
    return dataclasses.replace(config.model, hidden_dropout=0.1, attention_dropout=0.1)


def _act(model, t=1, sp=False, recompute="none", flash=False):
    return layer_activation_bytes(model, ActivationShape(B, t, sp, recompute, flash, "bf16"))


def test_activations_match_korthikanti_table_2(gpt_shape):
    scores = 5 * A * S / H
    assert _act(gpt_shape) == pytest.approx(SBH * (34 + scores))
    assert _act(gpt_shape, t=T) == pytest.approx(SBH * (10 + 24 / T + scores / T))
    assert _act(gpt_shape, t=T, sp=True) == pytest.approx(SBH / T * (34 + scores))
    assert _act(gpt_shape, t=T, recompute="selective") == pytest.approx(SBH * (10 + 24 / T))
    assert _act(gpt_shape, t=T, sp=True, recompute="selective") == pytest.approx(SBH * 34 / T)
    assert _act(gpt_shape, t=T, recompute="full") == pytest.approx(2 * SBH)
    assert _act(gpt_shape, t=T, sp=True, recompute="full") == pytest.approx(2 * SBH / T)


def test_flash_attention_stores_no_score_matrices(gpt_shape):
    # Only the fp32 log-sum-exp per query and head remains of the 5as²b term.
    assert _act(gpt_shape, flash=True) == pytest.approx(SBH * 34 + A * S * B * 4)


def test_logits_are_fp32_and_split_over_tp():
    class M:
        seq_length = 2048

    assert logits_bytes(M, 50304, 2, 4) == 4 * 2048 * 2 * 50304 / 4


def test_output_layer_is_korthikanti_section_4_3(gpt_shape):
    """4sbh/t·(1 + v/h) with sequence parallelism at 2 bytes: the final norm's and the output
    layer's inputs (2sbh each), and the fp32 logits 4sbv/t."""
    v = 50304
    shape = ActivationShape(B, T, True, "none", True, "bf16")
    assert output_layer_bytes(gpt_shape, v, shape) == pytest.approx(4 * SBH / T * (1 + v / H))
    # Without sequence parallelism the two inputs are replicated over tp; the logits stay split.
    replicated = ActivationShape(B, T, False, "none", True, "bf16")
    assert output_layer_bytes(gpt_shape, v, replicated) == pytest.approx(4 * SBH + 4 * S * B * v / T)


def test_llama_terms_beyond_the_paper(typed_config):
    """What Megatron-Core keeps in a Llama layer beyond Korthikanti's GPT layer, term by term
    (measured in tests/distributed/test_planner_measured.py)."""
    llama = typed_config(["model=llama_tiny", "stability=off"]).model
    s, b, h, ffn = llama.seq_length, 2, llama.hidden_size, llama.ffn_hidden_size
    kv = llama.num_query_groups * h // llama.num_attention_heads
    e = 4

    def act(model, **kw):
        return layer_activation_bytes(model, ActivationShape(b, 1, False, "none", True, "fp32", **kw))

    lse = llama.num_attention_heads * s * b * 4
    # TE norms: 4sbh of norm inputs / outputs; Q, K, V + attention output; RoPE's rotated Q and K;
    # SwiGLU: the fc1 output (2ffn), silu(x1), x2 + offset and their product (3ffn).
    expected = s * b * e * (4 * h + (h + 2 * kv + h) + (h + kv) + 2 * ffn + 3 * ffn) + lse
    assert act(llama) == pytest.approx(expected)
    # torch's composite RMSNorm keeps an fp32 input and an fp32 normalised input (8 bytes/element).
    assert act(llama, torch_norms=True) - act(llama) == pytest.approx(s * b * h * 2 * (8 - e))
    # QK-norm (TE): the GQA query copy the norm keeps; with torch's RMSNorm also the fp32 normalised Q, K.
    qk = dataclasses.replace(llama, qk_layernorm=True)
    assert act(qk) - act(llama) == pytest.approx(s * b * h * e)
    assert act(qk, torch_norms=True) - act(llama, torch_norms=True) == pytest.approx(
        s * b * (h * e + (h + kv) * 4)
    )


def test_full_recompute_peak_is_in_backward_without_the_output_layer(typed_config):
    """Full recompute: the stage peak is the kept layer inputs plus one recomputed layer (its input
    is the kept checkpoint), or the output layer at the end of forward, whichever is larger."""
    from integration.planner.memory import recompute_working_bytes, stage_memory

    config = typed_config(["model=gpt_tiny", "stability=off"])
    model, vocab = config.model, _vocab(config)
    full = ActivationShape(2, 1, False, "full", True, "fp32")
    none = ActivationShape(2, 1, False, "none", True, "fp32")
    layer_input = model.seq_length * 2 * model.hidden_size * 4
    assert recompute_working_bytes(model, full) == pytest.approx(
        layer_activation_bytes(model, none) - layer_input
    )
    m = stage_memory(model, vocab, 1, 1, 1, 0, 0, "none", 1, full)
    assert m.activations == pytest.approx(model.num_layers * layer_input)
    assert m.peak_activations == pytest.approx(m.activations + max(m.output_layer, m.recompute))
    assert stage_memory(model, vocab, 1, 1, 1, 0, 0, "none", 1, none).recompute == 0


def test_zero_buffers_follow_the_comm_group_and_the_pipeline_engine(typed_config):
    """One reduce bucket at ZeRO 1/2, of the comm group's size; two with overlap_comm or under the
    pipeline engine (measured whole-process peaks: tests/distributed/test_planner_measured.py)."""
    config = typed_config(["comm=overlap", "comm.reduce_bucket_size=1000"])
    tensors = stage_parameters(config.model, _vocab(config), 1, 1, 0)
    assert zero_buffers(tensors, 1, "fp32", buckets=ZeroBuckets.from_comm(config.comm)) == 2 * 1000 * 4
    assert zero_buffers(tensors, 1, "fp32", buckets=ZeroBuckets(reduce_bucket_size=1000)) == 1000 * 4
    assert zero_buffers(tensors, 2, "bf16") == ZERO_REDUCE_BUCKET_SIZE * 2
    assert zero_buffers(tensors, 1, "bf16", pipeline=True) == 2 * ZERO_REDUCE_BUCKET_SIZE * 2
    assert zero_buffers(tensors, 0, "bf16", pipeline=True) == 0
    assert ZeroBuckets.from_comm(typed_config([]).comm) == ZeroBuckets()
    no_contiguous = ZeroBuckets.from_comm(typed_config(["comm.contiguous_gradients=false"]).comm)
    assert zero_buffers(tensors, 1, "bf16", pipeline=True, buckets=no_contiguous) == 0


def test_step_transient_is_the_flat_gradient_copy_and_adams_temporaries(typed_config):
    """ZeRO 0: one flattened copy of the gradients for the all-reduce. ZeRO 1/2: the largest
    group's fp32 gradient partition plus Adam's temporaries of it (two on CPU, one on CUDA)."""
    config = typed_config([])
    tensors = stage_parameters(config.model, _vocab(config), 1, 1, 0)
    numel = sum(t.numel for t in tensors)
    largest = max(sum(g) for g in adamw_groups(tensors))
    assert step_transient_bytes(tensors, 0, 1, "fp32", "none", False, True) == numel * 4
    assert step_transient_bytes(tensors, 0, 2, "bf16", "none", False, False) == numel * 2
    dp = 2
    cpu = step_transient_bytes(tensors, 1, dp, "bf16", "none", False, True)
    gpu = step_transient_bytes(tensors, 2, dp, "bf16", "none", False, False)
    assert cpu == 3 * 4 * (math.ceil(largest / (2 * dp)) * 2 * dp) // dp  # padded to 2·dp, partitioned
    assert gpu == cpu * 2 // 3
    assert step_transient_bytes(tensors, 3, dp, "bf16", "none", False, False) == 0
    assert step_transient_bytes(tensors, 1, dp, "bf16", "optimizer", False, False) == 0
    assert step_transient_bytes(tensors, 0, 1, "bf16", "none", True, False) == 0  # BF16_Optimizer


def test_stage_total_takes_the_larger_of_backward_and_the_step(typed_config):
    from integration.planner.memory import memory_components, stage_memory

    config = typed_config(["model.recompute_granularity=full"])
    vocab = _vocab(config)
    shape = ActivationShape(1, 1, False, "full", True, "fp32", torch_norms=True)
    m = stage_memory(config.model, vocab, 1, 1, 1, 0, 0, "none", 1, shape, on_cpu=True)
    assert m.step > m.peak_activations  # full recompute keeps little; the gradient copy is larger
    assert m.total == m.states.total + m.buffers + m.step
    names = [name for name, _ in memory_components(m, 0)]
    assert "step transient" in names and "activations" not in names


def test_first_pipeline_stage_holds_p_micro_batches(typed_config):
    from integration.planner.memory import stage_memory

    config = typed_config(["model=gpt_1p3b", "cluster=h100_8x1"])
    vocab = _vocab(config)
    shape = ActivationShape(1, 1, False, "none", True, "bf16")
    per_layer = layer_activation_bytes(config.model, shape)
    layers = config.model.num_layers // 4
    for stage, in_flight in [(0, 4), (1, 3), (3, 1)]:
        m = stage_memory(config.model, vocab, 1, 4, 2, stage, 1, "none", 16, shape)
        assert m.activations == pytest.approx(layers * per_layer * in_flight)
    # Fewer micro-batches than stages: only those are in flight.
    assert stage_memory(config.model, vocab, 1, 4, 2, 0, 1, "none", 2, shape).activations == pytest.approx(
        layers * per_layer * 2
    )


# --- time -----------------------------------------------------------------------------------------


def test_ring_collectives_alpha_beta():
    link = Link("x", bandwidth=100e9, latency=5e-6)
    assert all_reduce(1e9, 8, link) == pytest.approx(2 * 7 * 5e-6 + 2 * 7 / 8 * 1e9 / 100e9)
    assert all_gather(1e9, 8, link) == pytest.approx(7 * 5e-6 + 7 / 8 * 1e9 / 100e9)
    assert point_to_point(1e6, link) == pytest.approx(5e-6 + 1e6 / 100e9)
    assert all_reduce(1e9, 1, link) == 0.0


def test_tensor_parallel_inside_a_node_uses_the_intra_node_link(typed_config):
    cluster = typed_config(["cluster=h100_8x4"]).cluster  # 4 nodes × 8
    tp8 = Layout(32, 8, 1, 4, 1, 4, 1)
    assert group_link(tp8.tensor_groups(), cluster).name == "intra-node"
    assert group_link(tp8.tensor_groups(), cluster).bandwidth == 450e9
    assert group_link(tp8.data_groups(), cluster).name == "inter-node"  # ranks 0, 8, 16, 24
    inter = group_link(Layout(32, 16, 1, 2, 1, 2, 1).tensor_groups(), cluster)
    assert inter.name == "inter-node"
    assert inter.bandwidth == pytest.approx(3200e9 / 8 / 8)  # the node's NICs shared by its 8 GPUs
    # tp 2 × dp 4 inside each node, pipeline stages across nodes.
    tp2_pp4 = Layout(32, 2, 4, 4, 1, 4, 1)
    assert group_link(tp2_pp4.data_groups(), cluster).name == "intra-node"
    assert group_link(neighbour_pairs(tp2_pp4.pipeline_groups()), cluster).name == "inter-node"
    single_node = typed_config(["cluster=h100_8x1"]).cluster
    assert group_link(Layout(8, 8, 1, 1, 1, 1, 1).tensor_groups(), single_node).name == "intra-node"


def test_recompute_flops(typed_config):
    config = typed_config(["model=gpt_1p3b"])
    model, vocab = config.model, _vocab(config)
    base = flops_per_token(model, vocab)
    logits = 6 * model.hidden_size * vocab
    assert hardware_flops_per_token(model, vocab, "none") == base
    assert hardware_flops_per_token(model, vocab, "full") == pytest.approx(logits + (base - logits) * 4 / 3)
    assert hardware_flops_per_token(model, vocab, "selective") == pytest.approx(
        base + model.num_layers * 4 * model.seq_length * model.hidden_size
    )


def test_single_gpu_step_is_flops_over_efficient_peak_plus_the_optimizer(typed_config):
    config = typed_config(["model=gpt_125m", "cluster=one_a100_40g"])
    model, vocab, cluster = config.model, _vocab(config), config.cluster
    params = parameter_count(model, vocab)
    x = TimeInputs(1, 1, 1, 4, 8, 0, "none", "none", False, "bf16", params)
    t = step_time(model, vocab, cluster, x, efficiency=0.5, cpu_adam_rate=1e9)
    compute = flops_per_token(model, vocab) * model.seq_length * 4 * 8 / (312e12 * 0.5)
    assert t.compute == pytest.approx(compute)
    assert t.optimizer == pytest.approx(params * 32 / 1555e9)
    assert t.tensor_parallel == t.pipeline == t.data_parallel == t.offload == 0
    assert t.total == pytest.approx(compute + params * 32 / 1555e9)


def test_pipeline_bubble_is_p_minus_1_over_m(typed_config):
    config = typed_config(["model=gpt_1p3b", "cluster=h100_8x1"])
    model, vocab = config.model, _vocab(config)
    x = TimeInputs(1, 4, 2, 1, 16, 1, "none", "none", False, "bf16", 10**8)
    t = step_time(model, vocab, config.cluster, x, efficiency=0.5, cpu_adam_rate=1e9)
    assert t.bubble_fraction == 3 / 16
    micro = t.compute / (16 + 3)
    assert t.compute == pytest.approx(micro * 16 * (1 + 3 / 16))


# --- enumeration, ranking, reasons ----------------------------------------------------------------


@pytest.fixture(scope="module")
def h100_plans():
    from tests.conftest import typed_train

    config = typed_train(["model=gpt_1p3b", "cluster=h100_8x4", "parallel.global_batch_size=64"])
    return config, plan_layouts(config, PlannerSettings(max_micro_batch_size=4))


def test_ranking_prefers_tensor_parallel_inside_a_node(h100_plans):
    _, plans = h100_plans
    fitting = [p for p in plans if p.fits]
    assert fitting
    assert 8 % fitting[0].candidate.tp == 0
    # The same layout with its tensor group across two nodes is slower.
    by_layout = {p.candidate: p for p in fitting}
    pairs = 0
    for c, plan in by_layout.items():
        if c.tp == 8:
            wide = dataclasses.replace(c, tp=16, dp=c.dp // 2) if c.dp % 2 == 0 else None
            if wide in by_layout:
                assert plan.tokens_per_s > by_layout[wide].tokens_per_s
                assert "tensor_model_parallel_size" in by_layout[wide].warnings[0]
                pairs += 1
    assert pairs
    best_wide = max(p.tokens_per_s for p in fitting if p.candidate.tp == 16)
    best_in_node = max(p.tokens_per_s for p in fitting if p.candidate.tp == 8)
    assert best_in_node > best_wide


def test_fitting_layouts_are_sorted_by_throughput(h100_plans):
    _, plans = h100_plans
    speeds = [p.tokens_per_s for p in plans if p.fits]
    assert speeds == sorted(speeds, reverse=True)
    assert all(p.headroom >= 0 for p in plans if p.fits)
    assert all(0 < p.mfu < 1 for p in plans if p.fits)


def test_rejected_layouts_say_why(h100_plans):
    _, plans = h100_plans
    rejected = {p.candidate: p.reasons for p in plans if not p.fits}
    assert all(rejected.values())

    def reasons(**kw):
        return next(r for c, r in rejected.items() if all(getattr(c, k) == v for k, v in kw.items()))

    assert any("pipeline engine supports ZeRO 0 and 1" in r for r in reasons(pp=2, zero_stage=2))
    assert any("parameter offload needs ZeRO 3" in r for r in reasons(zero_stage=1, offload="params"))
    assert any(
        "optimizer offload needs ZeRO 1, 2 or 3" in r for r in reasons(zero_stage=0, offload="optimizer")
    )
    assert any("not a multiple of micro_batch_size" in r for r in reasons(tp=1, pp=1, micro_batch_size=4))


def test_a_model_too_large_for_the_gpu_is_rejected_for_memory(typed_config):
    config = typed_config(["model=llama_7b", "cluster=one_a100_40g", "parallel.global_batch_size=8"])
    plans = plan_layouts(config, PlannerSettings(max_micro_batch_size=2))
    in_memory = [p for p in plans if p.candidate.offload == "none" and p.memory is not None]
    assert in_memory and not any(p.fits for p in in_memory)
    assert all(p.reasons[0].startswith("memory: needs") for p in in_memory)
    assert "> cluster.gpu_memory_gib 40" in in_memory[0].reasons[0]
    # ZeRO-Offload of the optimizer is what lets a 7B model train on one 40 GB GPU.
    assert any(p.fits and p.candidate.offload != "none" for p in plans)


def test_a_cluster_without_peak_flops_is_refused_with_the_key_to_set(typed_config):
    with pytest.raises(ConfigError, match=r"cluster\.peak_tflops_fp32: not set for cluster 'local_cpu'"):
        plan_layouts(typed_config([]))


def test_the_emitted_overrides_compose_and_validate_to_the_same_layout(h100_plans, typed_config):
    config, plans = h100_plans
    best = next(p for p in plans if p.fits)
    overrides = ["model=gpt_1p3b", "cluster=h100_8x4", *override_line(best).split()]
    again = typed_config(overrides)
    world = again.cluster.num_nodes * again.cluster.gpus_per_node
    layout = validate(again, world, cuda_available=True, planned=True, fused_norms_available=True).layout
    c = best.candidate
    assert (layout.tensor_parallel, layout.pipeline_parallel, layout.data_parallel) == (c.tp, c.pp, c.dp)
    assert layout.micro_batch_size == c.micro_batch_size
    assert again.parallel.zero_stage == c.zero_stage
    assert (again.model.recompute_granularity or "none") == c.recompute


def test_validate_refuses_tensor_parallel_wider_than_a_node_unless_forced(typed_config):
    overrides = ["model=gpt_1p3b", "cluster=h100_8x4", "parallel.tensor_model_parallel_size=16"]
    with pytest.raises(
        ConfigError,
        match=r"parallel\.tensor_model_parallel_size: 16 > cluster\.gpus_per_node\(8\), .* the planner "
        r"predicts [\d.]+ s of tensor-parallel traffic in a [\d.]+ s step \(\d+%\); use "
        r"parallel\.tensor_model_parallel_size<=8 .* or set force_layout=true",
    ):
        validate(typed_config(overrides), 32, cuda_available=True, planned=True)
    forced = validate(typed_config([*overrides, "force_layout=true"]), 32, cuda_available=True, planned=True)
    assert any(
        w.startswith("parallel.tensor_model_parallel_size: 16 > cluster.gpus_per_node(8)")
        and w.endswith("launching anyway (force_layout=true)")
        for w in forced.warnings
    )
    inside = typed_config(["model=gpt_1p3b", "cluster=h100_8x4", "parallel.tensor_model_parallel_size=8"])
    assert not validate(inside, 32, cuda_available=True, planned=True).warnings
    # tp narrower than a node but not dividing it: some groups straddle two nodes, a warning.
    six = typed_config(
        [
            "model=gpt_1p3b",
            "cluster=h100_8x4",
            "parallel.tensor_model_parallel_size=4",
            "parallel.global_batch_size=12",
        ]
    )
    six.cluster.gpus_per_node = 6
    (warning,) = validate(six, 24, cuda_available=True, planned=True).warnings
    assert warning.startswith(
        "parallel.tensor_model_parallel_size: 4 does not divide cluster.gpus_per_node(6)"
    )


def test_plan_command_prints_the_table_and_emits_overrides():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    args = [sys.executable, "launch/plan.py", "model=gpt_125m", "cluster=h100_8x1", "--max-micro-batch", "2"]
    table = subprocess.run(
        [*args, "--top", "3"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert table.returncode == 0, table.stderr
    rows = [line for line in table.stdout.splitlines() if line[:3].strip().isdigit()]
    assert len([r for r in rows if r.startswith(("  1", "  2", "  3"))]) >= 3
    assert "tokens/s" in table.stdout and "MFU" in table.stdout
    emitted = subprocess.run(
        [*args, "--emit"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert emitted.returncode == 0, emitted.stderr
    assert emitted.stdout.startswith("parallel.name=tp")
    refused = subprocess.run(
        [sys.executable, "launch/plan.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert refused.returncode == 2
    assert "config error: cluster.peak_tflops_fp32" in refused.stderr


# --- CPU machine facts (integration/planner/calibrate.py measures them) -------------------------


def test_cpu_terms_host_overhead_shared_cores_and_zero3_tensors(typed_config):
    """On a CPU the host time per layer is on the critical path, processes beyond the cores share
    them, and ZeRO-3 costs DeepSpeed's per-tensor work; a GPU preset has none of these terms."""
    config = typed_config(["model=gpt_125m", "cluster=one_a100_40g"])
    model, vocab = config.model, _vocab(config)
    params = parameter_count(model, vocab)
    x = TimeInputs(1, 1, 1, 4, 8, 0, "none", "none", False, "bf16", params)
    gpu = step_time(model, vocab, config.cluster, x, efficiency=0.5, cpu_adam_rate=1e9)
    cpu = dataclasses.replace(config.cluster, host_overhead_per_layer_us=100.0)
    with_host = step_time(model, vocab, cpu, x, efficiency=0.5, cpu_adam_rate=1e9)
    assert with_host.compute - gpu.compute == pytest.approx(8 * model.num_layers * 100e-6)
    # Two processes on one core: everything the processes compute takes twice as long.
    shared = dataclasses.replace(cpu, gpus_per_node=2, cores_per_node=1.0)
    slow = step_time(model, vocab, shared, x, efficiency=0.5, cpu_adam_rate=1e9)
    assert slow.compute == pytest.approx(2 * with_host.compute)
    assert slow.optimizer == pytest.approx(2 * with_host.optimizer)
    # ZeRO-3: the per-tensor cost once per micro-batch for every parameter tensor of the stage.
    z3 = TimeInputs(1, 1, 2, 4, 8, 3, "none", "none", False, "bf16", params)
    two = dataclasses.replace(config.cluster, gpus_per_node=2, intra_node_bandwidth_gb_per_s=100)
    base = step_time(model, vocab, two, z3, efficiency=0.5, cpu_adam_rate=1e9)
    costly = step_time(model, vocab, dataclasses.replace(two, zero3_tensor_overhead_us=1000.0), z3, 0.5, 1e9)
    tensors = len(stage_parameters(model, vocab, 1, 1, 0))
    assert costly.data_parallel - base.data_parallel == pytest.approx(8 * tensors * 1e-3)
    # ZeRO-2 likewise with its own figure, which ZeRO-3 does not pay.
    z2 = dataclasses.replace(z3, zero_stage=2)
    hooked = dataclasses.replace(two, zero2_tensor_overhead_us=400.0)
    assert step_time(model, vocab, hooked, z2, 0.5, 1e9).data_parallel - step_time(
        model, vocab, two, z2, 0.5, 1e9
    ).data_parallel == pytest.approx(8 * tensors * 400e-6)
    assert step_time(model, vocab, hooked, z3, 0.5, 1e9).data_parallel == base.data_parallel
    # ZeRO-1 runs the same reduction once per step, whatever the micro-batches; ZeRO-0 not at all.
    z1 = dataclasses.replace(z3, zero_stage=1)
    assert step_time(model, vocab, hooked, z1, 0.5, 1e9).data_parallel - step_time(
        model, vocab, two, z1, 0.5, 1e9
    ).data_parallel == pytest.approx(tensors * 400e-6)
    z0 = dataclasses.replace(z3, zero_stage=0)
    assert step_time(model, vocab, hooked, z0, 0.5, 1e9) == step_time(model, vocab, two, z0, 0.5, 1e9)


def test_calibration_turns_measurements_into_cluster_facts(typed_config):
    from integration.planner.calibrate import Collective, CpuCalibration, ModelPass, _line

    slope, intercept = _line([(1, 0.03), (2, 0.05), (4, 0.09), (8, 0.17)])
    assert (slope, intercept) == (pytest.approx(0.02), pytest.approx(0.01))
    calibration = CpuCalibration(
        gemm_flops_per_process={1: 60e9, 2: 54e9, 4: 30e9},
        model=ModelPass(48e9, 0.012, ((1, 0.1), (8, 0.5))),
        adam_bytes_per_s=5e9,
        collectives=(
            Collective(
                2,
                500e-6,
                1.2e9,
                processes=2,
                points=((1 << 10, 1.0e-3), (4 << 20, 4.5e-3)),
                sweeps=(((1 << 10, 1.0e-3), (4 << 20, 4.4e-3)), ((1 << 10, 1.1e-3), (4 << 20, 4.5e-3))),
            ),
            Collective(2, 900e-6, 0.7e9, processes=4),
            Collective(4, 800e-6, 1.0e9, processes=4),
        ),
        zero3_tensor_s=2e-3,
        optimizer_step_bytes_per_s=4e9,
    )
    assert calibration.cores(2) == pytest.approx(1.8)
    assert calibration.cores(4) == pytest.approx(2.0)
    assert calibration.settings().compute_efficiency == pytest.approx(0.8)
    base = typed_config([]).cluster  # local_cpu
    cluster = calibration.cluster(base, "fp32", num_layers=4, processes=4)
    assert cluster.peak_tflops_fp32 == pytest.approx(0.06)
    assert cluster.gpus_per_node == 4 and cluster.cores_per_node == pytest.approx(2.0)
    assert cluster.host_overhead_per_layer_us == pytest.approx(3000.0)
    # The pairs' all-reduce as measured with all 4 processes busy, not with 2.
    assert cluster.intra_node_latency_us == pytest.approx(900.0)
    assert cluster.intra_node_bandwidth_gb_per_s == pytest.approx(0.7)
    two = calibration.cluster(base, "fp32", num_layers=4, processes=2)
    assert two.intra_node_latency_us == pytest.approx(500.0)
    assert two.intra_node_bandwidth_gb_per_s == pytest.approx(1.2)
    assert calibration.collective(2, 3).processes == calibration.collective(2).processes == 4
    assert calibration.collective(4, 2).latency_s == pytest.approx(800e-6)
    with pytest.raises(ValueError, match="no all-reduce over 8 ranks"):
        calibration.collective(8, 8)
    assert cluster.gpu_memory_bandwidth_gb_per_s == pytest.approx(4.0)  # the engine's whole step
    assert cluster.zero3_tensor_overhead_us == pytest.approx(2000.0)
    assert CpuCalibration.from_dict(json_roundtrip(calibration.as_dict())) == calibration

    # Measured on a model of 50 tensors and 12 MB of gradients: the 3 gathers per micro-batch the
    # time model charges itself, 3·(500 µs + ½·12 MB / 1.2 GB/s) = 16.5 ms, come out of its 100 ms.
    # ZeRO-2's one reduce-scatter per micro-batch, a third of that, comes out of its figure.
    net = dataclasses.replace(calibration, zero3_tensors=50, zero3_gathered_bytes=12e6, zero2_tensor_s=1e-3)
    assert net.cluster(base, "fp32", 4, 2).zero3_tensor_overhead_us == pytest.approx(2000 - 330)
    assert net.cluster(base, "fp32", 4, 2).zero2_tensor_overhead_us == pytest.approx(1000 - 110)
    assert CpuCalibration.from_dict(json_roundtrip(net.as_dict())) == net

    # Where the model's own forward + backward was timed with n processes at once, that slowdown,
    # not the GEMMs', says how many cores the processes get.
    measured = dataclasses.replace(calibration, engine_slowdown={1: 1.0, 2: 1.4, 4: 2.5})
    assert measured.cores(2) == pytest.approx(2 / 1.4)
    assert measured.cores(3) == measured.cores(4) == measured.cores() == pytest.approx(1.6)
    assert measured.cluster(base, "fp32", 4, processes=2).cores_per_node == pytest.approx(2 / 1.4)
    assert CpuCalibration.from_dict(json_roundtrip(measured.as_dict())) == measured
    # Never more cores than the machine has CPUs, however fast the processes ran together.
    lucky = dataclasses.replace(measured, engine_slowdown={1: 1.0, 2: 1.0, 4: 1.97}, cpu_count=2)
    assert lucky.cores(2) == pytest.approx(2.0) and lucky.cores(4) == pytest.approx(2.0)
    assert dataclasses.replace(lucky, cpu_count=0).cores(4) == pytest.approx(4 / 1.97)
    assert CpuCalibration.from_dict(json_roundtrip(lucky.as_dict())) == lucky


def test_ring_fit_recovers_alpha_and_beta_and_one_noisy_size_cannot_run_away():
    from integration.planner.calibrate import ALL_REDUCE_SIZES, ring_fit

    def ring(size, alpha, beta, nbytes):
        return 2 * (size - 1) * alpha + 2 * (size - 1) / size * nbytes / beta

    for size in (2, 4):
        exact = [(b, ring(size, 300e-6, 1e9, b)) for b in ALL_REDUCE_SIZES]
        assert ring_fit(size, exact) == (pytest.approx(300e-6), pytest.approx(1e9))

    # Round 1 of the _zero0 results, the pair link with four processes busy: its 4 MiB time came out
    # at 5.05 ms where the other rounds had 7.98-11.78 ms (α about 2 ms, β about 0.9 GB/s), and the
    # two-size estimate (1 KiB as latency, 4 MiB's excess as bandwidth) gave β 6.1 GB/s. The same
    # pattern here: the two-size β is over 4× the truth; fitted over every size, within 1.7×.
    true_times = [(b, ring(2, 2e-3, 0.9e9, b)) for b in ALL_REDUCE_SIZES]
    noisy = [(b, 5.05e-3 if b == 4 << 20 else t) for b, t in true_times]
    two_size_beta = (4 << 20) / (5.05e-3 - noisy[0][1])
    alpha, beta = ring_fit(2, noisy)
    assert two_size_beta > 4 * 0.9e9
    assert 0.9e9 / 1.7 < beta < 0.9e9 * 1.7 and 1e-3 < alpha < 3e-3

    # The guards: a time floored at 1e-9 s (the GEMM alone ran slower) is left out instead of
    # pinning the line; a line that falls (noise larger than the bandwidth term) keeps α within the
    # fastest time and β at most twice what the largest size alone implies; two sizes are needed.
    floored = [(1 << 10, 1e-9), (256 << 10, 1.5e-3), (4 << 20, 5e-3), (16 << 20, 17e-3)]
    assert ring_fit(2, floored) == ring_fit(2, floored[1:])
    assert ring_fit(2, floored)[0] > 0
    falling = [(1 << 10, 9e-3), (256 << 10, 6e-3), (4 << 20, 7e-3), (16 << 20, 5e-3)]
    alpha, beta = ring_fit(2, falling)
    assert alpha == pytest.approx(5e-3 / 2) and beta == pytest.approx(2 * (16 << 20) / 5e-3)
    with pytest.raises(ValueError, match="fewer than two sizes"):
        ring_fit(2, [(1 << 10, 1e-9), (4 << 20, 1e-9), (16 << 20, 4e-3)])


def test_sweep_medians_pass_over_one_slow_sweep_per_size_but_not_two():
    from integration.planner.calibrate import ALL_REDUCE_SIZES, median_points, ring_fit

    def ring(nbytes, alpha=900e-6, beta=0.9e9):
        return 2 * alpha + nbytes / beta

    def slowed(sweep, sizes):
        return tuple((b, t + 4e-3 if b in sizes else t) for b, t in sweep)

    steady = tuple((b, ring(b)) for b in ALL_REDUCE_SIZES)
    fast = tuple((b, t * 0.9) for b, t in steady)
    small = {1 << 10, 256 << 10}
    # Round 3 of the step-interval results, the pair with four processes busy, one sweep: its 1 KiB
    # and 256 KiB times 4.36 and 6.58 ms made α 2180 µs against 761 and 1082 in the other rounds.
    assert ring_fit(2, list(slowed(steady, small)))[0] > 2 * 900e-6
    assert median_points([slowed(steady, small), steady, fast]) == list(steady)
    # Slow times fall in different sweeps at different sizes, as in sweep-medians: still passed over.
    mixed = [slowed(fast, {1 << 10}), steady, slowed(steady, {256 << 10})]
    assert median_points(mixed) == list(steady)
    alpha, beta = ring_fit(2, median_points(mixed))
    assert alpha == pytest.approx(900e-6) and beta == pytest.approx(0.9e9)
    # Two slow sweeps of three at one size (sweep-medians round 1, 1 KiB: 6.11, 2.02, 4.93 ms): the
    # median is slow too; it narrows the spread, it does not remove it.
    assert median_points([slowed(steady, {1 << 10}), fast, slowed(steady, {1 << 10})])[0] == (
        1 << 10,
        ring(1 << 10) + 4e-3,
    )
    # An even count takes the upper middle, a time that was measured.
    assert median_points([fast, steady]) == list(steady)
    with pytest.raises(ValueError, match="different sizes"):
        median_points([steady, steady[1:]])
    with pytest.raises(ValueError, match="no sweeps"):
        median_points([])


def test_engine_slowdowns_are_the_fastest_together_over_the_fastest_alone():
    """Each n from its own world's passes: the fastest pass with every rank computing over the
    fastest with rank 0 alone, never below 1 (a lucky pass cannot make the node faster than one
    process alone); a world whose every alone chunk was disturbed is an error, not a guess."""
    from integration.planner.calibrate import engine_slowdowns

    passes = {
        4: [(0.40, 0.19), (0.38, 0.17), (0.45, float("inf"))],
        2: [(0.21, 0.20), (0.19, 0.17), (0.25, 0.18)],
        3: [(0.16, 0.18), (0.17, 0.19)],
    }
    slowdowns = engine_slowdowns(passes)
    assert slowdowns == pytest.approx({1: 1.0, 2: 0.19 / 0.17, 3: 1.0, 4: 0.38 / 0.17})
    assert list(slowdowns) == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="no pass of the 2-process world timed rank 0 alone"):
        engine_slowdowns({2: [(0.2, float("inf"))]})


def json_roundtrip(data: dict) -> dict:
    import json

    return json.loads(json.dumps(data))
