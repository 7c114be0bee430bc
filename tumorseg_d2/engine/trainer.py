"""The tumorseg-d2 trainer: Detectron2's DefaultTrainer with Adam/AdamW, validation-driven
checkpoint selection, validation loss, early stopping, weights that fail fast when missing, atomic
checkpoints and a --resume that continues exactly (optimizer, schedule, random state, data order)."""
import logging
import os
import re
import shutil

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultTrainer, hooks
from detectron2.evaluation import DatasetEvaluators
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping
from detectron2.utils import comm
from detectron2.utils.events import EventStorage

from ..checkpoint import SafeCheckpointer, resolve_weights
from ..data.loader import TrainingState, build_resumable_train_loader, build_test_loader
from ..evaluation import OverlapEvaluator, TumorCOCOEvaluator, format_results, save_results
from ..rng import preserve_rng
from .hooks import EarlyStopping, ValidationLoss
from .schedule import build_lr_scheduler

logger = logging.getLogger(__name__)


class Trainer(DefaultTrainer):
    def __init__(self, cfg):
        super().__init__(cfg)
        self._stop_requested = False
        if comm.is_main_process():
            check_disk_space(cfg, self.model)

    @classmethod
    def build_optimizer(cls, cfg, model):
        name = cfg.SOLVER.OPTIMIZER.upper()
        if name == "SGD":
            return super().build_optimizer(cfg, model)
        params = get_default_optimizer_params(
            model,
            base_lr=cfg.SOLVER.BASE_LR,
            weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
            bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
            weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
        )
        optim = {"ADAM": torch.optim.Adam, "ADAMW": torch.optim.AdamW}[name]
        return maybe_add_gradient_clipping(cfg, optim)(
            params, lr=cfg.SOLVER.BASE_LR, betas=tuple(cfg.SOLVER.BETAS),
            weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        )

    @classmethod
    def build_train_loader(cls, cfg):
        """A loader that --resume continues exactly (tumorseg_d2/data/loader.py); Detectron2's for
        samplers other than TrainingSampler."""
        if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
            logger.warning(f"DATALOADER.SAMPLER_TRAIN {cfg.DATALOADER.SAMPLER_TRAIN}: Detectron2's "
                           "loader, which restarts its data order on --resume.")
            return super().build_train_loader(cfg)
        seed = cfg.SEED if cfg.SEED >= 0 else int(np.random.randint(2**31))
        return build_resumable_train_loader(cfg, seed)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_test_loader(cfg, dataset_name)

    @property
    def data_stream(self):
        return getattr(self._trainer.data_loader, "stream", None)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        if not cfg.MODEL.MASK_ON:
            return TumorCOCOEvaluator(dataset_name, output_folder, tasks=("bbox",))
        return DatasetEvaluators([TumorCOCOEvaluator(dataset_name, output_folder),
                                  OverlapEvaluator(dataset_name)])

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """Evaluate on cfg.DATASETS.TEST; print and save each dataset's table and metrics.json."""
        results = super().test(cfg, model, evaluators)
        # DefaultTrainer.test unwraps the results of a single dataset.
        per_dataset = {cfg.DATASETS.TEST[0]: results} if len(cfg.DATASETS.TEST) == 1 else results
        if comm.is_main_process():
            for name, res in per_dataset.items():
                folder = os.path.join(cfg.OUTPUT_DIR, "inference", name)
                save_results(res, os.path.join(folder, "metrics.json"))
                logger.info(f"COCO results on {name} (saved in {folder}/metrics.json):\n"
                            + format_results(res))
        return results

    def build_hooks(self):
        cfg = self.cfg
        # DefaultTrainer.__init__ made its checkpointer just before calling this method; the hooks
        # built here save through it, so make its writes atomic first.
        self.checkpointer = SafeCheckpointer.like(self.checkpointer)
        ret = super().build_hooks()
        if self.data_stream is not None:
            ret.insert(0, TrainingState(self.data_stream))
        # DefaultTrainer evaluates DATASETS.TEST while training; we validate on DATASETS.VAL so the
        # test split never takes part in a choice.
        val_cfg = cfg.clone()
        val_cfg.defrost()
        val_cfg.DATASETS.TEST = cfg.DATASETS.VAL
        val_cfg.freeze()
        at = next(i for i, h in enumerate(ret) if isinstance(h, hooks.EvalHook))
        period = cfg.TEST.EVAL_PERIOD
        extra = [hooks.EvalHook(period, lambda: self.validate(val_cfg))]
        if cfg.TEST.VAL_LOSS and cfg.DATASETS.VAL:
            extra.insert(0, ValidationLoss(cfg, cfg.DATASETS.VAL[0], period))
        if cfg.TEST.BEST_METRIC and period > 0 and comm.is_main_process():
            extra.append(hooks.BestCheckpointer(period, self.checkpointer, cfg.TEST.BEST_METRIC,
                                                cfg.TEST.BEST_MODE))
        if cfg.TEST.EARLY_STOP_PATIENCE > 0:
            extra.append(EarlyStopping(period, cfg.TEST.BEST_METRIC, cfg.TEST.EARLY_STOP_PATIENCE,
                                       cfg.TEST.BEST_MODE))
        ret[at:at + 1] = extra
        return ret

    def validate(self, val_cfg):
        with preserve_rng():  # so that validating does not change what is trained
            return self.test(val_cfg, self.model)

    def resume_or_load(self, resume=True):
        if not (resume and self.checkpointer.has_checkpoint()):
            # Only the initial weights are resolved: a resumed run reads its own last checkpoint.
            self.cfg.defrost()
            self.cfg.MODEL.WEIGHTS = resolve_weights(self.cfg.MODEL.WEIGHTS)
            self.cfg.freeze()
        super().resume_or_load(resume=resume)
        if self.data_stream is not None:  # continue the data stream where the checkpoint left it
            self.data_stream.start = self.start_iter * self.cfg.SOLVER.IMS_PER_BATCH

    # Detectron2 v0.6's DefaultTrainer leaves the optimizer out of its checkpoints, so --resume
    # restarted Adam's moments; later Detectron2 saves it under "_trainer", as here.
    def state_dict(self):
        ret = super().state_dict()
        ret["_trainer"] = self._trainer.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])
        else:
            logger.warning("The checkpoint has no optimizer state (saved by Detectron2 v0.6?): the "
                           "optimizer starts afresh.")

    def request_stop(self):
        self._stop_requested = True

    def train(self):
        """TrainerBase.train's loop with one addition: a hook may end it early (request_stop)."""
        logger.info(f"Starting training from iteration {self.start_iter}")
        self.iter = self.start_iter
        with EventStorage(self.start_iter) as self.storage:
            try:
                self.before_train()
                for self.iter in range(self.start_iter, self.max_iter):
                    self.before_step()
                    self.run_step()
                    self.after_step()
                    if self._stop_requested:
                        break
                else:
                    self.iter += 1  # iter == max_iter tells after_train the run completed
            except FloatingPointError as e:
                raise FloatingPointError(self._diverged_message(e)) from e
            except Exception:
                logger.exception("Exception during training:")
                raise
            finally:
                self.after_train()

    def _diverged_message(self, error):
        bad = re.findall(r"'(\w+)': (?:nan|-?inf)", str(error)) or ["total_loss"]
        last = (os.path.basename(self.checkpointer.get_checkpoint_file())
                if self.checkpointer.has_checkpoint() else None)
        return (f"Training stopped: {', '.join(bad)} became NaN or infinite at iteration "
                f"{self.iter}. Nothing after the last good checkpoint was saved: "
                + (f"{last} in {self.cfg.OUTPUT_DIR} (continue from it with --resume once fixed). "
                   if last else "there is none yet. ")
                + "Lower SOLVER.BASE_LR or lengthen SOLVER.WARMUP_ITERS, enable "
                "SOLVER.CLIP_GRADIENTS.ENABLED True, or check the data with tools/check_dataset.py."
                f"\n(Detectron2: {error})")


