"""Any dataset by config: image/mask-pair folders and COCO files, patients and their splits,
tumor-free slices, per-patient figures, cross-validation; on phantoms and on the real LGG data."""
import json
import logging
import os

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from tumorseg_d2.config import derived, get_tumorseg_cfg, merge_config
from tumorseg_d2.data import register_datasets
from tumorseg_d2.data.check import DatasetCheckError, check_at_start
from tumorseg_d2.data.datasets import truth_instances
from tumorseg_d2.data.folders import MaskFolderError, load_mask_folder
from tumorseg_d2.data.loader import training_dicts
from tumorseg_d2.data.phantom import make_phantom_mask_folders
from tumorseg_d2.evaluation.ground_truth import truth_record
from tumorseg_d2.evaluation.pipeline import evaluate_predictions
from tumorseg_d2.predictions import from_instances, to_instances

from conftest import CONFIGS, REPO, run_tool

UNET_LGG = os.path.join(CONFIGS, "lgg", "unet_lgg_cpu.yaml")
RCNN_LGG = os.path.join(CONFIGS, "lgg", "mask_rcnn_R_18_FPN_lgg_cpu.yaml")


def lgg_root():
    root = os.path.join(os.environ.get("DETECTRON2_DATASETS", os.path.join(REPO, "..", "shared",
                                                                            "datasets")), "lgg")
    if not os.path.isfile(os.path.join(root, "data.csv")):
        msg = f"real LGG data not found ({root})"
        if os.environ.get("TUMORSEG_REQUIRE_REAL_DATA") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return os.path.abspath(root)


def source_cfg(root, config=UNET_LGG, opts=()):
    """The LGG config pointed at ``root`` (the phantoms are in the same layout), registered."""
    cfg = merge_config(get_tumorseg_cfg(), config, ["DATASETS.SOURCE.ROOT", root, *opts])
    register_datasets(cfg)
    return cfg


PHANTOM = ["DATASETS.SOURCE.PATIENT_PATTERN", "PT_[0-9]+"]


@pytest.fixture(scope="module")
def phantom_patients(tmp_path_factory):
    root = tmp_path_factory.mktemp("patients") / "data"
    return str(root), make_phantom_mask_folders(str(root), patients=10, slices=8)


# ---------------------------------------------------------------- image/mask folders
def test_every_region_is_an_instance_holes_kept_and_empty_slices_kept(phantom_patients):
    root, counts = phantom_patients
    records = load_mask_folder(root, patient_pattern="PT_[0-9]+")
    assert len(records) == counts["pairs"]
    assert sum(len(r["annotations"]) for r in records) == counts["regions"]
    assert sum(not r["annotations"] for r in records) == counts["tumor_free"] > 0
    for r in records:  # the instances are exactly the mask file, holes included
        truth = cv2.imread(r["mask_file"], cv2.IMREAD_GRAYSCALE) > 0
        union = np.zeros_like(truth)
        for m in truth_instances(r)[2]:
            union |= m
        assert np.array_equal(union, truth), r["mask_file"]
    assert [r["slice_index"] for r in records[:10]] == [1, 2, 3, 4, 5, 6, 7, 8, 1, 2]
    assert records[0]["patient_id"] == "PT_0"


def test_min_area_and_polygons_are_counted_in_the_log(phantom_patients, caplog):
    root, counts = phantom_patients
    with caplog.at_level(logging.INFO):
        records = load_mask_folder(root, min_area=10, polygons=True)
    assert sum(len(r["annotations"]) for r in records) == counts["regions"] - counts["small_regions"]
    assert f"{counts['small_regions']} regions under MIN_AREA dropped" in caplog.text
    assert f"{counts['holes']} holes filled (polygon masks)" in caplog.text
    assert all(isinstance(a["segmentation"], list) for r in records for a in r["annotations"])


