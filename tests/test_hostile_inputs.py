"""Files from others: opening a config, checkpoint or dataset never runs code, exhausts memory or
writes outside the output folder; malformed values are named, never a traceback or a silent pass;
runs and prediction outputs stay consistent after any failure. Every hostile file is built here."""
import errno
import glob
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from tumorseg_d2.checkpoint import SafeCheckpointer, WeightsError, WeightsNotFoundError
from tumorseg_d2.config import get_tumorseg_cfg, merge_config
from tumorseg_d2.data import make_phantom_dataset
from tumorseg_d2.data.check import check_splits
from tumorseg_d2.data.datasets import load_coco_dicts
from tumorseg_d2.engine import Trainer
from tumorseg_d2.files import (FolderLockedError, UnsafeFileError, atomic_write, load_pickle,
                               lock_folder)
from tumorseg_d2.predictor import BatchPredictor, InputImageError

from conftest import SCRATCH_CFG, TINY, run_tool

ANN = "_annotations.coco.json"


# ---------------------------------------------------------------- configs never run code
PYTHON_TAGS = [
    '!!python/object/apply:os.system ["touch {marker}"]',
    '!!python/object/new:subprocess.Popen [["touch", "{marker}"]]',
    '!!python/name:os.system',
    '!!python/object/apply:builtins.exec ["open(\'{marker}\', \'w\')"]',
]


@pytest.mark.parametrize("tag", PYTHON_TAGS)
def test_a_config_with_a_python_tag_is_refused_naming_file_and_line(tmp_path, tag):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(f"SOLVER:\n  BASE_LR: 0.001\nMODEL:\n  WEIGHTS: {tag.format(marker=marker)}\n")
    with pytest.raises(UnsafeFileError, match=rf"{path}, line 4: the tag !!python"):
        merge_config(get_tumorseg_cfg(), str(path))
    assert not marker.exists()


def test_a_python_tag_in_a_base_file_or_a_runs_config_yaml_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "base.yaml").write_text(f"MODEL:\n  WEIGHTS: {PYTHON_TAGS[0].format(marker=marker)}\n")
    (tmp_path / "child.yaml").write_text("_BASE_: base.yaml\nSOLVER:\n  BASE_LR: 0.001\n")
    with pytest.raises(UnsafeFileError, match="base.yaml, line 2"):
        merge_config(get_tumorseg_cfg(), str(tmp_path / "child.yaml"))
    from tumorseg_d2.evaluation.compare import run_config  # reads a run's config.yaml

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tmp_path / "base.yaml", run / "config.yaml")
    with pytest.raises(UnsafeFileError, match="config.yaml, line 2"):
        run_config(str(run))
    assert not marker.exists()


def test_detectron2_itself_no_longer_falls_back_to_unsafe_yaml(tmp_path):
    """The patched build: plain Detectron2 code that merges a config file is safe too."""
    import yaml
    from detectron2.config import get_cfg

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(f"MODEL:\n  WEIGHTS: {PYTHON_TAGS[0].format(marker=marker)}\n")
    with pytest.raises(yaml.constructor.ConstructorError):
        get_cfg().merge_from_file(str(path))
    assert not marker.exists()


def test_train_net_refuses_a_python_tag_before_anything_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(f"_BASE_: {SCRATCH_CFG}\nOUTPUT_DIR: {PYTHON_TAGS[0].format(marker=marker)}\n")
    proc = run_tool("train_net.py", "--config-file", str(path), timeout=300)
    assert proc.returncode != 0
    assert "line 2: the tag !!python/object/apply:os.system is refused" in proc.stderr
    assert not marker.exists()


