"""The installed `miseg` package against a real miseg-server: every Client, Job, Model and
Segmentation method, each error class the server (or the connection) can be made to
answer, and result.labels checked against the SEG decoded here with plain pydicom (its own
bit unpacking, frames placed by their referenced source instance), not the package's
decoder. Tests share one server; fixtures build the dataset and train a tiny model once."""

from __future__ import annotations

import io
import os
import socket
from typing import Dict, List, Sequence, Tuple

import numpy as np
import pydicom
import pytest

import miseg
from conftest import ADMIN_TOKEN, CLASSES, READER_TOKEN, TINY

DATASET = "cardiac"
LABELED = (0, 1, 2)   # uploaded as labeled
HELD_OUT = 3          # labeled on disk, never uploaded: ground truth for the held-out study
UNLABELED = (4, 5)
SEGMENTED = 6         # 71 x 66 slices: a slice is not a whole number of bytes in the SEG
SPARE = 7             # uploaded, then deleted


# ---- independent DICOM reading (pydicom only) ---------------------------------------------


def image_files(folder: str) -> List[str]:
    return sorted(os.path.join(folder, n) for n in os.listdir(folder)
                  if pydicom.dcmread(os.path.join(folder, n), stop_before_pixels=True).Modality
                  != "SEG")


def seg_file(folder: str) -> str:
    segs = [os.path.join(folder, n) for n in os.listdir(folder)
            if pydicom.dcmread(os.path.join(folder, n), stop_before_pixels=True).Modality
            == "SEG"]
    assert len(segs) == 1, folder
    return segs[0]


