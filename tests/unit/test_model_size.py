"""Closed-form model arithmetic against the real Megatron-Core GPTModel and published sizes.

The GPTModel is built by `integration.model.build_gpt` in a child process (it needs a one-process
gloo group for Megatron's parallel state); this process never starts a process group.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from integration.model_size import padded_vocab_size, parameter_count
from integration.plan import model_vocab_size

COUNT_SCRIPT = Path(__file__).parent / "scripts" / "count_model_parameters.py"

# name -> overrides. Between them: tied and untied output layers, LayerNorm and RMSNorm, gelu and
# swiglu, MHA and GQA, learned and rotary positions, with and without biases and qk-layernorm.
# stability=off everywhere: the default stability preset turns qk-layernorm on.
BUILT_MODELS = {
    "gpt_tiny": ["model=gpt_tiny", "stability=off"],
    "gpt_tiny_stability_default": ["model=gpt_tiny", "stability=default"],
    "gpt_tiny_untied": ["model=gpt_tiny", "stability=off", "model.share_embeddings_and_output_weights=false"],
    "gpt_tiny_qk_layernorm": ["model=gpt_tiny", "stability=off", "model.qk_layernorm=true"],
    "gpt_tiny_long_position_table": ["model=gpt_tiny", "stability=off", "model.max_position_embeddings=256"],
    "llama_tiny": ["model=llama_tiny", "stability=off"],
    "llama_tiny_tied_qk_layernorm": [
        "model=llama_tiny",
        "stability=off",
        "model.share_embeddings_and_output_weights=true",
        "model.qk_layernorm=true",
    ],
    "swiglu_gqa_rope_with_biases": [
        "model=gpt_tiny",
        "stability=off",
        "model.activation=swiglu",
        "model.num_query_groups=2",
        "model.position_embedding_type=rope",
        "model.ffn_hidden_size=null",
        "model.share_embeddings_and_output_weights=false",
    ],
}


@pytest.fixture(scope="module")
def built(typed_config) -> dict[str, dict]:
    """name -> {"numel", "names", "vocab", "model"} for every BUILT_MODELS entry, one child process."""
    cases = {}
    for name, overrides in BUILT_MODELS.items():
        config = typed_config(overrides)
        vocab = model_vocab_size(config.model, config.data.tokenizer, config.data.vocab_size)
        cases[name] = {"model": dataclasses.asdict(config.model), "vocab_size": vocab}
    env = {
        k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT")
    }
    env["OMP_NUM_THREADS"] = "1"
    result = subprocess.run(
        [sys.executable, str(COUNT_SCRIPT)],
        input=json.dumps(list(cases.values())),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    counts = json.loads(result.stdout.strip().splitlines()[-1])
    return {
        name: {**count, "vocab": case["vocab_size"], "model": case["model"]}
        for (name, case), count in zip(cases.items(), counts, strict=True)
    }


@pytest.mark.parametrize("name", BUILT_MODELS)
def test_parameter_count_equals_the_built_gpt_model(typed_config, built, name):
    config = typed_config(BUILT_MODELS[name])
    assert built[name]["model"] == dataclasses.asdict(config.model)  # the child built this config
    assert parameter_count(config.model, built[name]["vocab"]) == built[name]["numel"]


def test_the_built_models_differ_where_the_configs_do(built):
    names = built["gpt_tiny"]["names"]
    assert "output_layer.weight" not in names  # tied: the output layer reuses the embedding
    assert "output_layer.weight" in built["gpt_tiny_untied"]["names"]
    assert not any("q_layernorm" in n for n in names)
    assert any("q_layernorm" in n for n in built["gpt_tiny_qk_layernorm"]["names"])
    assert built["gpt_tiny_stability_default"]["names"] == built["gpt_tiny_qk_layernorm"]["names"]
    assert "embedding.position_embeddings.weight" not in built["llama_tiny"]["names"]  # rotary
    assert names["embedding.position_embeddings.weight"] == 128 * 64
    assert built["gpt_tiny_long_position_table"]["names"]["embedding.position_embeddings.weight"] == 256 * 64
    assert not any(n.endswith(".bias") for n in built["llama_tiny"]["names"])


@pytest.mark.parametrize(
    ("overrides", "vocab", "published"),
    [
        # Hugging Face gpt2 / gpt2-medium (1024 positions, unpadded 50257 vocabulary, tied)
        (["model=gpt_125m", "model.seq_length=1024"], 50257, 124_439_808),
        (["model=gpt_350m", "model.seq_length=1024"], 50257, 354_823_168),
        # Llama-2-7b
        (["model=llama_7b"], 32000, 6_738_415_616),
    ],
    ids=["gpt2", "gpt2-medium", "llama-2-7b"],
)
def test_parameter_count_matches_published_sizes(typed_config, overrides, vocab, published):
    assert parameter_count(typed_config([*overrides, "stability=off"]).model, vocab) == published


@pytest.mark.parametrize(
    ("vocab", "divisible_by", "padded"),
    [
        (258, 128, 384),
        (256, 128, 256),  # already a multiple
        (50257, 128, 50304),
        (32000, 128, 32000),
        (258, 1, 258),
        (259, 2, 260),
        (1, 64, 64),
    ],
)
def test_padded_vocab_size(vocab, divisible_by, padded):
    assert padded_vocab_size(vocab, divisible_by) == padded


def test_model_vocab_size_prefers_the_models_own_vocabulary(typed_config):
    assert model_vocab_size(typed_config(["model=gpt_tiny"]).model, "byte", None) == 384
    assert model_vocab_size(typed_config(["model=gpt_125m"]).model, "byte", None) == 50304
    assert model_vocab_size(typed_config(["model=gpt_tiny"]).model, "byte", 1000) == 1024