def alias_bomb(levels, width=10):
    lines = ["a0: &a0 [" + ", ".join(["lol"] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("text", [
    alias_bomb(9),  # 10^9 values from 600 bytes
    alias_bomb(18, width=3),  # 3^18
    "SOLVER:\n  STEPS: &s [*s, 1]\n",  # an alias inside itself
])
def test_alias_bombs_and_cycles_are_refused_without_expanding(tmp_path, text):
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    assert path.stat().st_size < 1024
    with pytest.raises(UnsafeFileError, match="values, over the limit|cycle"):
        merge_config(get_tumorseg_cfg(), str(path))


def test_an_oversized_config_is_refused(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("# " + "x" * (2 << 20) + "\n")
    with pytest.raises(UnsafeFileError, match="is 2.0 MB; a config is a few kB"):
        merge_config(get_tumorseg_cfg(), str(path))


# ---------------------------------------------------------------- weights never run code
class _Reduce:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@pytest.mark.parametrize("payload, asked", [
    (_Reduce(os.system, ("touch {marker}",)), "posix.system"),
    (_Reduce(eval, ("open('{marker}', 'w')",)), "(__builtin__|builtins).eval"),
    (_Reduce(subprocess.call, (["touch", "{marker}"],)), "(subprocess|commands).call"),
    (_Reduce(shutil.rmtree, ("{marker}",)), "shutil.rmtree"),
])
def test_a_pkl_that_would_run_code_is_refused_naming_file_and_callable(tmp_path, payload, asked):
    marker = tmp_path / "pwned"
    payload.args = tuple(a.format(marker=marker) if isinstance(a, str) else
                         [x.format(marker=marker) for x in a] for a in payload.args)
    path = tmp_path / "model_final.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {"w": np.zeros(3, np.float32), "x": payload},
                     "__author__": "Detectron2 Model Zoo"}, f, protocol=2)
    with pytest.raises(UnsafeFileError, match=rf"{path} asks to load {asked}"):
        load_pickle(str(path))
    model = Trainer.build_model(merge_config(get_tumorseg_cfg(), SCRATCH_CFG, ["MODEL.DEVICE", "cpu"]))
    with pytest.raises(UnsafeFileError):
        SafeCheckpointer(model).load(str(path))
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_a_genuine_model_zoo_pkl_loads(tmp_path, protocol):
    path = tmp_path / "zoo.pkl"
    weights = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1, 2], np.int64)}
    with open(path, "wb") as f:
        pickle.dump({"model": weights, "__author__": "Detectron2 Model Zoo"}, f, protocol=protocol)
    loaded = load_pickle(str(path))
    np.testing.assert_array_equal(loaded["model"]["a"], weights["a"])


def test_a_pth_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(2)}, "x": _Reduce(os.system, (f"touch {marker}",))}, path)
    model = Trainer.build_model(merge_config(get_tumorseg_cfg(), SCRATCH_CFG, ["MODEL.DEVICE", "cpu"]))
    with pytest.raises(WeightsError, match="cannot be read"):
        SafeCheckpointer(model).load(str(path))
    assert not marker.exists()


# ---------------------------------------------------------------- datasets: nothing written outside
@pytest.fixture
def phantom(tmp_path):
    return make_phantom_dataset(str(tmp_path / "data"), counts={"train": 4, "valid": 2, "test": 2})


def edit_json(split_dir, edit):
    path = os.path.join(split_dir, ANN)
    coco = json.load(open(path))
    edit(coco)
    with open(path, "w") as f:
        json.dump(coco, f)  # allow_nan: NaN and Infinity are written as such
    return coco


def codes_of(findings):
    return {f.code: f.items for f in findings}


@pytest.mark.parametrize("escape", ["relative", "absolute", "through_a_subfolder"])
def test_fix_never_writes_outside_its_output(phantom, tmp_path, escape):
    """A file_name that leaves its split folder is an error naming the image; --fix drops it and
    writes nothing outside OUT (it once overwrote an input image through ../)."""
    split = os.path.join(phantom, "train")
    victim_dir = tmp_path / "victim"
    victim_dir.mkdir()
    victim = victim_dir / "x.jpg"
    shutil.copy(glob.glob(os.path.join(split, "*.jpg"))[0], victim)
    before = victim.read_bytes()
    relative = os.path.relpath(victim, split)  # ../../../victim/x.jpg
    name = {"relative": relative, "absolute": str(victim),
            "through_a_subfolder": os.path.join("sub", "..", relative)}[escape]
    coco = edit_json(split, lambda c: c["images"][0].update(file_name=name))
    proc = run_tool("check_dataset.py", split, "--quick", "--fix", str(tmp_path / "fixed"),
                    timeout=300)
    assert proc.returncode == 1
    assert "unsafe_file_name" in proc.stdout and f"image {coco['images'][0]['id']}" in proc.stdout
    assert victim.read_bytes() == before
    written = [os.path.join(d, f) for d, _, files in os.walk(tmp_path) for f in files]
    assert [p for p in written if not p.startswith((str(tmp_path / "fixed"), phantom,
                                                    str(victim_dir)))] == []
    assert os.listdir(victim_dir) == ["x.jpg"]
    assert "unsafe_file_name" in open(tmp_path / "fixed" / "fix_log.md").read()


