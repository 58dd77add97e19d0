#!/usr/bin/env bash
# Install hydraspeed and its pinned dependencies into the current Python 3.11 environment and build
# the bundled corpus. torch is installed first and pinned: on these machines `torch==2.13.0` picks
# the local CPU wheel, and the exact pin keeps pip from pulling the multi-GB CUDA build later.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[dev]"
if [ ! -f data/pydoc/pydoc_text.idx ]; then
  python launch/prepare_data.py --quiet
fi
# ZeRO-Offload runs DeepSpeed's CPU Adam, a C++ op built on first use (about a minute). Build it now
# where a compiler exists, into the torch-extensions cache (TORCH_EXTENSIONS_DIR, default
# ~/.cache/torch_extensions); without a compiler, offload runs are refused with this reason.
python -m integration.offload || echo "note: offload=optimizer_cpu/params_cpu will be refused on this machine"
