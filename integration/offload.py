"""What ZeRO-Offload needs from the machine, checked on every rank before any process group exists.

- DeepSpeed's CPU Adam op (`cpu_adam`, a C++ extension). With optimizer offload our generated
  config lets DeepSpeed pick `DeepSpeedCPUAdam`, which loads the op from DeepSpeed's install, or
  JIT-builds it once (about a minute; needs a C++ compiler and ninja) into the torch-extensions
  cache, `$TORCH_EXTENSIONS_DIR` (default `~/.cache/torch_extensions`), where later processes load
  it in seconds. `scripts/setup.sh` builds it at install time (`python -m integration.offload`).
  Loading it here, before any process group, turns a missing compiler into a config error on every
  rank instead of a traceback inside `deepspeed.initialize` with the other ranks waiting.
- NVMe offload: DeepSpeed's async I/O op (libaio) and a writable swap directory.

Config-only rules (which ZeRO stage, which device) are in integration.validate.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

from integration.config.schema import OffloadConfig
from integration.errors import ConfigError

_FIX_OFF = "or run without offload (offload=none)"


def torch_extensions_dir() -> Path:
    """Where torch's JIT builds (and DeepSpeed's JIT-built ops) are cached."""
    default = Path.home() / ".cache" / "torch_extensions"
    return Path(os.environ.get("TORCH_EXTENSIONS_DIR", default))


def check_offload_environment(offload: OffloadConfig, report: bool = True) -> None:
    """Raise ConfigError when this machine cannot run the requested offload. `report`: say so when
    the CPU Adam op is being built (the first offload run on a machine)."""
    if offload.optimizer.device != "none":
        load_cpu_adam(report=report)
    for key, block in (("offload.optimizer", offload.optimizer), ("offload.param", offload.param)):
        if block.device == "nvme":
            _check_nvme_path(f"{key}.nvme_path", block.nvme_path)
    if "nvme" in (offload.optimizer.device, offload.param.device):
        _check_async_io()


def load_cpu_adam(report: bool = False):
    """Load (JIT-building on first use) DeepSpeed's cpu_adam op; ConfigError when it cannot be."""
    from deepspeed.ops.op_builder import CPUAdamBuilder

    builder = CPUAdamBuilder()
    where = f"TORCH_EXTENSIONS_DIR={torch_extensions_dir()}"
    if not builder.is_compatible():
        raise ConfigError(
            f"offload.optimizer.device: optimizer offload runs DeepSpeed's CPU Adam, and its cpu_adam op "
            f"is not compatible with this machine ({builder.error_log or 'is_compatible() is false'}); "
            f"use offload=none"
        )
    from deepspeed.git_version_info import installed_ops

    cache = torch_extensions_dir()
    cached = installed_ops.get(builder.name) or any(
        [*cache.glob(f"{builder.name}/*.so"), *cache.glob(f"*/{builder.name}/*.so")]
    )
    if report and not cached:
        print(
            f"offload: building DeepSpeed's cpu_adam op once into {where} (about a minute)",
            file=sys.stderr,
            flush=True,
        )
    try:
        return builder.load(verbose=False)
    except Exception as err:  # any build or import failure: compiler, ninja, headers, linker
        reason = _build_failure_reason(err)
        raise ConfigError(
            "offload.optimizer.device: optimizer offload runs DeepSpeed's CPU Adam, and its cpu_adam op "
            f"could not be built or loaded ({reason}); install a C++ compiler and "
            f"ninja and run `python -m integration.offload` (caches it under {where}), {_FIX_OFF}"
        ) from err


def _build_failure_reason(err: Exception) -> str:
    """The telling line of a failed JIT build (ninja echoes every compiler command first)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    telling = [line for line in lines if re.search(r"not found|error:|fatal|no such file", line, re.I)]
    reason = (telling or lines[-1:] or [""])[0]
    return f"{type(err).__name__}: {reason[:300]}"


def _check_nvme_path(key: str, path: str | None) -> None:
    if not path:  # validate names the missing path; nothing to look at here
        return
    where = Path(path)
    if not where.is_dir():
        raise ConfigError(
            f"{key}: {path!r} is not a directory; create it on a local NVMe disk or set {key}=<directory>"
        )
    if not os.access(where, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}: {path!r} is not writable by this user; set {key}=<writable directory>")


def _check_async_io() -> None:
    from deepspeed.ops.op_builder import AsyncIOBuilder

    builder = AsyncIOBuilder()
    if not builder.is_compatible(verbose=False):
        raise ConfigError(
            "offload: NVMe offload needs DeepSpeed's async_io op, which cannot be built here (libaio "
            "missing: install libaio-dev, e.g. `apt-get install libaio-dev`); use offload=optimizer_cpu "
            "or offload=params_cpu"
        )


def main() -> int:
    """Build the cpu_adam op now (scripts/setup.sh), so the first offload run does not."""
    start = time.perf_counter()
    try:
        load_cpu_adam()
    except ConfigError as err:
        print(f"note: {err}", file=sys.stderr)
        return 1
    print(f"cpu_adam op ready in {time.perf_counter() - start:.0f} s (cache: {torch_extensions_dir()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