def test_fix_output_inside_or_around_an_input_is_refused(phantom):
    for out in (os.path.join(phantom, "train", "fixed"), os.path.dirname(phantom)):
        proc = run_tool("check_dataset.py", os.path.join(phantom, "train"), "--quick", "--fix", out,
                        timeout=300)
        assert proc.returncode != 0
        assert "input folder" in proc.stderr


def test_two_inputs_with_one_split_name_are_refused(phantom, tmp_path):
    other = tmp_path / "other" / "train"
    shutil.copytree(os.path.join(phantom, "train"), other)
    proc = run_tool("check_dataset.py", os.path.join(phantom, "train"), str(other), "--quick",
                    timeout=300)
    assert proc.returncode != 0
    assert "Two inputs resolve to the split name 'train'" in proc.stderr


# ---------------------------------------------------------------- malformed values are named
def _set_ann(key, value, index=0):
    return lambda c: c["annotations"][index].update({key: value})


MALFORMED = [  # (edit, finding code, what the item must name)
    (_set_ann("bbox", [float("nan"), 1, 10, 10]), "malformed_annotation", "bbox"),
    (_set_ann("bbox", [1, 1, float("inf"), 10]), "malformed_annotation", "bbox"),
    (_set_ann("bbox", [1, "2", 10, 10]), "malformed_annotation", "bbox"),
    (_set_ann("bbox", [1, None, 10, 10]), "malformed_annotation", "bbox"),
    (_set_ann("bbox", [1, 2, 10]), "malformed_annotation", "not 4 finite numbers"),
    (_set_ann("segmentation", [[1, 2, float("nan"), 4, 5, 6]]), "malformed_annotation", "polygons"),
    (_set_ann("segmentation", [[1, 2, 3, 4, 5]]), "malformed_annotation", "odd number"),
    (_set_ann("segmentation", {"size": [10], "counts": "x"}), "malformed_annotation", "RLE size"),
    (_set_ann("category_id", "1"), "malformed_annotation", "category_id '1'"),
    (_set_ann("image_id", 1.5), "malformed_annotation", "image_id 1.5"),
    (_set_ann("id", None), "malformed_annotation", "id None"),
    (lambda c: c["annotations"].append(None), "malformed_annotation", "not an object"),
    (lambda c: c["images"][0].update(id="7"), "malformed_image", "id '7'"),
    (lambda c: c["images"][0].update(width="640"), "malformed_image", "width '640'"),
    (lambda c: c["images"][0].update(height=640.5), "malformed_image", "height 640.5"),
    (lambda c: c["images"].append(None), "malformed_image", "not an object"),
    (lambda c: c["categories"].append({"id": "3", "name": "x"}), "malformed_category", "'3'"),
]


@pytest.mark.parametrize("edit, code, named", MALFORMED)
def test_malformed_values_are_named_and_loading_leaves_them_out(phantom, edit, code, named):
    split = os.path.join(phantom, "train")
    edit_json(split, edit)
    findings, details = check_splits({"train": (os.path.join(split, ANN), split)}, deep=False)
    found = codes_of(findings)
    assert code in found and any(named in item for item in found[code]), found.get(code)
    assert next(f for f in findings if f.code == code).severity == "error"
    # What the loader gives training and evaluation (DATASETS.CHECK warn): no crash, entry left out.
    dicts = load_coco_dicts(os.path.join(split, ANN), split)
    for record in dicts:
        for ann in record["annotations"]:
            assert len(ann["bbox"]) == 4 and all(np.isfinite(ann["bbox"]))
            assert isinstance(ann["category_id"], int)


