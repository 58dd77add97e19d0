"""Closed-form model arithmetic shared by validation, the dry run and throughput metrics:
padded vocabulary, parameter count and training FLOPs per token. No torch."""

from __future__ import annotations

from integration.config.schema import ModelConfig


def padded_vocab_size(vocab_size: int, divisible_by: int) -> int:
    """Megatron pads the vocabulary so embedding shards are even and GEMMs well shaped. The
    multiple does not depend on the tensor-parallel size here, so one model has one shape under
    every layout (and validation checks that it splits over tp)."""
    return -(-vocab_size // divisible_by) * divisible_by


def ffn_size(model: ModelConfig) -> int:
    return model.ffn_hidden_size or 4 * model.hidden_size


def query_groups(model: ModelConfig) -> int:
    return model.num_query_groups or model.num_attention_heads


def parameter_count(model: ModelConfig, vocab: int) -> int:
    """Exact parameter count of the Megatron-Core GPTModel built from `model` (padded vocab)."""
    h = model.hidden_size
    head_dim = h // model.num_attention_heads
    kv = query_groups(model) * head_dim
    bias = model.add_bias_linear
    norm = h if model.normalization == "RMSNorm" else 2 * h
    qkv = h * (h + 2 * kv) + (h + 2 * kv if bias else 0)
    proj = h * h + (h if bias else 0)
    ffn = ffn_size(model)
    ffn_in = ffn * (2 if model.activation == "swiglu" else 1)
    mlp = h * ffn_in + (ffn_in if bias else 0) + ffn * h + (h if bias else 0)
    qk_norm = 2 * (norm // h) * head_dim if model.qk_layernorm else 0
    layer = 2 * norm + qkv + proj + mlp + qk_norm
    embedding = vocab * h
    positions = (model.max_position_embeddings or model.seq_length) * h
    if model.position_embedding_type != "learned_absolute":
        positions = 0
    output = 0 if model.share_embeddings_and_output_weights else vocab * h
    return model.num_layers * layer + embedding + positions + norm + output


def flops_per_token(model: ModelConfig, vocab: int) -> float:
    """Training FLOPs per token (forward + backward = 3 × forward), Megatron-LM's formula
    (Narayanan et al. 2021, appendix), generalised to GQA and SwiGLU widths."""
    h, s, layers = model.hidden_size, model.seq_length, model.num_layers
    head_dim = h // model.num_attention_heads
    kv = query_groups(model) * head_dim
    ffn_in = ffn_size(model) * (2 if model.activation == "swiglu" else 1)
    per_layer = 2 * (h * (h + 2 * kv) + h * h + h * ffn_in + ffn_size(model) * h)
    attention = 2 * 2 * s * h
    logits = 2 * h * vocab
    return 3.0 * (layers * (per_layer + attention) + logits)
