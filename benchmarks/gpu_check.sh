#!/usr/bin/env bash
# GPU readiness in one call (< 8 min on an H100/H200): CUDA tests, AMP + channels-last inference
# throughput of every model (batch sweep, peak memory), torch.compile ratio, every task's training
# for a few iterations (torchrun with 2 ranks when there are 2+ GPUs), 2 minutes of full-size GRiCoL
# training.  Prints one Markdown table (paste it into docs/performance.md); JSON in $OUT if set.
#   bash benchmarks/gpu_check.sh [--budget 450] [--gricol-seconds 120] [--skip tests,train]
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import napari_cellclass" 2>/dev/null || pip install -q -e . >/dev/null
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-8}"
exec python benchmarks/gpu_check.py "$@"