def test_rle_masks_are_converted_to_polygons_and_reported(phantom):
    from pycocotools import mask as mask_util

    split = os.path.join(phantom, "train")
    mask = np.zeros((64, 64), np.uint8, order="F")
    mask[10:30, 20:50] = 1
    rle = mask_util.encode(mask)
    coco = edit_json(split, _set_ann("segmentation", {"size": [64, 64],
                                                      "counts": rle["counts"].decode()}))
    findings, _ = check_splits({"train": (os.path.join(split, ANN), split)}, deep=False)
    assert codes_of(findings)["rle_segmentation"] == [
        f"annotation {coco['annotations'][0]['id']} (image {coco['annotations'][0]['image_id']})"]
    ann_id = coco["annotations"][0]["image_id"]
    record = next(r for r in load_coco_dicts(os.path.join(split, ANN), split)
                  if r["image_id"] == ann_id)
    polygon = np.array(record["annotations"][0]["segmentation"][0]).reshape(-1, 2)
    assert polygon[:, 0].min() == 20 and polygon[:, 0].max() == 49
    assert polygon[:, 1].min() == 10 and polygon[:, 1].max() == 29


def test_deep_and_huge_json_are_refused_in_bounded_time(phantom, monkeypatch):
    split = os.path.join(phantom, "train")
    path = os.path.join(split, ANN)
    with open(path, "w") as f:
        f.write("[" * 200_000 + "]" * 200_000)
    findings, _ = check_splits({"train": (path, split)}, deep=False)
    assert codes_of(findings)["unsafe_json"] and "nested too deeply" in findings[0].message
    with open(path, "w") as f:
        json.dump({"images": [], "annotations": [], "categories": [], "pad": "x" * (3 << 20)}, f)
    monkeypatch.setenv("TUMORSEG_MAX_JSON_MB", "2")
    findings, _ = check_splits({"train": (path, split)}, deep=False)
    assert "over the limit of 2 MB" in findings[0].message and "TUMORSEG_MAX_JSON_MB" in \
        findings[0].message


@pytest.mark.parametrize("kind", ["gray16", "rgb48", "float", "multiframe"])
def test_images_that_are_not_8_bit_are_errors_in_a_split(phantom, kind):
    split = os.path.join(phantom, "train")
    coco = json.load(open(os.path.join(split, ANN)))
    name = coco["images"][0]["file_name"]
    gray = cv2.imread(os.path.join(split, name), cv2.IMREAD_GRAYSCALE)
    target = os.path.splitext(name)[0] + (".tif" if kind in ("float", "multiframe") else ".png")
    write_deep_image(os.path.join(split, target), gray, kind)
    edit_json(split, lambda c: c["images"][0].update(file_name=target))
    findings, _ = check_splits({"train": (os.path.join(split, ANN), split)}, deep=True, workers=1)
    items = codes_of(findings)["not_8bit"]
    assert len(items) == 1 and items[0].startswith(target)


def write_deep_image(path, gray, kind):
    if kind == "gray16":
        cv2.imwrite(path, gray.astype(np.uint16) * 257)
    elif kind == "rgb48":
        cv2.imwrite(path, np.repeat(gray[:, :, None], 3, 2).astype(np.uint16) * 257)
    elif kind == "float":
        Image.fromarray(gray.astype(np.float32)).save(path)
    else:
        Image.fromarray(gray).save(path, save_all=True, append_images=[Image.fromarray(gray)] * 2)


