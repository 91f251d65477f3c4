"""Systemd.Unit: deploy/miseg-server.service, unchanged, started and stopped by a real
systemd. This machine has no systemd as PID 1, so systemd runs as PID 1 of a container made
from the miseg image (plus Debian's systemd): the unit is installed as the operations guide
says (/usr/local/bin, user miseg, /var/lib/miseg, TLS, tokens and the DICOM node's
configuration in /etc/miseg), `systemctl start` brings the server up (health SERVING over
TLS with a token, metrics), `systemctl stop` stops it through SIGTERM with exit status 0
and the lock released, and its log is in the journal.

usage: systemd_unit_test.py
"""
import hashlib
import os
import shutil
import sys
import tempfile

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(__file__))
from deploytest import REPO, check, podman, require_podman, run, wait_until  # noqa: E402

VERSION = next(line.split("VERSION")[1].split()[0].rstrip(")")
               for line in open(os.path.join(REPO, "CMakeLists.txt"))
               if line.startswith("project(miseg VERSION"))
IMAGE = "localhost/miseg:" + VERSION
TEST_IMAGE = "localhost/miseg-systemd-test:" + VERSION
TOKEN = "systemd-test-token-0123456789"

CONTAINERFILE = """
FROM %s
USER root
RUN export DEBIAN_FRONTEND=noninteractive && apt-get update -qq \\
    && apt-get install -y -qq --no-install-recommends systemd systemd-sysv \\
    && apt-get clean && rm -rf /var/lib/apt/lists/*
COPY etc-miseg/ /etc/miseg/
RUN chown -R root:miseg /etc/miseg && chmod 750 /etc/miseg && chmod 640 /etc/miseg/*
COPY miseg-server.service /etc/systemd/system/miseg-server.service
STOPSIGNAL SIGRTMIN+3
ENTRYPOINT ["/lib/systemd/systemd"]
""" % IMAGE


def main():
    require_podman()
    if podman("image", "exists", IMAGE, check=False).returncode != 0:
        run([os.path.join(REPO, "deploy/container/build-image.sh")], timeout=3000)
    work = tempfile.mkdtemp(prefix="miseg-systemd-test-")
    name = "miseg-systemd-ctest-%d" % os.getpid()
    try:
        etc = os.path.join(work, "etc-miseg")
        os.makedirs(etc)
        run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
             "-keyout", etc + "/server.key", "-out", etc + "/server.crt"])
        digest = hashlib.sha256(TOKEN.encode()).hexdigest()  # as miseg-server hash-token
        with open(etc + "/tokens", "w") as f:
            f.write("%s admin systemd-test\n" % digest)
        with open(etc + "/stow-token", "w") as f:
            f.write("not-used\n")
        shutil.copy(os.path.join(REPO, "deploy/examples/dicom-node.json"), etc)
        shutil.copy(os.path.join(REPO, "deploy/miseg-server.service"), work)
        with open(os.path.join(work, "Containerfile"), "w") as f:
            f.write(CONTAINERFILE)
        podman("build", "--quiet", "--pull=never", "--network=host", "--format=oci",
               "-t", TEST_IMAGE, work, timeout=1200)

        # systemd as PID 1; --privileged for the unit's sandboxing (mount namespaces for
        # ProtectSystem, PrivateTmp); no network but the container's own loopback.
        podman("run", "-d", "--name", name, "--systemd=always", "--privileged",
               "--network=none", TEST_IMAGE)
        wait_until("systemd running", lambda: podman(
            "exec", name, "systemctl", "is-system-running", check=False).stdout.strip()
            in ("running", "degraded"), 120)
        podman("exec", name, "systemctl", "start", "miseg-server")
        cli = ["exec", "-e", "MISEG_TOKEN=" + TOKEN, name, "/usr/local/bin/miseg",
               "--address=127.0.0.1:50051", "--tls-ca=/etc/miseg/server.crt",
               "--tls-server-name=localhost"]
        wait_until("miseg-server SERVING under systemd",
                   lambda: podman(*cli, "health", check=False).returncode == 0, 180)
        podman(*cli, "datasets", "list")
        check(podman("exec", name, "stat", "-c", "%U", "/var/lib/miseg/miseg.db").stdout.strip()
              == "miseg", "the data directory is not the miseg user's")
        lock_pid = podman("exec", name, "cat", "/var/lib/miseg/LOCK").stdout.strip()
        main_pid = podman("exec", name, "systemctl", "show", "-p", "MainPID", "--value",
                          "miseg-server").stdout.strip()
        check(lock_pid == main_pid, "LOCK names %r, the unit's main pid is %r" % (lock_pid, main_pid))

        podman("exec", name, "systemctl", "stop", "miseg-server", timeout=200)
        show = podman("exec", name, "systemctl", "show", "-p", "ActiveState,Result,ExecMainStatus",
                      "miseg-server").stdout
        state = dict(line.split("=", 1) for line in show.split())
        check(state == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"},
              "after stop: %r" % state)
        journal = podman("exec", name, "journalctl", "-u", "miseg-server", "--no-pager").stdout
        check("signal 15: shutting down" in journal and "miseg-server: stopped" in journal,
              "journal: %s" % journal[-2000:])
        check(podman("exec", name, "cat", "/var/lib/miseg/LOCK").stdout.strip() == "",
              "LOCK still names a pid after the stop")
        print("Systemd.Unit passed")
    finally:
        podman("rm", "-f", "-v", name, check=False, timeout=120)
        podman("rmi", "-f", TEST_IMAGE, check=False, timeout=300)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
