#!/bin/bash
# The measurements of issue 10, in one run on this machine, each beside its ceiling or
# baseline measured in the same run:
#   0. the disk's own write rate (dd, 1 GiB, fsync) where the servers keep their data;
#   1. UPLOADERS concurrent uploads of STUDY_MIB MiB studies each to a fresh miseg-server:
#      MiB/s beside the disk's rate, every study stored whole, the server's peak RSS over idle;
#   2. WATCHERS concurrent WatchJob streams on a training job of JOB_STEPS steps: every
#      watcher receives every event in order through the end, the server's peak thread count;
#   3. the same files as 1 uploaded to Orthanc (Debian's, on loopback) through its REST API
#      (POST /instances) with as many parallel clients: instances/s and MiB/s beside miseg's;
#   4. (SEGMENTERS > 0) concurrent Segment calls for LOAD_SECONDS s with the model trained
#      in 2.
# Each measurement gets a fresh server on a fresh data directory. The figures are printed at
# the end; each run's JSON (miseg-load --json) is kept in RESULTS_DIR (default
# BUILD/load-results, replaced by each run).
#
# Sizes come from the environment; the defaults are the issue's. A small run:
#   UPLOADERS=2 STUDY_MIB=8 WATCHERS=20 bench/load.sh
# Needs: a built tree (BUILD, default ./build: miseg-server, miseg-load), python3 for the
# summary, /usr/sbin/Orthanc for 3 (skipped without it), about UPLOADERS x STUDY_MIB x 3
# of free disk under LOAD_PARENT.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-$ROOT/build}
UPLOADERS=${UPLOADERS:-8}
STUDY_MIB=${STUDY_MIB:-256}
UPLOADS_PER_CLIENT=${UPLOADS_PER_CLIENT:-1}
WATCHERS=${WATCHERS:-500}
JOB_STEPS=${JOB_STEPS:-400}
SEGMENTERS=${SEGMENTERS:-0}
LOAD_SECONDS=${LOAD_SECONDS:-30}
DD_MIB=${DD_MIB:-1024}
ORTHANC=${ORTHANC:-/usr/sbin/Orthanc}
LOAD_PARENT=${LOAD_PARENT:-$BUILD}  # on the disk being measured; not a tmpfs
KEEP=${KEEP:-0}                      # 1: keep the data directories
STRICT=${STRICT:-0}                  # 1: exit 1 unless every upload, watch and call succeeded

SERVER=$BUILD/server/miseg-server
LOAD=$BUILD/bench/miseg-load
for tool in "$SERVER" "$LOAD"; do
  [[ -x $tool ]] || { echo "load.sh: $tool is not built" >&2; exit 2; }
done

DIR=$(mktemp -d -p "$LOAD_PARENT" miseg-load.XXXXXX)
RESULTS_DIR=${RESULTS_DIR:-$BUILD/load-results}
rm -rf "$RESULTS_DIR"
mkdir -p "$RESULTS_DIR"
SERVER_PID=""
ORTHANC_PID=""

cleanup() {
  [[ -n $SERVER_PID ]] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
  [[ -n $ORTHANC_PID ]] && kill "$ORTHANC_PID" 2>/dev/null && wait "$ORTHANC_PID" 2>/dev/null
  [[ $KEEP == 1 ]] || rm -rf "$DIR"
  return 0
}
trap cleanup EXIT

# 500 watchers are 500 connections on each side.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true

log() { echo "load.sh: $*" >&2; }

# ---- 0. the disk --------------------------------------------------------------------------
log "disk: dd ${DD_MIB} MiB with fsync into $DIR"
DD_OUT=$(LC_ALL=C dd if=/dev/zero of="$DIR/ddtest" bs=1M count="$DD_MIB" conv=fsync 2>&1 | tail -1)
rm -f "$DIR/ddtest"
# "1073741824 bytes (1.1 GB, 1.0 GiB) copied, 2.51 s, 428 MB/s"
DISK_MIBS=$(echo "$DD_OUT" | awk '{for (i = 1; i < NF; ++i) if ($(i+1) == "s,") s = $i; print $1 / 1048576 / s}')
echo "{\"dd\": \"$DD_OUT\", \"mib_per_s\": $DISK_MIBS}" > "$RESULTS_DIR/disk.json"

