"""Honest figures (#18): bootstrap intervals, paired differences and the leak-free subset, each
against a known answer."""
import copy
import json
import os

import cv2
import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.coco import convert_to_coco_json
from detectron2.structures import BoxMode

from tumorseg_d2.benchmark.evaluation import jittered_predictions
from tumorseg_d2.config import get_tumorseg_cfg, merge_config
from tumorseg_d2.data import make_phantom_dataset, register_tumorseg
from tumorseg_d2.data.phantom import make_phantom_mask_folders
from tumorseg_d2.data.check import similar_pairs
from tumorseg_d2.data import leakage as leakage_module
from tumorseg_d2.data.leakage import fingerprint_cache_path, fingerprints, leakage
from tumorseg_d2.evaluation import clinical
from tumorseg_d2.evaluation.bootstrap import (FIGURES, ResampledAP, Settings, SplitFigures,
                                              intervals, paired_difference)
from tumorseg_d2.engine import Trainer
from tumorseg_d2.evaluation.coco import coco_metrics, load_coco_api, run_cocoeval
from tumorseg_d2.evaluation.label_copy import label_copy_predictions
from tumorseg_d2.evaluation.pipeline import evaluate_predictions
from tumorseg_d2.modeling.tta import augmentation_text, augmented_model
from tumorseg_d2.evaluation.ground_truth import truth_record
from tumorseg_d2.predictions import (dataset_category_ids, from_coco_results, mask_arrays,
                                     to_coco_results)

from conftest import CONFIGS, SCRATCH_CFG, TINY, run_tool
from test_own_data import PHANTOM, UNET_LGG, oracle_and_empty, source_cfg

FEW = Settings(resamples=200)


@pytest.fixture(scope="module")
def phantom_patients(tmp_path_factory):
    root = tmp_path_factory.mktemp("patients") / "data"
    return str(root), make_phantom_mask_folders(str(root), patients=10, slices=8)


@pytest.fixture(scope="module")
def noisy_split(tmp_path_factory):
    """A phantom test split with predictions of known imperfection: the truth with boxes moved
    by up to 12 px, random scores and a false alarm per image; (gt json, results, rows)."""
    out = tmp_path_factory.mktemp("noisy")
    register_tumorseg(make_phantom_dataset(str(out / "tumorseg"), {"test": 14}, seed=5,
                                           mask_style="outline"))
    preds = jittered_predictions("tumorseg_test", seed=3)
    rng = np.random.default_rng(0)
    for p in preds:
        p["scores"] = rng.uniform(0.05, 1, len(p["scores"]))
        p["boxes"] = p["boxes"] + rng.uniform(-12, 12, p["boxes"].shape)
    results = to_coco_results(preds, dataset_category_ids(MetadataCatalog.get("tumorseg_test")))
    gt = str(out / "gt.json")
    convert_to_coco_json("tumorseg_test", gt, allow_cached=False)
    rows = clinical.rows_for(preds, DatasetCatalog.get("tumorseg_test"), 0.5)
    return gt, results, rows


def repeated_split(gt_json, results, picks, folder):
    """The split with its images at ``picks`` (repeats allowed) as a new COCO dataset whose
    images are copies with new ids, and the matching results: what a resample means."""
    gt = json.load(open(gt_json))
    ids = sorted(im["id"] for im in gt["images"])
    images, anns, dets = [], [], []
    for new, k in enumerate(picks, 1):
        old = ids[k]
        images.append(dict(next(im for im in gt["images"] if im["id"] == old), id=new))
        anns += [dict(a, id=len(anns) + n + 1, image_id=new)
                 for n, a in enumerate(a for a in gt["annotations"] if a["image_id"] == old)]
        dets += [dict(copy.deepcopy(d), image_id=new) for d in results if d["image_id"] == old]
    path = os.path.join(folder, "repeated.json")
    json.dump(dict(gt, images=images, annotations=anns), open(path, "w"))
    return path, dets


