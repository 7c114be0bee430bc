"""DICOM and NIfTI in, tumor volumes out: reading (pydicom's and nibabel's own sample files, and
volumes built here), windowing, the mask written back on the input's grid, 3-D lesions with known
volumes, volumetric figures with known answers, and the predict and evaluate commands."""
import copy
import glob
import json
import os

import cv2
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from tumorseg_d2.data.volumes import (VolumeError, read_truth_mask, read_volume, window_to_uint8,
                                      write_mask_nifti, write_slices_nifti)
from tumorseg_d2.evaluation.volumes import lesions, volume_figures, volume_report

from conftest import SCRATCH_CFG, run_tool

NIBABEL_DATA = os.path.join(os.path.dirname(nib.__file__), "tests", "data")


# ---------------------------------------------------------------- reading
def test_pydicom_mr_slice_reads_with_its_spacing_and_window():
    volume = read_volume(get_testdata_file("MR_small.dcm"))
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    assert volume.slices.shape == (1, 64, 64)
    assert volume.spacing == (0.8, 0.3125, 0.3125)  # SliceThickness, PixelSpacing
    np.testing.assert_array_equal(volume.slices[0], ds.pixel_array * float(ds.get("RescaleSlope", 1))
                                  + float(ds.get("RescaleIntercept", 0)))
    slices, how = window_to_uint8(volume)
    assert how == {"method": "dicom", "center": 600.0, "width": 1600.0}
    # The stated window: centre - width/2 -> 0, centre + width/2 -> 255.
    lo, hi = 600 - 800, 600 + 800
    expected = np.clip((volume.slices[0] - lo) / (hi - lo) * 255 + 0.5, 0, 255).astype(np.uint8)
    assert np.abs(slices[0].astype(int) - expected).max() <= 1


def test_percentile_window_is_recorded():
    volume = read_volume(get_testdata_file("MR_small.dcm"))
    slices, how = window_to_uint8(volume, "percentile", (1, 99))
    assert how["method"] == "percentile" and how["percentiles"] == [1, 99]
    lo, hi = np.percentile(volume.slices, (1, 99))
    assert how["values"] == pytest.approx([lo, hi])
    assert slices.dtype == np.uint8 and slices.min() == 0 and slices.max() == 255


@pytest.mark.parametrize("name", ["anatomical.nii", "standard.nii.gz"])
def test_nifti_mask_round_trip_keeps_the_affine_bit_for_bit(name, tmp_path):
    """slices -> mask on the input's grid -> NIfTI -> read back -> the same slices and affine."""
    path = os.path.join(NIBABEL_DATA, name)
    volume = read_volume(path)
    mask = volume.slices > np.percentile(volume.slices, 80)
    out = write_mask_nifti(volume, mask, str(tmp_path / "mask.nii.gz"))
    written, source = nib.load(out), nib.load(path)
    assert written.shape == source.shape[:3]
    assert np.array_equal(written.affine, source.affine)
    np.testing.assert_array_equal(read_volume(out).slices.astype(bool), mask)
    np.testing.assert_array_equal(read_truth_mask(out, volume), mask)


@pytest.mark.parametrize("axis", ["axial", "coronal", "sagittal"])
def test_nifti_slices_follow_the_chosen_plane_and_radiological_display(axis, tmp_path):
    """A marker voxel at the patient's right, anterior, superior corner shows where radiologists
    expect it on each plane: right on the image's left, anterior or superior at the top."""
    data = np.zeros((6, 7, 8), np.float32)  # RAS+: +x toward the patient's right
    data[5, 6, 7] = 1.0  # the rightmost (x max), most anterior, most superior voxel
    path = str(tmp_path / "marker.nii.gz")
    image = nib.Nifti1Image(data, np.diag([1.0, 2.0, 3.0, 1.0]))
    image.header.set_xyzt_units("mm")
    nib.save(image, path)
    volume = read_volume(path, axis=axis)
    k, r, c = np.argwhere(volume.slices == 1)[0]
    n, h, w = volume.slices.shape
    expected_spacing = {"axial": (3.0, 2.0, 1.0), "coronal": (2.0, 3.0, 1.0),
                        "sagittal": (1.0, 3.0, 2.0)}[axis]
    assert volume.spacing == expected_spacing
    assert k == n - 1  # the last slice along the chosen axis
    assert r == 0  # anterior (axial) or superior (coronal, sagittal) at the top
    # The patient's right on the image's left (axial, coronal); anterior on the left (sagittal).
    assert c == 0 and w > 1