# ---- a fresh miseg-server -----------------------------------------------------------------
start_server() {  # $1: name of the run; sets SERVER_PID, GRPC, METRICS
  local data=$DIR/$1-data
  rm -f "$data.ready"
  "$SERVER" --data_dir="$data" --listen=127.0.0.1:0 --metrics_listen=127.0.0.1:0 \
    --ready_file="$data.ready" > "$DIR/$1-server.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 600); do
    [[ -s $data.ready ]] && break
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$DIR/$1-server.log" >&2; exit 1; }
    sleep 0.1
  done
  [[ -s $data.ready ]] || { log "miseg-server did not start"; exit 1; }
  GRPC=127.0.0.1:$(sed -n 's/^grpc_port=//p' "$data.ready")
  METRICS=127.0.0.1:$(sed -n 's/^metrics_port=//p' "$data.ready")
}

stop_server() {
  kill "$SERVER_PID"
  wait "$SERVER_PID" || true
  SERVER_PID=""
  [[ $KEEP == 1 ]] || rm -rf "$DIR/$1-data"
}

run_load() {  # $1: result name; the rest: miseg-load's flags
  local name=$1
  shift
  log "miseg-load $*"
  "$LOAD" --json --work_dir="$DIR/work" "$@" > "$RESULTS_DIR/$name.json"
}

# ---- 1. concurrent uploads ----------------------------------------------------------------
if (( UPLOADERS > 0 )); then
  start_server upload
  run_load upload --address="$GRPC" --metrics="$METRICS" --uploaders="$UPLOADERS" \
    --study_mib="$STUDY_MIB" --uploads_per_client="$UPLOADS_PER_CLIENT"
  stop_server upload
fi

# ---- 2. concurrent watchers ---------------------------------------------------------------
TRAINED=""
if (( WATCHERS > 0 )); then
  start_server watch
  run_load watch --address="$GRPC" --metrics="$METRICS" --watchers="$WATCHERS" \
    --job_steps="$JOB_STEPS"
  TRAINED=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["watch"]["trained_dataset"])' "$RESULTS_DIR/watch.json")
  # ---- 4. segmentations, with the model just trained ----------------------------------------
  if (( SEGMENTERS > 0 )) && [[ -n $TRAINED ]]; then
    run_load segment --address="$GRPC" --metrics="$METRICS" --segmenters="$SEGMENTERS" \
      --segment_dataset="$TRAINED" --seconds="$LOAD_SECONDS"
  fi
  stop_server watch
fi

# ---- 3. Orthanc on the same files ---------------------------------------------------------
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
if (( UPLOADERS > 0 )) && [[ -x $ORTHANC ]]; then
  mkdir -p "$DIR/orthanc/storage"
  HTTP_PORT=$(free_port)
  DICOM_PORT=$(free_port)
  cat > "$DIR/orthanc/orthanc.json" <<EOF
{
  "Name": "miseg-load",
  "HttpPort": $HTTP_PORT,
  "DicomPort": $DICOM_PORT,
  "RemoteAccessAllowed": false,
  "AuthenticationEnabled": false,
  "StorageDirectory": "$DIR/orthanc/storage",
  "IndexDirectory": "$DIR/orthanc/storage",
  "Plugins": [],
  "SaveJobs": false
}
EOF
  "$ORTHANC" "$DIR/orthanc/orthanc.json" > "$DIR/orthanc.log" 2>&1 &
  ORTHANC_PID=$!
  for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$HTTP_PORT/system" > /dev/null && break
    kill -0 "$ORTHANC_PID" 2>/dev/null || { cat "$DIR/orthanc.log" >&2; exit 1; }
    sleep 0.1
  done
  run_load orthanc --orthanc="127.0.0.1:$HTTP_PORT" --pid="$ORTHANC_PID" \
    --uploaders="$UPLOADERS" --study_mib="$STUDY_MIB" --uploads_per_client="$UPLOADS_PER_CLIENT"
  kill "$ORTHANC_PID"
  wait "$ORTHANC_PID" || true
  ORTHANC_PID=""
