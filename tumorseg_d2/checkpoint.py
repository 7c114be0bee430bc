"""Finding model weights: local files, Detectron2 model-zoo URLs and their download cache.

Remote weights (``detectron2://...``, ``https://...``) are downloaded once by iopath into its cache
(``$FVCORE_CACHE``, default ``~/.torch/iopath_cache``) and read from there afterwards. Without
network, a weight that is not cached fails at once with the file it needs and where to put it,
instead of hanging in a download or failing deep inside the checkpointer.
"""
import os
import socket
from urllib.error import URLError
from urllib.parse import urlparse

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.file_io import PathManager
from iopath.common.file_io import get_cache_dir

from .files import UnsafeFileError, atomic_write, load_pickle

D2_MODEL_ZOO_PREFIX = "https://dl.fbaipublicfiles.com/detectron2/"
# The recipe's COCO-pretrained Mask R-CNN R50-FPN 3x (box AP 41.0, mask AP 37.2 on COCO).
COCO_MASK_RCNN_R50_FPN_3X = (
    "detectron2://COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x/137849600/model_final_f10217.pkl"
)
DOWNLOAD_TIMEOUT_S = 30


class WeightsNotFoundError(FileNotFoundError):
    pass


def to_url(path):
    """``detectron2://X`` -> the https URL Detectron2 downloads it from; other paths unchanged."""
    if path.startswith("detectron2://"):
        return D2_MODEL_ZOO_PREFIX + path[len("detectron2://"):]
    return path


def cached_path(url):
    """Where iopath's HTTP handler caches ``url`` (mirrors HTTPURLHandler._get_local_path)."""
    parsed = urlparse(url)
    return os.path.join(get_cache_dir(), os.path.dirname(parsed.path.lstrip("/")),
                        url.split("/")[-1])


def offline():
    return os.environ.get("TUMORSEG_OFFLINE", "0") not in ("", "0")


def resolve_weights(path):
    """Return a local file for ``path`` (a file, ``detectron2://`` or ``http(s)://`` URL).

    Raises WeightsNotFoundError naming the missing file and how to supply it. Set
    ``TUMORSEG_OFFLINE=1`` to never try a download.
    """
    if not path:
        return path
    url = to_url(path)
    if not url.startswith(("http://", "https://")):
        if not os.path.isfile(path):
            raise WeightsNotFoundError(
                f"MODEL.WEIGHTS file not found: {os.path.abspath(path)}. Pass an existing "
                "checkpoint (.pth or model-zoo .pkl), a detectron2:// URL, or MODEL.WEIGHTS \"\" "
                "to train from scratch."
            )
        return path
    local = cached_path(url)
    if os.path.isfile(local):
        return local
    fix = (
        f"The weights {path} are not in the local cache ({local}). On a machine with network, "
        f"download {url} and either pass MODEL.WEIGHTS /path/to/{os.path.basename(local)} or copy "
        f"the file to {local} (FVCORE_CACHE sets the cache folder), or use MODEL.WEIGHTS \"\" to "
        "train from scratch."
    )
    if offline():
        raise WeightsNotFoundError(fix + " (TUMORSEG_OFFLINE is set, so no download was tried.)")
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        return PathManager.get_local_path(url)
    except (URLError, OSError) as e:
        raise WeightsNotFoundError(f"Download failed ({e}). {fix}") from e
    finally:
        socket.setdefaulttimeout(previous)


class WeightsError(ValueError):
    pass


# Layers whose shapes follow the number of classes: re-initialized, not expected to load.
CLASS_SPECIFIC = ("roi_heads.box_predictor.", "roi_heads.mask_head.predictor.")


