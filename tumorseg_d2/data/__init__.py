"""Data: dataset registration (datasets.py: TumorSeg; sources.py: any COCO or image/mask-pair
dataset named in the config, with folders.py and patients.py), the phantoms (phantom.py), the
checker and its fixed copy (check.py, fix.py) and the resumable loaders (loader.py)."""
from .datasets import DatasetNotFoundError, dataset_name, load_tumorseg, register_tumorseg
from .phantom import make_phantom_dataset
from .sources import register_datasets

__all__ = ["DatasetNotFoundError", "dataset_name", "load_tumorseg", "make_phantom_dataset",
           "register_datasets", "register_tumorseg"]

# Like Detectron2's builtin datasets, the names exist once the package is imported. Nothing is read
# until a split is used; tools re-register with DATASETS.TUMORSEG_ROOT when it is set.
register_tumorseg()
