#!/usr/bin/env bash
# The GPU figures of docs/performance.md in one run (about 8 minutes on one H200):
#   samples/s of every model at the paper preset, fp32 and bf16, packed (8 seeds) and not;
#   prlbench / the peer path at both presets; each mixture model against its peer form (the
#   kernels section, paper preset); one AliExpress-NL-sized epoch (12 M rows) of MMoE.
# Usage, from the repository root on a machine with a CUDA build of torch:
#   bash benchmarks/gpu_check.sh [OUT_DIR]      # the Markdown tables go to OUT_DIR/gpu.md
set -euo pipefail
out="${1:-${OUT:-.}}"
mkdir -p "$out"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible to torch'"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.md"
python benchmarks/bench_train.py --device cuda --presets paper --models all \
    --precision fp32,bf16 --with-packed --steps 60 --paper-steps 30 --skip auc,experts,baseline \
    2>&1 | tee -a "$out/gpu.md"
python benchmarks/bench_train.py --device cuda --presets small,paper --models mmoe \
    --skip throughput,auc,experts,baseline --epoch-rows 12000000 2>&1 | tee -a "$out/gpu.md"
