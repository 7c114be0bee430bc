"""Config keys tumorseg-d2 adds to Detectron2's defaults, and the config set-up shared by the tools."""
import difflib
import os
import re

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

from .files import load_yaml
from .modeling.pixel_seg import LOSSES  # also registers the pixel-segmentation meta-architectures
from .modeling.gather_roi_align import ROI_ALIGNS

OPTIMIZERS = ("SGD", "ADAM", "ADAMW")


def add_tumorseg_config(cfg):
    """Add tumorseg-d2's keys (with their defaults) to a Detectron2 config, in place."""
    # Optimizer: "SGD" (Detectron2's), "ADAM" or "ADAMW". BETAS apply to Adam and AdamW.
    cfg.SOLVER.OPTIMIZER = "SGD"
    cfg.SOLVER.BETAS = (0.9, 0.999)
    # Periodic checkpoints (model_<iter>.pth) kept on disk: the most recent N (0: all, as
    # Detectron2). model_best.pth and model_final.pth are never deleted.
    cfg.SOLVER.CHECKPOINTS_TO_KEEP = 0
    # Root of the TumorSeg export; empty: $DETECTRON2_DATASETS/tumorseg, else datasets/tumorseg.
    cfg.DATASETS.TUMORSEG_ROOT = ""
    # A dataset registered by name from this config (tumorseg_d2/data/sources.py, README "Your
    # own data"): NAME gives <NAME>_{train,valid,test} and <NAME>_fold<k>_{train,valid,test}.
    cfg.DATASETS.SOURCE = CN()
    cfg.DATASETS.SOURCE.NAME = ""  # empty: none
    cfg.DATASETS.SOURCE.FORMAT = "masks"  # "masks" (image/mask-pair folders) or "coco"
    cfg.DATASETS.SOURCE.ROOT = ""  # "${DETECTRON2_DATASETS}" in it: that variable, or "datasets"
    # COCO: the json and the image folder, relative to ROOT; "{split}" in them: given splits.
    cfg.DATASETS.SOURCE.JSON = ""
    cfg.DATASETS.SOURCE.IMAGES = ""
    # Masks: <image stem><MASK_SUFFIX>.<ext> beside each image, or the same relative path under
    # ROOT/MASK_DIR (images then under ROOT/IMAGE_DIR).
    cfg.DATASETS.SOURCE.MASK_SUFFIX = "_mask"
    cfg.DATASETS.SOURCE.MASK_DIR = ""
    cfg.DATASETS.SOURCE.IMAGE_DIR = ""
    cfg.DATASETS.SOURCE.CLASSES = ()  # masks: default ("tumor",); COCO: by category name
    cfg.DATASETS.SOURCE.MASK_VALUES = ()  # label masks: the pixel value of each class
    cfg.DATASETS.SOURCE.MIN_AREA = 0  # mask regions of fewer pixels are dropped (and counted)
    # Regular expression that finds the patient id in an image's path relative to ROOT (to
    # ROOT/IMAGE_DIR for masks; group 1 if any), e.g. "TCGA_[A-Z0-9]+_[A-Z0-9]+" or "^[^/]+" (a folder per patient); empty: split by
    # image. SLICE_PATTERN finds the slice number in the file name.
    cfg.DATASETS.SOURCE.PATIENT_PATTERN = ""
    cfg.DATASETS.SOURCE.SLICE_PATTERN = r"(\d+)$"
    cfg.DATASETS.SOURCE.SPLIT_FRACTIONS = (0.7, 0.15, 0.15)  # train, valid, test, by patient
    cfg.DATASETS.SOURCE.SPLIT_SEED = 0
    cfg.DATASETS.SOURCE.FOLDS = 5  # cross-validation folds registered (0: none)
    # Drop tumor-free slices from training (Detectron2's FILTER_EMPTY_ANNOTATIONS, per dataset).
    # False: they train as negatives, which teaches the model to stay silent on healthy slices.
    cfg.DATASETS.SOURCE.FILTER_EMPTY = False
    # Splits evaluated during training (checkpoint selection, validation loss, early stopping).
    # DATASETS.TEST is used only for the final report and --eval-only, never for a choice.
    cfg.DATASETS.VAL = ("tumorseg_valid",)
    # Structure checks of every dataset at start-up (tools/check_dataset.py --quick): "refuse"
    # stops on errors, "warn" logs them and goes on, "off" skips the checks.
    cfg.DATASETS.CHECK = "refuse"
    # A training image that cannot be read: True logs its name and takes the next sample; False
    # stops the run with the name (evaluation always stops: skipping would change the figures).
    cfg.DATALOADER.SKIP_BAD_IMAGES = True
    # Training augmentation beyond Detectron2's INPUT.CROP, resize and RANDOM_FLIP: brightness and
    # contrast each scaled by a factor drawn from [1 - j, 1 + j] (tumorseg_d2/data/loader.py,
    # train_mapper); 0: off.
    cfg.INPUT.INTENSITY_JITTER = 0.0
    # Validation during training, every TEST.EVAL_PERIOD iterations.
    cfg.TEST.VAL_LOSS = True  # also compute the mean training losses on DATASETS.VAL
    cfg.TEST.BEST_METRIC = "segm/AP50"  # "" disables model_best.pth
    cfg.TEST.BEST_MODE = "max"
    # Stop when BEST_METRIC has not improved for this many evaluations (0: never).
    cfg.TEST.EARLY_STOP_PATIENCE = 0
    # Confidence intervals of the final report (tumorseg_d2/evaluation/bootstrap.py): resamples of
    # patients (or pseudo-patients) drawn with a fixed seed; 0 resamples: no intervals.
    cfg.TEST.BOOTSTRAP = CN()
    cfg.TEST.BOOTSTRAP.RESAMPLES = 1000
    cfg.TEST.BOOTSTRAP.SEED = 0
    cfg.TEST.BOOTSTRAP.LEVEL = 0.95
    # Mixed-precision training (SOLVER.AMP.ENABLED, tumorseg_d2/engine/amp.py): "bfloat16" runs
    # on CPUs with bf16 (AVX-512 bf16, AMX) and recent GPUs; "float16" on CUDA, with loss scaling.
    cfg.SOLVER.AMP.PRECISION = "float16"
    # An exponential moving average of the weights (tumorseg_d2/engine/ema.py; d2go's keys), which
    # validation judges and evaluation and prediction load; DECAY: the weight of the average at
    # each step (0.998 averages over about the last 1 / (1 - 0.998) = 500 iterations).
    cfg.MODEL_EMA = CN()
    cfg.MODEL_EMA.ENABLED = False
    cfg.MODEL_EMA.DECAY = 0.999
    # The model that trains and validates (tumorseg_d2/engine/trainer.py): "gather" pools the
    # regions of the box and mask heads by weighted gathers on the CPU
    # (tumorseg_d2/modeling/gather_roi_align.py), the same RoIAlign up to float rounding with a
    # backward pass several times faster than torchvision's ("torchvision": Detectron2's own);
    # CHANNELS_LAST keeps the convolutions' weights and activations channels-last, the layout
    # oneDNN's CPU kernels prefer. Neither changes the checkpoints. Inference picks its own
    # (tools/predict.py --roi-align; BatchPredictor is channels-last).
    cfg.MODEL.ROI_ALIGN = "torchvision"
    cfg.MODEL.CHANNELS_LAST = False
    # The semantic-segmentation baselines (tumorseg_d2/modeling/pixel_seg.py).
    cfg.MODEL.PIXEL_SEG = CN()
    cfg.MODEL.PIXEL_SEG.INPUT_SIZE = 256  # the network sees S x S
    cfg.MODEL.PIXEL_SEG.IN_CHANNELS = 1  # 1: the mean of the image's channels; 3: all three
    cfg.MODEL.PIXEL_SEG.LOSS = "BCE"  # "BCE", "DICE" or "BCE+DICE"
    cfg.MODEL.PIXEL_SEG.THRESHOLD = 0.5  # probability at and above which a pixel is tumor
    cfg.MODEL.PIXEL_SEG.MIN_AREA = 0  # components of fewer pixels (at the slice's size) dropped
    cfg.MODEL.PIXEL_SEG.DROPOUT = 0.1  # U-Net


