"""The result of Client.segment: the DICOM SEG the server wrote, its summary (volumes,
model, timings), and the labels decoded from the SEG onto the source's grid as a numpy
array, plus an overlay figure for a notebook."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Dict, Optional, Sequence, Tuple

import numpy as np
import numpy.typing as npt

from miseg._dicom import SourceGrid, decode_segmentation, read_volume
from miseg._proto import pb

if TYPE_CHECKING:
    import matplotlib.figure

# Overlay colours per foreground class (1, 2, ...): matplotlib's tab10 without its blue.
_COLOURS = ("#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#17becf", "#e377c2", "#bcbd22",
            "#8c564b", "#7f7f7f")


class Segmentation:
    """A segmentation by the server. `labels` is decoded lazily from `seg_bytes`: an array
    (slices, rows, columns) of label values (0 background, i the i-th class of `classes`) on
    the source series' grid, slices ordered by position along the normal. For a stored
    series (no local files), slices follow the SEG's referenced instances, which miseg lists
    in that same order."""

    def __init__(self, seg_bytes: bytes, summary: pb.SegmentSummary, classes: Sequence[str],
                 grid: Optional[SourceGrid]) -> None:
        self.seg_bytes = seg_bytes
        self.classes: Tuple[str, ...] = tuple(classes)
        self._summary = summary
        self._grid = grid
        self._labels: Optional[npt.NDArray[np.uint8]] = None

    @property
    def labels(self) -> npt.NDArray[np.uint8]:
        if self._labels is None:
            self._labels = decode_segmentation(self.seg_bytes, self._grid, self.classes)
        return self._labels

    @property
    def volumes_ml(self) -> Dict[str, float]:
        """Volume of each foreground class in mL, as the server measured it."""
        return {c.class_name: c.volume_ml for c in self._summary.classes}

    @property
    def voxels(self) -> Dict[str, int]:
        return {c.class_name: c.voxels for c in self._summary.classes}

    @property
    def model_id(self) -> int:
        return self._summary.model_id

    @property
    def model_version(self) -> int:
        return self._summary.model_version

    @property
    def dataset(self) -> str:
        return self._summary.dataset

    @property
    def source_series_instance_uid(self) -> str:
        return self._summary.source_series_instance_uid

    @property
    def sop_instance_uid(self) -> str:
        """The SEG's SOP Instance UID."""
        return self._summary.segmentation_sop_instance_uid

    @property
    def series_instance_uid(self) -> str:
        """The SEG's own Series Instance UID."""
        return self._summary.segmentation_series_instance_uid

    @property
    def timings(self) -> Dict[str, float]:
        """Seconds the server spent: queue, decode, inference, encode."""
        s = self._summary
        return {"queue": s.queue_seconds, "decode": s.decode_seconds,
                "inference": s.inference_seconds, "encode": s.encode_seconds}

    def save(self, path: "str | os.PathLike[str]") -> str:
        """Writes the DICOM SEG (a Part-10 file) to path; returns the path."""
        target = os.fspath(path)
        temporary = "%s.%d.tmp" % (target, os.getpid())
        with open(temporary, "wb") as f:
            f.write(self.seg_bytes)
        os.replace(temporary, target)
        return target

    def image(self) -> npt.NDArray[np.float32]:
        """The source series' voxels on the same grid as labels (needs the local files)."""
        if self._grid is None:
            raise ValueError("a stored series was segmented: its files are not here")
        return read_volume(self._grid)

    def overlay(self, slices: Optional[Sequence[int]] = None,
                alpha: float = 0.45) -> "matplotlib.figure.Figure":
        """A figure of source slices (default: up to 4, those with the most foreground)
        with the labels overlaid, one colour per class. Needs matplotlib and the local
        source files."""
        from matplotlib.colors import ListedColormap
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch

        labels = self.labels
        image = self.image()
        if slices is None:
            foreground = (labels > 0).reshape(labels.shape[0], -1).sum(axis=1)
            slices = sorted(int(i) for i in np.argsort(-foreground, kind="stable")[:4])
        figure = Figure(figsize=(3.2 * len(slices), 3.6), layout="constrained")
        axes = figure.subplots(1, len(slices), squeeze=False)[0]
        colours = ListedColormap(["none", *_COLOURS[:max(1, len(self.classes) - 1)]])
        colours.set_bad(alpha=0.0)  # background (NaN) stays see-through
        for ax, k in zip(axes, slices):
            ax.imshow(image[k], cmap="gray")
            foreground = np.where(labels[k] > 0, labels[k].astype(np.float32), np.nan)
            ax.imshow(foreground, cmap=colours, alpha=alpha, vmin=0,
                      vmax=max(1, len(self.classes) - 1), interpolation="nearest")
            ax.set_title("slice %d" % k)
            ax.axis("off")
        handles = [Patch(color=_COLOURS[(i - 1) % len(_COLOURS)], label=name.replace("_", " "))
                   for i, name in enumerate(self.classes) if i > 0]
        axes[-1].legend(handles=handles, loc="upper right", fontsize="small", framealpha=0.8)
        return figure

    def __repr__(self) -> str:
        volumes = ", ".join("%s=%.1f mL" % (k, v) for k, v in self.volumes_ml.items())
        return "Segmentation(model_id=%d, %d bytes, %s)" % (self.model_id,
                                                             len(self.seg_bytes), volumes)
