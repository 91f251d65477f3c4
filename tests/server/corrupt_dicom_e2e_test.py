#!/usr/bin/python3
"""Issue 18, end to end: corrupt DICOM text must never reach the API.

Generates a seeded corpus of mutated DICOM files (>= 1000) from outside sample files
(pydicom's test and character set files: flipped bytes, truncations, insertions, huge length
fields, and UIDs and text values with stray bytes) and sends them to a real miseg-server:

  * Upload, one file per call, from Python's grpcio (every reply must parse there);
  * Upload of folders with the C++ CLI (`miseg upload`; it must exit 0 or 1, never abort,
    and print one line on failure);
  * Segment, one file per call, against a tiny trained model (every reply parses; no
    INTERNAL status: a source that cannot yield a SEG is INVALID_ARGUMENT);
  * C-STORE to the server's DICOM node with DCMTK's storescu.

Then: the server is still healthy (it answers, it did not exit), every stored study's and
inbox instance's UIDs follow PS3.5 9.1, and real non-ASCII files (Latin-1, UTF-8, a file that
declares UTF-8 while holding Latin-1) show their text correctly or escaped in the CLI.

No sleeps: the server is synchronised on its ready file, the node on its log line.

  /usr/bin/python3 corrupt_dicom_e2e_test.py --server BUILD/server/miseg-server \
      --cli BUILD/client/cli/miseg --stubs BUILD/proto/python \
      --phantom BUILD/tests/server/miseg-test-phantom [-v]
"""

import argparse
import glob
import os
import random
import re
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import unittest
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
from miseg_server_process import ServerProcess  # noqa: E402

ARGS = None
grpc = None
pb = None
pb_grpc = None

SEED = 18
CORPUS_SIZE = 1000
PYDICOM = "/usr/lib/python3/dist-packages/pydicom/data"
SOURCES = ["test_files/" + n for n in (
    "MR_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "MR_small_RLE.dcm",
    "MR_small_jpeg_ls_lossless.dcm", "CT_small.dcm", "rtdose_1frame.dcm", "liver_1frame.dcm",
    "SC_rgb_small_odd.dcm", "no_meta.dcm")] + ["charset_files/" + n for n in (
    "chrFren.dcm", "chrX1.dcm", "chrH31.dcm", "chrI2.dcm", "chrRuss.dcm", "chrX2.dcm")]
CLASS_NAMES = ["background", "right_ventricle", "myocardium", "left_ventricle"]
RPC_TIMEOUT_S = 60
UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def valid_uid(uid):
    return len(uid) <= 64 and UID_RE.match(uid) is not None


