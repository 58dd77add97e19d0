"""Pre-flight validation: each bad config is refused with a message naming key, value and fix."""

from __future__ import annotations

import re

import pytest
import torch

from integration.errors import ConfigError
from integration.model_size import padded_vocab_size
from integration.validate import validate


def bad(overrides: list[str], world_size: int, pattern: str, id: str, planned: bool = False):
    return pytest.param(overrides, world_size, planned, pattern, id=id)


# (Hydra overrides, world size, planned, regex the ConfigError must match)
BAD_CONFIGS = [
    bad(
        ["parallel=tp2"],
        3,
        r"parallel: tp\(2\) × pp\(1\) = 2 does not divide world_size\(3\); launch a multiple of 2 processes",
        "world-not-multiple-of-tp",
    ),
    bad(
        ["parallel=tp2_pp2"],
        6,
        r"parallel: tp\(2\) × pp\(2\) = 4 does not divide world_size\(6\); set cluster\.gpus_per_node "
        r"\(× cluster\.num_nodes\) to a multiple of 4",
        "planned-world-not-multiple-of-tp-pp",
        planned=True,
    ),
    bad(
        ["parallel=tp2", "model.num_attention_heads=3", "model.hidden_size=66", "model.ffn_hidden_size=264"],
        2,
        r"model\.num_attention_heads: 3 is not divisible by tensor_model_parallel_size\(2\); .*"
        r"parallel\.tensor_model_parallel_size=1",
        "heads-not-divisible-by-tp",
    ),
    bad(
        ["model=llama_tiny", "parallel=tp2", "model.num_query_groups=1"],
        2,
        r"model\.num_query_groups: 1 key/value heads are not divisible by tensor_model_parallel_size\(2\); "
        r"lower tp or raise model\.num_query_groups",
        "kv-heads-not-divisible-by-tp",
    ),
    bad(
        ["parallel=pp2", "model.num_layers=3"],
        2,
        r"model\.num_layers: 3 is not divisible by pipeline_model_parallel_size\(2\); .*"
        r"parallel\.partition_method=parameters",
        "layers-not-divisible-by-pp",
    ),
    bad(
        ["parallel=dp", "parallel.global_batch_size=6"],
        2,
        r"parallel\.global_batch_size: 6 is not a multiple of micro_batch_size\(2\) × data_parallel\(2\) = 4; "
        r"set parallel\.global_batch_size=4",
        "global-batch-not-multiple",
    ),
    bad(
        ["model.max_position_embeddings=64"],
        1,
        r"model\.seq_length: 128 exceeds max_position_embeddings\(64\); set model\.max_position_embeddings=128",
        "seq-longer-than-positions",
    ),
    bad(
        # 258 byte tokens padded to a multiple of 1 stay 258, which splits over tp 2; 259 does not.
        ["parallel=tp2", "model.make_vocab_size_divisible_by=1", "model.vocab_size=259"],
        2,
        r"model\.make_vocab_size_divisible_by: 1 pads the vocabulary to 259, which does not split over "
        r"tensor_model_parallel_size\(2\); set model\.make_vocab_size_divisible_by=2",
        "padded-vocab-not-divisible-by-tp",
    ),
    bad(
        ["model.vocab_size=100"],
        1,
        r"model\.vocab_size: 100 is smaller than the data's vocabulary \(258\); set model\.vocab_size=258",
        "model-vocab-smaller-than-tokenizer",
    ),
    bad(
        ["parallel=pp2", "parallel.zero_stage=2"],
        2,
        r"parallel\.zero_stage: 2 with pipeline_model_parallel_size\(2\) > 1 .*set parallel\.zero_stage=1",
        "zero2-with-pipeline",
    ),
    bad(
        ["parallel.zero_stage=5"],
        1,
        r"parallel\.zero_stage: 5 is not a ZeRO stage; use 0, 1, 2 or 3",
        "zero-stage-5",
    ),
    bad(
        ["precision=fp16"],
        1,
        r"precision\.dtype: 'fp16' is not supported on cpu .*use precision=bf16 or precision=fp32",
        "fp16-on-cpu",
    ),
    bad(
        ["cluster.device=cuda", "cluster.backend=nccl"],
        1,
        r"cluster\.device: 'cuda' but no CUDA device is visible .*use cluster=local_cpu",
        "cuda-without-cuda",
    ),
    bad(
        ["cluster.backend=nccl"],
        1,
        r"cluster\.backend: 'nccl' does not work with device 'cpu'; use cluster\.backend=gloo",
        "nccl-on-cpu",
    ),
    bad(
        ["parallel.sequence_parallel=true"],
        1,
        r"parallel\.sequence_parallel: true needs tensor_model_parallel_size > 1; set "
        r"parallel\.sequence_parallel=false",
        "sequence-parallel-without-tp",
    ),
    bad(
        ["model.normalization=BatchNorm"],
        1,
        r"model\.normalization: 'BatchNorm' is unknown; use one of .*'RMSNorm'",
        "unknown-normalization",
    ),
    bad(
        ["model.activation=relu"],
        1,
        r"model\.activation: 'relu' is unknown; use one of .*'swiglu'",
        "unknown-activation",
    ),
    bad(
        ["optim.warmup_steps=200"],
        1,
        r"optim\.warmup_steps: 200 must be between 2 and the schedule length \(trainer\.max_steps = "
        r"100\); lower optim\.warmup_steps or raise trainer\.max_steps",
        "warmup-longer-than-schedule",
    ),
    bad(
        ["optim.decay_steps=5"],
        1,
        r"optim\.warmup_steps: 10 must be between 2 and the schedule length \(optim\.decay_steps = 5\); "
        r"lower optim\.warmup_steps or raise optim\.decay_steps",
        "warmup-longer-than-explicit-decay",
    ),
    bad(
        ["optim.warmup_steps=1"],
        1,
        r"optim\.warmup_steps: 1 must be between 2 and the schedule length",
        "warmup-of-one-step",
    ),
    bad(
        ["data.split='98,2'"],
        1,
        r"data\.split: '98,2' must be three weights 'train,valid,test', e\.g\. data\.split='98,2,0'",
        "split-two-parts",
    ),
    bad(
        ["data.split='a,b,c'"],
        1,
        r"data\.split: 'a,b,c' must be three weights .*data\.split='98,2,0'",
        "split-not-numbers",
    ),
    bad(
        ["data.split='100,0,0'"],
        1,
        r"data\.split: '100,0,0' has no validation share but trainer\.eval_interval is 50; .*"
        r"trainer\.eval_interval=0",
        "eval-without-validation-share",
    ),
    bad(
        ["wandb.mode=bogus"],
        1,
        r"wandb\.mode: 'bogus' is unknown; use online, offline or disabled",
        "wandb-mode",
    ),
    bad(
        ["parallel.micro_batch_size=-2"],
        1,
        r"parallel\.micro_batch_size: -2 must be a positive integer; set parallel\.micro_batch_size=1 or more",
        "negative-micro-batch",
    ),
    bad(
        ["parallel=pp2", "parallel.partition_method=bogus"],
        2,
        r"parallel\.partition_method: 'bogus' is unknown; use uniform, parameters or type:<regex>",
        "partition-method",
    ),
    bad(
        ["data.tokenizer=gpt2"],
        1,
        r"data\.tokenizer: 'gpt2' is unknown; use data\.tokenizer=byte.*data\.vocab_size=N",
        "unknown-tokenizer",
    ),
    bad(
        ["data.path=null"],
        1,
        r"data\.path: an indexed dataset needs the \.bin/\.idx prefix; set data\.path=\.\.\. or data=corpus",
        "indexed-without-path",
    ),
    bad(
        ["trainer.eval_iters=0"],
        1,
        r"trainer\.eval_iters: 0 must be >= 1 when evaluation is on; set trainer\.eval_iters=1",
        "eval-iters-zero",
    ),
    bad(
        ["optim.betas=[0.9,1.0]"],
        1,
        r"optim\.betas: \[0\.9, 1\.0\] must be two numbers in \[0, 1\), e\.g\. optim\.betas=\[0\.9,0\.95\]",
        "beta-one",
    ),
    bad(
        ["model.num_query_groups=0"],
        1,
        r"model\.num_query_groups: 0 must be >= 1; use null",
        "zero-query-groups",
    ),
    bad(
        ["stability.spike.sigma=0"],
        1,
        r"stability\.spike\.sigma: 0\.0 must be > 0, e\.g\. stability\.spike\.sigma=6",
        "spike-sigma-zero",
    ),
    bad(
        ["stability.spike.min_history=200"],
        1,
        r"stability\.spike\.min_history: 200 must be between 2 and stability\.spike\.window \(128\)",
        "spike-history-longer-than-window",
    ),
    bad(
        ["stability.spike.on_loss=false", "stability.spike.on_grad_norm=false"],
        1,
        r"stability\.spike: enabled but neither on_loss nor on_grad_norm",
        "spike-watches-nothing",
    ),
    bad(
        ["stability.z_loss=-1e-4"],
        1,
        r"stability\.z_loss: -0\.0001 must be >= 0 \(0 disables; PaLM uses stability\.z_loss=1e-4\)",
        "negative-z-loss",
    ),
    bad(
        ["stability.embedding_grad_shrink=0"],
        1,
        r"stability\.embedding_grad_shrink: 0\.0 must be in \(0, 1\] \(1 disables; GLM-130B uses "
        r"stability\.embedding_grad_shrink=0\.1\)",
        "embedding-shrink-zero",
    ),
    bad(
        ["stability.rollback.after_consecutive_spikes=0"],
        1,
        r"stability\.rollback\.after_consecutive_spikes: 0 must be >= 1",
        "rollback-after-zero-spikes",
    ),
    bad(
        ["cluster.launcher=mpirun"],
        1,
        r"cluster\.launcher: 'mpirun' is not a deepspeed runner launcher; use one of pdsh, slurm, openmpi, "
        r"mpich, impi, mvapich \(e\.g\. cluster\.launcher=pdsh\)",
        "unknown-launcher",
    ),
    bad(
        ["cluster.hosts=[a]", "cluster.hostfile=/job/hostfile"],
        1,
        r"cluster\.hosts: \['a'\] and cluster\.hostfile=/job/hostfile both name the nodes; keep one "
        r"\(cluster\.hostfile=null, or cluster\.hosts=\[\]\)",
        "hosts-and-hostfile",
    ),
    bad(
        ["cluster.num_nodes=2", "cluster.hosts=[a]"],
        2,
        r"cluster\.hosts: 1 host\(s\) \['a'\] for cluster\.num_nodes\(2\); list 2 hosts or set "
        r"cluster\.num_nodes=1",
        "fewer-hosts-than-nodes",
        planned=True,
    ),
    bad(
        ["cluster.num_nodes=2", "cluster.hosts=[a,a]"],
        2,
        r"cluster\.hosts: \['a'\] listed more than once; list each node once",
        "repeated-host",
        planned=True,
    ),
    bad(
        ['cluster.hosts=["node 0"]'],
        1,
        r"cluster\.hosts: \['node 0'\] — a host is one name or address, without spaces",
        "host-with-space",
    ),
    bad(
        ["cluster.ssh_port=70000"],
        1,
        r"cluster\.ssh_port: 70000 is not a TCP port; use 1-65535",
        "ssh-port-out-of-range",
    ),
    bad(
        ["+cluster.env.LD_LIBRARY_PATH=$HOME/lib"],
        1,
        r"cluster\.env\.LD_LIBRARY_PATH: '\$HOME/lib' holds a quote, backslash, '\$', '`' or newline, "
        r"which the runner's export line would let the node's shell interpret; write the value literally",
        "env-value-the-shell-would-expand",
    ),
    bad(
        ["compression=int8_qat", "compression.weight_quantization.target_bits=16"],
        1,
        r"compression\.weight_quantization\.target_bits: 16 is outside 2\.\.8 \(codes are exported one per "
        r"byte\); e\.g\. compression\.weight_quantization\.target_bits=8",
        "quantization-bits-out-of-range",
    ),
    bad(
        ["compression=int8_qat", "compression.weight_quantization.quantization_type=ternary"],
        1,
        r"compression\.weight_quantization\.quantization_type: 'ternary' is unknown; use symmetric or asymmetric",
        "quantization-type-unknown",
    ),
    bad(
        ["compression=int8_qat", "compression.weight_quantization.quantize_groups=5"],
        1,
        r"compression\.weight_quantization\.quantize_groups: 5 does not divide the output rows \[64, 192, 256\] "
        r"of the quantized matrices \(groups are blocks of whole rows\); use a divisor of 64",
        "quantization-groups-split-rows",
    ),
    bad(
        [
            "compression=int8_qat",
            "trainer.max_steps=20",
            "compression.weight_quantization.schedule_offset=20",
        ],
        1,
        r"compression\.weight_quantization\.schedule_offset: 20 is outside the run's steps 0\.\.19 "
        r"\(trainer\.max_steps = 20\), so the technique would never be applied",
        "quantization-offset-after-the-run",
    ),
    bad(
        ["compression=sparse_50", "compression.sparse_pruning.dense_ratio=1.5"],
        1,
        r"compression\.sparse_pruning\.dense_ratio: 1\.5 must be in \(0, 1\] \(the fraction of weights kept\)",
        "pruning-ratio-out-of-range",
    ),
    bad(
        ["compression=sparse_50", "compression.sparse_pruning.method=topk"],
        1,
        r"compression\.sparse_pruning\.method: 'topk' is not implemented; use l1",
        "pruning-method-topk",
    ),
    bad(
        ["compression=sparse_50", "compression.sparse_pruning.modules=[attention.dense]"],
        1,
        r"compression\.sparse_pruning\.modules: \['attention\.dense'\] match no transformer linear layer of "
        r"model gpt_tiny",
        "pruning-modules-match-nothing",
    ),
    bad(
        ["parallel=pp2", "compression=int8_qat"],
        2,
        r"parallel\.pipeline_model_parallel_size: 2 — compression is implemented for the plain DeepSpeed "
        r"engine only \(no pipeline stages\); set parallel\.pipeline_model_parallel_size=1 or compression=none",
        "compression-with-pipeline",
    ),
    bad(
        ["parallel=tp2d_2x2", "compression=int8_qat"],
        4,
        r"parallel\.tensor_parallel_2d: true — compression adapts Megatron-Core's 1D tensor-parallel layers",
        "compression-with-2d-tensor-parallel",
    ),
    bad(
        ["parallel=dp", "parallel.zero_stage=3", "compression=sparse_50"],
        2,
        r"parallel\.zero_stage: 3 — ZeRO-3 partitions the weights that pruning and the export read whole",
        "compression-with-zero3",
    ),
    bad(
        ["offload=optimizer_cpu"],
        1,
        r"offload\.optimizer\.device: 'cpu' needs ZeRO 1, 2 or 3 .*parallel\.zero_stage is 0; set "
        r"parallel\.zero_stage=2 or offload=none",
        "optimizer-offload-at-zero0",
    ),
    bad(
        ["offload=params_cpu", "parallel.zero_stage=2"],
        1,
        r"offload\.param\.device: 'cpu' needs ZeRO 3 .*parallel\.zero_stage is 2; set parallel\.zero_stage=3 "
        r"or offload=optimizer_cpu",
        "param-offload-below-zero3",
    ),
    bad(
        ["parallel=pp2", "parallel.zero_stage=1", "offload=params_cpu"],
        2,
        r"offload\.param\.device: 'cpu' needs ZeRO 3, which DeepSpeed's pipeline engine .*use "
        r"offload=optimizer_cpu parallel\.zero_stage=1",
        "param-offload-with-pipeline",
    ),
    bad(
        ["offload=optimizer_nvme", "parallel.zero_stage=3"],
        1,
        r"offload\.optimizer\.nvme_path: not set; .*set offload\.optimizer\.nvme_path=/local_nvme",
        "nvme-offload-without-path",
    ),
    bad(
        ["offload=optimizer_nvme", "parallel.zero_stage=2", "offload.optimizer.nvme_path=/local_nvme"],
        1,
        r"offload\.optimizer\.device: 'nvme' swaps through ZeRO-Infinity, which needs ZeRO 3 .*set "
        r"parallel\.zero_stage=3 or offload\.optimizer\.device=cpu",
        "nvme-offload-below-zero3",
    ),
    bad(
        ["offload.optimizer.device=gpu", "parallel.zero_stage=1"],
        1,
        r"offload\.optimizer\.device: 'gpu' is unknown; use none, cpu or nvme",
        "offload-device-unknown",
    ),
    bad(
        ["comm=overlap_quantized", "parallel=dp", "parallel.zero_stage=3"],
        2,
        r"comm\.zero_quantized_weights: true needs DeepSpeed's CUDA quantizer kernels .*set "
        r"comm\.zero_quantized_weights=false",
        "quantized-weights-on-cpu",
    ),
    bad(
        ["comm.zero_quantized_gradients=true", "parallel=dp", "parallel.zero_stage=2"],
        2,
        r"comm\.zero_quantized_gradients: true is ZeRO\+\+, which quantizes ZeRO-3 collectives, but "
        r"parallel\.zero_stage is 2; set parallel\.zero_stage=3",
        "quantized-gradients-below-zero3",
    ),
    bad(
        ["parallel=dp", "parallel.zero_stage=1", "comm.zero_hpz_partition_size=2"],
        2,
        r"comm\.zero_hpz_partition_size: 2 \(ZeRO\+\+ hpZ\) .*parallel\.zero_stage is 1; set "
        r"parallel\.zero_stage=3",
        "hpz-below-zero3",
    ),
    bad(
        ["parallel=dp", "parallel.zero_stage=3", "comm.zero_hpz_partition_size=4"],
        2,
        r"comm\.zero_hpz_partition_size: 4 does not divide the data-parallel size 2",
        "hpz-not-dividing-dp",
    ),
    bad(
        [
            "parallel=dp",
            "parallel.zero_stage=3",
            "comm.zero_hpz_partition_size=4",
            "cluster.num_nodes=2",
            "cluster.gpus_per_node=2",
        ],
        4,
        r"comm\.zero_hpz_partition_size: 4 does not divide the 2 processes per node, so hpZ groups would "
        r"span nodes; set comm\.zero_hpz_partition_size=2",
        "hpz-spanning-nodes",
        planned=True,
    ),
    bad(
        ["parallel=tp2", "parallel.zero_stage=3", "comm.zero_hpz_partition_size=2"],
        4,
        r"comm\.zero_hpz_partition_size: 2 with tensor_model_parallel_size 2 — DeepSpeed forms hpZ groups "
        r"from consecutive global ranks",
        "hpz-with-tensor-parallel",
    ),
    bad(
        ["precision=bf16", "comm.grad_accum_dtype=fp32"],
        1,
        r"comm\.grad_accum_dtype: 'fp32' differs from the bf16 model, .*set parallel\.zero_stage=1",
        "grad-accum-dtype-at-zero0",
    ),
    bad(
        ["parallel.zero_stage=1", "comm.grad_accum_dtype=bf16"],
        1,
        r"comm\.grad_accum_dtype: 'bf16' with precision fp32 — gradients accumulate in fp32 or in the "
        r"model's dtype",
        "grad-accum-dtype-below-fp32",
    ),
    bad(
        ["parallel.zero_stage=2", "comm.reduce_bucket_size=0"],
        1,
        r"comm\.reduce_bucket_size: 0 must be a positive number of elements",
        "reduce-bucket-zero",
    ),
]


