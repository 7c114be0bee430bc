from .datasets import register_tumorseg, dataset_name, load_tumorseg, DatasetNotFoundError
from .phantom import make_phantom_dataset
