#!/bin/sh
# miseg-experiment twice with the same seed on a toy grid: the same table, bit for bit
# (the wall-time line aside). Usage: experiment_reproducible.sh BUILD_DIR SCRATCH_DIR
set -eu
build=$1
scratch=$2
rm -rf "$scratch" && mkdir -p "$scratch"
run() {
  "$build/bench/miseg-experiment" --labeled_counts 1,2 --train_subjects 4 --heldout 2 \
    --seeds 3 --steps 12 --size 32 --widths 8,16 --objectives labeled_only,mi,mean_teacher \
    --validation 1 --search 'w_cons=1,5' --threads 1 --log_every 1000 --results "$scratch/$1.tsv" --plot "$scratch/$1.png" \
    2>"$scratch/$1.log" | grep -v '^wall time' >"$scratch/$1.md"
}
run first
run second
grep -q '| 2 | mean_teacher | 1 |' "$scratch/first.md" || { cat "$scratch/first.md"; exit 1; }
# The search ran on the validation subject for both searched objectives and chose one each.
grep -q '^chosen for mi: w_cons=' "$scratch/first.md" || { cat "$scratch/first.md"; exit 1; }
grep -q '^chosen for mean_teacher: w_cons=' "$scratch/first.md" || { cat "$scratch/first.md"; exit 1; }
cmp "$scratch/first.md" "$scratch/second.md" || { diff "$scratch/first.md" "$scratch/second.md"; exit 1; }
cmp "$scratch/first.tsv" "$scratch/second.tsv"
# A third run with the first's results file trains nothing and prints the same table.
"$build/bench/miseg-experiment" --labeled_counts 1,2 --train_subjects 4 --heldout 2 --seeds 3 \
  --steps 12 --size 32 --widths 8,16 --objectives labeled_only,mi,mean_teacher --threads 1 \
  --validation 1 --search 'w_cons=1,5' --results "$scratch/first.tsv" 2>"$scratch/third.log" | grep -v '^wall time' >"$scratch/third.md"
if grep -q 'step ' "$scratch/third.log"; then echo "the resumed run trained again"; exit 1; fi
cmp "$scratch/first.md" "$scratch/third.md"
test -s "$scratch/first.png"
echo "experiment reproducible"
