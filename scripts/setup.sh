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
