#!/usr/bin/env bash
# GPU benchmark: 7B-shaped NF4 LLM + fp16 CLIP-L and projector; TokenPacker 144 / HD 3x3 / MLP-576 and
# transformers' LlavaForConditionalGeneration in one run. Needs an NVIDIA GPU, torch with CUDA, bitsandbytes.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHONUNBUFFERED=1 python3 -m benchmarks.gpu "$@"