def sorted_slices(folder: str) -> List[pydicom.Dataset]:
    """The series' headers ordered along the normal of their orientation."""
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in image_files(folder)]
    orientation = np.array(headers[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    return sorted(headers, key=lambda h: float(np.dot(np.array(h.ImagePositionPatient, float),
                                                      normal)))


def source_shape(folder: str) -> Tuple[int, int, int]:
    headers = sorted_slices(folder)
    return (len(headers), int(headers[0].Rows), int(headers[0].Columns))


def pydicom_labels(seg_bytes: bytes, folder: str, classes: Sequence[str]) -> np.ndarray:
    """The SEG's labels on the source grid: pydicom's pixel_array for the frames, each frame
    on the slice its Derivation Image reference names, class by SegmentLabel, higher segment
    numbers drawn last."""
    headers = sorted_slices(folder)
    slice_of = {str(h.SOPInstanceUID): i for i, h in enumerate(headers)}
    seg = pydicom.dcmread(io.BytesIO(seg_bytes))
    frames = seg.pixel_array
    if frames.ndim == 2:
        frames = frames[np.newaxis]
    class_of = {int(s.SegmentNumber): list(classes).index(str(s.SegmentLabel))
                for s in seg.SegmentSequence}
    placed = []
    for f, group in enumerate(seg.PerFrameFunctionalGroupsSequence):
        number = int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        uid = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        placed.append((number, f, slice_of[str(uid)]))
    labels = np.zeros((len(headers), int(seg.Rows), int(seg.Columns)), dtype=np.uint8)
    for number, f, k in sorted(placed):
        labels[k][frames[f] != 0] = class_of[number]
    return labels


# ---- fixtures: one dataset, one tiny model ---------------------------------------------------


@pytest.fixture(scope="session")
def uploads(admin: miseg.Client, phantoms: Dict[int, str]) -> Dict[str, miseg.UploadResult]:
    admin.create_dataset(DATASET, CLASSES)
    return {
        "labeled": admin.upload(DATASET, [phantoms[i] for i in LABELED], "labeled"),
        "unlabeled": admin.upload(DATASET, [phantoms[i] for i in UNLABELED], role="unlabeled",
                                  progress=False),
    }


@pytest.fixture(scope="session")
def job(admin: miseg.Client, uploads: Dict[str, miseg.UploadResult]) -> miseg.Job:
    return admin.train(DATASET, steps=6, validate_every=3, **TINY).wait()


@pytest.fixture(scope="session")
def segmented(admin: miseg.Client, job: miseg.Job,
              phantoms: Dict[int, str]) -> miseg.Segmentation:
    return admin.segment(DATASET, phantoms[SEGMENTED])


# ---- datasets, uploads, studies -------------------------------------------------------------


def test_client_reads_the_cli_environment(address: str, monkeypatch: pytest.MonkeyPatch,
                                          uploads: Dict[str, miseg.UploadResult]) -> None:
    monkeypatch.setenv("MISEG_ADDRESS", address)
    monkeypatch.setenv("MISEG_TOKEN", READER_TOKEN)
    with miseg.Client() as client:
        assert client.address == address
        assert DATASET in [d.name for d in client.datasets()]
    monkeypatch.setenv("MISEG_TOKEN", "not-a-token")
    with miseg.Client() as client, pytest.raises(miseg.Unauthenticated):
        client.datasets()
    # An argument wins over the environment.
    with miseg.Client(token=ADMIN_TOKEN) as client:
        assert client.dataset(DATASET).name == DATASET


def test_create_dataset_and_describe(admin: miseg.Client, reader: miseg.Client) -> None:
    created = admin.create_dataset("brain-ct", ["background", "lesion"], modality="CT")
    assert created.name == "brain-ct"
    assert created.classes == ("background", "lesion")
    assert created.modality == "CT"
    assert created.instances == 0 and created.active_model_id is None
    assert created.created is not None
    assert admin.create_dataset("default-modality", ["background", "organ"]).modality == "MR"
    assert {"brain-ct", "default-modality"} <= {d.name for d in reader.datasets()}
    assert reader.dataset("brain-ct") == created


def test_upload_labeled(uploads: Dict[str, miseg.UploadResult], phantoms: Dict[int, str]) -> None:
    result = uploads["labeled"]
    files = [os.path.join(phantoms[i], n) for i in LABELED for n in os.listdir(phantoms[i])]
    assert sorted(r.path for r in result.stored) == sorted(files)
    assert result.duplicate == [] and result.refused == [] and result.reasons == {}
    assert result.bytes_sent == sum(os.path.getsize(p) for p in files)
    assert len(result.studies) == len(LABELED)
    for study in result.studies:
        assert study.role == "labeled"
        assert study.dataset == DATASET
        assert study.segmentation_sop_instance_uid
    by_series = {s.series_instance_uid: s for s in result.studies}
    for i in LABELED:
        headers = sorted_slices(phantoms[i])
        study = by_series[str(headers[0].SeriesInstanceUID)]
        assert study.shape == source_shape(phantoms[i])
        assert study.segmentation_sop_instance_uid == str(
            pydicom.dcmread(seg_file(phantoms[i]), stop_before_pixels=True).SOPInstanceUID)
    for r in result.stored:
        assert r.outcome == "stored"
        assert r.sop_instance_uid == str(pydicom.dcmread(r.path, stop_before_pixels=True)
                                         .SOPInstanceUID)


def test_upload_unlabeled_duplicate_and_refused(admin: miseg.Client, work_dir: str,
                                                uploads: Dict[str, miseg.UploadResult],
                                                phantoms: Dict[int, str]) -> None:
    unlabeled = uploads["unlabeled"]
    assert len(unlabeled.studies) == len(UNLABELED)
    assert {s.role for s in unlabeled.studies} == {"unlabeled"}
    assert all(s.segmentation_sop_instance_uid is None for s in unlabeled.studies)

    # Again, with a file that is not DICOM in the same folder: duplicates and one refusal.
    folder = os.path.join(work_dir, "mixed")
    os.makedirs(folder)
    for name in os.listdir(phantoms[UNLABELED[0]]):
        os.link(os.path.join(phantoms[UNLABELED[0]], name), os.path.join(folder, name))
    notes = os.path.join(folder, "notes.txt")
    with open(notes, "w") as f:
        f.write("not a DICOM file\n" * 20)
    again = admin.upload(DATASET, folder, "unlabeled", progress=False)
    assert again.stored == [] and again.studies == []
    assert len(again.duplicate) == len(os.listdir(folder)) - 1
    assert {r.outcome for r in again.duplicate} == {"duplicate"}
    assert [r.path for r in again.refused] == [notes]
    assert again.refused[0].reason and again.reasons == {notes: again.refused[0].reason}


def test_studies_and_delete(admin: miseg.Client, reader: miseg.Client,
                            uploads: Dict[str, miseg.UploadResult],
                            phantoms: Dict[int, str]) -> None:
    spare = admin.upload(DATASET, phantoms[SPARE], "unlabeled", progress=False).studies[0]
    assert len(reader.studies(DATASET, "labeled")) == len(LABELED)
    assert len(reader.studies(DATASET, role="unlabeled")) == len(UNLABELED) + 1
    assert reader.studies(DATASET, "validation") == []
    assert len(reader.studies(DATASET)) == len(LABELED) + len(UNLABELED) + 1
    with pytest.raises(miseg.PermissionDenied):
        reader.delete_study(DATASET, spare.series_instance_uid)
    assert admin.delete_study(DATASET, spare.series_instance_uid) == spare.instances
    assert spare.series_instance_uid not in [s.series_instance_uid
                                             for s in reader.studies(DATASET)]
    dataset = reader.dataset(DATASET)
    assert (dataset.labeled_studies, dataset.unlabeled_studies) == (len(LABELED), len(UNLABELED))
    with pytest.raises(ValueError):
        reader.studies(DATASET, "training")


# ---- errors ---------------------------------------------------------------------------------


def test_every_status_code_has_its_class() -> None:
    import grpc

    class FakeError(grpc.RpcError):  # type: ignore[misc]
        def __init__(self, code: grpc.StatusCode) -> None:
            self._code = code

        def code(self) -> grpc.StatusCode:
            return self._code

        def details(self) -> str:
            return "the server says " + self._code.name

    from miseg._errors import error_from_rpc
    codes = [c for c in grpc.StatusCode if c != grpc.StatusCode.OK]
    classes = set()
    for code in codes:
        error = error_from_rpc(FakeError(code))
        assert isinstance(error, miseg.Error)
        assert error.code == code.name
        assert str(error) == "the server says " + code.name
        assert type(error).__name__.lower() == code.name.replace("_", "").lower()
        assert getattr(miseg, type(error).__name__) is type(error)
        classes.add(type(error))
    assert len(classes) == len(codes) == 16


def test_errors_from_the_server(admin: miseg.Client, reader: miseg.Client, address: str,
                                work_dir: str, job: miseg.Job) -> None:
    with pytest.raises(miseg.NotFound, match="no-such-dataset"):
        admin.dataset("no-such-dataset")
    with pytest.raises(miseg.NotFound):
        admin.job(987654)
    with pytest.raises(miseg.NotFound):
        admin.model(987654)
    with pytest.raises(miseg.InvalidArgument) as invalid:
        admin.create_dataset("Bad Name!", CLASSES)
    assert isinstance(invalid.value, miseg.Error) and invalid.value.code == "INVALID_ARGUMENT"
    assert str(invalid.value)  # the server's message
    with pytest.raises(miseg.InvalidArgument):
        admin.create_dataset("one-class", ["background"])
    with pytest.raises(miseg.AlreadyExists, match=DATASET):
        admin.create_dataset(DATASET, CLASSES)
    with pytest.raises(miseg.PermissionDenied):
        reader.create_dataset("readers-may-not", CLASSES)
    with pytest.raises(miseg.PermissionDenied):
        reader.train(DATASET, steps=1)
    with miseg.Client(address, token="nobody-has-this-token") as stranger:
        with pytest.raises(miseg.Unauthenticated):
            stranger.datasets()
    with miseg.Client(address) as anonymous:
        with pytest.raises(miseg.Unauthenticated):
            anonymous.datasets()
    # Training needs labeled studies; a finished job cannot be cancelled.
    admin.create_dataset("empty", ["background", "organ"])
    with pytest.raises(miseg.FailedPrecondition, match="labeled"):
        admin.train("empty", steps=1)
    with pytest.raises(miseg.FailedPrecondition):
        job.cancel()
    # Segmenting needs an active model.
    with pytest.raises(miseg.FailedPrecondition, match="active model"):
        admin.segment("empty", "1.2.3.4")
    # The server takes streams up to --max_request_mib=1.
    big = os.path.join(work_dir, "big.bin")
    with open(big, "wb") as f:
        f.write(b"\0" * (3 << 20 >> 1))
    with pytest.raises(miseg.ResourceExhausted):
        admin.upload(DATASET, big, "unlabeled", progress=False)
    # A port nobody listens on (bound here, never listening).
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        with miseg.Client("127.0.0.1:%d" % closed.getsockname()[1], timeout=10) as nowhere:
            with pytest.raises(miseg.Unavailable):
                nowhere.datasets()


def test_argument_errors_stay_in_python(admin: miseg.Client, phantoms: Dict[int, str]) -> None:
    with pytest.raises(TypeError, match="unknown hyperparameter"):
        admin.train(DATASET, steps=1, learning_rat=0.1)
    with pytest.raises(TypeError):
        admin.train(DATASET, steps=1, total_steps=2)
    with pytest.raises(TypeError):
        admin.train(DATASET, steps=1, widths="8,16")
    with pytest.raises(ValueError):
        admin.train(DATASET, steps=1, consistency="l2")
    with pytest.raises(ValueError):
        admin.upload(DATASET, phantoms[0], role="train")
    with pytest.raises(FileNotFoundError):
        admin.upload(DATASET, "/no/such/folder", "labeled")
    with pytest.raises(ValueError, match="2 image series"):
        admin.segment(DATASET, [phantoms[4], phantoms[5]])
    assert "w_mi" in miseg.hyperparameter_names()


# ---- training -------------------------------------------------------------------------------


def test_train_and_watch(job: miseg.Job, reader: miseg.Client) -> None:
    assert job.state == miseg.JobState.SUCCEEDED and job.state.terminal
    assert (job.step, job.total_steps) == (6, 6)
    assert job.model_id is not None and job.error == "" and job.device
    assert job.hyperparameters["grid_size"] == 32 and job.hyperparameters["widths"] == [8, 16]
    assert "learning_rate" in job.hyperparameters  # resolved by the server
    assert job.studies["unlabeled"] == len(UNLABELED)
    assert job.studies["labeled"] + job.studies["validation"] == len(LABELED)
    assert job.started is not None and job.finished is not None

    # A reader replays the finished job: the whole history, in order, once.
    events = list(reader.job(job.id).watch())
    sequences = [e.sequence for e in events]
    assert sequences == sorted(set(sequences))
    assert all(e.job_id == job.id for e in events)
    steps = [e for e in events if isinstance(e, miseg.StepEvent)]
    validations = [e for e in events if isinstance(e, miseg.ValidationEvent)]
    states = [e for e in events if isinstance(e, miseg.StateEvent)]
    assert [s.step for s in steps] == [1, 2, 3, 4, 5, 6]
    assert [v.step for v in validations] == [3, 6]
    assert all(len(v.dice_per_class) == len(CLASSES) - 1 for v in validations)
    assert miseg.JobState.RUNNING in [s.state for s in states]
    assert isinstance(events[-1], miseg.StateEvent)
    assert events[-1].state == miseg.JobState.SUCCEEDED
    assert [e.sequence for e in reader.job(job.id).watch(from_step=5)
            if isinstance(e, miseg.StepEvent)] == [s.sequence for s in steps[4:]]
    assert job.events() == events


def test_history_and_plot(job: miseg.Job) -> None:
    history = job.history()
    dice = ["dice_" + c for c in CLASSES[1:]]
    assert list(history.columns) == ["step", *miseg.LOSS_COLUMNS, "learning_rate",
                                     "steps_per_second", "slices_per_second", *dice,
                                     "mean_dice"]
    assert list(history["step"]) == [1, 2, 3, 4, 5, 6]
    steps = [e for e in job.events() if isinstance(e, miseg.StepEvent)]
    for column in (*miseg.LOSS_COLUMNS, "learning_rate"):
        assert list(history[column]) == [getattr(s, column) for s in steps]
    validated = history.dropna(subset=["mean_dice"])
    assert list(validated["step"]) == [3, 6]
    last = [e for e in job.events() if isinstance(e, miseg.ValidationEvent)][-1]
    assert list(validated[dice].iloc[-1]) == list(last.dice_per_class)
    assert history["mean_dice"].isna().sum() == 4

    figure = job.plot()
    assert len(figure.axes) == 3
    png = io.BytesIO()
    figure.savefig(png, format="png")
    assert png.getvalue().startswith(b"\x89PNG")


def test_jobs_cancel_and_wait(admin: miseg.Client, reader: miseg.Client, job: miseg.Job) -> None:
    long = admin.train(DATASET, steps=1_000_000, **TINY)
    assert long.state in (miseg.JobState.QUEUED, miseg.JobState.RUNNING)
    assert long.total_steps == 1_000_000
    assert {job.id, long.id} <= {j.id for j in reader.jobs(DATASET)}
    assert long.id in {j.id for j in reader.jobs()}
    assert reader.job(long.id).dataset == DATASET
    with pytest.raises(miseg.PermissionDenied):
        reader.job(long.id).cancel()
    # A million steps do not end within half a second.
    with pytest.raises(miseg.DeadlineExceeded):
        long.wait(timeout=0.5)
    long.cancel()
    assert long.wait() is long
    assert long.state == miseg.JobState.CANCELLED
    assert long.model() is None
    assert isinstance(list(long.watch())[-1], miseg.StateEvent)


def test_workers_and_ranks(admin: miseg.Client, reader: miseg.Client, job: miseg.Job) -> None:
    workers = reader.workers()
    assert [w.local for w in workers] == [True]
    assert [d.device for d in workers[0].devices] == ["cpu"]
    assert workers[0].state in ("idle", "busy")
    # Two ranks on a server of one device: the job waits whole, holding nothing.
    wide = admin.train(DATASET, steps=2, ranks=2, **TINY)
    assert wide.hyperparameters["ranks"] == 2
    assert wide.state == miseg.JobState.QUEUED
    assert wide.placement == []
    with pytest.raises(TypeError):
        admin.train(DATASET, steps=2, ranks="two")
    with pytest.raises(miseg.InvalidArgument):
        admin.train(DATASET, steps=2, ranks=0)
    wide.cancel()
    assert wide.wait().state == miseg.JobState.CANCELLED


def test_models_and_promote(admin: miseg.Client, reader: miseg.Client, job: miseg.Job) -> None:
    first = job.model()
    assert first is not None and first.id == job.model_id
    assert first.active and first.version == 1 and first.steps == 6
    assert first.classes == tuple(CLASSES)
    assert set(first.validation_dice) == set(CLASSES[1:])
    second_job = admin.train(DATASET, steps=2, validate_every=2, w_mi=0.0, w_cons=0.0,
                             **TINY).wait()
    second = second_job.model()
    assert second is not None and second.version == 2 and not second.active
    assert {m.id for m in reader.models(DATASET)} == {first.id, second.id}
    assert second.id in {m.id for m in reader.models()}
    with pytest.raises(miseg.PermissionDenied):
        reader.model(second.id).promote()
    assert second.promote() is second and second.active
    assert not first.refresh().active
    assert reader.dataset(DATASET).active_model_id == second.id
    first.promote()
    assert reader.dataset(DATASET).active_model_id == first.id
    assert admin.model(first.id) == first


# ---- segmentation ---------------------------------------------------------------------------


def test_segment_files(segmented: miseg.Segmentation, job: miseg.Job, work_dir: str,
                       phantoms: Dict[int, str]) -> None:
    folder = phantoms[SEGMENTED]
    shape = source_shape(folder)
    assert (shape[1] * shape[2]) % 8 != 0  # frames straddle bytes in the SEG's bit stream
    labels = segmented.labels
    assert labels.shape == shape and labels.dtype == np.uint8
    assert np.array_equal(labels, pydicom_labels(segmented.seg_bytes, folder, CLASSES))
    # The server counted the same voxels per class.
    for index, name in enumerate(CLASSES[1:], start=1):
        assert segmented.voxels[name] == int((labels == index).sum())
    assert list(segmented.volumes_ml) == CLASSES[1:]
    assert segmented.model_id == job.model_id and segmented.dataset == DATASET
    assert segmented.classes == tuple(CLASSES)
    headers = sorted_slices(folder)
    assert segmented.source_series_instance_uid == str(headers[0].SeriesInstanceUID)
    assert set(segmented.timings) == {"queue", "decode", "inference", "encode"}

    path = segmented.save(os.path.join(work_dir, "segmentation.dcm"))
    seg = pydicom.dcmread(path)
    assert seg.Modality == "SEG"
    assert str(seg.SOPInstanceUID) == segmented.sop_instance_uid
    assert str(seg.SeriesInstanceUID) == segmented.series_instance_uid
    with open(path, "rb") as f:
        assert f.read() == segmented.seg_bytes
    assert segmented.image().shape == shape
    figure = segmented.overlay()
    assert 1 <= len(figure.axes) <= 4


def test_segment_stored_series_with_a_model(admin: miseg.Client, reader: miseg.Client,
                                            job: miseg.Job, phantoms: Dict[int, str]) -> None:
    folder = phantoms[UNLABELED[0]]
    series = str(sorted_slices(folder)[0].SeriesInstanceUID)
    model = admin.model(job.model_id or 0)
    result = admin.segment(DATASET, series, model=model)
    assert result.model_id == model.id
    assert result.labels.shape == source_shape(folder)
    assert np.array_equal(result.labels, pydicom_labels(result.seg_bytes, folder, CLASSES))
    assert np.array_equal(admin.segment(DATASET, folder, model=model.id).labels, result.labels)
    with pytest.raises(miseg.PermissionDenied):
        reader.segment(DATASET, series)
    with pytest.raises(miseg.NotFound):
        admin.segment("no-such-dataset", folder)
    with pytest.raises(miseg.NotFound):
        admin.segment(DATASET, "1.2.826.0.1.3680043.2.1125.1", model=model)


def test_decode_ground_truth(phantoms: Dict[int, str]) -> None:
    for i in (2, HELD_OUT):  # 71 x 71 and 64 x 65 slices
        folder = phantoms[i]
        with open(seg_file(folder), "rb") as f:
            seg = f.read()
        grid = miseg.source_grid(folder)
        assert grid.shape == source_shape(folder)
        labels = miseg.decode_segmentation(seg, grid, CLASSES)
        expected = pydicom_labels(seg, folder, CLASSES)
        assert np.array_equal(labels, expected)
        assert set(np.unique(expected)) == {0, 1, 2, 3}
