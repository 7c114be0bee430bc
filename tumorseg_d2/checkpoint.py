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
