"""A training loader that a resumed run continues exactly, and that names the images it cannot read.

Detectron2's loader restarts its shuffled stream and its augmentation randomness on ``--resume``,
so a resumed run sees other data than an uninterrupted one. Here:

- the stream of training samples is a function of (data seed, position): epoch e is a fixed
  permutation drawn from (seed, e), and a resumed run starts at position iteration x batch size;
- each sample's augmentation is seeded from (seed, position), so it does not depend on the number
  of workers or on when the workers started;
- the loader draws nothing from the global random stream, which the model's sampling uses and which
  checkpoints save and restore (:class:`TrainingState`).

With images of one aspect ratio (as here) the resumed batches are exactly those of an uninterrupted
run; with several aspect ratios (or INPUT.CROP's random crops) batches are grouped by aspect, so a
few samples around the resume point may land in other batches.
"""
import logging
import operator

import numpy as np
import torch
from detectron2.data import (DatasetFromList, DatasetMapper, MetadataCatalog,
                             build_detection_test_loader, get_detection_dataset_dicts)
from detectron2.data import transforms as T
from detectron2.data.common import AspectRatioGroupedDataset, ToIterableDataset
from detectron2.engine import HookBase
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng

from ..rng import preserve_rng, rng_state, set_rng_state

logger = logging.getLogger(__name__)


def _derived_seed(seed, n, kind):
    """A seed for sample ``n`` (kind 0) or for epoch ``n``'s order (kind 1)."""
    return int(np.random.SeedSequence([seed, n, kind]).generate_state(1)[0] % 2**31)


class DataStream:
    """The shared state of sampler and dataset: the data seed and where the stream starts."""

    def __init__(self, size, seed):
        self.size, self.seed, self.start = size, seed, 0
        self._perm_epoch, self._perm = None, None

    def index(self, position):
        epoch, offset = divmod(position, self.size)
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(_derived_seed(self.seed, epoch, 1))
            self._perm, self._perm_epoch = torch.randperm(self.size, generator=g).tolist(), epoch
        return self._perm[offset]


class ResumableSampler(torch.utils.data.Sampler):
    """Endless positions of the stream from ``stream.start``, this rank's share of them."""

    def __init__(self, stream):
        self.stream = stream
        self.rank, self.world_size = comm.get_rank(), comm.get_world_size()

    def __iter__(self):
        position = self.stream.start + self.rank
        while True:
            yield position
            position += self.world_size


class SeededMapDataset(torch.utils.data.Dataset):
    """dataset[position]: the mapped sample at that stream position, augmented with RNGs seeded from
    (seed, position). An image that cannot be read is named in the log and, with
    ``skip_bad_images``, replaced by the next sample of the stream; otherwise the run stops."""

    def __init__(self, dicts, mapper, stream, skip_bad_images):
        self.dicts, self.mapper, self.stream = dicts, mapper, stream
        self.skip_bad_images = skip_bad_images

    def __getitem__(self, position):
        if torch.utils.data.get_worker_info() is None:  # in the training process (NUM_WORKERS 0):
            with preserve_rng():  # leave the model's random stream alone
                return self._get(position)
        return self._get(position)

    def _get(self, position):
        for attempt in range(10):
            record = self.dicts[self.stream.index(position + attempt * self.stream.size)]
            seed_all_rng(_derived_seed(self.stream.seed, position + attempt * self.stream.size, 0))
            try:
                return self.mapper(record)
            except Exception as e:  # noqa: BLE001 - decoders raise many types
                name = record.get("file_name")
                if not self.skip_bad_images:
                    raise RuntimeError(
                        f"Cannot read training image {name}: {type(e).__name__}: {e}. Run "
                        "tools/check_dataset.py on the split to find every bad file (--fix writes a "
                        "copy without them), or set DATALOADER.SKIP_BAD_IMAGES True to skip such "
                        "images with a warning.") from e
                logger.warning(f"Skipping unreadable training image {name} ({type(e).__name__}: "
                               f"{e}); DATALOADER.SKIP_BAD_IMAGES is True.")
        raise RuntimeError("10 unreadable training images in a row: check the dataset with "
                           "tools/check_dataset.py.")

    def __len__(self):
        return len(self.dicts)


