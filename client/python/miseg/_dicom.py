"""Local DICOM, with pydicom: the files of an upload grouped into studies (each image series
with the SEGs that reference it), the grid of a source series (its slices ordered by
position along the normal, as the server orders them), a DICOM SEG decoded onto that grid,
and the series' voxels for overlays. Nothing here talks to the server."""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset as DicomDataset
from pydicom.errors import InvalidDicomError

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")

PathLike = Union[str, "os.PathLike[str]"]
Paths = Union[PathLike, Iterable[PathLike]]


def looks_like_uid(text: str) -> bool:
    return len(text) <= 64 and bool(_UID.match(text))


def expand_paths(paths: Paths) -> List[str]:
    """Files named, and every file under the folders named (sorted, recursively)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: List[str] = []
    for p in paths:
        path = os.fspath(p)
        if os.path.isdir(path):
            for root, dirs, names in os.walk(path):
                dirs.sort()
                files.extend(os.path.join(root, n) for n in sorted(names))
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise FileNotFoundError("no such file or folder: %s" % path)
    return files


def read_header(path: str) -> Optional[DicomDataset]:
    """The file's DICOM header, or None when it is not a DICOM Part-10 file."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError):
        return None


def is_segmentation(ds: DicomDataset) -> bool:
    return str(ds.get("SOPClassUID", "")) == SEG_SOP_CLASS or ds.get("Modality") == "SEG"


@dataclass
class LocalStudy:
    """One image series among local files, with the SEG files that reference it."""

    series_instance_uid: str
    images: List[str] = field(default_factory=list)
    segmentations: List[str] = field(default_factory=list)

    @property
    def files(self) -> List[str]:
        return self.images + self.segmentations


def group_studies(files: Sequence[str]) -> Tuple[List[LocalStudy], List[str]]:
    """The image series among files (in order of first appearance), each with the SEGs that
    reference it, and the other files (not DICOM, or a SEG of no series here)."""
    studies: Dict[str, LocalStudy] = {}
    segs: List[Tuple[str, DicomDataset]] = []
    others: List[str] = []
    for path in files:
        ds = read_header(path)
        if ds is None:
            others.append(path)
        elif is_segmentation(ds):
            segs.append((path, ds))
        else:
            uid = str(ds.get("SeriesInstanceUID", ""))
            studies.setdefault(uid, LocalStudy(uid)).images.append(path)
    for path, ds in segs:
        referenced = [str(item.get("SeriesInstanceUID", ""))
                      for item in ds.get("ReferencedSeriesSequence", [])]
        target = next((studies[uid] for uid in referenced if uid in studies), None)
        if target is None:
            others.append(path)
        else:
            target.segmentations.append(path)
    return list(studies.values()), others


# ---- the source grid -------------------------------------------------------------------


@dataclass(frozen=True)
class Slice:
    """One slice of a source series: the instance (and frame, in a multi-frame instance)."""

    sop_instance_uid: str
    frame_number: Optional[int]  # 1-based; None for a single-frame instance
    path: Optional[str]
    position: Optional[Tuple[float, float, float]]


@dataclass(frozen=True)
class SourceGrid:
    """A series' slices in the order of its labels' first axis, and its in-plane size."""

    series_instance_uid: str
    rows: int
    columns: int
    slices: Tuple[Slice, ...]
    normal: Optional[Tuple[float, float, float]]

    @property
    def shape(self) -> Tuple[int, int, int]:
        return (len(self.slices), self.rows, self.columns)

    def index_of(self, sop_instance_uid: str, frame_number: Optional[int]) -> Optional[int]:
        for i, s in enumerate(self.slices):
            if s.sop_instance_uid == sop_instance_uid and (
                    frame_number is None or s.frame_number in (None, frame_number)):
                return i
        return None


def _floats(values: Any) -> Optional[Tuple[float, ...]]:
    if values is None:
        return None
    try:
        return tuple(float(v) for v in values)
    except (TypeError, ValueError):
        return None


def _normal(orientation: Optional[Tuple[float, ...]]) -> Optional[Tuple[float, float, float]]:
    if orientation is None or len(orientation) != 6:
        return None
    n = np.cross(np.array(orientation[:3]), np.array(orientation[3:]))
    return (float(n[0]), float(n[1]), float(n[2]))


def _frame_geometry(ds: DicomDataset, frame: int) -> Tuple[Optional[Tuple[float, ...]],
                                                           Optional[Tuple[float, ...]]]:
    """(position, orientation) of one frame of an enhanced multi-frame instance."""
    position = orientation = None
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    shared = ds.get("SharedFunctionalGroupsSequence")
    groups = [per_frame[frame]] if per_frame is not None and frame < len(per_frame) else []
    if shared:
        groups.append(shared[0])
    for g in groups:
        if position is None and "PlanePositionSequence" in g:
            position = _floats(g.PlanePositionSequence[0].get("ImagePositionPatient"))
        if orientation is None and "PlaneOrientationSequence" in g:
            orientation = _floats(g.PlaneOrientationSequence[0].get("ImageOrientationPatient"))
    return position, orientation


