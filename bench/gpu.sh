#!/usr/bin/env bash
# Issue 15 on a GPU machine: builds the training core alone (MISEG_TRAINING_CORE_ONLY, no
# gRPC/DCMTK/SQLite) against the CUDA LibTorch of this machine's python3, then prints in one
# run miseg's training step and inference beside the Python reference's (PyTorch eager, and
# torch.compile where the torch has it), same shapes, same GPU:
#   miseg-bench train/infer --device cuda         (channels-last, bf16 autocast, pinned copies;
#                                                  then with --cuda_graphs)
#   unet_reference.py --device cuda --amp bf16    (eager; then --compile)
# Usage: bench/gpu.sh [build-dir]     (default build-gpu; env PYTHON, SIZE, STEPS, ROUNDS)
# Needs: cmake >= 3.25, ninja or make, a C++17 compiler, Abseil's CMake package (Debian:
# libabsl-dev), python3 with a CUDA torch. Has not been run on a GPU yet (bench/RESULTS.md).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$here/build-gpu}
python=${PYTHON:-python3}
size=${SIZE:-128}
steps=${STEPS:-20}
rounds=${ROUNDS:-3}

prefix=$("$python" -c 'import torch; print(torch.utils.cmake_prefix_path)')
"$python" - <<'PY'
import torch
assert torch.cuda.is_available(), "this torch sees no CUDA device"
print("torch", torch.__version__, "CUDA", torch.version.cuda, torch.cuda.get_device_name(0))
print("torch.compile:", hasattr(torch, "compile"))
# Wheels before 2.7 are built with the old libstdc++ string ABI; a system Abseil built with
# the new one then fails to link (std::string in absl's signatures). Say so up front.
print("CXX11 ABI:", torch._C._GLIBCXX_USE_CXX11_ABI)
PY

generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
cmake -S "$here" -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DMISEG_TRAINING_CORE_ONLY=ON -DMISEG_BUILD_TESTS=OFF -DCMAKE_PREFIX_PATH="$prefix"
cmake --build "$build" --target miseg-bench -j "$(nproc)"

bench=("$build/bench/miseg-bench" --device=cuda --python="$python"
       --reference="$here/bench/reference/unet_reference.py" --threads="$(nproc)")
echo "== training step, ${size}x${size}, 4 labeled + 8 unlabeled, miseg vs PyTorch eager (bf16 autocast)"
"${bench[@]}" train --size="$size" --steps="$steps" --warmup=5 --rounds="$rounds" \
  --reference_args="--amp=bf16"
echo "== inference, 10 slices of 256x256, miseg vs PyTorch eager (bf16 autocast)"
"${bench[@]}" infer --size=256 --matrix=256 --slices=10 --steps="$steps" --warmup=5 \
  --rounds="$rounds" --reference_args="--amp=bf16"
echo "== CUDA graphs: miseg's step (forward, losses, backward) and inference network replayed"
"${bench[@]}" train --size="$size" --steps="$steps" --warmup=5 --rounds="$rounds" --cuda_graphs \
  --reference_args="--amp=bf16"
"${bench[@]}" infer --size=256 --matrix=256 --slices=10 --steps="$steps" --warmup=5 \
  --rounds="$rounds" --cuda_graphs --reference_args="--amp=bf16"
# The replays against eager steps and forwards (tests skipped on the CPU), where GoogleTest is.
if cmake -S "$here" -B "$build" -DMISEG_BUILD_TESTS=ON >/dev/null 2>&1 &&
   cmake --build "$build" --target miseg_slice_batcher_test -j "$(nproc)" >/dev/null; then
  echo "== CUDA graph tests on this GPU"
  "$build/tests/core/miseg_slice_batcher_test" --gtest_filter='GraphedForward.*:StepGraph.*'
else
  echo "== CUDA graph tests: not built (GoogleTest missing?)"
fi
if "$python" -c 'import torch, sys; sys.exit(0 if hasattr(torch, "compile") else 1)'; then
  echo "== the same against torch.compile (bf16 autocast)"
  "${bench[@]}" train --size="$size" --steps="$steps" --warmup=5 --rounds=1 \
    --reference_args="--amp=bf16 --compile --channels-last"
  "${bench[@]}" infer --size=256 --matrix=256 --slices=10 --steps="$steps" --warmup=5 \
    --rounds=1 --reference_args="--amp=bf16 --compile --channels-last"
else
  echo "== torch.compile: not in this torch ($("$python" -c 'import torch; print(torch.__version__)'))"
fi
