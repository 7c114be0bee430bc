"""MRI volumes in the formats of the field: DICOM files and series (pydicom), NIfTI (nibabel).

A :class:`Volume` is a stack of 2-D slices in display orientation, ready for the model after
:func:`window_to_uint8`, plus what is needed to put a mask computed on those slices back into the
input's voxel grid (:func:`write_mask_nifti`, the input's affine kept bit for bit for NIfTI input).

- NIfTI (``.nii``, ``.nii.gz``): reoriented to RAS+ (``nibabel.as_closest_canonical``'s axes), cut
  along ``axis`` ("axial", "coronal" or "sagittal"), each slice shown radiologically (patient's right
  on the image's left, anterior or superior up). A 4-D file needs ``volume_index``.
- DICOM: one file (one slice, or the frames of a multi-frame image), or a folder holding one series,
  sorted by position along the slice normal (never by file name). Modality LUT (rescale slope and
  intercept) applied; slices as stored (rows, columns), the series axis being the slice axis.

Spacing is (slice, row, column) in mm; None where the input does not state it (sizes are then in
voxels).
"""
import os
from dataclasses import dataclass, field

import numpy as np

AXES = {"sagittal": 0, "coronal": 1, "axial": 2}
NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
DEFAULT_PERCENTILES = (0.5, 99.5)


class VolumeError(ValueError):
    """A volume that cannot be used, with the file named and the fix."""


@dataclass
class Volume:
    slices: np.ndarray  # (N, H, W) float32, modality values (e.g. MR signal, CT HU)
    spacing: tuple = None  # (slice, row, column) in mm, or None
    source: str = ""
    kind: str = ""  # "nifti", "dicom"
    axis: str = ""
    window: dict = None  # DICOM window centre/width of the first slice, if stated
    voi_datasets: list = field(default_factory=list, repr=False)  # DICOM datasets, for VOI LUTs
    _to_input: object = field(default=None, repr=False)  # mask slices -> input voxel array
    _from_input: object = field(default=None, repr=False)  # input voxel array -> slices
    _nifti: object = field(default=None, repr=False)  # the input NIfTI image (header, affine)
    affine: np.ndarray = None  # voxel -> RAS+ mm of the input's voxel grid

    @property
    def name(self):
        base = os.path.basename(os.path.normpath(self.source))
        for suffix in NIFTI_SUFFIXES[::-1] + DICOM_SUFFIXES:
            if base.lower().endswith(suffix):
                return base[: -len(suffix)]
        return base

    def to_input_grid(self, mask_slices):
        """A (N, H, W) stack computed on :attr:`slices` as an array in the input's voxel layout."""
        return self._to_input(np.asarray(mask_slices))

    def from_input_grid(self, array):
        """An array in the input's voxel layout (e.g. a ground-truth mask) as (N, H, W) slices."""
        return self._from_input(np.asarray(array))


def is_volume_path(path):
    """True for a NIfTI file, a DICOM file or a folder holding DICOM files (and no images)."""
    lower = path.lower()
    if os.path.isfile(path):
        return lower.endswith(NIFTI_SUFFIXES + DICOM_SUFFIXES) or _has_dicom_magic(path)
    if os.path.isdir(path):
        files = [os.path.join(path, f) for f in sorted(os.listdir(path))]
        files = [f for f in files if os.path.isfile(f)]
        return bool(files) and any(f.lower().endswith(DICOM_SUFFIXES) or _has_dicom_magic(f)
                                   for f in files[:20])
    return False


def _has_dicom_magic(path):
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def read_volume(path, axis="axial", volume_index=None):
    """The :class:`Volume` of a NIfTI file, a DICOM file or a DICOM series folder."""
    if not os.path.exists(path):
        raise VolumeError(f"{path}: no such file or folder.")
    if os.path.isdir(path):
        return read_dicom_series(path)
    if path.lower().endswith(NIFTI_SUFFIXES):
        return read_nifti(path, axis, volume_index)
    return read_dicom_file(path)


