#!/usr/bin/env bash
# One run on a machine with an NVIDIA GPU: install the cuda extra and onnxruntime-gpu, run the device
# contract suite and the model suite on cuda, then the GPU benchmark; everything lands in ${OUT:-gpu-results}.
#   OUT=/some/dir tools/gpu_check.sh
set -u
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
PY=${PYTHON:-.venv/bin/python}
{ nvidia-smi || true; } >"$OUT/nvidia-smi.txt" 2>&1
"$PY" -m pip install --quiet -e '.[cuda]' onnxruntime-gpu >"$OUT/install.txt" 2>&1 || echo "install failed" >>"$OUT/install.txt"
"$PY" -m pytest -q -p no:cacheprovider tests/test_devices.py -rs >"$OUT/tests.txt" 2>&1
echo "tests rc=$?" >>"$OUT/tests.txt"
"$PY" bench/gpu.py --out "$OUT" >"$OUT/bench.txt" 2>&1
echo "bench rc=$?" >>"$OUT/bench.txt"
tail -n 3 "$OUT/tests.txt" "$OUT/bench.txt"
