"""Server.BackupRestore and Server.LogFormats, against the real binaries.

Backup: a server with a trained model and uploaded studies keeps running and serving
(an upload runs during the backup) while `miseg-server backup` copies its data directory;
`restore` refuses a directory a server holds or that is not empty; a server started on the
restored directory lists the same datasets, studies and models as the original had, and
segments with the restored model; a damaged object is reported by the next backup.
Logs: every stderr line of a server run with --log_format=logfmt or json is one record of
that form, gRPC's own lines included; an unknown form is refused. The plain-text health
endpoint (--health_listen) answers SERVING beside a TLS API and serves nothing else.

usage: backup_test.py MISEG_SERVER MISEG_CLI
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))
from deploytest import check, run  # noqa: E402
from miseg_server_process import ServerProcess  # noqa: E402

SERVER, CLI = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
FAST = ["--grid-size", "32", "--widths", "8,16", "--labeled-batch", "2", "--unlabeled-batch",
        "2", "--warmup-steps", "1", "--rampup-steps", "2", "--validate-every", "2"]
LOGFMT = re.compile(r'^time=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z level=[a-z]+ '
                    r'component=miseg-server msg="(?:[^"\\]|\\.)*"$')


def cli(server, *args, **kwargs):
    return run([CLI, "--address=127.0.0.1:%d" % server.grpc_port, *args], **kwargs)


def listing(server):
    """What a client sees of the store: datasets, their studies and models."""
    out = {}
    for d in json.loads(cli(server, "--json", "datasets", "list").stdout).get("datasets", []):
        studies = json.loads(cli(server, "--json", "studies", "list", d["name"]).stdout)
        models = json.loads(cli(server, "--json", "models", "list", d["name"]).stdout)
        out[d["name"]] = (
            sorted(s["seriesInstanceUid"] for s in studies.get("studies", [])),
            sorted((m["id"], m.get("steps")) for m in models.get("models", [])),
            d.get("activeModelId"))
    return out


def start(work, name, data_dir, *flags):
    server = ServerProcess(SERVER, data_dir, os.path.join(work, name + ".ready"), list(flags),
                           name=name)
    server.wait_until_serving()
    return server


def test_backup_restore(work):
    data = os.path.join(work, "data")
    original = start(work, "original", data, "--log_format=logfmt")
    try:
        run([CLI, "phantom", os.path.join(work, "labeled"), "--count", "3", "--labeled", "3",
             "--small", "--quiet"])
        run([CLI, "phantom", os.path.join(work, "more"), "--count", "2", "--small", "--first",
             "3", "--quiet"])
        cli(original, "datasets", "create", "cardiac", "--classes",
            "background,right_ventricle,myocardium,left_ventricle")
        cli(original, "upload", "cardiac", os.path.join(work, "labeled"), "--role", "labeled",
            "--quiet")
        cli(original, "train", "start", "cardiac", "--steps", "4", *FAST, "--watch", "--quiet",
            timeout=900)
        before = listing(original)
        check(before["cardiac"][1], "no model before the backup: %r" % before)

        # The backup runs beside the live server, while an upload streams into it.
        upload = subprocess.Popen(
            [CLI, "--address=127.0.0.1:%d" % original.grpc_port, "upload", "cardiac",
             os.path.join(work, "more"), "--role", "unlabeled", "--quiet"])
        backup_dir = os.path.join(work, "backup")
        done = run([SERVER, "backup", "--data_dir=" + data, "--to=" + backup_dir])
        check(re.match(r"backed up \d+ objects", done.stdout), done.stdout)
        check(upload.wait(timeout=300) == 0, "the upload beside the backup failed")
        manifest = json.load(open(os.path.join(backup_dir, "BACKUP.json")))
        check(manifest["models"] == 1 and manifest["objects"] > 0, "manifest %r" % manifest)
        after = listing(original)
        # The backup holds the state before the upload, or after it: never part of it.
        expected_studies = {len(before["cardiac"][0]), len(after["cardiac"][0])}
        run([CLI, "--address=127.0.0.1:%d" % original.grpc_port, "health"])

        # Restore refuses the live server's directory, and a directory not empty.
        refused = run([SERVER, "restore", "--from=" + backup_dir, "--data_dir=" + data],
                      check=False)
        check(refused.returncode == 2 and "in use by process" in refused.stderr,
              "restore onto a live server: %d %s" % (refused.returncode, refused.stderr))
        # A second backup into the same folder is refused (it is not empty).
        again = run([SERVER, "backup", "--data_dir=" + data, "--to=" + backup_dir], check=False)
        check(again.returncode == 2 and "not empty" in again.stderr, again.stderr)
    finally:
        check(original.stop() == 0, "the original server did not stop cleanly")
    for line in original.log().splitlines():
        check(LOGFMT.match(line), "not a logfmt record: %r" % line)

    restored = os.path.join(work, "restored")
    done = run([SERVER, "restore", "--from=" + backup_dir, "--data_dir=" + restored])
    check(done.stdout.startswith("restored "), done.stdout)
    not_empty = run([SERVER, "restore", "--from=" + backup_dir, "--data_dir=" + restored],
                    check=False)
    check(not_empty.returncode == 2 and "not empty" in not_empty.stderr, not_empty.stderr)
    # Restore copies only what a complete backup has.
    os.remove(os.path.join(backup_dir, "BACKUP.json"))
    incomplete = run([SERVER, "restore", "--from=" + backup_dir, "--data_dir=" + work + "/x"],
                     check=False)
    check(incomplete.returncode == 2 and "not a complete" in incomplete.stderr,
          incomplete.stderr)

    server = start(work, "restored", restored)
    try:
        got = listing(server)
        check(got["cardiac"][1:] == before["cardiac"][1:], "models %r vs %r" % (got, before))
        check(len(got["cardiac"][0]) in expected_studies and
              set(before["cardiac"][0]) <= set(got["cardiac"][0]),
              "studies %r vs %r" % (got, before))
        seg = os.path.join(work, "seg.dcm")
        cli(server, "segment", "cardiac", os.path.join(work, "labeled", "subject-000"),
            "--out", seg, "--quiet", timeout=300)
        check(os.path.getsize(seg) > 0, "no SEG from the restored model")
    finally:
        check(server.stop() == 0, "the restored server did not stop cleanly")

    # A damaged object: the next backup names it (exit 1) and leaves nothing behind.
    objects = [os.path.join(root, f) for root, _, files in os.walk(os.path.join(restored, "objects"))
               for f in files]
    with open(objects[0], "r+b") as f:
        first = f.read(1)
        f.seek(0)
        f.write(bytes([first[0] ^ 0xFF]))
    damaged = run([SERVER, "backup", "--data_dir=" + restored, "--to=" + work + "/backup2"],
                  check=False)
    check(damaged.returncode == 1 and "does not match its SHA-256" in damaged.stderr,
          "damaged object: %d %s" % (damaged.returncode, damaged.stderr))
    check(not os.path.exists(os.path.join(work, "backup2", "BACKUP.json")), "a manifest")
    print("Server.BackupRestore passed")


def test_log_formats(work):
    # With TLS on the API, and the plain-text health endpoint for probes beside it.
    run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
         "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", work + "/server.key", "-out", work + "/server.crt"])
    server = start(work, "json", os.path.join(work, "json-data"), "--log_format=json",
                   "--tls_cert=" + work + "/server.crt", "--tls_key=" + work + "/server.key",
                   "--health_listen=127.0.0.1:0")
    serving = json.loads(next(line for line in server.log().splitlines()
                              if "serving miseg.v1" in line))["msg"]
    health = "--address=127.0.0.1:" + re.search(r"health on port (\d+)", serving).group(1)
    run([CLI, health, "health"])  # plain text, SERVING
    api = run([CLI, health, "datasets", "list"], check=False)  # nothing but health there
    check(api.returncode == 1 and "UNIMPLEMENTED" in api.stderr.upper(), api.stderr)
    run([CLI, "--address=127.0.0.1:%d" % server.grpc_port, "--tls-ca=" + work + "/server.crt",
         "--tls-server-name=localhost", "health"])
    check(server.stop() == 0, "the json server did not stop cleanly")
    records = [json.loads(line) for line in server.log().splitlines()]
    check(len(records) >= 3, "records %r" % records)
    for r in records:
        check(set(r) == {"time", "level", "component", "msg"} and
              r["component"] == "miseg-server", "record %r" % r)
    check(any(r["msg"].startswith("serving miseg.v1") for r in records), "no serving line")
    check(records[-1]["msg"] == "stopped", "last record %r" % records[-1])
    # gRPC's own error lines (here: the port is taken) are records of the format too.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        busy = subprocess.run([SERVER, "--data_dir=" + work + "/busy", "--log_format=json",
                               "--listen=127.0.0.1:%d" % taken.getsockname()[1],
                               "--metrics_listen=127.0.0.1:0"],
                              capture_output=True, text=True, timeout=120)
    check(busy.returncode == 1, "a taken port: exit %d" % busy.returncode)
    busy_records = [json.loads(line) for line in busy.stderr.splitlines()]
    check(any(r["level"] == "error" and r["msg"].startswith("grpc: ") for r in busy_records),
          "no gRPC record in %r" % busy_records)
    bad = subprocess.run([SERVER, "--log_format=xml", "--data_dir=" + work + "/x"],
                         capture_output=True, text=True, timeout=60)
    check(bad.returncode == 2 and "--log_format" in bad.stderr, bad.stderr)
    print("Server.LogFormats passed")


def main():
    work = tempfile.mkdtemp(prefix="miseg-backup-test-")
    try:
        if sys.argv[3:] == ["logs"]:
            test_log_formats(work)
        else:
            test_backup_restore(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