@pytest.mark.parametrize("task", ["bbox", "segm"])
def test_resampled_ap_is_cocoeval_on_the_resampled_images(noisy_split, task, tmp_path):
    gt, results, _ = noisy_split
    ap = ResampledAP(gt, copy.deepcopy(results), task)
    everything = run_cocoeval(load_coco_api(gt), copy.deepcopy(results), task, agnostic=True)
    n = len(ap.image_index)
    assert ap(range(n)) == pytest.approx((everything.stats[0] * 100, everything.stats[1] * 100))
    rng = np.random.default_rng(1)
    for _ in range(2):
        picks = np.sort(rng.integers(0, n, n))  # repeats, as a bootstrap draws them
        assert len(set(picks)) < n
        path, dets = repeated_split(gt, results, picks, str(tmp_path))
        ev = run_cocoeval(load_coco_api(path), dets, task, agnostic=True)
        assert ap(picks) == pytest.approx((ev.stats[0] * 100, ev.stats[1] * 100), abs=1e-9)


def test_interval_of_a_mean_is_the_textbook_one():
    values = np.random.default_rng(0).normal(3.0, 2.0, 400)
    mean = lambda idx: np.array([values[idx].mean()])  # noqa: E731
    for method in ("BCa", "percentile"):
        ci = intervals(mean, len(values), Settings(2000, 0, 0.95, method), names=("mean",))["mean"]
        half = 1.96 * values.std(ddof=1) / np.sqrt(len(values))
        assert ci["value"] == pytest.approx(values.mean())
        assert ci["low"] == pytest.approx(values.mean() - half, abs=0.1 * half)
        assert ci["high"] == pytest.approx(values.mean() + half, abs=0.1 * half)
    same = intervals(mean, len(values), Settings(300, 0), names=("mean",))["mean"]
    assert same == intervals(mean, len(values), Settings(300, 0), names=("mean",))["mean"]


def test_a_unit_resamples_with_all_its_slices(noisy_split):
    gt, results, rows = noisy_split
    rows = [dict(r, unit="A" if k < 4 else "B") for k, r in enumerate(rows)]
    figures = SplitFigures(gt, results, rows)
    assert figures.units == ["A", "B"] and [len(u) for u in figures.unit_rows] == [4, 10]
    dice = FIGURES.index("Dice")
    only_a = clinical.summarize(rows[:4])["dice_mean_per_image"]
    assert figures([0, 0])[dice] == pytest.approx(only_a)
    assert figures([0, 1])[dice] == pytest.approx(clinical.summarize(rows)["dice_mean_per_image"])


def test_truth_has_no_uncertainty_nothing_scores_zero_and_a_model_equals_itself(
        phantom_patients, tmp_path):
    source_cfg(phantom_patients[0], opts=PHANTOM)
    records = DatasetCatalog.get("lgg_test")
    perfect, empty, truth, none = oracle_and_empty("lgg_test", tmp_path, ("lgg_train", "lgg_valid"),
                                                   FEW, predictions=True)
    assert perfect["bootstrap"]["unit"] == "patient"
    assert perfect["bootstrap"]["units"] == len({r["patient_id"] for r in records})
    for name, entry in perfect["bootstrap"]["figures"].items():
        best = 100.0 if name in ("bbox AP", "bbox AP50", "segm AP", "segm AP50") else 1.0
        assert entry["value"] == entry["low"] == entry["high"] == pytest.approx(best), name
    for name in ("bbox AP50", "segm AP", "Dice", "lesion sensitivity", "patient Dice"):
        entry = empty["bootstrap"]["figures"][name]
        assert entry["value"] == entry["low"] == entry["high"] == 0.0, name
    assert empty["bootstrap"]["figures"]["slice specificity"]["low"] == 1.0
    # Split by patient: nothing of the test patients was seen in training.
    assert perfect["leak_free"]["images"] == len(records)
    assert perfect["leak_free"]["leaking_images"] == 0
    report = (tmp_path / "truth" / "report.md").read_text()
    assert "## Uncertainty and leakage" in report and "Every slice of the split is leak-free" in report
    assert "100.00 [100.00, 100.00]" in report

    def figures(folder, preds):
        metrics = json.load(open(folder / "metrics.json"))
        rows = [dict(r, **{k: float("nan") for k in ("dice", "iou", "hd95", "hd95_pooled")
                           if r[k] is None}) for r in metrics["per_image"]]
        meta = MetadataCatalog.get("lgg_test")
        return SplitFigures(str(folder / "lgg_test_coco_format.json"),
                            to_coco_results(preds, dataset_category_ids(meta)), rows)

    t, n = figures(tmp_path / "truth", truth), figures(tmp_path / "none", none)
    itself = paired_difference(t, figures(tmp_path / "truth", truth), FEW)
    assert all(e["low"] == e["high"] == 0 for e in itself.values() if e["value"] is not None)
    gap = paired_difference(t, n, FEW)
    assert gap["Dice"]["value"] == gap["Dice"]["low"] == gap["Dice"]["high"] == 1.0
    assert gap["bbox AP50"]["low"] == gap["bbox AP50"]["high"] == 100.0