def source_grid(paths: Paths) -> SourceGrid:
    """The grid of the image series among the files (and under the folders) given: one
    series (SEGs and other files are left out; multi-frame instances give one slice per
    frame), slices sorted by position along the normal like the server's series reader, by
    Instance Number where positions are missing. ValueError for no series or several."""
    image_paths = expand_paths(paths)
    entries: List[Tuple[float, int, Slice]] = []
    series: Dict[str, None] = {}
    rows = columns = 0
    orientation: Optional[Tuple[float, ...]] = None
    for path in image_paths:
        ds = read_header(path)
        if ds is None or is_segmentation(ds):
            continue
        series[str(ds.get("SeriesInstanceUID", ""))] = None
        rows, columns = int(ds.Rows), int(ds.Columns)
        uid = str(ds.SOPInstanceUID)
        instance = int(ds.get("InstanceNumber", 0) or 0)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if frames > 1 or "PerFrameFunctionalGroupsSequence" in ds:
            for f in range(frames):
                position, frame_orientation = _frame_geometry(ds, f)
                orientation = orientation or frame_orientation
                entries.append((0.0, instance * 100000 + f, Slice(
                    uid, f + 1, path, None if position is None else (
                        position[0], position[1], position[2]))))
        else:
            position = _floats(ds.get("ImagePositionPatient"))
            orientation = orientation or _floats(ds.get("ImageOrientationPatient"))
            entries.append((0.0, instance * 100000, Slice(
                uid, None, path, None if position is None else (
                    position[0], position[1], position[2]))))
    if not entries:
        raise ValueError("no DICOM images among %d files" % len(image_paths))
    if len(series) > 1:
        raise ValueError("the files hold %d image series (%s); give one"
                         % (len(series), ", ".join(series)))
    normal = _normal(orientation)
    if normal is not None and all(e[2].position is not None for e in entries):
        n = np.array(normal)
        entries = [(float(np.dot(np.array(e[2].position), n)), e[1], e[2]) for e in entries]
    entries.sort(key=lambda e: (e[0], e[1]))
    return SourceGrid(next(iter(series)), rows, columns, tuple(e[2] for e in entries), normal)


def grid_from_references(seg: DicomDataset) -> SourceGrid:
    """The source grid as a SEG written by miseg states it, for a source that is not here
    (a stored series): one slice per instance of its ReferencedSeriesSequence, in that order
    (miseg lists them in slice order)."""
    refs = seg.get("ReferencedSeriesSequence")
    if not refs:
        raise ValueError("the SEG has no ReferencedSeriesSequence: give the source files")
    item = refs[0]
    slices = tuple(Slice(str(r.ReferencedSOPInstanceUID), None, None, None)
                   for r in item.get("ReferencedInstanceSequence", []))
    if not slices:
        raise ValueError("the SEG references no instances: give the source files")
    return SourceGrid(str(item.get("SeriesInstanceUID", "")), int(seg.Rows), int(seg.Columns),
                      slices, None)


# ---- SEG decoding ----------------------------------------------------------------------


def _normalise(name: str) -> str:
    return re.sub(r"[\s_]+", " ", name.strip().lower())


def _segment_classes(seg: DicomDataset, class_names: Sequence[str]) -> Dict[int, int]:
    """Segment number -> label value: by SegmentLabel among class_names, else the segment
    number itself (miseg writes class c as segment c)."""
    by_name = {_normalise(n): i for i, n in enumerate(class_names)}
    out: Dict[int, int] = {}
    for item in seg.get("SegmentSequence", []):
        number = int(item.SegmentNumber)
        out[number] = by_name.get(_normalise(str(item.get("SegmentLabel", ""))), number)
    return out


def _frame_bits(seg: DicomDataset, frames: int) -> npt.NDArray[np.bool_]:
    """The frames as booleans (frames, rows, columns). BINARY frames are bit-packed
    contiguously across frame boundaries (PS3.5 8.1.1), least significant bit first;
    FRACTIONAL values count as inside from half their maximum."""
    rows, columns = int(seg.Rows), int(seg.Columns)
    count = frames * rows * columns
    if seg.file_meta.TransferSyntaxUID.is_compressed:
        return np.asarray(seg.pixel_array).reshape(frames, rows, columns) > 0
    data = np.frombuffer(seg.PixelData, dtype=np.uint8)
    if str(seg.get("SegmentationType", "BINARY")) == "FRACTIONAL":
        maximum = float(seg.get("MaximumFractionalValue", 255))
        values = data[:count].reshape(frames, rows, columns)
        result: npt.NDArray[np.bool_] = values >= maximum / 2.0
        return result
    bits = np.unpackbits(data, bitorder="little")
    if bits.size < count:
        raise ValueError("the SEG's pixel data holds %d bits for %d frames of %dx%d"
                         % (bits.size, frames, rows, columns))
    return bits[:count].reshape(frames, rows, columns).astype(bool)


