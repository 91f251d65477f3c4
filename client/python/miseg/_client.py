"""miseg.Client: the API of miseg.v1 in the words a notebook uses. Datasets, uploads (one
stream per study, files read in chunks, a tqdm bar when tqdm is installed), training jobs,
models and segmentation. Every failed call raises a miseg.Error subclass named after its
gRPC status, carrying the server's message."""

from __future__ import annotations

import os
import sys
from typing import Any, Iterator, List, Optional, Sequence, Union

from miseg._connection import Connection
from miseg._dicom import Paths, expand_paths, group_studies, looks_like_uid, source_grid
from miseg._jobs import Job, Model
from miseg._proto import pb
from miseg._segmentation import Segmentation
from miseg._types import (Dataset, FileResult, HyperparameterValue, Study, UploadResult, Worker,
                          file_result, hyperparameters_to_proto, role_to_proto)

CHUNK_BYTES = 1 << 20
STREAM_TIMEOUT_S = 3600.0  # an Upload or Segment stream: as long as the bytes take

DatasetRef = Union[str, Dataset]
ModelRef = Union[int, Model]


def _name(dataset: DatasetRef) -> str:
    return dataset.name if isinstance(dataset, Dataset) else dataset


class _Progress:
    """A byte-counting tqdm bar when tqdm is installed and wanted, else nothing."""

    def __init__(self, total: int, description: str, enabled: Optional[bool]) -> None:
        self._bar: Any = None
        if enabled is False or total <= 0:
            return
        try:
            from tqdm import tqdm as plain_bar
        except ImportError:
            if enabled:
                raise ImportError("progress=True needs tqdm") from None
            return
        bar: Any = plain_bar
        try:  # in a notebook, tqdm.auto draws a widget, which needs ipywidgets
            import ipywidgets  # noqa: F401
            from tqdm.auto import tqdm as auto_bar
            bar = auto_bar
        except ImportError:
            pass
        self._bar = bar(total=total, desc=description, unit="B", unit_scale=True,
                        unit_divisor=1024, file=sys.stderr, leave=True)

    def update(self, count: int) -> None:
        if self._bar is not None:
            self._bar.update(count)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _chunks(paths: Sequence[str], progress: _Progress) -> Iterator[pb.FileChunk]:
    """FileChunk messages for the files, read CHUNK_BYTES at a time: file_name on a file's
    first chunk, last_chunk on its last (an empty file is one empty last chunk)."""
    for path in paths:
        with open(path, "rb") as f:
            first = True
            data = f.read(CHUNK_BYTES)
            while True:
                following = f.read(CHUNK_BYTES) if data else b""
                yield pb.FileChunk(file_name=os.path.basename(path) if first else "",
                                   data=data, last_chunk=not following)
                progress.update(len(data))
                if not following:
                    break
                first, data = False, following