def test_4d_nifti_needs_a_volume_index():
    path = os.path.join(NIBABEL_DATA, "example4d.nii.gz")
    with pytest.raises(VolumeError, match="4-D NIfTI .*--volume-index"):
        read_volume(path)
    assert read_volume(path, volume_index=1).slices.ndim == 3
    with pytest.raises(VolumeError, match="outside"):
        read_volume(path, volume_index=7)


@pytest.mark.parametrize("name, message", [
    ("test-SR.dcm", "without an image .*SR"),
    ("rtplan.dcm", "without an image .*RT Plan"),
    ("MR_truncated.dcm", "MR_truncated.dcm.*truncated"),
])
def test_dicom_that_cannot_be_a_volume_is_named(name, message):
    with pytest.raises(VolumeError, match=message):
        read_volume(get_testdata_file(name))


def test_truncated_nifti_is_named(tmp_path):
    source = open(os.path.join(NIBABEL_DATA, "anatomical.nii"), "rb").read()
    path = tmp_path / "cut.nii"
    path.write_bytes(source[: len(source) // 2])
    with pytest.raises(VolumeError, match="cut.nii cannot be read as NIfTI"):
        read_volume(str(path))


def write_series(folder, positions, orientation=(1, 0, 0, 0, 1, 0)):
    """A DICOM series built from pydicom's MR slice: slice k filled with the value 10 k, at
    ``positions[k]`` along the normal; files named in reverse order of position by default."""
    os.makedirs(folder, exist_ok=True)
    base = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    for k, z in enumerate(positions):
        ds = copy.deepcopy(base)
        ds.PixelData = np.full((64, 64), 10 * k, np.int16).tobytes()
        ds.ImagePositionPatient = [0.0, 0.0, float(z)]
        ds.ImageOrientationPatient = list(orientation)
        ds.InstanceNumber = k + 1
        ds.save_as(os.path.join(folder, f"{len(positions) - k:03d}.dcm"))


def test_dicom_series_is_sorted_by_position_not_by_file_name(tmp_path):
    folder = str(tmp_path / "series")
    write_series(folder, [0.0, 2.0, 4.0, 6.0])
    volume = read_volume(folder)
    slope = float(pydicom.dcmread(os.path.join(folder, "001.dcm")).get("RescaleSlope", 1))
    assert [round(float(s[0, 0]) / slope) for s in volume.slices] == [0, 10, 20, 30]
    assert volume.spacing == (2.0, 0.3125, 0.3125)
    mask = np.zeros(volume.slices.shape, bool)
    mask[2, 10:20, 30:40] = True
    out = write_mask_nifti(volume, mask, str(tmp_path / "mask.nii.gz"))
    np.testing.assert_array_equal(read_truth_mask(out, volume), mask)
    affine = nib.load(out).affine
    # Voxel (column 30, row 10, slice 2) sits at LPS (30 * 0.3125, 10 * 0.3125, 4), RAS (-x, -y, z).
    np.testing.assert_allclose(affine @ [30, 10, 2, 1], [-9.375, -3.125, 4.0, 1], atol=1e-4)


@pytest.mark.parametrize("positions, message", [
    ([0.0, 2.0, 2.0, 4.0], "same position .*duplicated"),
    ([0.0, 2.0, 6.0, 8.0], "gap of 4.00 mm .*missing"),
])
def test_broken_series_is_refused_naming_the_files(tmp_path, positions, message):
    folder = str(tmp_path / "series")
    write_series(folder, positions)
    with pytest.raises(VolumeError, match=message):
        read_volume(folder)


def test_mixed_orientations_are_refused(tmp_path):
    folder = str(tmp_path / "series")
    write_series(folder, [0.0, 2.0, 4.0])
    ds = pydicom.dcmread(os.path.join(folder, "001.dcm"))
    ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    ds.save_as(os.path.join(folder, "001.dcm"))
    with pytest.raises(VolumeError, match="mixed orientations"):
        read_volume(folder)


# ---------------------------------------------------------------- figures with known answers
def ellipsoid(shape, center, radii, spacing):
    grids = np.meshgrid(*[(np.arange(n) - c) * s for n, c, s in zip(shape, center, spacing)],
                        indexing="ij")
    return sum((g / r) ** 2 for g, r in zip(grids, radii)) <= 1


def test_lesion_volume_matches_the_ellipsoid_within_the_voxel_discretization():
    spacing = (2.0, 0.5, 0.5)  # mm: slice, row, column
    radii = (12.0, 9.0, 7.0)
    mask = ellipsoid((30, 60, 60), (14, 30, 30), radii, spacing)
    mask |= ellipsoid((30, 60, 60), (4, 8, 8), (2.0, 2.0, 2.0), spacing)  # a second, small lesion
    found = lesions(mask, spacing)
    assert len(found) == 2
    exact = 4 / 3 * np.pi * np.prod(radii)
    # Discretization: at most the voxels the surface crosses, about area x half a voxel diagonal.
    assert found[0]["volume_mm3"] == pytest.approx(exact, rel=0.03)
    assert found[0]["volume_ml"] == pytest.approx(found[0]["volume_mm3"] / 1000)
    assert found[0]["slices"] == list(range(14 - 6, 14 + 7))
    report = volume_report(mask, None)
    assert report["units"].startswith("voxels") and report["lesions"][0]["volume_mm3"] is None


def test_volume_figures_truth_scores_perfectly_and_nothing_scores_zero():
    spacing = (3.0, 1.0, 1.0)
    truth = ellipsoid((10, 40, 40), (5, 20, 20), (9.0, 8.0, 6.0), spacing)
    perfect = volume_figures(truth, truth, spacing)
    assert perfect["dice"] == 1 and perfect["hd95"] == 0 and perfect["volume_error"] == 0
    assert perfect["slice_sensitivity"] == 1 and perfect["slice_specificity"] == 1
    nothing = volume_figures(np.zeros_like(truth), truth, spacing)
    assert nothing["dice"] == 0 and np.isnan(nothing["hd95"])
    assert nothing["slice_sensitivity"] == 0
    assert nothing["volume_error"] == pytest.approx(-truth.sum() * 3.0 / 1000)
    # One slice shifted by one slice thickness: HD95 in mm counts the 3 mm, not 1 voxel.
    shifted = np.roll(truth, 1, axis=0)
    assert volume_figures(shifted, truth, spacing)["hd95"] == pytest.approx(3.0)
    assert volume_figures(shifted, truth, None)["hd95"] == pytest.approx(1.0)


# ---------------------------------------------------------------- the commands
def phantom_volume(root, folder, count=6):
    """The phantom test slices with a tumor stacked into a NIfTI volume (3 mm slices of 0.5 mm
    pixels) and their truth as a mask volume on the same grid: the slices the model was trained
    on, as one volume."""
    from tumorseg_d2.data import register_tumorseg
    from tumorseg_d2.evaluation.clinical import truth_of
    from detectron2.data import DatasetCatalog

    register_tumorseg(root)
    records = [r for r in DatasetCatalog.get("tumorseg_test") if r.get("annotations")][:count]
    images = np.array([cv2.imread(r["file_name"], cv2.IMREAD_GRAYSCALE) for r in records])
    truths = np.array([truth_of(r)[2] for r in records], np.uint8)
    grid = {"spacing": (3.0, 0.5, 0.5), "origin": (-80.0, -60.0, 10.0)}
    return (write_slices_nifti(images.astype(np.int16), os.path.join(folder, "volume.nii.gz"), **grid),
            write_slices_nifti(truths, os.path.join(folder, "truth.nii.gz"), **grid))


def test_predict_writes_mask_montage_and_report_for_a_volume(checkpoint, tmp_path):
    weights, root = checkpoint
    volume_path, _ = phantom_volume(root, str(tmp_path))
    out = tmp_path / "out"
    proc = run_tool("predict.py", "--config-file", SCRATCH_CFG, "--weights", weights, "--input",
                    volume_path, "--output", str(out), "MODEL.DEVICE", "cpu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 volumes" in proc.stdout
    (folder,) = glob.glob(str(out / "volume_*"))
    report = json.load(open(os.path.join(folder, "volume_report.json")))
    mask = nib.load(os.path.join(folder, "mask.nii.gz"))
    assert np.array_equal(mask.affine, nib.load(volume_path).affine)
    assert report["units"] == "mm" and report["spacing_mm"] == [3.0, 0.5, 0.5]
    assert report["window"]["method"] == "percentile"
    voxels = int(np.count_nonzero(np.asarray(mask.dataobj)))
    assert report["tumor_voxels"] == voxels == sum(x["voxels"] for x in report["lesions"])
    assert report["tumor_volume_ml"] == pytest.approx(voxels * 0.75 / 1000)
    assert report["lesions"], "the trained phantom model should find the phantom tumors"
    assert all(0.5 <= x["score"] <= 1 for x in report["lesions"])
    assert os.path.isfile(os.path.join(folder, "montage.png"))
    assert len(glob.glob(os.path.join(folder, "slices", "slice_*.png"))) == 6
    # --overwrite replaces the earlier run's volume folders too.
    proc = run_tool("predict.py", "--config-file", SCRATCH_CFG, "--weights", weights, "--input",
                    get_testdata_file("MR_small.dcm"), "--output", str(out), "--overwrite",
                    "MODEL.DEVICE", "cpu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not os.path.exists(folder) and len(glob.glob(str(out / "volume_*"))) == 1


def test_predict_reports_a_bad_volume_and_goes_on(checkpoint, tmp_path):
    weights, root = checkpoint
    out = tmp_path / "out"
    proc = run_tool("predict.py", "--config-file", SCRATCH_CFG, "--weights", weights, "--input",
                    get_testdata_file("test-SR.dcm"), os.path.join(NIBABEL_DATA, "example4d.nii.gz"),
                    "--output", str(out), "MODEL.DEVICE", "cpu")
    assert proc.returncode == 1
    assert "test-SR.dcm is a DICOM object without an image" in proc.stderr
    assert "--volume-index" in proc.stderr
    assert json.load(open(out / "predict_run.json"))["errors"] == 2


def test_evaluate_a_volume_against_its_mask(checkpoint, tmp_path):
    weights, root = checkpoint
    volume_path, truth_path = phantom_volume(root, str(tmp_path))
    out = tmp_path / "eval"
    proc = run_tool("evaluate.py", "--config-file", SCRATCH_CFG, "--weights", weights,
                    "--volume", volume_path, "--truth", truth_path, "--output", str(out),
                    "MODEL.DEVICE", "cpu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.load(open(out / "volume_metrics.json"))
    assert figures["units"] == "mm / ml"
    truth = np.asarray(nib.load(truth_path).dataobj) > 0
    predicted = np.asarray(nib.load(out / "mask.nii.gz").dataobj) > 0
    assert figures["volume_true"] == pytest.approx(truth.sum() * 0.75 / 1000)
    assert figures["volume_predicted"] == pytest.approx(predicted.sum() * 0.75 / 1000)
    assert figures["dice"] == pytest.approx(2 * (truth & predicted).sum()
                                            / (truth.sum() + predicted.sum()))
    assert figures["dice"] > 0 and figures["lesions_predicted"] >= 1, "the model finds tumors"
    assert "volumetric Dice" in proc.stdout


def test_phantom_volume_holds_a_15_mm_sphere_and_reads_back_as_written(tmp_path):
    from tumorseg_d2.data.phantom import make_phantom_volume

    volume_path, truth_path, true_ml = make_phantom_volume(str(tmp_path), slices=12)
    volume = read_volume(volume_path)
    truth = read_truth_mask(truth_path, volume)
    assert volume.slices.shape == (12, 640, 640) and volume.spacing == (3.0, 0.5, 0.5)
    (lesion,) = lesions(truth, volume.spacing)
    assert lesion["volume_ml"] == pytest.approx(true_ml)
    # A sphere of radius 15 mm sampled every 3 mm: within a few percent of 4/3 pi r^3.
    assert lesion["volume_ml"] == pytest.approx(4 / 3 * np.pi * 15 ** 3 / 1000, rel=0.03)
    assert lesion["slices"] == list(range(1, 11))


def test_dicom_voi_lut_is_applied_when_the_file_has_one(tmp_path):
    from pydicom.dataset import Dataset

    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    lut = Dataset()
    lut.add_new(0x00283002, "US", [1024, 500, 16])  # LUTDescriptor: 1024 entries from 500, 16 bit
    lut.add_new(0x00283006, "US", [64 * i for i in range(1024)])  # LUTData
    ds.VOILUTSequence = [lut]
    del ds.WindowCenter, ds.WindowWidth
    path = str(tmp_path / "lut.dcm")
    ds.save_as(path)
    volume = read_volume(path)
    slices, how = window_to_uint8(volume)
    assert how["method"] == "dicom"
    lut_values = 64 * np.clip(volume.slices[0] - 500, 0, 1023)  # the LUT's output
    expected = np.floor(lut_values / 65535 * 255 + 0.5)  # its 16-bit range to 0-255
    np.testing.assert_array_equal(slices[0], expected)
