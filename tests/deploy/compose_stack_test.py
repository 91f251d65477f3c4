"""Compose.Stack: deploy/compose/up.sh brings miseg-server, Orthanc, Prometheus and
Alertmanager up (podman-compose); a tiny model is trained through the host's CLI; a phantom
study stored in Orthanc is sent to miseg by Orthanc (C-STORE), miseg stores and segments it
(the DICOM node's route) and sends the SEG back, which is found in Orthanc referencing the
study; Prometheus's HTTP API shows the miseg target up, miseg_build_info scraped and miseg's
alerting rules loaded, and an Alertmanager attached; deploy/compose/down.sh --volumes takes
it all down again.

usage: compose_stack_test.py MISEG_CLI
"""
import glob
import json
import os
import sys
import tempfile
import urllib.parse

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(__file__))
from deploytest import (REPO, check, free_port, http_get, http_json, podman,  # noqa: E402
                        podman_env, require_podman, run, wait_until)

CLI = os.path.abspath(sys.argv[1])
FAST = ["--grid-size", "32", "--widths", "8,16", "--labeled-batch", "2", "--unlabeled-batch",
        "2", "--warmup-steps", "1", "--rampup-steps", "2", "--validate-every", "2"]


def main():
    require_podman()
    work = tempfile.mkdtemp(prefix="miseg-compose-test-")
    project = "miseg-ctest-%d" % os.getpid()
    ports = {name: free_port() for name in (
        "MISEG_GRPC_PORT", "MISEG_METRICS_PORT", "MISEG_DICOM_PORT", "ORTHANC_HTTP_PORT",
        "ORTHANC_DICOM_PORT", "PROMETHEUS_PORT", "ALERTMANAGER_PORT")}
    env = dict(podman_env(), **{k: str(v) for k, v in ports.items()})
    orthanc = "http://127.0.0.1:%d" % ports["ORTHANC_HTTP_PORT"]
    prometheus = "http://127.0.0.1:%d" % ports["PROMETHEUS_PORT"]
    address = "--address=127.0.0.1:%d" % ports["MISEG_GRPC_PORT"]
    try:
        run([os.path.join(REPO, "deploy/compose/up.sh"), "--project=" + project], env=env,
            timeout=3000)

        # ---- a model for the route's dataset ------------------------------------------------
        run([CLI, "phantom", os.path.join(work, "labeled"), "--count", "3", "--labeled", "3",
             "--small", "--quiet"])
        run([CLI, "phantom", os.path.join(work, "pacs"), "--count", "1", "--small", "--first",
             "5", "--quiet"])
        run([CLI, address, "datasets", "create", "cardiac", "--classes",
             "background,right_ventricle,myocardium,left_ventricle"])
        run([CLI, address, "upload", "cardiac", os.path.join(work, "labeled"), "--role",
             "labeled", "--quiet"])
        run([CLI, address, "train", "start", "cardiac", "--steps", "4", *FAST, "--watch",
             "--quiet"], timeout=900)
        dataset = json.loads(run([CLI, address, "--json", "datasets", "show", "cardiac"]).stdout)
        check(int(dataset.get("activeModelId", 0)) > 0, "no active model: %r" % dataset)

        # ---- Orthanc holds a study and sends it to miseg --------------------------------------
        files = sorted(glob.glob(os.path.join(work, "pacs", "**", "*.dcm"), recursive=True))
        check(files, "no phantom files")
        for f in files:
            with open(f, "rb") as data:
                http_json(orthanc + "/instances", data=data.read())
        studies = http_json(orthanc + "/studies")
        check(len(studies) == 1, "Orthanc studies: %r" % studies)
        study = http_json(orthanc + "/studies/" + studies[0])
        study_uid = study["MainDicomTags"]["StudyInstanceUID"]
        sent = http_json(orthanc + "/modalities/miseg/store",
                         data=json.dumps({"Resources": studies, "Synchronous": True}).encode())
        check(int(sent.get("InstancesCount", len(files))) == len(files), "store: %r" % sent)

        # ---- the SEG comes back into Orthanc, in the same study -------------------------------
        def seg_series():
            for series_id in http_json(orthanc + "/series"):
                series = http_json(orthanc + "/series/" + series_id)
                if series["MainDicomTags"].get("Modality") == "SEG":
                    return series
            return None
        seg = wait_until("a SEG in Orthanc", seg_series, 600)
        check(seg["ParentStudy"] == studies[0], "SEG in another study: %r" % seg)
        instance = http_json(orthanc + "/instances/%s/simplified-tags" % seg["Instances"][0])
        check(instance["StudyInstanceUID"] == study_uid, "SEG study UID")
        deliveries = json.loads(run([CLI, address, "--json", "deliveries", "list"]).stdout)
        check(any(d.get("state") == "DELIVERY_STATE_DELIVERED"
                  for d in deliveries.get("deliveries", [])), "deliveries: %r" % deliveries)

        # ---- Prometheus scrapes miseg, with the rules and an Alertmanager ---------------------
        def miseg_target_up():
            targets = http_json(prometheus + "/api/v1/targets")["data"]["activeTargets"]
            return any(t["labels"]["job"] == "miseg" and t["health"] == "up" for t in targets)
        wait_until("Prometheus's miseg target up", miseg_target_up, 180)
        query = prometheus + "/api/v1/query?" + urllib.parse.urlencode(
            {"query": 'miseg_build_info{job="miseg"}'})
        result = wait_until("miseg_build_info scraped",
                            lambda: http_json(query)["data"]["result"], 120)
        check(result[0]["value"][1] == "1", "miseg_build_info: %r" % result)
        rules = http_json(prometheus + "/api/v1/rules")["data"]["groups"]
        check(any(g["name"] == "miseg" and len(g["rules"]) > 0 for g in rules),
              "miseg's rules not loaded: %r" % [g["name"] for g in rules])
        wait_until("an Alertmanager attached to Prometheus",
                   lambda: http_json(prometheus + "/api/v1/alertmanagers")
                   ["data"]["activeAlertmanagers"], 120)
        metrics = http_get("http://127.0.0.1:%d/metrics" % ports["MISEG_METRICS_PORT"]).decode()
        check("miseg_deliveries" in metrics, "no delivery metrics")
        print("Compose.Stack passed: SEG %s back in Orthanc, miseg scraped" % seg["ID"])
    finally:
        down = run([os.path.join(REPO, "deploy/compose/down.sh"), "--volumes",
                    "--project=" + project], env=env, check=False, timeout=600)
        left = podman("ps", "-a", "--filter", "name=" + project, "--format", "{{.Names}}",
                      check=False).stdout.split()
        left += [n for n in podman("network", "ls", "--format", "{{.Name}}",
                                   check=False).stdout.split() if n.startswith(project)]
        left += [v for v in podman("volume", "ls", "--format", "{{.Name}}",
                                   check=False).stdout.split() if v.startswith(project)]
        run(["rm", "-rf", work], check=False)
        if down.returncode != 0 or left:
            raise AssertionError("down.sh failed (%d) or left %s: %s" % (
                down.returncode, left, down.stderr[-2000:]))


if __name__ == "__main__":
    main()
