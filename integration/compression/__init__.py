"""Compression during training (quantization-aware training, magnitude pruning) and export of the
compressed model after it.

Why this is our code and not DeepSpeed's: DeepSpeed 0.19.8 removed its compression library
(`deepspeed.compression` is an empty shim; deepspeedai/DeepSpeed#8489, #8490) and its config parser
refuses a `compression_training` block ("The DeepSpeed compression library has been removed").
The techniques are re-implemented here with DeepSpeed's key names and formulas
(`SymQuantizer`/`AsymQuantizer` with a straight-through gradient, `TopKBinarizer` over |w| for
l1 sparse pruning, the `schedule_offset` rule of its `compression_scheduler`, `redundancy_clean`
as `export.export_compressed`), on Megatron-Core's own ColumnParallelLinear/RowParallelLinear, and
so that a quantization group, its scale and a pruning mask are those of the full matrix under
every tensor-parallel size.

Modules: `targets` (which matrices; no torch), `quantizer` (the math), `runtime` (the layer
adapter, the schedule, the step-runner wrapper), `export` (the compressed model on disk).
"""
