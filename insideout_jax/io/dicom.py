"""DICOM CT series (pydicom): one series of a folder as a volume in the object-folder conventions."""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

from insideout_jax.io.errors import ObjectFolderError
from insideout_jax.io.jsonfile import PathLike, _floats
from insideout_jax.io.volumes import CTVolume, make_volume


@dataclasses.dataclass(frozen=True, eq=False)
class DicomSeries:
    """A CT series as a volume in its image-aligned frame.

    Attributes:
      volume: HU, [nz, ny, nx]; x runs along the DICOM row direction, y along the column
        direction, z along their cross product (slices sorted by position along it).
      direction: [3, 3] float64 columns = the x, y, z axes in DICOM patient coordinates (LPS, mm);
        a patient point is ``direction @ p``. Identity for a standard axial series.
      series_uid: the SeriesInstanceUID.
      files: the slice files in z order.
      n_padding: voxels holding the PixelPaddingValue (outside the reconstruction circle), set
        to air (−1000 HU).
    """

    volume: CTVolume
    direction: np.ndarray
    series_uid: str
    files: tuple
    n_padding: int = 0


def _tag(ds, name: str, path):
    if name not in ds or ds.get(name) is None:
        raise ObjectFolderError(path, name, "missing DICOM tag")
    return ds.get(name)


def read_dicom_series(folder: PathLike, *, series_uid: str | None = None,
                      spacing_rtol: float = 1e-3) -> DicomSeries:
    """Read a folder of single-frame CT slices (pydicom) into a HU volume.

    Every regular file except ``DICOMDIR`` and hidden files must be DICOM. Slices are sorted by
    ImagePositionPatient along the slice normal; HU = stored value · RescaleSlope +
    RescaleIntercept (per slice); spacing is (position step, PixelSpacing rows, columns). Pixels
    equal to PixelPaddingValue (outside the reconstruction circle) become air, −1000 HU.

    Args:
      series_uid: which series to read when the folder holds several.
      spacing_rtol: allowed relative deviation of the slice steps from their mean.

    Raises:
      ObjectFolderError: naming the file and tag, for unreadable files, missing tags, several
        series without ``series_uid``, differing orientation / pixel spacing / size, fewer than
        two slices, duplicate positions, tilted (sheared) stacks, or uneven slice spacing.
    """
    import pydicom

    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise ObjectFolderError(folder, "<file>", "DICOM folder not found")
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.name != "DICOMDIR" and not p.name.startswith("."))
    slices = []
    for p in files:
        try:
            ds = pydicom.dcmread(p)
        except Exception as e:
            raise ObjectFolderError(p, "<file>", f"not a readable DICOM file ({e})") from None
        slices.append((p, ds))
    uids = sorted({str(ds.get("SeriesInstanceUID", "")) for _, ds in slices})
    if series_uid is not None:
        slices = [(p, ds) for p, ds in slices if str(ds.get("SeriesInstanceUID", "")) == series_uid]
    elif len(uids) > 1:
        raise ObjectFolderError(folder, "SeriesInstanceUID", f"{len(uids)} series in the folder; "
                                f"pass series_uid= one of {uids}")
    if len(slices) < 2:
        raise ObjectFolderError(folder, "<file>", f"need at least 2 slices of one series, found {len(slices)}")
    p0, ds0 = slices[0]
    iop = _floats(_tag(ds0, "ImageOrientationPatient", p0), 6, p0, "ImageOrientationPatient")
    r, c = iop[:3], iop[3:]
    if abs(np.linalg.norm(r) - 1) > 1e-4 or abs(np.linalg.norm(c) - 1) > 1e-4 or abs(r @ c) > 1e-4:
        raise ObjectFolderError(p0, "ImageOrientationPatient", f"row/column cosines not orthonormal: {iop}")
    n = np.cross(r, c)
    ps0 = _floats(_tag(ds0, "PixelSpacing", p0), 2, p0, "PixelSpacing", positive=True)
    shape0 = (int(_tag(ds0, "Rows", p0)), int(_tag(ds0, "Columns", p0)))
    items = []
    for p, ds in slices:
        if not np.allclose(_floats(_tag(ds, "ImageOrientationPatient", p), 6, p,
                                   "ImageOrientationPatient"), iop, atol=1e-4):
            raise ObjectFolderError(p, "ImageOrientationPatient", f"differs from {p0.name}")
        if not np.allclose(_floats(_tag(ds, "PixelSpacing", p), 2, p, "PixelSpacing", positive=True),
                           ps0, rtol=1e-6):
            raise ObjectFolderError(p, "PixelSpacing", f"differs from {p0.name} ({ps0.tolist()})")
        if (int(_tag(ds, "Rows", p)), int(_tag(ds, "Columns", p))) != shape0:
            raise ObjectFolderError(p, "Rows", f"image size differs from {p0.name} {shape0}")
        pos = _floats(_tag(ds, "ImagePositionPatient", p), 3, p, "ImagePositionPatient")
        slope = float(_floats(_tag(ds, "RescaleSlope", p), 1, p, "RescaleSlope")[0])
        icpt = float(_floats(_tag(ds, "RescaleIntercept", p), 1, p, "RescaleIntercept")[0])
        items.append((float(pos @ n), pos, p, ds, slope, icpt))
    items.sort(key=lambda t: t[0])
    z = np.array([t[0] for t in items])
    steps = np.diff(z)
    for k in np.flatnonzero(steps <= 1e-6 * max(1.0, abs(z).max())):
        raise ObjectFolderError(items[k + 1][2], "ImagePositionPatient",
                                f"same slice position as {items[k][2].name}")
    ref = float(np.median(steps))
    if np.abs(steps - ref).max() > spacing_rtol * ref:
        k = int(np.argmax(np.abs(steps - ref)))
        raise ObjectFolderError(items[k + 1][2], "ImagePositionPatient", f"uneven slice spacing: "
                                f"step {steps[k]:.6g} mm from {items[k][2].name} vs median "
                                f"{ref:.6g} mm (missing slice?)")
    dz = float(steps.mean())
    pos0 = items[0][1]
    for _, pos, p, *_ in items:
        inplane = (pos - pos0) - ((pos - pos0) @ n) * n
        if np.linalg.norm(inplane) > spacing_rtol * max(dz, 1.0):
            raise ObjectFolderError(p, "ImagePositionPatient", "slices are shifted in-plane (gantry "
                                    "tilt / sheared stack is not supported)")
    data = np.empty((len(items),) + shape0, np.float32)
    n_padding = 0
    for k, (_, _, p, ds, slope, icpt) in enumerate(items):
        try:
            px = ds.pixel_array
        except Exception as e:
            raise ObjectFolderError(p, "PixelData", f"cannot decode pixels ({e})") from None
        if px.shape != shape0:
            raise ObjectFolderError(p, "PixelData", f"shape {px.shape} ≠ Rows×Columns {shape0}")
        data[k] = px.astype(np.float64) * slope + icpt
        pad = ds.get("PixelPaddingValue")
        if pad is not None:  # stored units, like the pixels: not the object, but air around it
            is_pad = px == int(pad)
            n_padding += int(is_pad.sum())
            data[k][is_pad] = -1000.0
    direction = np.stack([r, c, n], axis=1)
    origin = direction.T @ pos0  # first voxel centre in the image-aligned frame
    vol = make_volume(data, (dz, ps0[0], ps0[1]), origin, quantity="HU")
    uid = str(items[0][3].get("SeriesInstanceUID", ""))
    return DicomSeries(vol, direction, uid, tuple(t[2] for t in items), n_padding)


