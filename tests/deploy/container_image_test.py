"""Container.Image: builds the miseg image with deploy/container/build-image.sh on this
machine (base made locally by mmdebstrap, no registry), exports it as an OCI archive,
starts it with --network=host, checks gRPC health SERVING (the host's CLI and the image's
own), /metrics, the non-root user and the JSON log, uploads a phantom study with the host's
`miseg` CLI, and stops it with SIGTERM (exit 0). Prints the build time and the image size.

usage: container_image_test.py MISEG_CLI
"""
import json
import os
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(__file__))
from deploytest import (REPO, check, free_port, http_get, podman, require_podman, run,  # noqa: E402
                        wait_until)

CLI = os.path.abspath(sys.argv[1])
VERSION = next(line.split("VERSION")[1].split()[0].rstrip(")")
               for line in open(os.path.join(REPO, "CMakeLists.txt"))
               if line.startswith("project(miseg VERSION"))
IMAGE = "localhost/miseg:" + VERSION


def main():
    require_podman()
    work = tempfile.mkdtemp(prefix="miseg-container-test-")
    name = "miseg-ctest-%d" % os.getpid()
    volume = name + "-data"
    try:
        # ---- build (layers and the compiler cache of earlier builds are reused) ----------
        archive = os.path.join(work, "miseg.oci.tar")
        started = time.monotonic()
        built = run([os.path.join(REPO, "deploy/container/build-image.sh"), "--prune",
                     "--save=" + archive], timeout=3000)
        build_s = time.monotonic() - started
        check(built.stdout.strip().splitlines()[-1] == IMAGE, "build-image printed " + built.stdout)
        size = int(podman("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout)
        listing = run(["tar", "-tf", archive]).stdout.split()
        check("index.json" in listing and "oci-layout" in listing,
              "not an OCI archive: %s" % listing[:10])
        config = json.loads(podman("image", "inspect", IMAGE).stdout)[0]["Config"]
        check(config.get("User") == "10001:10001", "image user %r" % config.get("User"))
        check("/var/lib/miseg" in config.get("Volumes", {}), "volumes %r" % config.get("Volumes"))
        binaries = podman("run", "--rm", "--entrypoint", "/bin/sh", IMAGE, "-c",
                          "ls /usr/local/bin; command -v c++ cmake || true").stdout.split()
        check(binaries == ["miseg", "miseg-server", "miseg-worker"],
              "the image's /usr/local/bin and compilers: %s" % binaries)
        print("image %s: built in %.0f s, %d bytes (%.0f MiB), OCI archive %d bytes" % (
            IMAGE, build_s, size, size / 2**20, os.path.getsize(archive)))

        # ---- run it on the host's network -------------------------------------------------
        grpc, metrics = free_port(), free_port()
        podman("run", "-d", "--name", name, "--network=host", "-v", volume + ":/var/lib/miseg",
               IMAGE, "--listen=127.0.0.1:%d" % grpc, "--metrics_listen=127.0.0.1:%d" % metrics,
               "--log_format=json")
        address = "--address=127.0.0.1:%d" % grpc
        wait_until("gRPC health SERVING from the host",
                   lambda: run([CLI, address, "health"], check=False).returncode == 0, 180)
        podman("exec", name, "/usr/local/bin/miseg", address, "health")
        body = http_get("http://127.0.0.1:%d/metrics" % metrics).decode()
        check('miseg_build_info{version="%s"} 1' % VERSION in body, "no miseg_build_info")
        check(podman("exec", name, "id", "-u").stdout.strip() == "10001", "not uid 10001")

        # ---- a phantom study through the host's CLI ------------------------------------------
        studies = os.path.join(work, "studies")
        run([CLI, "phantom", studies, "--count", "1", "--labeled", "1", "--small", "--quiet"])
        run([CLI, address, "datasets", "create", "cardiac", "--classes",
             "background,right_ventricle,myocardium,left_ventricle"])
        run([CLI, address, "upload", "cardiac", studies, "--role", "labeled", "--quiet"])
        listed = json.loads(run([CLI, address, "--json", "studies", "list", "cardiac"]).stdout)
        check(len(listed.get("studies", [])) == 1, "studies list: %r" % listed)

        # ---- stop: SIGTERM, exit 0; every log line one JSON object ---------------------------
        podman("stop", "--time", "150", name, timeout=200)
        state = json.loads(podman("inspect", name).stdout)[0]["State"]
        check(state["ExitCode"] == 0, "exit code %r" % state["ExitCode"])
        logs = podman("logs", name).stderr + podman("logs", name).stdout
        records = [json.loads(line) for line in logs.splitlines() if line.strip()]
        check(any(r["msg"] == "stopped" for r in records), "no 'stopped' in %r" % records[-3:])
        check(all(r["component"] == "miseg-server" and r["level"] for r in records),
              "log records %r" % records[:3])
        print("Container.Image passed: build %.0f s, image %.0f MiB" % (build_s, size / 2**20))
    finally:
        podman("rm", "-f", "-v", name, check=False)
        podman("volume", "rm", "-f", volume, check=False)
        run(["rm", "-rf", work], check=False)


if __name__ == "__main__":
    main()
