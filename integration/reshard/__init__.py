"""Resume a checkpoint on another parallel layout (tensor, pipeline or data parallel size, ZeRO
stage, precision): record at save time what the files mean (`manifest`), convert them once into
full per-parameter tensors (`convert`), and load those into the new engine (`inject`).

Why not DeepSpeed's universal checkpoint (`ds_to_universal` + `"load_universal": true`)? It was
tried on this stack (see FINDINGS.md) and resumes exactly in the cases it covers, but those are not
ours: it needs ZeRO optimizer files, so the default `parallel=single` (ZeRO 0, a plain torch
optimizer) has nothing it can convert; it keys parameters by the module path of the layout that
wrote them, which differs between the plain engine (Megatron-Core GPTModel) and the pipeline engine
(`3.layer...`), so a dense <-> pipeline change would need renaming; its tensor-parallel merge works
from name patterns (a pattern that matches nothing aborts the conversion; Megatron-Core's
`_extra_state: None` entries trip it); and a ZeRO-3 universal checkpoint did not load at TP > 1.

This package does the same job with the facts at hand instead of patterns: each rank writes a
manifest with every parameter's GPTModel name and the tensor-parallel cut Megatron-Core recorded
on it (`partition_dim`, `partition_stride`), so the readers only need DeepSpeed's documented
per-parameter slice tables (ZeRO 1/2, BF16_Optimizer), ZeRO-3's even padded partitions, or the
torch state dict. The converted form is DeepSpeed-universal-like (one full fp32 master and Adam
moments per parameter) and loads into every DeepSpeed optimizer this project builds, through
DeepSpeed's own fragment addresses. Not converted: 2D tensor parallelism (SUMMA blocks, not
Megatron shards) and fp16 (loss-scaler state); both are refused before any process group.
"""