# ---------------------------------------------------------------- NIfTI
def read_nifti(path, axis="axial", volume_index=None):
    import nibabel as nib

    if axis not in AXES:
        raise VolumeError(f"axis {axis!r}: use one of {', '.join(AXES)}.")
    try:
        image = nib.load(path)
        data = np.asarray(image.dataobj, dtype=np.float32)
    except Exception as e:  # nibabel raises many types for truncated or foreign files
        raise VolumeError(f"{path} cannot be read as NIfTI ({type(e).__name__}: {e}). Check that "
                          "the file is complete (a truncated .nii.gz fails here).") from e
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim == 4:
        if volume_index is None:
            raise VolumeError(f"{path} is a 4-D NIfTI ({data.shape[3]} volumes): choose one with "
                              f"--volume-index N (0 to {data.shape[3] - 1}).")
        if not 0 <= volume_index < data.shape[3]:
            raise VolumeError(f"{path}: --volume-index {volume_index} is outside 0 to "
                              f"{data.shape[3] - 1}.")
        data = data[..., volume_index]
    elif volume_index not in (None, 0):
        raise VolumeError(f"{path} is a 3-D volume: --volume-index {volume_index} does not apply.")
    if data.ndim != 3:
        raise VolumeError(f"{path} has {data.ndim} dimensions {data.shape}; a 3-D volume is needed.")
    if not np.isfinite(data).all():
        raise VolumeError(f"{path} holds NaN or infinite voxels.")
    ornt = nib.io_orientation(image.affine)
    canonical = nib.orientations.apply_orientation(data, ornt)
    a = AXES[axis]
    zooms = np.array(image.header.get_zooms()[:3], float)[ornt[:, 0].astype(int)]
    units = image.header.get_xyzt_units()[0]
    p, q = [k for k in range(3) if k != a]
    # image[r, c] = slab[P-1-c, Q-1-r]: patient's right on the left, anterior/superior up.
    slices = np.stack([_display(np.take(canonical, k, axis=a)) for k in range(canonical.shape[a])])
    spacing = (float(zooms[a]), float(zooms[q]), float(zooms[p])) if units == "mm" else None

    def to_input(mask_slices):
        stack = np.stack([_undisplay(m) for m in mask_slices], axis=a)
        back = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), ornt)
        return nib.orientations.apply_orientation(stack, back)

    def from_input(array):
        reoriented = nib.orientations.apply_orientation(array, ornt)
        return np.stack([_display(np.take(reoriented, k, axis=a))
                         for k in range(reoriented.shape[a])])

    return Volume(slices=slices, spacing=spacing, source=path, kind="nifti", axis=axis,
                  _to_input=to_input, _from_input=from_input, _nifti=image, affine=image.affine)


def _display(slab):
    return slab[::-1, ::-1].T


def _undisplay(image):
    return image.T[::-1, ::-1]


# ---------------------------------------------------------------- DICOM
def _dcmread(path):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path)
    except InvalidDicomError as e:
        raise VolumeError(f"{path} is not a DICOM file ({e}).") from e
    except Exception as e:  # truncated files fail in many ways
        raise VolumeError(f"{path} cannot be read as DICOM ({type(e).__name__}: {e}); the file "
                          "may be truncated.") from e


def _check_image(ds, path):
    if "PixelData" not in ds:
        what = getattr(ds, "SOPClassUID", None)
        what = getattr(what, "name", None) or ds.get("Modality", "unknown kind")
        raise VolumeError(f"{path} is a DICOM object without an image ({what}), e.g. a report or "
                          "a structured document: pass the image series instead.")


def _pixels(ds, path):
    from pydicom.pixels import apply_modality_lut

    try:
        arr = ds.pixel_array
    except Exception as e:
        raise VolumeError(f"{path}: its pixel data cannot be decoded ({type(e).__name__}: {e}); "
                          "the file may be truncated or use a compression without a decoder "
                          "installed.") from e
    if arr.ndim == 3 and ds.get("SamplesPerPixel", 1) > 1:
        raise VolumeError(f"{path} is a color DICOM image; MRI slices are grayscale.")
    return np.asarray(apply_modality_lut(arr, ds), np.float32)


def _window(ds):
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None:
        return None
    first = lambda v: float(v[0]) if hasattr(v, "__len__") and not isinstance(v, str) else float(v)
    return {"center": first(center), "width": first(width)}


def read_dicom_file(path):
    """One DICOM image: a slice, or the frames of a multi-frame image."""
    ds = _dcmread(path)
    _check_image(ds, path)
    pixels = _pixels(ds, path)
    slices = pixels[None] if pixels.ndim == 2 else pixels
    spacing = None
    if "PixelSpacing" in ds:
        step = float(ds.get("SpacingBetweenSlices", ds.get("SliceThickness", 0)) or 0) or None
        spacing = (step, float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1])) if step else None
    return Volume(slices=slices, spacing=spacing, source=path, kind="dicom", axis="acquisition",
                  window=_window(ds), voi_datasets=[ds] * len(slices),
                  _to_input=lambda m: np.asarray(m).transpose(2, 1, 0),
                  _from_input=lambda m: np.asarray(m).transpose(2, 1, 0),
                  affine=_dicom_affine(ds, [ds], spacing))


