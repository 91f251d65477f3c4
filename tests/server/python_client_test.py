#!/usr/bin/python3
"""End-to-end test of the miseg.v1 gRPC API from Python: proves the API works from another
language than the server's. Starts the real miseg-server on free loopback ports with a token
file, drives datasets, uploads, training, models and segmentation through the generated
Python stubs, checks the status codes of bad requests, and stops the server with SIGTERM.

Run with Debian's interpreter (python3-grpcio, python3-pydicom):
  /usr/bin/python3 python_client_test.py --server BUILD/server/miseg-server \
      --stubs BUILD/proto/python --phantom BUILD/tests/server/miseg-test-phantom [-v]
Each path may come from the environment instead: MISEG_SERVER, MISEG_PROTO_PYTHON_DIR,
MISEG_TEST_PHANTOM. Other arguments go to unittest.
"""

import argparse
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
from miseg_server_process import ServerProcess  # noqa: E402
import urllib.request

SERVER = None  # set in main()
PHANTOM = None
STUBS = None

# Imported in main() once the stubs directory is on sys.path.
grpc = None
pb = None
pb_grpc = None

ADMIN_TOKEN = "admin-token-" + "7f3a9c"
READER_TOKEN = "reader-token-" + "51e0d2"
UNKNOWN_TOKEN = "nobody-knows-this-token"
CLASS_NAMES = ["background", "right_ventricle", "myocardium", "left_ventricle"]
SUBJECTS = 4
LABELED = 3
CHUNK = 64 * 1024
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"

STARTUP_TIMEOUT_S = 60
RPC_TIMEOUT_S = 60
JOB_TIMEOUT_S = 240
SHUTDOWN_TIMEOUT_S = 60


def sha256_hex(token):
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def bearer(token):
    return (("authorization", "Bearer " + token),)


def file_chunks(paths, chunk_size=CHUNK):
    """FileChunk messages for the files: file_name on a file's first chunk, last_chunk on
    its last (a file smaller than one chunk is both)."""
    for path in paths:
        with open(path, "rb") as f:
            data = f.read()
        pieces = [data[i:i + chunk_size] for i in range(0, len(data), chunk_size)] or [b""]
        for i, piece in enumerate(pieces):
            yield pb.FileChunk(file_name=os.path.basename(path) if i == 0 else "",
                               data=piece, last_chunk=(i == len(pieces) - 1))


def upload_requests(dataset, role, paths, chunk_size=CHUNK):
    yield pb.UploadRequest(header=pb.UploadHeader(dataset=dataset, role=role))
    for chunk in file_chunks(paths, chunk_size):
        yield pb.UploadRequest(chunk=chunk)


def segment_requests(header, paths):
    yield pb.SegmentRequest(header=header)
    for chunk in file_chunks(paths):
        yield pb.SegmentRequest(chunk=chunk)


class Subject:
    """One phantom study on disk: its image files (sorted) and, if labeled, its SEG."""

    def __init__(self, folder):
        import pydicom
        self.folder = folder
        self.images = []
        self.seg = None
        self.series_uid = None
        self.sop_uids = {}
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            self.sop_uids[name] = str(ds.SOPInstanceUID)
            if ds.Modality == "SEG":
                assert self.seg is None, "two SEGs in " + folder
                self.seg = path
            else:
                self.images.append(path)
                series = str(ds.SeriesInstanceUID)
                assert self.series_uid in (None, series), "two series in " + folder
                self.series_uid = series
        assert self.images, "no images in " + folder

    @property
    def files(self):
        return self.images + ([self.seg] if self.seg else [])


