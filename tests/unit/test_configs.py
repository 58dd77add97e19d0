"""Every config file composes and validates; typos fail at compose time; the dry run works."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from integration.config import register_schemas, to_typed
from integration.ds_config import build_deepspeed_config
from integration.model_size import parameter_count
from integration.plan import model_vocab_size
from integration.validate import validate

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = PROJECT_ROOT / "conf"

GROUPS = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir())
# Found on disk, so a new file under conf/<group>/ is covered without touching this test.
CONFIG_FILES = [(group, f.stem) for group in GROUPS for f in sorted((CONF_DIR / group).glob("*.yaml"))]
MODEL_FILES = [name for group, name in CONFIG_FILES if group == "model"]
PARALLEL_FILES = [name for group, name in CONFIG_FILES if group == "parallel"]
OTHER_FILES = [(group, name) for group, name in CONFIG_FILES if group not in ("model", "parallel")]
# Files that only validate on a GPU cluster: validation is pure, so "a GPU is there" is an argument.
NEEDS_CUDA = {("precision", "fp16"), ("comm", "overlap_quantized"), ("comm", "zeropp")}
CUDA_CLUSTER = ["cluster.device=cuda", "cluster.backend=nccl"]
# Files that need a ZeRO stage (offload, ZeRO++) or a machine-specific path to validate.
NEEDS_OVERRIDES = {
    ("offload", "optimizer_cpu"): ["parallel.zero_stage=1"],
    ("offload", "params_cpu"): ["parallel.zero_stage=3"],
    ("offload", "optimizer_nvme"): ["parallel.zero_stage=3", "offload.optimizer.nvme_path=/local_nvme"],
    ("offload", "params_nvme"): [
        "parallel.zero_stage=3",
        "offload.optimizer.nvme_path=/local_nvme",
        "offload.param.nvme_path=/local_nvme",
    ],
    ("comm", "overlap_quantized"): ["parallel.zero_stage=3"],
    ("comm", "hierarchical"): ["parallel.zero_stage=3"],
    ("comm", "zeropp"): ["parallel.zero_stage=3"],
}


def _select(group: str, name: str) -> str:
    return f"+experiment={name}" if group == "experiment" else f"{group}={name}"


def test_config_files_are_found():
    assert {"model", "parallel", "cluster", "precision", "data", "optim", "wandb"} <= set(GROUPS)
    assert {"gpt_tiny", "llama_tiny"} <= set(MODEL_FILES)
    assert {"single", "tp2", "tp2_pp2"} <= set(PARALLEL_FILES)


@pytest.mark.parametrize(("group", "name"), CONFIG_FILES, ids=[f"{g}/{n}" for g, n in CONFIG_FILES])
def test_every_config_file_composes(compose, group, name):
    cfg = compose([_select(group, name)])
    # Every value the file sets reaches the composed tree (the file really was selected).
    file_values = OmegaConf.to_container(OmegaConf.load(CONF_DIR / group / f"{name}.yaml"))
    file_values.pop("defaults", None)
    text = (CONF_DIR / group / f"{name}.yaml").read_text()
    node = cfg if group == "experiment" or text.startswith("# @package _global_") else cfg[group]
    flat = {k: v for k, v in _flatten(file_values)}
    assert flat, f"conf/{group}/{name}.yaml sets nothing"
    for key, value in flat.items():
        if isinstance(value, str) and "${" in value:
            continue  # an interpolation: its resolved value is checked by the group's own tests
        assert OmegaConf.select(node, key) == value, f"{group}/{name}.yaml: {key}"
    typed = to_typed(cfg)  # every value has the schema's type
    assert type(typed).__name__ == "TrainConfig"


@pytest.mark.parametrize(("group", "name"), OTHER_FILES, ids=[f"{g}/{n}" for g, n in OTHER_FILES])
def test_every_other_config_file_validates_on_its_planned_cluster(typed_config, group, name):
    """model/ and parallel/ files have their own world-size tests below."""
    extra = CUDA_CLUSTER if (group, name) in NEEDS_CUDA else []
    extra = [*extra, *NEEDS_OVERRIDES.get((group, name), [])]
    if group == "cluster":  # one sample per data-parallel rank, whatever the cluster's size
        facts = OmegaConf.load(CONF_DIR / group / f"{name}.yaml")
        world = facts.get("num_nodes", 1) * facts.get("gpus_per_node", 1)
        extra = ["parallel.micro_batch_size=1", f"parallel.global_batch_size={world}"]
    config = typed_config([_select(group, name), *extra])
    world = config.cluster.num_nodes * config.cluster.gpus_per_node
    verdict = validate(config, world, cuda_available=config.cluster.device == "cuda", planned=True)
    assert verdict.layout.world_size == world


@pytest.mark.parametrize("name", MODEL_FILES)
def test_every_model_validates_without_parallelism(typed_config, name):
    config = typed_config([f"model={name}"])  # parallel=single is the default
    verdict = validate(config, 1, cuda_available=False, planned=True)
    assert config.model.name == name
    assert config.parallel.name == "single"
    layout = verdict.layout
    assert (layout.tensor_parallel, layout.pipeline_parallel, layout.data_parallel) == (1, 1, 1)
    assert layout.gradient_accumulation_steps * layout.micro_batch_size == layout.global_batch_size


@pytest.mark.parametrize("name", PARALLEL_FILES)
def test_every_parallel_preset_validates_with_two_data_parallel_replicas(typed_config, name):
    config = typed_config([f"parallel={name}"])
    if config.parallel.tensor_model_parallel_size > config.model.num_attention_heads:
        config = typed_config([f"parallel={name}", "model=gpt_1p3b"])  # tp8 presets need 8 | heads
    par = config.parallel
    world = par.tensor_model_parallel_size * par.pipeline_model_parallel_size * 2
    verdict = validate(config, world, cuda_available=False, planned=True)
    layout = verdict.layout
    assert layout.data_parallel == 2
    assert layout.micro_batch_size * layout.gradient_accumulation_steps * 2 == par.global_batch_size
    assert bool(verdict.warnings) == (par.pipeline_model_parallel_size > 1)  # the bubble note


def _flatten(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


# --- typos fail at compose time -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("model.hiden_size=3", "model.hiden_size"),
        ("parallel.zero=1", "parallel.zero"),
        ("trainer.max_step=5", "trainer.max_step"),
        ("cluster.gpus_per_nod=8", "cluster.gpus_per_nod"),
    ],
)
def test_typo_in_override_fails_at_compose(compose, override, key):
    with pytest.raises(ConfigCompositionException, match=re.escape(key)):
        compose([override])


def test_wrong_type_in_override_fails_at_compose(compose):
    with pytest.raises(ConfigCompositionException, match=re.escape("model.hidden_size=abc")):
        compose(["model.hidden_size=abc"])


def test_unknown_preset_lists_the_available_ones(compose):
    with pytest.raises(ConfigCompositionException, match=r"parallel/tp3(.|\n)*tp2_pp2"):
        compose(["parallel=tp3"])


def test_typo_inside_a_group_file_fails_at_compose(tmp_path):
    """The schema guards the YAML files too, not only command-line overrides."""
    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    (conf / "model" / "typo.yaml").write_text(
        (CONF_DIR / "model" / "gpt_tiny.yaml").read_text() + "num_head: 4\n"
    )
    register_schemas()
    with (
        initialize_config_dir(config_dir=str(conf), version_base="1.3"),
        pytest.raises(ConfigCompositionException, match="num_head"),
    ):
        hydra_compose(config_name="train", overrides=["model=typo"])


# --- the real entry point -------------------------------------------------------------------------


def _dry_run(overrides: list[str], run_dir: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    env.update(OMP_NUM_THREADS="1", HYDRA_FULL_ERROR="0")
    return subprocess.run(
        [sys.executable, "launch/train.py", *overrides, f"hydra.run.dir={run_dir}"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_dry_run_prints_the_plan(tmp_path, typed_config):
    overrides = ["dry_run=true", "cluster.gpus_per_node=8", "parallel=tp2_pp2"]
    result = _dry_run(overrides, tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout

    assert re.search(r"^\s*tensor\s+\[0, 1\], \[2, 3\], \[4, 5\], \[6, 7\]$", out, re.M), out
    assert re.search(r"^\s*pipeline\s+\[0, 4\], \[1, 5\], \[2, 6\], \[3, 7\]$", out, re.M), out
    assert re.search(r"^\s*data\s+\[0, 2\], \[1, 3\], \[4, 6\], \[5, 7\]$", out, re.M), out
    assert "world 8 = tp 2 × pp 2 × dp 2" in out

    config = typed_config(overrides)
    params = parameter_count(
        config.model, model_vocab_size(config.model, config.data.tokenizer, config.data.vocab_size)
    )
    assert f"{params:,} parameters" in out

    ds_text = out.split("DeepSpeed config:\n", 1)[1].split("\nwarning:", 1)[0]
    ds_config = json.loads(ds_text)
    layout = validate(config, 8, cuda_available=False, planned=True).layout
    assert ds_config == build_deepspeed_config(
        layout,
        config.parallel,
        config.optim,
        config.precision,
        config.trainer.max_steps,
        offload=config.offload,
        comm=config.comm,
    )
    assert ds_config["train_batch_size"] == 8
    assert (
        ds_config["train_micro_batch_size_per_gpu"] * ds_config["gradient_accumulation_steps"] * 2
        == ds_config["train_batch_size"]
    )
    assert "warning: pipeline: bubble" in out


def test_failing_dry_run_exits_2_with_a_config_error_and_no_traceback(tmp_path):
    result = _dry_run(["dry_run=true", "parallel=tp2"], tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "config error" in result.stderr
    assert re.search(r"\bparallel: tp\(2\) × pp\(1\) = 2 does not divide world_size\(1\)", result.stderr)
    assert "cluster.gpus_per_node" in result.stderr  # the fix for a planned (dry-run) world
    assert "Traceback" not in result.stderr
    assert "DeepSpeed config" not in result.stdout