class _Batches(torch.utils.data.IterableDataset):
    def __init__(self, samples, batch_size):
        self.samples, self.batch_size = samples, batch_size

    def __iter__(self):
        batch = []
        for sample in self.samples:
            batch.append(sample)
            if len(batch) == self.batch_size:
                yield batch
                batch = []


def training_dicts(cfg):
    """The records of DATASETS.TRAIN. Tumor-free images are dropped per dataset: as its metadata's
    ``filter_empty`` says (DATASETS.SOURCE.FILTER_EMPTY), else as
    DATALOADER.FILTER_EMPTY_ANNOTATIONS (Detectron2's switch, for TumorSeg and other datasets)."""
    dicts = []
    for name in cfg.DATASETS.TRAIN:
        drop = MetadataCatalog.get(name).get("filter_empty", cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)
        part = get_detection_dataset_dicts([name], filter_empty=drop)
        empty = sum(not r.get("annotations") for r in part)
        logger.info(f"Training on {name}: {len(part)} images, {empty} of them tumor-free "
                    + ("(tumor-free images dropped)" if drop else "(kept as negatives)"))
        dicts += part
    return dicts


def train_mapper(cfg):
    """Detectron2's training mapper (INPUT.CROP, the resize, INPUT.RANDOM_FLIP), then, with
    INPUT.INTENSITY_JITTER j > 0, brightness and contrast each scaled by a factor drawn uniformly
    from [1 - j, 1 + j]: MRI intensities vary from scanner to scanner and protocol to protocol."""
    args = DatasetMapper.from_config(cfg, is_train=True)
    jitter = cfg.INPUT.INTENSITY_JITTER
    if jitter > 0:
        args["augmentations"] = list(args["augmentations"]) + [
            T.RandomBrightness(1 - jitter, 1 + jitter), T.RandomContrast(1 - jitter, 1 + jitter)]
    return DatasetMapper(**args)


def build_resumable_train_loader(cfg, seed):
    """The training loader; ``loader.stream`` holds its seed and start position."""
    dicts = training_dicts(cfg)
    stream = DataStream(len(dicts), seed)
    dataset = SeededMapDataset(DatasetFromList(dicts, copy=False), train_mapper(cfg), stream,
                               cfg.DATALOADER.SKIP_BAD_IMAGES)
    samples = torch.utils.data.DataLoader(
        ToIterableDataset(dataset, ResumableSampler(stream)),
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        collate_fn=operator.itemgetter(0),
        generator=torch.Generator().manual_seed(seed),  # worker seeds not from the global stream
    )
    batch_size = cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size()
    loader = AspectRatioGroupedDataset(samples, batch_size) if cfg.DATALOADER.ASPECT_RATIO_GROUPING \
        else _Batches(samples, batch_size)
    loader.stream = stream
    return loader


class TrainingState(HookBase):
    """Saves the random state and the data seed in every checkpoint and restores them on resume:
    with the stream's start position, a resumed run continues as if never interrupted."""

    def __init__(self, stream):
        self.stream = stream

    def state_dict(self):
        return {"rng": rng_state(), "data_seed": self.stream.seed}

    def load_state_dict(self, state):
        set_rng_state(state["rng"])
        self.stream.seed = state["data_seed"]


class NamingMapper:
    """A mapper whose read errors name the image: evaluation stops on an unreadable image, since
    skipping it would change the figures."""

    def __init__(self, mapper):
        self.mapper = mapper

    def __call__(self, record):
        try:
            return self.mapper(record)
        except Exception as e:  # noqa: BLE001 - decoders raise many types
            raise RuntimeError(
                f"Cannot read evaluation image {record.get('file_name')} ({type(e).__name__}: {e}). "
                "Evaluation stops rather than skip it, which would change the figures. Run "
                "tools/check_dataset.py on the split to find every bad file; --fix writes a copy "
                "without them.") from e


def build_test_loader(cfg, dataset_name):
    """Detectron2's test loader, with read errors that name the image."""
    return build_detection_test_loader(cfg, dataset_name,
                                       mapper=NamingMapper(DatasetMapper(cfg, False)))
