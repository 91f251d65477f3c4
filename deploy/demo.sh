#!/usr/bin/env bash
# The main job, end to end on one machine with the embedded defaults (SQLite and local disk):
# start miseg-server on loopback, generate phantom studies as DICOM, create a dataset,
# upload labeled, validation and unlabeled studies, train with the full objective, watch
# it, promote its model, segment a held-out study, and write the DICOM SEG, an overlay PNG
# and a training plot under ./miseg-demo/out/. Then stop the server.
#
# Usage: deploy/demo.sh [BUILD_DIR]   (default: build). Sized for 2 CPU cores: a few minutes.
# Environment: MISEG_DEMO_DIR (default ./miseg-demo), MISEG_DEMO_STEPS (default 800).
set -euo pipefail

build=${1:-build}
demo=${MISEG_DEMO_DIR:-miseg-demo}
steps=${MISEG_DEMO_STEPS:-800}
server_bin="$build/server/miseg-server"
miseg="$build/client/miseg"
for bin in "$server_bin" "$miseg"; do
  [[ -x $bin ]] || { echo "demo: $bin is missing; build first (cmake --build --preset default)" >&2; exit 2; }
done

rm -rf "$demo"
mkdir -p "$demo/out"
start=$(date +%s)
step() { printf '\n== %s (%ds)\n' "$1" $(( $(date +%s) - start )); }

step "starting miseg-server on 127.0.0.1 (data in $demo/data)"
"$server_bin" --data_dir="$demo/data" --listen=127.0.0.1:0 --metrics_listen=127.0.0.1:0 \
  --ready_file="$demo/ready" --training_threads="$(nproc)" 2> "$demo/server.log" &
server_pid=$!
stop_server() {
  if kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid"
    wait "$server_pid" || true
  fi
}
trap stop_server EXIT
for _ in $(seq 600); do
  [[ -f $demo/ready ]] && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$demo/server.log" >&2; exit 1; }
  sleep 0.1
done
[[ -f $demo/ready ]] || { echo "demo: the server did not start" >&2; exit 1; }
grpc_port=$(sed -n 's/^grpc_port=//p' "$demo/ready")
metrics_port=$(sed -n 's/^metrics_port=//p' "$demo/ready")
export MISEG_ADDRESS="127.0.0.1:$grpc_port"
"$miseg" health

step "generating phantom studies (cardiac cine MR, DICOM)"
# 4 labeled + 2 validation studies with their DICOM SEG, 20 unlabeled, 1 held out.
"$miseg" phantom "$demo/studies/labeled" --count 4 --labeled 4 --seed 1 --first 0
"$miseg" phantom "$demo/studies/validation" --count 2 --labeled 2 --seed 1 --first 4
"$miseg" phantom "$demo/studies/unlabeled" --count 20 --seed 1 --first 6
"$miseg" phantom "$demo/studies/heldout" --count 1 --seed 1 --first 26

step "creating the dataset and uploading"
"$miseg" datasets create cardiac --classes background,right_ventricle,myocardium,left_ventricle --modality MR
"$miseg" upload cardiac "$demo/studies/labeled" --role labeled
"$miseg" upload cardiac "$demo/studies/validation" --role validation
"$miseg" upload cardiac "$demo/studies/unlabeled" --role unlabeled
"$miseg" datasets show cardiac

step "training with the full objective ($steps steps)"
# The phantom experiment's setting (bench/RESULTS.md): a 64-pixel grid, four U-Net levels,
# ramp-up over a third of the run; the method's defaults for everything else.
job=$("$miseg" train start cardiac --steps "$steps" --grid-size 64 --widths 16,32,64,128 \
      --rampup-steps $(( steps / 3 )) --warmup-steps $(( steps / 20 )) \
      --validate-every 200 --checkpoint-every 100 --json \
      | sed -n 's/.*"id":"\{0,1\}\([0-9]*\)"\{0,1\},.*/\1/p' | head -1)
[[ -n $job ]] || { echo "demo: no job id" >&2; exit 1; }
"$miseg" train watch "$job"
"$miseg" train show "$job" --plot "$demo/out/training.png"

step "promoting the model"
model=$("$miseg" train show "$job" --json | sed -n 's/.*"modelId":"\{0,1\}\([0-9]*\)"\{0,1\}.*/\1/p' | head -1)
"$miseg" models promote "$model"
"$miseg" models list cardiac

step "segmenting the held-out study"
"$miseg" segment cardiac "$demo"/studies/heldout/subject-026 \
  --out "$demo/out/segmentation.dcm" --overlay "$demo/out/overlay.png"

step "metrics"
curl -sf "http://127.0.0.1:$metrics_port/metrics" | grep -E '^miseg_(jobs|training_validation|inference_duration_seconds_count)' || true

step "stopping the server"
stop_server
trap - EXIT
printf '\nDone in %ds. Results:\n  %s\n  %s\n  %s\n' $(( $(date +%s) - start )) \
  "$demo/out/segmentation.dcm" "$demo/out/overlay.png" "$demo/out/training.png"
