#!/bin/sh
# miseg-experiment --active_learning twice with the same seeds at toy size: the same table
# and results file, bit for bit; a third run on the first's results file trains nothing and
# prints the same table. Usage: active_learning_reproducible.sh BUILD_DIR SCRATCH_DIR
set -eu
build=$1
scratch=$2
rm -rf "$scratch" && mkdir -p "$scratch"
run() {
  "$build/bench/miseg-experiment" --active_learning --train_subjects 5 --heldout 2 --seeds 3,4 \
    --steps 4 --size 64 --widths 4,8 --labeled_batch 2 --unlabeled_batch 2 --al_start 1 \
    --al_add 1 --threads 1 --log_every 1000 --results "$scratch/$1.tsv" \
    2>"$scratch/$1.log" >"$scratch/$1.md"
}
run first
run second
grep -q '^| suggestion | 2 | 2 |' "$scratch/first.md" || { cat "$scratch/first.md"; exit 1; }
grep -q '^| suggestion - random | 4 |' "$scratch/first.md" || { cat "$scratch/first.md"; exit 1; }
cmp "$scratch/first.md" "$scratch/second.md" || { diff "$scratch/first.md" "$scratch/second.md"; exit 1; }
cmp "$scratch/first.tsv" "$scratch/second.tsv"
cp "$scratch/first.tsv" "$scratch/third.tsv"
run third
if grep -q 'step ' "$scratch/third.log"; then echo "the resumed run trained again"; exit 1; fi
cmp "$scratch/first.md" "$scratch/third.md"
cmp "$scratch/first.tsv" "$scratch/third.tsv"
echo "active learning experiment reproducible"