def get_tumorseg_cfg():
    """Detectron2's default config with tumorseg-d2's keys added."""
    cfg = get_cfg()
    add_tumorseg_config(cfg)
    return cfg


def validate_config(cfg):
    """Reject values that would fail late or silently; messages name the key and the fix."""
    if cfg.SOLVER.OPTIMIZER.upper() not in OPTIMIZERS:
        raise ValueError(f"SOLVER.OPTIMIZER is {cfg.SOLVER.OPTIMIZER!r}; use one of {OPTIMIZERS}.")
    for key, value in (("SOLVER.BASE_LR", cfg.SOLVER.BASE_LR), ("SOLVER.MAX_ITER", cfg.SOLVER.MAX_ITER),
                       ("SOLVER.IMS_PER_BATCH", cfg.SOLVER.IMS_PER_BATCH)):
        if value <= 0:
            raise ValueError(f"{key} is {value}; it must be positive.")
    if cfg.DATASETS.CHECK not in ("refuse", "warn", "off"):
        raise ValueError(f"DATASETS.CHECK is {cfg.DATASETS.CHECK!r}; use 'refuse', 'warn' or 'off'.")
    if cfg.SOLVER.CHECKPOINTS_TO_KEEP < 0:
        raise ValueError(f"SOLVER.CHECKPOINTS_TO_KEEP is {cfg.SOLVER.CHECKPOINTS_TO_KEEP}; use 0 "
                         "(keep every checkpoint) or the number of recent ones to keep.")
    if cfg.MODEL.PIXEL_SEG.LOSS.upper() not in LOSSES:
        raise ValueError(f"MODEL.PIXEL_SEG.LOSS is {cfg.MODEL.PIXEL_SEG.LOSS!r}; use one of {LOSSES}.")
    if not 0 <= cfg.INPUT.INTENSITY_JITTER < 1:
        raise ValueError(f"INPUT.INTENSITY_JITTER is {cfg.INPUT.INTENSITY_JITTER}; use a fraction in "
                         "[0, 1), e.g. 0.2 for factors in [0.8, 1.2] (0: off).")
    if cfg.MODEL.ROI_ALIGN not in ROI_ALIGNS:
        raise ValueError(f"MODEL.ROI_ALIGN is {cfg.MODEL.ROI_ALIGN!r}; use one of {ROI_ALIGNS}.")
    if cfg.TEST.BEST_MODE not in ("max", "min"):
        raise ValueError(f"TEST.BEST_MODE is {cfg.TEST.BEST_MODE!r}; use 'max' or 'min'.")
    if cfg.TEST.EARLY_STOP_PATIENCE and not cfg.TEST.BEST_METRIC:
        raise ValueError("TEST.EARLY_STOP_PATIENCE needs TEST.BEST_METRIC (e.g. 'segm/AP50').")
    if cfg.TEST.EARLY_STOP_PATIENCE and cfg.TEST.EVAL_PERIOD <= 0:
        raise ValueError("TEST.EARLY_STOP_PATIENCE needs TEST.EVAL_PERIOD > 0.")
    if cfg.SOLVER.AMP.PRECISION not in ("bfloat16", "float16"):
        raise ValueError(f"SOLVER.AMP.PRECISION is {cfg.SOLVER.AMP.PRECISION!r}; use 'bfloat16' "
                         "(CPU or GPU) or 'float16' (CUDA).")
    if not 0 < cfg.MODEL_EMA.DECAY < 1:
        raise ValueError(f"MODEL_EMA.DECAY is {cfg.MODEL_EMA.DECAY}; use a value in (0, 1), e.g. "
                         "0.999 (an average over about the last 1000 iterations).")
    if cfg.TEST.BOOTSTRAP.RESAMPLES < 0 or not 0 < cfg.TEST.BOOTSTRAP.LEVEL < 1:
        raise ValueError(f"TEST.BOOTSTRAP.RESAMPLES is {cfg.TEST.BOOTSTRAP.RESAMPLES} and LEVEL "
                         f"{cfg.TEST.BOOTSTRAP.LEVEL}; use RESAMPLES >= 0 (0: no intervals) and "
                         "0 < LEVEL < 1 (e.g. 0.95).")