def test_the_table_is_broad():
    assert len(BAD_CONFIGS) >= 18
    assert len({p.id for p in BAD_CONFIGS}) == len(BAD_CONFIGS)


@pytest.mark.parametrize(("overrides", "world_size", "planned", "pattern"), BAD_CONFIGS)
def test_bad_config_is_refused(typed_config, overrides, world_size, planned, pattern):
    config = typed_config(overrides)
    with pytest.raises(ConfigError, match=pattern):
        validate(config, world_size, cuda_available=False, planned=planned)


@pytest.mark.parametrize(("overrides", "world_size", "planned", "pattern"), BAD_CONFIGS)
def test_each_bad_config_is_one_override_away_from_a_good_one(
    typed_config, overrides, world_size, planned, pattern
):
    """Guards the table: without the bad overrides (and on a world that fits) the config validates,
    so each row fails for the reason it names, not for an unrelated one."""
    config = typed_config([o for o in overrides if o.startswith(("parallel=", "model="))])
    par = config.parallel
    fitting_world = par.tensor_model_parallel_size * par.pipeline_model_parallel_size
    validate(config, fitting_world, cuda_available=False, planned=planned)


def test_sequence_parallel_needs_fused_norms(typed_config):
    config = typed_config(["parallel=tp2", "parallel.sequence_parallel=true"])
    with pytest.raises(
        ConfigError,
        match=r"parallel\.sequence_parallel: true needs Transformer Engine or Apex norms .*install "
        r"transformer-engine or set parallel\.sequence_parallel=false",
    ):
        validate(config, 2, cuda_available=False)
    assert validate(config, 2, cuda_available=False, fused_norms_available=True).layout.tensor_parallel == 2