def _frame_reference(group: Any) -> Tuple[Optional[str], Optional[int]]:
    for derivation in group.get("DerivationImageSequence", []):
        for source in derivation.get("SourceImageSequence", []):
            uid = source.get("ReferencedSOPInstanceUID")
            if uid:
                frame = source.get("ReferencedFrameNumber")
                return str(uid), int(frame) if frame is not None else None
    return None, None


def _nearest_slice(grid: SourceGrid, position: Tuple[float, ...]) -> Optional[int]:
    if grid.normal is None or any(s.position is None for s in grid.slices):
        return None
    n = np.array(grid.normal)
    target = float(np.dot(np.array(position), n))
    distances = [abs(float(np.dot(np.array(s.position), n)) - target) for s in grid.slices]
    best = int(np.argmin(distances))
    return best if distances[best] < 1e-3 + 1e-3 * abs(target) else None


def decode_segmentation(seg: Union[bytes, PathLike], grid: Optional[SourceGrid],
                        class_names: Sequence[str] = ()) -> npt.NDArray[np.uint8]:
    """The SEG's labels on grid (slices, rows, columns), one label value per voxel (0 the
    background). Frames are placed by their Derivation Image reference to a source instance
    (and frame), or failing that by plane position; overlapping segments resolve to the
    higher segment number, as the server reads them. Without a grid, the SEG's referenced
    instances are the slices. seg: the SEG's bytes or its file."""
    if not isinstance(seg, bytes):
        with open(os.fspath(seg), "rb") as f:
            seg = f.read()
    return _decode(pydicom.dcmread(io.BytesIO(seg)), grid, class_names)


def _decode(seg: DicomDataset, grid: Optional[SourceGrid],
            class_names: Sequence[str]) -> npt.NDArray[np.uint8]:
    if grid is None:
        grid = grid_from_references(seg)
    if (int(seg.Rows), int(seg.Columns)) != (grid.rows, grid.columns):
        raise ValueError("the SEG's frames are %dx%d, the source's slices %dx%d"
                         % (seg.Rows, seg.Columns, grid.rows, grid.columns))
    frames = int(seg.get("NumberOfFrames", 1) or 1)
    bits = _frame_bits(seg, frames)
    classes = _segment_classes(seg, class_names)
    per_frame = seg.get("PerFrameFunctionalGroupsSequence")
    if per_frame is None or len(per_frame) != frames:
        raise ValueError("the SEG has no per-frame functional group for each of its %d frames"
                         % frames)
    placed: List[Tuple[int, int, int]] = []  # (segment number, frame, slice)
    for f, group in enumerate(per_frame):
        segment = int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        uid, frame_number = _frame_reference(group)
        index = grid.index_of(uid, frame_number) if uid is not None else None
        if index is None and "PlanePositionSequence" in group:
            position = _floats(group.PlanePositionSequence[0].get("ImagePositionPatient"))
            index = _nearest_slice(grid, position) if position is not None else None
        if index is None:
            raise ValueError("SEG frame %d (segment %d) matches no slice of series %s"
                             % (f + 1, segment, grid.series_instance_uid))
        placed.append((segment, f, index))
    labels = np.zeros(grid.shape, dtype=np.uint8)
    for segment, f, index in sorted(placed):
        labels[index][bits[f]] = classes.get(segment, segment)
    return labels


def read_volume(grid: SourceGrid) -> npt.NDArray[np.float32]:
    """The series' voxels on its grid (slices, rows, columns), rescaled to stored units.
    Needs the files (pydicom's pixel handlers: compressed transfer syntaxes need theirs)."""
    volume = np.zeros(grid.shape, dtype=np.float32)
    cache: Dict[str, Any] = {}
    for i, s in enumerate(grid.slices):
        if s.path is None:
            raise ValueError("the source files are not here (a stored series)")
        if s.path not in cache:
            ds = pydicom.dcmread(s.path)
            pixels = np.asarray(ds.pixel_array, dtype=np.float32)
            slope = float(ds.get("RescaleSlope", 1) or 1)
            intercept = float(ds.get("RescaleIntercept", 0) or 0)
            cache[s.path] = pixels * slope + intercept
        pixels = cache[s.path]
        volume[i] = pixels[s.frame_number - 1] if s.frame_number is not None else pixels
    return volume