def check_trainable(cfg):
    """Training from scratch (MODEL.WEIGHTS "") needs a backbone that can learn its normalisation:
    FrozenBN is frozen at its initial identity (the statistics a pretrained model would bring), so
    the activations of a random ResNet grow unchecked and the losses explode at once; frozen stages
    would stay random."""
    if cfg.MODEL.WEIGHTS or cfg.MODEL.META_ARCHITECTURE != "GeneralizedRCNN" \
            or "resnet" not in cfg.MODEL.BACKBONE.NAME:
        return
    problems = []
    if cfg.MODEL.RESNETS.NORM == "FrozenBN":
        problems.append("MODEL.RESNETS.NORM is FrozenBN (set BN, or GN for small batches)")
    if cfg.MODEL.BACKBONE.FREEZE_AT > 0:
        problems.append(f"MODEL.BACKBONE.FREEZE_AT is {cfg.MODEL.BACKBONE.FREEZE_AT} (set 0)")
    if problems:
        raise ValueError(
            "MODEL.WEIGHTS is empty, so the ResNet trains from scratch, but "
            + " and ".join(problems) + ": the backbone would not learn (with FrozenBN the losses "
            "explode within a few iterations). Either give pretrained weights (MODEL.WEIGHTS, see "
            "README 'Weights') or add: MODEL.RESNETS.NORM BN MODEL.BACKBONE.FREEZE_AT 0, as "
            "configs/mask_rcnn_R_18_FPN_scratch_cpu.yaml does.")