def read_dicom_series(folder):
    """The one image series in ``folder``, sorted along the slice normal; refuses mixed series,
    mixed orientations, duplicated and missing slices, naming the files."""
    files = sorted(os.path.join(folder, f) for f in os.listdir(folder)
                   if os.path.isfile(os.path.join(folder, f)))
    if not files:
        raise VolumeError(f"{folder} holds no files; pass a folder holding one DICOM series.")
    datasets = []
    for path in files:
        ds = _dcmread(path)
        _check_image(ds, path)
        datasets.append((path, ds))
    series = {ds.get("SeriesInstanceUID") for _, ds in datasets}
    if len(series) > 1:
        raise VolumeError(f"{folder} holds {len(series)} series; put each series in a folder of "
                          "its own.")
    orientations = {tuple(np.round(np.array(ds.get("ImageOrientationPatient", [0] * 6), float), 4))
                    for _, ds in datasets}
    if len(orientations) > 1:
        raise VolumeError(f"{folder}: the slices have mixed orientations "
                          f"({len(orientations)} ImageOrientationPatient values); a volume needs "
                          "one.")
    iop = np.array(datasets[0][1].get("ImageOrientationPatient", [1, 0, 0, 0, 1, 0]), float)
    normal = np.cross(iop[:3], iop[3:])
    if len(datasets) > 1 and any("ImagePositionPatient" not in ds for _, ds in datasets):
        missing = next(p for p, ds in datasets if "ImagePositionPatient" not in ds)
        raise VolumeError(f"{missing} has no ImagePositionPatient: the slices cannot be ordered.")
    position = {p: float(np.dot(np.array(ds.get("ImagePositionPatient", [0, 0, 0]), float),
                                normal)) for p, ds in datasets}
    datasets.sort(key=lambda item: position[item[0]])
    steps = np.diff([position[p] for p, _ in datasets])
    if len(steps) and np.any(np.abs(steps) < 1e-3):
        k = int(np.argmin(np.abs(steps)))
        raise VolumeError(f"{folder}: {datasets[k][0]} and {datasets[k + 1][0]} are at the same "
                          "position (a duplicated slice); remove one.")
    if len(steps) > 1 and np.max(steps) > 1.5 * np.median(steps):
        k = int(np.argmax(steps))
        raise VolumeError(f"{folder}: a gap of {steps[k]:.2f} mm between {datasets[k][0]} and "
                          f"{datasets[k + 1][0]}, where slices are {np.median(steps):.2f} mm apart: "
                          "slices are missing.")
    shapes = {(int(ds.Rows), int(ds.Columns)) for _, ds in datasets}
    if len(shapes) > 1:
        raise VolumeError(f"{folder}: the slices have different sizes {sorted(shapes)}.")
    slices = np.stack([_pixels(ds, p) for p, ds in datasets])
    first = datasets[0][1]
    spacing = None
    if "PixelSpacing" in first:
        step = float(np.median(steps)) if len(steps) else \
            float(first.get("SliceThickness", 0) or 0) or None
        spacing = (step, float(first.PixelSpacing[0]), float(first.PixelSpacing[1])) \
            if step else None
    sorted_ds = [ds for _, ds in datasets]
    return Volume(slices=slices, spacing=spacing, source=folder, kind="dicom", axis="acquisition",
                  window=_window(first), voi_datasets=sorted_ds,
                  _to_input=lambda m: np.asarray(m).transpose(2, 1, 0),
                  _from_input=lambda m: np.asarray(m).transpose(2, 1, 0),
                  affine=_dicom_affine(first, sorted_ds, spacing))


def _dicom_affine(first, datasets, spacing):
    """Voxel (column, row, slice) -> RAS+ mm of a DICOM stack (identity scaled by the spacing, or
    the unit grid, where the files lack position or orientation)."""
    if spacing is None:
        return np.eye(4)
    step, d_row, d_col = spacing
    iop = first.get("ImageOrientationPatient")
    ipp = first.get("ImagePositionPatient")
    if iop is None or ipp is None:
        return np.diag([d_col, d_row, step, 1.0])
    iop = np.array(iop, float)
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * d_col
    lps[:3, 1] = col_dir * d_row
    lps[:3, 2] = normal * step
    lps[:3, 3] = np.array(ipp, float)
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # DICOM's LPS to NIfTI's RAS


# ---------------------------------------------------------------- to the model, and back
def window_to_uint8(volume, method="auto", percentiles=DEFAULT_PERCENTILES):
    """(uint8 slices (N, H, W), how): the slices windowed to 8 bit. ``method``: "dicom" (the
    VOI LUT or window centre/width the DICOM files state), "percentile" (the volume's
    ``percentiles`` mapped to 0 and 255), or "auto" (DICOM's when stated, else percentiles)."""
    if method not in ("auto", "dicom", "percentile"):
        raise ValueError(f"window method {method!r}: use auto, dicom or percentile.")
    stated = volume.kind == "dicom" and any(
        "VOILUTSequence" in ds or "WindowCenter" in ds for ds in volume.voi_datasets)
    if method == "dicom" and not stated:
        raise VolumeError(f"{volume.source} states no DICOM window (WindowCenter/Width or VOI "
                          "LUT): use --window percentile.")
    if method == "dicom" or (method == "auto" and stated):
        out = np.stack([_dicom_voi(s, ds) for s, ds in zip(volume.slices, volume.voi_datasets)])
        how = {"method": "dicom", **(volume.window or {"voi_lut": True})}
        return out, how
    lo, hi = (float(v) for v in np.percentile(volume.slices, percentiles))
    return _scale(volume.slices, lo, hi), {"method": "percentile", "percentiles": list(percentiles),
                                           "values": [lo, hi]}


