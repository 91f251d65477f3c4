"""Re-encodes native DICOM files as JPEG 2000 with an outside encoder, for miseg's tests.

Each frame's samples go through opj_compress (OpenJPEG's command-line encoder) and the
codestreams are wrapped by pydicom's encapsulate, so nothing of miseg touches the encoding:

  jpeg2000_reencode.py [--fragments N] [--no-offset-table] [--lossy RATIO] IN OUT [IN OUT ...]

Lossless (reversible 5/3 wavelet) gives 1.2.840.10008.1.2.4.90; --lossy RATIO (irreversible
9/7 wavelet at that compression ratio) gives 1.2.840.10008.1.2.4.91, with the Lossy Image
Compression attributes left out so that the reader must derive them from the syntax.
"""
import argparse
import os
import subprocess
import tempfile

import pydicom
from pydicom.encaps import encapsulate


def encode_frames(ds, lossy):
    rows, cols, bits = ds.Rows, ds.Columns, ds.BitsAllocated
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    size = rows * cols * bits // 8
    sign = "s" if ds.PixelRepresentation == 1 else "u"
    codestreams = []
    with tempfile.TemporaryDirectory() as tmp:
        raw, j2k = os.path.join(tmp, "f.rawl"), os.path.join(tmp, "f.j2k")
        for f in range(frames):
            with open(raw, "wb") as out:
                out.write(ds.PixelData[f * size:(f + 1) * size])
            command = ["/usr/bin/opj_compress", "-i", raw, "-o", j2k, "-n", "2",
                       "-F", "%d,%d,1,%d,%s" % (cols, rows, bits, sign)]
            if lossy:
                command += ["-I", "-r", str(lossy)]
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            with open(j2k, "rb") as encoded:
                codestreams.append(encoded.read())
    return codestreams


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--fragments", type=int, default=1)
    parser.add_argument("--no-offset-table", action="store_true")
    parser.add_argument("--lossy", type=float, default=0)
    parser.add_argument("paths", nargs="+")
    args = parser.parse_args()
    for src, dst in zip(args.paths[0::2], args.paths[1::2]):
        ds = pydicom.dcmread(src)
        codestreams = encode_frames(ds, args.lossy)
        ds.PixelData = encapsulate(codestreams, fragments_per_frame=args.fragments,
                                   has_bot=not args.no_offset_table)
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.file_meta.TransferSyntaxUID = (pydicom.uid.JPEG2000 if args.lossy
                                          else pydicom.uid.JPEG2000Lossless)
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(dst, write_like_original=False)


if __name__ == "__main__":
    main()
