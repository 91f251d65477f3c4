#!/usr/bin/python3
"""End-to-end test of the `miseg` command line: runs the CLI as a user would (a subprocess,
the connection from MISEG_ADDRESS / MISEG_TOKEN or --address / --token) against a real
miseg-server that the test starts on free loopback ports with a token file (admin, trainer
and reader). Covers every subcommand with its plain and --json output, the exit codes
(0 ok, 1 server/connection error or watched job not succeeded, 2 usage, 3 refused input,
4 authentication/permission), the DICOM SEG it writes (pydicom, dciodvfy), the PNGs, and
`train watch` surviving a SIGKILL and restart of the server. Stops the server with SIGTERM.

Run with Debian's interpreter (it has pydicom):
  /usr/bin/python3 cli_test.py BUILD/client/miseg BUILD/server/miseg-server [-v]
The binaries may come from the environment instead: MISEG_CLI, MISEG_SERVER. Other
arguments go to unittest.

Synchronisation never sleeps: the server is ready when its stderr logs "serving miseg.v1 on
port", jobs are followed with `train watch`, and the restart waits on the watch's output.
"""

import hashlib
import json
import os
import queue
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
from miseg_server_process import (  # noqa: E402
    ServerProcess, kill_servers, parse_cli_test_args, run_tests)

MISEG = None   # the CLI binary, set in main()
SERVER = None  # the server binary
ALL_SERVERS = []  # every ServerProcess started, for the log on failure

ADMIN_TOKEN = "cli-admin-" + "4b1d7e"
TRAINER_TOKEN = "cli-trainer-" + "90c2aa"
READER_TOKEN = "cli-reader-" + "e7f013"
DATASET = "cardiac"
OTHER_DATASET = "brain-ct"
CLASSES = ["background", "right_ventricle", "myocardium", "left_ventricle"]
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SEED = 11

STARTUP_TIMEOUT_S = 60
CLI_TIMEOUT_S = 120      # any one CLI call that does not train
WATCH_TIMEOUT_S = 300    # a `train watch` until its job ends
SHUTDOWN_TIMEOUT_S = 60

# Small, fast training settings (seconds on two CPU cores).
FAST = ["--grid-size", "32", "--widths", "8,16"]


def start_server(work_dir, data_dir, token_file, listen, name):
    server = ServerProcess(SERVER, data_dir, os.path.join(work_dir, name + ".ready"),
                           ["--token_file=" + token_file], name=name, listen=listen)
    ALL_SERVERS.append(server)
    return server


class Result:
    def __init__(self, argv, returncode, stdout, stderr):
        self.argv = argv
        self.rc = returncode
        self.stdout = stdout
        self.stderr = stderr

    def json(self):
        return json.loads(self.stdout)

    def json_lines(self):
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]

    def describe(self):
        return "miseg %s\n  exit %s\n  stdout: %s\n  stderr: %s" % (
            " ".join(self.argv), self.rc, self.stdout[-3000:], self.stderr[-3000:])


def sha256_hex(token):
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def png_size(path):
    """(width, height) from a PNG's IHDR, after checking the signature."""
    with open(path, "rb") as f:
        head = f.read(24)
    if not head.startswith(PNG_SIGNATURE) or head[12:16] != b"IHDR":
        raise AssertionError("%s is not a PNG: %r" % (path, head[:16]))
    return struct.unpack(">II", head[16:24])


def read_series(folder):
    """(series UID, study UID, image files, SEG files) of a phantom folder, by pydicom."""
    import pydicom
    images, segs, series, study = [], [], set(), set()
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if ds.SOPClassUID == SEG_SOP_CLASS:
            segs.append(path)
        else:
            images.append(path)
            series.add(str(ds.SeriesInstanceUID))
            study.add(str(ds.StudyInstanceUID))
    assert len(series) == 1 and len(study) == 1, folder
    return series.pop(), study.pop(), images, segs


def files_under(folder):
    return sum(len(files) for _, _, files in os.walk(folder))