class SafeCheckpointer(DetectionCheckpointer):
    """Detectron2's checkpointer with writes that are atomic (a run killed while saving resumes from
    the previous checkpoint, never a corrupt one) and loads that are safe and fail clearly:

    - ``.pth`` files are read with ``torch.load(weights_only=True)`` and model-zoo ``.pkl`` files
      with an unpickler that admits only arrays, numbers and strings (files.load_pickle): opening
      weights from someone else never runs code;
    - a file that is not a checkpoint, or one made for another architecture (which Detectron2 would
      load silently, skipping every mismatched weight), raises WeightsError naming the file and
      the fix;
    - with ``same_classes=True`` (evaluation and prediction: nothing will train the class-specific
      layers), a checkpoint trained for another number of classes is refused naming both counts;
    - ``resume_or_load(resume=True)`` where ``last_checkpoint`` names a missing file says so;
    - a checkpoint of a run with MODEL_EMA loads its moving average of the weights (``ema``), the
      weights its validation judged, unless ``averaged=False`` (the trainer's own checkpointer,
      which resumes the trained weights and the average each in its place).
    """

    # Share of the model's weights (by size, class-specific layers aside) that must load. An
    # ImageNet backbone gives about 0.5, a COCO Mask R-CNN nearly 1, an R18 checkpoint in an R50 0.14.
    MIN_MATCHED = 0.4

    def __init__(self, model, save_dir="", *, same_classes=False, averaged=True, **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.same_classes, self.averaged = same_classes, averaged

    def save(self, name, **kwargs):
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {path}")
        atomic_write(path, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename):
        atomic_write(os.path.join(self.save_dir, "last_checkpoint"),
                     lambda f: f.write(last_filename_basename.encode()))

    def resume_or_load(self, path, *, resume=True):
        if resume and self.has_checkpoint():
            last = self.get_checkpoint_file()
            if not os.path.isfile(last):
                tag = os.path.join(self.save_dir, "last_checkpoint")
                saved = sorted(f for f in os.listdir(self.save_dir) if f.endswith(".pth"))
                raise WeightsNotFoundError(
                    f"--resume: {tag} names {os.path.basename(last)}, which is not in "
                    f"{self.save_dir} (deleted or moved?). Checkpoints there: "
                    f"{', '.join(saved) or 'none'}. Write the name of one of them into {tag} to "
                    "resume from it, or delete last_checkpoint (or drop --resume) to start from "
                    "MODEL.WEIGHTS.")
        return super().resume_or_load(path, resume=resume)

    def load(self, path, *args, **kwargs):
        self._loading = path
        return super().load(path, *args, **kwargs)

    def _load_file(self, filename):
        try:
            loaded = self._read(filename)
        except UnsafeFileError:
            raise
        except Exception as e:  # noqa: BLE001 - torch.load and pickle raise many types
            raise WeightsError(
                f"Weights file {filename} cannot be read ({type(e).__name__}: {e}). It is truncated "
                "or not a PyTorch (.pth) / Detectron2 model-zoo (.pkl) checkpoint: copy or download "
                "it again and compare its size with the source.") from e
        if not isinstance(loaded.get("model"), dict) or not loaded["model"]:
            raise WeightsError(f"Weights file {filename} holds no model weights (no 'model' "
                               "state dict): pass a checkpoint saved by training.")
        ema = loaded.get("ema")
        if self.averaged and isinstance(ema, dict) and isinstance(ema.get("model"), dict):
            self.logger.info(f"Loading the moving average of the weights (MODEL_EMA, "
                             f"{ema.get('updates')} updates) saved in {filename}.")
            loaded = {**loaded, "model": ema["model"]}
            del loaded["ema"]
        return loaded

    @staticmethod
    def _read(filename):
        """DetectionCheckpointer._load_file's formats, each read without running code."""
        if filename.endswith(".pkl"):
            data = load_pickle(filename)
            if "model" in data and "__author__" in data:  # Detectron2 model-zoo format
                return data
            data = data.get("blobs", data)  # Caffe2 / Detectron1 model zoo
            return {"model": {k: v for k, v in data.items() if not k.endswith("_momentum")},
                    "__author__": "Caffe2", "matching_heuristics": True}
        with open(filename, "rb") as f:
            loaded = torch.load(f, map_location="cpu", weights_only=True)
        if filename.endswith(".pyth"):  # pycls ImageNet models
            return {"model": loaded["model_state"], "__author__": "pycls",
                    "matching_heuristics": True}
        return loaded if "model" in loaded else {"model": loaded}

    def _load_model(self, checkpoint):
        incompatible = super()._load_model(checkpoint)
        expected = {k: v.numel() for k, v in self.model.state_dict().items()
                    if not k.startswith(CLASS_SPECIFIC)}
        failed = set(incompatible.missing_keys) | {k for k, _, _ in incompatible.incorrect_shapes}
        matched = sum(n for k, n in expected.items() if k not in failed)
        total = sum(expected.values())
        if total and matched < self.MIN_MATCHED * total:
            example = next((f"{k}: checkpoint {tuple(a)}, model {tuple(b)}"
                            for k, a, b in incompatible.incorrect_shapes), None) \
                or next(iter(sorted(failed)), "")
            raise WeightsError(
                f"Weights file {getattr(self, '_loading', '')} does not fit this model: only "
                f"{matched / total:.0%} of its weights (by size) match by name and shape (e.g. "
                f"{example}). It was trained with another architecture (MODEL.RESNETS.DEPTH, "
                "MODEL.FPN.OUT_CHANNELS, ... differ from this config). Use the config it was "
                "trained with (training writes config.yaml beside its checkpoints) or other "
                "weights.")
        if self.same_classes:
            self._check_classes(incompatible)
        return incompatible

    def _check_classes(self, incompatible):
        """Refuse a checkpoint whose class-specific layers do not fit (or are absent)."""
        shapes = {k: (a, b) for k, a, b in incompatible.incorrect_shapes}
        classifier = "roi_heads.box_predictor.cls_score.weight"
        # Rows of the classifier: the classes and background.
        theirs, ours = (shape[0] - 1 for shape in shapes.get(classifier, ((0,), (0,))))
        if theirs != ours:
            raise WeightsError(
                f"Weights file {getattr(self, '_loading', '')} was trained for {theirs} "
                f"class(es), but this config has MODEL.ROI_HEADS.NUM_CLASSES {ours}: its class "
                "layers cannot be used, and random ones would be evaluated. Use the config the "
                "weights were trained with (config.yaml beside them), or the dataset with "
                f"{theirs} class(es) (e.g. tumorseg_agnostic_* for 1) with NUM_CLASSES {theirs}.")
        bad = sorted(k for k in set(shapes) | set(incompatible.missing_keys)
                     if k.startswith(CLASS_SPECIFIC))
        if bad:
            raise WeightsError(
                f"Weights file {getattr(self, '_loading', '')} has no usable class layers for this "
                f"model ({', '.join(bad[:3])} missing or of another shape): these weights are "
                "for training (e.g. a backbone), not for evaluation or prediction.")