def check_disk_space(cfg, model):
    """Fail before training, not at the first save, when a checkpoint cannot fit."""
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    per_param = {"SGD": 2, "ADAM": 3, "ADAMW": 3}.get(cfg.SOLVER.OPTIMIZER.upper(), 3)
    checkpoint = weights * per_param  # weights plus the optimizer's state
    free = shutil.disk_usage(cfg.OUTPUT_DIR).free
    if free < 2 * checkpoint:  # an atomic save holds the new file beside the old one
        raise OSError(
            f"Only {free / 1e6:.0f} MB free on the disk of OUTPUT_DIR {cfg.OUTPUT_DIR}; a checkpoint "
            f"of this model takes about {checkpoint / 1e6:.0f} MB and saving one safely needs twice "
            "that. Free some space or set OUTPUT_DIR to a folder on another disk.")


def check_num_classes(cfg):
    """MODEL.ROI_HEADS.NUM_CLASSES must match the training dataset's classes."""
    for name in cfg.DATASETS.TRAIN + cfg.DATASETS.VAL + cfg.DATASETS.TEST:
        classes = MetadataCatalog.get(name).get("thing_classes")
        if classes is not None and len(classes) != cfg.MODEL.ROI_HEADS.NUM_CLASSES:
            raise ValueError(
                f"MODEL.ROI_HEADS.NUM_CLASSES is {cfg.MODEL.ROI_HEADS.NUM_CLASSES} but dataset "
                f"'{name}' has {len(classes)} classes {classes}. Set MODEL.ROI_HEADS.NUM_CLASSES "
                f"{len(classes)} (the *_agnostic_* datasets have 1 class, the others 2)."
            )