def mutate(data, rng):
    """One seeded mutation of a DICOM file's bytes."""
    data = bytearray(data)
    kind = rng.randrange(7)
    if kind == 0:  # flipped bytes
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
    elif kind == 1:  # truncation
        del data[rng.randrange(max(1, len(data) // 8), len(data)):]
    elif kind == 2:  # insertion
        i = rng.randrange(len(data))
        data[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    elif kind == 3:  # a huge length field: after an explicit-VR short or long header
        starts = [m.start() for m in re.finditer(rb"(UI|LO|SH|PN|CS|OB|OW|UN|SQ)", bytes(data))]
        if starts:
            i = rng.choice(starts) + 2
            data[i:i + 2] = b"\xff\xff" if rng.random() < 0.5 else data[i:i + 2]
            if i + 6 <= len(data):
                data[i + 2:i + 6] = struct.pack("<I", rng.choice((0xFFFFFFF0, 0x7FFFFFFF,
                                                                   len(data) * 2)))
    elif kind in (4, 5):  # a UID with a stray byte (or a leading zero): the case of issue 18
        uids = [m for m in re.finditer(rb"1\.[0-9.]{8,62}", bytes(data))]
        if uids:
            m = rng.choice(uids)
            i = rng.randrange(m.start(), m.end())
            if kind == 4:
                data[i] = rng.choice((0x00, 0x0A, 0x1B, 0x80, 0xC3, 0xE9, 0xFF, ord("a"), ord(".")))
            else:
                data[i:i] = b".0"
    else:  # text with bytes that are valid in no character set
        for m in re.finditer(rb"[A-Za-z]{4,}", bytes(data)):
            if rng.random() < 0.3:
                data[m.start()] = rng.choice((0x80, 0xC0, 0xFF, 0x1B, 0x00, 0xE9))
    return bytes(data)


def build_corpus(out_dir):
    rng = random.Random(SEED)
    originals = []
    for name in SOURCES:
        with open(os.path.join(PYDICOM, name), "rb") as f:
            originals.append((name, f.read()))
    paths = []
    for i in range(CORPUS_SIZE):
        name, data = originals[i % len(originals)]
        path = os.path.join(out_dir, "m%04d_%s" % (i, os.path.basename(name)))
        with open(path, "wb") as f:
            f.write(mutate(data, rng))
        paths.append(path)
    return paths


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def upload_requests(dataset, role, paths):
    yield pb.UploadRequest(header=pb.UploadHeader(dataset=dataset, role=role))
    for path in paths:
        with open(path, "rb") as f:
            data = f.read()
        yield pb.UploadRequest(chunk=pb.FileChunk(file_name=os.path.basename(path), data=data,
                                                  last_chunk=True))


def segment_requests(dataset, path):
    yield pb.SegmentRequest(header=pb.SegmentHeader(dataset=dataset))
    with open(path, "rb") as f:
        data = f.read()
    yield pb.SegmentRequest(chunk=pb.FileChunk(file_name=os.path.basename(path), data=data,
                                               last_chunk=True))


class CorruptDicomTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="miseg-corrupt-")
        root = cls.tmp.name
        cls.corpus_dir = os.path.join(root, "corpus")
        os.makedirs(cls.corpus_dir)
        cls.corpus = build_corpus(cls.corpus_dir)
        cls.node_port = free_port()
        cls.node_config = os.path.join(root, "node.json")
        with open(cls.node_config, "w") as f:
            f.write("""{"aeTitle": "MISEG", "bindAddress": "127.0.0.1", "port": %d,
  "peers": [{"aeTitle": "FUZZER", "host": "127.0.0.1"}],
  "quietPeriodSeconds": 3600, "destinations": [],
  "routes": [{"callingAeTitle": "FUZZER", "storeDataset": "ct"}]}""" % cls.node_port)
        cls.data_dir = os.path.join(root, "data")
        cls.server = ServerProcess(ARGS.server, cls.data_dir, os.path.join(root, "ready"),
                                   flags=["--dicom_node_config=" + cls.node_config])
        port = cls.server.wait_until_serving()
        cls.address = "127.0.0.1:%d" % port
        cls.channel = grpc.insecure_channel(cls.address)
        cls.datasets = pb_grpc.DatasetServiceStub(cls.channel)
        cls.training = pb_grpc.TrainingServiceStub(cls.channel)
        cls.segmentation = pb_grpc.SegmentationServiceStub(cls.channel)
        for name, modality in (("mr", "MR"), ("ct", "CT"), ("text", "MR")):
            cls.datasets.CreateDataset(pb.CreateDatasetRequest(
                name=name, class_names=CLASS_NAMES, modality=modality), timeout=RPC_TIMEOUT_S)

    @classmethod
    def tearDownClass(cls):
        status = cls.server.stop()
        cls.channel.close()
        cls.tmp.cleanup()
        if status not in (0,):
            raise AssertionError("server exited with %r\n%s" % (status, cls.server.log()[-4000:]))

    def assert_healthy(self):
        self.assertIsNone(self.server.proc.poll(), "the server exited:\n" + self.server.log()[-4000:])
        self.datasets.ListDatasets(pb.ListDatasetsRequest(), timeout=RPC_TIMEOUT_S)

    def cli(self, *args):
        env = dict(os.environ, MISEG_ADDRESS=self.address, NO_COLOR="1", COLUMNS="100")
        return subprocess.run([ARGS.cli] + list(args), env=env, capture_output=True,
                              timeout=120)

    def stored_uids(self):
        uids = []
        for name in ("mr", "ct", "text"):
            listed = self.datasets.ListStudies(pb.ListStudiesRequest(dataset=name),
                                               timeout=RPC_TIMEOUT_S)
            for s in listed.studies:
                uids += [s.study_instance_uid, s.series_instance_uid]
                if s.segmentation_sop_instance_uid:
                    uids.append(s.segmentation_sop_instance_uid)
        return uids

    # ------------------------------------------------------------------ upload, one by one

    def test_10_upload_one_by_one_from_python(self):
        outcomes = {}
        for path in self.corpus:
            dataset = "ct" if "CT_" in path else "mr"
            # Parsing happens here, in grpcio: a reply with a non-UTF-8 string raises.
            reply = self.datasets.Upload(upload_requests(dataset, pb.STUDY_ROLE_UNLABELED, [path]),
                                         timeout=RPC_TIMEOUT_S)
            for r in reply.results:
                outcomes[r.outcome] = outcomes.get(r.outcome, 0) + 1
                # Issue 21: a mutated copy under a stored SOP Instance UID is refused as
                # other content (it used to pass as a duplicate); it was identified all the same.
                if "already stored in this dataset with other content" in r.reason:
                    outcomes["identified"] = outcomes.get("identified", 0) + 1
                self.assertLessEqual(len(r.reason.encode()), 1100, r.reason)
                for uid in (r.sop_instance_uid, r.series_instance_uid):
                    if uid:
                        self.assertTrue(valid_uid(uid), repr(uid))
        # The corpus exercises both sides: some files stored, many refused.
        self.assertGreater(outcomes.get(pb.INSTANCE_OUTCOME_REFUSED, 0), 100, outcomes)
        self.assertGreater(outcomes.get(pb.INSTANCE_OUTCOME_STORED, 0) +
                           outcomes.get(pb.INSTANCE_OUTCOME_DUPLICATE, 0) +
                           outcomes.get("identified", 0), 10, outcomes)
        self.assert_healthy()

    def test_20_upload_folders_with_the_cli(self):
        folders = []
        for k in range(10):
            folder = os.path.join(self.tmp.name, "folder%d" % k)
            os.makedirs(folder)
            for path in self.corpus[k::10][:100]:
                os.link(path, os.path.join(folder, os.path.basename(path)))
            folders.append(folder)
        for folder in folders:
            done = self.cli("upload", "mr", folder, "--role", "unlabeled")
            # 0: all stored; 3: some files refused (reported one per line); 1: a failure.
            self.assertIn(done.returncode, (0, 1, 3), done.stderr.decode(errors="replace"))
            out = done.stdout.decode("utf-8")  # raises if the CLI printed bytes not UTF-8
            err = done.stderr.decode("utf-8")
            if done.returncode == 1:
                self.assertEqual(len(err.strip().splitlines()), 1, err)
            self.assertNotIn("libprotobuf ERROR", err + out)
        self.assert_healthy()

    # ------------------------------------------------------------------ segment

    def test_30_segment_each_file(self):
        # A tiny model for "mr": two phantom labeled studies, a 4-step job.
        phantom_dir = os.path.join(self.tmp.name, "phantom")
        subprocess.run([ARGS.phantom, phantom_dir, "3", "3"], check=True, capture_output=True,
                       timeout=120)
        studies = sorted(glob.glob(os.path.join(phantom_dir, "*")))
        self.assertTrue(studies, "the phantom tool wrote nothing")
        for study in studies:
            files = sorted(os.path.join(d, f) for d, _, names in os.walk(study) for f in names)
            reply = self.datasets.Upload(upload_requests("mr", pb.STUDY_ROLE_LABELED, files),
                                         timeout=RPC_TIMEOUT_S)
            self.assertEqual(reply.refused_instances, 0, reply.results)
        hyper = pb.Hyperparameters(total_steps=2, grid_size=32, widths=[4, 8], labeled_batch=1,
                                   unlabeled_batch=1, validate_every=2, warmup_steps=1,
                                   rampup_steps=1, seed=3)
        job = self.training.StartJob(pb.StartJobRequest(dataset="mr", hyperparameters=hyper),
                                     timeout=RPC_TIMEOUT_S)
        for _ in self.training.WatchJob(pb.WatchJobRequest(id=job.id), timeout=600):
            pass
        done = self.training.GetJob(pb.GetJobRequest(id=job.id), timeout=RPC_TIMEOUT_S)
        self.assertEqual(done.state, pb.JOB_STATE_SUCCEEDED, done.error)
        pb_grpc.ModelServiceStub(self.channel).PromoteModel(
            pb.PromoteModelRequest(id=done.model_id), timeout=RPC_TIMEOUT_S)

        codes = {}
        mr_files = [p for p in self.corpus if "MR_small" in p or "chr" in p][:150]
        for path in mr_files:
            try:
                for _ in self.segmentation.Segment(segment_requests("mr", path),
                                                   timeout=RPC_TIMEOUT_S):
                    pass  # each reply parsed by grpcio
                code = grpc.StatusCode.OK
            except grpc.RpcError as e:
                code = e.code()
                self.assertNotEqual(code, grpc.StatusCode.INTERNAL,
                                    "%s: %s" % (os.path.basename(path), e.details()))
                self.assertNotEqual(code, grpc.StatusCode.UNKNOWN, e.details())
            codes[code] = codes.get(code, 0) + 1
        self.assertIn(grpc.StatusCode.OK, codes, codes)
        self.assertIn(grpc.StatusCode.INVALID_ARGUMENT, codes, codes)
        self.assert_healthy()

    # ------------------------------------------------------------------ C-STORE

    def test_40_cstore_with_storescu(self):
        # The node listens before the server logs "serving" (wait_until_serving saw that).
        self.assertIn("listening on port %d" % self.node_port, self.server.log())
        outputs = []
        for start in range(0, len(self.corpus), 250):
            batch = self.corpus[start:start + 250]
            done = subprocess.run(
                ["storescu", "-aet", "FUZZER", "-aec", "MISEG", "-nh", "-R", "+sd",
                 "127.0.0.1", str(self.node_port)] + batch,
                capture_output=True, timeout=300)
            # storescu itself refuses the files it cannot parse; the rest reach the node.
            self.assertIn(done.returncode, range(0, 256))
            outputs.append((done.stdout + done.stderr).decode(errors="replace")[-2000:])
        self.assert_healthy()
        # The node's own count: the corpus reached it, and it refused the bad (a refused
        # instance gets a failure status; nothing of it is kept).
        received = self.dicom_instances()
        self.assertGreater(received.get("stored", 0), 10, received)
        self.assertGreater(received.get("refused", 0), 10, received)
        # Instances still in the inbox (not yet routed into "ct"; routed ones are checked by
        # test_90 through ListStudies) carry valid UIDs only.
        db = sqlite3.connect(os.path.join(self.data_dir, "node.db"))
        rows = db.execute("SELECT sop_instance_uid, series_instance_uid FROM inbox").fetchall()
        db.close()
        for sop, series in rows:
            self.assertTrue(valid_uid(sop), repr(sop))
            self.assertTrue(valid_uid(series), repr(series))

    def dicom_instances(self):
        url = "http://127.0.0.1:%d/metrics" % self.server.metrics_port
        with urllib.request.urlopen(url, timeout=RPC_TIMEOUT_S) as reply:
            text = reply.read().decode()
        counts = {}
        for m in re.finditer(r'^miseg_dicom_received_instances_total\{outcome="(\w+)"\} (\S+)$',
                             text, re.M):
            counts[m.group(1)] = float(m.group(2))
        return counts

    # ------------------------------------------------------------------ after everything

    def test_90_every_stored_uid_follows_the_rule(self):
        uids = self.stored_uids()
        self.assertTrue(uids)
        for uid in uids:
            self.assertTrue(valid_uid(uid), repr(uid))
        self.assert_healthy()

    # ------------------------------------------------------------------ real non-ASCII text

    def test_50_non_ascii_text_in_the_cli(self):
        import pydicom
        folder = os.path.join(self.tmp.name, "text")
        os.makedirs(folder)
        cases = {"latin1": ("ISO_IR 100", "Süßes Herz".encode("latin-1"), "Süßes Herz"),
                 "utf8": ("ISO_IR 192", "Сердце 心臓".encode("utf-8"), "Сердце 心臓"),
                 "lying": ("ISO_IR 192", "Élan évidé".encode("latin-1"), "\\xC9lan \\xE9vid\\xE9")}
        expected = {}
        for k, (charset, raw, shown) in enumerate(cases.values()):
            ds = pydicom.dcmread(os.path.join(PYDICOM, "test_files", "MR_small.dcm"))
            ds.SpecificCharacterSet = charset
            ds.StudyInstanceUID = "1.2.826.0.1.3680043.10.1018.%d" % (k + 1)
            ds.SeriesInstanceUID = ds.StudyInstanceUID + ".1"
            ds.SOPInstanceUID = ds.SeriesInstanceUID + ".1"
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.Modality = "MR"
            ds.SeriesDescription = "PLACEHOLDER"
            ds.is_implicit_VR = False
            ds.is_little_endian = True
            ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
            path = os.path.join(folder, "%d.dcm" % k)
            ds.save_as(path)
            # Raw bytes for the description, whatever pydicom would encode.
            with open(path, "rb") as f:
                data = f.read()
            marker = b"\x08\x00\x3e\x10"  # (0008,103E) SeriesDescription, explicit VR LE
            i = data.find(marker)
            self.assertGreater(i, 0)
            old_len = struct.unpack("<H", data[i + 6:i + 8])[0]
            value = raw + (b" " if len(raw) % 2 else b"")
            data = data[:i + 6] + struct.pack("<H", len(value)) + value + data[i + 8 + old_len:]
            with open(path, "wb") as f:
                f.write(data)
            expected[ds.SeriesInstanceUID] = shown
        done = self.cli("upload", "text", folder, "--role", "unlabeled")
        self.assertEqual(done.returncode, 0, done.stderr.decode(errors="replace"))
        listed = self.datasets.ListStudies(pb.ListStudiesRequest(dataset="text"),
                                           timeout=RPC_TIMEOUT_S)
        self.assertEqual(len(listed.studies), 3)
        # The API carries each description decoded by its character set, or escaped.
        self.assertEqual({s.series_instance_uid: s.series_description for s in listed.studies},
                         expected)
        shown = self.cli("studies", "list", "text")
        out = shown.stdout.decode("utf-8")
        self.assertEqual(shown.returncode, 0, shown.stderr.decode(errors="replace"))
        self.assertNotIn("\ufffd", out)
        # And the CLI shows exactly that text (piped: nothing is cut to a width).
        for text in expected.values():
            self.assertIn(text, out)


def main():
    global ARGS, grpc, pb, pb_grpc
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", default=os.environ.get("MISEG_SERVER"))
    parser.add_argument("--cli", default=os.environ.get("MISEG_CLI"))
    parser.add_argument("--stubs", default=os.environ.get("MISEG_PROTO_PYTHON_DIR"))
    parser.add_argument("--phantom", default=os.environ.get("MISEG_TEST_PHANTOM"))
    ARGS, rest = parser.parse_known_args()
    sys.path.insert(0, ARGS.stubs)
    import grpc as grpc_module
    from miseg.v1 import miseg_pb2, miseg_pb2_grpc
    grpc, pb, pb_grpc = grpc_module, miseg_pb2, miseg_pb2_grpc
    unittest.main(argv=[sys.argv[0]] + rest)


if __name__ == "__main__":
    main()