elif (( UPLOADERS > 0 )); then
  log "no $ORTHANC: the Orthanc comparison is skipped"
fi

# ---- the figures --------------------------------------------------------------------------
python3 - "$RESULTS_DIR" "$STRICT" <<'EOF'
import json, os, sys

d, strict = sys.argv[1], sys.argv[2] == "1"
problems = []
def load(name):
    path = os.path.join(d, name + ".json")
    return json.load(open(path)) if os.path.exists(path) else None

MiB = 1 << 20
disk = load("disk")
print("disk       %.1f MiB/s written with fsync (%s)" % (disk["mib_per_s"], disk["dd"]))
up = load("upload")
if up:
    u, s = up["upload"], up["server"]
    print("upload     %d x %d MiB (%d files each), %d x %d uploads: %d stored whole, %d incomplete"
          % (up["uploaders"], u["study_mib"], u["study_files"], up["uploaders"],
             max(1, up["uploads_per_client"]), u["studies_whole"], u["studies_incomplete"]))
    print("           %.1f MiB/s (%.0f%% of the disk's), %.1f instances/s; Upload p50 %.2f s, p99 %.2f s"
          % (u["mib_per_s"], 100 * u["mib_per_s"] / disk["mib_per_s"], u["instances_per_s"],
             u["latency_s"]["p50"], u["latency_s"]["p99"]))
    print("           server RSS idle %.1f MiB, peak %.1f MiB: %+.1f MiB (target < 64); threads peak %d"
          % (s["rss_bytes"]["idle"] / MiB, s["rss_bytes"]["peak"] / MiB,
             s["rss_bytes"]["delta"] / MiB, s["threads"]["peak"]))
    if up["errors"]:
        print("           errors: %s" % json.dumps(up["errors"]))
    if up["errors"] or u["studies_incomplete"] or not u["studies_whole"]:
        problems.append("miseg uploads")
w = load("watch")
if w:
    x, s = w["watch"], w["server"]
    print("watch      %d watchers of a %s job with %d events: %d complete, %d failed, all saw every event in order: %s"
          % (x["watchers"], x["job_state"], x["job_events"], x["complete"], x["failed"],
             "yes" if x["all_saw_every_event"] else "NO"))
    print("           server threads idle %d, peak %d (target < 64); RSS %+.1f MiB; first event p99 %.3f s"
          % (s["threads"]["idle"], s["threads"]["peak"], s["rss_bytes"]["delta"] / MiB,
             x["first_event_latency_s"]["p99"]))
    if w["errors"]:
        print("           errors: %s" % json.dumps(w["errors"]))
    if w["errors"] or not x["all_saw_every_event"]:
        problems.append("watchers")
seg = load("segment")
if seg:
    g = seg["segment"]
    print("segment    %d segmenters: %.2f segmentations/s, p50 %.3f s, p99 %.3f s; errors %s"
          % (g["segmenters"], g["per_s"], g["latency_s"]["p50"], g["latency_s"]["p99"],
             json.dumps(seg["errors"])))
    if not g["ok"]:
        problems.append("segmentations")
o = load("orthanc")
if o and up:
    ou, mu = o["upload"], up["upload"]
    print("ingest     miseg %.1f instances/s, %.1f MiB/s; Orthanc %.1f instances/s, %.1f MiB/s (%d stored whole) "
          "on the same files with %d clients: miseg/Orthanc %.2fx"
          % (mu["instances_per_s"], mu["mib_per_s"], ou["instances_per_s"], ou["mib_per_s"],
             ou["studies_whole"], o["uploaders"],
             mu["instances_per_s"] / ou["instances_per_s"] if ou["instances_per_s"] else float("nan")))
    print("           Orthanc RSS %+.1f MiB over idle, threads peak %d"
          % (o["server"]["rss_bytes"]["delta"] / MiB, o["server"]["threads"]["peak"]))
    if o["errors"] or ou["studies_incomplete"] or not ou["studies_whole"]:
        problems.append("Orthanc uploads")
print("results    %s" % d)
if problems:
    print("FAILED     %s" % ", ".join(problems))
    sys.exit(1 if strict else 0)
EOF