class CliTest(unittest.TestCase):
    """The methods run in name order and share one server (state in cls.state):
    test_0x usage and phantoms, test_1x datasets, uploads and studies, test_2x training,
    test_3x models, test_4x segmentation, test_5x authentication and connection,
    test_8x watch across a server restart, test_99 SIGTERM."""

    work_dir = None
    server = None
    state = {}

    # ---- fixture --------------------------------------------------------------------------

    @classmethod
    def setUpClass(cls):
        cls.work_dir = tempfile.mkdtemp(prefix="miseg-cli-test-")
        try:
            # Run copies, so a rebuild in the build tree during the test cannot swap a binary
            # between the server's first start and its restart.
            global MISEG, SERVER
            os.makedirs(os.path.join(cls.work_dir, "bin"))
            MISEG = shutil.copy2(MISEG, os.path.join(cls.work_dir, "bin", "miseg"))
            SERVER = shutil.copy2(SERVER, os.path.join(cls.work_dir, "bin", "miseg-server"))
            cls.data_dir = os.path.join(cls.work_dir, "data")
            cls.token_file = os.path.join(cls.work_dir, "tokens")
            with open(cls.token_file, "w") as f:
                f.write("# miseg CLI test tokens\n")
                f.write("%s admin cli-admin\n" % sha256_hex(ADMIN_TOKEN))
                f.write("%s trainer cli-trainer\n" % sha256_hex(TRAINER_TOKEN))
                f.write("%s reader cli-reader\n" % sha256_hex(READER_TOKEN))
            cls.server = start_server(cls.work_dir, cls.data_dir, cls.token_file,
                                      "127.0.0.1:0", "server-1")
            cls.port = cls.server.wait_until_serving(STARTUP_TIMEOUT_S)
            cls.address = "127.0.0.1:%d" % cls.port
        except BaseException:
            cls.tearDownClass()  # unittest does not call it when setUpClass fails
            raise

    @classmethod
    def tearDownClass(cls):
        kill_servers(ALL_SERVERS)
        if cls.work_dir:
            shutil.rmtree(cls.work_dir, ignore_errors=True)

    def path(self, *parts):
        return os.path.join(self.work_dir, *parts)

    # ---- running the CLI ------------------------------------------------------------------

    def run_cli(self, *args, token=TRAINER_TOKEN, address="env", timeout=CLI_TIMEOUT_S):
        """Runs `miseg ARGS` with pipes (no terminal). address="env": MISEG_ADDRESS names
        the test's server; None: no MISEG_ADDRESS; otherwise that MISEG_ADDRESS. token goes
        to MISEG_TOKEN (None: unset)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("MISEG_")}
        if address == "env":
            env["MISEG_ADDRESS"] = self.address
        elif address is not None:
            env["MISEG_ADDRESS"] = address
        if token is not None:
            env["MISEG_TOKEN"] = token
        argv = [str(a) for a in args]
        try:
            proc = subprocess.run([MISEG] + argv, env=env, cwd=self.work_dir,
                                  stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired as e:
            self.fail("miseg %s did not finish within %ds; stderr: %r"
                      % (" ".join(argv), timeout, e.stderr))
        result = Result(argv, proc.returncode, proc.stdout.decode("utf-8", "replace"),
                        proc.stderr.decode("utf-8", "replace"))
        # Without a terminal there are no progress bars: no carriage returns, no escapes.
        for stream in (result.stdout, result.stderr):
            self.assertNotIn("\r", stream, result.describe())
            self.assertNotIn("\033[", stream, result.describe())
        return result

    def ok(self, *args, **kwargs):
        result = self.run_cli(*args, **kwargs)
        self.assertEqual(result.rc, 0, result.describe())
        return result

    def ok_json(self, *args, **kwargs):
        result = self.ok(*(args + ("--json",)), **kwargs)
        try:
            return result.json()
        except ValueError as e:
            self.fail("not one JSON document (%s): %s" % (e, result.describe()))

    def fails(self, code, *args, message=None, **kwargs):
        """Runs the CLI, expects exit `code` with nothing on stdout and a one-line error on
        stderr starting with 'miseg:'."""
        result = self.run_cli(*args, **kwargs)
        self.assertEqual(result.rc, code, result.describe())
        self.assertEqual(result.stdout, "", result.describe())
        lines = result.stderr.splitlines()
        self.assertTrue(lines and lines[0].startswith("miseg: "), result.describe())
        if code == 2:
            self.assertEqual(len(lines), 1, result.describe())
        else:
            self.assertEqual(len(lines), 1, result.describe())
        if message is not None:
            self.assertIn(message, lines[0], result.describe())
        return result

    def watch_json(self, job_id, *extra, expect=0):
        result = self.run_cli("train", "watch", job_id, "--json", *extra,
                              timeout=WATCH_TIMEOUT_S)
        self.assertEqual(result.rc, expect, result.describe())
        events = result.json_lines()
        self.assertTrue(events, result.describe())
        sequences = [int(e["sequence"]) for e in events]
        self.assertEqual(sequences, sorted(set(sequences)), "sequences must increase")
        for e in events:
            self.assertEqual(e["jobId"], str(job_id))
            self.assertEqual(len([k for k in ("step", "validation", "state") if k in e]), 1, e)
        return events

    # ---- test_0x: usage, help, phantoms ---------------------------------------------------

    def test_00_usage_errors_exit_2(self):
        # No arguments: the help on stderr, exit 2.
        r = self.run_cli()
        self.assertEqual(r.rc, 2, r.describe())
        self.assertEqual(r.stdout, "")
        self.assertTrue(r.stderr.startswith("miseg: "), r.describe())
        self.assertIn("Exit codes", r.stderr)
        # help / --help: the help on stdout, exit 0.
        for args in (["help"], ["--help"]):
            r = self.ok(*args)
            self.assertIn("miseg train watch JOB", r.stdout)
            self.assertIn("--checkpoint-every", r.stdout)
            self.assertEqual(r.stderr, "")
        self.fails(2, "frob", message="unknown command 'frob'")
        self.fails(2, "health", "--bogus=1", message="unknown flag --bogus")
        self.fails(2, "datasets", "list", "--frob", "x", message="unknown flag --frob")
        self.fails(2, "train", "start", DATASET, "--stepz", "3", message="unknown flag --stepz")
        self.fails(2, "train", "show", "notanumber", message="train show JOB")
        self.fails(2, "train", "cancel", "-3", message="ids are positive numbers")
        self.fails(2, "train", "frob", message="train start|list|show|cancel|watch")
        self.fails(2, "datasets", message="datasets create|list|show")
        self.fails(2, "datasets", "create", "x", message="--classes")
        self.fails(2, "studies", "delete", DATASET, message="studies delete DATASET SERIES_UID")
        self.fails(2, "models", "show", message="models show MODEL")
        self.fails(2, "upload", DATASET, self.work_dir, message="--role")  # missing --role
        self.fails(2, "upload", DATASET, self.work_dir, "--role", "teacher",
                   message="--role is labeled, unlabeled or validation")
        self.fails(2, "train", "start", DATASET, "--consistency", "l1", message="--consistency")
        self.fails(2, "train", "start", DATASET, "--widths", "8,x", message="--widths")
        # Input the CLI itself rejects is a usage error, not a refusal by the server.
        self.fails(2, "train", "start", DATASET, "--steps", "abc", message="--steps takes an integer")
        self.fails(2, "train", "start", DATASET, "--config", self.path("no-such.json"),
                   message="cannot read --config")
        # --ranks: devices that train at once, checked before any job exists.
        for ranks in ("0", "-2", "5000"):
            self.fails(2, "train", "start", DATASET, "--ranks", ranks,
                       message="--ranks is the number of devices to train on at once, 1 to")
        self.fails(2, "train", "start", DATASET, "--ranks", "two", message="--ranks takes an integer")
        self.fails(2, "train", "start", DATASET, "--objective", "pseudo_labels",
                   message="--objective is mi, labeled_only, entropy, mean_teacher")
        zero_ranks = self.path("zero-ranks.json")
        with open(zero_ranks, "w") as f:
            json.dump({"ranks": 0}, f)
        self.fails(2, "train", "start", DATASET, "--config", zero_ranks, message="--ranks is the")
        self.fails(2, "workers", message="miseg workers list")
        self.fails(2, "workers", "list", "--role", "x", message="unknown flag --role")
        self.fails(2, "segment", DATASET, "--out", "x.dcm", message="miseg segment DATASET")
        self.fails(2, "segment", DATASET, "--stored", "1.2.3", "--overlay", "o.png",
                   "--out", "x.dcm", message="--overlay needs the image files")
        self.fails(2, "phantom", self.path("nothing"), message="--count")
        self.fails(2, "datasets", "list", "-o", "yaml", message="-o is json, wide or text")
        self.fails(2, "health", "--wide", message="unknown flag --wide")
        # A flag without its value is found while parsing: the message, then the help.
        r = self.run_cli("studies", "list", DATASET, "--role")
        self.assertEqual(r.rc, 2, r.describe())
        self.assertEqual(r.stdout, "")
        self.assertEqual(r.stderr.splitlines()[0], "miseg: --role needs a value", r.describe())

    def test_01_phantom(self):
        r = self.ok_json("phantom", self.path("labeled"), "--count", 3, "--labeled", 3,
                         "--small", "--seed", SEED)
        self.assertEqual(r, {"folders": [self.path("labeled", "subject-%03d" % i)
                                         for i in range(3)]})
        r = self.ok("phantom", self.path("validation"), "--count", 1, "--labeled", 1,
                    "--small", "--seed", SEED, "--first", 3)
        self.assertIn("wrote 1 phantom studies (1 with a DICOM SEG)", r.stdout)
        self.ok("phantom", self.path("unlabeled"), "--count", 2, "--small", "--seed", SEED,
                "--first", 4, "--quiet")
        self.ok("phantom", self.path("extra"), "--count", 1, "--small", "--seed", SEED,
                "--first", 6, "--quiet")
        self.ok("phantom", self.path("new"), "--count", 1, "--small", "--seed", SEED,
                "--first", 7, "--quiet")
        for i in range(3):
            _, _, images, segs = read_series(self.path("labeled", "subject-%03d" % i))
            self.assertEqual(len(segs), 1)
            self.assertGreaterEqual(len(images), 4)
        _, _, _, segs = read_series(self.path("unlabeled", "subject-004"))
        self.assertEqual(segs, [])
        self.state["validation_series"] = read_series(
            self.path("validation", "subject-003"))[0]
        self.state["extra_series"] = read_series(self.path("extra", "subject-006"))[0]

    # ---- test_1x: health, datasets, uploads, studies --------------------------------------

    def test_10_health(self):
        r = self.ok("health")
        self.assertEqual(r.stdout, "serving\n")
        self.assertEqual(self.ok_json("health"), {"status": "SERVING"})
        # The connection from flags instead of the environment.
        r = self.ok("health", "--address", self.address, "--token", READER_TOKEN,
                    token=None, address=None)
        self.assertEqual(r.stdout, "serving\n")
        # --address wins over MISEG_ADDRESS.
        self.ok("health", "--address", self.address, address="127.0.0.1:1")

    def test_11_datasets(self):
        d = self.ok_json("datasets", "create", DATASET, "--classes", ",".join(CLASSES),
                         token=ADMIN_TOKEN)
        self.assertEqual(d["name"], DATASET)
        self.assertEqual(d["classNames"], CLASSES)
        self.assertEqual(d["modality"], "MR")
        self.assertEqual(d["labeledStudies"], "0")  # int64: a JSON string
        self.assertEqual(d["activeModelId"], "0")
        r = self.ok("datasets", "create", OTHER_DATASET, "--classes", "background,lesion",
                    "--modality", "CT", token=ADMIN_TOKEN)
        self.assertEqual(r.stdout.strip(), "created dataset %s (CT, 2 classes)" % OTHER_DATASET)
        # Refused input: a taken name, a malformed name.
        self.fails(3, "datasets", "create", DATASET, "--classes", "background,a",
                   token=ADMIN_TOKEN, message="ALREADY_EXISTS")
        self.fails(3, "datasets", "create", "Not A Name", "--classes", "background,a",
                   token=ADMIN_TOKEN, message="INVALID_ARGUMENT")

        listed = self.ok_json("datasets", "list", token=READER_TOKEN)
        self.assertEqual(sorted(d["name"] for d in listed["datasets"]),
                         sorted([DATASET, OTHER_DATASET]))
        self.assertEqual(self.ok("datasets", "list", "-o", "json", token=READER_TOKEN).json(),
                         listed)
        r = self.ok("datasets", "list", token=READER_TOKEN)
        lines = r.stdout.splitlines()
        self.assertTrue(lines[0].startswith("NAME"), r.stdout)
        self.assertEqual(len(lines), 3, r.stdout)
        self.assertTrue(any(line.split()[:2] == [OTHER_DATASET, "CT"] for line in lines[1:]))

        shown = self.ok_json("datasets", "show", DATASET, token=READER_TOKEN)
        self.assertEqual(shown["name"], DATASET)
        self.assertEqual(shown["classNames"], CLASSES)
        r = self.ok("datasets", "show", DATASET, token=READER_TOKEN)
        self.assertIn("dataset     %s" % DATASET, r.stdout)
        self.assertIn("classes     %s" % ", ".join(CLASSES), r.stdout)
        self.assertIn("active      no model yet", r.stdout)
        self.fails(3, "datasets", "show", "no-such-dataset", message="NOT_FOUND")

    def test_12_upload_labeled(self):
        # A folder of three study folders: the CLI groups files by series and finds each
        # series' SEG among them.
        folder = self.path("labeled")
        r = self.ok("upload", DATASET, folder, "--role", "labeled")
        stored = [line for line in r.stdout.splitlines() if line.startswith("stored ")]
        self.assertEqual(len(stored), 3, r.stdout)
        for line in stored:
            self.assertIn("labeled", line)
            self.assertTrue(line.endswith("+ SEG"), line)
        # Each series shortened in the middle (prefix...suffix) to one that stands for it alone.
        uids = [read_series(self.path("labeled", "subject-%03d" % i))[0] for i in range(3)]
        shorts = [line.split()[1] for line in stored]
        for short in shorts:
            self.assertIn("\u2026", short)
            prefix, suffix = short.split("\u2026")
            self.assertEqual(len([u for u in uids if u.startswith(prefix) and u.endswith(suffix)]),
                             1, r.stdout)
        self.assertIn("%d stored, 0 duplicate, 0 refused instances" % files_under(folder),
                      r.stdout)

    def test_13_upload_validation_and_unlabeled_json(self):
        folder = self.path("validation", "subject-003")
        series, study, images, segs = read_series(folder)
        r = self.ok_json("upload", DATASET, folder, "--role", "validation")
        self.assertEqual(list(r), ["uploads"])
        self.assertEqual(len(r["uploads"]), 1)
        u = r["uploads"][0]
        self.assertEqual(u["storedInstances"], str(len(images) + len(segs)))
        self.assertEqual(u["duplicateInstances"], "0")
        self.assertEqual(u["refusedInstances"], "0")
        self.assertGreater(int(u["bytesReceived"]), 0)
        self.assertEqual(len(u["stored"]), 1)
        s = u["stored"][0]
        self.assertEqual(s["role"], "STUDY_ROLE_VALIDATION")
        self.assertEqual(s["seriesInstanceUid"], series)
        self.assertEqual(s["studyInstanceUid"], study)
        self.assertEqual(s["slices"], len(images))
        self.assertTrue(s["segmentationSopInstanceUid"])
        self.assertEqual(len(u["results"]), len(images) + len(segs))
        self.assertTrue(all(x["outcome"] == "INSTANCE_OUTCOME_STORED" for x in u["results"]))

        # Unlabeled: two study folders, one Upload each.
        r = self.ok_json("upload", DATASET, self.path("unlabeled", "subject-004"),
                         self.path("unlabeled", "subject-005"), "--role", "unlabeled")
        self.assertEqual(len(r["uploads"]), 2)
        self.assertEqual(sum(int(u["storedInstances"]) for u in r["uploads"]),
                         files_under(self.path("unlabeled")))
        for u in r["uploads"]:
            self.assertEqual(len(u["stored"]), 1)
            self.assertEqual(u["stored"][0]["role"], "STUDY_ROLE_UNLABELED")
            self.assertEqual(u["stored"][0]["segmentationSopInstanceUid"], "")

    def test_14_reupload_is_all_duplicates(self):
        folder = self.path("labeled")
        r = self.ok("upload", DATASET, folder, "--role", "labeled")
        self.assertIn("0 stored, %d duplicate, 0 refused instances" % files_under(folder),
                      r.stdout)
        self.assertEqual(len([l for l in r.stdout.splitlines() if l.startswith("duplicate ")]),
                         3, r.stdout)
        r = self.ok_json("upload", DATASET, folder, "--role", "labeled")
        self.assertEqual(sum(int(u["duplicateInstances"]) for u in r["uploads"]),
                         files_under(folder))
        for u in r["uploads"]:
            self.assertEqual(u["storedInstances"], "0")
            self.assertEqual(u["stored"], [])

    def test_15_upload_with_a_non_dicom_file_exits_3(self):
        mixed = self.path("mixed")
        shutil.copytree(self.path("extra", "subject-006"), mixed)
        with open(os.path.join(mixed, "notes.txt"), "w") as f:
            f.write("not a DICOM file\n")
        images = files_under(mixed) - 1
        r = self.run_cli("upload", DATASET, mixed, "--role", "unlabeled", "--wide")
        self.assertEqual(r.rc, 3, r.describe())
        # The study is stored all the same (--wide: its whole UID); the refusal is on stderr.
        self.assertIn(self.state["extra_series"], r.stdout)
        self.assertIn("%d stored, 0 duplicate, 1 refused instances" % images, r.stdout)
        refusals = r.stderr.splitlines()  # one line a reason, nothing else
        self.assertEqual(len(refusals), 1, r.describe())
        self.assertTrue(refusals[0].startswith("refused    1 file: "), r.describe())
        self.assertIn("notes.txt", refusals[0])
        self.assertIn("not DICOM", refusals[0])

        r = self.run_cli("upload", DATASET, mixed, "--role", "unlabeled", "--json")
        self.assertEqual(r.rc, 3, r.describe())
        uploads = r.json()["uploads"]
        self.assertEqual(sum(int(u["duplicateInstances"]) for u in uploads), images)
        self.assertEqual(sum(int(u["refusedInstances"]) for u in uploads), 1)
        refused = [x for u in uploads for x in u["results"]
                   if x["outcome"] == "INSTANCE_OUTCOME_REFUSED"]
        self.assertEqual(len(refused), 1)
        self.assertTrue(refused[0]["fileName"].endswith("notes.txt"), refused)
        self.assertIn("not DICOM", refused[0]["reason"])

        # Uploads into an unknown dataset are refused input too.
        self.fails(3, "upload", "no-such-dataset", self.path("extra"), "--role", "labeled",
                   message="NOT_FOUND")

    def test_16_studies_list_and_delete(self):
        listed = self.ok_json("studies", "list", DATASET, token=READER_TOKEN)["studies"]
        roles = sorted(s["role"] for s in listed)
        self.assertEqual(roles, ["STUDY_ROLE_LABELED"] * 3 + ["STUDY_ROLE_UNLABELED"] * 3 +
                         ["STUDY_ROLE_VALIDATION"])
        labeled = self.ok_json("studies", "list", DATASET, "--role", "labeled")["studies"]
        self.assertEqual(len(labeled), 3)
        for s in labeled:
            self.assertEqual(s["role"], "STUDY_ROLE_LABELED")
            self.assertEqual(s["modality"], "MR")
            self.assertTrue(s["segmentationSopInstanceUid"])
        r = self.ok("studies", "list", DATASET, "--role", "validation", "--wide")
        lines = r.stdout.splitlines()
        self.assertTrue(lines[0].startswith("SERIES"), r.stdout)
        self.assertEqual(len(lines), 2, r.stdout)
        self.assertEqual(lines[1].split()[:3], [self.state["validation_series"], "validation",
                                                "MR"])
        # SEG, the labeling priority (none before `studies suggest`), then the series
        # description (the phantom's, decoded) as the last column.
        self.assertRegex(lines[1], r"yes\s+-  Phantom short-axis cine$")
        # Without --wide the UID is shortened in the middle; -o wide is --wide.
        short = self.ok("studies", "list", DATASET, "--role", "validation").stdout.splitlines()
        prefix, suffix = short[1].split()[0].split("\u2026")
        self.assertTrue(self.state["validation_series"].startswith(prefix), short)
        self.assertTrue(self.state["validation_series"].endswith(suffix), short)
        self.assertEqual(self.ok("studies", "list", DATASET, "--role", "validation", "-o",
                                 "wide").stdout, r.stdout)
        self.fails(3, "studies", "list", "no-such-dataset", message="NOT_FOUND")

        extra = self.state["extra_series"]
        instances = files_under(self.path("extra"))
        # Deleting is the admin's: a trainer is refused.
        self.fails(4, "studies", "delete", DATASET, extra, message="PERMISSION_DENIED")
        r = self.ok("studies", "delete", DATASET, extra, token=ADMIN_TOKEN)
        self.assertEqual(r.stdout, "deleted %d instances\n" % instances)
        self.fails(3, "studies", "delete", DATASET, extra, token=ADMIN_TOKEN,
                   message="NOT_FOUND")
        # Uploaded again after the delete, then deleted with --json.
        self.ok("upload", DATASET, self.path("extra"), "--role", "unlabeled")
        r = self.ok_json("studies", "delete", DATASET, extra, token=ADMIN_TOKEN)
        self.assertEqual(r, {"deletedInstances": str(instances)})
        left = self.ok_json("studies", "list", DATASET)["studies"]
        self.assertNotIn(extra, [s["seriesInstanceUid"] for s in left])
        self.assertEqual(len(left), 6)
        d = self.ok_json("datasets", "show", DATASET)
        self.assertEqual((d["labeledStudies"], d["unlabeledStudies"], d["validationStudies"]),
                         ("3", "2", "1"))
        self.assertGreater(int(d["instances"]), 0)
        self.assertGreater(int(d["storedBytes"]), 0)

    def test_17_lossy_jpeg2000_study_is_marked(self):
        # Issue 21: pydicom's 693_J2KI.dcm, a CT slice in lossy JPEG 2000 (decoded by
        # miseg's own codec), is stored and marked as lossy; removed again afterwards.
        sample = "/usr/lib/python3/dist-packages/pydicom/data/test_files/693_J2KI.dcm"
        if not os.path.exists(sample):
            self.skipTest("pydicom's samples are not installed")
        folder = self.path("lossy")
        os.makedirs(folder, exist_ok=True)
        shutil.copy(sample, folder)
        r = self.ok("upload", OTHER_DATASET, folder, "--role", "unlabeled")
        self.assertIn("1 stored, 0 duplicate, 0 refused instances", r.stdout)
        listed = self.ok_json("studies", "list", OTHER_DATASET)["studies"]
        self.assertEqual(len(listed), 1, listed)
        self.assertTrue(listed[0]["lossyCompressed"], listed)
        self.assertEqual(listed[0]["lossyCompressionMethod"], "ISO_15444_1")
        lines = self.ok("studies", "list", OTHER_DATASET).stdout.splitlines()
        self.assertEqual(lines[1].split()[2], "CT*", lines)
        self.assertEqual(lines[-1], "* lossy-compressed images: a model may behave "
                                    "differently on them")
        self.ok("studies", "delete", OTHER_DATASET, listed[0]["seriesInstanceUid"],
                token=ADMIN_TOKEN)

    # ---- test_2x: training ----------------------------------------------------------------

    def test_20_train_start_with_flags_and_watch(self):
        job = self.ok_json("train", "start", DATASET, "--steps", 6, *FAST,
                           "--labeled-batch", 2, "--unlabeled-batch", 2,
                           "--validate-every", 3, "--checkpoint-every", 3,
                           "--warmup-steps", 1, "--rampup-steps", 2, "--consistency", "kl",
                           "--w-mi", "0.2", "--lr", "0.002")
        job_id = int(job["id"])
        self.state["job_flags"] = job_id
        self.assertEqual(job["dataset"], DATASET)
        self.assertIn(job["state"], ("JOB_STATE_QUEUED", "JOB_STATE_RUNNING"))
        self.assertEqual(job["totalSteps"], "6")
        h = job["hyperparameters"]
        self.assertEqual(h["totalSteps"], "6")
        self.assertEqual(h["gridSize"], "32")
        self.assertEqual(h["widths"], ["8", "16"])
        self.assertEqual(h["labeledBatch"], "2")
        self.assertEqual(h["unlabeledBatch"], "2")
        self.assertEqual(h["validateEvery"], "3")
        self.assertEqual(h["checkpointEvery"], "3")
        self.assertEqual(h["warmupSteps"], "1")
        self.assertEqual(h["rampupSteps"], "2")
        self.assertEqual(h["consistency"], "CONSISTENCY_LOSS_KL")
        self.assertAlmostEqual(h["wMi"], 0.2)
        self.assertAlmostEqual(h["learningRate"], 0.002)

        # Follow it as JSON lines: exit 0 once it succeeds, the state event last.
        events = self.watch_json(job_id)
        self.assertEqual(events[-1]["state"]["state"], "JOB_STATE_SUCCEEDED", events[-1])
        steps = [int(e["step"]["step"]) for e in events if "step" in e]
        self.assertEqual(steps, [1, 2, 3, 4, 5, 6])
        for e in events:
            if "step" in e:
                self.assertEqual(e["step"]["totalSteps"], "6")
        validations = [e["validation"] for e in events if "validation" in e]
        self.assertEqual([v["step"] for v in validations], ["3", "6"])
        for v in validations:
            self.assertEqual(len(v["dicePerClass"]), len(CLASSES) - 1)
            self.assertTrue(0 <= v["meanDice"] <= 1)
        self.state["job_flags_events"] = events

    def test_21_watch_of_a_finished_job_replays(self):
        job_id = self.state["job_flags"]
        events = self.watch_json(job_id)
        self.assertEqual(events, self.state["job_flags_events"])
        # From a step on: the events of the steps before it are left out.
        later = self.watch_json(job_id, "--from-step", 4)
        self.assertEqual([int(e["step"]["step"]) for e in later if "step" in e], [4, 5, 6])
        self.assertEqual(later[-1]["state"]["state"], "JOB_STATE_SUCCEEDED")
        # The plain form, read by a person.
        r = self.run_cli("train", "watch", job_id, timeout=WATCH_TIMEOUT_S)
        self.assertEqual(r.rc, 0, r.describe())
        lines = r.stdout.splitlines()
        self.assertTrue(re.match(r"job %d succeeded: model \d+ \(version 1\)$" % job_id,
                                 lines[-1]), r.stdout)
        self.assertTrue(any(line.startswith("step 6/6 ") for line in lines), r.stdout)
        self.assertTrue(any(line.startswith("step 3  validation Dice  right_ventricle ")
                            for line in lines), r.stdout)
        self.assertEqual(r.stderr, "")

    def test_22_train_show_list_and_plot(self):
        job_id = self.state["job_flags"]
        job = self.ok_json("train", "show", job_id, token=READER_TOKEN)
        self.assertEqual(job["id"], str(job_id))
        self.assertEqual(job["state"], "JOB_STATE_SUCCEEDED")
        self.assertEqual(job["step"], "6")
        self.assertEqual(job["device"], "local/cpu")  # worker/device of each rank
        self.assertNotEqual(job["modelId"], "0")
        self.assertEqual((job["labeledStudies"], job["unlabeledStudies"],
                          job["validationStudies"]), (3, 2, 1))
        self.state["model_flags"] = int(job["modelId"])
        r = self.ok("train", "show", job_id)
        self.assertIn("job         %d on dataset %s" % (job_id, DATASET), r.stdout)
        self.assertIn("state       succeeded", r.stdout)
        self.assertIn("progress    step 6 of 6", r.stdout)
        self.assertIn("studies     3 labeled, 2 unlabeled, 1 validation", r.stdout)

        plot = self.path("plots", "job.png")
        r = self.ok("train", "show", job_id, "--plot", plot)
        self.assertIn("plot        %s" % plot, r.stdout)
        self.assertGreater(os.path.getsize(plot), 0)
        width, height = png_size(plot)
        self.assertGreater(width, 0)
        self.assertGreater(height, 0)
        # With --json the plot is written too and stdout stays one JSON document.
        plot2 = self.path("plots", "job-json.png")
        self.assertEqual(self.ok_json("train", "show", job_id, "--plot", plot2)["id"],
                         str(job_id))
        png_size(plot2)

        listed = self.ok_json("train", "list")["jobs"]
        self.assertIn(str(job_id), [j["id"] for j in listed])
        self.assertEqual(self.ok_json("train", "list", OTHER_DATASET), {"jobs": []})
        r = self.ok("train", "list", DATASET)
        lines = r.stdout.splitlines()
        self.assertTrue(lines[0].split()[:3] == ["ID", "DATASET", "STATE"], r.stdout)
        row = [line for line in lines[1:] if line.split()[0] == str(job_id)]
        self.assertEqual(len(row), 1, r.stdout)
        self.assertEqual(row[0].split()[1:4], [DATASET, "succeeded", "6/6"])

        self.fails(3, "train", "show", 999999, message="NOT_FOUND")

    def test_23_train_start_with_config_file(self):
        config = self.path("hyperparameters.json")
        with open(config, "w") as f:
            json.dump({"totalSteps": 4, "gridSize": 32, "widths": [8, 16],
                       "labeledBatch": 2, "unlabeledBatch": 2}, f)
        # The file, a flag on top of it, and --watch in the same call.
        r = self.run_cli("train", "start", DATASET, "--config", config, "--seed", 7,
                         "--watch", timeout=WATCH_TIMEOUT_S)
        self.assertEqual(r.rc, 0, r.describe())
        lines = r.stdout.splitlines()
        match = re.match(r"job (\d+) queued: 4 steps on %s$" % DATASET, lines[0])
        self.assertTrue(match, r.stdout)
        job_id = int(match.group(1))
        self.assertTrue(lines[-1].startswith("job %d succeeded: " % job_id), r.stdout)
        # The state is said once: the watch does not repeat "queued".
        self.assertEqual(len([l for l in lines if " queued" in l]), 1, r.stdout)
        self.assertTrue(any(line.startswith("step 4/4 ") for line in lines), r.stdout)
        job = self.ok_json("train", "show", job_id)
        h = job["hyperparameters"]
        self.assertEqual(h["totalSteps"], "4")
        self.assertEqual(h["gridSize"], "32")
        self.assertEqual(h["widths"], ["8", "16"])
        self.assertEqual(h["seed"], "7")
        self.assertEqual(job["state"], "JOB_STATE_SUCCEEDED")
        self.state["job_config"] = job_id
        self.state["model_config"] = int(job["modelId"])
        # A reader may not train; an unknown dataset is refused.
        self.fails(4, "train", "start", DATASET, "--config", config, token=READER_TOKEN,
                   message="PERMISSION_DENIED")
        self.fails(3, "train", "start", "no-such-dataset", "--config", config,
                   message="NOT_FOUND")

    def test_24_train_cancel(self):
        job = self.ok_json("train", "start", DATASET, "--steps", 1000000, *FAST,
                           "--labeled-batch", 1, "--unlabeled-batch", 1,
                           "--checkpoint-every", 100000, "--validate-every", 100000)
        job_id = int(job["id"])
        r = self.ok("train", "cancel", job_id)
        self.assertIn(r.stdout.strip(), ("job %d cancelled" % job_id,
                                         "job %d cancelling: stops after its current step"
                                         % job_id))
        # The watch ends when the job does: not succeeded, so exit 1.
        r = self.run_cli("train", "watch", job_id, timeout=WATCH_TIMEOUT_S)
        self.assertEqual(r.rc, 1, r.describe())
        self.assertIn(r.stdout.splitlines()[-1],
                      ("job %d cancelled" % job_id,
                       "job %d cancelled before it started" % job_id), r.describe())
        events = self.watch_json(job_id, expect=1)
        self.assertEqual(events[-1]["state"]["state"], "JOB_STATE_CANCELLED")
        self.assertEqual(self.ok_json("train", "show", job_id)["state"], "JOB_STATE_CANCELLED")
        # Cancelling what has ended is refused: the cancelled job, the succeeded one.
        self.fails(3, "train", "cancel", job_id, message="FAILED_PRECONDITION")
        self.fails(3, "train", "cancel", self.state["job_flags"],
                   message="FAILED_PRECONDITION")
        self.fails(3, "train", "cancel", 999999, message="NOT_FOUND")
        self.fails(4, "train", "cancel", self.state["job_flags"], token=READER_TOKEN,
                   message="PERMISSION_DENIED")

    # ---- test_3x: models ------------------------------------------------------------------

    def test_30_models(self):
        first, second = self.state["model_flags"], self.state["model_config"]
        models = self.ok_json("models", "list", DATASET, token=READER_TOKEN)["models"]
        by_id = {int(m["id"]): m for m in models}
        self.assertEqual(sorted(by_id), sorted([first, second]))
        # The dataset's first model became its active one; the second waits for a promote.
        self.assertTrue(by_id[first]["active"])
        self.assertFalse(by_id[second]["active"])
        self.assertEqual(by_id[second]["jobId"], str(self.state["job_config"]))
        self.assertEqual(by_id[second]["steps"], "4")
        self.assertEqual(by_id[second]["classNames"], CLASSES)
        self.assertEqual(len(by_id[second]["validationDicePerClass"]), len(CLASSES) - 1)
        self.assertEqual(self.ok_json("models", "list", OTHER_DATASET), {"models": []})
        self.assertEqual(len(self.ok_json("models", "list")["models"]), 2)

        shown = self.ok_json("models", "show", second)
        self.assertEqual(shown["id"], str(second))
        self.assertEqual(shown["version"], "2")
        self.assertFalse(shown["active"])
        self.assertGreater(int(shown["sizeBytes"]), 0)
        r = self.ok("models", "show", second)
        self.assertIn("model       %d (version 2 of %s)" % (second, DATASET), r.stdout)
        self.assertIn("active      no", r.stdout)

        self.fails(4, "models", "promote", second, token=READER_TOKEN,
                   message="PERMISSION_DENIED")
        promoted = self.ok_json("models", "promote", second)
        self.assertEqual(promoted["id"], str(second))
        self.assertTrue(promoted["active"])
        models = self.ok_json("models", "list", DATASET)["models"]
        self.assertEqual([int(m["id"]) for m in models if m["active"]], [second])
        self.assertEqual(self.ok_json("datasets", "show", DATASET)["activeModelId"], str(second))
        r = self.ok("models", "list", DATASET)
        header = r.stdout.splitlines()[0].split()
        self.assertEqual(header[:3], ["ID", "DATASET", "VER"], r.stdout)
        active = header.index("ACTIVE")
        active_rows = [l for l in r.stdout.splitlines()[1:] if l.split()[active] == "yes"]
        self.assertEqual([int(l.split()[0]) for l in active_rows], [second], r.stdout)
        r = self.ok("models", "show", second)
        self.assertIn("active      yes", r.stdout)
        # The plain promote names the model; promote back and forth.
        r = self.ok("models", "promote", first)
        self.assertEqual(r.stdout.strip(), "model %d (version 1) is now the active model of %s"
                         % (first, DATASET))
        self.assertTrue(self.ok_json("models", "promote", second)["active"])
        self.fails(3, "models", "show", 999999, message="NOT_FOUND")

    def test_31_models_export_import_and_deletes(self):
        # Issue 16: out as TorchScript, back in as a new version of another dataset, deletes.
        second = self.state["model_config"]
        out = self.path("exported")
        r = self.ok("models", "export", second, "--out", out)
        self.assertIn("exported to", r.stdout)
        self.assertEqual(sorted(os.listdir(out)), ["README.md", "model.json", "model.pt"])
        with open(os.path.join(out, "model.json")) as f:
            info = json.load(f)
        self.assertEqual([c["name"] for c in info["classes"]], CLASSES)
        self.assertEqual(info["training_job"], str(self.state["job_config"]))
        self.fails(3, "models", "export", second, "--out", out, message="not an empty directory")
        self.fails(2, "models", "export", second, message="--out DIR")

        self.ok("datasets", "create", "cli-models", "--classes", ",".join(CLASSES),
                token=ADMIN_TOKEN)
        first = self.ok_json("models", "import", "cli-models", out)
        self.assertEqual(first["version"], "1")
        self.assertEqual(first["format"], "MODEL_FORMAT_TORCHSCRIPT")
        self.assertFalse(first.get("active", False))
        self.fails(3, "models", "import", OTHER_DATASET, out, message="classes")
        self.fails(4, "models", "import", "cli-models", out, token=READER_TOKEN,
                   message="PERMISSION_DENIED")
        again = self.ok("models", "import", "cli-models", out)
        self.assertIn("imported as version 2 of cli-models", again.stdout)
        self.ok("models", "promote", first["id"])
        self.fails(4, "models", "delete", first["id"], message="PERMISSION_DENIED")  # trainer
        self.fails(3, "models", "delete", first["id"], token=ADMIN_TOKEN, message="active")
        models = self.ok_json("models", "list", "cli-models")["models"]
        other = [m["id"] for m in models if m["id"] != first["id"]]
        self.assertIn("deleted model",
                      self.ok("models", "delete", other[0], token=ADMIN_TOKEN).stdout)
        self.assertEqual(len(self.ok_json("models", "list", "cli-models")["models"]), 1)

        self.fails(4, "datasets", "delete", "cli-models", token=READER_TOKEN,
                   message="PERMISSION_DENIED")
        deleted = self.ok_json("datasets", "delete", "cli-models", token=ADMIN_TOKEN)
        self.assertEqual(deleted["deletedModels"], "1")
        self.fails(3, "datasets", "delete", "cli-models", token=ADMIN_TOKEN, message="NOT_FOUND")
        self.assertEqual(self.ok_json("models", "list", DATASET)["models"][0]["dataset"], DATASET)

    # ---- test_4x: segmentation ------------------------------------------------------------

    def test_40_segment_folder(self):
        import pydicom
        folder = self.path("new", "subject-007")
        series, study, images, _ = read_series(folder)
        seg = self.path("out", "seg.dcm")
        overlay = self.path("out", "overlay.png")
        r = self.ok("segment", DATASET, folder, "--out", seg, "--overlay", overlay)
        self.assertIn("segmentation  %s" % seg, r.stdout)
        self.assertIn("model         %d (version 2 of %s)" % (self.state["model_config"],
                                                              DATASET), r.stdout)
        for name in CLASSES[1:]:
            self.assertTrue(re.search(r"^  %s +[0-9.]+ mL$" % name, r.stdout, re.M), r.stdout)
        self.assertIn("overlay       %s" % overlay, r.stdout)

        ds = pydicom.dcmread(seg)
        self.assertEqual(ds.SOPClassUID, SEG_SOP_CLASS)
        self.assertEqual(ds.Modality, "SEG")
        self.assertEqual(str(ds.StudyInstanceUID), study)
        self.assertEqual(str(ds.ReferencedSeriesSequence[0].SeriesInstanceUID), series)
        self.assertNotEqual(str(ds.SeriesInstanceUID), series)
        self.assertEqual(len(ds.SegmentSequence), len(CLASSES) - 1)
        self.assertEqual([str(s.SegmentLabel) for s in ds.SegmentSequence], CLASSES[1:])
        self.assertEqual(ds.Rows, pydicom.dcmread(images[0], stop_before_pixels=True).Rows)
        self.state["seg_file"] = seg

        self.assertGreater(os.path.getsize(overlay), 0)
        width, height = png_size(overlay)
        self.assertGreater(width * height, 0)

        # --json: the summary, for the same files.
        seg2 = self.path("out", "seg-json.dcm")
        s = self.ok_json("segment", DATASET, folder, "--out", seg2)
        self.assertEqual(s["modelId"], str(self.state["model_config"]))
        self.assertEqual(s["modelVersion"], "2")
        self.assertEqual(s["dataset"], DATASET)
        self.assertEqual(s["sourceSeriesInstanceUid"], series)
        self.assertEqual([c["className"] for c in s["classes"]], CLASSES[1:])
        self.assertEqual(int(s["segmentationBytes"]), os.path.getsize(seg2))
        ds2 = pydicom.dcmread(seg2)
        self.assertEqual(str(ds2.SOPInstanceUID), s["segmentationSopInstanceUid"])
        self.assertEqual(str(ds2.SeriesInstanceUID), s["segmentationSeriesInstanceUid"])

    def test_41_dciodvfy_accepts_the_seg(self):
        dciodvfy = shutil.which("dciodvfy")
        if dciodvfy is None:
            self.skipTest("dciodvfy (dicom3tools) is not installed")
        seg = self.state.get("seg_file")
        self.assertTrue(seg and os.path.exists(seg), "test_40 wrote no SEG")
        proc = subprocess.run([dciodvfy, "-new", seg], stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=120)
        output = (proc.stdout + proc.stderr).decode("utf-8", "replace")
        errors = [line for line in output.splitlines() if "Error" in line]
        self.assertEqual(errors, [], output)

    def test_42_segment_stored_study(self):
        import pydicom
        series = self.state["validation_series"]
        first = self.state["model_flags"]
        out = self.path("out", "stored.dcm")
        s = self.ok_json("segment", DATASET, "--stored", series, "--model", first, "--out", out)
        self.assertEqual(s["sourceSeriesInstanceUid"], series)
        self.assertEqual(s["modelId"], str(first))
        self.assertEqual(s["modelVersion"], "1")
        self.assertEqual(int(s["segmentationBytes"]), os.path.getsize(out))
        ds = pydicom.dcmread(out)
        self.assertEqual(ds.SOPClassUID, SEG_SOP_CLASS)
        self.assertEqual(str(ds.ReferencedSeriesSequence[0].SeriesInstanceUID), series)
        r = self.ok("segment", DATASET, "--stored", series, "--out", self.path("out", "s2.dcm"))
        self.assertIn("model         %d (version 2 of %s)" % (self.state["model_config"],
                                                              DATASET), r.stdout)
        self.fails(3, "segment", DATASET, "--stored", "1.2.3.4", "--out",
                   self.path("out", "none.dcm"), message="NOT_FOUND")
        # No model yet: a precondition; a reader may not segment.
        self.fails(3, "segment", OTHER_DATASET, self.path("new", "subject-007"), "--out",
                   self.path("out", "none.dcm"), message="FAILED_PRECONDITION")
        self.fails(4, "segment", DATASET, "--stored", series, "--out",
                   self.path("out", "none.dcm"), token=READER_TOKEN,
                   message="PERMISSION_DENIED")
        self.assertFalse(os.path.exists(self.path("out", "none.dcm")))

    # ---- test_5x: authentication and connection -------------------------------------------

    def test_50_authentication_and_permissions_exit_4(self):
        self.fails(4, "datasets", "list", "--token", "bogus", message="UNAUTHENTICATED")
        self.fails(4, "datasets", "list", token=None, message="UNAUTHENTICATED")
        self.fails(4, "datasets", "create", "readers-dataset", "--classes", "background,a",
                   token=READER_TOKEN, message="PERMISSION_DENIED")
        self.fails(4, "upload", DATASET, self.path("extra"), "--role", "unlabeled",
                   token=READER_TOKEN, message="PERMISSION_DENIED")
        # --token wins over MISEG_TOKEN.
        self.ok("datasets", "list", "--token", READER_TOKEN, token="bogus")
        names = [d["name"] for d in self.ok_json("datasets", "list", token=READER_TOKEN)
                 ["datasets"]]
        self.assertNotIn("readers-dataset", names)

    def test_51_no_server_exits_1(self):
        r = self.fails(1, "health", "--address", "127.0.0.1:1", message="cannot reach the server")
        self.assertIn("UNAVAILABLE", r.stderr)
        self.fails(1, "datasets", "list", address="127.0.0.1:1", message="UNAVAILABLE")

    def test_52_deliveries_without_a_dicom_node_exit_3(self):
        # The DICOM node is off in this server: the outbox query is refused, not an error.
        self.fails(3, "deliveries", "list", message="FAILED_PRECONDITION")
        self.fails(2, "deliveries", "list", "--state", "lost")

    def test_53_workers_list(self):
        # The server's own devices form its local worker; a reader may list workers.
        workers = self.ok_json("workers", "list", token=READER_TOKEN)["workers"]
        local = [w for w in workers if w.get("local")]
        self.assertEqual(len(local), 1, workers)
        self.assertEqual([d["device"] for d in local[0]["devices"]], ["cpu"], workers)
        self.assertIn(local[0]["state"], ("WORKER_STATE_IDLE", "WORKER_STATE_BUSY"), workers)
        r = self.ok("workers", "list", token=READER_TOKEN)
        lines = r.stdout.splitlines()
        self.assertEqual(lines[0].split(), ["ID", "NAME", "STATE", "LOCAL", "HEARTBEAT",
                                            "DEVICES"], r.stdout)
        row = [line for line in lines[1:] if line.split()[0] == local[0]["id"]]
        self.assertEqual(len(row), 1, r.stdout)
        self.assertIn(" yes ", row[0], r.stdout)
        self.assertRegex(row[0], r"cpu:(idle|job \d+ rank \d+)$", r.stdout)
        self.assertIn("ADDRESS", self.ok("workers", "list", "--wide").stdout.splitlines()[0])
        self.fails(4, "workers", "list", token="bogus", message="UNAUTHENTICATED")

    # ---- test_8x: train watch across a server restart -------------------------------------

    def test_80_watch_survives_server_restart(self):
        # Slower settings (about 0.2 s a step here) so the kill lands mid-job.
        job = self.ok_json("train", "start", DATASET, "--steps", 60, "--grid-size", 64,
                           "--widths", "16,32,64", "--checkpoint-every", 5,
                           "--validate-every", 30)
        job_id = int(job["id"])
        env = {k: v for k, v in os.environ.items() if not k.startswith("MISEG_")}
        env.update(MISEG_ADDRESS=self.address, MISEG_TOKEN=READER_TOKEN)
        watch = subprocess.Popen([MISEG, "train", "watch", str(job_id)], env=env,
                                 cwd=self.work_dir, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out_lines, err_lines = queue.Queue(), []

        def pump(stream, sink):
            for raw in iter(stream.readline, b""):
                sink(raw.decode("utf-8", "replace").rstrip("\n"))
            stream.close()

        readers = [threading.Thread(target=pump, args=(watch.stdout, out_lines.put), daemon=True),
                   threading.Thread(target=pump, args=(watch.stderr, err_lines.append),
                                    daemon=True)]
        for t in readers:
            t.start()
        stdout_seen = []
        try:
            # A step line past the first checkpoint (step 5, recorded before step 6 runs), so
            # the new server resumes from a checkpoint rather than from the start.
            deadline = time.monotonic() + WATCH_TIMEOUT_S
            while True:
                left = deadline - time.monotonic()
                self.assertGreater(left, 0, "no step line past step 5: %r" % stdout_seen)
                try:
                    line = out_lines.get(timeout=left)
                except queue.Empty:
                    continue
                stdout_seen.append(line)
                match = re.match(r"step (\d+)/60 ", line)
                if match and int(match.group(1)) >= 6:
                    killed_at = int(match.group(1))
                    break
                self.assertIsNone(watch.poll(), "the watch ended early: %r" % stdout_seen)
            self.assertLess(killed_at, 60)

            # SIGKILL: no checkpoint on the way out. The new server takes the same data and
            # the same port, where the watch reconnects.
            self.assertEqual(self.server.stop(signal.SIGKILL), -signal.SIGKILL)
            restarted = start_server(self.work_dir, self.data_dir, self.token_file,
                                     self.address, "server-2")
            self.assertEqual(restarted.wait_until_serving(), self.port)
            type(self).server = restarted

            rc = watch.wait(timeout=WATCH_TIMEOUT_S)
        finally:
            if watch.poll() is None:
                watch.kill()
                watch.wait(timeout=30)
            for t in readers:
                t.join(timeout=30)
        while not out_lines.empty():
            stdout_seen.append(out_lines.get())
        stdout, stderr = "\n".join(stdout_seen), "\n".join(err_lines)
        described = "exit %s\nstdout:\n%s\nstderr:\n%s" % (rc, stdout, stderr)
        self.assertEqual(rc, 0, described)
        self.assertNotIn("\r", stdout + stderr)
        self.assertIn("reconnecting", stderr, described)
        self.assertIn("resumed from step", stdout, described)
        self.assertEqual(stdout_seen[-1], "job %d succeeded: model %s (version 3)"
                         % (job_id, self.ok_json("train", "show", job_id)["modelId"]), described)
        self.assertTrue(any(line.startswith("step 60/60 ") for line in stdout_seen), described)

        job = self.ok_json("train", "show", job_id)
        self.assertEqual(job["state"], "JOB_STATE_SUCCEEDED")
        self.assertEqual(job["step"], "60")
        self.assertGreaterEqual(job["resumes"], 1)
        # The restarted server has everything the first one stored.
        self.assertEqual(len(self.ok_json("models", "list", DATASET)["models"]), 3)
        self.assertEqual(len(self.ok_json("studies", "list", DATASET)["studies"]), 6)

    # ---- test_99: shutdown ----------------------------------------------------------------

    def test_99_sigterm_exits_0(self):
        self.ok("health")
        status = self.server.stop(signal.SIGTERM)
        self.assertEqual(status, 0, "miseg-server exit status after SIGTERM: %r" % status)
        self.assertIn("stopped", self.server.log())
        self.fails(1, "health", message="cannot reach the server")


def main():
    global MISEG, SERVER
    parsed = parse_cli_test_args(sys.argv[1:])
    if parsed is None:
        return 2
    MISEG, SERVER, rest = parsed
    return run_tests(rest, ALL_SERVERS, "miseg CLI test")


if __name__ == "__main__":
    sys.exit(main())