def test_cuda_settings_pass_where_cuda_is_available(typed_config):
    config = typed_config(["cluster.device=cuda", "cluster.backend=nccl", "precision=fp16"])
    assert validate(config, 1, cuda_available=True).layout.world_size == 1


def test_byte_vocabulary_with_padding_one_still_splits_over_tp2(typed_config):
    # 258 is even, so make_vocab_size_divisible_by=1 leaves a vocabulary tp 2 can split.
    config = typed_config(["parallel=tp2", "model.make_vocab_size_divisible_by=1"])
    assert padded_vocab_size(258, 1) == 258
    assert validate(config, 2, cuda_available=False).layout.tensor_parallel == 2


def test_several_problems_are_reported_together(typed_config):
    config = typed_config(
        ["parallel=tp2", "parallel.zero_stage=7", "wandb.mode=x", "model.activation=relu", "precision=fp16"]
    )
    with pytest.raises(ConfigError) as info:
        validate(config, 4, cuda_available=False)
    message = str(info.value)
    assert message.startswith("4 config problems:\n")
    for line in (
        r"  - parallel\.zero_stage: 7 is not a ZeRO stage",
        r"  - model\.activation: 'relu' is unknown",
        r"  - precision\.dtype: 'fp16' is not supported on cpu",
        r"  - wandb\.mode: 'x' is unknown",
    ):
        assert re.search(line, message, re.M), line