class Client:
    """A connection to a miseg-server.

    address, token and tls_ca (and the keyword-only tls_cert, tls_key, tls_server_name)
    default to the environment variables the `miseg` CLI reads: MISEG_ADDRESS
    (127.0.0.1:50051 when unset), MISEG_TOKEN, MISEG_TLS_CA, MISEG_TLS_CERT, MISEG_TLS_KEY,
    MISEG_TLS_SERVER_NAME. timeout bounds each unary call in seconds. Usable as a context
    manager; safe to share between threads."""

    def __init__(self, address: Optional[str] = None, token: Optional[str] = None,
                 tls_ca: Optional[str] = None, *, tls_cert: Optional[str] = None,
                 tls_key: Optional[str] = None, tls_server_name: Optional[str] = None,
                 timeout: float = 120.0) -> None:
        self._connection = Connection(address, token, tls_ca, tls_cert, tls_key,
                                      tls_server_name, timeout)

    @property
    def address(self) -> str:
        return self._connection.address

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return "Client(address=%r%s)" % (self.address, ", tls" if self._connection.tls else "")

    # ---- datasets and studies ---------------------------------------------------------------

    def create_dataset(self, name: str, classes: Sequence[str], modality: str = "MR") -> Dataset:
        """Creates a dataset; classes[0] is the background. AlreadyExists when the name is
        taken, InvalidArgument for a bad name or classes."""
        if isinstance(classes, str):
            raise TypeError("classes is a list of class names, not one string")
        c = self._connection
        return Dataset.from_proto(c.unary(c.datasets.CreateDataset, pb.CreateDatasetRequest(
            name=name, class_names=list(classes), modality=modality), pb.Dataset))

    def datasets(self) -> List[Dataset]:
        c = self._connection
        response = c.unary(c.datasets.ListDatasets, pb.ListDatasetsRequest(),
                           pb.ListDatasetsResponse)
        return [Dataset.from_proto(d) for d in response.datasets]

    def dataset(self, name: DatasetRef) -> Dataset:
        c = self._connection
        return Dataset.from_proto(c.unary(c.datasets.GetDataset,
                                          pb.GetDatasetRequest(name=_name(name)), pb.Dataset))

    def studies(self, dataset: DatasetRef, role: Optional[str] = None) -> List[Study]:
        """The dataset's studies, of one role ("labeled", "unlabeled", "validation") or all."""
        c = self._connection
        request = pb.ListStudiesRequest(dataset=_name(dataset))
        if role is not None:
            request.role = role_to_proto(role)
        response = c.unary(c.datasets.ListStudies, request, pb.ListStudiesResponse)
        return [Study.from_proto(s) for s in response.studies]

    def delete_study(self, dataset: DatasetRef, series_instance_uid: str) -> int:
        """Deletes a study (admin); returns the number of instances deleted."""
        c = self._connection
        return c.unary(c.datasets.DeleteStudy, pb.DeleteStudyRequest(
            dataset=_name(dataset), series_instance_uid=series_instance_uid),
            pb.DeleteStudyResponse).deleted_instances

    def upload(self, dataset: DatasetRef, paths: Paths, role: str, *,
               progress: Optional[bool] = None) -> UploadResult:
        """Uploads DICOM files (and every file under the folders given) as studies of a role:
        "labeled" and "validation" studies need their DICOM SEG among the files,
        "unlabeled" ones are image series alone. Files are grouped by series, each series
        with the SEGs that reference it, and sent one study per stream (one refused study
        does not hold back the others); other files go last, so the server says why it
        refuses them. The result lists every file as stored, duplicate (already in the
        dataset) or refused (with the server's reason). progress: a tqdm bar (default: when
        tqdm is installed)."""
        proto_role = role_to_proto(role)
        files = expand_paths(paths)
        if not files:
            raise ValueError("no files to upload")
        studies, others = group_studies(files)
        batches = [s.files for s in studies] + ([others] if others else [])
        total = sum(os.path.getsize(p) for p in files)
        bar = _Progress(total, "upload", progress)
        result = UploadResult()
        c = self._connection
        try:
            for batch in batches:
                def requests(batch: Sequence[str] = batch) -> Iterator[pb.UploadRequest]:
                    yield pb.UploadRequest(header=pb.UploadHeader(dataset=_name(dataset),
                                                                  role=proto_role))
                    for chunk in _chunks(batch, bar):
                        yield pb.UploadRequest(chunk=chunk)

                response = c.stream_unary(c.datasets.Upload, requests(), pb.UploadResponse,
                                          STREAM_TIMEOUT_S)
                self._add_results(result, batch, response)
        finally:
            bar.close()
        return result

    @staticmethod
    def _add_results(result: UploadResult, batch: Sequence[str],
                     response: pb.UploadResponse) -> None:
        for path, r in zip(batch, response.results):
            fr: FileResult = file_result(path, r)
            {"stored": result.stored, "duplicate": result.duplicate,
             "refused": result.refused}[fr.outcome].append(fr)
        result.studies.extend(Study.from_proto(s) for s in response.stored)
        result.bytes_sent += response.bytes_received

    # ---- training -----------------------------------------------------------------------------

    def train(self, dataset: DatasetRef, steps: Optional[int] = None,
              **hyperparameters: HyperparameterValue) -> Job:
        """Starts a training job on the dataset's studies and returns it (queued or
        running). steps is total_steps; the other keywords are the API's Hyperparameters
        fields (w_mi, w_cons, dice_weight, rampup_steps, mi_window, mi_lambda, consistency
        ("mse" or "kl"), warmup_steps, learning_rate, min_learning_rate, weight_decay,
        labeled_batch, unlabeled_batch, crop_size, seed, grid_size, widths,
        validate_every, validation_fraction, checkpoint_every, ranks, objective, w_entropy,
        ema_decay); unset ones take the method's defaults. objective is "mi" (the method),
        "labeled_only", "entropy", "mean_teacher", "consistency_only" or "mi_only"; ranks=N
        trains on N devices at once (see workers()), each with the given batches.
        FailedPrecondition when the dataset has no labeled study."""
        values = dict(hyperparameters)
        if steps is not None:
            if "total_steps" in values:
                raise TypeError("give steps or total_steps, not both")
            values["total_steps"] = steps
        message = hyperparameters_to_proto(values)
        c = self._connection
        return Job(c, c.unary(c.training.StartJob, pb.StartJobRequest(
            dataset=_name(dataset), hyperparameters=message), pb.Job))

    def job(self, id: int) -> Job:
        c = self._connection
        return Job(c, c.unary(c.training.GetJob, pb.GetJobRequest(id=id), pb.Job))

    def jobs(self, dataset: Optional[DatasetRef] = None) -> List[Job]:
        """The jobs of a dataset, or of every dataset."""
        c = self._connection
        response = c.unary(c.training.ListJobs, pb.ListJobsRequest(
            dataset=_name(dataset) if dataset is not None else ""), pb.ListJobsResponse)
        return [Job(c, j) for j in response.jobs]

    def workers(self) -> List[Worker]:
        """The workers that train jobs' ranks: the server's own devices first."""
        c = self._connection
        response = c.unary(c.workers.ListWorkers, pb.ListWorkersRequest(),
                           pb.ListWorkersResponse)
        return [Worker.from_proto(w) for w in response.workers]

    # ---- models -------------------------------------------------------------------------------

    def models(self, dataset: Optional[DatasetRef] = None) -> List[Model]:
        """The model versions of a dataset (or of every dataset)."""
        c = self._connection
        response = c.unary(c.models.ListModels, pb.ListModelsRequest(
            dataset=_name(dataset) if dataset is not None else ""), pb.ListModelsResponse)
        return [Model(c, m) for m in response.models]

    def model(self, id: int) -> Model:
        c = self._connection
        return Model(c, c.unary(c.models.GetModel, pb.GetModelRequest(id=id), pb.Model))

    # ---- segmentation -------------------------------------------------------------------------

    def segment(self, dataset: DatasetRef, paths_or_series_uid: Union[Paths, str],
                model: Optional[ModelRef] = None) -> Segmentation:
        """Segments an image series with the dataset's active model (or `model`, a Model or
        its id). paths_or_series_uid: the series' files or folder (SEG files among them are left out),
        or the Series Instance UID of a study stored in the dataset. Returns the SEG, its
        summary and the labels on the source's grid. FailedPrecondition when the dataset has
        no active model, ResourceExhausted when the server's inference queue is full."""
        header = pb.SegmentHeader(dataset=_name(dataset))
        if model is not None:
            header.model_id = model.id if isinstance(model, Model) else int(model)
        images: List[str] = []
        grid = None
        source = paths_or_series_uid
        if isinstance(source, str) and not os.path.exists(source) and looks_like_uid(source):
            header.stored_series_instance_uid = source
        else:
            grid = source_grid(source)  # one image series, or ValueError
            images = sorted({s.path for s in grid.slices if s.path is not None})

        def requests() -> Iterator[pb.SegmentRequest]:
            yield pb.SegmentRequest(header=header)
            for chunk in _chunks(images, _Progress(0, "", False)):
                yield pb.SegmentRequest(chunk=chunk)

        c = self._connection
        call = c.segmentation.Segment(requests(), metadata=c.metadata, timeout=STREAM_TIMEOUT_S)
        seg = bytearray()
        summary: Optional[pb.SegmentSummary] = None
        for response in c.server_stream(call, pb.SegmentResponse):
            if response.WhichOneof("kind") == "segmentation_chunk":
                seg += response.segmentation_chunk
            elif response.WhichOneof("kind") == "summary":
                summary = response.summary
        if summary is None:
            raise RuntimeError("the server ended the segmentation without its summary")
        classes = self.model(summary.model_id).classes
        return Segmentation(bytes(seg), summary, classes, grid)
