// Stands in for the header a CUDA build of LibTorch generates (Debian's CPU build lacks it),
// so that tests/core/train/cuda_graph_compiles.sh can compile the CUDA-graph code here.
#pragma once
#define C10_CUDA_BUILD_SHARED_LIBS