def test_range_errors_are_reported_together_before_the_arithmetic(typed_config):
    config = typed_config(["parallel.micro_batch_size=0", "model.num_layers=-1"])
    with pytest.raises(ConfigError, match=r"^2 config problems:") as info:
        validate(config, 1, cuda_available=False)
    assert "parallel.micro_batch_size: 0 must be a positive integer" in str(info.value)
    assert "model.num_layers: -1 must be a positive integer" in str(info.value)


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_good_config_derives_the_layout(typed_config):
    config = typed_config(
        ["parallel=tp2_pp2", "parallel.global_batch_size=16", "parallel.micro_batch_size=2"]
    )
    verdict = validate(config, 8, cuda_available=False)
    layout = verdict.layout
    assert (layout.tensor_parallel, layout.pipeline_parallel) == (2, 2)
    assert layout.data_parallel == 2
    assert layout.gradient_accumulation_steps == 4
    assert layout.world_size == 8
    assert verdict.warnings == ["pipeline: bubble fraction (p-1)/m = (2-1)/4 = 0.25"]


def test_too_few_micro_batches_for_the_pipeline_warns_with_a_fix(typed_config):
    config = typed_config(["parallel=pp2", "parallel.global_batch_size=2"])
    (warning,) = validate(config, 2, cuda_available=False).warnings
    assert re.search(
        r"1 micro-batches per step for 2 stages.*parallel\.global_batch_size to at least 4", warning
    )