def flatten(node, prefix=""):
    """{"SOLVER.BASE_LR": 0.001, ...}: every leaf of a config."""
    flat = {}
    for k, v in node.items():
        flat.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return flat


def check_config_file(path, _seen=()):
    """Parse a config file and the ``_BASE_`` files it includes with the safe loader
    (files.load_yaml: no python tags, bounded size and alias expansion) before Detectron2 reads
    them; a missing or looping ``_BASE_`` is named."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Config file {path} does not exist"
                                + (f" (a _BASE_ of {_seen[-1]})" if _seen else "")
                                + "; the configs shipped with tumorseg-d2 are in configs/.")
    if os.path.realpath(path) in _seen:
        raise ValueError(f"Config file {_seen[-1]} includes {path} as _BASE_, which includes it "
                         "again: a loop.")
    data = load_yaml(path)
    if data is None:
        return
    if not isinstance(data, dict):
        raise ValueError(f"Config file {path} holds a {type(data).__name__}, not KEY: VALUE "
                         "mappings.")
    bases = data.get("_BASE_", [])
    for base in [bases] if isinstance(bases, str) else bases:
        if not isinstance(base, str) or base.startswith(("http://", "https://")):
            raise ValueError(f"Config file {path}: _BASE_ {base!r} must be a local file path.")
        base = os.path.expanduser(base)
        check_config_file(base if os.path.isabs(base) else
                          os.path.join(os.path.dirname(path), base),
                          _seen + (os.path.realpath(path),))


def merge_config(cfg, config_file=None, opts=()):
    """Merge a YAML file and KEY VALUE overrides; an unknown key gets a message with the nearest
    valid keys instead of yacs' bare assertion. The file (and its _BASE_ files) are read safely:
    check_config_file."""
    if config_file is not None and not os.path.isfile(config_file):
        raise FileNotFoundError(f"--config-file {config_file} does not exist; the configs shipped "
                                "with tumorseg-d2 are in configs/.")
    if config_file is not None:
        check_config_file(config_file)
    try:
        if config_file is not None:
            cfg.merge_from_file(config_file)
        cfg.merge_from_list(list(opts))
    except ValueError as e:
        if "Type mismatch" not in str(e):
            raise
        raise ValueError(f"{e}. Give the key a value of the type of its default (Detectron2's "
                         "detectron2/config/defaults.py or tumorseg_d2/config.py).") from e
    except (KeyError, AssertionError) as e:
        found = re.search(r"(?:key|Non-existent config key):\s*([\w.]+)", str(e))
        if not found:
            raise
        key = found.group(1)
        near = difflib.get_close_matches(key, list(flatten(cfg)), n=3)
        source = f"config file {config_file}" if config_file else "command line overrides"
        raise ValueError(
            f"Unknown config key {key} (in {source} or a file it includes). "
            + (f"Did you mean {' or '.join(near)}? " if near else "")
            + "Valid keys are Detectron2's (detectron2/config/defaults.py) plus tumorseg-d2's "
            "(tumorseg_d2/config.py: add_tumorseg_config)."
        ) from e
    return cfg


def derived(cfg, changes):
    """A frozen copy of ``cfg`` with ``changes`` ({"SOLVER.BASE_LR": 0.01, ...}) set: the one way
    to make a modified config. An unknown key raises KeyError naming it."""
    cfg = cfg.clone()
    cfg.defrost()
    for key, value in changes.items():
        *parents, leaf = key.split(".")
        node = cfg
        for name in parents:
            node = node[name]
        if leaf not in node:
            raise KeyError(f"Unknown config key {key}")
        node[leaf] = value
    cfg.freeze()
    return cfg


def config_path(name):
    """The path of a config shipped with the package (``configs/`` of the source tree), e.g.
    ``config_path("mask_rcnn_R_18_FPN_scratch_cpu_60min.yaml")``; it works without the source
    tree (``pip install .``) too."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{name} is not among the configs shipped with tumorseg-d2 "
                                f"({os.path.dirname(path)}).")
    return path
