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


def atomic_write(path, write):
    """Write a file through ``write(f)`` under a temporary name, flush it to disk, then rename it
    over ``path``: readers (and a resume after a kill) see the old file or the new one, never half."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class AtomicCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer whose checkpoints and ``last_checkpoint`` tag are written atomically,
    so a run killed while saving resumes from the previous checkpoint instead of a corrupt one."""

    @classmethod
    def like(cls, checkpointer):
        return cls(checkpointer.model, checkpointer.save_dir, save_to_disk=checkpointer.save_to_disk,
                   **checkpointer.checkpointables)

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