def test_no_pipeline_no_warning(typed_config):
    assert validate(typed_config(["parallel=tp2"]), 4, cuda_available=False).warnings == []


def test_validation_started_no_process_group():
    # Last in this module: nothing above (the whole table included) may touch torch.distributed.
    assert not torch.distributed.is_initialized()


def test_key_added_with_plus_that_the_schema_lacks_is_refused(compose):
    from integration.config import to_typed

    with pytest.raises(
        ConfigError, match=r"model\.hiden_size: not a key of ModelConfig; remove the override"
    ):
        to_typed(compose(["+model.hiden_size=3"]))


@pytest.mark.parametrize(
    ("overrides", "world_size"),
    [
        (["offload=optimizer_cpu", "parallel.zero_stage=1"], 1),
        (["offload=optimizer_cpu", "parallel=dp", "parallel.zero_stage=2", "comm=overlap"], 2),
        (["offload=params_cpu", "parallel=dp", "parallel.zero_stage=3"], 2),
        (["offload=optimizer_cpu", "parallel=pp2", "parallel.zero_stage=1"], 2),
        (["parallel=dp", "parallel.zero_stage=3", "comm.zero_hpz_partition_size=2"], 2),
        (["precision=bf16", "parallel=dp", "parallel.zero_stage=1", "comm.grad_accum_dtype=fp32"], 2),
    ],
    ids=["opt-z1", "opt-z2-overlap", "params-z3", "opt-pipeline-z1", "hpz2-dp2", "bf16-fp32-accum"],
)
def test_offload_and_comm_combinations_that_run_on_cpu_validate(typed_config, overrides, world_size):
    assert validate(typed_config(overrides), world_size, cuda_available=False).layout.world_size == world_size