class PythonClientTest(unittest.TestCase):
    """The methods run in name order and share one server: test_1x datasets and uploads,
    test_2x errors, test_3x training, test_4x segmentation, test_9x shutdown."""

    server = None
    work_dir = None
    subjects = []
    dataset = "cardiac-mr"
    state = {}

    @classmethod
    def setUpClass(cls):
        cls.work_dir = tempfile.mkdtemp(prefix="miseg-python-client-")
        try:
            cls._set_up()
        except BaseException:
            cls.tearDownClass()  # unittest skips it when setUpClass fails
            raise

    @classmethod
    def _set_up(cls):
        phantoms = os.path.join(cls.work_dir, "phantoms")
        subprocess.run([PHANTOM, phantoms, str(SUBJECTS), str(LABELED)], check=True,
                       timeout=120)
        cls.subjects = [Subject(os.path.join(phantoms, "subject-%d" % i))
                        for i in range(SUBJECTS)]
        for i, subject in enumerate(cls.subjects):
            assert (subject.seg is not None) == (i < LABELED), subject.folder

        token_file = os.path.join(cls.work_dir, "tokens")
        with open(token_file, "w") as f:
            f.write("# miseg tokens for the Python client test\n")
            f.write("%s admin test-admin\n" % sha256_hex(ADMIN_TOKEN))
            f.write("%s reader test-reader\n" % sha256_hex(READER_TOKEN))

        cls.server = ServerProcess(SERVER, os.path.join(cls.work_dir, "data"),
                                   os.path.join(cls.work_dir, "ready"),
                                   ["--token_file=" + token_file])
        global RUNNING_SERVER
        RUNNING_SERVER = cls.server
        cls.server.wait_until_serving(STARTUP_TIMEOUT_S)
        cls.channel = grpc.insecure_channel("127.0.0.1:%d" % cls.server.grpc_port)
        grpc.channel_ready_future(cls.channel).result(timeout=RPC_TIMEOUT_S)
        cls.datasets = pb_grpc.DatasetServiceStub(cls.channel)
        cls.training = pb_grpc.TrainingServiceStub(cls.channel)
        cls.models = pb_grpc.ModelServiceStub(cls.channel)
        cls.segmentation = pb_grpc.SegmentationServiceStub(cls.channel)
        cls.admin = bearer(ADMIN_TOKEN)
        cls.reader = bearer(READER_TOKEN)

    @classmethod
    def tearDownClass(cls):
        if getattr(cls, "channel", None) is not None:
            cls.channel.close()
        if cls.server is not None:
            cls.server.kill()
        if cls.work_dir and not os.environ.get("MISEG_KEEP_TEST_DIR"):
            shutil.rmtree(cls.work_dir, ignore_errors=True)

    def need(self, key):
        if key not in self.state:
            self.fail("an earlier step did not produce %r" % key)
        return self.state[key]

    def assert_code(self, code, call, *args, **kwargs):
        with self.assertRaises(grpc.RpcError) as caught:
            call(*args, timeout=RPC_TIMEOUT_S, **kwargs)
        self.assertEqual(caught.exception.code(), code,
                         "expected %s, got %s: %s" % (code, caught.exception.code(),
                                                      caught.exception.details()))
        self.assertTrue(caught.exception.details(), "a status without a message")
        return caught.exception

    def upload(self, role, paths, metadata=None):
        return self.datasets.Upload(upload_requests(self.dataset, role, paths),
                                    metadata=metadata or self.admin, timeout=RPC_TIMEOUT_S)

    # ---------------------------------------------------------------- datasets and uploads

    def test_10_create_and_describe_dataset(self):
        created = self.datasets.CreateDataset(
            pb.CreateDatasetRequest(name=self.dataset, class_names=CLASS_NAMES, modality="MR"),
            metadata=self.admin, timeout=RPC_TIMEOUT_S)
        self.assertEqual(created.name, self.dataset)
        self.assertEqual(list(created.class_names), CLASS_NAMES)
        self.assertEqual(created.modality, "MR")
        self.assertEqual(created.labeled_studies, 0)
        self.assertEqual(created.instances, 0)
        self.assertEqual(created.active_model_id, 0)
        self.assertGreater(created.created_unix_ms, 0)

        listed = self.datasets.ListDatasets(pb.ListDatasetsRequest(), metadata=self.admin,
                                            timeout=RPC_TIMEOUT_S)
        self.assertIn(self.dataset, [d.name for d in listed.datasets])

        got = self.datasets.GetDataset(pb.GetDatasetRequest(name=self.dataset),
                                       metadata=self.admin, timeout=RPC_TIMEOUT_S)
        self.assertEqual(got.name, self.dataset)
        self.assertEqual(list(got.class_names), CLASS_NAMES)
        self.assertEqual(got.created_unix_ms, created.created_unix_ms)
        self.state["dataset"] = got

    def test_11_upload_labeled(self):
        self.need("dataset")
        labeled = self.subjects[:LABELED]
        # The SEG of each study goes first, so matching a SEG to its series does not depend
        # on the order of the files.
        paths = []
        for s in labeled:
            paths += [s.seg] + s.images
        sizes = sum(os.path.getsize(p) for p in paths)
        response = self.upload(pb.STUDY_ROLE_LABELED, paths)
        self.assertEqual(response.stored_instances, len(paths))
        self.assertEqual(response.duplicate_instances, 0)
        self.assertEqual(response.refused_instances, 0)
        self.assertEqual(response.bytes_received, sizes)
        self.assertEqual(len(response.results), len(paths))
        by_series = {s.series_uid: s for s in labeled}
        for path, result in zip(paths, response.results):
            name = os.path.basename(path)
            self.assertEqual(result.file_name, name)
            self.assertEqual(result.outcome, pb.INSTANCE_OUTCOME_STORED, result.reason)
            self.assertEqual(result.sop_instance_uid, self._sop_of(path))
            self.assertEqual(result.reason, "")
        self.assertEqual(len(response.stored), LABELED)
        self.assertEqual(sorted(st.series_instance_uid for st in response.stored),
                         sorted(by_series))
        for study in response.stored:
            subject = by_series[study.series_instance_uid]
            self.assertEqual(study.dataset, self.dataset)
            self.assertEqual(study.role, pb.STUDY_ROLE_LABELED)
            self.assertEqual(study.modality, "MR")
            self.assertEqual(study.instances, len(subject.images))
            self.assertEqual(study.slices, len(subject.images))
            self.assertGreaterEqual(study.rows, 64)
            self.assertGreaterEqual(study.columns, 64)
            self.assertEqual(study.segmentation_sop_instance_uid, self._sop_of(subject.seg))
            self.assertTrue(study.study_instance_uid)
        # Each series UID appears on its images' results (the SEG's series is its own).
        for s in labeled:
            for path in s.images:
                result = response.results[paths.index(path)]
                self.assertEqual(result.series_instance_uid, s.series_uid)
        self.state["labeled_instances"] = len(paths)
        self.state["labeled_bytes"] = sizes

    def test_12_upload_unlabeled(self):
        self.need("labeled_instances")
        subject = self.subjects[LABELED]
        # Small chunks: every file spans several messages.
        response = self.datasets.Upload(
            upload_requests(self.dataset, pb.STUDY_ROLE_UNLABELED, subject.images,
                            chunk_size=4096),
            metadata=self.admin, timeout=RPC_TIMEOUT_S)
        self.assertEqual(response.stored_instances, len(subject.images))
        self.assertEqual(response.duplicate_instances, 0)
        self.assertEqual(response.refused_instances, 0)
        self.assertEqual([r.file_name for r in response.results],
                         [os.path.basename(p) for p in subject.images])
        for result in response.results:
            self.assertEqual(result.outcome, pb.INSTANCE_OUTCOME_STORED, result.reason)
            self.assertEqual(result.series_instance_uid, subject.series_uid)
        self.assertEqual(len(response.stored), 1)
        study = response.stored[0]
        self.assertEqual(study.role, pb.STUDY_ROLE_UNLABELED)
        self.assertEqual(study.series_instance_uid, subject.series_uid)
        self.assertEqual(study.segmentation_sop_instance_uid, "")
        self.assertEqual(study.instances, len(subject.images))
        self.state["unlabeled_instances"] = len(subject.images)

    def test_13_upload_again_is_duplicate(self):
        self.need("unlabeled_instances")
        subject = self.subjects[0]
        response = self.upload(pb.STUDY_ROLE_LABELED, subject.files)
        self.assertEqual(response.stored_instances, 0)
        self.assertEqual(response.duplicate_instances, len(subject.files))
        self.assertEqual(response.refused_instances, 0)
        self.assertEqual(len(response.stored), 0)
        self.assertEqual(len(response.results), len(subject.files))
        for path, result in zip(subject.files, response.results):
            self.assertEqual(result.file_name, os.path.basename(path))
            self.assertEqual(result.outcome, pb.INSTANCE_OUTCOME_DUPLICATE, result.reason)
            self.assertEqual(result.sop_instance_uid, self._sop_of(path))

    def test_14_upload_non_dicom_is_refused(self):
        self.need("unlabeled_instances")
        junk = os.path.join(self.work_dir, "notes.txt")
        with open(junk, "wb") as f:
            f.write(b"this is not a DICOM file\n" * 10)
        response = self.upload(pb.STUDY_ROLE_UNLABELED, [junk])
        self.assertEqual(response.stored_instances, 0)
        self.assertEqual(response.duplicate_instances, 0)
        self.assertEqual(response.refused_instances, 1)
        self.assertEqual(len(response.stored), 0)
        self.assertEqual(len(response.results), 1)
        result = response.results[0]
        self.assertEqual(result.file_name, "notes.txt")
        self.assertEqual(result.outcome, pb.INSTANCE_OUTCOME_REFUSED)
        self.assertEqual(result.sop_instance_uid, "")
        self.assertTrue(result.reason, "a refused file needs a reason")

    def test_15_list_studies_and_counts(self):
        self.need("unlabeled_instances")

        def studies(role, metadata):
            return self.datasets.ListStudies(
                pb.ListStudiesRequest(dataset=self.dataset, role=role), metadata=metadata,
                timeout=RPC_TIMEOUT_S).studies

        labeled = studies(pb.STUDY_ROLE_LABELED, self.admin)
        unlabeled = studies(pb.STUDY_ROLE_UNLABELED, self.admin)
        validation = studies(pb.STUDY_ROLE_VALIDATION, self.admin)
        everything = studies(pb.STUDY_ROLE_UNSPECIFIED, self.reader)  # readers may list
        self.assertEqual(len(labeled), LABELED)
        self.assertEqual(len(unlabeled), SUBJECTS - LABELED)
        self.assertEqual(len(validation), 0)
        self.assertEqual(len(everything), SUBJECTS)
        self.assertEqual(sorted(s.series_instance_uid for s in labeled),
                         sorted(s.series_uid for s in self.subjects[:LABELED]))
        self.assertEqual([s.series_instance_uid for s in unlabeled],
                         [self.subjects[LABELED].series_uid])
        for s in labeled:
            self.assertEqual(s.role, pb.STUDY_ROLE_LABELED)
            self.assertTrue(s.segmentation_sop_instance_uid)
        for s in unlabeled:
            self.assertEqual(s.role, pb.STUDY_ROLE_UNLABELED)

        dataset = self.datasets.GetDataset(pb.GetDatasetRequest(name=self.dataset),
                                           metadata=self.reader, timeout=RPC_TIMEOUT_S)
        self.assertEqual(dataset.labeled_studies, LABELED)
        self.assertEqual(dataset.unlabeled_studies, SUBJECTS - LABELED)
        self.assertEqual(dataset.validation_studies, 0)
        self.assertEqual(dataset.instances,
                         self.state["labeled_instances"] + self.state["unlabeled_instances"])
        self.assertGreaterEqual(dataset.stored_bytes, self.state["labeled_bytes"])

    # ---------------------------------------------------------------- status codes

    def test_20_not_found(self):
        self.assert_code(grpc.StatusCode.NOT_FOUND, self.datasets.GetDataset,
                         pb.GetDatasetRequest(name="no-such-dataset"), metadata=self.admin)
        self.assert_code(grpc.StatusCode.NOT_FOUND, self.training.GetJob,
                         pb.GetJobRequest(id=987654), metadata=self.admin)

    def test_21_invalid_argument(self):
        for name in ("Bad Name!", "", "-leading-dash", "x" * 64):
            self.assert_code(grpc.StatusCode.INVALID_ARGUMENT, self.datasets.CreateDataset,
                             pb.CreateDatasetRequest(name=name, class_names=CLASS_NAMES),
                             metadata=self.admin)
        self.assert_code(grpc.StatusCode.INVALID_ARGUMENT, self.datasets.CreateDataset,
                         pb.CreateDatasetRequest(name="one-class", class_names=["background"]),
                         metadata=self.admin)

    def test_22_already_exists(self):
        request = pb.CreateDatasetRequest(name="twice", class_names=["background", "organ"])
        first = self.datasets.CreateDataset(request, metadata=self.admin, timeout=RPC_TIMEOUT_S)
        self.assertEqual(first.modality, "MR")  # the default
        self.assert_code(grpc.StatusCode.ALREADY_EXISTS, self.datasets.CreateDataset, request,
                         metadata=self.admin)

    def test_23_unauthenticated(self):
        request = pb.ListDatasetsRequest()
        self.assert_code(grpc.StatusCode.UNAUTHENTICATED, self.datasets.ListDatasets, request)
        self.assert_code(grpc.StatusCode.UNAUTHENTICATED, self.datasets.ListDatasets, request,
                         metadata=bearer(UNKNOWN_TOKEN))
        self.assert_code(grpc.StatusCode.UNAUTHENTICATED, self.datasets.ListDatasets, request,
                         metadata=(("authorization", ADMIN_TOKEN),))  # no "Bearer "
        # A streaming call is refused the same way.
        self.assert_code(grpc.StatusCode.UNAUTHENTICATED, self.datasets.Upload,
                         upload_requests(self.dataset, pb.STUDY_ROLE_UNLABELED,
                                         self.subjects[LABELED].images),
                         metadata=bearer(UNKNOWN_TOKEN))

    def test_24_reader_permissions(self):
        self.assert_code(grpc.StatusCode.PERMISSION_DENIED, self.datasets.CreateDataset,
                         pb.CreateDatasetRequest(name="readers-may-not",
                                                 class_names=CLASS_NAMES),
                         metadata=self.reader)
        self.assert_code(grpc.StatusCode.PERMISSION_DENIED, self.training.StartJob,
                         pb.StartJobRequest(dataset=self.dataset), metadata=self.reader)
        listed = self.datasets.ListDatasets(pb.ListDatasetsRequest(), metadata=self.reader,
                                            timeout=RPC_TIMEOUT_S)
        names = [d.name for d in listed.datasets]
        self.assertIn(self.dataset, names)
        self.assertNotIn("readers-may-not", names)

    # ---------------------------------------------------------------- training

    def test_30_train(self):
        self.need("unlabeled_instances")
        hyper = pb.Hyperparameters(
            total_steps=6, grid_size=32, widths=[8, 16], labeled_batch=2, unlabeled_batch=2,
            validate_every=3, checkpoint_every=3, warmup_steps=1, rampup_steps=2, seed=11)
        job = self.training.StartJob(pb.StartJobRequest(dataset=self.dataset,
                                                        hyperparameters=hyper),
                                     metadata=self.admin, timeout=RPC_TIMEOUT_S)
        self.assertGreater(job.id, 0)
        self.assertEqual(job.dataset, self.dataset)
        self.assertEqual(job.total_steps, 6)
        self.assertIn(job.state, (pb.JOB_STATE_QUEUED, pb.JOB_STATE_RUNNING))
        # Resolved: the fields it was given, and defaults for the others.
        self.assertEqual(job.hyperparameters.grid_size, 32)
        self.assertEqual(list(job.hyperparameters.widths), [8, 16])
        self.assertTrue(job.hyperparameters.HasField("learning_rate"))
        self.assertTrue(job.hyperparameters.HasField("validation_fraction"))

        # The reader may watch; the stream ends after the terminal state event.
        events = list(self.training.WatchJob(pb.WatchJobRequest(id=job.id),
                                             metadata=self.reader, timeout=JOB_TIMEOUT_S))
        self.assertTrue(events, "WatchJob returned no events")
        kinds = [e.WhichOneof("event") for e in events]
        steps = [e.step for e in events if e.HasField("step")]
        validations = [e.validation for e in events if e.HasField("validation")]
        states = [e.state for e in events if e.HasField("state")]
        sequences = [e.sequence for e in events]
        self.assertEqual(sequences, sorted(set(sequences)), "sequence must increase")
        for e in events:
            self.assertEqual(e.job_id, job.id)
        self.assertEqual(kinds[-1], "state")
        self.assertEqual(states[-1].state, pb.JOB_STATE_SUCCEEDED, states[-1].message)
        self.assertEqual(states[-1].step, 6)
        self.assertIn(pb.JOB_STATE_RUNNING, [s.state for s in states])

        self.assertTrue(steps, "no step events: %s" % kinds)
        self.assertEqual(steps[-1].step, 6)
        self.assertEqual([s.step for s in steps], sorted(s.step for s in steps))
        for s in steps:
            self.assertEqual(s.total_steps, 6)
            self.assertGreaterEqual(s.step, 1)
            for term in ("loss", "supervised", "consistency", "mutual_information",
                         "unsupervised_weight", "learning_rate"):
                value = getattr(s, term)
                self.assertTrue(value == value and abs(value) != float("inf"),
                                "%s is not finite at step %d" % (term, s.step))
            self.assertGreater(s.loss, 0)
            self.assertGreater(s.supervised, 0)
            self.assertGreaterEqual(s.consistency, 0)
            self.assertGreater(s.learning_rate, 0)
            self.assertGreaterEqual(s.unsupervised_weight, 0)
        self.assertGreater(max(s.unsupervised_weight for s in steps), 0)

        self.assertTrue(validations, "no validation events: %s" % kinds)
        for v in validations:
            self.assertEqual(len(v.dice_per_class), len(CLASS_NAMES) - 1)
            for dice in v.dice_per_class:
                self.assertGreaterEqual(dice, 0)
                self.assertLessEqual(dice, 1)
            self.assertAlmostEqual(v.mean_dice, sum(v.dice_per_class) / len(v.dice_per_class),
                                   places=6)

        done = self.training.GetJob(pb.GetJobRequest(id=job.id), metadata=self.reader,
                                    timeout=RPC_TIMEOUT_S)
        self.assertEqual(done.state, pb.JOB_STATE_SUCCEEDED, done.error)
        self.assertEqual(done.step, 6)
        self.assertGreater(done.model_id, 0)
        self.assertEqual(done.error, "")
        self.assertTrue(done.device)
        self.assertGreaterEqual(done.finished_unix_ms, done.started_unix_ms)
        self.assertGreater(done.started_unix_ms, 0)
        # One of the three labeled studies is held out for validation (no validation role).
        self.assertEqual(done.labeled_studies + done.validation_studies, LABELED)
        self.assertGreaterEqual(done.validation_studies, 1)
        self.assertEqual(done.unlabeled_studies, SUBJECTS - LABELED)

        jobs = self.training.ListJobs(pb.ListJobsRequest(dataset=self.dataset),
                                      metadata=self.reader, timeout=RPC_TIMEOUT_S).jobs
        self.assertEqual([j.id for j in jobs], [job.id])
        self.state["job"] = done
        self.state["validations"] = validations

    def test_31_models(self):
        job = self.need("job")
        models = self.models.ListModels(pb.ListModelsRequest(dataset=self.dataset),
                                        metadata=self.reader, timeout=RPC_TIMEOUT_S).models
        self.assertEqual(len(models), 1)
        model = models[0]
        self.assertEqual(model.id, job.model_id)
        self.assertEqual(model.dataset, self.dataset)
        self.assertEqual(model.version, 1)
        self.assertEqual(model.job_id, job.id)
        self.assertEqual(list(model.class_names), CLASS_NAMES)
        self.assertEqual(len(model.validation_dice_per_class), len(CLASS_NAMES) - 1)
        for dice in model.validation_dice_per_class:
            self.assertGreaterEqual(dice, 0)
            self.assertLessEqual(dice, 1)
        self.assertEqual(list(model.validation_dice_per_class),
                         list(self.state["validations"][-1].dice_per_class))
        self.assertTrue(model.active, "the first model of a dataset becomes active")
        self.assertGreater(model.size_bytes, 0)
        self.assertEqual(model.steps, 6)

        got = self.models.GetModel(pb.GetModelRequest(id=model.id), metadata=self.reader,
                                   timeout=RPC_TIMEOUT_S)
        self.assertEqual(got, model)
        dataset = self.datasets.GetDataset(pb.GetDatasetRequest(name=self.dataset),
                                           metadata=self.reader, timeout=RPC_TIMEOUT_S)
        self.assertEqual(dataset.active_model_id, model.id)
        self.state["model"] = model

    # ---------------------------------------------------------------- segmentation

    def test_40_segment(self):
        import pydicom
        model = self.need("model")
        subject = self.subjects[LABELED]  # the unlabeled study
        responses = self.segmentation.Segment(
            segment_requests(pb.SegmentHeader(dataset=self.dataset), subject.images),
            metadata=self.admin, timeout=RPC_TIMEOUT_S)
        seg_bytes = bytearray()
        summaries = []
        for response in responses:
            kind = response.WhichOneof("kind")
            if kind == "segmentation_chunk":
                self.assertFalse(summaries, "a chunk after the summary")
                seg_bytes += response.segmentation_chunk
            else:
                self.assertEqual(kind, "summary")
                summaries.append(response.summary)
        self.assertEqual(len(summaries), 1)
        summary = summaries[0]
        self.assertEqual(summary.model_id, model.id)
        self.assertEqual(summary.model_version, model.version)
        self.assertEqual(summary.dataset, self.dataset)
        self.assertEqual(summary.source_series_instance_uid, subject.series_uid)
        self.assertEqual(summary.segmentation_bytes, len(seg_bytes))
        self.assertGreater(len(seg_bytes), 132)
        self.assertEqual(bytes(seg_bytes[128:132]), b"DICM")
        self.assertEqual([c.class_name for c in summary.classes], CLASS_NAMES[1:])
        for c in summary.classes:
            self.assertGreaterEqual(c.volume_ml, 0)
            self.assertGreaterEqual(c.voxels, 0)
        for seconds in (summary.queue_seconds, summary.decode_seconds,
                        summary.inference_seconds, summary.encode_seconds):
            self.assertGreaterEqual(seconds, 0)

        path = os.path.join(self.work_dir, "segmentation.dcm")
        with open(path, "wb") as f:
            f.write(seg_bytes)
        ds = pydicom.dcmread(path)
        self.assertEqual(ds.Modality, "SEG")
        self.assertEqual(ds.SOPClassUID, SEG_SOP_CLASS)
        self.assertEqual(ds.file_meta.MediaStorageSOPClassUID, SEG_SOP_CLASS)
        self.assertEqual(ds.SOPInstanceUID, summary.segmentation_sop_instance_uid)
        self.assertEqual(ds.SeriesInstanceUID, summary.segmentation_series_instance_uid)
        self.assertNotEqual(ds.SeriesInstanceUID, subject.series_uid)
        self.assertEqual(ds.ReferencedSeriesSequence[0].SeriesInstanceUID, subject.series_uid)
        referenced = {item.ReferencedSOPInstanceUID
                      for item in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
        self.assertEqual(referenced, {self._sop_of(p) for p in subject.images})
        self.assertEqual([s.SegmentLabel for s in ds.SegmentSequence], CLASS_NAMES[1:])

    def test_41_segment_errors(self):
        self.need("model")
        # The reader role may not segment.
        self.assert_code(grpc.StatusCode.PERMISSION_DENIED, self._segment_all,
                         pb.SegmentHeader(dataset=self.dataset),
                         self.subjects[LABELED].images, metadata=self.reader)
        self.assert_code(grpc.StatusCode.NOT_FOUND, self._segment_all,
                         pb.SegmentHeader(dataset="no-such-dataset"),
                         self.subjects[LABELED].images, metadata=self.admin)

    def _segment_all(self, header, paths, metadata, timeout):
        return list(self.segmentation.Segment(segment_requests(header, paths),
                                              metadata=metadata, timeout=timeout))

    def _sop_of(self, path):
        folder, name = os.path.split(path)
        for s in self.subjects:
            if s.folder == folder:
                return s.sop_uids[name]
        raise KeyError(path)

    # ---------------------------------------------------------------- metrics and shutdown

    def test_90_metrics(self):
        url = "http://127.0.0.1:%d/metrics" % self.server.metrics_port
        with urllib.request.urlopen(url, timeout=RPC_TIMEOUT_S) as response:
            self.assertEqual(response.status, 200)
            text = response.read().decode("utf-8", "replace")
        self.assertIn("miseg_grpc_requests_total", text)
        self.assertIn("miseg_build_info", text)

    def test_99_sigterm_exits_zero(self):
        self.channel.close()
        status = self.server.stop(signal.SIGTERM, SHUTDOWN_TIMEOUT_S)
        self.assertIsNotNone(status, "the server did not exit within %ds of SIGTERM"
                             % SHUTDOWN_TIMEOUT_S)
        self.assertEqual(status, 0)
        self.assertTrue(any("stopped" in line for line in self.server.lines[-5:]),
                        "no 'stopped' line at the end of the log")


RUNNING_SERVER = None


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", default=os.environ.get("MISEG_SERVER"),
                        help="the miseg-server binary (env MISEG_SERVER)")
    parser.add_argument("--stubs", default=os.environ.get("MISEG_PROTO_PYTHON_DIR"),
                        help="directory holding miseg/v1/miseg_pb2*.py "
                             "(env MISEG_PROTO_PYTHON_DIR)")
    parser.add_argument("--phantom", default=os.environ.get("MISEG_TEST_PHANTOM"),
                        help="the miseg-test-phantom tool (env MISEG_TEST_PHANTOM)")
    args, rest = parser.parse_known_args()
    missing = [flag for flag, value in (("--server", args.server), ("--stubs", args.stubs),
                                        ("--phantom", args.phantom)) if not value]
    if missing:
        parser.error("missing " + ", ".join(missing))
    for path in (args.server, args.phantom):
        if not os.access(path, os.X_OK):
            parser.error("not an executable: " + path)
    stub_file = os.path.join(args.stubs, "miseg", "v1", "miseg_pb2_grpc.py")
    if not os.path.isfile(stub_file):
        parser.error("no generated stubs at %s (build target miseg_proto_python)" % stub_file)

    global SERVER, PHANTOM, STUBS, grpc, pb, pb_grpc
    SERVER = os.path.abspath(args.server)
    PHANTOM = os.path.abspath(args.phantom)
    STUBS = os.path.abspath(args.stubs)
    sys.path.insert(0, STUBS)
    import grpc as grpc_module
    from miseg.v1 import miseg_pb2, miseg_pb2_grpc
    grpc, pb, pb_grpc = grpc_module, miseg_pb2, miseg_pb2_grpc

    started = time.monotonic()
    program = unittest.main(argv=[sys.argv[0]] + rest, exit=False)
    result = program.result
    elapsed = time.monotonic() - started
    if not result.wasSuccessful() and RUNNING_SERVER is not None:
        sys.stderr.write("\n===== miseg-server log =====\n%s\n===== end of log =====\n"
                         % RUNNING_SERVER.log())
    sys.stderr.write("python client test: %.1fs\n" % elapsed)
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