@pytest.mark.parametrize("ext", [".tif", ".jpg"])
def test_parallel_mask_folder_and_other_formats(tmp_path, ext):
    counts = make_phantom_mask_folders(str(tmp_path), patients=2, slices=6, ext=ext,
                                       mask_dir="masks")
    records = load_mask_folder(str(tmp_path), mask_dir="masks", image_dir="images",
                               patient_pattern="^[^/]+")
    assert len(records) == counts["pairs"]
    assert sum(len(r["annotations"]) for r in records) == counts["regions"]  # JPEG noise ignored
    assert {r["patient_id"] for r in records} == {"PT_0_2000", "PT_1_2000"}


def test_label_masks_give_one_class_per_value(tmp_path, caplog):
    image = np.full((40, 40, 3), 50, np.uint8)
    mask = np.zeros((40, 40), np.uint8)
    mask[2:10, 2:10], mask[20:30, 20:30], mask[35:37, 35:37] = 1, 2, 7
    cv2.imwrite(str(tmp_path / "a.png"), image)
    cv2.imwrite(str(tmp_path / "a_mask.png"), mask)
    records = load_mask_folder(str(tmp_path), values=(1, 2))
    assert sorted(a["category_id"] for a in records[0]["annotations"]) == [0, 1]
    assert "4 mask pixels have a value that is not in DATASETS.SOURCE.MASK_VALUES" in caplog.text