def test_zeropp_validates_on_a_gpu_cluster_and_qgz_on_one_node_warns(typed_config):
    zeropp = ["comm=zeropp", "parallel=dp", "parallel.zero_stage=3", "parallel.micro_batch_size=1"]
    config = typed_config([*zeropp, "cluster=h100_8x1"])
    assert config.comm.zero_hpz_partition_size == 8  # ${cluster.gpus_per_node}
    verdict = validate(config, 8, cuda_available=True, planned=True)
    assert any(
        w.startswith("comm.zero_quantized_gradients: DeepSpeed uses the quantized all-to-all only")
        for w in verdict.warnings
    )
    multi = typed_config([*zeropp, "cluster=h100_8x4", "parallel.global_batch_size=32"])
    assert not validate(multi, 32, cuda_available=True, planned=True).warnings


# Layouts refused on the cluster's facts with the planner's numbers (integration/cluster_fit.py):
# (Hydra overrides, world size, regex the ConfigError must match). Validated as a dry run on a GPU
# cluster (planned, CUDA available); force_layout=true turns each into a warning.
FIT_REFUSALS = [
    pytest.param(
        [
            "model=gpt_1p3b",
            "cluster=h100_8x1",
            "parallel.micro_batch_size=16",
            "parallel.global_batch_size=128",
        ],
        8,
        r"cluster\.gpu_memory_gib: 80 GiB per GPU on 'h100_8x1' is too small for tp 1 × pp 1 × dp 8, ZeRO 0, "
        r"micro-batch 16, recompute none: the planner predicts 8\d\.\d GiB on pipeline stage 0 \(activations "
        r"[\d.]+, model states [\d.]+, output layer [\d.]+\); (?P<fix>(\S+=\S+ )+)fits \([\d.]+ GiB\); "
        r"`python launch/plan\.py model=gpt_1p3b cluster=h100_8x1` ranks every layout; or set "
        r"force_layout=true to launch anyway",
        id="over-memory-with-a-fix",
    ),
    pytest.param(
        [
            "model=gpt_1p3b",
            "cluster=aws_p4d_2node",
            "parallel=tp2_pp2",
            "parallel.micro_batch_size=32",
            "parallel.global_batch_size=256",
        ],
        16,
        r"cluster\.gpu_memory_gib: 40 GiB per GPU on 'aws_p4d_2node' is too small for tp 2 × pp 2 × dp 4, "
        r"ZeRO 1, micro-batch 32, recompute none: the planner predicts [\d.]+ GiB on pipeline stage 0 "
        r"\(activations .*\); (?P<fix>(\S+=\S+ )+)fits",
        id="over-memory-pipeline-zero-1-at-most",
    ),
    pytest.param(
        [
            "model=llama_7b",
            "cluster=one_a100_40g",
            "parallel.micro_batch_size=1",
            "parallel.global_batch_size=8",
        ],
        1,
        r"cluster\.gpu_memory_gib: 40 GiB per GPU on 'one_a100_40g' is too small for tp 1 × pp 1 × dp 1, .*"
        r"model states [\d.]+.*; nothing fits at tp 1 × pp 1 × dp 1; `python launch/plan\.py model=llama_7b "
        r"cluster=one_a100_40g` ranks the layouts that do; or set force_layout=true to launch anyway",
        id="over-memory-nothing-fits",
    ),
    pytest.param(
        ["model=gpt_1p3b", "cluster=aws_p4d_2node", "parallel.tensor_model_parallel_size=16"],
        16,
        r"parallel\.tensor_model_parallel_size: 16 > cluster\.gpus_per_node\(8\), so every tensor-parallel "
        r"all-reduce .* crosses the inter-node network: the planner predicts [\d.]+ s of tensor-parallel "
        r"traffic in a [\d.]+ s step \(\d+%\); use parallel\.tensor_model_parallel_size<=8 with more pipeline "
        r"stages \(python launch/plan\.py ranks the layouts\) or set force_layout=true",
        id="tp-wider-than-a-node",
    ),
]


