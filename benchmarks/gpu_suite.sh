#!/usr/bin/env bash
# The GPU benchmarks in one run on one GPU machine, under 10 minutes on an H100, from a fresh clone after
# `make install` (or with PY pointing at a Python that has potstill installed):
#   1. a DMD2 step on a DiT-XL/2-sized teacher (random weights at DiT-XL/2's widths: 1152 wide, 28 blocks,
#      16 heads, 32x32x4 latents; fake score and student the same), time and peak memory per step, in fp32 and
#      bf16 autocast on the plain engine and in DeepSpeed's bf16 (one rank)  -> results/gpu_dit_xl.{json,md}
#   2. the data loaders against the digits step                             -> results/gpu_data_throughput.{json,md}
#   3. video streaming, cached against recomputed                           -> results/gpu_video_streaming.{json,md}
#     benchmarks/gpu_suite.sh    (GPU_SUITE_QUICK=1: tiny sizes on any machine, results named gpu_suite_check_*)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
tag=gpu
if [[ "${GPU_SUITE_QUICK:-0}" == 1 ]]; then
  tag=gpu_suite_check
  sizes=(--hidden 64 --depth 2 --heads 4 --input-size 8 --batch 2 --steps 1)
  data=(--steps 2 --batches 2 --batch 8)
  video=(--quick --repeats 1)
else
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_suite.sh: no GPU here')"
  sizes=(--preset dit-xl-2 --batch 8 --steps 5)
  data=(--steps 20 --batches 12)
  video=(--repeats 2)
fi
"$PY" benchmarks/deepspeed_memory.py "${sizes[@]}" --settings plain:1:fp32 plain:1:bf16_autocast deepspeed:1:bf16 \
  --name "${tag}_dit_xl"
"$PY" benchmarks/data_throughput.py "${data[@]}" --name "${tag}_data_throughput"
"$PY" benchmarks/video_streaming.py "${video[@]}" --name "${tag}_video_streaming"