def test_patients_seen_in_training_leak(phantom_patients):
    source_cfg(phantom_patients[0], opts=PHANTOM)
    # The folds' test patients are the main split's train, valid and test patients.
    seen = {r["patient_id"] for r in DatasetCatalog.get("lgg_train")}
    every, free = [], []
    for k in range(5):
        every += DatasetCatalog.get(f"lgg_fold{k}_test")
        free += leakage(f"lgg_fold{k}_test", ("lgg_train",)).leak_free
    expected = [r["image_id"] for r in every if r["patient_id"] not in seen]
    assert free == expected and 0 < len(expected) < len(every)
    assert leakage("lgg_train", ("lgg_train",)).leak_free == []  # evaluated on what it trained on


def blobs(seed, size=96):
    """An image unlike any other seed's (difference-hash similarity about 0.5): smoothed noise,
    stretched to 0-255."""
    noise = np.random.default_rng(seed).uniform(0, 255, (size, size)).astype(np.float32)
    smooth = cv2.GaussianBlur(noise, (0, 0), 6)
    return ((smooth - smooth.min()) / (smooth.max() - smooth.min()) * 255).astype(np.uint8)


def test_fingerprints_are_kept_on_disk_while_the_file_is_unchanged(tmp_path, monkeypatch):
    monkeypatch.setenv("TUMORSEG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(leakage_module, "_HASHES", {})
    paths = [str(tmp_path / f"{n}.png") for n in "ab"]
    for seed, path in enumerate(paths):
        cv2.imwrite(path, blobs(seed))
    first = fingerprints(paths)
    assert os.path.isfile(fingerprint_cache_path())

    # A new process (empty memory) reads the hashes from disk. To prove it decoded nothing, a's
    # pixels change while its path, size and time stay: the cached hash is served.
    monkeypatch.setattr(leakage_module, "_HASHES", {})
    stat = os.stat(paths[0])
    flipped = cv2.flip(cv2.imread(paths[0], cv2.IMREAD_GRAYSCALE), 1)
    cv2.imwrite(paths[0], flipped)
    with open(paths[0], "r+b") as f:  # same size: pad or cut the PNG's trailing bytes
        data = f.read()
    data = (data + b"\0" * stat.st_size)[:stat.st_size] if len(data) != stat.st_size else data
    with open(paths[0], "wb") as f:
        f.write(data)
    os.utime(paths[0], ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert all((x == y).all() for x, y in zip(fingerprints(paths), first))

    # A new modification time is a new file: hashed again.
    os.utime(paths[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    cv2.imwrite(paths[0], flipped)
    again = fingerprints(paths)
    assert not (again[0] == first[0]).all() and (again[1] == first[1]).all()

    # A damaged cache is ignored (and rewritten), never an error.
    monkeypatch.setattr(leakage_module, "_HASHES", {})
    with open(fingerprint_cache_path(), "w") as f:
        f.write("{not json")
    assert all((x == y).all() for x, y in zip(fingerprints(paths), again))
    assert len(json.load(open(fingerprint_cache_path()))) == 2


def test_near_duplicates_chain_slices_into_pseudo_patients(tmp_path):
    """Test slices a and b are neighbours (near duplicates); b's neighbour c is in training.
    Both a and b leak, though a has no near duplicate in training itself."""
    base = blobs(0)  # shifted by 2 px: similarity about 0.88; by 4 px: about 0.76
    images = {"a": base, "b": np.roll(base, 2, axis=1), "c": np.roll(base, 4, axis=1),
              "d": blobs(1), "e": blobs(2), "f": blobs(3)}
    for name, image in images.items():
        cv2.imwrite(str(tmp_path / f"{name}.png"), image)
    hashes = fingerprints([str(tmp_path / f"{n}.png") for n in "abcdef"])
    assert {(i, j) for i, j, _ in similar_pairs(hashes)} == {(0, 1), (1, 2)}  # a~b, b~c only

    def records(names):
        return [{"file_name": str(tmp_path / f"{n}.png"), "image_id": n, "height": 96,
                 "width": 96, "annotations": []} for n in names]

    for name, names in (("chain_test", "abde"), ("chain_train", "cf")):
        DatasetCatalog.pop(name, None)
        DatasetCatalog.register(name, lambda names=names: records(names))
    leaks = leakage("chain_test", ("chain_train",))
    assert leaks.unit_kind == "pseudo-patient"
    assert sorted(leaks.leak_free) == ["d", "e"]
    assert leaks.units["a"] == leaks.units["b"] != leaks.units["d"] != leaks.units["e"]
    assert leakage("chain_test").leak_free is None  # nothing to compare against


# ---------------------------------------------------------------- test-time augmentation
def test_flip_averaging_is_the_mean_of_both_views_and_mirror_symmetric():
    cfg = merge_config(get_tumorseg_cfg(), os.path.join(CONFIGS, "baselines", "unet_cpu.yaml"),
                       ["MODEL.DEVICE", "cpu", "MODEL.PIXEL_SEG.INPUT_SIZE", "64",
                        "TEST.AUG.ENABLED", "True"])
    torch.manual_seed(0)
    model = Trainer.build_model(cfg).eval()
    augmented = augmented_model(cfg, model)
    image = torch.rand(3, 64, 64) * 255  # at the input size: no resampling between the views

    def probability(m, x):
        with torch.no_grad():
            return m([{"image": x, "height": 64, "width": 64}])[0]["probability"]

    plain, mirrored = probability(model, image), probability(model, image.flip(-1)).flip(-1)
    assert not torch.allclose(plain, mirrored, atol=1e-4)  # the network alone is not symmetric
    both = probability(augmented, image)
    assert torch.allclose(both, (plain + mirrored) / 2, atol=1e-5)
    assert torch.allclose(both, probability(augmented, image.flip(-1)).flip(-1), atol=1e-5)
    assert augmentation_text(cfg, model) == "horizontal flip, probabilities averaged"


def test_mask_rcnn_test_time_augmentation_evaluates_and_predicts(checkpoint, tmp_path):
    weights, root = checkpoint
    tta = ["TEST.AUG.ENABLED", "True", "TEST.AUG.MIN_SIZES", "(128, 160)"]  # 4 passes
    out = tmp_path / "eval"
    proc = run_tool("evaluate.py", "--config-file", SCRATCH_CFG, "--weights", weights,
                    "--split", "test", "--output", str(out), *TINY, "DATASETS.TUMORSEG_ROOT",
                    root, *tta)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.load(open(out / "metrics.json"))
    assert metrics["test_time_augmentation"] == \
        "horizontal flip, shorter sides (128, 160) (max 512), merged"
    assert "Test-time augmentation: horizontal flip" in (out / "report.md").read_text()
    pred = tmp_path / "pred"
    proc = run_tool("predict.py", "--config-file", SCRATCH_CFG, "--weights", weights, "--input",
                    os.path.join(root, "test", "0*.jpg"), "--output", str(pred), "--save-json",
                    "MODEL.DEVICE", "cpu", "DATASETS.TUMORSEG_ROOT", root, *tta)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert isinstance(json.load(open(pred / "predictions.json")), list)


# ---------------------------------------------------------------- another tool's results
def test_another_tools_results_score_as_the_toolkits_own(phantom_patients, tmp_path):
    """The truth written as COCO results (RLE, and polygons) scores perfectly through
    ``evaluate --results``; a results file with a foreign image or no masks is refused by name."""
    root, _ = phantom_patients
    source_cfg(root, opts=PHANTOM)
    records = DatasetCatalog.get("lgg_test")
    ids = dataset_category_ids(MetadataCatalog.get("lgg_test"))
    truth = [truth_record(r) for r in records]
    results = to_coco_results(truth, ids)
    back = from_coco_results(json.loads(json.dumps(results)), records, ids)
    assert to_coco_results(back, ids) == results  # the one converter, both ways
    path = tmp_path / "other_tool.json"
    path.write_text(json.dumps(results))
    opts = ["DATASETS.SOURCE.ROOT", root, *PHANTOM, "TEST.BOOTSTRAP.RESAMPLES", "50"]
    proc = run_tool("evaluate.py", "--config-file", UNET_LGG, "--results", str(path), "--split",
                    "test", "--output", str(tmp_path / "eval"), *opts)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.load(open(tmp_path / "eval" / "metrics.json"))
    assert metrics["coco"]["segm"]["AP"] == pytest.approx(100)
    assert metrics["clinical"]["all classes"]["dice_mean_per_image"] == pytest.approx(1)
    assert metrics["threshold_source"].endswith(str(path))
    assert "95% intervals (" in proc.stdout
    # Polygons: a square of 10 x 10 px.
    square = dict(results[0], segmentation=[[10, 10, 20, 10, 20, 20, 10, 20]])
    (pred,) = [p for p in from_coco_results([square], records, ids) if len(p["scores"])]
    assert mask_arrays(pred)[0].sum() == 100
    for bad, words in ((dict(results[0], image_id=10 ** 6), "image_id 1000000 is not an image"),
                       ({k: v for k, v in results[0].items() if k != "segmentation"},
                        "no segmentation: masks are needed")):
        path.write_text(json.dumps(results[:3] + [bad]))
        proc = run_tool("evaluate.py", "--config-file", UNET_LGG, "--results", str(path),
                        "--output", str(tmp_path / "bad"), *opts)
        assert proc.returncode != 0 and f"detection 3: {words}" in proc.stderr


def test_real_tumorseg_test_split_has_110_leak_free_slices(real_root):
    """The README's counts: of the 215 test slices, 105 chain to a train or valid slice."""
    register_tumorseg(real_root)
    leaks = leakage("tumorseg_test", ("tumorseg_train", "tumorseg_valid"))
    assert len(leaks.leak_free) == 110 and len(leaks.units) == 215
    assert len(set(leaks.units.values())) == 198


# ---------------------------------------------------------------- the labels copied
def copy_split(tmp_path, reference_box):
    """Test slices a, b (leaking through train slice c, stored at twice the size) and d (leak-free),
    each with the box (20, 20, 60, 60) of class 0; c's label is ``reference_box`` in its own 192 px
    frame. Registered as copy_test and copy_train (with f, unlike any test slice)."""
    base = blobs(0)
    images = {"a": base, "b": np.roll(base, 2, axis=1),
              "c": cv2.resize(np.roll(base, 4, axis=1), (192, 192)), "d": blobs(1), "f": blobs(3)}
    for name, image in images.items():
        cv2.imwrite(str(tmp_path / f"{name}.png"), image)

    def record(name, box):
        size = images[name].shape[0]
        x0, y0, x1, y1 = box
        return {"file_name": str(tmp_path / f"{name}.png"), "image_id": name, "height": size,
                "width": size, "annotations": [{
                    "bbox": list(box), "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0,
                    "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]], "iscrowd": 0}]}

    square = (20, 20, 60, 60)
    splits = {"copy_test": [record(n, square) for n in "abd"],
              "copy_train": [record("c", reference_box), record("f", (0, 0, 30, 30))]}
    for name, records in splits.items():
        DatasetCatalog.pop(name, None)
        DatasetCatalog.register(name, lambda records=records: copy.deepcopy(records))
        MetadataCatalog.pop(name, None)
        MetadataCatalog.get(name).set(thing_classes=["0", "1"],
                                      thing_dataset_id_to_contiguous_id={1: 0, 2: 1})
    return "copy_test", ("copy_train",)


@pytest.mark.parametrize("shift, leaking_ap50", [(0, 100.0), (56, 0.0)])
def test_the_label_copy_scores_how_the_labels_of_near_identical_slices_agree(
        tmp_path, shift, leaking_ap50):
    """c's label, scaled from 192 px, is a's and b's (AP50 100 on the leaking slices), or moved
    so far that it overlaps them with IoU under 0.5 (AP50 0); d, which leaks from nothing, is
    given nothing (AP 0 on the leak-free slice)."""
    name, references = copy_split(tmp_path, (40 + shift, 40, 120 + shift, 120))
    preds, sources = label_copy_predictions(name, references)
    assert sources == {"a": str(tmp_path / "c.png"), "b": str(tmp_path / "c.png")}
    a, b, d = preds
    assert len(d["scores"]) == 0
    np.testing.assert_allclose(a["boxes"], [[20 + shift / 2, 20, 60 + shift / 2, 60]])
    assert a["masks"].shape == (1, 96, 96) and b["scores"][0] > a["scores"][0] >= 0.7  # b ~ c
    metrics = evaluate_predictions(preds, name, str(tmp_path / "eval"), 0.5, "fixed",
                                   references, FEW)
    free = metrics["leak_free"]
    assert (free["images"], free["leaking_images"]) == (1, 2)
    for task in ("bbox", "segm"):
        assert free["leaking_coco"][task]["AP50-0"] == pytest.approx(leaking_ap50)
        assert free["coco"][task]["AP50"] == 0.0
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "| bbox | class 0 | " in report and "leaking (2)" in report
    with pytest.raises(ValueError, match="needs reference datasets"):
        label_copy_predictions(name, ())


def test_evaluate_label_copy_of_a_fold_scores_its_seen_patients_perfectly(phantom_patients,
                                                                         tmp_path):
    """Fold 3's test split holds a patient of the main split's train or valid split and one of
    its test split: the first's slices copy their own labels (the same files) and score 100; the
    unseen patient's score 0."""
    root, _ = phantom_patients
    opts = ["DATASETS.SOURCE.ROOT", root, *PHANTOM, "TEST.BOOTSTRAP.RESAMPLES", "50"]
    out = tmp_path / "copy"
    proc = run_tool("evaluate.py", "--config-file", UNET_LGG, "--label-copy", "--split",
                    "lgg_fold3_test", "--output", str(out), *opts, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.load(open(out / "metrics.json"))
    free = metrics["leak_free"]
    assert free["leaking_images"] == free["images"] == 8
    assert free["leaking_coco"]["segm"]["AP"] == pytest.approx(100)
    assert free["coco"]["segm"]["AP"] == 0.0
    assert metrics["threshold_source"] == "fixed; labels copied from lgg_train, lgg_valid"
    sources = json.load(open(out / "label_copy_sources.json"))
    assert len(sources) == free["leaking_images"]
    proc = run_tool("evaluate.py", "--config-file", UNET_LGG, "--label-copy", "--output",
                    str(tmp_path / "none"), *opts, "DATASETS.TRAIN", "()", "DATASETS.VAL", "()",
                    timeout=600)
    assert proc.returncode != 0 and "needs reference datasets" in proc.stderr


def test_real_tumorseg_label_copy_figures(real_root, tmp_path):
    """The README's figures ("Part of that gap is in the labels"): copied from their most similar
    train or valid slice, the 105 leaking test slices' labels score bbox AP50 73.53 for any tumor,
    61.35 for the gliomas and 89.90 for class "1"."""
    register_tumorseg(real_root)
    preds, sources = label_copy_predictions("tumorseg_test", ("tumorseg_train", "tumorseg_valid"))
    assert len(sources) == 105
    meta = MetadataCatalog.get("tumorseg_test")
    ids = dataset_category_ids(meta)
    gt = str(tmp_path / "gt.json")
    convert_to_coco_json("tumorseg_test", gt, allow_cached=False)
    coco, _ = coco_metrics(gt, to_coco_results(preds, ids), list(meta.thing_classes),
                           [ids[0], ids[1]], tasks=("bbox",), image_ids=set(sources))
    figures = [coco["bbox"][k] for k in ("agnostic/AP50", "AP50-0", "AP50-1")]
    assert figures == pytest.approx([73.53, 61.35, 89.90], abs=0.005)
