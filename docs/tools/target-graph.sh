#!/bin/sh
# Draws the CMake target graph (libraries and executables; tests, fuzzers and external
# libraries left out) as docs/targets.png. Needs graphviz's dot.
# Usage: docs/tools/target-graph.sh [BUILD_DIR]   (default: build)
set -eu
top=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$top/build}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"; rm -f "$build/CMakeGraphVizOptions.cmake"' EXIT
cp "$top/docs/tools/CMakeGraphVizOptions.cmake" "$build/"
cmake --graphviz="$scratch/targets.dot" "$build" >/dev/null
dot -Tpng -Gdpi=80 "$scratch/targets.dot" -o "$top/docs/targets.png"
echo "wrote docs/targets.png"
