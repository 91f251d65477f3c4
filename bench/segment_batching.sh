#!/bin/bash
# Dynamic batching across Segment calls (issue 15), in one run: segmentations/s and Segment
# latency (p50, p99) with SEGMENTERS concurrent callers (default 1 4 8), with batching off
# and on, each ratio on/off taken in the same run. Every setting runs REPEATS times
# (default 2), alternating off and on, each on a freshly started server (same data
# directory, same model), so that a slow spell on a shared machine hits both.
#   off: --inference_concurrency=CONCURRENCY (default 8): the calls run side by side;
#   on:  the same, plus --inference_max_batch_slices=MAX_SLICES (default 64)
#        --inference_batch_wait_ms=WAIT_MS (default 2);
#   default (BASELINE=1): today's defaults (--inference_concurrency=1), for reference.
# The model: a job of JOB_STEPS steps (default 4: the weights do not matter for speed) on
# miseg-load's small training dataset, grid JOB_GRID (default 128) and widths JOB_WIDTHS
# (default 16,32,64,128,256: the server's default network), trained by the first server.
# Needs a built tree (BUILD, default ./build: miseg-server, miseg-load), curl and python3.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-$ROOT/build}
SEGMENTERS=${SEGMENTERS:-1 4 8}
REPEATS=${REPEATS:-2}
SECONDS_EACH=${SECONDS_EACH:-20}
CONCURRENCY=${CONCURRENCY:-8}
MAX_SLICES=${MAX_SLICES:-64}
WAIT_MS=${WAIT_MS:-2}
BASELINE=${BASELINE:-0}
STRICT=${STRICT:-0}  # 1: exit 1 unless every call of every setting succeeded
JOB_STEPS=${JOB_STEPS:-4}
JOB_GRID=${JOB_GRID:-128}
JOB_WIDTHS=${JOB_WIDTHS:-16,32,64,128,256}

SERVER=$BUILD/server/miseg-server
LOAD=$BUILD/bench/miseg-load
for tool in "$SERVER" "$LOAD"; do
  [[ -x $tool ]] || { echo "segment_batching.sh: $tool is not built" >&2; exit 2; }
done
DIR=$(mktemp -d "${TMPDIR:-/tmp}/miseg-batching.XXXXXX")
SERVER_PID=""
cleanup() {
  [[ -n $SERVER_PID ]] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
  rm -rf "$DIR"
  return 0
}
trap cleanup EXIT
log() { echo "segment_batching.sh: $*" >&2; }

start_server() {  # flags of the setting; sets SERVER_PID, GRPC
  rm -f "$DIR/ready"
  "$SERVER" --data_dir="$DIR/data" --listen=127.0.0.1:0 --metrics_listen=127.0.0.1:0 \
    --ready_file="$DIR/ready" --inference_queue=16 "$@" >> "$DIR/server.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 600); do
    [[ -s $DIR/ready ]] && break
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$DIR/server.log" >&2; exit 1; }
    sleep 0.1
  done
  [[ -s $DIR/ready ]] || { log "miseg-server did not start"; exit 1; }
  GRPC=127.0.0.1:$(sed -n 's/^grpc_port=//p' "$DIR/ready")
  METRICS=127.0.0.1:$(sed -n 's/^metrics_port=//p' "$DIR/ready")
}
stop_server() {
  kill "$SERVER_PID"
  wait "$SERVER_PID" || true
  SERVER_PID=""
}

log "training the model (grid $JOB_GRID, widths $JOB_WIDTHS, $JOB_STEPS steps)"
start_server
"$LOAD" --json --address="$GRPC" --watchers=1 --job_steps="$JOB_STEPS" --job_grid="$JOB_GRID" \
  --job_widths="$JOB_WIDTHS" > "$DIR/train.json"
stop_server
DATASET=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["watch"]["trained_dataset"])' "$DIR/train.json")
[[ -n $DATASET ]] || { log "the training job did not succeed"; cat "$DIR/train.json" >&2; exit 1; }

SETTINGS="off on"
[[ $BASELINE == 1 ]] && SETTINGS="default off on"
for repeat in $(seq "$REPEATS"); do
  for segmenters in $SEGMENTERS; do
    for setting in $SETTINGS; do
      case $setting in
        default) start_server ;;
        off) start_server --inference_concurrency="$CONCURRENCY" ;;
        on) start_server --inference_concurrency="$CONCURRENCY" \
              --inference_max_batch_slices="$MAX_SLICES" --inference_batch_wait_ms="$WAIT_MS" ;;
      esac
      log "run $repeat, $segmenters segmenters, batching $setting"
      "$LOAD" --json --address="$GRPC" --segmenters="$segmenters" --segment_dataset="$DATASET" \
        --seconds="$SECONDS_EACH" > "$DIR/$setting-$segmenters-$repeat.json"
      # The forwards' sizes (miseg_inference_batch_slices; batching on only) and the
      # network's share of each segmentation (miseg_inference_duration_seconds).
      curl -sf "http://$METRICS/metrics" > "$DIR/$setting-$segmenters-$repeat.metrics" || true
      stop_server
    done
  done
done

# shellcheck disable=SC2086  # one argument per segmenter count
python3 - "$DIR" "$REPEATS" "$SETTINGS" "$STRICT" $SEGMENTERS <<'EOF'
import json, os, sys
d, repeats, settings, strict = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(), sys.argv[4]
counts = sys.argv[5:]
failed = []
def seg(setting, n, r):
    j = json.load(open(os.path.join(d, "%s-%s-%d.json" % (setting, n, r))))
    if j["errors"] or j["segment"]["ok"] < 1:
        failed.append("%s, %s segmenters, run %d: %s" % (setting, n, r, json.dumps(j["errors"])))
    return j["segment"]
def metric(setting, n, r, name):
    path = os.path.join(d, "%s-%s-%d.metrics" % (setting, n, r))
    for line in open(path) if os.path.exists(path) else []:
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0
def extra(setting, n, r):
    calls = metric(setting, n, r, "miseg_inference_duration_seconds_count")
    network = metric(setting, n, r, "miseg_inference_duration_seconds_sum") / calls if calls else 0
    forwards = metric(setting, n, r, "miseg_inference_batch_slices_count")
    slices = metric(setting, n, r, "miseg_inference_batch_slices_sum")
    return "%.3f | %s |" % (network, "%.1f" % (slices / forwards) if forwards else "-")
print("| segmenters | run | batching | segmentations/s | p50 s | p99 s | on/off: throughput | p50 | p99 | inference s (mean) | slices per forward (mean) |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for n in counts:
    for r in range(1, repeats + 1):
        off = seg("off", n, r)
        for setting in settings:
            s = seg(setting, n, r)
            if setting == "on":
                ratios = "**%.2f** | %.2f | %.2f |" % (
                    s["per_s"] / off["per_s"], s["latency_s"]["p50"] / off["latency_s"]["p50"],
                    s["latency_s"]["p99"] / off["latency_s"]["p99"])
            else:
                ratios = " | | |"
            print("| %s | %d | %s | %.2f | %.3f | %.3f | %s %s" % (
                n, r, setting, s["per_s"], s["latency_s"]["p50"], s["latency_s"]["p99"], ratios,
                extra(setting, n, r)))
for f in sorted(set(failed)):
    print("errors: " + f)
if strict == "1" and failed:
    sys.exit(1)
EOF