def ct_slice_dataset(pixels: np.ndarray, *, pixel_spacing, position, orientation=(1, 0, 0, 0, 1, 0),
                     slope: float = 1.0, intercept: float = -1024.0, series_uid: str,
                     study_uid: str = "1.2.3", instance: int = 1):
    """One single-frame CT slice (pydicom ``Dataset``, explicit VR little endian) of int16 stored
    ``pixels`` [rows, columns]: HU = stored · ``slope`` + ``intercept``."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CTImageStorage, sop, "CT"
    ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.InstanceNumber = series_uid, study_uid, instance
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelSpacing = [float(v) for v in pixel_spacing]
    ds.ImageOrientationPatient = [round(float(v), 7) for v in orientation]
    ds.ImagePositionPatient = [round(float(v), 5) for v in position]
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.PixelData = np.asarray(pixels).astype("<i2").tobytes()
    return ds


def write_dicom_series(folder: PathLike, volume: CTVolume, *, padding=None,
                       padding_hu: float = -3024.0, intercept: float = -1024.0) -> list:
    """Write a HU volume as single-frame CT slices (axial, identity orientation), as scanners do.

    Pixels are int16 ``round(HU − intercept)`` (RescaleSlope 1, RescaleIntercept ``intercept``);
    where ``padding`` ([nz, ny, nx] bool, e.g. outside the reconstruction circle) is set they hold
    ``padding_hu`` and the series declares it as PixelPaddingValue. Reading the folder back with
    :func:`read_dicom_series` gives the volume (to 1 HU) with the padding as air.

    Returns:
      The slice files, in z order.
    """
    import pydicom
    from pydicom.uid import generate_uid

    if volume.quantity != "HU":
        raise ValueError(f"a DICOM CT series holds HU, got a volume of {volume.quantity}")
    hu = np.asarray(volume.data, np.float64)
    pix = np.round(hu - intercept)
    pad_px = int(round(padding_hu - intercept))
    if padding is not None:
        pix = np.where(padding, pad_px, pix)
    if pix.min() < -32768 or pix.max() > 32767:
        raise ValueError("HU values outside what int16 pixels hold with this intercept")
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    series, study = generate_uid(), generate_uid()
    dz, dy, dx = (float(v) for v in volume.spacing_zyx)
    x0, y0, z0 = (float(v) for v in volume.origin_xyz)
    files = []
    for k in range(hu.shape[0]):
        ds = ct_slice_dataset(pix[k], pixel_spacing=(dy, dx), position=(x0, y0, z0 + k * dz),
                              intercept=intercept, series_uid=series, study_uid=study,
                              instance=k + 1)
        ds.SliceThickness, ds.RescaleType = dz, "HU"
        if padding is not None:
            ds.PixelPaddingValue = pad_px
        path = folder / f"slice_{k:04d}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        files.append(path)
    return files
