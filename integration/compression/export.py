"""The compressed model on disk: DeepSpeed's `redundancy_clean`, made concrete.

`export_compressed` gathers every parameter to its full (tensor-parallel-independent) shape and
writes, on one rank, `<dir>/model.pt` and `<dir>/report.json`:
- a quantized matrix as integer codes (int8 for symmetric, uint8 for asymmetric; one code per
  byte whatever target_bits is, no packing), a fp32 scale per group and, asymmetric, a fp32 zero
  point per group; pruned too: the bool keep-mask (symmetric codes are also 0 where masked);
- a pruned-only matrix as its weights with the pruned entries exactly 0, and the mask;
- every other parameter (embeddings, norms, biases) as it is.
`load_compressed` turns the file back into dense full tensors, equal to the weights the
compressed model multiplied with in training.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from integration.compression.quantizer import GroupQuantizer, gather_full
from integration.compression.runtime import CompressedLinear, CompressionScheduler
from integration.config.schema import CompressionConfig, ModelConfig

FORMAT = "hydraspeed-compressed/1"


def _quantizer_for(entry: dict[str, Any]) -> GroupQuantizer:
    return GroupQuantizer(
        entry["bits"],
        entry["quantization_type"] == "symmetric",
        entry["groups"],
        full_rows=entry["codes"].shape[0],
    )


def _compressed_entry(layer: CompressedLinear, full: torch.Tensor) -> dict[str, Any]:
    config = layer.quantizer
    mask = None
    if layer.pruning and layer.mask is not None:
        mask = layer.gather(layer.mask.float()) > 0.5
    if not layer.quantizing:
        return {"kind": "pruned", "data": (full * mask.to(full.dtype)).cpu(), "mask": mask.cpu()}
    whole = GroupQuantizer(config.bits, config.symmetric, config.groups, full_rows=layer.target.rows)
    scale, zero_point = whole.parameters(full)
    codes = whole.codes(full, scale, zero_point)
    if mask is not None and config.symmetric:
        codes = codes * mask
    return {
        "kind": "quantized",
        "codes": codes.to(torch.int8 if config.symmetric else torch.uint8).cpu(),
        "scale": scale.cpu(),
        "zero_point": None if zero_point is None else zero_point.cpu(),
        "bits": config.bits,
        "groups": config.groups,
        "quantization_type": "symmetric" if config.symmetric else "asymmetric",
        "mask": None if mask is None else mask.cpu(),
        "dtype": str(full.dtype).removeprefix("torch."),
    }


def dense_weight(entry: dict[str, Any]) -> torch.Tensor:
    """The full tensor an exported entry stands for."""
    if entry["kind"] == "quantized":
        values = _quantizer_for(entry).dequantize(entry["codes"], entry["scale"], entry["zero_point"])
        if entry["mask"] is not None:
            values = values * entry["mask"]
        return values.to(getattr(torch, entry["dtype"]))
    return entry["data"]


def _report_row(name: str, entry: dict[str, Any]) -> dict[str, Any]:
    weight = dense_weight(entry)
    row: dict[str, Any] = {
        "name": name,
        "shape": list(weight.shape),
        "kind": entry["kind"],
        "sparsity": float((weight == 0).float().mean()),
        "dense_bytes": weight.numel() * weight.element_size(),
    }
    if entry["kind"] == "quantized":
        codes = entry["codes"]
        per_group = codes.reshape(entry["groups"], -1)
        row.update(
            bits=entry["bits"],
            groups=entry["groups"],
            quantization_type=entry["quantization_type"],
            code_min=int(codes.min()),
            code_max=int(codes.max()),
            distinct_levels_max=max(int(g.unique().numel()) for g in per_group),
            stored_bytes=codes.numel() * codes.element_size()
            + 4 * entry["scale"].numel() * (2 if entry["zero_point"] is not None else 1),
        )
    else:
        row["stored_bytes"] = row["dense_bytes"]
    return row


def export_compressed(
    gpt: torch.nn.Module,
    scheduler: CompressionScheduler,
    out_dir: Path,
    model: ModelConfig,
    vocab_size: int,
    write: bool,
) -> dict[str, Any]:
    """Call on every rank (tensor-parallel gathers); the rank with `write` writes the files.
    Returns the report (every rank)."""
    from megatron.core import parallel_state

    group = parallel_state.get_tensor_model_parallel_group()
    tensors: dict[str, dict[str, Any]] = {}
    for name, param in gpt.named_parameters():
        data = param.detach()
        if getattr(param, "tensor_model_parallel", False):
            data = gather_full(data, param.partition_dim, group, getattr(param, "partition_stride", 1))
        layer = scheduler.layers.get(name.removesuffix(".weight")) if name.endswith(".weight") else None
        if layer is not None and (layer.quantizing or layer.pruning):
            tensors[name] = _compressed_entry(layer, data)
        else:
            tensors[name] = {"kind": "dense", "data": data.cpu().clone()}
    rows = [_report_row(n, e) for n, e in tensors.items() if e["kind"] != "dense"]
    total = sum(t["data" if t["kind"] != "quantized" else "codes"].numel() for t in tensors.values())
    compressed_numel = sum(r["shape"][0] * r["shape"][1] for r in rows)
    report = {
        "format": FORMAT,
        "parameters": total,
        "compressed_parameters": compressed_numel,
        "compressed_matrices": len(rows),
        "bits": sorted({r["bits"] for r in rows if "bits" in r}),
        "sparsity": sum(r["sparsity"] * r["shape"][0] * r["shape"][1] for r in rows)
        / max(1, compressed_numel),
        "dense_bytes": sum(r["dense_bytes"] for r in rows),
        "stored_bytes": sum(r["stored_bytes"] for r in rows),
        "matrices": rows,
    }
    if write:
        out_dir.mkdir(parents=True, exist_ok=True)
        payload = {"format": FORMAT, "model": asdict(model), "vocab_size": vocab_size, "tensors": tensors}
        tmp = out_dir / "model.pt.tmp"
        torch.save(payload, tmp)
        os.replace(tmp, out_dir / "model.pt")
        (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def load_compressed(path: Path) -> dict[str, torch.Tensor]:
    """Dense full tensors by parameter name, from an exported `model.pt`."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} file (format {payload.get('format')!r})")
    return {name: dense_weight(entry) for name, entry in payload["tensors"].items()}


def summary(report: dict[str, Any]) -> str:
    bits = "/".join(str(b) for b in report["bits"]) or "-"
    return (
        f"compression: exported {report['compressed_matrices']} matrices "
        f"({report['compressed_parameters']:,} of {report['parameters']:,} parameters): "
        f"bits {bits}, sparsity {report['sparsity']:.1%}, "
        f"{report['dense_bytes'] / 2**20:.2f} MiB -> {report['stored_bytes'] / 2**20:.2f} MiB stored"
    )


def export_after_training(
    gpt: torch.nn.Module,
    scheduler: CompressionScheduler,
    config: CompressionConfig,
    run_dir: Path,
    model: ModelConfig,
    vocab_size: int,
    logging_rank: bool,
) -> Path | None:
    """The end-of-training export (`compression.export`) into `compression.export_dir` (default
    <run.dir>/compressed); every rank calls it, the logging rank writes and prints the summary."""
    if not config.export:
        return None
    out_dir = Path(config.export_dir) if config.export_dir else run_dir / "compressed"
    report = export_compressed(gpt, scheduler, out_dir, model, vocab_size, write=logging_rank)
    if logging_rank:
        print(f"{summary(report)} -> {out_dir}", flush=True)
    return out_dir