def _dicom_voi(values, ds):
    """One slice (modality values) through its DICOM VOI transform, to 0-255: the VOI LUT when
    the file has one (scaled by the LUT's bit depth), else the window centre/width with its
    VOILUTFunction (PS3.3 C.11.2.1.2: LINEAR, LINEAR_EXACT or SIGMOID)."""
    if "VOILUTSequence" in ds:
        from pydicom.pixels import apply_voi_lut

        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return _scale(np.asarray(apply_voi_lut(values, ds), np.float32), 0, 2 ** bits - 1)
    w = _window(ds)
    c, width = w["center"], max(w["width"], 1.0)
    function = str(ds.get("VOILUTFunction", "LINEAR")).upper()
    if function == "SIGMOID":
        y = 1 / (1 + np.exp(-4 * (values - c) / width))
    elif function == "LINEAR_EXACT":
        y = (values - c) / width + 0.5
    else:
        y = (values - (c - 0.5)) / max(width - 1, 1) + 0.5
    return _scale(np.clip(y, 0, 1), 0, 1)


def _scale(values, lo, hi):
    if hi <= lo:
        return np.zeros(values.shape, np.uint8)
    return np.clip((values - lo) / (hi - lo) * 255 + 0.5, 0, 255).astype(np.uint8)


def write_mask_nifti(volume, mask_slices, path):
    """The (N, H, W) mask stack as a uint8 NIfTI at ``path`` in the input's voxel grid: for NIfTI
    input with its header (so its affine reads back bit for bit), for DICOM with the affine built
    from the files' position and orientation."""
    import nibabel as nib

    data = volume.to_input_grid(np.asarray(mask_slices, np.uint8))
    if volume._nifti is not None:
        header = volume._nifti.header.copy()
        header.set_data_dtype(np.uint8)
        if header.get_data_shape() != data.shape:
            header.set_data_shape(data.shape)
        header["scl_slope"], header["scl_inter"] = 1, 0
        image = nib.Nifti1Image(data, None, header=header)
    else:
        image = nib.Nifti1Image(data, volume.affine)
        image.header.set_xyzt_units("mm" if volume.spacing else "unknown")
    nib.save(image, path)
    return path


def read_truth_mask(path, volume):
    """A ground-truth mask volume (NIfTI, non-zero = tumor) on ``volume``'s slices. It must share
    the volume's voxel grid: the NIfTI's shape, and its affine within 1e-3 mm, as a mask written by
    :func:`write_mask_nifti` for that volume has."""
    import nibabel as nib

    if not path.lower().endswith(NIFTI_SUFFIXES):
        raise VolumeError(f"--truth {path}: give the ground-truth mask as NIfTI (.nii, .nii.gz).")
    try:
        image = nib.load(path)
        data = np.asarray(image.dataobj)
    except Exception as e:
        raise VolumeError(f"{path} cannot be read as NIfTI ({type(e).__name__}: {e}).") from e
    data = data[..., 0] if data.ndim == 4 and data.shape[3] == 1 else data
    expected = volume.to_input_grid(np.zeros(volume.slices.shape, np.uint8)).shape
    if data.shape != expected:
        raise VolumeError(f"--truth {path} has shape {data.shape}; the volume {volume.source} has "
                          f"{expected}: the mask must be on the volume's voxel grid.")
    if volume.affine is not None and not np.allclose(image.affine, volume.affine, atol=1e-3):
        raise VolumeError(f"--truth {path}: its affine differs from the volume's ({volume.source}), "
                          "so its voxels are elsewhere in space; resample it onto the volume first.")
    return volume.from_input_grid(data > 0)


def write_slices_nifti(slices, path, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)):
    """A stack of slices in display orientation (N, H, W) as an axial NIfTI volume (RAS+, mm) that
    :func:`read_volume` reads back as the same slices; ``spacing`` is (slice, row, column) in mm.
    E.g. the PNG slices of one patient, stacked in slice order."""
    import nibabel as nib

    slices = np.asarray(slices)
    step, d_row, d_col = spacing
    affine = np.diag([d_col, d_row, step, 1.0])
    affine[:3, 3] = origin
    image = nib.Nifti1Image(np.stack([_undisplay(s) for s in slices], axis=2), affine)
    image.header.set_xyzt_units("mm")
    nib.save(image, path)
    return path