def test_unusable_pairs_are_named(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((20, 20, 3), np.uint8))
    with pytest.raises(MaskFolderError, match=r"a\.png has no mask beside it"):
        load_mask_folder(str(tmp_path))
    cv2.imwrite(str(tmp_path / "a_mask.png"), np.zeros((10, 20), np.uint8))
    with pytest.raises(MaskFolderError, match="is 20x10 but its image is 20x20"):
        load_mask_folder(str(tmp_path))
    colour = np.zeros((20, 20, 3), np.uint8)
    colour[..., 2] = 255
    cv2.imwrite(str(tmp_path / "a_mask.png"), colour)
    with pytest.raises(MaskFolderError, match="colour image whose channels differ"):
        load_mask_folder(str(tmp_path))
    cv2.imwrite(str(tmp_path / "b.png"), np.zeros((20, 20, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "b_mask.png"), np.zeros((20, 20), np.uint8))
    assert [os.path.basename(r["file_name"]) for r in
            load_mask_folder(str(tmp_path), on_error="warn")] == ["b.png"]
    with pytest.raises(MaskFolderError, match="does not exist"):
        load_mask_folder(str(tmp_path / "nowhere"))


# ---------------------------------------------------------------- patients and splits
def split_patients(names):
    return {n: {r["patient_id"] for r in DatasetCatalog.get(n)} for n in names}


def test_split_by_patient_is_deterministic_and_disjoint(phantom_patients):
    root, _ = phantom_patients
    source_cfg(root, opts=PHANTOM)
    first = split_patients(["lgg_train", "lgg_valid", "lgg_test"])
    assert not (first["lgg_train"] & first["lgg_valid"]) and \
        not (first["lgg_train"] & first["lgg_test"]) and not (first["lgg_valid"] & first["lgg_test"])
    assert set().union(*first.values()) == {f"PT_{k}" for k in range(10)}
    source_cfg(root, opts=PHANTOM)
    assert split_patients(["lgg_train", "lgg_valid", "lgg_test"]) == first
    source_cfg(root, opts=PHANTOM + ["DATASETS.SOURCE.SPLIT_SEED", "7"])
    assert split_patients(["lgg_train", "lgg_valid", "lgg_test"]) != first


def test_folds_test_every_patient_once(phantom_patients):
    root, _ = phantom_patients
    source_cfg(root, opts=PHANTOM)
    tested = []
    for k in range(5):
        parts = split_patients([f"lgg_fold{k}_{s}" for s in ("train", "valid", "test")])
        train, valid, test = parts.values()
        assert train and valid and test and not (train & valid) and not (train & test) \
            and not (valid & test)
        tested += sorted(test)
    assert sorted(tested) == sorted(f"PT_{k}" for k in range(10))


def test_checker_refuses_patients_that_cross_splits(phantom_patients):
    root, _ = phantom_patients
    source_cfg(root, opts=PHANTOM)
    assert check_at_start(["lgg_train", "lgg_valid", "lgg_test"]) == []
    with pytest.raises(DatasetCheckError, match="patients_cross_splits"):
        check_at_start(["lgg_train", "lgg_fold0_test"])
    proc = run_tool("check_dataset.py", "--config-file", UNET_LGG, "DATASETS.SOURCE.ROOT", root,
                    *PHANTOM, "DATASETS.TEST", "('lgg_fold0_test',)", timeout=300)
    assert proc.returncode == 1 and "patients_cross_splits" in proc.stdout, proc.stdout[-2000:]


def test_tumor_free_slices_train_unless_filtered(phantom_patients):
    root, counts = phantom_patients
    cfg = source_cfg(root, opts=PHANTOM)
    kept = training_dicts(cfg)
    assert any(not r["annotations"] for r in kept)
    cfg = source_cfg(root, opts=PHANTOM + ["DATASETS.SOURCE.FILTER_EMPTY", "True"])
    assert training_dicts(cfg) == [r for r in kept if r["annotations"]]


# ---------------------------------------------------------------- figures with known answers
def oracle_and_empty(name, out, *honest, predictions=False):
    """The metrics of the truth and of no prediction on ``name`` (written under ``out``);
    ``honest``: evaluate_predictions' references and bootstrap settings. With ``predictions``
    also both predictions."""
    records = DatasetCatalog.get(name)
    truth = [from_instances(to_instances(truth_record(r)), r["image_id"]) for r in records]
    perfect = evaluate_predictions(truth, name, str(out / "truth"), 0.5, "fixed", *honest)
    none = [from_instances(to_instances({**truth_record(r), "boxes": np.zeros((0, 4)),
                                         "scores": np.zeros(0), "classes": np.zeros(0, int),
                                         "masks": np.zeros((0, r["height"], r["width"]), bool)}),
                           r["image_id"]) for r in records]
    empty = evaluate_predictions(none, name, str(out / "none"), 0.5, "fixed", *honest)
    return (perfect, empty, truth, none) if predictions else (perfect, empty)


def assert_known_answers(perfect, empty):
    for task in ("bbox", "segm"):
        assert perfect["coco"][task]["AP"] == pytest.approx(100)
        assert empty["coco"][task]["AP"] == 0
    good, bad = perfect["clinical"]["all classes"], empty["clinical"]["all classes"]
    assert good["slice_specificity"] == 1 and good["dice_mean_per_image"] == 1
    assert good["false_positive_slices"] == 0 and good["tumor_free_slices"] > 0
    assert perfect["patients"]["volumetric_dice_mean"] == 1
    assert perfect["patients"]["patient_sensitivity"] == 1
    assert bad["sensitivity"] == 0 and bad["dice_mean_per_image"] == 0
    assert bad["slice_specificity"] == 1  # nothing predicted: every tumor-free slice is right
    assert empty["patients"]["volumetric_dice_mean"] == 0
    assert empty["patients"]["patients_detected"] == 0


def test_truth_scores_perfectly_and_nothing_scores_zero_per_patient(phantom_patients, tmp_path):
    root, _ = phantom_patients
    source_cfg(root, opts=PHANTOM)
    perfect, empty = oracle_and_empty("lgg_test", tmp_path)
    assert_known_answers(perfect, empty)
    report = (tmp_path / "truth" / "report.md").read_text()
    assert "## Patients" in report and "false alarms per tumor-free slice" in report


def test_one_false_alarm_on_a_tumor_free_slice(phantom_patients, tmp_path):
    root, _ = phantom_patients
    source_cfg(root, opts=PHANTOM)
    records = DatasetCatalog.get("lgg_test")
    preds = [truth_record(r) for r in records]
    free = next(p for p, r in zip(preds, records) if not r["annotations"])
    free.update(boxes=np.array([[1, 1, 9, 9]], float), scores=np.ones(1), classes=np.zeros(1, int))
    free["masks"] = np.zeros((1, free["height"], free["width"]), bool)
    free["masks"][0, 1:9, 1:9] = True
    preds = [from_instances(to_instances(p), p["image_id"]) for p in preds]
    figures = evaluate_predictions(preds, "lgg_test", str(tmp_path), 0.5, "fixed")
    summary = figures["clinical"]["all classes"]
    n_free = summary["tumor_free_slices"]
    assert summary["false_positive_slices"] == 1
    assert summary["slice_specificity"] == pytest.approx((n_free - 1) / n_free)
    assert summary["false_alarms_per_tumor_free_slice"] == pytest.approx(1 / n_free)
    patient = next(p for p in figures["per_patient"] if p["patient_id"] ==
                   next(r["patient_id"] for r in records if r["image_id"] == free["image_id"]))
    assert patient["volumetric_dice"] < 1 and patient["predicted_volume_px"] == \
        patient["true_volume_px"] + 64


def test_a_coco_file_by_config_with_its_own_categories(phantom_root, tmp_path, caplog):
    """TumorSeg's layout registered as any COCO dataset: the placeholder category is reported and
    is not a class; the truth scores AP 100."""
    cfg = merge_config(get_tumorseg_cfg(), None, [
        "DATASETS.SOURCE.NAME", "mine", "DATASETS.SOURCE.FORMAT", "coco",
        "DATASETS.SOURCE.ROOT", phantom_root, "DATASETS.SOURCE.JSON",
        "{split}/_annotations.coco.json", "DATASETS.SOURCE.IMAGES", "{split}"])
    with caplog.at_level(logging.INFO):
        register_datasets(cfg)
    assert MetadataCatalog.get("mine_test").thing_classes == ["0", "1"]
    assert "{0: 'Tumor'} have no annotation: not classes" in caplog.text
    assert "annotation ids start at 0" in caplog.text
    perfect, empty = oracle_and_empty("mine_test", tmp_path)
    assert perfect["coco"]["segm"]["AP"] == pytest.approx(100) and empty["coco"]["segm"]["AP"] == 0
    findings = check_at_start(["mine_train", "mine_test"])  # its structure is checked too
    assert "zero_annotation_id" in {f.code for f in findings}
    assert not [f for f in findings if f.severity == "error"]
    # Classes chosen by name keep the json's ids: class "1" is category 2.
    register_datasets(derived(cfg, {"DATASETS.SOURCE.CLASSES": ("1",)}))
    assert MetadataCatalog.get("mine_test").thing_dataset_id_to_contiguous_id == {2: 0}
    records = DatasetCatalog.get("mine_test")
    assert {a["category_id"] for r in records for a in r["annotations"]} == {0}
    assert sum(len(r["annotations"]) for r in records) == sum(
        a["category_id"] == 2 for a in json.load(open(os.path.join(
            phantom_root, "test", "_annotations.coco.json")))["annotations"])


def test_config_errors_name_the_key(tmp_path):
    for opts, message in [
        (["DATASETS.SOURCE.FORMAT", "voc"], "DATASETS.SOURCE.FORMAT is 'voc'"),
        (["DATASETS.SOURCE.ROOT", ""], "DATASETS.SOURCE.ROOT is empty"),
        (["DATASETS.SOURCE.SPLIT_FRACTIONS", "(0.5, 0.5)"], "three non-negative fractions"),
        (["DATASETS.SOURCE.MASK_VALUES", "(1, 2)"], "one value per class"),
    ]:
        cfg = merge_config(get_tumorseg_cfg(), UNET_LGG, opts)
        with pytest.raises(ValueError, match=message):
            register_datasets(cfg)
    cfg = source_cfg(str(tmp_path), opts=["DATASETS.SOURCE.PATIENT_PATTERN", "NOPE_[0-9]+"])
    make_phantom_mask_folders(str(tmp_path), patients=1, slices=2)
    with pytest.raises(ValueError, match="PATIENT_PATTERN 'NOPE_.*' does not match"):
        DatasetCatalog.get("lgg_train")


# ---------------------------------------------------------------- the real LGG data
def test_real_lgg_loads_splits_by_patient_and_scores_known_answers(tmp_path):
    root = lgg_root()
    source_cfg(root)
    names = ["lgg_train", "lgg_valid", "lgg_test"]
    records = {n: DatasetCatalog.get(n) for n in names}
    every = [r for n in names for r in records[n]]
    assert len(every) == 1634  # README: 1634 slices, 576 with tumor, 646 regions, 44 patients
    assert sum(bool(r["annotations"]) for r in every) == 576
    assert sum(len(r["annotations"]) for r in every) == 646
    patients = split_patients(names)
    assert sum(map(len, patients.values())) == len(set().union(*patients.values())) == 44
    assert check_at_start(names) == []
    perfect, empty = oracle_and_empty("lgg_test", tmp_path)
    assert_known_answers(perfect, empty)
    assert perfect["patients"]["patients"] == len(patients["lgg_test"])


@pytest.mark.parametrize("config,extra", [
    # Two test patients keep the U-Net's evaluation short.
    (UNET_LGG, ["DATASETS.SOURCE.SPLIT_FRACTIONS", "(0.9, 0.05, 0.05)"]),
    (RCNN_LGG, ["SOLVER.IMS_PER_BATCH", "2", "DATASETS.TEST", "()"]),
])
def test_models_train_on_real_lgg(tmp_path, config, extra):
    """A few iterations of each model on the LGG patient split with tools/train_net.py as is; the
    U-Net run also evaluates on the test patients with the per-patient figures."""
    root = lgg_root()
    out = tmp_path / "run"
    proc = run_tool("train_net.py", "--config-file", config, "DATASETS.SOURCE.ROOT", root,
                    "SOLVER.MAX_ITER", "2", "DATASETS.VAL", "()", "TEST.BEST_METRIC", "",
                    "TEST.EVAL_PERIOD", "0", "TEST.EARLY_STOP_PATIENCE", "0",
                    "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(out), *extra, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (out / "log.txt").read_text()
    assert "Training on lgg_train:" in log and "kept as negatives" in log
    if config == UNET_LGG:
        saved = json.load(open(out / "inference" / "lgg_test" / "metrics.json"))
        assert 0 <= saved["overlap"]["patient_Dice"] <= 100


def test_crossval_trains_every_fold_and_writes_one_table(phantom_patients, tmp_path):
    root, _ = phantom_patients
    out = tmp_path / "cv"
    opts = ["DATASETS.SOURCE.ROOT", root, *PHANTOM, "DATASETS.SOURCE.FOLDS", "2",
            "MODEL.META_ARCHITECTURE", "EncoderDecoder2", "MODEL.PIXEL_SEG.INPUT_SIZE", "64",
            "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "4", "TEST.EVAL_PERIOD", "0",
            "TEST.EARLY_STOP_PATIENCE", "0",
            "DATALOADER.NUM_WORKERS", "0"]
    proc = run_tool("crossval.py", "--config-file", UNET_LGG, "--output", str(out), *opts,
                    timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.load(open(out / "crossval.json"))
    assert [r["fold"] for r in result["folds"]] == [0, 1]
    assert sorted(p["patient_id"] for p in result["patients"]) == sorted(f"PT_{k}" for k in range(10))
    dice = [r["patient_dice"] for r in result["folds"]]
    assert result["summary"]["patient_dice"]["mean"] == pytest.approx(np.mean(dice))
    assert result["summary"]["patient_dice"]["sd"] == pytest.approx(np.std(dice, ddof=1))
    table = (out / "crossval.md").read_text()
    assert "mean +/- sd" in table and (out / "crossval.png").is_file()
    assert (out / "evaluation" / "fold1" / "report.md").is_file()
    proc = run_tool("crossval.py", "--config-file", UNET_LGG, "--output", str(out), *opts,
                    timeout=900)  # rerun: both folds are done, nothing is retrained
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0 and output.count("trained already") == 2, output[-2000:]
