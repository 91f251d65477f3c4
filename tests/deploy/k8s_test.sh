#!/usr/bin/env bash
# Kubernetes.Manifests: every overlay of deploy/k8s renders with `kubectl kustomize`, every
# rendered object (and the example Secrets) passes deploy/k8s/check-schema.mjs against the
# Kubernetes v1.32.0 API, and the rules of docs/operations.md hold in what is rendered.
# Then, in a scratch copy, a misspelt field, a value of the wrong type and a missing
# required field each make the check fail, naming the field.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
check="$repo/deploy/k8s/check-schema.mjs"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
command -v kubectl >/dev/null ||
  fail "kubectl is not installed (v1.27 or later, with kustomize v5: Debian 12's kubernetes-client 1.20 is too old)"

for overlay in "$repo"/deploy/k8s/overlays/*/; do
  name="$(basename "$overlay")"
  kubectl kustomize "$overlay" > "$scratch/$name.yaml" || fail "$name does not render"
  node "$check" "$scratch/$name.yaml" || fail "$name: schema check"
  # The coordinator: one replica, a ReadWriteOncePod claim, time to checkpoint, grpc probes.
  node --input-type=module - "$scratch/$name.yaml" "$repo" <<'JS' || fail "$name: rules"
import fs from "node:fs";
import { pathToFileURL } from "node:url";
const dir = process.env.MISEG_K8S_SCHEMA_DIR || "/usr/local/lib/miseg-k8s-schema";
const yaml = (await import(pathToFileURL(dir + "/node_modules/yaml/dist/index.js").href)).default;
const objects = yaml.parseAllDocuments(fs.readFileSync(process.argv[2], "utf8")).map((d) => d.toJS());
const of = (kind, name) => objects.find((o) => o.kind === kind && o.metadata.name === name);
const ok = (cond, what) => { if (!cond) { console.error("rule broken: " + what); process.exit(1); } };
const sts = of("StatefulSet", "miseg-server");
ok(sts && sts.spec.replicas === 1, "coordinator StatefulSet with replicas 1");
ok(sts.spec.volumeClaimTemplates[0].spec.accessModes.join() === "ReadWriteOncePod", "ReadWriteOncePod");
const pod = sts.spec.template.spec;
ok(pod.terminationGracePeriodSeconds >= 120, "terminationGracePeriodSeconds >= 120");
const server = pod.containers[0];
for (const p of ["startupProbe", "readinessProbe", "livenessProbe"]) ok(server[p]?.grpc, p + " is a grpc probe");
ok(server.args.includes("--health_listen=0.0.0.0:" + server.livenessProbe.grpc.port), "probes on --health_listen");
ok(server.resources.requests && server.resources.limits, "coordinator requests and limits");
ok(pod.securityContext.runAsNonRoot && server.securityContext.readOnlyRootFilesystem, "non-root, read-only root");
ok(sts.spec.template.metadata.annotations["prometheus.io/scrape"] === "true", "scrape annotation");
ok(!objects.some((o) => o.kind === "HorizontalPodAutoscaler"), "no autoscaler");
const worker = of("Deployment", "miseg-worker").spec.template.spec;
const w = worker.containers[0];
ok(w.args.includes("--advertise_host=$(POD_IP)") &&
   w.env.find((e) => e.name === "POD_IP").valueFrom.fieldRef.fieldPath === "status.podIP", "advertise_host = pod IP");
ok(w.args.some((a) => a.startsWith("--coordinator=")) && w.args.some((a) => a.startsWith("--token_file=")), "worker flags");
ok(w.resources.requests && w.resources.limits && w.securityContext.readOnlyRootFilesystem, "worker resources, read-only root");
ok(of("Service", "miseg").spec.ports.some((p) => p.port === 50051), "gRPC Service");
ok(of("Service", "miseg-dicom").spec.ports.some((p) => p.port === 11112), "DICOM Service");
const np = of("NetworkPolicy", "miseg-worker");
ok(np.spec.ingress[0].from.some((f) => f.podSelector.matchLabels["app.kubernetes.io/name"] === "miseg-worker") &&
   np.spec.ingress[0].ports[0].endPort === 65535, "workers reach each other on ephemeral ports");
if (process.argv[2].endsWith("gpu-workers.yaml")) {
  ok(w.resources.limits["nvidia.com/gpu"] === "1", "a GPU per worker");
  ok(server.env.find((e) => e.name === "MISEG_DEVICES").value === "", "coordinator trains on workers only");
}
console.log("rules hold in " + process.argv[2].split("/").pop());
JS
done
node "$check" "$repo/deploy/k8s/base/secrets.example.yaml" || fail "secrets.example.yaml"

# Broken copies must fail, naming what is wrong.
expect_failure() {  # description, expected text, sed expression, file under base/
  rm -rf "$scratch/k8s" && cp -r "$repo/deploy/k8s" "$scratch/k8s"
  sed -i "$3" "$scratch/k8s/base/$4"
  cmp -s "$repo/deploy/k8s/base/$4" "$scratch/k8s/base/$4" && fail "$1: the edit changed nothing"
  if out="$(kubectl kustomize "$scratch/k8s/overlays/single-node" | node "$check" -)"; then
    fail "$1 was accepted"
  fi
  grep -qF -- "$2" <<<"$out" || fail "$1: expected '$2' in: $out"
  echo "refused as expected: $1"
}
expect_failure "a misspelt field" 'unknown field "readOnlyRootFileSystem"' \
  's/readOnlyRootFilesystem: true/readOnlyRootFileSystem: true/' coordinator.yaml
expect_failure "a misspelt field in a list item" 'unknown field "containerPor"' \
  '0,/containerPort: 50051/s//containerPor: 50051/' coordinator.yaml
expect_failure "a string where a number goes" 'expected a number' \
  's/terminationGracePeriodSeconds: 150/terminationGracePeriodSeconds: "150"/' coordinator.yaml
expect_failure "a missing required field" 'required field "selector"' \
  '/^  selector:$/,/^      app.kubernetes.io\/name: miseg-server$/d' coordinator.yaml
expect_failure "a kind at a wrong apiVersion" 'serves no NetworkPolicy in networking.k8s.io/v1beta1' \
  's#networking.k8s.io/v1#networking.k8s.io/v1beta1#' networkpolicy.yaml
echo "Kubernetes.Manifests passed"
