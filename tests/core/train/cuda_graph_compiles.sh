#!/usr/bin/env bash
# The CUDA-graph code (core/train/cuda_graph.cc with MISEG_CUDA_GRAPHS) compiles against this
# machine's LibTorch headers and the CUDA toolkit's, although the CPU build never compiles
# it: a typo or an API misuse there would otherwise wait for a GPU machine to surface.
# Usage: cuda_graph_compiles.sh CXX SOURCE_DIR TORCH_INCLUDE_DIR...   Exit 77: no CUDA headers.
set -euo pipefail
cxx=$1 source_dir=$2
shift 2
cuda_include=
for dir in /usr/local/cuda/include /usr/local/cuda-*/include /usr/include; do
  if [[ -f $dir/cuda_runtime_api.h ]]; then cuda_include=$dir; break; fi
done
if [[ -z $cuda_include ]]; then
  echo "no CUDA toolkit headers (cuda_runtime_api.h) on this machine: skipped"
  exit 77
fi
includes=(-I"$source_dir" -I"$source_dir/tests/core/train/cuda_shim" -I"$cuda_include")
for dir in "$@"; do includes+=(-I"$dir"); done
echo "compiling core/train/cuda_graph.cc with MISEG_CUDA_GRAPHS against $cuda_include"
"$cxx" -std=c++17 -fsyntax-only -Wall -Werror=return-type -DMISEG_CUDA_GRAPHS "${includes[@]}" \
  "$source_dir/core/train/cuda_graph.cc"
echo "compiles"
