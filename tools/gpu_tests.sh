#!/usr/bin/env bash
# The device tests on a machine with a CUDA GPU (under 5 minutes): builds
# gradguard into a fresh environment with torch, then runs the device path's
# tests (their cuda cases run where torch sees a GPU; the cpu cases run too),
# the torch suites with CUDA's sync debug mode checking that nothing but the
# one transfer synchronises, and the device benchmark (CUDA figures).
# Run from the repository root: bash tools/gpu_tests.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-gpu
. .venv-gpu/bin/activate
pip install -q ".[test]" "torch==2.13.0"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device: nothing to test here'; print(torch.cuda.get_device_name())"
python -m pytest -q -p no:cacheprovider tests/test_torch_device.py
python -m gradguard bench --sections device --repeat 11