@pytest.mark.parametrize(("overrides", "world_size", "pattern"), FIT_REFUSALS)
def test_layout_that_does_not_fit_the_cluster_is_refused_with_the_planners_numbers(
    typed_config, overrides, world_size, pattern
):
    with pytest.raises(ConfigError, match=pattern) as refused:
        validate(typed_config(overrides), world_size, cuda_available=True, planned=True)
    problem = str(refused.value).split("; ")[0]
    forced = validate(typed_config([*overrides, "force_layout=true"]), world_size, True, planned=True)
    assert [w for w in forced.warnings if w.startswith(problem)] == [
        f"{problem}; launching anyway (force_layout=true)"
    ]
    if fix := re.search(pattern, str(refused.value)).groupdict().get("fix"):
        # The suggested overrides really fit: the same layout with them validates, no memory warning.
        fixed = validate(typed_config([*overrides, *fix.split()]), world_size, True, planned=True)
        assert not [w for w in fixed.warnings if w.startswith("cluster.gpu_memory_gib")]


def test_local_cpu_has_no_memory_check(typed_config):
    """local_cpu states no gpu_memory_gib: a layout far beyond any laptop still validates."""
    config = typed_config(["model=gpt_1p3b", "parallel.micro_batch_size=16", "parallel.global_batch_size=16"])
    assert config.cluster.gpu_memory_gib is None
    assert validate(config, 1, cuda_available=False).warnings == []