def test_training_with_check_warn_leaves_malformed_entries_out(phantom, tmp_path):
    """DATASETS.CHECK warn must never turn a malformed value into a crash later."""
    edit_json(os.path.join(phantom, "train"), _set_ann("bbox", [float("nan"), 1, 10, 10]))
    edit_json(os.path.join(phantom, "train"), _set_ann("category_id", "2", index=1))
    edit_json(os.path.join(phantom, "valid"), lambda c: c["annotations"].append(None))
    proc = run_tool("train_net.py", "--config-file", SCRATCH_CFG, *TINY, "SOLVER.MAX_ITER", "2",
                    "TEST.EVAL_PERIOD", "0", "DATASETS.CHECK", "warn", "DATASETS.TEST", "()",
                    "DATASETS.TUMORSEG_ROOT", phantom, "OUTPUT_DIR", str(tmp_path / "run"),
                    timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "malformed_annotation" in proc.stdout + proc.stderr
    proc = run_tool("train_net.py", "--config-file", SCRATCH_CFG, *TINY, "SOLVER.MAX_ITER", "2",
                    "DATASETS.TUMORSEG_ROOT", phantom, "OUTPUT_DIR", str(tmp_path / "run2"),
                    timeout=600)
    assert proc.returncode != 0 and "malformed_annotation" in proc.stderr  # refuse (default)


def test_evaluate_checks_the_split_it_reads(checkpoint, tmp_path):
    weights, root = checkpoint
    data = tmp_path / "data"
    shutil.copytree(root, data)
    edit_json(str(data / "valid"), lambda c: c["annotations"].append({"id": 999}))
    base = ["--config-file", SCRATCH_CFG, "--weights", weights, "--output", str(tmp_path / "ev")]
    opts = ["MODEL.DEVICE", "cpu", "DATASETS.TUMORSEG_ROOT", str(data)]
    proc = run_tool("evaluate.py", *base, "--split", "valid", *opts, timeout=600)
    assert proc.returncode != 0
    assert "tumorseg_valid: malformed_annotation" in proc.stderr
    proc = run_tool("visualize.py", *base, "--split", "valid", "--num", "1", *opts, timeout=600)
    assert proc.returncode != 0
    assert "tumorseg_valid: malformed_annotation" in proc.stderr


# ---------------------------------------------------------------- weights and runs
def test_evaluation_refuses_a_checkpoint_of_another_class_count(checkpoint, tmp_path):
    weights, root = checkpoint  # two classes
    one_class = ["MODEL.ROI_HEADS.NUM_CLASSES", "1", "DATASETS.TRAIN", "('tumorseg_agnostic_train',)",
                 "DATASETS.VAL", "('tumorseg_agnostic_valid',)",
                 "DATASETS.TEST", "('tumorseg_agnostic_test',)"]
    cfg = merge_config(get_tumorseg_cfg(), SCRATCH_CFG,
                       ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", weights] + one_class)
    with pytest.raises(WeightsError, match="trained for 2 class.*NUM_CLASSES 1"):
        BatchPredictor(cfg, num_workers=0)
    three = merge_config(get_tumorseg_cfg(), SCRATCH_CFG,
                         ["MODEL.DEVICE", "cpu", "MODEL.ROI_HEADS.NUM_CLASSES", "3"])
    path = tmp_path / "three.pth"
    torch.save({"model": Trainer.build_model(three).state_dict()}, path)
    proc = run_tool("train_net.py", "--config-file", SCRATCH_CFG, "--eval-only", *TINY,
                    "DATASETS.TUMORSEG_ROOT", root, "MODEL.WEIGHTS", str(path),
                    "OUTPUT_DIR", str(tmp_path / "eval"), timeout=600)
    assert proc.returncode != 0
    assert "trained for 3 class(es), but this config has MODEL.ROI_HEADS.NUM_CLASSES 2" in proc.stderr
    # Fine-tuning (training) still loads it: the class layers are re-initialised there.
    model = Trainer.build_model(merge_config(get_tumorseg_cfg(), SCRATCH_CFG, ["MODEL.DEVICE", "cpu"]))
    SafeCheckpointer(model).load(str(path))


HOLD_LOCK = ("import sys, time; from tumorseg_d2.files import lock_folder; lock_folder(sys.argv[1]); "
             "print('locked', flush=True); time.sleep(600)")


def test_a_second_run_in_one_folder_is_refused_and_a_stale_lock_is_taken_over(tmp_path,
                                                                                phantom_root):
    folder = tmp_path / "run"
    folder.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FolderLockedError, match=f"pid {holder.pid} on "):
            lock_folder(str(folder))
        proc = run_tool("train_net.py", "--config-file", SCRATCH_CFG, *TINY,
                        "DATASETS.TUMORSEG_ROOT", phantom_root, "OUTPUT_DIR", str(folder),
                        timeout=300)
        assert proc.returncode != 0 and f"is in use by another training (pid {holder.pid}" \
            in proc.stderr
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    # The killed run's lock is stale: taken over, naming it.
    assert f"pid {holder.pid}" in lock_folder(str(folder))


def test_resume_with_last_checkpoint_naming_a_missing_file(tmp_path):
    model = Trainer.build_model(merge_config(get_tumorseg_cfg(), SCRATCH_CFG, ["MODEL.DEVICE", "cpu"]))
    (tmp_path / "model_0000004.pth").write_bytes(b"")
    (tmp_path / "last_checkpoint").write_text("model_0000009.pth")
    with pytest.raises(WeightsNotFoundError, match="names model_0000009.pth, which is not in") as e:
        SafeCheckpointer(model, save_dir=str(tmp_path)).resume_or_load("", resume=True)
    assert "model_0000004.pth" in str(e.value) and "delete last_checkpoint" in str(e.value)


@pytest.mark.parametrize("failure", [
    OSError(errno.ENOSPC, "No space left on device"),
    OSError(errno.EDQUOT, "Disk quota exceeded"),
    RuntimeError("[enforce fail at inline_container.cc:595] . PytorchStreamWriter failed writing "
                 "file data/0: file write failed"),
])
def test_a_full_disk_while_saving_says_so_and_keeps_the_previous_file(tmp_path, failure):
    path = tmp_path / "model_final.pth"
    path.write_bytes(b"previous")

    def write(f):
        f.write(b"half")
        raise failure
    with pytest.raises(OSError, match=f"Disk full: model_final.pth could not be written in {tmp_path}"):
        atomic_write(str(path), write)
    assert path.read_bytes() == b"previous" and os.listdir(tmp_path) == ["model_final.pth"]


# ---------------------------------------------------------------- prediction outputs
@pytest.fixture(scope="module")
def predict_setup(phantom_demo, tmp_path_factory):
    out, _ = phantom_demo
    inputs = tmp_path_factory.mktemp("in")
    for path in sorted(glob.glob(str(out / "phantom" / "tumorseg" / "test" / "*.jpg")))[:2]:
        shutil.copy(path, inputs)
    return str(out / "train" / "model_best.pth"), inputs


def predict(weights, inputs, output, *extra):
    from tumorseg_d2.cli.predict import main

    return main(["--config-file", SCRATCH_CFG, "--weights", weights, "--input", str(inputs),
                 "--output", str(output), "--save-json", *extra, "MODEL.DEVICE", "cpu"])


def test_rerun_into_a_used_folder_needs_overwrite_and_replaces_every_file(predict_setup, tmp_path):
    weights, inputs = predict_setup
    out = tmp_path / "out"
    predict(weights, inputs, out)
    assert {"predict_run.json", "predictions.json"} <= set(os.listdir(out))
    with pytest.raises(SystemExit, match="pass --overwrite"):
        predict(weights, inputs, out)
    (out / "00007_from_an_earlier_input.png").write_bytes(b"old")
    (out / "errors.json").write_text("[]")
    predict(weights, inputs, out, "--overwrite")
    assert not (out / "00007_from_an_earlier_input.png").exists()
    assert not (out / "errors.json").exists()  # this run had no error
    foreign = tmp_path / "thesis"
    foreign.mkdir()
    (foreign / "chapter1.tex").write_text("precious")
    with pytest.raises(SystemExit, match="not written by tools/predict.py"):
        predict(weights, inputs, foreign, "--overwrite")
    assert (foreign / "chapter1.tex").read_text() == "precious"


def test_output_inside_input_is_refused(predict_setup):
    weights, inputs = predict_setup
    for out in (inputs / "pred", inputs):
        with pytest.raises(UnsafeFileError, match="is inside the input folder"):
            predict(weights, inputs, out)


def test_a_killed_prediction_leaves_a_folder_marked_incomplete(predict_setup, tmp_path,
                                                                monkeypatch):
    import tumorseg_d2.cli.predict as predict_module

    weights, inputs = predict_setup

    def killed(*args):
        raise KeyboardInterrupt  # as a kill between two overlays
    monkeypatch.setattr(predict_module, "save_rgb", killed)
    with pytest.raises(KeyboardInterrupt):
        predict(weights, inputs, tmp_path / "out")
    assert "INCOMPLETE" in os.listdir(tmp_path / "out")
    assert not glob.glob(str(tmp_path / "out" / "*.json"))
    monkeypatch.undo()
    predict(weights, inputs, tmp_path / "out", "--overwrite")  # the rerun that the marker asks for
    assert "INCOMPLETE" not in os.listdir(tmp_path / "out")


def test_batch_size_zero_is_a_usage_error(predict_setup, tmp_path, capsys):
    weights, inputs = predict_setup
    with pytest.raises(SystemExit) as e:
        predict(weights, inputs, tmp_path / "out", "--batch-size", "0")
    assert e.value.code == 2 and "0 is not a positive number of images" in capsys.readouterr().err


def test_extreme_aspect_ratios_deep_and_multiframe_images_never_lose_the_run(predict_setup,
                                                                              tmp_path):
    weights, inputs = predict_setup
    folder = tmp_path / "in"
    shutil.copytree(inputs, folder)
    gray = cv2.imread(str(sorted(folder.iterdir())[0]), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(folder / "wide.png"), np.zeros((10, 10000), np.uint8))
    cv2.imwrite(str(folder / "tall.png"), np.zeros((10000, 10), np.uint8))
    write_deep_image(str(folder / "rgb48.png"), gray, "rgb48")
    write_deep_image(str(folder / "pages.tif"), gray, "multiframe")
    with pytest.raises(SystemExit) as e:
        predict(weights, folder, tmp_path / "out", "--batch-size", "3")
    assert e.value.code == 1
    errors = {os.path.basename(x["file_name"]): x["error"]
              for x in json.load(open(tmp_path / "out" / "errors.json"))}
    assert "too thin to predict on" in errors["wide.png"] and "too thin" in errors["tall.png"]
    assert "48-bit" in errors["rgb48.png"] and "3 frames" in errors["pages.tif"]
    assert len(glob.glob(str(tmp_path / "out" / "*.png"))) == 2  # the two slices were predicted
    summary = json.load(open(tmp_path / "out" / "predict_run.json"))
    assert (summary["predicted"], summary["errors"]) == (2, 4)


def test_exif_orientation_is_applied_as_in_training(predict_setup, tmp_path):
    """A non-square JPEG stored sideways with an EXIF rotation: prediction sees it upright, as
    Detectron2's read_image does for training and evaluation, and the overlay matches."""
    from detectron2.data.detection_utils import read_image

    weights, inputs = predict_setup
    upright = cv2.imread(str(sorted(inputs.iterdir())[0]))[:, 40:-40]  # 640 x 560
    folder = tmp_path / "in"
    folder.mkdir()
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(upright[:, :, ::-1], k=1)))
    exif = Image.Exif()
    exif[274] = 6  # rotate 90 degrees clockwise on display
    stored.save(folder / "sideways.jpg", exif=exif, quality=95)
    expected = read_image(str(folder / "sideways.jpg"), format="RGB").shape[:2]
    assert expected == upright.shape[:2] != stored.size[::-1]
    cfg = merge_config(get_tumorseg_cfg(), SCRATCH_CFG, ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS",
                                                         weights])
    (result,) = BatchPredictor(cfg, num_workers=0)([str(folder / "sideways.jpg")], masks="array")
    assert (result["height"], result["width"]) == expected
    assert result["masks"].shape[1:] == expected
    predict(weights, folder, tmp_path / "out")
    assert cv2.imread(str(tmp_path / "out" / "00000_sideways.png")).shape[:2] == expected


def test_each_deep_image_is_named_by_the_predictor(predict_setup, tmp_path):
    weights, inputs = predict_setup
    gray = cv2.imread(str(sorted(inputs.iterdir())[0]), cv2.IMREAD_GRAYSCALE)
    cfg = merge_config(get_tumorseg_cfg(), SCRATCH_CFG, ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS",
                                                         weights])
    predictor = BatchPredictor(cfg, num_workers=0)
    for kind, problem in [("gray16", "16-bit or float"), ("rgb48", "48-bit"),
                          ("float", "16-bit or float"), ("multiframe", "3 frames")]:
        path = str(tmp_path / f"{kind}.{'tif' if kind in ('float', 'multiframe') else 'png'}")
        write_deep_image(path, gray, kind)
        with pytest.raises(InputImageError, match=problem):
            predictor([path])