def test_a_launch_uses_the_launchers_world_and_says_when_the_cluster_differs(typed_config):
    config = typed_config(["model=gpt_125m", "cluster=h100_8x1", "parallel.global_batch_size=16"])
    verdict = validate(config, 2, cuda_available=True, fused_norms_available=True)
    assert verdict.layout.data_parallel == 2
    assert verdict.warnings == [
        "cluster: 'h100_8x1' has 1 × 8 = 8 devices but the launcher started 2 processes; the layout and its "
        "memory check use 2 (set cluster.num_nodes / cluster.gpus_per_node to the machines used)"
    ]
    assert validate(config, 8, cuda_available=True, fused_norms_available=True).warnings == []


def test_without_transformer_engine_a_launch_counts_the_attention_scores(typed_config):
    """A GPU without Transformer Engine runs Megatron's unfused attention, which keeps the s×s
    scores (5as²b): a layout that fits in a dry run (TE assumed) can be refused at launch."""
    config = typed_config(
        [
            "model=gpt_1p3b",
            "cluster=h100_8x1",
            "parallel.micro_batch_size=12",
            "parallel.global_batch_size=96",
        ]
    )
    assert validate(config, 8, cuda_available=True, planned=True).warnings == []
    with pytest.raises(
        ConfigError, match=r"cluster\.gpu_memory_gib: 80 GiB per GPU on 'h100_8x1' is too small"
    ):
        validate(config, 8, cuda_available=True, fused_norms_available=False)
